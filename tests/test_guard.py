"""The output guard (issue 25): nothing that is not ours is touched, another run's output is refused naming the
field, every writer holds the lock, --fresh deletes only the quickstart's own files, a file deleted while it
is written is an error. Each seen failure has its own test (they fail on the code before the guard); then
siblings; then a walk over every command checking that each write is covered by a lock it holds."""
from __future__ import annotations

import builtins
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from certifynet.cli import analyze, certify, merge, quickstart, sample, train, train_denoiser
from certifynet.errors import CertifyNetError
from certifynet.records import RowLog, WriterLock, read_meta, read_rows, select_indices, shard_path
from certifynet.records.merge import merge_files

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["mnist5k", "lenet", "--train-subset", "64", "--test-subset", "32", "--batch", "32", "--workers", "0",
         "--device", "cpu", "--no-progress", "--lr", "0.01", "--noise", "0.25"]
SMALL = ["--sigma", "0.25", "--N0", "10", "--N", "40", "--batch", "40", "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def run(main, argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> bool:
    """stderr ends with one `error: ...` line, the only one, and it is not the bug safety net's."""
    lines = err.splitlines()
    return bool(lines) and lines[-1].startswith("error: ") and sum(ln.startswith("error:") for ln in lines) == 1 \
        and err.endswith("\n") and "unexpected" not in err


def snapshot(folder) -> dict:
    """{relative path: bytes} of every file under `folder`."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from helpers import untrained_lenet
    return untrained_lenet(tmp_path_factory.mktemp("model") / "lenet.pth")


def toy_shards(folder, sigma=0.25, n=2, n_total=6, value=lambda i: i * i, name="run.tsv"):
    paths = []
    for i in range(n):
        p = shard_path(os.path.join(folder, name), (i, n))
        m = {"kind": "toy", "sigma": sigma, "n_inputs": n_total, "start": 0, "end": None, "skip": 1, "max": None,
             "shard": [i, n]}
        with RowLog(p, ["idx", "value", "time"], m) as log:
            for idx in select_indices(n_total, shard=(i, n)):
                log.write({"idx": idx, "value": value(idx), "time": 0.0})
        paths.append(p)
    return paths


# ================================================================ the failures that were seen
def test_fresh_with_a_bad_flag_deletes_nothing(tmp_path, capsys):
    """Seen: `--fresh --out mywork --sigma -1` deleted mywork/, then refused --sigma."""
    mine = tmp_path / "mywork"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    rc, _, err = run(quickstart.main, ["--fresh", "--out", mine, "--sigma", "-1"], capsys)
    assert rc == 2 and one_error_line(err) and "--sigma" in err
    assert (mine / "thesis.tex").read_text() == "years of work\n"


def test_fresh_refuses_a_folder_that_is_not_a_quickstart(tmp_path, capsys, monkeypatch):
    """Valid flags: --fresh still may not delete a folder the quickstart did not write (its stages never run)."""
    def no_training(argv=None):
        raise RuntimeError("a stage ran")

    monkeypatch.setattr(train, "main", no_training)
    mine = tmp_path / "mywork"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work\n")
    rc, _, err = run(quickstart.main, ["--fresh", "--out", mine, "--digits", "2", "--epochs", "1"], capsys)
    assert rc == 2 and one_error_line(err) and "not written by a certifynet quickstart" in err and "--out" in err
    assert snapshot(mine) == {"thesis.tex": b"years of work\n"}


def test_train_refuses_a_log_it_did_not_write(tmp_path, capsys):
    """Seen: train.py overwrote a log.csv / log.meta.json in --outdir that it did not write."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv").write_text("my,own\n1,2\n")
    rc, _, err = run(train.main, [*TRAIN, "--epochs", "1", "--outdir", out], capsys)
    assert rc == 2 and one_error_line(err) and "log.csv" in err and "--outdir" in err
    assert snapshot(out) == {"log.csv": b"my,own\n1,2\n"}


def test_ctrl_c_leaves_a_log_of_another_kind_untouched(tmp_path, capsys, monkeypatch):
    """Seen: also when interrupted (Ctrl-C in the first epoch), the files were already gone."""
    from certifynet.training import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv").write_text("step,loss\n0,1.5\n")
    (out / "log.meta.json").write_text(json.dumps({"kind": "my_tool_log"}))
    before = snapshot(out)
    rc, _, err = run(train.main, [*TRAIN, "--epochs", "1", "--outdir", out], capsys)
    assert rc == 2 and one_error_line(err) and "my_tool_log" in err
    assert snapshot(out) == before


