"""Denoiser training (options, objectives, resume, frozen F), denoiser checkpoints and denoised smoothing
through certify.py / sample.py / Smooth. CPU, drunet_small on a few mnist5k digits: seconds in all."""
import json
import os

import pytest
import torch

from certifynet.cli.train_denoiser import main as train_main
from certifynet.data import get_dataset
from certifynet.denoise import DenoisedClassifier, DnCNN, freeze, get_denoiser, load_denoiser, save_denoiser
from certifynet.denoise.train import (
    TrainOptions,
    _load_classifier,
    draw_sigmas,
    eval_sigma,
    read_options_file,
    resolve_options,
    sigma_spec,
    train_denoiser,
    train_epoch,
)
from certifynet.errors import CertifyNetError
from certifynet.models import get_architecture, load_checkpoint, save_checkpoint
from certifynet.records import read_meta, read_rows

TINY = dict(dataset="mnist5k", arch="drunet_small", sigma=0.25, epochs=1, batch=8, train_subset=16,
            eval_subset=8, eval_batch=8, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clf_path(tmp_path_factory):
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("clf") / "lenet.pth")
    save_checkpoint(path, get_architecture("lenet", "mnist5k"), arch="lenet", dataset="mnist5k", num_classes=10)
    return path


@pytest.fixture(scope="module")
def mse_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("mse"))
    return train_denoiser(TrainOptions(**TINY, objective="mse", outdir=out), progress=False)


def _digits(n=4):
    return get_dataset("mnist5k", "test").tensors[0][:n]


def _same_outputs(a, b, sigma=0.25):
    x = _digits()
    with torch.no_grad():
        return torch.equal(a.eval()(x, sigma), b.eval()(x, sigma))


def _run_cli(argv, capsys):
    rc = train_main(argv)
    return rc, capsys.readouterr().err.strip()


# ---------------------------------------------------------------- options
def test_options_file_and_cli_overrides(tmp_path):
    opt = tmp_path / "o.json"
    opt.write_text('{\n  // KAIR-style comment line\n  "task": "t", "objective": "stability", "classifier": "c.pth",\n'
                   '  "sigma": 0.5, "epochs": 3, "lr_milestones": [2], "_note": "ignored"\n}\n')
    f = read_options_file(str(opt))
    assert f == {"task": "t", "objective": "stability", "classifier": "c.pth", "sigma": 0.5, "epochs": 3,
                 "lr_milestones": [2]}
    o = resolve_options(f, {"epochs": 5, "sigmas": [0.12, 0.25, 0.5], "lr": 1e-4})
    assert (o.epochs, o.lr, o.sigma, o.sigmas, o.lr_milestones, o.batch) == (5, 1e-4, None, [0.12, 0.25, 0.5], [2], 64)
    assert sigma_spec(o) == {"mode": "choice", "values": [0.12, 0.25, 0.5]} and eval_sigma(sigma_spec(o)) == 0.25
    assert eval_sigma(sigma_spec(resolve_options(f, {"sigma_range": [0.0, 0.5]}))) == 0.25
    g = torch.Generator().manual_seed(0)
    s = draw_sigmas({"mode": "choice", "values": [0.12, 0.5]}, 200, g, "cpu")
    assert {round(v, 6) for v in s.tolist()} == {0.12, 0.5}
    u = draw_sigmas({"mode": "uniform", "values": [0.1, 0.3]}, 200, g, "cpu")
    assert 0.1 <= u.min() and u.max() <= 0.3 and u.std() > 0.03


def test_shipped_option_files_parse():
    folder = os.path.join(os.path.dirname(__file__), "..", "denoiser", "options")
    files = sorted(f for f in os.listdir(folder) if f.endswith(".json"))
    assert "train_drunet_small_mnist_stab.json" in files
    for name in files:
        o = resolve_options(read_options_file(os.path.join(folder, name)))
        sigma_spec(o)


