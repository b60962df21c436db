"""Bad input, one row per case: the command, the expected one-line message, and "nothing changed".

Every case runs the CLI's `main` in-process on a shared workspace (a small checkpoint, counts files of each
kind, logs, a plain file, a folder, a read-only folder). It must exit non-zero with ONE `error:` line that
holds the expected fragment, no traceback and no "unexpected" (the bug safety net), and leave every file of
the workspace byte for byte as it was, with no file added.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

from certifynet.cli import analyze, attack, certify, merge, predict, sample, train, train_denoiser
from certifynet.models import get_architecture, save_checkpoint

MODULES = {"sample": sample, "certify": certify, "predict": predict, "train": train,
           "train_denoiser": train_denoiser, "merge": merge, "analyze": analyze, "attack": attack}
SMALL = ["--sigma", "0.25", "--N0", "10", "--N", "40", "--batch", "40", "--max", "2", "--no-progress"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The workspace: W/<name> paths used by the cases (built once, never modified by them)."""
    w = tmp_path_factory.mktemp("ws")
    torch.manual_seed(0)
    model = get_architecture("lenet", "mnist5k")
    save_checkpoint(str(w / "model.pth"), model, arch="lenet", dataset="mnist5k", num_classes=10, sigma=0.25)
    with torch.no_grad():
        model[1].fc2.bias[3] = float("nan")
    save_checkpoint(str(w / "nan_model.pth"), model, arch="lenet", dataset="mnist5k", num_classes=10, sigma=0.25)
    (w / "corrupt.pth").write_bytes(b"\x80\x04not a checkpoint")
    m = str(w / "model.pth")
    data = str(w / "data")
    assert sample.main(["--model", m, *SMALL, "--data-dir", data, "--out", str(w / "c.csv")]) == 0
    assert sample.main(["--model", m, *SMALL, "--data-dir", data, "--q-dist", "truncated",
                        "--out", str(w / "c_dsrs.csv")]) == 0
    assert certify.main(["--counts", str(w / "c.csv"), "--out", str(w / "c.np.tsv"), "--no-progress"]) == 0
    (w / "plain.txt").write_text("my notes\n")
    np.save(w / "image.npy", np.full((1, 28, 28), 0.5, np.float32))
    (w / "folder").mkdir()
    (w / "readonly").mkdir()
    os.chmod(w / "readonly", 0o555)
    bad_cache = w / "bad_data"
    bad_cache.mkdir()
    np.savez(bad_cache / "mnist5k.npz", x=np.zeros((10, 10), np.uint8), y=np.zeros(10, np.int64))
    # counts files damaged in ways certify.py must name
    for name, edit in {
        "list_sidecar": lambda meta, lines: ([1, 2, 3], lines),
        "no_sigma": lambda meta, lines: ({k: v for k, v in meta.items() if k != "sigma"}, lines),
        "text_sigma": lambda meta, lines: ({**meta, "sigma": "abc"}, lines),
        "nan_pred": lambda meta, lines: (meta, [lines[0], _field(lines[1], 2, "nan"), *lines[2:]]),
        "abc_idx": lambda meta, lines: (meta, [lines[0], _field(lines[1], 0, "abc"), *lines[2:]]),
    }.items():
        meta = json.load(open(w / "c.csv.meta.json"))
        lines = (w / "c.csv").read_text().splitlines()
        meta, lines = edit(meta, lines)
        (w / f"{name}.csv").write_text("\n".join(lines) + "\n")
        (w / f"{name}.csv.meta.json").write_text(json.dumps(meta))
    (w / "binary.csv").write_bytes(bytes(range(256)) * 4)
    shutil.copy(w / "c.csv.meta.json", w / "binary.csv.meta.json")
    (w / "torn.tsv").write_text((w / "c.np.tsv").read_text()[:-5])
    shutil.copy(w / "c.np.tsv.meta.json", w / "torn.tsv.meta.json")
    (w / "header_only.tsv").write_text((w / "c.np.tsv").read_text().splitlines()[0] + "\n")
    yield w
    os.chmod(w / "readonly", 0o755)


def _field(line, i, value):
    parts = line.split(",")
    parts[i] = value
    return ",".join(parts)


def snapshot(folder):
    """{relative path: sha256} of every file under `folder`."""
    out = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


