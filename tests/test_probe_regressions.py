"""Failures found by the second round of hostile probes (issue #25), each a regular test: a wrong certificate of
the Python API (generalized-Gaussian noise of another dimension than the input), values that reached torch and
ended in "unexpected" errors (a learning rate beyond float32, a seed beyond torch's range), a command that
started an unbounded number of processes (run_shards.py's default --jobs), and text that breaks the tables."""
from __future__ import annotations

import os

import pytest

from certifynet.cli import certify, run_shards, train
from certifynet.errors import CertifyNetError
from certifynet.noise import GeneralizedGaussianNoise
from certifynet.sampling import Smooth

from helpers import LinearBinary


def run(main, argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, fragment: str) -> bool:
    lines = err.splitlines()
    return (bool(lines) and lines[-1].startswith("error: ") and fragment in lines[-1]
            and sum(ln.startswith("error:") for ln in lines) == 1 and "unexpected" not in err)


# ------------------------------------------------------------------------------------------ wrong certificate
@pytest.mark.parametrize("d", [100, 3000])
def test_smooth_refuses_generalized_noise_of_another_dimension(one_thread, d):
    """GeneralizedGaussianNoise(σ, k, d) with d ≠ x.numel() drew noise whose radial law is that of R^d and
    certified with d's radius: at x = 0.5·w of a linear classifier (true radius 0.5) it certified 0.617 with
    d = 100. The input's dimension must be the noise's."""
    model = LinearBinary(784)
    x = model.point_at(0.5, (1, 28, 28))
    smooth = Smooth(model, 2, noise=GeneralizedGaussianNoise(0.25, 10, d), device="cpu")
    with pytest.raises(CertifyNetError, match=rf"noise.*d={d}.*784"):
        smooth.certify(x, 10, 200, 0.001, batch=100)
    with pytest.raises(CertifyNetError, match=rf"noise.*d={d}.*784"):
        smooth.predict(x, 200, 0.001, batch=100)


def test_smooth_generalized_noise_of_the_input_dimension_certifies(one_thread):
    """The control: the same noise with d = 784 certifies, within the true radius 0.5."""
    model = LinearBinary(784)
    x = model.point_at(0.5, (1, 28, 28))
    label, radius = Smooth(model, 2, noise=GeneralizedGaussianNoise(0.25, 10, 784), device="cpu").certify(
        x, 10, 1000, 0.001, batch=500)
    assert label == 1 and 0.0 < radius < 0.5


@pytest.mark.parametrize("num_classes", [0, -3])
def test_smooth_refuses_no_classes(num_classes):
    with pytest.raises(CertifyNetError, match="num_classes must be >= 1"):
        Smooth(LinearBinary(4), num_classes, sigma=0.25)


# ------------------------------------------------------------------------------- values that reached torch
@pytest.mark.parametrize("flag, value", [("--lr", "1e39"), ("--momentum", "1e39"), ("--weight-decay", "1e39"),
                                         ("--seed", "99999999999999999999")])
def test_train_refuses_values_torch_cannot_hold(tmp_path, capsys, flag, value):
    """--lr 1e39 ended in "unexpected RuntimeError: value cannot be converted to type float without overflow"
    after the data was loaded; --seed 10²⁰ in "unexpected ValueError: Overflow when unpacking long long"."""
    out = tmp_path / "run"
    rc, _, err = run(train.main, ["mnist5k", "lenet", "--noise", "0.25", "--epochs", "1", "--train-subset", "8",
                                  "--test-subset", "8", "--batch", "8", "--workers", "0", "--no-progress",
                                  "--data-dir", tmp_path / "data", flag, value, "--outdir", out], capsys)
    assert rc == 2 and one_error_line(err, flag), err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ resources
def test_run_shards_refuses_more_processes_than_can_run(tmp_path, capsys):
    """--shards 100000 without --jobs ran every shard at once (--jobs defaulted to N): thousands of Python
    processes in a few minutes. The default is now one per core (test_fuzz_regressions); an explicit --jobs
    beyond what can run is refused before anything runs, naming --jobs."""
    before = set(os.listdir(tmp_path))
    rc, _, err = run(run_shards.main, ["--shards", "100000", "--jobs", "100000", "--", "scripts/certify.py", "--counts",
                                       tmp_path / "c.csv", "--out", tmp_path / "rs.tsv"], capsys)
    assert rc == 2 and one_error_line(err, "--jobs"), err
    assert set(os.listdir(tmp_path)) == before


# -------------------------------------------------------------------------------------------------- text
@pytest.mark.parametrize("label", ["a\nb", "tab\there", "cr\r"])
def test_certify_refuses_control_characters_in_label(tmp_path, capsys, label):
    """A --label with a newline was kept and split analyze.py's Markdown and CSV table rows in two."""
    rc, _, err = run(certify.main, ["--counts", tmp_path / "none.csv", "--label", label, "--out",
                                    tmp_path / "x.tsv"], capsys)
    assert rc == 2 and one_error_line(err, "--label"), err
    assert os.listdir(tmp_path) == []