def test_a_resume_never_loses_the_kept_rows(tmp_path, capsys, monkeypatch):
    """Seen: a resumed run deleted log.csv, then wrote the kept rows back: a kill in between lost them."""
    from certifynet.training import epoch_log
    out = tmp_path / "run"
    assert run(train.main, [*TRAIN, "--epochs", "2", "--outdir", out], capsys)[0] == 0
    rows = (out / "log.csv").read_text()

    class Killed(RowLog):
        def __init__(self, *args, **kwargs):
            raise KeyboardInterrupt  # the kill, right after the log was prepared

    monkeypatch.setattr(epoch_log, "RowLog", Killed)
    rc, _, _ = run(train.main, [*TRAIN, "--epochs", "3", "--outdir", out, "--resume"], capsys)
    assert rc == 130
    assert (out / "log.csv").read_text() == rows  # epochs 0 and 1 are both before the checkpoint's epoch 2


def test_two_merges_into_one_output_cannot_interleave(tmp_path):
    """Seen: two merges at once left one run's rows under the other's sidecar. A merge holds its output."""
    paths = toy_shards(tmp_path)
    out = str(tmp_path / "merged.tsv")
    other = WriterLock(out).acquire(out)  # another merge into OUT, mid-way
    try:
        with pytest.raises(CertifyNetError, match="is being written by pid"):
            merge_files(out, paths)
    finally:
        other.release()
    assert not os.path.exists(out)
    assert merge_files(out, paths).rows == 6


def test_a_merge_of_another_run_is_not_replaced(tmp_path, capsys):
    """Seen: merging σ=0.5 shards over an earlier σ=0.25 merge output silently replaced it."""
    out = str(tmp_path / "merged.tsv")
    a = toy_shards(tmp_path / "a", sigma=0.25)
    b = toy_shards(tmp_path / "b", sigma=0.5)
    assert run(merge.main, [out, *a], capsys)[0] == 0
    before = snapshot(tmp_path)
    rc, _, err = run(merge.main, [out, *b], capsys)
    assert rc == 2 and one_error_line(err) and "sigma 0.25 → 0.5" in err and "--force" in err
    assert snapshot(tmp_path) == before
    assert run(merge.main, [out, *b, "--force"], capsys)[0] == 0  # explicit: replaced, and recorded
    meta = read_meta(out)
    assert meta["sigma"] == 0.5 and meta["forced"]["changes"][0]["field"] == "sigma"
    assert run(merge.main, [out, *b], capsys)[0] == 0  # the same run again: no force needed


def test_a_forced_merge_of_counts_still_certifies(model, tmp_path, capsys):
    """--force records what it replaced in the merged sidecar, outside the settings digest: the counts file
    it writes still passes every integrity check."""
    for i in (0, 1):
        assert sample.main(["--model", model, *SMALL, "--max", "4", "--shard", f"{i}/2",
                            "--out", str(tmp_path / "c.csv")]) == 0
    out = tmp_path / "merged.csv"
    out.write_text("not a merge output\n")
    shards = [str(tmp_path / f"c.shard{i}of2.csv") for i in (0, 1)]
    rc, _, err = run(merge.main, [out, *shards], capsys)
    assert rc == 2 and one_error_line(err) and "not the output of a merge" in err
    assert run(merge.main, [out, *shards, "--force"], capsys)[0] == 0
    assert read_meta(str(out))["forced"]["replaced"] == "a file that was not the output of a merge"
    rc, _, err = run(certify.main, ["--counts", out, "--out", tmp_path / "np.tsv", "--no-progress"], capsys)
    assert rc == 0 and "incomplete" not in err, err