M, C, D = "{W}/model.pth", "{W}/c.csv", "{W}/data"
CASES = [
    # ---- sample: outputs that are not ours are refused untouched
    ("sample", ["--model", M, *SMALL, "--out", M], "has no sidecar"),
    ("sample", ["--model", M, *SMALL, "--out", C + ".meta.json"], "names a sidecar/lock file"),
    ("sample", ["--model", M, *SMALL, "--out", "{W}/folder"], "is a folder"),
    ("sample", ["--model", M, *SMALL, "--out", "{W}/plain.txt/x.csv"], "is a file, not a folder"),
    ("sample", ["--model", M, *SMALL, "--out", "{W}/plain.txt"], "has no sidecar"),
    ("sample", ["--model", M, *SMALL, "--out", "{W}/c.np.tsv"], "is a certify_log, not a counts"),
    ("sample", ["--model", M, *SMALL, "--seed", "3", "--out", C], "different seed"),
    ("sample", ["--model", M, *SMALL, "--out", "{W}/readonly/x.csv"], "permission denied"),
    # ---- sample: numbers and flags, all refused before any file is created
    ("sample", ["--model", M, *SMALL, "--sigma", "1e39", "--out", "{W}/new.csv"], "too large"),
    ("sample", ["--model", M, *SMALL, "--sigma", "0", "--out", "{W}/new.csv"], "--sigma must be > 0"),
    ("sample", ["--model", M, *SMALL, "--q-dist", "truncated", "--q-percentile", "abc", "--out", "{W}/new.csv"],
     "--q-percentile must be"),
    ("sample", ["--model", M, *SMALL, "--q-percentile", "0.5", "--out", "{W}/new.csv"],
     "--q-percentile does not apply without --q-dist truncated"),
    ("sample", ["--model", M, *SMALL, "--q-dist", "truncated", "--q-sigma", "0.2", "--out", "{W}/new.csv"],
     "--q-sigma does not apply"),
    ("sample", ["--model", M, *SMALL, "--seed", "-1", "--out", "{W}/new.csv"], "--seed must be >= 0"),
    ("sample", ["--model", M, *SMALL, "--device", "tpu", "--out", "{W}/new.csv"], "--device must be"),
    ("sample", ["--model", M, *SMALL, "--max", "-1", "--out", "{W}/new.csv"], "--max must be >= 1, got -1"),
    ("sample", ["--model", M, *SMALL, "--start", "10", "--end", "5", "--out", "{W}/new.csv"],
     "--end (5) must be greater than --start (10)"),
    ("sample", ["--model", M, *SMALL, "--start", "5000", "--data-dir", D, "--out", "{W}/new.csv"],
     "beyond the last input"),
    ("sample", ["--model", M, *SMALL, "--N0", "0", "--out", "{W}/new.csv"], "--N0 must be >= 1"),
    ("sample", ["--model", M, *SMALL, "--N", "1e12", "--out", "{W}/new.csv"], "invalid int value"),
    ("sample", ["--model", M, *SMALL, "--N", "100000000000", "--out", "{W}/new.csv"], "cannot finish"),
    ("sample", ["--model", M, *SMALL, "--batch", "0", "--out", "{W}/new.csv"], "--batch must be >= 1"),
    ("sample", ["--model", M, *SMALL, "--iss", "absolute", "--out", "{W}/new.csv"],
     "--N0 does not apply with --iss"),
    ("sample", ["--model", M, "--sigma", "0.25", "--N", "40", "--iss", "absolute", "--iss-n0", "100",
                "--out", "{W}/new.csv"], "--iss-n0 (the ISS pilot) must be in [1, N=40]"),
    ("sample", ["--model", M, *SMALL, "--iss-decline", "0.1", "--out", "{W}/new.csv"],
     "--iss-decline does not apply without --iss"),
    ("sample", ["--model", M, *SMALL, "--select", "label", "--out", "{W}/new.csv"],
     "--N0 does not apply with --select label"),
    ("sample", ["--model", M, *SMALL, "--dist", "gaussian", "--k", "5", "--out", "{W}/new.csv"],
     "--k > 0 needs --dist general_gaussian"),
    ("sample", ["--model", "{W}/nan_model.pth", *SMALL, "--out", "{W}/new.csv"], "non-finite weights"),
    ("sample", ["--model", "{W}/corrupt.pth", *SMALL, "--out", "{W}/new.csv"], "corrupt"),
    ("sample", ["--model", "{W}/none.pth", *SMALL, "--out", "{W}/new.csv"], "not found"),
    ("sample", ["--model", M, *SMALL, "--data-dir", "{W}/bad_data", "--out", "{W}/new.csv"],
     "is not the mnist5k cache"),
    ("sample", ["--model", M, *SMALL, "--out", "{W}/new.csv", "--bogus"], "unrecognized arguments: --bogus"),
    # ---- certify
    ("certify", ["--counts", C, "--sigma", "0.5"], "--sigma 0.5 disagrees with the counts file"),
    ("certify", ["--counts", C, "--N", "100000"], "--N 100000 disagrees"),
    ("certify", ["--counts", C, "--device", "cpu"], "--device does not apply with --counts"),
    ("certify", ["--counts", C, "--q-dist", "truncated"], "--q-dist does not apply with --counts"),
    ("certify", ["--counts", C, "--method", "iss-np"], "--method iss-np needs counts sampled with --iss"),
    ("certify", ["--counts", C, "--method", "dsrs"], "--method dsrs needs counts sampled with --q-dist"),
    ("certify", ["--counts", "{W}/c_dsrs.csv", "--method", "iss-dsrs"], "holds dsrs counts"),
    ("certify", ["--counts", C, "--out", C], "is a counts, not a certify_log"),
    ("certify", ["--counts", C, "--out", M], "has no sidecar"),
    ("certify", ["--counts", C, "--alpha", "2"], "--alpha must be in (0, 1)"),
    ("certify", ["--counts", C, "--model", M], "exactly one of --counts"),
    ("certify", ["--counts", "{W}/list_sidecar.csv"], "holds a JSON list, not an object"),
    ("certify", ["--counts", "{W}/no_sigma.csv"], "lacks 'sigma'"),
    ("certify", ["--counts", "{W}/text_sigma.csv"], "'sigma' must be a finite number"),
    ("certify", ["--counts", "{W}/nan_pred.csv"], "pred 'nan' is not an integer"),
    ("certify", ["--counts", "{W}/abc_idx.csv"], "idx 'abc' is not an integer"),
    ("certify", ["--counts", "{W}/binary.csv"], "not a text log"),
    ("certify", ["--counts", "{W}/missing.csv"], "not found"),
    ("certify", ["--model", M, *SMALL, "--method", "dsrs", "--out", "{W}/new.tsv"],
     "--method dsrs needs --q-dist truncated|rescaled"),
    ("certify", ["--model", M, *SMALL, "--method", "iss-np", "--out", "{W}/new.tsv"], "--method iss-np needs --iss"),
    ("certify", ["--model", M, *SMALL, "--shard", "4/4", "--out", "{W}/new.tsv"], "shard 4 of 4 is out of range"),
    # ---- predict: flags of other modes are refused, outputs as for sample
    ("predict", ["--model", M, "--sigma", "0.25", "--N", "40", "--iss", "absolute", "--out", "{W}/p.tsv"],
     "--iss does not apply to predict.py"),
    ("predict", ["--model", M, "--sigma", "0.25", "--N", "40", "--q-dist", "truncated", "--out", "{W}/p.tsv"],
     "--q-dist does not apply to predict.py"),
    ("predict", ["--model", M, "--sigma", "0.25", "--N", "40", "--N0", "10", "--out", "{W}/p.tsv"],
     "--N0 does not apply to predict.py"),
    ("predict", ["--model", M, "--sigma", "0.25", "--N", "40", "--out", M], "has no sidecar"),
    ("predict", ["--model", M, "--sigma", "0.25", "--N", "40", "--out", "{W}/c.np.tsv"], "is a certify_log"),
    ("predict", ["--model", M, "--sigma", "0.25", "--N", "40", "--image-label", "3", "--out", "{W}/p.tsv"],
     "--image-label does not apply without --image"),
    ("predict", ["--model", M, "--sigma", "0.25", "--N", "40", "--image", "{W}/image.npy", "--split", "train",
                 "--out", "{W}/p.tsv"], "--split does not apply with --image"),
    # ---- attack: the curve attacks the label, which an image given alone does not have
    ("attack", ["--model", M, "--sigma", "0.25", "--eps", "0.5", "--image", "{W}/image.npy", "--out", "{W}/a.tsv"],
     "--eps (curve mode) attacks the label: give the image's --image-label"),
    ("attack", ["--model", M, "--sigma", "0.25", "--eps", "0.5", "--inputs-per-batch", "2", "--out", "{W}/a.tsv"],
     "--inputs-per-batch does not apply to attack.py"),
    # ---- train / train_denoiser
    ("train", ["mnist5k", "lenet", "--noise", "0.25", "--outdir", "{W}/plain.txt"], "is a file, not a folder"),
    ("train", ["mnist5k", "lenet", "--noise", "0.25", "--outdir", "{W}/plain.txt/run"], "is a file, not a folder"),
    ("train", ["mnist5k", "lenet", "--noise", "0.25", "--outdir", "{W}/readonly/run"], "permission denied"),
    ("train", ["mnist5k", "lenet", "--noise", "0.25", "--lbd", "5", "--outdir", "{W}/run"],
     "--lbd does not apply to Gaussian training"),
    ("train", ["mnist5k", "lenet", "--noise", "0.25", "--k-warmup", "10", "--outdir", "{W}/run"],
     "--k-warmup does not apply without --k"),
    ("train", ["mnist5k", "lenet", "--noise", "0.25", "--method", "consistency", "--outdir", "{W}/run"],
     "needs --num-noise-vec >= 2"),
    ("train", ["mnist5k", "lenet", "--noise", "0.25", "--download", "--outdir", "{W}/run"],
     "--download does not apply to mnist5k"),
    ("train", ["mnist5k", "lenet", "--noise", "0.25", "--device", "tpu", "--outdir", "{W}/run"], "--device"),
    ("train", ["mnist5k", "lenet", "--noise", "abc"], "invalid float value"),
    ("train_denoiser", ["--sigma", "0.25", "--outdir", "{W}/plain.txt"], "is a file, not a folder"),
    ("train_denoiser", ["--sigma", "0.25", "--outdir", "{W}/plain.txt/den"], "is a file, not a folder"),
    ("train_denoiser", ["--opt", "{W}/none.json"], "not found"),
    # ---- merge / analyze
    ("merge", ["{W}/folder", "{W}/c.np.tsv"], "is a folder"),
    ("merge", ["{W}/plain.txt/m.tsv", "{W}/c.np.tsv"], "is a file, not a folder"),
    ("merge", ["{W}/m.tsv", "{W}/torn.tsv"], "is incomplete"),
    ("merge", ["{W}/m.tsv", "{W}/c.np.tsv", "{W}/c.csv"], "disagree on"),
    ("analyze", ["{W}/header_only.tsv"], "no data rows"),
    ("analyze", [C], "missing column(s) idx, label, predict, radius"),
    ("analyze", ["{W}/c.np.tsv", "--out", "{W}/plain.txt"], "is a file, not a folder"),
]


