"""Training loop and CLIs (train.py, train_smoothmix.py): short CPU runs on mnist5k, one thread."""
import csv
import json
import os
import struct
import subprocess
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from certifynet.cli import train as cli_train
from certifynet.cli import train_smoothmix as cli_smoothmix
from certifynet.data import get_dataset
from certifynet.models import get_architecture, load_checkpoint, save_checkpoint
from certifynet.paths import default_path
from certifynet.training import LOG_COLUMNS, LossSpec, TrainConfig, config, loop, split_batch
from certifynet.training import data as train_data
from certifynet.training.schedule import k_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
SMALL = ["--train-subset", "128", "--test-subset", "64", "--batch", "32", "--workers", "0", "--device", "cpu",
         "--no-progress", "--lr", "0.01"]

SEED_MNIST = ("mnist mnist_43 --lr 0.01 --lr_step_size 50 --epochs 150 --noise 0.25 --num-noise-vec 2 --lbd 5 "
              "--k 380 --k-warmup 100").split()
SEED_CIFAR = ("cifar10 cifar_resnet110 --lr 0.01 --lr_step_size 50 --epochs 150 --noise 0.25 --num-noise-vec 1 "
              "--lbd 0 --k 1530 --k-warmup 100").split()
SEED_SMOOTHMIX = ("cifar10 cifar_resnet110 --lr 0.1 --lr_step_size 50 --epochs 150 --noise_sd 0.5 --eta 5.00 "
                  "--num-noise-vec 2 --num-steps 4 --alpha 1.0 --mix_step 1 --k 1530 --k-warmup 110").split()


pytestmark = pytest.mark.usefixtures("one_thread")


def run(main, argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def read_log(outdir):
    with open(os.path.join(outdir, "log.csv"), newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def weights(path):
    return load_checkpoint(path).model.state_dict()


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- learning

def test_short_gaussian_run_learns(tmp_path):
    """1 epoch of LeNet on the 4,000 mnist5k training digits at σ=0.25 is far above chance under noise.

    lr 0.05: at the recipe's 0.01 a single epoch (63 steps) ends right at LeNet's take-off, with noisy test
    accuracy 0.63-0.72 depending on the seed; at 0.05 it is 0.88-0.93 for seeds 0-3.
    """
    cfg = TrainConfig(dataset="mnist5k", arch="lenet", sigma=0.25, lr=0.05, epochs=1, batch=64, workers=0,
                      device="cpu", outdir=str(tmp_path / "run"), progress=False)
    summary = loop.train(cfg)
    row = summary["last"]
    assert summary["train_size"] == 4000 and summary["test_size"] == 1000
    assert row["test_acc_noisy"] > 0.8, row
    ck = load_checkpoint(str(tmp_path / "run" / "checkpoint.pth"))
    assert (ck.arch, ck.dataset, ck.sigma, ck.k, ck.epoch) == ("lenet", "mnist5k", 0.25, 0, 1)
    x, y = get_dataset("mnist5k", "test").tensors
    with torch.no_grad():
        clean = (ck.model(x).argmax(1) == y).float().mean().item()
    print(f"mnist5k lenet 1 epoch: noisy test acc {row['test_acc_noisy']:.3f}, clean {clean:.3f}, "
          f"train acc {row['train_acc']:.3f}, {row['seconds']:.1f}s")
    assert clean > 0.8


# ---------------------------------------------------------------- every method through the CLI

METHOD_RUNS = {
    "gaussian": (cli_train.main, ["--noise", "0.25"], "gaussian"),
    "consistency": (cli_train.main, ["--noise", "0.25", "--num-noise-vec", "2", "--lbd", "5"], "consistency"),
    "consistency_eta": (cli_train.main, ["--noise", "0.5", "--num-noise-vec", "2", "--lbd", "10", "--eta", "0.5"],
                        "consistency"),
    "gaussian_m2": (cli_train.main, ["--noise", "0.25", "--num-noise-vec", "2", "--lbd", "0"], "gaussian"),
    "smoothmix": (cli_smoothmix.main, ["--noise_sd", "0.5", "--num-noise-vec", "2", "--num-steps", "2",
                                       "--mix_step", "1", "--eta", "5", "--warmup", "2"], "smoothmix"),
    "k_warmup": (cli_train.main, ["--noise", "0.25", "--k", "380", "--k-warmup", "2", "--epochs", "2"], "gaussian"),
    "smoothmix_k": (cli_smoothmix.main, ["--noise", "0.5", "--num-steps", "1", "--k", "380", "--k-warmup", "1"],
                    "smoothmix"),
}


@pytest.mark.parametrize("name", list(METHOD_RUNS))
def test_each_method_trains_and_writes_log_and_checkpoint(tmp_path, capsys, name):
    main, extra, method = METHOD_RUNS[name]
    out = str(tmp_path / name)
    argv = ["mnist5k", "lenet", "--epochs", "1", *SMALL, *extra, "--outdir", out]
    rc, stdout, err = run(main, argv, capsys)
    assert rc == 0, err
    header, rows = read_log(out)
    assert header == LOG_COLUMNS
    epochs = 2 if name == "k_warmup" else 1
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))
    meta = json.load(open(os.path.join(out, "log.meta.json")))
    assert meta["method"] == method and meta["dataset"] == "mnist5k" and meta["arch"] == "lenet"
    assert meta["train_size"] == 128 and meta["test_size"] == 64
    sigma = float(extra[extra.index("--noise" if "--noise" in extra else "--noise_sd") + 1])
    k = int(extra[extra.index("--k") + 1]) if "--k" in extra else 0
    k_warmup = int(extra[extra.index("--k-warmup") + 1]) if "--k-warmup" in extra else 0
    assert meta["sigma"] == sigma and meta["k"] == k and meta["k_warmup"] == k_warmup
    for r in rows:
        t = int(r["epoch"])
        assert int(r["k"]) == k_at(t, k, k_warmup)
        assert 0.0 <= float(r["train_acc"]) <= 1.0 and 0.0 <= float(r["test_acc_noisy"]) <= 1.0
        assert float(r["train_loss"]) > 0 and float(r["lr"]) == 0.01
    ck = load_checkpoint(os.path.join(out, "checkpoint.pth"))
    assert (ck.sigma, ck.k, ck.epoch, ck.source) == (sigma, k, epochs, "certifynet")
    assert ck.raw["training"]["method"] == method and ck.raw["optimizer"] is not None
    assert ck.raw["args"]["method"] == method
    assert stdout.count("epoch ") == epochs
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]