def test_sample_stops_when_its_folder_is_deleted(model, tmp_path, capsys, monkeypatch):
    """Seen: with --out's folder deleted mid-run, sample.py wrote into the unlinked file, exited 0 and printed
    a path that no longer existed."""
    from certifynet.sampling.inputs import InputSampler
    folder = tmp_path / "res"
    real, calls = InputSampler.sample, []

    def sample_then_delete(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            shutil.rmtree(folder)  # someone removes the folder while the run writes
        return real(self, *args, **kwargs)

    monkeypatch.setattr(InputSampler, "sample", sample_then_delete)
    rc, out, err = run(sample.main, ["--model", model, *SMALL, "--max", "4", "--out", folder / "c.csv"], capsys)
    assert rc == 2 and one_error_line(err) and "was deleted" in err
    assert "counts:" not in out and len(calls) == 2  # it stopped at the first row it could not keep


# ================================================================ siblings
def test_fresh_deletes_only_what_a_quickstart_wrote(tmp_path, capsys, monkeypatch):
    """--fresh on a quickstart folder removes the entries its marker lists, after every flag is checked; a
    file the user added stays. Other settings without --fresh are refused naming them."""
    from certifynet.records.guard import MARKER, claim_folder
    out = tmp_path / "qs"
    a = quickstart.build_parser().parse_args(["--out", str(out)])
    with claim_folder(str(out), "quickstart", quickstart.settings(a)):
        (out / "counts_np.csv").write_text("idx\n")
        (out / "lenet_gaussian").mkdir()
        (out / "lenet_gaussian" / "checkpoint.pth").write_bytes(b"x")
    (out / "notes.txt").write_text("mine\n")
    assert json.loads((out / MARKER).read_text())["files"] == ["counts_np.csv", "lenet_gaussian"]
    rc, _, err = run(quickstart.main, ["--out", out, "--sigma", "0.5"], capsys)
    assert rc == 2 and one_error_line(err) and "sigma 0.25 → 0.5" in err and "--fresh" in err
    ran = []
    monkeypatch.setattr(quickstart, "run_demo", lambda demo, a: ran.append(demo.checking))
    rc, _, err = run(quickstart.main, ["--out", out, "--sigma", "0.5", "--fresh"], capsys)
    assert rc == 0, err
    assert ran == [True, False] and sorted(os.listdir(out)) == [MARKER, "notes.txt"]
    assert json.loads((out / MARKER).read_text())["settings"]["sigma"] == 0.5


def test_quickstart_checks_every_stage_before_it_starts(tmp_path, capsys, monkeypatch):
    """A late refusal: --N 150 used to train the model and sample NP and DSRS before ISS-DSRS refused it."""
    monkeypatch.setattr(train, "main", lambda argv=None: pytest.fail("a stage ran"))
    for argv, needle in ((["--N", "150"], "--N must be in [200"), (["--digits", "0"], "--digits must be >= 1"),
                         (["--denoiser-sigma", "nan"], "--denoiser-sigma")):
        rc, _, err = run(quickstart.main, ["--out", tmp_path / "qs", *argv], capsys)
        assert rc == 2 and one_error_line(err) and needle in err, err
    assert not (tmp_path / "qs").exists()


def test_training_log_of_another_run_needs_overwrite(tmp_path, capsys):
    """A log of ours made with another lr (no checkpoint: its run failed early) is refused naming lr; --overwrite
    replaces it."""
    out = tmp_path / "run"
    assert run(train.main, [*TRAIN, "--epochs", "0", "--outdir", out], capsys)[0] == 0
    (out / "checkpoint.pth").unlink()
    rc, _, err = run(train.main, [*TRAIN, "--epochs", "0", "--outdir", out, "--lr", "0.05"], capsys)
    assert rc == 2 and one_error_line(err) and "lr 0.01 → 0.05" in err and "--overwrite" in err
    assert run(train.main, [*TRAIN, "--epochs", "0", "--outdir", out, "--lr", "0.05", "--overwrite"], capsys)[0] == 0
    assert read_meta(str(out / "log.csv"), sidecar=str(out / "log.meta.json"))["lr"] == 0.05


def test_resume_with_other_hyper_parameters(tmp_path, capsys):
    """Refused naming them; --force continues and records each change in log.meta.json; --force without
    --resume does not apply."""
    out = tmp_path / "run"
    assert run(train.main, [*TRAIN, "--epochs", "1", "--outdir", out], capsys)[0] == 0
    argv = [*TRAIN, "--epochs", "2", "--outdir", out, "--resume", "--momentum", "0.5", "--batch", "16"]
    rc, _, err = run(train.main, argv, capsys)
    assert rc == 2 and one_error_line(err) and "momentum 0.9 → 0.5" in err and "batch 32 → 16" in err
    assert "--force" in err
    assert [r["epoch"] for r in read_rows(str(out / "log.csv"))[1]] == ["0"]
    assert run(train.main, [*argv, "--force"], capsys)[0] == 0
    meta = json.loads((out / "log.meta.json").read_text())
    assert {c["field"]: (c["was"], c["now"], c["epoch"]) for c in meta["changes"]} == {
        "batch": (32, 16, 1), "momentum": (0.9, 0.5, 1)}
    assert [r["epoch"] for r in read_rows(str(out / "log.csv"))[1]] == ["0", "1"]
    rc, _, err = run(train.main, [*TRAIN, "--epochs", "0", "--outdir", tmp_path / "x", "--force"], capsys)
    assert rc == 2 and "--force does not apply without --resume" in err


@pytest.mark.parametrize("flag, value", [("--gamma", "inf"), ("--weight-decay", "inf"), ("--momentum", "nan"),
                                         ("--workers", str(10 ** 9)), ("--normalization", "nan/1")])
def test_training_refuses_non_finite_and_absurd_values(tmp_path, capsys, flag, value):
    rc, _, err = run(train.main, [*TRAIN, "--epochs", "0", "--outdir", tmp_path / "o", flag, value], capsys)
    assert rc == 2 and one_error_line(err) and (flag in err or "normalization" in err), err
    assert not (tmp_path / "o").exists()


def test_denoiser_outputs_go_through_the_guard(tmp_path, capsys, model):
    """A foreign log.csv is refused before anything loads; a resume with another lr is refused unless --force,
    which is recorded; a fresh run over an earlier log of the same settings without its checkpoint starts
    the log again (it used to fail with 'idx written twice')."""
    common = ["--dataset", "mnist5k", "--arch", "drunet_small", "--sigma", "0.25", "--batch", "8", "--train-subset",
              "16", "--eval-subset", "8", "--eval-batch", "8", "--device", "cpu", "--no-progress"]
    out = tmp_path / "den"
    out.mkdir()
    (out / "log.csv").write_text("mine\n")
    rc, _, err = run(train_denoiser.main, [*common, "--epochs", "1", "--outdir", out], capsys)
    assert rc == 2 and one_error_line(err) and "no sidecar" in err and (out / "log.csv").read_text() == "mine\n"
    (out / "log.csv").unlink()
    assert run(train_denoiser.main, [*common, "--epochs", "1", "--outdir", out], capsys)[0] == 0
    rc, _, err = run(train_denoiser.main, [*common, "--epochs", "2", "--outdir", out, "--resume", "--lr", "0.01"],
                     capsys)
    assert rc == 2 and one_error_line(err) and "lr 0.001 → 0.01" in err and "--force" in err
    rc, _, err = run(train_denoiser.main, [*common, "--epochs", "2", "--outdir", out, "--resume", "--lr", "0.01",
                                           "--force"], capsys)
    assert rc == 0, err
    meta = read_meta(str(out / "log.csv"))
    assert [(c["field"], c["was"], c["now"]) for c in meta["changes"]] == [("lr", 0.001, 0.01)]
    assert [r["epoch"] for r in read_rows(str(out / "log.csv"))[1]] == ["1", "2"]
    (out / "denoiser.pth").unlink()  # a fresh run of the same settings starts the log again
    assert run(train_denoiser.main, [*common, "--epochs", "1", "--outdir", out, "--lr", "0.01"], capsys)[0] == 0
    assert [r["epoch"] for r in read_rows(str(out / "log.csv"))[1]] == ["1"]


@pytest.mark.parametrize("content, needle", [(b"\xff\xfe\x00binary", "not UTF-8"),
                                             (b'{"lr": NaN}', "NaN is not a valid value"),
                                             (b'{"sigma_range": [0.1, 1e999]}', "expected numbers"),
                                             (b" " * (2 << 20), "not an options file")])
def test_malformed_option_files_are_one_line(tmp_path, capsys, content, needle):
    opt = tmp_path / "o.json"
    opt.write_bytes(content)
    rc, _, err = run(train_denoiser.main, ["--opt", opt, "--outdir", tmp_path / "o"], capsys)
    assert rc == 2 and one_error_line(err) and needle in err, err
    assert not (tmp_path / "o").exists()


def test_analysis_folder_is_ours_or_refused(tmp_path, capsys):
    """analyze.py --out: a folder of other files is refused untouched; an analysis of other logs needs --force;
    a folder holding only an older version's analysis outputs is adopted."""
    from test_analysis import ROWS, write_log
    a, b = write_log(tmp_path / "a.tsv", ROWS), write_log(tmp_path / "b.tsv", ROWS)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table.md").write_text("my table\n")
    (mine / "notes.txt").write_text("mine\n")
    rc, _, err = run(analyze.main, [a, "--out", mine], capsys)
    assert rc == 2 and one_error_line(err) and "not written by a certifynet analysis" in err
    assert snapshot(mine) == {"notes.txt": b"mine\n", "table.md": b"my table\n"}
    out = tmp_path / "out"
    assert run(analyze.main, [a, "--out", out], capsys)[0] == 0
    rc, _, err = run(analyze.main, [b, "--out", out], capsys)
    assert rc == 2 and one_error_line(err) and "logs" in err and "--force" in err
    assert run(analyze.main, [b, "--out", out, "--force"], capsys)[0] == 0
    old = tmp_path / "old"  # written by a version without markers
    old.mkdir()
    (old / "report.md").write_text("old\n")
    assert run(analyze.main, [a, "--out", old], capsys)[0] == 0 and (old / "report.md").read_text() != "old\n"


def test_ddpm_training_leaves_a_downloaded_model_folder_alone(tmp_path, capsys):
    """train_ddpm.py --outdir on a diffusers folder it did not write used to replace its config and weights
    (only train_state.pt was checked). A folder of its own from before markers is still resumed."""
    pytest.importorskip("diffusers")
    from certifynet.cli.train_ddpm import main
    model = tmp_path / "downloaded"
    model.mkdir()
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"):
        (model / name).write_text(f"their {name}\n")
    before = snapshot(model)
    argv = ["--size", "quick", "--train-subset", "32", "--batch", "32", "--no-progress"]
    rc, _, err = run(main, [*argv, "--epochs", "1", "--outdir", model], capsys)
    assert rc == 2 and one_error_line(err) and "--outdir" in err and "not written by a certifynet ddpm" in err
    assert snapshot(model) == before
    ours = tmp_path / "ours"
    assert run(main, [*argv, "--epochs", "1", "--outdir", ours], capsys)[0] in (0, None)
    (ours / ".certifynet.json").unlink()  # as an older version left it
    assert run(main, [*argv, "--epochs", "2", "--outdir", ours, "--resume"], capsys)[0] in (0, None)
    assert [r["epoch"] for r in read_rows(str(ours / "log.csv"))[1]] == ["1", "2"]


def test_run_shards_checks_its_merge_output_before_any_shard_runs(tmp_path, capsys):
    from certifynet.cli.run_shards import main
    precious = tmp_path / "precious.tsv"
    precious.write_text("mine\n")
    script = tmp_path / "never.py"
    script.write_text("raise SystemExit('a shard ran')\n")
    rc, out, err = run(main, ["--shards", "2", "--merge", precious, "--", script, "--out", tmp_path / "x.tsv"],
                       capsys)
    assert rc == 2 and one_error_line(err) and "not the output of a merge" in err and "started" not in out
    assert precious.read_text() == "mine\n"
    (tmp_path / "x.shard0of2.tsv.log").write_text("my notes\n")  # a shard log that is not ours
    rc, _, err = run(main, ["--shards", "2", "--", script, "--out", tmp_path / "x.tsv"], capsys)
    assert rc == 2 and "not a shard log" in err and (tmp_path / "x.shard0of2.tsv.log").read_text() == "my notes\n"


def test_duplicates_that_differ_only_by_formatting_are_one_row(tmp_path):
    a = toy_shards(tmp_path / "a", value=lambda i: "0.5")
    b = toy_shards(tmp_path / "b", value=lambda i: "5e-1")
    with pytest.warns(Warning, match="same values"):
        assert merge_files(str(tmp_path / "m.tsv"), [*a, *b]).duplicates == 6


def test_a_damaged_dataset_cache_is_rebuilt(tmp_path):
    """A cache file cut short (a zip header and garbage) used to end in 'unexpected BadZipFile'."""
    from certifynet.data import get_dataset
    (tmp_path / "mnist5k.npz").write_bytes(b"PK\x03\x04garbage")
    assert len(get_dataset("mnist5k", "test", str(tmp_path))) == 1000


def test_errors_stay_one_line_when_a_value_holds_a_line_break(tmp_path, capsys):
    rc, _, err = run(certify.main, ["--counts", tmp_path / "no\nsuch.csv"], capsys)
    assert rc == 2 and one_error_line(err) and "no\\nsuch.csv" in err


# ================================================================ the guard itself
def test_output_path_errors_name_the_argument_the_callers_way(tmp_path):
    """paths' refusals name their argument as a field: `out` / `outdir` from Python, --out / --outdir on the
    command line; a positional is named as given (its metavar). No library message spells a flag itself."""
    from certifynet.paths import check_output_file, check_output_folder
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    cases = [(lambda: check_output_folder(str(plain), name="outdir"), "outdir", "--outdir"),
             (lambda: check_output_file(str(plain / "x.csv")), "the folder of out", "the folder of --out"),
             (lambda: check_output_file(str(tmp_path)), "out ", "--out "),
             (lambda: check_output_file(str(tmp_path) + "/x.csv.meta.json", "merge"), "merge ", "--merge "),
             (lambda: check_output_file(str(tmp_path), what="OUT"), "OUT ", "OUT ")]
    for check, python, cli in cases:
        with pytest.raises(CertifyNetError) as e:
            check()
        assert str(e.value).startswith(python) or f" {python}" in str(e.value), str(e.value)
        assert "--" not in str(e.value) and cli in e.value.render(cli=True)


def test_ddpm_outdir_on_a_file_names_the_argument(tmp_path):
    """train_ddpm's folder check used to pass the text "--outdir" into the library message (Python users read
    a flag); and a refused run creates no folder."""
    from certifynet.denoise.diffusion.train import DDPMOptions, train_ddpm
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    with pytest.raises(CertifyNetError) as e:
        train_ddpm(DDPMOptions(outdir=str(plain / "run")), progress=False)
    assert str(e.value).startswith("cannot create outdir ") and "--outdir" in e.value.render(cli=True)


def test_settings_compare_numbers_by_value():
    from certifynet.records.guard import settings_conflicts
    assert settings_conflicts({"s": 0.5, "q": "0.50", "n": 10}, {"s": "5e-1", "q": 0.5, "n": 10.0}) == []
    assert settings_conflicts({"flag": True, "big": 2 ** 60}, {"flag": 1, "big": 2 ** 60 + 1}) == ["big", "flag"]
    assert settings_conflicts({"a": [0.25, "x"]}, {"a": ("0.250", "x")}) == []
    assert settings_conflicts({"a": 1, "t": "now"}, {"a": 2, "t": "later"}, ignore={"t"}) == ["a"]


def test_folder_claims(tmp_path):
    from certifynet.records.guard import MARKER, check_folder, claim_folder
    from certifynet.records.lock import covered
    f = tmp_path / "f"
    with claim_folder(str(f), "analysis", {"logs": ["a"]}):
        assert covered(str(f / "x" / "y.png")) and not covered(str(tmp_path / "elsewhere.png"))
        with pytest.raises(CertifyNetError, match="being written"):  # another process would be refused: the lock
            WriterLock(str(f / ".certifynet")).acquire(str(f))
        assert claim_folder(str(f / "sub"), "analysis").nested and (f / "sub").is_dir()  # inside a held folder
        (f / "table.md").write_text("t")
    assert json.loads((f / MARKER).read_text())["files"] == ["sub", "table.md"] and not covered(str(f / "table.md"))
    with pytest.raises(CertifyNetError, match="holds the output of a certifynet analysis, not of a quickstart"):
        check_folder(str(f), "quickstart")
    marker = json.loads((f / MARKER).read_text())
    (f / MARKER).write_text(json.dumps({**marker, "files": ["../../etc"]}))
    with pytest.raises(CertifyNetError, match="damaged"):  # a marker may only name its own entries
        claim_folder(str(f), "analysis", {"logs": ["a"]})
    empty = tmp_path / "never"
    with pytest.raises(RuntimeError), claim_folder(str(empty), "analysis"):
        raise RuntimeError("failed before writing anything")
    assert not empty.exists()  # a failed run that wrote nothing leaves nothing


def test_check_linked(tmp_path):
    from certifynet.records.guard import check_linked
    path = tmp_path / "x.tsv"
    with open(path, "w") as f:
        check_linked(f, str(path))
        os.replace(tmp_path / "x.tsv", tmp_path / "y.tsv")
        with pytest.raises(CertifyNetError, match="deleted or replaced"):
            check_linked(f, str(path))


# ================================================================ every writer holds the lock
class WriteMonitor:
    """Records each write-like call on a path under `root` that no lock of this process covers."""

    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def __init__(self, root: Path, monkeypatch):
        self.root, self.uncovered, self.seen = str(root), [], 0
        real_open, real_os_open = builtins.open, os.open
        for name in ("replace", "rename"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, lambda src, dst, *a, _r=real, _n=name, **k: (self.check(dst, _n),
                                                                                        _r(src, dst, *a, **k))[1])
        for name in ("unlink", "remove", "rmdir"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, lambda p, *a, _r=real, _n=name, **k: (self.check(p, _n), _r(p, *a, **k))[1])
        real_rmtree = shutil.rmtree
        monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: (self.check(p, "rmtree"), real_rmtree(p, *a, **k))[1])

        def checked_open(file, mode="r", *a, **k):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                self.check(file, f"open {mode}")
            return real_open(file, mode, *a, **k)

        def checked_os_open(path, flags, *a, **k):
            if flags & self.WRITE_FLAGS:
                self.check(path, "os.open")
            return real_os_open(path, flags, *a, **k)

        monkeypatch.setattr(builtins, "open", checked_open)
        monkeypatch.setattr(io, "open", checked_open)
        monkeypatch.setattr(os, "open", checked_os_open)

    def check(self, path, what: str) -> None:
        from certifynet.records.lock import covered
        path = os.path.abspath(os.fsdecode(path))
        if not path.startswith(self.root + os.sep):
            return
        self.seen += 1
        name = os.path.basename(path)
        if name.startswith(".tmp-") or name.endswith(".lock"):
            return  # atomic_write's temp files (their target is checked at os.replace), and lock files
        if not covered(path):
            self.uncovered.append(f"{what} {os.path.relpath(path, self.root)}")


