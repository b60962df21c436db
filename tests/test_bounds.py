"""Bounded cost and checkpoints read like user input (issue 25): sizes that can never fit are refused before
any work, a checkpoint's inflated size is bounded before it is read, and its header is validated field by
field. Each seen failure has its own test (they fail on the code before these checks)."""
from __future__ import annotations

import math
import os
import zipfile

import pytest
import torch

from certifynet.cli import attack, certify, sample
from certifynet.errors import CertifyNetError
from certifynet.models import load_checkpoint, read_checkpoint_file

SMALL = ["--sigma", "0.25", "--N0", "10", "--N", "40", "--no-progress"]
GB = 10 ** 9

pytestmark = pytest.mark.usefixtures("one_thread")


def run(main, argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> bool:
    lines = err.splitlines()
    return bool(lines) and lines[-1].startswith("error: ") and sum(ln.startswith("error:") for ln in lines) == 1 \
        and "unexpected" not in err


@pytest.fixture
def memory(monkeypatch):
    """A machine of 64 GB, whatever runs the test."""
    monkeypatch.setenv("CERTIFYNET_MEMORY_BYTES", str(64 * GB))


@pytest.fixture
def no_noise(monkeypatch):
    """Fail the test if any noise is drawn (a refused size must be refused before any work)."""
    def refuse(*args, **kwargs):
        raise AssertionError("noise was drawn")

    monkeypatch.setattr(torch, "randn", refuse)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from helpers import untrained_lenet
    return untrained_lenet(tmp_path_factory.mktemp("model") / "lenet.pth")


# ================================================================ sizes that can never fit
def test_a_batch_that_cannot_fit_is_refused_before_any_work(model, tmp_path, capsys, memory, no_noise):
    """Seen: --batch 10⁹ asked torch for terabytes."""
    rc, _, err = run(sample.main, ["--model", model, *SMALL, "--batch", 10 ** 9, "--out", tmp_path / "c.csv"], capsys)
    assert rc == 2 and one_error_line(err) and "--batch asks for 1,000,000,000 noisy copies" in err, err
    assert "more than this machine's 64 GB" in err and os.listdir(tmp_path) == []


def test_the_attack_batch_is_m_times_the_inputs(model, tmp_path, capsys, memory, no_noise):
    """Seen: --m 10⁹ (the attack's m noisy copies of batch // m inputs per step)."""
    rc, _, err = run(attack.main, ["--model", model, "--sigma", "0.25", "--eps", "0.5", "--m", 10 ** 9, "--max", "1",
                                   "--out", tmp_path / "curve.tsv"], capsys)
    assert rc == 2 and one_error_line(err) and "--m × --batch" in err, err
    assert os.listdir(tmp_path) == []


def test_a_sequential_schedule_is_bounded_before_it_is_built(model, tmp_path, capsys, memory, monkeypatch):
    """Seen: a sequential --N typo built a 10¹¹-entry schedule before it was refused."""
    from certifynet.certify import sequential

    def never(*args, **kwargs):
        raise AssertionError("the schedule was built")

    monkeypatch.setattr(sequential, "batch_schedule", never)
    rc, _, err = run(certify.main, ["--model", model, "--sigma", "0.25", "--N", 10 ** 10, "--batch", 1000,
                                    "--sequential", "--radii", "0.5", "--out", tmp_path / "s.tsv"], capsys)
    assert rc == 2 and one_error_line(err) and "--N" in err and "--batch" in err and "schedule" in err, err
    assert os.listdir(tmp_path) == []


def test_sizes_that_fit_pass_and_the_schedule_length_is_exact(memory):
    from certifynet import bounds
    bounds.check_batch_memory(10 ** 4, 3 * 224 * 224)  # 18 GB of noisy ImageNet copies on 64 GB: allowed
    from certifynet.certify.sequential import batch_schedule
    for n, b in [(1, 1), (100, 1000), (1000, 100), (10 ** 5, 1000), (12345, 77), (33, 32), (32, 32), (64, 48)]:
        assert bounds.schedule_length(n, b) == len(batch_schedule(n, b)), (n, b)
    bounds.check_schedule_length(10 ** 9 - 10 ** 4, 1000)  # 10⁶ batches: allowed
    with pytest.raises(CertifyNetError, match="N 1,000,001,000 in batches of batch 1,000"):
        bounds.check_schedule_length(10 ** 9 + 1000, 1000)


def test_bounds_know_every_dataset():
    from certifynet import bounds
    from certifynet.data import DATASETS
    assert bounds.INPUT_DIMS == {name: info.dim for name, info in DATASETS.items()}


def test_memory_override_is_checked(monkeypatch):
    from certifynet import bounds
    monkeypatch.setenv("CERTIFYNET_MEMORY_BYTES", "lots")
    with pytest.raises(CertifyNetError, match="CERTIFYNET_MEMORY_BYTES"):
        bounds.memory_bytes()
    monkeypatch.setenv("CERTIFYNET_MEMORY_BYTES", "1e3")
    with pytest.raises(CertifyNetError, match="--batch"):
        try:
            bounds.check_batch_memory(1, 784)
        except CertifyNetError as e:
            raise CertifyNetError(e.render(cli=True)) from None


# ================================================================ checkpoint files: size before reading
def zip_bomb(path, inflated=80 << 20):
    """A torch-looking zip whose data entry deflates from ~80 kB to `inflated` bytes of zeros."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/version", "3\n")
        with z.open("bomb/data/0", "w") as f:
            chunk = bytes(1 << 20)
            for _ in range(inflated >> 20):
                f.write(chunk)
    return str(path)


def test_a_zip_bomb_is_refused_before_it_is_read(tmp_path, monkeypatch, capsys):
    """Seen: a 2 MB checkpoint that inflated on load took the web server and the CLI to ~2.8 GB before it was
    refused. The bound is checked on the zip directory; torch never reads the file."""
    bomb = zip_bomb(tmp_path / "bomb.pth")
    assert os.path.getsize(bomb) < 1 << 20

    def never(*args, **kwargs):
        raise AssertionError("torch read the file")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(CertifyNetError, match=r"would inflate from .* to 83.9 MB .* refused before reading it"):
        read_checkpoint_file(bomb)
    rc, _, err = run(sample.main, ["--model", bomb, *SMALL, "--out", tmp_path / "c.csv"], capsys)
    assert rc == 2 and one_error_line(err) and "would inflate" in err


def test_ordinary_and_legacy_checkpoints_pass_the_bound(tmp_path, model):
    assert load_checkpoint(model).arch == "lenet"  # stored (uncompressed) zip: inflates to its own size
    raw = torch.load(model, weights_only=True)
    legacy = str(tmp_path / "legacy.pth")
    torch.save(raw, legacy, _use_new_zipfile_serialization=False)
    assert load_checkpoint(legacy).arch == "lenet"
    deflated = str(tmp_path / "deflated.pth")  # a checkpoint someone re-zipped: inflates by far less than 2×
    with zipfile.ZipFile(model) as z, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as out:
        for info in z.infolist():
            out.writestr(info.filename, z.read(info.filename))
    assert load_checkpoint(deflated).arch == "lenet"


# ================================================================ checkpoint headers, validated like user input
def edited(model, path, edit) -> str:
    raw = torch.load(model, weights_only=True)
    edit(raw)
    torch.save(raw, str(path))
    return str(path)


def _set(key, value):
    def edit(raw):
        holder, _, name = key.rpartition(".")
        (raw[holder] if holder else raw)[name] = value
    return edit


BAD_HEADERS = [
    ("noise.k", "abc"), ("noise.k", 2.5), ("noise.k", -1), ("noise.k", True), ("noise.sigma", math.nan),
    ("noise.sigma", "x"), ("noise.sigma", -0.5), ("noise", [0.25, 0]), ("normalization.std", [0.0]),
    ("normalization.mean", [math.inf]), ("normalization", "identity"), ("num_classes", 7), ("epoch", math.nan),
    ("epoch", -3), ("dataset", 5), ("dataset", "svhn"), ("arch", ["lenet"]), ("training", {"world_size": 0}),
    ("args", "lr=0.1"),
]


@pytest.mark.parametrize("key, value", BAD_HEADERS, ids=[f"{k}={v!r}" for k, v in BAD_HEADERS])
def test_a_bad_header_field_is_a_one_line_error_naming_it(model, tmp_path, key, value):
    """Seen: a non-integer noise.k turned the web app's model pages into HTTP 500 and the CLI into 'unexpected
    ValueError'. Every field of our header is checked for type, range and finiteness."""
    path = edited(model, tmp_path / "bad.pth", _set(key, value))
    with pytest.raises(CertifyNetError, match=f"header field '{key.split('.')[0]}"):
        load_checkpoint(path)


def test_a_bad_header_through_the_cli_and_the_web_catalog(model, tmp_path, capsys):
    from certifynet.web.catalog import Catalog
    folder = tmp_path / "models"
    folder.mkdir()
    edited(model, folder / "bad.pth", _set("noise.k", "abc"))
    os.link(model, folder / "good.pth")
    rc, _, err = run(sample.main, ["--model", folder / "bad.pth", *SMALL, "--out", tmp_path / "c.csv"], capsys)
    assert rc == 2 and one_error_line(err) and "noise.k" in err
    entries = {e.path: e for e in Catalog(str(tmp_path), ["models"], "uploads").entries()}
    assert entries["models/good.pth"].kind == "classifier"
    assert entries["models/bad.pth"].kind == "refused" and "noise.k" in entries["models/bad.pth"].error


def test_any_loader_failure_is_a_refused_entry_not_a_crash(tmp_path, monkeypatch):
    """Defence in depth: whatever a loader raises, the catalogue lists the file as refused, in one line."""
    from certifynet import models
    from certifynet.web import catalog

    def broken(path, *args, **kwargs):
        raise ValueError("a loader bug\nwith a second line")

    monkeypatch.setattr(models, "load_checkpoint", broken)
    entry = catalog.describe_checkpoint(str(tmp_path / "x.pth"), "models/x.pth")
    assert entry["kind"] == "refused" and "ValueError" in entry["error"] and "\n" not in entry["error"]


def test_reference_files_keep_loading(tmp_path):
    """Reference layouts carry other fields (a Namespace `args`, no noise): only what certifynet reads is
    checked, so they are not refused."""
    import argparse

    from certifynet.models import get_architecture
    net = get_architecture("lenet", "mnist5k")
    ref = {"epoch": 90, "arch": "lenet", "state_dict": net[1].state_dict(), "args": argparse.Namespace(lr=0.1),
           "best_acc": "n/a"}
    torch.save(ref, str(tmp_path / "ref.pth.tar"))
    assert load_checkpoint(str(tmp_path / "ref.pth.tar"), dataset="mnist5k").epoch == 90
    torch.save({**ref, "noise": {"k": "x"}}, str(tmp_path / "ref_bad.pth.tar"))
    with pytest.raises(CertifyNetError, match="noise.k"):
        load_checkpoint(str(tmp_path / "ref_bad.pth.tar"), dataset="mnist5k")


@pytest.mark.parametrize("edit, field", [
    (lambda raw: raw["config"].update(channels=[10 ** 6] * 4), "config.channels"),
    (lambda raw: raw["config"].update(name=["drunet"]), "config.name"),
    (lambda raw: raw.update(sigma={"mode": "fixed", "values": [math.nan]}), "sigma.values"),
    (lambda raw: raw.update(sigma={"mode": "sometimes", "values": [0.25]}), "sigma.mode"),
    (lambda raw: raw.update(epoch="3"), "epoch"),
])
def test_a_bad_denoiser_header_is_refused_before_its_model_is_built(tmp_path, edit, field):
    """A denoiser's config sizes the model built before any weight is read: 10⁶ channels would take the
    memory; other fields reach the sampler's σ checks."""
    from certifynet.denoise import get_denoiser, load_denoiser, save_denoiser
    path = str(tmp_path / "den.pth")
    save_denoiser(path, get_denoiser("drunet_small", 1), sigma={"mode": "fixed", "values": [0.25]})
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)
    with pytest.raises(CertifyNetError, match=f"header field '{field}"):
        load_denoiser(path)
