"""Sharding, resume after kill -9, merging, run_shards and the SLURM templates (issue 9)."""
from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time

import pytest

from certifynet.errors import CertifyNetError, CertifyNetWarning
from certifynet.records import RowLog, parse_shard, read_meta, read_rows, select_indices, shard_path
from certifynet.records.merge import describe, from_ranges, merge_files, to_ranges

from helpers import trained_lenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM = os.path.join(ROOT, "scripts", "slurm")
CERTIFY = os.path.join(ROOT, "scripts", "certify.py")


# ---------------------------------------------------------------- helpers
def rows_by_idx(path):
    """{idx: row without the time column} of a log or counts file."""
    _, rows = read_rows(path)
    return {int(r["idx"]): {k: v for k, v in r.items() if k != "time"} for r in rows}


def n_rows(path):
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        return max(0, sum(1 for ln in f if ln.endswith("\n")) - 1)


def toy_shards(folder, n=4, n_total=20, sep="\t", skip_shards=(), drop=(), value=lambda i: i * i, name="run.tsv",
               **meta):
    """Shard files of a torch-free toy run written with RowLog, as the CLIs write them."""
    paths = []
    for i in range(n):
        if i in skip_shards:
            continue
        p = shard_path(os.path.join(folder, name), (i, n))
        m = {"kind": "toy", "sigma": 0.25, "n_inputs": n_total, "start": 0, "end": None, "skip": 1, "max": None,
             "shard": [i, n], **meta}
        with RowLog(p, ["idx", "value", "time"], m, sep=sep) as log:
            for idx in select_indices(n_total, m["start"], m["end"], m["skip"], m["max"], (i, n)):
                if idx not in drop:
                    log.write({"idx": idx, "value": value(idx), "time": 0.01 * idx})
        paths.append(p)
    return paths


def certify_argv(model, out, n, shard="0/1", extra=()):
    """certify.py arguments (N0 = 20, N = 200); shard None leaves the shard to the SLURM variables."""
    return ["--model", model, "--sigma", "0.25", "--N0", "20", "--N", "200", "--batch", "220", "--max", str(n),
            "--out", out, *(["--shard", shard] if shard else []), *extra]


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    from helpers import untrained_lenet
    return untrained_lenet(tmp_path_factory.mktemp("model") / "lenet.pt")


def run_certify(argv, monkeypatch=None, env=None):
    from certifynet.cli import certify
    if monkeypatch is not None:
        for k in [k for k in os.environ if k.startswith("SLURM_ARRAY")]:
            monkeypatch.delenv(k)
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, str(v))
    assert certify.main(argv) == 0


@pytest.fixture(scope="module")
def reference_log(random_model, tmp_path_factory):
    """An uninterrupted, unsharded certify run on 40 mnist5k test digits."""
    import torch
    out = str(tmp_path_factory.mktemp("ref") / "ref.tsv")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_certify(certify_argv(random_model, out, 40))
    finally:
        torch.set_num_threads(old)
    return out


# ---------------------------------------------------------------- shard arithmetic and SLURM variables
def test_shards_partition_the_selection():
    for n_total, start, end, skip, mx, n in itertools.product(
            (0, 1, 7, 10, 101), (0, 3), (None, 5, 60), (1, 2, 7), (None, 1, 4, 33), (1, 2, 3, 4, 16)):
        if (n_total and start >= n_total) or (end is not None and end <= start):
            continue  # start outside the data or end before start: errors, tested below
        full = select_indices(n_total, start, end, skip, mx)
        parts = [select_indices(n_total, start, end, skip, mx, (i, n)) for i in range(n)]
        assert sum(parts, []) == full, (n_total, start, end, skip, mx, n)  # in order: no gap, no overlap
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(CertifyNetError):
        select_indices(10, start=12)


