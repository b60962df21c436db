"""attack.py: the SmoothAdv PGD's strength (linear classifier, trained LeNet), the audit's soundness and power,
refusals, resume, the curve mode with analyze.py --empirical, and SmoothAdv training end to end."""
import json
import os

import numpy as np
import pytest
import torch
from scipy.stats import binom

from certifynet.attack import AuditSummary, SmoothedPGD, attack_and_predict
from certifynet.cli import analyze as analyze_cli
from certifynet.cli import attack as attack_cli
from certifynet.cli import certify as certify_cli
from certifynet.cli import sample as sample_cli
from certifynet.cli import train as train_cli
from certifynet.models import get_architecture, load_checkpoint
from certifynet.noise import GaussianNoise, GeneralizedGaussianNoise
from certifynet.records import read_rows
from certifynet.sampling import Sampler
from certifynet.training import loop
from certifynet.training.losses import _noisy_logits, smoothed_soft_nll

from helpers import LinearBinary, load_benchmark, untrained_lenet

ALPHA = 0.001
FAST = ["--m", "16", "--steps", "10", "--N", "1000", "--batch", "400"]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- linear classifier: the optimal attack is known

SHAPE, D = (1, 8, 8), 64


def linear_points(model, deltas):
    """x = c + δ·w with c the projection of ½·1 onto the hyperplane w·x = 0: distance δ to it, inside [0,1]."""
    half = torch.full((D,), 0.5)
    c = half - (half @ model.w) * model.w
    xs = torch.stack([(c + d * model.w).reshape(SHAPE) for d in deltas])
    assert 0 < xs.min() and xs.max() < 1
    return xs


@pytest.mark.parametrize("noise", [GaussianNoise(0.25), GeneralizedGaussianNoise(0.25, 10, D)], ids=["gauss", "k10"])
def test_linear_attack_flips_beyond_the_hyperplane_and_never_before(noise):
    """True robust radius at distance δ is δ (any radial noise): ε = 1.05δ must flip g, ε = 0.95δ never can."""
    model = LinearBinary(D, seed=3)
    n_in = 60
    deltas = torch.linspace(0.15, 0.8, n_in)
    xs, ones = linear_points(model, deltas), torch.ones(n_in, dtype=torch.long)
    attacker = SmoothedPGD(model, noise, m=8, steps=10, seed=0, device="cpu")
    sampler = Sampler(model, 2, batch=1000, device="cpu")
    side = {}
    for f in (1.05, 0.95):
        res = attacker.attack(xs, ones, deltas * f, list(range(n_in)))
        side[f] = res.x_adv.flatten(1) @ model.w  # g(x') = 1 iff w·x' > 0 (exactly, for this f)
        assert (res.x_adv - xs).flatten(1).norm(dim=1).le(deltas * f * (1 + 1e-5)).all()
    assert (side[1.05] < 0).float().mean() >= 0.95, side[1.05]
    assert (side[0.95] > 0).all()
    # PREDICT at the 0.95δ points: a wrong class only with PREDICT's own error probability α
    rows = attack_and_predict(attacker, sampler, noise, xs, ones, deltas * 0.95, list(range(n_in)), 2000, ALPHA)
    wrong = sum(r["predict"] == 0 for r in rows)
    assert binom.sf(wrong - 1, n_in, ALPHA) > 0.01, wrong
    # ... while beyond the hyperplane PREDICT sees the flip wherever it has margin
    rows = attack_and_predict(attacker, sampler, noise, xs, ones, deltas * 1.6, list(range(n_in)), 2000, ALPHA)
    assert np.mean([r["predict"] == 0 for r in rows]) > 0.9


def test_attack_is_reproducible_and_independent_of_batching():
    model = LinearBinary(D, seed=1)
    xs = linear_points(model, torch.linspace(0.2, 0.5, 6))
    y, eps = torch.ones(6, dtype=torch.long), torch.full((6,), 0.3)
    att = SmoothedPGD(model, GaussianNoise(0.5), m=4, steps=5, restarts=2, seed=7, device="cpu")
    a = att.attack(xs, y, eps, range(10, 16))
    b = att.attack(xs, y, eps, range(10, 16))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.soft_p, b.soft_p)
    one = torch.cat([att.attack(xs[i:i + 1], y[i:i + 1], eps[i:i + 1], [10 + i]).x_adv for i in range(6)])
    torch.testing.assert_close(one, a.x_adv, atol=1e-6, rtol=0)
    other = SmoothedPGD(model, GaussianNoise(0.5), m=4, steps=5, restarts=2, seed=8, device="cpu")
    assert not torch.equal(other.attack(xs, y, eps, range(10, 16)).soft_p, a.soft_p)