def _ids():
    return [f"{i:02d}-{script}-{next((a for a in argv if a.startswith('--')), argv[0])}"
            for i, (script, argv, _) in enumerate(CASES)]


@pytest.mark.parametrize("script, argv, fragment", CASES, ids=_ids())
def test_bad_input(ws, capsys, monkeypatch, script, argv, fragment):
    if "readonly" in " ".join(argv) and os.geteuid() == 0:
        pytest.skip("root may write into a read-only folder (permission bits do not bind root)")
    before = snapshot(ws)
    argv = [a.replace("{W}", str(ws)) for a in argv]
    if ("--model" in argv or script == "train") and "--data-dir" not in argv:
        argv = [*argv, "--data-dir", str(ws / "data")]
    capsys.readouterr()
    try:
        rc = MODULES[script].main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("warning:", "model:"))]
    assert rc not in (0, None), f"exit {rc}: {err[-400:]}"
    assert len(lines) == 1 and lines[0].startswith("error:"), err[-600:]
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err and "unexpected" not in lines[0], lines[0]
    assert snapshot(ws) == before, "a refused command changed the workspace"


def test_slurm_task_id_not_an_integer(ws, capsys, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "abc")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    before = snapshot(ws)
    rc = sample.main(["--model", str(ws / "model.pth"), *SMALL, "--data-dir", str(ws / "data"),
                      "--out", str(ws / "new.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == "error: SLURM_ARRAY_TASK_ID='abc' is not an integer"
    assert snapshot(ws) == before


def test_failed_run_leaves_no_file(ws, tmp_path, capsys, monkeypatch):
    """A run that fails on its first input, after its log was opened, leaves no header-only file behind."""
    from certifynet.errors import CertifyNetError
    from certifynet.sampling import InputSampler

    def fail(self, idx, x, label):
        raise CertifyNetError("the model's outputs are not finite (NaN/Inf) on noisy inputs")

    monkeypatch.setattr(InputSampler, "sample", fail)
    out = tmp_path / "x.tsv"
    rc = certify.main(["--model", str(ws / "model.pth"), *SMALL, "--data-dir", str(ws / "data"), "--out", str(out)])
    assert rc == 2 and "not finite" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
