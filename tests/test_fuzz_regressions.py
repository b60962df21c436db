"""Every failure the fuzzer (tests/test_fuzz.py) found, as a plain test with its minimal argument vector.

Each runs the command's `main` in-process and checks the contract: exit 2 with one line `error: ...` holding the
expected fragment (or exit 0 where the input is valid), no traceback, no "unexpected", and nothing written where
the command was refused. Some were fixed by h-guard's branch (quickstart's up-front checks, the attack's m × batch
against memory, checkpoint headers): their tests here are the fuzzer's record of them.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from certifynet.cli import analyze, certify, merge, predict, quickstart, sample, train_ddpm, web
from fuzz_workspace import CKPT_EDITS

from helpers import untrained_lenet

SMALL = ["--sigma", "0.25", "--N0", "4", "--N", "16", "--batch", "16", "--max", "1", "--no-progress"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A model, a certify log and an attack curve of it, made by the real commands."""
    from certifynet.cli import attack
    w = tmp_path_factory.mktemp("regress")
    m = untrained_lenet(w / "model.pth")
    data = ["--data-dir", str(w / "data")]
    assert sample.main(["--model", m, *SMALL, "--max", "2", *data, "--out", str(w / "c.csv")]) == 0
    assert certify.main(["--counts", str(w / "c.csv"), "--out", str(w / "c.np.tsv")]) == 0
    assert attack.main(["--model", m, "--sigma", "0.25", "--eps", "0", "0.5", "--m", "2", "--steps", "1", "--N", "8",
                        "--batch", "4", "--max", "2", *data, "--no-progress", "--out", str(w / "curve.tsv")]) == 0
    return w


def run(module, argv, capsys) -> tuple[int, list[str]]:
    """(exit status, stderr lines) of `module.main(argv)`, argparse's SystemExit included."""
    capsys.readouterr()
    try:
        rc = module.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err.strip().splitlines()