def test_batched_gradient_equals_a_loop_of_m_passes():
    """One forward/backward of m·B noisy copies gives the gradient of −log p̂ that m separate passes give."""
    torch.manual_seed(0)
    model = get_architecture("lenet", "mnist5k").eval()
    x = torch.rand(3, 1, 28, 28)
    y = torch.tensor([1, 4, 7])
    noises = 0.25 * torch.randn(5, *x.shape)
    xb = x.clone().requires_grad_(True)
    (g_batched,) = torch.autograd.grad(smoothed_soft_nll(model, xb, y, noises).sum(), [xb])
    xl = x.clone().requires_grad_(True)
    p_hat = sum(torch.softmax(model(xl + noises[i]), -1) for i in range(5)) / 5
    (g_loop,) = torch.autograd.grad(-p_hat.gather(1, y[:, None]).log().sum(), [xl])
    torch.testing.assert_close(g_batched, g_loop, rtol=1e-4, atol=1e-7)
    assert _noisy_logits(model, x, noises).shape == (5, 3, 10)


# ---------------------------------------------------------------- a trained LeNet on mnist5k


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """2 epochs of Gaussian augmentation at σ=0.25 (lr 0.05: ~0.93 noisy test accuracy), about 10 s."""
    out = tmp_path_factory.mktemp("lenet")
    cfg = loop.TrainConfig(dataset="mnist5k", arch="lenet", sigma=0.25, lr=0.05, epochs=2, batch=64, workers=0,
                           device="cpu", outdir=str(out), progress=False, seed=0)
    torch.set_num_threads(1)
    loop.train(cfg)
    return str(out / "checkpoint.pth")


@pytest.fixture(scope="module")
def np_log(lenet, tmp_path_factory):
    """NP certificates of 30 test digits at N=1000 (α=0.001)."""
    out = str(tmp_path_factory.mktemp("logs") / "np.tsv")
    assert certify_cli.main(["--model", lenet, "--sigma", "0.25", "--N0", "100", "--N", "1000", "--max", "30",
                             "--batch", "500", "--alpha", str(ALPHA), "--out", out]) == 0
    return out


def _audit(log, model, out, *extra):
    assert attack_cli.main(["--log", log, "--model", model, *FAST, "--out", out, *extra]) == 0
    summary = json.load(open(out + ".summary.json"))
    return summary, read_rows(out)[1]