@pytest.mark.parametrize("text, needle", [
    (None, "not found"),
    ('{\n "epochs": 2,\n "lr": ,\n}', "line 3"),
    ('{"epochs": 2, "learning_rate": 0.1}', "unknown key 'learning_rate'"),
    ('{"epochs": "two"}', "'epochs': expected an integer"),
    ('{"objective": "stability", "sigma": 0.25}', "needs --classifier"),
    ('{"sigma": 0.25, "sigmas": [0.5]}', "exactly one of"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, text, needle):
    opt = tmp_path / "o.json"
    if text is not None:
        opt.write_text(text)
    rc, err = _run_cli(["--opt", str(opt), "--outdir", str(tmp_path / "out"), "--no-progress"], capsys)
    assert rc == 2 and needle in err and len(err.splitlines()) == 1 and err.startswith("error:")


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("objective", ["mse", "l1", "stability", "classification"])
def test_one_epoch_each_objective(tmp_path, clf_path, objective):
    out = str(tmp_path / objective)
    r = train_denoiser(TrainOptions(**TINY, objective=objective, classifier=clf_path, outdir=out), progress=False)
    header, rows = read_rows(r["log"])
    assert header == ["epoch", "lr", "loss", "psnr", "denoised_acc", "seconds"] and len(rows) == 1
    assert float(rows[0]["loss"]) > 0 and float(rows[0]["psnr"]) > 0 and 0 <= float(rows[0]["denoised_acc"]) <= 1
    meta = read_meta(r["log"])
    assert meta["objective"] == objective and meta["sigma"] == {"mode": "fixed", "values": [0.25]}
    den = load_denoiser(r["checkpoint"])
    assert den.source == "certifynet" and den.epoch == 1 and den.objective == objective and not den.model.training
    assert den.config == {"name": "drunet", "in_channels": 1, "channels": [16, 32, 64, 64], "nb": 1}
    assert _same_outputs(den.model, r["model"])


def test_cli_trains_from_option_file(tmp_path, capsys):
    opt = tmp_path / "o.json"
    opt.write_text(json.dumps({**TINY, "objective": "l1", "epochs": 4, "sigma": None, "sigmas": [0.1, 0.2]}))
    rc = train_main(["--opt", str(opt), "--epochs", "1", "--outdir", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0 and "checkpoint:" in capsys.readouterr().out
    assert load_denoiser(str(tmp_path / "o" / "denoiser.pth")).sigma == {"mode": "choice", "values": [0.1, 0.2]}


def test_resume_continues_and_matches_uninterrupted(tmp_path, capsys):
    kw = dict(TINY, objective="mse", lr_milestones=[1], lr_gamma=0.5)
    full = train_denoiser(TrainOptions(**{**kw, "epochs": 2}, outdir=str(tmp_path / "full")), progress=False)
    part = str(tmp_path / "part")
    train_denoiser(TrainOptions(**kw, outdir=part), progress=False)
    rc, err = _run_cli(["--outdir", part, "--sigma", "0.25", "--train-subset", "16", "--no-progress"], capsys)
    assert rc == 2 and "--resume" in err  # no silent overwrite
    r = train_denoiser(TrainOptions(**{**kw, "epochs": 2}, outdir=part, resume=True), progress=False)
    assert r["start_epoch"] == 1 and [h["epoch"] for h in r["history"]] == [2] and r["history"][0]["lr"] == 0.0005
    assert [row["epoch"] for row in read_rows(r["log"])[1]] == ["1", "2"]
    raw = load_denoiser(r["checkpoint"]).raw
    assert raw["epoch"] == 2 and raw["scheduler"]["last_epoch"] == 2
    assert _same_outputs(r["model"], full["model"])


def test_stability_finetune_loads_pretrained_mse(tmp_path, clf_path, mse_run):
    pre = load_denoiser(mse_run["checkpoint"]).model
    r = train_denoiser(TrainOptions(**TINY, objective="stability", classifier=clf_path, lr=1e-12,
                                    pretrained_denoiser=mse_run["checkpoint"], outdir=str(tmp_path / "s")),
                       progress=False)
    for a, b in zip(pre.parameters(), r["model"].parameters()):
        assert torch.allclose(a, b, atol=1e-8)
    assert read_meta(r["log"])["pretrained_denoiser"] == mse_run["checkpoint"]
    with pytest.raises(CertifyNetError, match="pretrained"):
        train_denoiser(TrainOptions(**{**TINY, "arch": "dncnn"}, pretrained_denoiser=mse_run["checkpoint"],
                                    outdir=str(tmp_path / "bad")), progress=False)


def test_classifier_stays_frozen(clf_path):
    clf, meta = _load_classifier(TrainOptions(**TINY, classifier=clf_path), "cpu")
    assert not clf.training and not any(p.requires_grad for p in clf.parameters()) and meta["classifier_sha256"]
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    den = get_denoiser("drunet_small", 1)
    d_before = [p.detach().clone() for p in den.parameters()]
    loader = torch.utils.data.DataLoader(get_dataset("mnist5k", "train"), batch_size=8)
    loader = [b for _, b in zip(range(2), loader)]
    opt = torch.optim.Adam(den.parameters(), 1e-3)
    for objective in ("stability", "classification"):
        train_epoch(den, clf, loader, opt, objective, {"mode": "fixed", "values": [0.25]},
                    torch.Generator().manual_seed(0), "cpu", progress=False)
    assert not clf.training and all(p.grad is None for p in clf.parameters())
    assert all(torch.equal(v, before[k]) for k, v in clf.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(d_before, den.parameters()))  # D did learn


# ---------------------------------------------------------------- checkpoint layouts
def test_reference_dncnn_layout(tmp_path):
    torch.manual_seed(1)
    net = DnCNN(3, channels=16, depth=5)
    for m in net.modules():  # non-trivial BN statistics and last layer
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.nn.init.normal_(net.dncnn[-1].weight, std=0.05)
    path = str(tmp_path / "dncnn.pth.tar")
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # DataParallel, as the ImageNet files
    torch.save({"epoch": 90, "arch": "cifar_dncnn", "state_dict": state, "optimizer": {}}, path)
    den = load_denoiser(path)
    assert den.source == "reference" and den.sigma is None
    assert den.config == {"name": "dncnn", "in_channels": 3, "channels": 16, "depth": 5}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(den.model(x, 0.25), net.eval()(x))
    save_denoiser(str(tmp_path / "ours.pth"), net, sigma={"mode": "fixed", "values": [0.25]}, objective="mse")
    ours = load_denoiser(str(tmp_path / "ours.pth"))
    assert ours.source == "certifynet" and ours.config == den.config and ours.objective == "mse"
    with torch.no_grad():
        assert torch.equal(ours.model(x, 0.25), net(x))


def test_kair_bare_drunet_state_dict(tmp_path):
    net = get_denoiser("drunet", 1, channels=(8, 16, 24, 32), nb=2)
    torch.save(net.state_dict(), str(tmp_path / "drunet_gray.pth"))
    den = load_denoiser(str(tmp_path / "drunet_gray.pth"))
    assert den.source == "kair"
    assert den.config == {"name": "drunet", "in_channels": 1, "channels": [8, 16, 24, 32], "nb": 2}
    assert _same_outputs(den.model, net)


class _Payload:
    pass


@pytest.mark.parametrize("obj, needle", [
    ({"state_dict": {}, "extra": _Payload()}, "weights_only"),
    ({"conv.weight": torch.zeros(1, 1, 3, 3)}, "unknown layout: unmatched keys ['conv.weight']"),
    ({"arch": "imagenet_memnet", "state_dict": {}}, "imagenet_memnet"),
])
def test_bad_denoiser_files_refused(tmp_path, obj, needle):
    path = str(tmp_path / "bad.pth")
    torch.save(obj, path)
    with pytest.raises(CertifyNetError) as e:
        load_denoiser(path)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_classifier_checkpoint_is_not_a_denoiser(clf_path):
    with pytest.raises(CertifyNetError, match="classifier checkpoint"):
        load_denoiser(clf_path)


# ---------------------------------------------------------------- denoised smoothing
def test_certify_and_sample_with_denoiser(tmp_path, clf_path, mse_run, capsys):
    from certifynet.cli.certify import main as certify_main
    from certifynet.cli.sample import main as sample_main
    common = ["--model", clf_path, "--denoiser", mse_run["checkpoint"], "--sigma", "0.25", "--N0", "8", "--N", "16",
              "--max", "2", "--batch", "16", "--device", "cpu"]
    log = str(tmp_path / "cert.tsv")
    assert certify_main(common + ["--out", log]) == 0
    header, rows = read_rows(log)
    assert len(rows) == 2 and header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    counts = str(tmp_path / "counts.csv")
    assert sample_main(common + ["--out", counts]) == 0
    for path in (log, counts):
        meta = read_meta(path)
        assert meta["denoiser"] == os.path.abspath(mse_run["checkpoint"]) and len(meta["denoiser_sha256"]) == 64
        assert meta["denoiser_arch"]["name"] == "drunet" and meta["sigma"] == 0.25


def test_smooth_python_api_with_denoiser(clf_path, mse_run):
    from certifynet.sampling import Smooth
    clf, den = load_checkpoint(clf_path).model, load_denoiser(mse_run["checkpoint"]).model
    smooth = Smooth(DenoisedClassifier(den, freeze(clf), 0.25), 10, 0.25, device="cpu")
    x = _digits(1)[0]
    c, r = smooth.certify(x, n0=8, n=16, alpha=0.001, batch=16)
    assert c == Smooth.ABSTAIN and r == 0.0 or 0 <= c < 10 and r >= 0
    assert smooth.predict(x, n=16, alpha=0.001, batch=16) in (Smooth.ABSTAIN, *range(10))