def assert_refused(rc, err, fragment):
    errors = [ln for ln in err if ln.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and err[-1] == errors[0], (rc, err)
    assert fragment in errors[0] and "unexpected" not in errors[0], errors[0]


# ---------------------------------------------------------------- one line, whatever the user typed
@pytest.mark.parametrize("argv", [["out.tsv", "in.tsv", "--sigma\n"],      # fuzz: merge.py OUT IN '--sigma\n'
                                  ["out.tsv", "in.tsv", "--x\u2028y"]])
def test_usage_error_with_a_line_break_is_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, err = run(merge, argv, capsys)
    assert_refused(rc, err, "unrecognized arguments")
    assert os.listdir(tmp_path) == []


def test_error_message_with_a_line_break_is_one_line(ws, tmp_path, capsys):
    """fuzz: sample.py --model M ... --arch=p\\r: the checkpoint's refusal quoted the value, line break and all."""
    rc, err = run(sample, ["--model", ws / "model.pth", *SMALL, "--data-dir", ws / "data", "--arch=p\r",
                           "--out", tmp_path / "c.csv"], capsys)
    assert_refused(rc, err, "--arch 'p\\r'")
    assert os.listdir(tmp_path) == []


def test_warning_with_a_line_break_is_one_line(capsys):
    import warnings

    from certifynet.cli import one_line_errors
    from certifynet.errors import warn

    @one_line_errors
    def main(argv):
        warn("two\nlines")

    with warnings.catch_warnings():
        assert main([]) == 0
    assert capsys.readouterr().err == "warning: two\\nlines\n"


@pytest.mark.parametrize("module, argv, flag", [
    (analyze, ["{W}/c.np.tsv", "--out", "{T}/an", "--title", "x\udcff"], "--title"),   # fuzz: TypeError in matplotlib
    (analyze, ["{W}/c.np.tsv", "--out", "{T}/an", "--label", "x\udcff"], "--label"),   # fuzz: UnicodeEncodeError
    (certify, ["--counts", "{W}/c.csv", "--out", "{T}/c.tsv", "--label", "x\udcff"], "--label"),  # stored, then fatal
])
def test_text_that_is_not_utf8_is_refused_up_front(ws, tmp_path, capsys, module, argv, flag):
    """Bytes that are not UTF-8 in argv reach Python as lone surrogates, which no UTF-8 file or plot can hold."""
    argv = [a.replace("{W}", str(ws)).replace("{T}", str(tmp_path)) for a in argv]
    rc, err = run(module, argv, capsys)
    assert_refused(rc, err, f"argument {flag}: not UTF-8 text")
    assert os.listdir(tmp_path) == []


def test_a_sidecar_label_that_is_not_utf8_is_shown_escaped(ws, tmp_path, capsys):
    """A label read from a sidecar (written before the check, or edited) is spelled \\udcff in tables and plots."""
    shutil.copy(ws / "c.np.tsv", tmp_path / "l.tsv")
    meta = json.loads((ws / "c.np.tsv.meta.json").read_text())
    (tmp_path / "l.tsv.meta.json").write_text(json.dumps({**meta, "label": "x\udcff"}))
    rc, err = run(analyze, [tmp_path / "l.tsv", "--out", tmp_path / "an"], capsys)
    assert rc == 0, err
    assert "x\\udcff" in (tmp_path / "an" / "report.md").read_text()


# ---------------------------------------------------------------- web.py
@pytest.mark.parametrize("argv, fragment", [
    (["--bogus"], "error: unrecognized arguments: --bogus"),                    # argparse's multi-line usage before
    (["--host", "\x9f\x93", "--port", "0"], "cannot listen on"),               # UnicodeError from the idna codec
    (["--max-upload-mb", "nan"], "--max-upload-mb must be a finite number > 0"),  # int(nan) in create_app
    (["--max-upload-mb", "inf"], "--max-upload-mb must be a finite number > 0"),
    (["--workers", "0"], "--workers must be in [1, 1024]"),
    (["--workers", "5000"], "--workers must be in [1, 1024]"),                 # one job thread each
    (["--threads", "-1"], "--threads must be in [1, 1024]"),
    (["--port", "70000"], "--port must be in [0, 65535]"),
])
def test_web_refuses_before_the_app_exists(argv, fragment, capsys, tmp_path, monkeypatch):
    from werkzeug.serving import BaseWSGIServer
    monkeypatch.setattr(BaseWSGIServer, "serve_forever", lambda self, *a, **k: None)  # accepted: return at once
    monkeypatch.chdir(tmp_path)
    rc, err = run(web, ["--port", "0", *argv, "--root", tmp_path, "--results", tmp_path / "results"], capsys)
    assert_refused(rc, err, fragment)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- analyze.py --empirical
@pytest.mark.parametrize("edit, fragment", [
    (lambda h, rows, meta: rows[0].__setitem__(h.index("correct@0"), "yes"), "column correct@0"),  # fuzz: TypeError
    (lambda h, rows, meta: rows[0].__setitem__(h.index("correct@0.5"), "2"), "correct must be 0 or 1"),
    (lambda h, rows, meta: rows[0].__setitem__(h.index("idx"), "x"), "column idx"),
    (lambda h, rows, meta: rows[1].__setitem__(h.index("idx"), rows[0][h.index("idx")]), "appears twice"),
    (lambda h, rows, meta: meta.__setitem__("eps", "abc"), "'eps' must be a list"),
    (lambda h, rows, meta: meta.__setitem__("eps", [float("nan")]), "'eps' must be a list"),
])
def test_empirical_curve_values_are_checked(ws, tmp_path, capsys, edit, fragment):
    lines = (ws / "curve.tsv").read_text().splitlines()
    header, rows = lines[0].split("\t"), [ln.split("\t") for ln in lines[1:]]
    meta = json.loads((ws / "curve.tsv.meta.json").read_text())
    edit(header, rows, meta)
    curve = tmp_path / "curve.tsv"
    curve.write_text("\n".join(["\t".join(header), *("\t".join(r) for r in rows)]) + "\n")
    (tmp_path / "curve.tsv.meta.json").write_text(json.dumps(meta))
    rc, err = run(analyze, [ws / "c.np.tsv", "--empirical", curve], capsys)
    assert_refused(rc, err, fragment)


def test_empirical_curve_control_is_accepted(ws, capsys):
    rc, err = run(analyze, [ws / "c.np.tsv", "--empirical", ws / "curve.tsv"], capsys)
    assert rc == 0 and not [ln for ln in err if ln.startswith("error:")], err


# ---------------------------------------------------------------- train_ddpm.py
@pytest.mark.parametrize("argv, fragment", [
    (["--train-subset", "-1"], "--train-subset must be >= 1"),                 # fuzz: RuntimeError from torch.stack
    (["--train-subset", str(-10 ** 30)], "--train-subset must be >= 1"),
    (["--seed", "-2335"], "--seed must be >= 0"),                              # fuzz: ValueError from SeedSequence
    (["--seed", str(-10 ** 30)], "--seed must be >= 0"),                       # fuzz: OverflowError
    (["--max-minutes", "nan"], "--max-minutes must be a finite number > 0"),
    (["--lr", "inf"], "need finite lr > 0"),
])
def test_train_ddpm_refuses_before_training(argv, fragment, capsys, tmp_path):
    rc, err = run(train_ddpm, [*argv, "--outdir", tmp_path / "ddpm", "--no-progress"], capsys)
    assert_refused(rc, err, fragment)
    assert not (tmp_path / "ddpm").exists()


# ---------------------------------------------------------------- damaged inputs of other helpers' files
def test_truncated_dataset_cache_is_rebuilt(ws, tmp_path, capsys):
    """fuzz: predict.py --data-dir DIR with a truncated DIR/mnist5k.npz ended in "unexpected BadZipFile"."""
    cache = tmp_path / "data" / "mnist5k.npz"
    cache.parent.mkdir()
    cache.write_bytes((ws / "data" / "mnist5k.npz").read_bytes()[:1000])
    from certifynet import data
    data._MNIST5K_CACHE.pop(os.path.realpath(cache.parent), None)
    rc, err = run(predict, ["--model", ws / "model.pth", "--sigma", "0.25", "--N", "16", "--batch", "16", "--max", "1",
                            "--data-dir", cache.parent, "--no-progress", "--out", tmp_path / "p.tsv"], capsys)
    assert rc == 0, err
    assert np.load(cache)["x"].shape == (5000, 784)


@pytest.mark.parametrize("name", ["noise_k_str", "noise_k_float"])
def test_checkpoint_metadata_of_the_wrong_type_is_one_line(ws, tmp_path, capsys, name):
    """fuzz: sample.py --model CKPT whose noise.k is 'abc' ended in "unexpected ValueError"; a k of 1.5 was read
    as k = 1 without a word. (h-guard validates the whole header; `load_checkpoint` refuses a k that is not an
    integer either way.)"""
    ckpt = torch.load(ws / "model.pth", map_location="cpu", weights_only=True)
    key, value = CKPT_EDITS[name]
    torch.save({**ckpt, key: value}, tmp_path / "bad.pth")
    rc, err = run(sample, ["--model", tmp_path / "bad.pth", *SMALL, "--data-dir", ws / "data",
                           "--out", tmp_path / "c.csv"], capsys)
    assert_refused(rc, err, "bad.pth")
    assert not (tmp_path / "c.csv").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["--N", "20"], "--N"),            # fuzz: refused by the sample stage (--N0 100 > N) after training
    (["--N", "199"], "--N"),           # the DSRS stage samples N/2 < N0 = 100
    (["--digits", "0"], "--digits"),
    (["--sigma", "-1"], "--sigma"),
    (["--epochs", "-1"], "--epochs"),
])
def test_quickstart_refuses_before_its_first_stage(argv, fragment, capsys, tmp_path, monkeypatch):
    stages = []
    monkeypatch.setattr(quickstart.Demo, "run", lambda self, script, args: stages.append(script) or 1 / 0)
    rc, err = run(quickstart, [*argv, "--out", tmp_path / "qs", "--skip-denoiser", "--no-progress"], capsys)
    assert stages == [], f"ran the {stages} stage before refusing"
    assert_refused(rc, err, fragment)