def test_every_write_of_every_command_is_covered_by_a_lock_it_holds(model, tmp_path, capsys, monkeypatch):
    """Each command writes only under a claim it holds (`records.lock.covered`) at the moment of the write: a
    writer added without the guard fails here."""
    from certifynet.cli import attack, predict
    w = tmp_path / "w"
    w.mkdir()
    m = WriteMonitor(w, monkeypatch)
    counts = w / "c.shard0of2.csv"
    for i in (0, 1):
        assert sample.main(["--model", model, *SMALL, "--max", "4", "--shard", f"{i}/2",
                            "--out", str(w / "c.csv")]) == 0
    steps = [
        (merge.main, [w / "c.csv", counts, w / "c.shard1of2.csv"]),
        (certify.main, ["--counts", w / "c.csv", "--out", w / "np.tsv", "--no-progress"]),
        (predict.main, ["--model", model, "--sigma", "0.25", "--N", "40", "--batch", "40", "--max", "2",
                        "--no-progress", "--out", w / "p.tsv"]),
        (attack.main, ["--log", w / "np.tsv", "--model", model, "--m", "2", "--steps", "1", "--N", "20", "--batch",
                       "20", "--max", "2", "--no-progress", "--out", w / "audit.tsv"]),
        (analyze.main, [w / "np.tsv", "--out", w / "analysis"]),
        (train.main, [*TRAIN, "--epochs", "1", "--outdir", w / "train"]),
        (train.main, [*TRAIN, "--epochs", "2", "--outdir", w / "train", "--resume"]),
        (train_denoiser.main, ["--dataset", "mnist5k", "--arch", "drunet_small", "--sigma", "0.25", "--batch", "8",
                               "--train-subset", "8", "--eval-subset", "8", "--eval-batch", "8", "--epochs", "1",
                               "--device", "cpu", "--no-progress", "--outdir", w / "den"]),
    ]
    try:
        import diffusers  # noqa: F401

        from certifynet.cli import train_ddpm
        steps.append((lambda argv: train_ddpm.main(argv) or 0,
                      ["--size", "quick", "--train-subset", "32", "--batch", "32", "--epochs", "1", "--no-progress",
                       "--outdir", w / "ddpm"]))
    except ImportError:  # the DDPM trainer needs diffusers (an optional extra)
        pass
    for main, argv in steps:
        assert main([str(a) for a in argv]) == 0, (main.__module__, capsys.readouterr().err)
    capsys.readouterr()
    assert m.seen > 50 and m.uncovered == [], m.uncovered  # the monitor saw the writes; none was unguarded
    with open(w / "stray.txt", "w"):  # control: a write outside every claim is caught
        pass
    assert m.uncovered == ["open w stray.txt"]
    assert os.path.isfile(w / "audit.tsv.summary.json") and os.path.isfile(w / "analysis" / "report.md")