def test_k_schedule_by_step(tmp_path, capsys):
    """--k-warmup-unit step (the ImageNet default): k grows per loader step; the log shows the k at the end."""
    out = str(tmp_path / "s")
    rc, _, err = run(cli_train.main, ["mnist5k", "lenet", "--epochs", "1", *SMALL, "--noise", "0.25", "--k", "380",
                                      "--k-warmup", "10", "--k-warmup-unit", "step", "--outdir", out], capsys)
    assert rc == 0, err
    _, rows = read_log(out)
    steps = 128 // 32
    assert int(rows[0]["k"]) == k_at(steps - 1, 380, 10) > 0


def test_method_auto_choice():
    cfg = lambda **kw: TrainConfig(dataset="mnist5k", arch="lenet", sigma=0.25, **kw)  # noqa: E731
    assert config.resolve_method(cfg(num_noise_vec=2, lbd=5)) == "consistency"
    assert config.resolve_method(cfg(num_noise_vec=1, lbd=5)) == "gaussian"
    assert config.resolve_method(cfg(num_noise_vec=2, lbd=0)) == "gaussian"
    assert config.resolve_method(cfg(num_noise_vec=1, lbd=0, method="consistency")) == "consistency"
    p = config.prepare_config(cfg(num_noise_vec=2, lbd=5))
    assert p.entropy == "dsrs" and p.outdir == default_path(os.path.join(
        "models", "mnist5k", "lenet", "consistency", "num_2", "lbd_5", "eta_5_dsrs", "noise_0.25"))
    p = config.prepare_config(cfg(num_noise_vec=2, lbd=5, eta=0.5, k=380))
    assert p.entropy == "pbar" and p.outdir.endswith(os.path.join("lbd_5", "eta_0.5", "noise_0.25_k380"))


