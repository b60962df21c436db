"""Know the cost first (sample.py / certify.py --estimate, `sampling.estimate.estimate_run`): the projected forward
passes against what the run then spends, the options' refusals, the shard plan and its sbatch command (run through
the real templates with a fake sbatch and python), and that nothing is written."""
import math
import os
import shlex
import subprocess

import pytest

from certifynet.cli import certify as certify_cli
from certifynet.cli import parse
from certifynet.cli import sample as sample_cli
from certifynet.errors import CertifyNetError
from certifynet.records import read_rows
from certifynet.sampling import SamplingConfig, set_progress_hook
from certifynet.sampling.config import format_duration, parse_time_limit
from certifynet.sampling.estimate import HEADROOM, Estimate, estimate_run, submit_command

from helpers import trained_lenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RADII = ["0.25", "0.5", "0.75", "1.0"]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """LeNet trained for one epoch on mnist5k with σ = 0.25 noise (a few seconds on CPU): digits from all-hit to
    abstaining, as in the quickstart."""
    return trained_lenet(tmp_path_factory.mktemp("model") / "lenet.pth")


def _config(cli, argv) -> SamplingConfig:
    return SamplingConfig.from_namespace(parse(cli.build_parser(), [str(a) for a in argv]))


# quickstart's settings (σ = 0.25, N = 2000, N0 = 100, batch 500, ISS ε = 0.05 with a 100-draw pilot, radii
# 0.25 … 1), on 40 digits
QUICK = ["--sigma", "0.25", "--N", "2000", "--batch", "500", "--max", "40", "--no-progress"]
RUNS = {"np": ["--N0", "100"],
        "dsrs": ["--N0", "100", "--N", "1000", "--q-dist", "truncated", "--q-percentile", "x+"],
        "iss-np": ["--iss", "absolute", "--iss-decline", "0.05", "--iss-n0", "100"],
        "iss-dsrs": ["--N", "1000", "--iss", "absolute", "--iss-decline", "0.05", "--iss-n0", "100", "--q-dist",
                     "truncated", "--q-percentile", "x"],
        "sequential": ["--N0", "100", "--sequential", "--radii", *RADII],
        "sequential cs": ["--N0", "100", "--sequential", "--radii", *RADII, "--sequential-rule", "cs"]}


@pytest.mark.parametrize("name", list(RUNS))
def test_projected_passes_within_20_percent_of_the_run(lenet, tmp_path, name):
    """certify.py --estimate, then the run itself: the projected passes per input are within 20% of the passes it
    spends, counted by the sampler's progress hook (and equal to the log's `samples` column)."""
    argv = ["--model", lenet, *QUICK, *RUNS[name]]
    est = estimate_run(_config(certify_cli, argv), "certify")
    assert est.exact == (name in ("np", "dsrs")) and est.inputs == 40
    assert est.passes_per_second > 0 and est.seconds_per_input > 0 and est.startup_seconds > 0
    assert not os.listdir(tmp_path)
    spent = []
    set_progress_hook(spent.append)
    try:
        out = str(tmp_path / "run.tsv")
        assert certify_cli.main([*argv, "--out", out]) == 0
    finally:
        set_progress_hook(None)
    rows = read_rows(out)[1]
    assert sum(spent) == sum(int(r["samples"]) for r in rows)
    actual = sum(spent) / len(rows)
    print(f"{name}: projected {est.passes_per_input:,.0f} passes/input (pilot {len(est.pilot_inputs)} inputs, "
          f"{est.pilot_seconds:.1f} s), spent {actual:,.0f}: ratio {est.passes_per_input / actual:.3f}")
    assert abs(est.passes_per_input / actual - 1) <= 0.20
    if est.exact:
        assert est.passes_per_input == actual == {"np": 2100, "dsrs": 2100}[name]