def _rewrite_log(log, path, change):
    """A copy of a certify log (and its sidecar) with change(row) applied to every row."""
    header, rows = read_rows(log)
    with open(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for r in rows:
            change(r)
            f.write("\t".join(r[c] for c in header) + "\n")
    with open(log + ".meta.json") as src, open(path + ".meta.json", "w") as dst:
        dst.write(src.read())
    return path


def _broken_copy(log, path, factor):
    """The same certify log with every radius × factor: a deliberately broken certificate."""
    return _rewrite_log(log, path, lambda r: r.update(radius=repr(float(r["radius"]) * factor)))


@pytest.fixture(scope="module")
def audits(lenet, np_log, tmp_path_factory):
    """The audit of the NP log (ε = R), and of a broken copy whose radii are doubled (ε = 2R: the same attack as
    --eps-scale 2, seed for seed)."""
    tmp = tmp_path_factory.mktemp("audits")
    broken = _broken_copy(np_log, str(tmp / "broken.tsv"), 2.0)
    return {"R": _audit(np_log, lenet, str(tmp / "r1.tsv")), "2R": _audit(broken, lenet, str(tmp / "r2.tsv"))}


def test_audit_within_R_is_sound(np_log, audits, capsys):
    summary, rows = audits["R"]
    certified = [r for r in read_rows(np_log)[1] if int(r["predict"]) >= 0 and float(r["radius"]) > 0]
    assert summary["attacked"] == len(certified) == len(rows) >= 25
    assert summary["rows"] == len(read_rows(np_log)[1])  # n of the test: every row of the log, certified or not
    assert not summary["flagged"] and summary["allowed"] == 2 * ALPHA, summary
    assert all(float(r["adv_norm"]) <= float(r["radius"]) for r in rows)
    assert all(int(r["violation"]) == int(int(r["predict"]) not in (int(r["certified"]), -1)) for r in rows)


def test_attack_at_2R_moves_clearly_more_inputs(audits):
    moved = lambda rows: np.mean([int(r["predict"]) != int(r["certified"]) for r in rows])  # noqa: E731
    p_hat = lambda rows: np.mean([float(r["p_hat"]) for r in rows])  # noqa: E731
    (s1, rows1), (s2, rows2) = audits["R"], audits["2R"]
    print(f"PREDICT ≠ c: ε=R {moved(rows1):.3f}, ε=2R {moved(rows2):.3f}; mean p̂_c {p_hat(rows1):.3f} → "
          f"{p_hat(rows2):.3f}; violations {s1['violations']} → {s2['violations']}")
    assert moved(rows2) >= moved(rows1) + 0.15
    assert p_hat(rows2) < p_hat(rows1) - 0.05


def test_broken_certificate_is_flagged(audits):
    summary, _ = audits["2R"]
    assert summary["flagged"] and summary["violations"] >= 3, summary
    s = AuditSummary(**{k: summary[k] for k in ("attacked", "violations", "alpha_cert", "alpha_predict", "level",
                                                "rows")})
    assert "CERTIFICATES VIOLATED" in s.report()


def test_audit_resumes_and_reproduces(lenet, np_log, tmp_path, capsys):
    a, b = str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")
    argv = ["--log", np_log, "--model", lenet, *FAST, "--max", "4"]
    assert attack_cli.main([*argv, "--out", a]) == 0
    assert attack_cli.main([*argv, "--out", a]) == 0
    assert "resuming: 4 of 4" in capsys.readouterr().err
    assert attack_cli.main([*argv, "--out", b]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(read_rows(a)[1]) == strip(read_rows(b)[1]) and len(read_rows(a)[1]) == 4
    meta = json.load(open(a + ".meta.json"))
    for key in ("model_sha256", "sigma", "k", "N", "alpha", "seed", "alpha_cert", "audited_sha256", "attack"):
        assert key in meta, key
    assert meta["attack"]["m"] == 16 and meta["attack"]["steps"] == 10 and meta["kind"] == "attack_audit"
    # a different attack setting on the same output is refused, not mixed in
    assert attack_cli.main([*argv, "--steps", "3", "--out", a]) == 2


def test_audit_of_a_counts_file_matches_the_log(lenet, tmp_path):
    counts = str(tmp_path / "c.csv")
    assert sample_cli.main(["--model", lenet, "--sigma", "0.25", "--N0", "100", "--N", "500", "--max", "3",
                            "--batch", "500", "--out", counts]) == 0
    log = str(tmp_path / "c.np.tsv")
    assert certify_cli.main(["--counts", counts, "--out", log]) == 0
    a, b = str(tmp_path / "from_log.tsv"), str(tmp_path / "from_counts.tsv")
    assert attack_cli.main(["--log", log, "--model", lenet, *FAST, "--out", a]) == 0
    assert attack_cli.main(["--counts", counts, "--method", "np", "--model", lenet, *FAST, "--out", b]) == 0
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(read_rows(a)[1]) == strip(read_rows(b)[1])


def test_audit_with_a_denoiser_in_front_and_generalized_gaussian_noise(lenet, tmp_path, capsys):
    """Any smoothed model the toolkit certifies can be audited: DRUNet → LeNet, and P = generalized Gaussian."""
    from certifynet.denoise import get_denoiser
    from certifynet.denoise.checkpoint import save_denoiser
    den = str(tmp_path / "den.pth")
    save_denoiser(den, get_denoiser("drunet_small", 1), sigma={"values": [0.25]})
    tiny = ["--N0", "20", "--N", "200", "--max", "2", "--batch", "200"]
    for name, extra in (("den", ["--denoiser", den]), ("k", ["--k", "100"])):
        log = str(tmp_path / f"{name}.tsv")
        assert certify_cli.main(["--model", lenet, "--sigma", "0.25", *tiny, *extra, "--out", log]) == 0
        # whatever was certified at this tiny N: a radius 0.2 for the label, so that every input is attacked
        log = _rewrite_log(log, log + ".r.tsv", lambda r: r.update(predict=r["label"], correct="1", radius="0.2"))
        out = str(tmp_path / f"{name}.audit.tsv")
        assert attack_cli.main(["--log", log, "--model", lenet, *extra, "--m", "2", "--steps", "2", "--N", "100",
                                "--out", out]) == 0
        assert json.load(open(out + ".summary.json"))["attacked"] == 2
        meta = json.load(open(out + ".meta.json"))
        assert meta["k"] == (100 if name == "k" else 0) and ("denoiser_sha256" in meta) == (name == "den")
    capsys.readouterr()
    _one_line(capsys, attack_cli.main(["--log", str(tmp_path / "den.tsv"), "--model", lenet, "--out",
                                       str(tmp_path / "x.tsv")]), "denoiser_sha256")


def _one_line(capsys, rc, fragment):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and err[-1].startswith("error:") and fragment in err[-1], err


def test_refuses_another_model_sigma_or_bad_flags(lenet, np_log, tmp_path, capsys):
    other = str(tmp_path / "other.pth")
    untrained_lenet(other, sigma=0.25, seed=1)
    out = str(tmp_path / "x.tsv")
    _one_line(capsys, attack_cli.main(["--log", np_log, "--model", other, *FAST, "--out", out]), "model_sha256")
    _one_line(capsys, attack_cli.main(["--log", np_log, "--model", lenet, "--sigma", "0.5", *FAST, "--out", out]),
              "sigma")
    _one_line(capsys, attack_cli.main(["--model", lenet, "--sigma", "0.25", "--out", out]), "--eps")
    _one_line(capsys, attack_cli.main(["--log", np_log, "--model", lenet, "--eps", "0.5", "--out", out]), "not both")
    _one_line(capsys, attack_cli.main(["--log", np_log, "--model", lenet, "--m", "0", "--out", out]), "--m")
    _one_line(capsys, attack_cli.main(["--log", np_log, "--model", lenet, "--q-dist", "truncated", "--out", out]),
              "--q-dist")
    _one_line(capsys, attack_cli.main(["--log", np_log, "--model", lenet, "--eps-scale", "-1", "--out", out]),
              "--eps-scale")
    _one_line(capsys, attack_cli.main(["--log", str(tmp_path / "none.tsv"), "--model", lenet]), "not found")
    assert not os.path.exists(out)


def test_curve_and_certified_vs_empirical_plot(lenet, np_log, tmp_path, capsys):
    curve = str(tmp_path / "curve.tsv")
    grid = ["0", "0.5", "1"]
    assert attack_cli.main(["--model", lenet, "--sigma", "0.25", "--eps", *grid, "--max", "8", *FAST,
                            "--out", curve]) == 0
    header, rows = read_rows(curve)
    assert [c for c in header if c.startswith("correct@")] == [f"correct@{e}" for e in grid] and len(rows) == 8
    acc = [np.mean([int(r[f"correct@{e}"]) for r in rows]) for e in grid]
    assert acc[-1] < acc[0]  # the attack at ε=1 hurts
    out = str(tmp_path / "analysis")
    assert analyze_cli.main([np_log, "--empirical", curve, "--out", out]) == 0
    text = capsys.readouterr().out
    assert "empirical" in text and "certified" in text
    assert os.path.getsize(os.path.join(out, "certified_vs_empirical.png")) > 0
    from certifynet.analysis import certified_vs_empirical, read_log
    table = certified_vs_empirical(read_log(np_log), curve)
    assert (table["inputs"] == 8).all()
    assert (table["certified"] <= table["empirical"] + 1e-9).all(), table  # certified lies below empirical
    # a curve from another model is refused
    other = str(tmp_path / "other.pth")
    untrained_lenet(other, sigma=0.25, seed=1)
    curve2 = str(tmp_path / "curve2.tsv")
    assert attack_cli.main(["--model", other, "--sigma", "0.25", "--eps", "0", "--max", "2", *FAST,
                            "--out", curve2]) == 0
    capsys.readouterr()
    _one_line(capsys, analyze_cli.main([np_log, "--empirical", curve2]), "model_sha256")


def test_summary_verdict_math():
    s = AuditSummary(attacked=200, violations=0, alpha_cert=0.001, alpha_predict=0.001, level=0.01, rows=200)
    assert not s.flagged and s.p_value == 1.0 and 0.02 < s.upper < 0.025  # 1 − 0.01^(1/200) ≈ 0.0228
    s = AuditSummary(attacked=200, violations=3, alpha_cert=0.001, alpha_predict=0.001, level=0.01, rows=200)
    assert s.flagged and s.p_value == pytest.approx(binom.sf(2, 200, 0.002))
    # n is every audited row: the same 3 violations among 200 certified of 2,000 rows are within α_c + α_p
    s = AuditSummary(attacked=200, violations=3, alpha_cert=0.001, alpha_predict=0.001, level=0.01, rows=2000)
    assert not s.flagged and s.p_value == pytest.approx(binom.sf(2, 2000, 0.002))


# ---------------------------------------------------------------- SmoothAdv training on the same attack


def test_smoothadv_trains_and_certifies_end_to_end(tmp_path, capsys):
    out = str(tmp_path / "smoothadv")
    argv = ["mnist5k", "lenet", "--noise", "0.25", "--method", "smoothadv", "--eps", "0.5", "--attack-steps", "2",
            "--num-noise-vec", "2", "--warmup", "2", "--epochs", "1", "--train-subset", "256", "--test-subset", "64",
            "--batch", "32", "--workers", "0", "--device", "cpu", "--no-progress", "--lr", "0.05", "--outdir", out]
    assert train_cli.main(argv) == 0
    meta = json.load(open(os.path.join(out, "log.meta.json")))
    assert meta["method"] == "smoothadv" and meta["smoothadv"] == {"eps": 0.5, "attack_steps": 2, "warmup": 2}
    ck = os.path.join(out, "checkpoint.pth")
    assert load_checkpoint(ck).raw["training"]["method"] == "smoothadv"
    log = str(tmp_path / "np.tsv")
    assert certify_cli.main(["--model", ck, "--sigma", "0.25", "--N0", "20", "--N", "200", "--max", "3",
                             "--out", log]) == 0
    assert len(read_rows(log)[1]) == 3
    capsys.readouterr()
    _one_line(capsys, train_cli.main([*argv[:-1], out + "2", "--attack-steps", "0"]), "--attack-steps")


def test_smoothadv_epoch_warmup_scales_the_radius():
    spec = loop.LossSpec(method="smoothadv", m=1, eps=0.8, attack_steps=1, warmup=4)
    x, y = torch.full((2, 1, 28, 28), 0.5), torch.tensor([3, 5])
    torch.manual_seed(0)
    model = get_architecture("lenet", "mnist5k")
    zero = lambda z: torch.zeros_like(z)  # noqa: E731
    norms = [spec(model, x, y, zero, epoch)[1]["adv_norm"].item() for epoch in (0, 1, 3, 9)]
    np.testing.assert_allclose(norms, [0.2, 0.4, 0.8, 0.8], rtol=1e-5)  # ε_t = min(ε, (t+1)ε/warmup)


# ---------------------------------------------------------------- the real-model audit (make test-slow)


@pytest.mark.slow
def test_audit_of_200_real_digits_is_sound_and_has_power(tmp_path, capsys):
    """benchmarks/audit_mnist5k.py at σ=0.25, NP and DSRS at N=2000, 200 digits: no flag at ε = R, a flag at 2R."""
    audit_mnist5k = load_benchmark("audit_mnist5k")
    out = str(tmp_path / "bench")
    audit_mnist5k.main(["--out", out, "--sigmas", "0.25", "--N", "2000", "--scales", "1", "2"])
    for method in ("np", "dsrs"):
        sound = json.load(open(os.path.join(out, f"audit_{method}_0.25_x1.tsv.summary.json")))
        broken = json.load(open(os.path.join(out, f"audit_{method}_0.25_x2.tsv.summary.json")))
        assert sound["attacked"] >= 150 and not sound["flagged"], sound
        assert broken["flagged"], broken