def test_split_batch_is_the_reference_batching():
    x, y = torch.arange(10.0).view(10, 1), torch.arange(10)
    chunks = split_batch(x, y, 3)
    assert [c[1].tolist() for c in chunks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert split_batch(x[:2], y[:2], 3) == []
    assert len(split_batch(x, y, 1)) == 1 and split_batch(x, y, 1)[0][0].shape[0] == 10


def test_train_accuracy_counts_every_noisy_copy():
    """The logged train accuracy comes from the loss's own forward of the m noisy copies."""
    torch.manual_seed(0)
    model = get_architecture("lenet", "mnist5k")
    x, y = get_dataset("mnist5k", "train").tensors
    x, y = x[:16], y[:16]
    loader = [(x, y)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    noise = train_data.NoiseSource(0.0, 784, torch.Generator())
    sums, _ = loop.train_one_epoch(model, loader, opt, LossSpec("consistency", m=2, lbd=1.0), noise, 0,
                                   lambda s: 0, "cpu")
    with torch.no_grad():
        pred = model(x).argmax(1)
    half = 8
    expect = 2 * ((pred[:half] == y[:half]).sum() + (pred[half:] == y[half:]).sum())
    assert sums[1].item() == 16 and sums[3].item() == 32 and sums[2].item() == expect.item()


# ---------------------------------------------------------------- resume, pretrained, atomic checkpoints

def test_resume_continues_at_next_epoch_and_replays_the_run(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = ["mnist5k", "lenet", *SMALL, "--noise", "0.25", "--k", "380", "--k-warmup", "1"]
    assert run(cli_train.main, [*common, "--epochs", "2", "--outdir", a], capsys)[0] == 0
    assert run(cli_train.main, [*common, "--epochs", "1", "--outdir", b], capsys)[0] == 0
    rc, out, err = run(cli_train.main, [*common, "--epochs", "2", "--outdir", b, "--resume"], capsys)
    assert rc == 0, err
    assert "epoch 2/2" in out and "epoch 1/2" not in out
    _, rows_a = read_log(a)
    _, rows_b = read_log(b)
    assert [r["epoch"] for r in rows_b] == ["0", "1"]
    ck = load_checkpoint(os.path.join(b, "checkpoint.pth"))
    assert ck.epoch == 2
    # same seed → the resumed run replays the uninterrupted one (order, noise, optimizer state)
    assert same_weights(weights(os.path.join(a, "checkpoint.pth")), ck.model.state_dict())
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]
    # nothing left to do
    rc, out, _ = run(cli_train.main, [*common, "--epochs", "2", "--outdir", b, "--resume", "auto"], capsys)
    assert rc == 0 and "nothing to do" in out


def test_existing_checkpoint_needs_resume_or_overwrite(tmp_path, capsys):
    out = str(tmp_path / "o")
    argv = ["mnist5k", "lenet", *SMALL, "--noise", "0.25", "--epochs", "0", "--outdir", out]
    assert run(cli_train.main, argv, capsys)[0] == 0
    rc, _, err = run(cli_train.main, argv, capsys)
    assert rc == 2 and "--resume" in err and "--overwrite" in err and err.count("\n") == 1
    assert run(cli_train.main, [*argv, "--overwrite"], capsys)[0] == 0
    rc, _, err = run(cli_train.main, [*argv[:-4], "--noise", "0.5", "--epochs", "1", "--outdir", out,
                                      "--resume", os.path.join(out, "checkpoint.pth")], capsys)
    assert rc == 2 and "σ=0.25" in err


def test_pretrained_model_initialises_weights(tmp_path, capsys):
    """A reference-format file ({'arch','state_dict'} with DataParallel `module.` keys) initialises the model."""
    torch.manual_seed(123)
    src = get_architecture("lenet", "mnist5k")
    ref = {"epoch": 90, "arch": "lenet", "state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}
    path = str(tmp_path / "ref.pth.tar")
    torch.save(ref, path)
    out = str(tmp_path / "ft")
    rc, _, err = run(cli_train.main, ["mnist5k", "lenet", *SMALL, "--noise", "0.25", "--epochs", "0",
                                      "--pretrained-model", path, "--outdir", out], capsys)
    assert rc == 0, err
    assert same_weights(weights(os.path.join(out, "checkpoint.pth")), src.state_dict())
    meta = json.load(open(os.path.join(out, "log.meta.json")))
    assert meta["init"] == f"pretrained:{path}"
    # and one epoch of fine-tuning moves away from it
    rc, _, err = run(cli_train.main, ["mnist5k", "lenet", *SMALL, "--noise", "0.25", "--epochs", "1",
                                      "--pretrained-model", path, "--outdir", out, "--overwrite"], capsys)
    assert rc == 0, err
    assert not same_weights(weights(os.path.join(out, "checkpoint.pth")), src.state_dict())


def test_normalization_flag(tmp_path, capsys):
    """Default = the reference convention (lenet: identity); --normalization overrides it, is recorded in the
    checkpoint and log.meta.json, and a resume with another one is refused."""
    def norm_of(out):
        ck = load_checkpoint(os.path.join(out, "checkpoint.pth"))
        return ck.raw["normalization"], json.load(open(os.path.join(out, "log.meta.json")))["normalization"]

    base = ["mnist5k", "lenet", *SMALL, "--noise", "0.25", "--epochs", "0"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert run(cli_train.main, [*base, "--outdir", a], capsys)[0] == 0
    assert norm_of(a) == ({"mean": [0.0], "std": [1.0]},) * 2
    assert run(cli_train.main, [*base, "--outdir", b, "--normalization", "0.5/0.5"], capsys)[0] == 0
    assert norm_of(b) == ({"mean": [0.5], "std": [0.5]},) * 2
    rc, _, err = run(cli_train.main, [*base[:-2], "--epochs", "1", "--outdir", b, "--resume", "--normalization",
                                      "identity"], capsys)
    assert rc == 2 and "normalization" in err and err.count("\n") == 1
    rc, _, err = run(cli_train.main, [*base, "--outdir", str(tmp_path / "c"), "--normalization", "bogus"], capsys)
    assert rc == 2 and "--normalization" in err


def test_pretrained_arch_mismatch_is_one_line(tmp_path, capsys):
    path = str(tmp_path / "m43.pth")
    save_checkpoint(path, get_architecture("mnist_43", "mnist5k"), arch="mnist_43", dataset="mnist5k", num_classes=10)
    rc, _, err = run(cli_train.main, ["mnist5k", "lenet", *SMALL, "--noise", "0.25", "--epochs", "0",
                                      "--pretrained-model", path, "--outdir", str(tmp_path / "x")], capsys)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "mnist_43" in err


def test_checkpoint_is_written_atomically(tmp_path, capsys, monkeypatch):
    """A save that dies half-way leaves the previous checkpoint intact and no temp file; the log row of the
    unsaved epoch is dropped when the run resumes."""
    out = str(tmp_path / "at")
    common = ["mnist5k", "lenet", *SMALL, "--noise", "0.25", "--outdir", out]
    assert run(cli_train.main, [*common, "--epochs", "1"], capsys)[0] == 0
    ckpt = os.path.join(out, "checkpoint.pth")
    before = open(ckpt, "rb").read()
    real_save = torch.save

    def dying_save(obj, f, *a, **kw):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        loop.train(TrainConfig.from_namespace(cli_train.build_parser().parse_args([*common, "--epochs", "2",
                                                                                   "--resume", "auto"])))
    monkeypatch.setattr(torch, "save", real_save)
    capsys.readouterr()
    assert open(ckpt, "rb").read() == before
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    assert [r["epoch"] for r in read_log(out)[1]] == ["0", "1"]  # row 1 was logged, its checkpoint was not
    assert load_checkpoint(ckpt).epoch == 1
    assert run(cli_train.main, [*common, "--epochs", "2", "--resume", "auto"], capsys)[0] == 0
    assert [r["epoch"] for r in read_log(out)[1]] == ["0", "1"]
    assert load_checkpoint(ckpt).epoch == 2


def test_log_rows_keep_their_format_and_a_resume_continues_the_same_file(tmp_path, capsys):
    """log.csv holds %.6g numbers; a resumed run keeps the earlier rows byte for byte and appends after them,
    and its log.meta.json describes the resumed run. No lock or temp file is left behind."""
    out = str(tmp_path / "r")
    common = ["mnist5k", "lenet", *SMALL, "--noise", "0.25", "--outdir", out]
    assert run(cli_train.main, [*common, "--epochs", "1"], capsys)[0] == 0
    first = open(os.path.join(out, "log.csv"), "rb").read()
    assert run(cli_train.main, [*common, "--epochs", "2", "--resume"], capsys)[0] == 0
    both = open(os.path.join(out, "log.csv"), "rb").read()
    assert both.startswith(first) and both.count(b"\n") == 3
    _, rows = read_log(out)
    for r in rows:
        for c in ("lr", "train_loss", "train_acc", "test_acc_noisy", "seconds"):
            assert r[c] == f"{float(r[c]):.6g}", (c, r[c])
    meta = json.load(open(os.path.join(out, "log.meta.json")))
    assert (meta["kind"], meta["start_epoch"], meta["columns"]) == ("train_log", 1, LOG_COLUMNS)
    assert meta["init"] == f"resume:{os.path.join(out, 'checkpoint.pth')}"
    assert sorted(os.listdir(out)) == ["checkpoint.pth", "log.csv", "log.meta.json"]


def test_a_failed_fresh_run_leaves_no_log_behind(tmp_path, monkeypatch):
    """A fresh run that fails before its first row deletes its header-only log and sidecar, and the folder
    when it made it; a folder that was there stays."""
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(loop, "train_one_epoch", boom)

    def cfg(out):
        return TrainConfig(dataset="mnist5k", arch="lenet", sigma=0.25, epochs=1, batch=32, workers=0, device="cpu",
                           train_subset=64, test_subset=32, progress=False, outdir=out)

    new = tmp_path / "new"
    with pytest.raises(RuntimeError, match="boom"):
        loop.train(cfg(str(new)))
    assert not new.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        loop.train(cfg(str(mine)))
    assert os.listdir(mine) == []


# ---------------------------------------------------------------- bad inputs: one line, exit 2

@pytest.mark.parametrize("argv, needle", [
    (["mnist5k", "resnet18", "--noise", "0.25"], "unknown arch 'resnet18'"),
    (["mnist5k", "cifar_resnet20", "--noise", "0.25"], "cifar_resnet20"),
    (["cifar10", "cifar_resnet20", "--noise", "0.25", "--data-dir", "{tmp}/nothing"], "--data-dir"),
    (["mnist", "lenet", "--noise", "0.25", "--data-dir", "{tmp}/nothing"], "--download"),
    (["svhn", "lenet", "--noise", "0.25"], "unknown dataset"),
    (["mnist5k", "lenet", "--noise", "0.25", "--k", "400"], "--k must be in"),
    (["mnist5k", "lenet", "--noise", "-1"], "--noise"),
    (["mnist5k", "lenet", "--noise", "0.25", "--resume", "{tmp}/none.pth"], "not found"),
    (["mnist5k", "lenet", "--noise", "0.25", "--pretrained-model", "{tmp}/none.pth"], "not found"),
    (["mnist5k", "lenet", "--noise", "0.25", "--batch", "1", "--num-noise-vec", "2"], "--num-noise-vec"),
])
def test_bad_inputs_one_line_exit_2(tmp_path, capsys, argv, needle):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--outdir", str(tmp_path / "o"), "--workers", "0"]
    rc, out, err = run(cli_train.main, argv, capsys)
    assert rc == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not os.path.exists(tmp_path / "o" / "checkpoint.pth")


def test_smoothmix_bad_mix_step(tmp_path, capsys):
    rc, _, err = run(cli_smoothmix.main, ["mnist5k", "lenet", "--noise", "0.5", "--num-steps", "2", "--mix_step", "3",
                                          "--outdir", str(tmp_path)], capsys)
    assert rc == 2 and "--mix-step must be in [0, --num-steps=2], got 3" in err and err.count("\n") == 1


@pytest.mark.e2e
@pytest.mark.parametrize("script, flags", [
    ("train.py", ["--noise_sd", "--lr_step_size", "--num-noise-vec", "--lbd", "--eta", "--k-warmup", "--resume",
                  "--pretrained-model", "--dry-run", "--train-subset"]),
    ("train_smoothmix.py", ["--num-steps", "--mix_step", "--maxnorm_s", "--maxnorm", "--warmup", "--alpha", "--k"]),
])
def test_help(script, flags):
    r = subprocess.run([sys.executable, os.path.join(SCRIPTS, script), "--help"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    for flag in flags:
        assert flag in r.stdout


# ---------------------------------------------------------------- the seed's commands

def test_seed_commands_parse_as_written():
    a = cli_train.build_parser().parse_args(SEED_MNIST)
    assert (a.dataset, a.arch, a.lr, a.lr_step_size, a.epochs, a.sigma, a.num_noise_vec, a.lbd, a.k, a.k_warmup) == \
        ("mnist", "mnist_43", 0.01, 50, 150, 0.25, 2, 5.0, 380, 100)
    cfg = config.prepare_config(TrainConfig.from_namespace(a))
    assert cfg.method == "consistency" and cfg.eta is None and cfg.entropy == "dsrs"
    assert (cfg.gamma, cfg.momentum, cfg.weight_decay, cfg.batch) == (0.1, 0.9, 1e-4, 256)
    assert cfg.outdir == default_path(os.path.join("models", "mnist", "mnist_43", "consistency", "num_2", "lbd_5",
                                                   "eta_5_dsrs", "noise_0.25_k380_kw100"))

    a = cli_train.build_parser().parse_args(SEED_CIFAR)
    cfg = config.prepare_config(TrainConfig.from_namespace(a))
    assert (cfg.arch, cfg.method, cfg.num_noise_vec, cfg.lbd, cfg.k, cfg.k_warmup) == \
        ("cifar_resnet110", "gaussian", 1, 0.0, 1530, 100)

    a = cli_smoothmix.build_parser().parse_args(SEED_SMOOTHMIX)
    cfg = config.prepare_config(TrainConfig.from_namespace(a, method="smoothmix"))
    assert (cfg.method, cfg.sigma, cfg.eta, cfg.num_noise_vec, cfg.num_steps, cfg.alpha, cfg.mix_step, cfg.k,
            cfg.k_warmup, cfg.lr, cfg.warmup, cfg.maxnorm, cfg.maxnorm_s) == \
        ("smoothmix", 0.5, 5.0, 2, 4, 1.0, 1, 1530, 110, 0.1, 10, None, None)

    a = cli_train.build_parser().parse_args(["imagenet", "resnet50", "--pretrained-model", "PATH", "--batch", "96",
                                             "--noise", "0.5", "--lr", "0.001", "--epochs", "3"])
    assert (a.pretrained_model, a.batch) == ("PATH", 96)
    assert config.warmup_unit(TrainConfig.from_namespace(a)) == "step"


def _write_idx(path, arr, magic):
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in arr.shape))
        f.write(arr.astype("uint8").tobytes())


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """A real-format torchvision MNIST folder (idx files) holding some mnist5k digits."""
    root = tmp_path_factory.mktemp("mnistdata")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n, prefix in (("train", 96, "train"), ("test", 32, "t10k")):
        x, y = get_dataset("mnist5k", split).tensors
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:n]
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", (x[idx, 0] * 255).round().numpy(), 0x803)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y[idx].numpy(), 0x801)
    return str(root)


def test_seed_mnist_command_on_missing_data_fails_in_one_line(tmp_path, capsys):
    empty = str(tmp_path / "empty")
    for extra in (["--dry-run"], ["--epochs", "0"]):
        rc, _, err = run(cli_train.main, [*SEED_MNIST, *extra, "--data-dir", empty, "--outdir", str(tmp_path / "o")],
                         capsys)
        assert rc == 2 and err.count("\n") == 1
        assert "mnist not found" in err and "--data-dir" in err and "--download" in err
    for argv in (SEED_CIFAR, SEED_SMOOTHMIX):
        main = cli_smoothmix.main if argv is SEED_SMOOTHMIX else cli_train.main
        rc, _, err = run(main, [*argv, "--dry-run", "--data-dir", empty], capsys)
        assert rc == 2 and err.count("\n") == 1 and "cifar10 not found" in err and "--download" in err


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the seed commands keep --workers 4
def test_seed_mnist_command_runs_as_written(tmp_path, capsys, mnist_dir):
    """The first seed command, verbatim but for --data-dir (a real-format MNIST folder), with --dry-run and
    with --epochs 0; and with mnist5k in place of mnist."""
    out = str(tmp_path / "o")
    rc, stdout, err = run(cli_train.main, [*SEED_MNIST, "--data-dir", mnist_dir, "--dry-run", "--outdir", out], capsys)
    assert rc == 0, err
    assert "dry run ok: mnist_43" in stdout and "method consistency" in stdout and not os.path.exists(out)
    rc, _, err = run(cli_train.main, [*SEED_MNIST, "--data-dir", mnist_dir, "--epochs", "0", "--outdir", out], capsys)
    assert rc == 0, err
    ck = load_checkpoint(os.path.join(out, "checkpoint.pth"))
    assert (ck.arch, ck.dataset, ck.sigma, ck.k, ck.epoch) == ("mnist_43", "mnist", 0.25, 380, 0)
    assert read_log(out)[1] == []
    rc, stdout, err = run(cli_train.main, ["mnist5k", *SEED_MNIST[1:], "--dry-run"], capsys)
    assert rc == 0 and "dry run ok" in stdout, err


@pytest.fixture
def fake_cifar(monkeypatch):
    """cifar10 replaced by 8 random images (torchvision's CIFAR-10 checks file hashes, so it cannot be faked)."""
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.rand(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))

    def fake(name, split, data_dir="data", download=False):
        assert name == "cifar10"
        return ds

    monkeypatch.setattr(train_data, "get_dataset", fake)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("which", ["cifar", "smoothmix"])
def test_seed_cifar_commands_run_as_written(tmp_path, capsys, fake_cifar, which):
    main, argv = (cli_train.main, SEED_CIFAR) if which == "cifar" else (cli_smoothmix.main, SEED_SMOOTHMIX)
    out = str(tmp_path / "o")
    rc, stdout, err = run(main, [*argv, "--dry-run", "--outdir", out], capsys)
    assert rc == 0, err
    assert "dry run ok: cifar_resnet110 (1,730,714 parameters)" in stdout
    rc, _, err = run(main, [*argv, "--epochs", "0", "--outdir", out], capsys)
    assert rc == 0, err
    ck = load_checkpoint(os.path.join(out, "checkpoint.pth"))
    assert (ck.arch, ck.k, ck.epoch) == ("cifar_resnet110", 1530, 0)
    assert ck.raw["training"]["method"] == ("gaussian" if which == "cifar" else "smoothmix")


def test_imagenet_finetune_command(tmp_path, capsys):
    """`train.py imagenet resnet50 --pretrained-model PATH --batch 96 ...` on a 4-image ImageFolder (dry run)."""
    from PIL import Image
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            d = tmp_path / "imagenet" / split / c
            d.mkdir(parents=True)
            Image.new("RGB", (64, 48), (40, 80, 120)).save(d / "a.png")
    torch.manual_seed(0)
    src = get_architecture("resnet50", "imagenet")
    pre = str(tmp_path / "pre.pth")
    save_checkpoint(pre, src, arch="resnet50", dataset="imagenet", num_classes=1000, sigma=0.5)
    rc, stdout, err = run(cli_train.main, ["imagenet", "resnet50", "--pretrained-model", pre, "--batch", "96",
                                           "--noise", "0.5", "--lr", "0.001", "--epochs", "1", "--workers", "0",
                                           "--k", "75260", "--k-warmup", "1000",
                                           "--data-dir", str(tmp_path / "imagenet"), "--dry-run"], capsys)
    assert rc == 0, err
    assert "dry run ok: resnet50" in stdout and f"init pretrained:{pre}" in stdout