def test_smooth_refuses_a_batch_that_can_never_fit(one_thread, monkeypatch):
    """batch=10¹² asked torch for 3 PB and ended in a RuntimeError from its allocator."""
    monkeypatch.setenv("CERTIFYNET_MEMORY_BYTES", str(2 ** 30))
    model = LinearBinary(784)
    smooth = Smooth(model, 2, sigma=0.25, device="cpu")
    with pytest.raises(CertifyNetError, match="batch asks for"):
        smooth.certify(model.point_at(0.5, (1, 28, 28)), 10, 100, 0.001, batch=10 ** 12)


@pytest.mark.parametrize("count, n, sigma", [(12, 10, 0.25), (10.9, 11, 0.25), (-1, 10, 0.25), (5, 0, 0.25),
                                             (10, 10, 0.0), (10, 10, -1.0), (10, 10, float("nan"))])
def test_certify_from_counts_refuses_impossible_counts(count, n, sigma):
    """count > n gave (abstain=False, p̲=nan, R=0); a fractional count 10.9 of 11 certified p̲ = 0.520 (a bound
    for hits that were not drawn); σ ≤ 0 gave R = 0 silently. Each is refused, naming the argument."""
    from certifynet.certify import certify_from_counts
    with pytest.raises(CertifyNetError, match="count|sigma"):
        certify_from_counts(count, n, sigma, 0.001)


def test_certify_from_counts_whole_counts_unchanged():
    """The control: numpy integers and floats holding whole numbers certify as before."""
    import numpy as np

    from certifynet.certify import certify_from_counts
    assert certify_from_counts(np.int64(10), np.int64(10), 0.25, 0.001) == certify_from_counts(10.0, 10, 0.25, 0.001)
    abstain, p_low, radius = certify_from_counts(10, 10, 0.25, 0.001)
    assert not abstain and abs(p_low - 0.001 ** 0.1) < 1e-9 and radius > 0


@pytest.mark.parametrize("kw", [{"n": 1000.7}, {"n0": True}, {"batch": 2.5}, {"n": "1000"}])
def test_smooth_refuses_sample_sizes_that_are_not_whole(one_thread, kw):
    """n = 1000.7 drew 1000 samples and bounded p̲_A as if 1000.7 had been drawn; n0=True and batch=2.5 were
    taken as 1 and 2."""
    model = LinearBinary(784)
    args = {"n0": 10, "n": 1000, "alpha": 0.001, "batch": 100, **kw}
    with pytest.raises(CertifyNetError, match="must be a whole number"):
        Smooth(model, 2, sigma=0.25, device="cpu").certify(model.point_at(0.5, (1, 28, 28)), **args)


def test_smooth_takes_numpy_integers(one_thread):
    """The control: numpy integers (numbers.Integral) are whole numbers."""
    import numpy as np
    model = LinearBinary(784)
    label, _ = Smooth(model, 2, sigma=0.25, device="cpu").certify(model.point_at(0.5, (1, 28, 28)), np.int64(10),
                                                                  np.int64(200), 0.001, batch=np.int64(100))
    assert label in (1, -1)


# ----------------------------------------------------------------------------------- wrong refusals of valid runs
def test_a_resume_that_names_the_same_normalization_another_way_is_the_same_run():
    """`sample.py ... --normalization identity` resuming a run of a checkpoint whose mean/std are 0/1 was refused
    as 'a different normalization': only the name differed. Other values are still another run."""
    from certifynet.records.guard import settings_conflicts
    ckpt = {"normalization": {"kind": "checkpoint", "mean": [0.0], "std": [1.0]}, "sigma": 0.25}
    same = {"normalization": {"kind": "identity", "mean": [0], "std": [1.0]}, "sigma": 0.25}
    other = {"normalization": {"kind": "custom", "mean": [0.5], "std": [1.0]}, "sigma": 0.25}
    assert settings_conflicts(ckpt, same) == []
    assert settings_conflicts(ckpt, other) == ["normalization"]


@pytest.mark.parametrize("counts", [[5, -3], [2.5, 1], [float("nan"), 1], ["a", "b"]])
def test_predict_from_counts_refuses_impossible_counts(counts):
    """A negative count reached scipy's binomial test and ended in its ValueError."""
    from certifynet.certify import predict_from_counts
    with pytest.raises(CertifyNetError, match="whole numbers >= 0"):
        predict_from_counts(counts, 0.001)
    assert predict_from_counts([5, 0, 3], 0.5).n1 == 5  # control: whole counts as before


def test_a_sequential_alpha_the_rule_cannot_meet_is_refused_before_the_model_loads(tmp_path, capsys):
    """certify.py --sequential --alpha 1e-300 loaded the model first and then failed in the calibration."""
    rc, _, err = run(certify.main, ["--model", tmp_path / "absent.pth", "--sigma", "0.25", "--sequential",
                                    "--radii", "0.1", "--alpha", "1e-300", "--out", tmp_path / "s.tsv"], capsys)
    assert rc == 2 and one_error_line(err, "--alpha") and "boundary level" in err, err
    assert not (tmp_path / "s.tsv").exists()