# Every call that writes or deletes a file, by module (relative to src/certifynet): how many, and why none
# bypasses the guard. A new writer fails this test until it goes through the guard (or is listed here).
WRITERS = {
    "records/files.py": (5, "atomic_write itself: its callers hold the lock of the target"),
    "records/lock.py": (2, "the lock file itself"),
    "records/rowlog.py": (8, "RowLog's own file and sidecar, while it holds its WriterLock"),
    "records/sidecar.py": (1, "write_meta: RowLog's sidecar, under RowLog's lock"),
    "records/guard.py": (9, "markers, --fresh clean-up and write_beside: under the claim's lock"),
    "records/runlog.py": (2, "rewrite_log: a training run's log and sidecar, under the run's lock"),
    "records/merge.py": (2, "merge output and sidecar, under the output's WriterLock"),
    "models/checkpoint.py": (4, "save_checkpoint → write_checkpoint → atomic_torch_save → atomic_write: "
                                     "callers hold a lock"),
    "denoise/checkpoint.py": (1, "save_denoiser: called under the denoiser run's lock"),
    "denoise/diffusion/train.py": (5, "the DDPM folder (diffusers files, train_state.pt), inside its folder claim"),
    "denoise/train.py": (2, "denoiser.pth each epoch and the run folder, under the run's WriterLock"),
    "training/model.py": (1, "checkpoint.pth each epoch, under RunFiles' lock"),
    "training/loop.py": (2, "run.save: checkpoint.pth, under RunFiles' lock"),
    "training/epoch_log.py": (3, "the run folder made and removed by RunFiles, under its lock"),
    "cli/run_shards.py": (2, "shard logs, under their WriterLock (check_shard_log decides ownership)"),
    "analysis/report.py": (1, "report.md, inside write_outputs' claim"),
    "analysis/tables.py": (3, "tables, inside write_outputs' claim"),
    "analysis/plots.py": (2, "figures, inside the claim of their caller (analyze.py, write_outputs, quickstart)"),
    "data.py": (3, "the mnist5k cache under --data-dir: a cache, not an output"),
    # The web app: the server holds `<results>/web/.server.lock` for its life (web.lock.ServerLock: one server per
    # results folder; job folders, and by default uploads and models.json, lie under it); not yet records.guard.
    "web/lock.py": (2, "the server lock file itself"),
    "web/jobs.py": (4, "job folders, job.json and worker.log, under the server lock"),
    "web/worker.py": (5, "progress.json and a job's selection, inside its job folder"),
    "web/warm.py": (2, "the warm worker's answers and a probe image in a temporary folder"),
    "web/catalog.py": (1, "models.json (architectures the user gave), written by the server"),
    "web/views/models.py": (8, "uploaded checkpoints, into the upload folder, written by the server"),
    "web/views/api.py": (1, "an uploaded input, into a temporary folder"),
    "web/images.py": (3, "an uploaded or drawn input image, into its job folder (one save is in memory)"),
}
# Calls that write: module.function, any .method of these names, and open/fdopen with a writing mode.
MODULE_WRITES = {"os": {"unlink", "remove", "rmdir", "replace", "rename", "makedirs", "mkdir", "ftruncate"},
                 "shutil": {"rmtree", "move", "copy", "copy2", "copyfile", "copyfileobj", "copytree"},
                 "tempfile": {"mkstemp", "mkdtemp"}, "np": {"save", "savez", "savez_compressed"},
                 "torch": {"save"}}