@pytest.mark.parametrize("kw, fragment", [
    ({"start": 12}, "--start 12 is beyond the last input (the split has 10)"),
    ({"start": -1}, "--start must be >= 0"),
    ({"start": 8, "end": 5}, "--end (5) must be greater than --start (8)"),
    ({"max_count": -1}, "--max must be >= 1, got -1"),
    ({"max_count": 0}, "--max must be >= 1, got 0"),
    ({"skip": 0}, "--skip must be >= 1"),
])
def test_selection_errors_name_their_cause(kw, fragment):
    """The CLI names the flag; Python callers read the argument's name."""
    with pytest.raises(CertifyNetError) as e:
        select_indices(10, **kw)
    assert fragment in e.value.render(cli=True) and fragment.replace("--", "") in str(e.value)


def test_parse_shard_text_and_slurm_env():
    assert parse_shard(None, env={}) == (0, 1)
    assert parse_shard("2/4", env={"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "8"}) == (2, 4)
    assert parse_shard(None, env={"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "16"}) == (5, 16)
    assert parse_shard(None, env={"SLURM_ARRAY_TASK_ID": "16", "SLURM_ARRAY_TASK_COUNT": "16",
                                  "SLURM_ARRAY_TASK_MIN": "1"}) == (15, 16)
    assert parse_shard(None, env={"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "4",
                                  "SLURM_ARRAY_TASK_STEP": "2"}) == (3, 4)
    for bad in ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"},
                {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_STEP": "2"}):
        with pytest.raises(CertifyNetError, match="SLURM_ARRAY_TASK_ID"):
            parse_shard(None, env=bad)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(CertifyNetError, match="^shard") as e:
            parse_shard(bad, env={})
        assert e.value.render(cli=True).startswith("--shard")


def test_index_ranges_roundtrip():
    for xs in ([], [3], [0, 1, 2, 5, 7, 9, 20], list(range(0, 1000, 20)), [1, 4, 5, 6, 100]):
        assert from_ranges(to_ranges(xs)) == set(xs)
    assert to_ranges(range(0, 1000, 20)) == [[0, 981, 20]]
    assert describe([0, 1, 2, 3, 9]) == "0-3, 9"


# ---------------------------------------------------------------- merging
def test_merge_glob_by_idx_keeps_values_and_delimiter(tmp_path):
    toy_shards(tmp_path, sep=",", name="counts.csv")
    out = str(tmp_path / "counts.csv")
    rep = merge_files(out, [str(tmp_path / "counts.shard*of4.csv")])
    assert (rep.rows, rep.duplicates, rep.missing) == (20, 0, [])
    with open(out) as f:
        lines = f.read().splitlines()
    assert lines[0] == "idx,value,time" and lines[1:4] == ["0,0,0.0", "1,1,0.01", "2,4,0.02"]
    meta = read_meta(out)
    assert "shard" not in meta and len(meta["merged_from"]) == 4 and from_ranges(meta["indices"]) == set(range(20))
    assert meta["sigma"] == 0.25 and meta["missing"] == []
    # merging again: the glob now also matches nothing new; OUT (a merge output) is replaced
    assert merge_files(out, [str(tmp_path / "counts*.csv")], warn=lambda m: None).rows == 20


def _collect(into):
    """A merge `warn` that keeps each warning's text (a message or a CertifyNetError naming arguments)."""
    return lambda m: into.append(str(m))


def test_merge_reports_missing_shard_and_missing_rows(tmp_path):
    toy_shards(tmp_path, skip_shards=(3,), drop=(6, 7))
    out, warnings = str(tmp_path / "run.tsv"), []
    with pytest.raises(CertifyNetError, match=r"7 of 20 inputs missing \(idx 6-7, 15-19\); nothing written"):
        merge_files(out, [str(tmp_path / "run.shard*.tsv")], warn=_collect(warnings))
    assert not os.path.exists(out) and not os.path.exists(out + ".meta.json")
    text = "\n".join(warnings)
    assert "shard 3/4 is not among the inputs (5 inputs: 15-19)" in text
    assert "run.shard1of4.tsv' lacks 2 of its 5 inputs (6-7)" in text
    rep = merge_files(out, [str(tmp_path / "run.shard*.tsv")], allow_missing=True, warn=_collect(warnings))
    assert rep.rows == 13 and rep.missing == [6, 7, 15, 16, 17, 18, 19]
    assert warnings[-1] == f"writing {out} without 7 inputs (allow_missing)"
    assert from_ranges(read_meta(out)["missing"]) == set(rep.missing)
    # the rest arrives later: merging the partial merge with it completes the run
    toy_shards(tmp_path, name="run.tsv", skip_shards=(0, 1, 2))
    toy_shards(tmp_path / "fix", name="run.tsv", skip_shards=(0, 2, 3))   # shard 1 rerun elsewhere
    done = str(tmp_path / "done.tsv")
    rep = merge_files(done, [out, str(tmp_path / "run.shard3of4.tsv"), str(tmp_path / "fix" / "run.shard1of4.tsv")],
                      warn=_collect(warnings))
    assert rep.rows == 20 and rep.missing == [] and rep.duplicates == 3   # shard 1's other rows again


def test_merge_warnings_go_through_warnings_and_name_cli_flags(tmp_path, capsys):
    """Without `warn`, merge_files warns through `warnings` (argument names as in Python); merge.py prints the
    same warnings as `warning: ...` lines naming its flags."""
    from certifynet.cli.merge import main
    toy_shards(tmp_path, skip_shards=(3,))
    out = str(tmp_path / "m.tsv")
    with pytest.warns(CertifyNetWarning) as caught:
        merge_files(out, [str(tmp_path / "run.shard*.tsv")], allow_missing=True)
    assert [str(w.message) for w in caught][-1] == f"writing {out} without 5 inputs (allow_missing)"
    capsys.readouterr()
    assert main([out, str(tmp_path / "run.shard*.tsv"), "--allow-missing"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert "warning: shard 3/4 is not among the inputs (5 inputs: 15-19)" in err
    assert err[-1] == f"warning: writing {out} without 5 inputs (--allow-missing)"


def test_merge_duplicates(tmp_path):
    a = toy_shards(tmp_path / "a", n=2, n_total=10)
    b = toy_shards(tmp_path / "b", n=5, n_total=10, skip_shards=(0, 1, 3, 4))   # idx 4, 5 again
    warnings = []
    rep = merge_files(str(tmp_path / "m.tsv"), a + b, warn=_collect(warnings))
    assert rep.rows == 10 and rep.duplicates == 2 and "same values" in warnings[0]
    c = toy_shards(tmp_path / "c", n=5, n_total=10, skip_shards=(0, 1, 3, 4), value=lambda i: i * i + (i == 5))
    with pytest.raises(CertifyNetError, match=r"idx 5 is in '.*a/run.shard1of2.tsv' and '.*c/run.shard2of5.tsv' "
                                              r"with different value \('25' vs '26'\)"), \
            pytest.warns(CertifyNetWarning, match="idx 4 is in both"):
        merge_files(str(tmp_path / "m.tsv"), a + c)


def test_merge_metadata_conflict_is_one_line_error(tmp_path, capsys):
    from certifynet.cli.merge import main
    a = toy_shards(tmp_path, skip_shards=(2, 3))
    b = toy_shards(tmp_path, skip_shards=(0, 1), sigma=0.5)
    rc = main([str(tmp_path / "m.tsv"), *a, *b])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err == (f"error: '{a[0]}' and '{b[0]}' disagree on sigma (0.25 vs 0.5); they are not shards of one run")
    assert not os.path.exists(tmp_path / "m.tsv")
    # volatile fields (command, created, shard, start/end) may differ: two runs over adjacent ranges
    toy_shards(tmp_path / "ok", n=1, n_total=10, start=0, end=5, name="a.tsv", command="x")
    toy_shards(tmp_path / "ok", n=1, n_total=10, start=5, end=10, name="b.tsv", command="y")
    assert main([str(tmp_path / "ok.tsv"), str(tmp_path / "ok" / "*.tsv")]) == 0
    assert "merged 10 rows from 2 files" in capsys.readouterr().out
    assert read_meta(str(tmp_path / "ok.tsv"))["start"] is None


def test_merge_without_dataset_size_reports_idx_gaps(tmp_path):
    paths = toy_shards(tmp_path, n_total=20, drop=(3, 11), n_inputs=None)
    warnings = []
    with pytest.raises(CertifyNetError, match="2 of .* inputs missing"):
        merge_files(str(tmp_path / "m.tsv"), paths, warn=_collect(warnings))
    assert "missing idx 3, 11 (some inputs have no dataset size" in warnings[-1]


def test_merge_guards_its_output(tmp_path):
    paths = toy_shards(tmp_path)
    with pytest.raises(CertifyNetError, match="both the output and an input"):
        merge_files(paths[0], paths)
    other = tmp_path / "precious.tsv"
    other.write_text("idx\tvalue\ttime\n")
    with pytest.raises(CertifyNetError, match="not the output of a merge; pass force") as e:
        merge_files(str(other), paths)
    assert "pass --force" in e.value.render(cli=True)
    assert merge_files(str(other), paths, force=True).rows == 20
    with pytest.raises(CertifyNetError, match="no files match"):
        merge_files(str(tmp_path / "m.tsv"), [str(tmp_path / "nothing*.tsv")])


# ---------------------------------------------------------------- run_shards
TOY_SCRIPT = '''
import os, sys
from certifynet.records import RowLog, parse_shard, select_indices, shard_path
a = sys.argv[1:]
shard, out = parse_shard(a[a.index("--shard") + 1]), a[a.index("--out") + 1]
print("threads", os.environ.get("OMP_NUM_THREADS"))
if os.environ.get("FAIL_SHARD") == str(shard[0]):
    sys.exit("boom: shard %d failed" % shard[0])
path = shard_path(out, shard)
meta = {"kind": "toy", "n_inputs": 30, "start": 0, "end": None, "skip": 1, "max": None, "shard": list(shard)}
with RowLog(path, ["idx", "value", "time"], meta) as log:
    for i in select_indices(30, shard=shard):
        if i not in log.done:
            log.write({"idx": i, "value": i * i, "time": 0})
print("log:", path)
'''


@pytest.mark.e2e
def test_run_shards_reports_failures_and_merges(tmp_path, monkeypatch, capsys):
    from certifynet.cli.run_shards import main
    script = tmp_path / "toy.py"
    script.write_text(TOY_SCRIPT)
    out, merged = str(tmp_path / "res" / "toy.tsv"), str(tmp_path / "res" / "merged.tsv")
    monkeypatch.setenv("FAIL_SHARD", "2")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cmd = ["--", str(script), "--out", out]
    assert main(["--shards", "3", "--jobs", "2", "--threads", "1", "--merge", merged, *cmd]) == 1
    cap = capsys.readouterr()
    assert "shard 2/3: FAILED with exit code 1" in cap.out and "boom: shard 2 failed" in cap.out
    assert "1 of 3 shards failed: 2 (exit 1); rerun with --only 2" in cap.err
    assert not os.path.exists(merged)
    with open(shard_path(out, (0, 3)) + ".log") as f:
        assert "--shard 0/3" in f.readline() and "threads 1" in f.read()
    monkeypatch.delenv("FAIL_SHARD")
    assert main(["--shards", "3", "--only", "2", "--merge", merged, *cmd]) == 0
    assert "merged 30 rows from 3 shards" in capsys.readouterr().out
    assert rows_by_idx(merged)[29]["value"] == "841"
    assert main(["--shards", "3"]) == 2
    assert "put the command after '--'" in capsys.readouterr().err
    assert main(["--shards", "3", "--", str(script), "--shard", "0/3"]) == 2
    assert "must not have --shard" in capsys.readouterr().err


# ---------------------------------------------------------------- certify: sharded and resumed runs equal one run
def test_sharded_certify_equals_single_run(random_model, reference_log, tmp_path, monkeypatch, one_thread):
    out = str(tmp_path / "np.tsv")
    for i in range(4):   # shards 0, 1 via --shard; 2, 3 from the SLURM array variables (array 1-4)
        if i < 2:
            run_certify(certify_argv(random_model, out, 40, shard=f"{i}/4"), monkeypatch)
        else:
            run_certify(certify_argv(random_model, out, 40, shard=None), monkeypatch,
                        {"SLURM_ARRAY_TASK_ID": i + 1, "SLURM_ARRAY_TASK_MIN": 1, "SLURM_ARRAY_TASK_COUNT": 4})
        assert sorted(rows_by_idx(shard_path(out, (i, 4)))) == list(range(10 * i, 10 * i + 10))
    assert not os.path.exists(out)
    rep = merge_files(out, [str(tmp_path / "np.shard*of4.tsv")])
    assert rep.rows == 40 and rep.missing == []
    assert rows_by_idx(out) == rows_by_idx(reference_log)


@pytest.mark.e2e
def test_kill9_then_rerun_resumes_to_the_same_rows(random_model, reference_log, tmp_path, capsys, one_thread):
    """certify.py killed with SIGKILL after its 3rd row (it stalls there until killed, so the point does not
    depend on this machine's speed or load), plus a torn write; the rerun resumes to the unbroken run's rows."""
    from helpers import start_stalling
    out = str(tmp_path / "np.tsv")
    argv = certify_argv(random_model, out, 40)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_ARRAY")}
    proc = start_stalling(CERTIFY, argv, rows=3, env=env)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = n_rows(out)
    assert done == 3
    with open(out, "a") as f:
        f.write("39\t7\t3\t0.12")   # torn write: half a row, no newline
    run_certify(argv)
    assert f"resuming: {done} of 40 inputs already in {out}" in capsys.readouterr().err
    assert rows_by_idx(out) == rows_by_idx(reference_log)
    assert n_rows(out) == 40


# ---------------------------------------------------------------- SLURM templates
TEMPLATES = ["train.sbatch", "sample.sbatch", "certify.sbatch", "merge_analyze.sbatch", "submit_pipeline.sh"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_slurm_templates_parse(name):
    path = os.path.join(SLURM, name)
    with open(path) as f:
        text = f.read()
    assert text.startswith("#!/bin/bash\n") and "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", path], capture_output=True).returncode == 0
    if name in ("sample.sbatch", "certify.sbatch"):
        assert "#SBATCH --array=0-15" in text


@pytest.mark.e2e
def test_submit_pipeline_chains_with_afterok(tmp_path):
    """submit_pipeline.sh (copied into a scratch repo) against a fake sbatch that records its arguments."""
    import shutil
    shutil.copytree(SLURM, tmp_path / "repo" / "scripts" / "slurm")
    fake = tmp_path / "sbatch"
    fake.write_text('#!/bin/bash\necho "$@" >> "$SBATCH_LOG"\necho "$((100 + $(wc -l < "$SBATCH_LOG")));cluster"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SBATCH_LOG": str(tmp_path / "calls"),
           "SHARDS": "8", "OUT": str(tmp_path / "res" / "x.tsv")}
    r = subprocess.run(["bash", str(tmp_path / "repo" / "scripts" / "slurm" / "submit_pipeline.sh")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "repo" / "logs").is_dir() and "merge:   103" in r.stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["--parsable scripts/slurm/train.sbatch",
                     "--parsable --dependency=afterok:101 --array=0-7 scripts/slurm/certify.sbatch",
                     "--parsable --dependency=afterok:102 scripts/slurm/merge_analyze.sbatch"]


@pytest.mark.e2e
@pytest.mark.slow
def test_templates_run_locally(random_model, tmp_path):
    """certify.sbatch as two array tasks, then merge_analyze.sbatch, all as plain bash (tiny N)."""
    out = str(tmp_path / "res" / "np.tsv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(REPO=ROOT, VENV=sys.prefix, MODEL=random_model, SIGMA="0.25", N0="10", N="100", MAX="6", OUT=out,
               OMP_NUM_THREADS="1", SLURM_ARRAY_TASK_COUNT="2", ANALYSIS=str(tmp_path / "analysis"))
    for i in range(2):
        r = subprocess.run(["bash", os.path.join(SLURM, "certify.sbatch")], capture_output=True, text=True,
                           env={**env, "SLURM_ARRAY_TASK_ID": str(i)})
        assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", os.path.join(SLURM, "merge_analyze.sbatch")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "merged 6 rows from 2 files" in r.stdout
    assert sorted(rows_by_idx(out)) == list(range(6))
    assert os.path.isfile(tmp_path / "analysis" / "report.md")


# ---------------------------------------------------------------- done-when: 200 digits, 4 shards, one killed
@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """LeNet trained for one epoch on mnist5k with σ = 0.25 noise (a few seconds on CPU)."""
    return trained_lenet(tmp_path_factory.mktemp("trained") / "lenet.pt")


@pytest.mark.e2e
@pytest.mark.slow
def test_done_when_4_shards_one_killed_equals_single_run(trained_model, tmp_path, one_thread, capsys):
    from certifynet.cli.run_shards import main as run_shards
    out, merged, single = (str(tmp_path / n) for n in ("np.tsv", "merged.tsv", "single.tsv"))
    argv = certify_argv(trained_model, out, 200, shard=None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_ARRAY")}
    env["OMP_NUM_THREADS"] = "1"
    from helpers import start_stalling
    procs = [subprocess.Popen([sys.executable, CERTIFY, *argv, "--shard", f"{i}/4"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in (0, 2, 3)]
    victim = shard_path(out, (1, 4))
    try:   # shard 1 stalls after its 10th row and is killed there: no race with the machine's speed
        os.kill(start_stalling(CERTIFY, [*argv, "--shard", "1/4"], rows=10, env=env).pid, signal.SIGKILL)
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert codes == [0, 0, 0]
    killed_at = n_rows(victim)
    assert killed_at == 10
    with open(victim, "a") as f:
        f.write("99\t3")                     # torn last write
    # rerun the killed shard with the same command (through run_shards), then merge all four
    assert run_shards(["--shards", "4", "--only", "1", "--threads", "1", "--merge", merged, "--", CERTIFY, *argv]) == 0
    assert "merged 200 rows from 4 shards" in capsys.readouterr().out
    with open(victim + ".log") as f:
        assert f"resuming: {killed_at} of 50 inputs" in f.read()
    run_certify(certify_argv(trained_model, single, 200))
    a, b = rows_by_idx(merged), rows_by_idx(single)
    assert sorted(a) == list(range(200)) and a == b
    n_abstain = sum(r["predict"] == "-1" for r in b.values())
    accuracy = sum(r["correct"] == "1" for r in b.values()) / 200
    print(f"done-when: 200 rows equal; killed shard resumed after {killed_at} rows; "
          f"clean accuracy {accuracy:.3f}, {n_abstain} abstains")


@pytest.mark.e2e
@pytest.mark.parametrize("template, env, want, unwanted", [
    ("certify.sbatch", {"METHOD": "np"}, ["--method np", "--N0 100"], ["--iss", "--q-dist"]),
    ("certify.sbatch", {"METHOD": "dsrs"}, ["--method dsrs", "--q-dist truncated", "--N0 100"], ["--iss"]),
    ("certify.sbatch", {"METHOD": "iss-np"}, ["--iss absolute --iss-n0 2000"], ["--N0", "--q-dist"]),
    ("certify.sbatch", {"METHOD": "iss-dsrs", "Q_DIST": "rescaled"},
     ["--iss absolute", "--q-dist rescaled"], ["--N0"]),
    ("sample.sbatch", {"Q_DIST": "truncated"}, ["--q-dist truncated", "--N0 100"], ["--iss"]),
    ("sample.sbatch", {"ISS": "relative"}, ["--iss relative --iss-n0 2000"], ["--N0", "--q-dist"]),
])
def test_templates_bring_the_flags_of_their_method(tmp_path, template, env, want, unwanted):
    """METHOD=dsrs|iss-* (certify) and Q_DIST/ISS (sample) add the sampling flags they need, and never --N0
    under ISS (certify.py refuses it there)."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\necho \"$@\"\n")
    (fake / "python").chmod(0o755)
    r = subprocess.run(["bash", os.path.join(SLURM, template)], capture_output=True, text=True, timeout=300,
                       env={"PATH": f"{fake}:{os.environ['PATH']}", "REPO": ROOT, "VENV": str(tmp_path / "none"),
                            "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2", **env})
    assert r.returncode == 0, r.stderr
    for flag in want:
        assert flag in r.stdout, (flag, r.stdout)
    for flag in unwanted:
        assert flag not in r.stdout, (flag, r.stdout)


@pytest.mark.e2e
def test_certify_template_refuses_an_unknown_method():
    r = subprocess.run(["bash", os.path.join(SLURM, "certify.sbatch")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "REPO": ROOT, "METHOD": "iss_np", "SLURM_ARRAY_TASK_COUNT": "2"})
    assert r.returncode == 2 and "METHOD must be np, dsrs, iss-np or iss-dsrs" in r.stderr


SLEEPER = '''
import os, sys, time
i = int(sys.argv[sys.argv.index("--shard") + 1].split("/")[0])
folder, seconds = sys.argv[1], float(sys.argv[2])
open(os.path.join(folder, f"start{i}"), "w").write(f"{time.time()} {os.getpid()}")
if i < 2 and seconds < 60:   # shards 0 and 1 wait for each other: they can only end if they ran at once
    deadline = time.time() + 300
    while not all(os.path.exists(os.path.join(folder, f"start{j}")) for j in (0, 1)):
        if time.time() > deadline:
            sys.exit("the other shard of the first pair never started")
        time.sleep(0.01)
time.sleep(seconds)
open(os.path.join(folder, f"end{i}"), "w").write(str(time.time()))
'''


def _when_file_appears(path, action, limit=300):
    """Run action() in a thread as soon as `path` exists (checked every 10 ms, for at most `limit` s)."""
    import threading

    def wait():
        deadline = time.time() + limit
        while not os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        action()
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


@pytest.mark.e2e
def test_run_shards_pool_caps_jobs_and_ctrl_c_stops_everything(tmp_path):
    """At most --jobs shards run at once; Ctrl-C terminates the running shards and starts no more. Nothing
    races with the machine's speed: the first two shards wait for each other (they can end only if the pool
    ran them at once), and Ctrl-C comes once the first shard of the second run has started."""
    from certifynet.cli.run_shards import run_all
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    said = []
    codes = run_all([str(script), str(tmp_path), "0.2"], 4, 2, None, str(tmp_path / "logs"), 1, say=said.append)
    assert codes == {0: 0, 1: 0, 2: 0, 3: 0} and sum("done in" in s for s in said) == 4
    spans = [(float((tmp_path / f"start{i}").read_text().split()[0]), float((tmp_path / f"end{i}").read_text()))
             for i in range(4)]
    assert max(sum(a <= t < b for a, b in spans) for t, _ in spans) == 2  # two at a time, never three

    for f in [*tmp_path.glob("start*"), *tmp_path.glob("end*")]:
        f.unlink()
    ctrl_c = _when_file_appears(tmp_path / "start0", lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        run_all([str(script), str(tmp_path), "60"], 3, 1, None, str(tmp_path / "logs2"), 1, say=said.append)
    ctrl_c.join()
    started = sorted(tmp_path.glob("start*"))
    assert [f.name for f in started] == ["start0"]  # the queued shards never started
    assert not list(tmp_path.glob("end*"))          # the running one was stopped, not waited for
    pid = int(started[0].read_text().split()[1])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # terminated and reaped
    assert not (tmp_path / "logs2" / "sleeper.shard1of3.log").exists()