def test_every_console_script_is_installed():
    """fuzz (discovery): train_ddpm was a script and a cli module but not in setup.py's SCRIPTS."""
    from fuzz_strategies import cli_modules, setup_scripts
    assert "train_ddpm" in setup_scripts() and set(setup_scripts()) == set(cli_modules())


# ---------------------------------------------------------------- run_shards.py
def test_run_shards_memory_does_not_grow_with_shards(tmp_path, monkeypatch):
    """fuzz: run_shards.py --shards=32121210 --jobs 1 -- certify.py ... submitted every shard to the pool up front
    and ended in "unexpected MemoryError". Only `--jobs` shards are submitted at a time now: under an address-space
    limit of 1 GiB more than the process has, 10^8 shards start one by one (the third is stopped by Ctrl-C)."""
    import resource

    from certifynet.cli import run_shards
    from fuzz_contract import address_space
    started = []

    class Proc:
        def __init__(self, cmd, **kwargs):
            started.append(cmd[-1])

        def wait(self):
            if len(started) == 3:
                raise KeyboardInterrupt
            return 0

        def terminate(self):
            pass

    monkeypatch.setattr(run_shards.subprocess, "Popen", Proc)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = address_space() + 2 ** 30
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        with pytest.raises(KeyboardInterrupt):
            run_shards.run_all(["x.py", "--out", str(tmp_path / "o.tsv")], 10 ** 8, 1, None, str(tmp_path), 1,
                               say=lambda s: None)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert started == ["0/100000000", "1/100000000", "2/100000000"]