def test_estimate_cli_prints_and_writes_nothing(lenet, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "o.tsv")
    assert certify_cli.main(["--model", lenet, *QUICK, *RUNS["sequential"], "--estimate", "--time-limit", "00:00:30",
                             "--out", out]) == 0
    text = capsys.readouterr().out
    for fragment in ("forward passes per second on cpu", "forward passes per input", "projected for 40 input(s)",
                     "calibrated group-sequential, futility projected γ=0.001", "time limit 00:00:30", "submit: "):
        assert fragment in text, text
    assert os.listdir(tmp_path) == []
    assert sample_cli.main(["--model", lenet, *QUICK, "--N0", "100", "--estimate"]) == 0
    text = capsys.readouterr().out
    assert "forward passes per input: 2,100 (exact)" in text and "submit" not in text
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, fragment", [
    (["--time-limit", "01:00:00"], "--time-limit does not apply without --estimate"),
    (["--estimate", "--time-limit", "1:2:3:4"], "--time-limit must be a SLURM time"),
    (["--futility", "upper"], "--futility does not apply without --sequential"),
    (["--sequential", "--radii", "0.5", "--sequential-rule", "cs", "--futility", "upper"],
     "--futility does not apply with --sequential-rule cs"),
    (["--sequential", "--radii", "0.5", "--futility", "none", "--futility-level", "0.01"],
     "--futility-level does not apply with --futility none"),
    (["--sequential", "--radii", "0.5", "--futility-level", "1.5"], "--futility-level must be in (0, 1)"),
    (["--sequential-rule", "cs"], "--sequential-rule does not apply without --sequential"),
])
def test_refusals_are_one_line_and_write_nothing(lenet, tmp_path, capsys, argv, fragment):
    assert certify_cli.main(["--model", lenet, *QUICK, *argv, "--out", str(tmp_path / "o.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err
    assert not os.listdir(tmp_path)


def test_estimate_refuses_counts(tmp_path, capsys):
    counts = tmp_path / "c.csv"
    counts.write_text("idx\n")
    assert certify_cli.main(["--counts", str(counts), "--estimate"]) == 2
    assert "--estimate projects the cost of sampling: give --model, not --counts" in capsys.readouterr().err
    for argv, fragment in ((["--futility", "upper"], "--futility does not apply without --sequential"),
                           (["--time-limit", "1:00:00"], "--time-limit does not apply without --estimate")):
        assert certify_cli.main(["--counts", str(counts), *argv]) == 2
        assert fragment in capsys.readouterr().err
    with pytest.raises(CertifyNetError, match="give model, not counts"):
        estimate_run(SamplingConfig(counts=str(counts), estimate=True))


def test_time_limits_and_durations():
    for text, seconds in (("04:00:00", 14400), ("90", 5400), ("90:30", 5430), ("1-12", 129600),
                          ("1-12:30", 131400), ("1-00:00:05", 86405)):
        assert parse_time_limit(text) == seconds
        assert parse_time_limit(format_duration(seconds)) == seconds
    for bad in ("", "x", "-1", "0", "1:2:3:4", "a-1", "1-", "00:00:00"):
        with pytest.raises(CertifyNetError):
            parse_time_limit(bad)
    assert format_duration(0.2) == "00:00:01" and format_duration(90061) == "1-01:01:01"


def test_shard_plan_fits_the_limit():
    """k = ⌊(HEADROOM·T − startup) / seconds per input⌋ inputs per shard; shards = ⌈inputs / k⌉."""
    from certifynet.sampling.estimate import _plan_shards
    config = SamplingConfig(model="m.pth", sigma=0.5, time_limit="01:00:00", estimate=True)
    est = Estimate("certify", "np", "cpu", 1000, 1000, 1e4, 0.0, 1e-4, 30.0, 100_100, True, 10.0)
    _plan_shards(est, config, "certify", "np")
    fit = math.floor((HEADROOM * 3600 - 30) / 10)
    assert est.shards == math.ceil(1000 / fit) and est.shard_seconds <= HEADROOM * 3600
    assert "--array=0-3 --time=01:00:00 scripts/slurm/certify.sbatch" in est.submit
    slow = Estimate("certify", "np", "cpu", 1000, 10, 1e4, 0.0, 1e-4, 30.0, 100_100, True, 3000.0)
    _plan_shards(slow, config, "certify", "np")
    assert slow.shards is None and slow.submit is None and "give a longer limit" in " ".join(slow.lines())


FAKE_SBATCH = """#!/bin/bash
count=1; wrap=""; script=""
while [ $# -gt 0 ]; do
    case "$1" in
        --array=*) r=${1#--array=}; count=$(( ${r#*-} + 1 )) ;;
        --wrap) wrap=$2; shift ;;
        --*) ;;
        *) script=$1 ;;
    esac
    shift
done
export SLURM_ARRAY_TASK_ID=0 SLURM_ARRAY_TASK_COUNT=$count
cd "$REPO" && if [ -n "$wrap" ]; then bash -c "$wrap"; else bash "$script"; fi   # submitted from the repository
"""


@pytest.mark.parametrize("mode, argv", [
    ("certify", ["--N0", "50", "--sequential", "--radii", "0.25", "0.5", "--futility", "upper",
                 "--futility-level", "0.05", "--start", "3", "--skip", "2"]),
    ("certify", ["--sequential", "--radii", "0.5", "--sequential-rule", "cs", "--k", "3"]),
    ("certify", ["--q-dist", "truncated", "--q-percentile", "x+", "--N0", "20"]),
    ("certify", ["--iss", "relative", "--iss-n0", "300", "--iss-decline", "0.1", "--label", "my run"]),
    ("certify", ["--select", "label"]),
    ("sample", ["--iss", "absolute", "--iss-n0", "200", "--q-dist", "rescaled", "--q-sigma", "0.3", "--max", "7"]),
    ("sample", ["--select", "label", "--dataset", "mnist5k"]),
])
def test_submit_command_runs_the_same_configuration(tmp_path, mode, argv):
    """The printed command, run through the real template (a fake sbatch runs it as array task 0, a fake python
    prints its argv), gives certify.py / sample.py the configuration that was estimated."""
    cli = certify_cli if mode == "certify" else sample_cli
    config = _config(cli, ["--model", "m.pth", "--sigma", "0.5", "--N", "1000", "--out", "r/o.tsv", *argv,
                           "--estimate", "--time-limit", "2:00:00"])
    config.validate(mode)
    from certifynet.sampling.estimate import _method
    cmd = submit_command(config, mode, _method(config, mode), 4, "02:00:00")
    assert "--array=0-3 --time=02:00:00" in cmd
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text(FAKE_SBATCH)
    (fake / "python").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    for f in ("sbatch", "python"):
        (fake / f).chmod(0o755)
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={"PATH": f"{fake}:{os.environ['PATH']}", "REPO": ROOT, "VENV": str(tmp_path / "none"),
                            "HOME": str(tmp_path)})
    assert r.returncode == 0, (cmd, r.stderr)
    script, *args = r.stdout.splitlines()
    assert script == f"scripts/{mode}.py", r.stdout
    ran = _config(cli, args)
    ran.validate(mode)
    ignore = {"estimate", "time_limit", "shard", "progress", "method", "given"}
    paths = {"model", "denoiser", "image", "data_dir", "out"}  # relative to the cwd here, to the repository there
    for name in SamplingConfig.names():
        mine, theirs = getattr(config, name), getattr(ran, name)
        if name in paths and mine is not None:
            mine, theirs = os.path.abspath(mine), os.path.join(ROOT, theirs)
        if name not in ignore:
            assert theirs == mine, (name, cmd, args)
    assert ran.method in (None, "np" if config.sequential else _method(config, mode))
    print(shlex.split(cmd)[-1], args)


def test_the_web_forms_estimate_runs_the_real_pilot(lenet):
    """The web form's estimate (`web.warm.estimate`, on the warm worker) with the real `estimate_run`, on stages
    as the web's plan writes them (options by SamplingConfig name, with an `out`): every key the form reads is
    there, fixed N is exact, and a refused option comes back as one line (rc 2), not as a failure."""
    from certifynet.web import warm
    base = {"model": lenet, "sigma": 0.25, "max": 6, "batch": 200, "N0": 50, "N": 400}
    stages = [{"stage": "sample", "options": {**base, "out": "counts.csv"}},
              {"stage": "certify", "options": {**base, "sequential": True, "radii": [0.25, 0.5], "out": "s.tsv"}}]
    answer = warm.estimate(stages)
    assert answer["rc"] == 0, answer
    fixed, seq = answer["estimates"]
    for part in (fixed, seq):
        for key in ("passes_per_second", "device", "passes_per_input", "exact", "inputs", "total_passes",
                    "startup_seconds", "seconds_per_input", "method", "notes"):
            assert key in part, key
        assert part["inputs"] == 6 and part["total_passes"] == pytest.approx(6 * part["passes_per_input"])
    assert fixed["exact"] and fixed["passes_per_input"] == 450 and fixed["method"] == "np"
    assert not seq["exact"] and 0 < seq["passes_per_input"] <= 450 and seq["method"].startswith("sequential")
    bad = warm.estimate([{"stage": "certify", "options": {**base, "sequential": True, "radii": [0.5],
                                                          "sequential_rule": "cs", "futility": "upper"}}])
    assert bad["rc"] == 2 and "--futility does not apply with --sequential-rule cs" in bad["error"]