METHOD_WRITES = {"savefig", "write_text", "write_bytes", "to_csv", "atomic_write", "atomic_torch_save",
                 "write_meta", "write_checkpoint", "save_checkpoint", "save_denoiser", "save"}


def _write_calls(tree) -> int:
    import ast
    n = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in MODULE_WRITES:
            n += f.attr in MODULE_WRITES[f.value.id]
            if f.value.id == "os" and f.attr == "fdopen":
                n += _writing_mode(node)
        elif isinstance(f, ast.Attribute):
            n += f.attr in METHOD_WRITES
        elif isinstance(f, ast.Name):
            n += f.id in METHOD_WRITES or (f.id == "open" and _writing_mode(node))
    return n


def _writing_mode(call) -> bool:
    import ast
    mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
    if mode is None:
        return False
    if isinstance(mode, ast.Constant):
        return any(c in str(mode.value) for c in "wax+")
    return True  # a computed mode: count it


def test_no_writer_bypasses_the_guard():
    """Every module of the package under test (the library, every command in cli/, the web app) is read."""
    import ast

    import certifynet
    src = Path(certifynet.__file__).resolve().parent
    found, read = {}, set()
    for path in sorted(src.rglob("*.py")):
        name = str(path.relative_to(src))
        read.add(name)
        n = _write_calls(ast.parse(path.read_text()))
        if n:
            found[name] = n
    commands = {f"cli/{p.name}" for p in (ROOT / "scripts").glob("*.py")}
    assert commands <= read and "cli/train_ddpm.py" in commands and any(n.startswith("web/views/") for n in read)
    assert found == {k: v[0] for k, v in WRITERS.items()}