# ---------------------------------------------------------------- training and the attack: values the optimiser takes
TRAIN = ["mnist5k", "lenet", "--noise", "0.25", "--epochs", "1", "--train-subset", "8", "--test-subset", "8",
         "--batch", "8", "--workers", "0", "--no-progress"]


@pytest.mark.parametrize("flag, value", [
    ("--weight-decay", "2.3281422123746318e+142"),   # fuzz (train_smoothmix --wd): RuntimeError from torch's SGD
    ("--lr", "1e300"),                               # the same RuntimeError
    ("--momentum", "1e300"),                         # trained to inf/NaN weights and exited 0
])
def test_optimizer_values_beyond_float32_are_refused(ws, tmp_path, capsys, flag, value):
    from certifynet.cli import train
    rc, err = run(train, [*TRAIN, "--data-dir", ws / "data", flag, value, "--outdir", tmp_path / "run"], capsys)
    assert_refused(rc, err, f"{flag} must be at most 3.403e+38 (float32)")
    assert not (tmp_path / "run").exists()


def test_optimizer_values_within_float32_are_accepted(ws, tmp_path, capsys):
    """The control: the largest float32 is still a (silly but valid) value, refused by nothing."""
    from certifynet.training.config import FLOAT32_MAX, TrainConfig, prepare_config
    cfg = TrainConfig(dataset="mnist5k", arch="lenet", sigma=0.25, weight_decay=FLOAT32_MAX, momentum=FLOAT32_MAX,
                      lr=FLOAT32_MAX, dry_run=True)
    assert prepare_config(cfg).weight_decay == FLOAT32_MAX


def test_attack_with_more_steps_than_int64(ws, tmp_path, capsys, monkeypatch):
    """fuzz: attack.py --steps 10^30 ended in "unexpected OverflowError" (the step 2ε/T: a tensor divided by an int
    beyond int64). T is a long request, not an error: the step is 2ε/T in floating point."""
    import certifynet.attack as attack_lib
    from certifynet.cli import attack
    steps = []

    def path(model, x, target, noise, n_steps, step, maxnorm, start=None):
        steps.append((n_steps, step))
        return None, x
    monkeypatch.setattr(attack_lib, "smoothed_pgd_path", path)
    rc, err = run(attack, ["--model", ws / "model.pth", "--sigma", "0.25", "--eps", "0", "0.5", "--m", "2",
                           "--steps", str(10 ** 30), "--N", "8", "--batch", "4", "--max", "1", "--data-dir",
                           ws / "data", "--no-progress", "--out", tmp_path / "a.tsv"], capsys)
    assert rc == 0, err
    assert steps and all(n == 10 ** 30 for n, _ in steps)
    assert float(steps[0][1].max()) == pytest.approx(2 * 0.5 / 1e30, rel=1e-6)


@pytest.mark.parametrize("m", ["2147483648", "18446744073709551616"])
def test_attack_m_beyond_memory_is_refused(ws, tmp_path, capsys, m):
    """fuzz: attack.py --m 2^31 asked torch for 6.7 TB ("unexpected RuntimeError"); --m 2^64 ended in an
    "unexpected TypeError" from torch.empty."""
    from certifynet.cli import attack
    rc, err = run(attack, ["--log", ws / "c.np.tsv", "--model", ws / "model.pth", "--m", m, "--steps", "1", "--N", "8",
                           "--batch", "4", "--max", "1", "--data-dir", ws / "data", "--no-progress",
                           "--out", tmp_path / "a.tsv"], capsys)
    assert_refused(rc, err, "--m")
    assert not (tmp_path / "a.tsv").exists()


def test_resume_from_a_checkpoint_with_bad_metadata_is_one_line(ws, tmp_path, capsys):
    """fuzz: train_smoothmix.py --resume CKPT whose noise.k is 'abc' ended in "unexpected ValueError"."""
    from certifynet.cli import train_smoothmix
    ckpt = torch.load(ws / "model.pth", map_location="cpu", weights_only=True)
    torch.save({**ckpt, "noise": {"sigma": 0.25, "k": "abc"}}, tmp_path / "bad.pth")
    rc, err = run(train_smoothmix, [*TRAIN, "--data-dir", ws / "data", "--num-noise-vec", "2", "--num-steps", "1",
                                    "--resume", tmp_path / "bad.pth", "--outdir", tmp_path / "run"], capsys)
    assert_refused(rc, err, "bad.pth")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value, fragment", [
    ("--seed", str(10 ** 30), "--seed must be in [-2^63, 2^64 - 1]"),   # fuzz (slow): ValueError from manual_seed
    ("--seed", str(2 ** 64), "--seed must be in [-2^63, 2^64 - 1]"),
    ("--seed", str(-2 ** 63 - 1), "--seed must be in [-2^63, 2^64 - 1]"),
    ("--batch", str(2 ** 64), "--batch 18,446,744,073,709,551,616 of mnist5k images needs at least"),  # islice
])
def test_train_values_beyond_torch_are_refused(ws, tmp_path, capsys, flag, value, fragment):
    from certifynet.cli import train
    rc, err = run(train, [*TRAIN, "--data-dir", ws / "data", flag, value, "--outdir", tmp_path / "run"], capsys)
    assert_refused(rc, err, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("seed", [-2 ** 63, -1, 2 ** 64 - 1])
def test_train_seeds_torch_takes_are_accepted(seed):
    """The control: every seed torch.manual_seed takes (negative ones included) is still a valid run."""
    from certifynet.training.config import TrainConfig, prepare_config
    cfg = TrainConfig(dataset="mnist5k", arch="lenet", sigma=0.25, seed=seed, dry_run=True)
    assert prepare_config(cfg).seed == seed


# ---------------------------------------------------------------- analyze.py --hp-rho
def test_hp_rho_below_one_over_dbl_max(ws, tmp_path, capsys):
    """fuzz (slow): analyze.py LOG --out DIR --hp-rho 5e-324 ended in "unexpected ValueError: Axis limits cannot be
    NaN or Inf": ln(1/ρ) was computed as log(inf). ρ is valid; the margin ln(1/ρ) = -ln ρ ≈ 744 is finite."""
    from certifynet.analysis.metrics import hp_correction
    assert hp_correction(0.001, 5e-324, 100) == pytest.approx(0.001 + (0.001 * 0.999 * 744.44 / 100) ** 0.5
                                                              + 744.44 / 300, rel=1e-4)
    assert hp_correction(0.001, 0.05, 100) == 0.001 + (0.001 * 0.999 * math.log(20) / 100) ** 0.5 + math.log(20) / 300
    rc, err = run(analyze, [ws / "c.np.tsv", "--out", tmp_path / "an", "--hp-rho", "5e-324"], capsys)
    assert rc == 0 and not [ln for ln in err if ln.startswith("error:")], err


def test_run_shards_runs_at_most_cores_shards_at_once_by_default(tmp_path, monkeypatch):
    """Seen while fuzzing (another probe's `run_shards.py --shards 100000 -- certify.py ...`): without --jobs every
    shard started at once, 100,000 processes (load average ~200 on 2 cores). By default at most the CPU cores run
    at once now; --jobs still sets any number."""
    import concurrent.futures

    from certifynet.cli import run_shards
    pools = []

    class Pool(concurrent.futures.ThreadPoolExecutor):
        def __init__(self, max_workers):
            pools.append(max_workers)
            super().__init__(max_workers=max_workers)

    class Proc:
        def __init__(self, cmd, **kwargs):
            pass

        def wait(self):
            return 0

    monkeypatch.setattr(run_shards.concurrent.futures, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(run_shards.subprocess, "Popen", Proc)
    monkeypatch.setattr(run_shards.os, "cpu_count", lambda: 2)
    codes = run_shards.run_all(["x.py", "--out", str(tmp_path / "o.tsv")], 50, None, None, str(tmp_path), 1,
                               say=lambda s: None)
    assert codes == {i: 0 for i in range(50)} and pools == [2]
    run_shards.run_all(["x.py", "--out", str(tmp_path / "p.tsv")], 5, 4, None, str(tmp_path), 1, say=lambda s: None)
    assert pools == [2, 4]
