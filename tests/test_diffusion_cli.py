"""The diffusion flags (add_diffusion_args → DiffusionOptions), train_ddpm.py (train, resume, refusals, its folder
loads like any other) and benchmarks/bench_diffusion.py at toy size."""
import json
import os
import subprocess
import sys

import pytest
import torch

from certifynet.cli import CliParser
from certifynet.cli.diffusion_flags import DIFFUSION_DESTS, add_diffusion_args
from certifynet.denoise.diffusion import DiffusionOptions, load_diffusion_denoiser
from certifynet.errors import CertifyNetError

from helpers import untrained_lenet

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_flags_fill_the_options():
    p = CliParser(prog="x")
    add_diffusion_args(p)
    args = p.parse_args(["--diffusion-steps", "3", "--diffusion-schedule", "cosine:4000", "--diffusion-continuous",
                         "--openai-heads", "4", "--qkv-order", "new"])
    opts = DiffusionOptions.from_namespace(args)
    assert (opts.diffusion_steps, opts.diffusion_schedule, opts.diffusion_continuous, opts.openai_heads,
            opts.qkv_order) == (3, "cosine:4000", True, 4, "new")
    assert set(DIFFUSION_DESTS) == set(opts.record()) and DiffusionOptions.from_namespace(p.parse_args([])) == \
        DiffusionOptions()
    with pytest.raises(CertifyNetError) as e:
        DiffusionOptions.from_namespace(p.parse_args(["--diffusion-schedule", "cosine:x"]))
    assert e.value.render(cli=True).startswith("--diffusion-schedule must be")


def _train(argv):
    from certifynet.cli.train_ddpm import main
    return main(argv)


def test_train_ddpm_trains_resumes_and_loads(tmp_path, capsys):
    out = tmp_path / "ddpm"
    common = ["--size", "quick", "--train-subset", "64", "--batch", "32", "--outdir", str(out), "--no-progress"]
    assert _train([*common, "--epochs", "1"]) in (None, 0)
    first = (out / "diffusion_pytorch_model.safetensors").read_bytes()
    assert _train([*common, "--epochs", "2"]) == 2   # an existing run is not overwritten without --resume
    assert "pass --resume to continue it" in capsys.readouterr().err
    _train([*common, "--epochs", "2", "--resume"])
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,psnr") and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert (out / "diffusion_pytorch_model.safetensors").read_bytes() != first
    record = json.loads((out / "certifynet_diffusion.json").read_text())
    assert record["epoch"] == 2 and record["prediction_type"] == "epsilon" and record["steps"] == 4
    den, meta = load_diffusion_denoiser(str(out), 0.5)
    assert meta["diffusion"]["layout"] == "flat" and meta["diffusion"]["t_star"] == 259
    assert den(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)


def test_train_ddpm_refuses_before_writing(tmp_path, capsys):
    out = tmp_path / "never"
    assert _train(["--epochs", "0", "--outdir", str(out)]) == 2
    assert "error: --epochs must be >= 1" in capsys.readouterr().err and not out.exists()


def test_bench_diffusion_smoke(tmp_path):
    """LeNet alone and behind a DDPM folder, 2 digits, σ = 0.5: the table comes out."""
    lenet = untrained_lenet(tmp_path / "lenet.pth")
    _train(["--size", "quick", "--train-subset", "32", "--batch", "32", "--epochs", "1", "--outdir",
            str(tmp_path / "ddpm"), "--no-progress"])
    argv = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_diffusion.py"), "--lenet", lenet, "--ddpm",
            str(tmp_path / "ddpm"), "--sigmas", "0.5", "--digits", "2", "--N0", "10", "--N", "100", "--batch", "50",
            "--json", str(tmp_path / "out.json")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "| 0.5 | LeNet (clean) |" in r.stdout and "| 0.5 | + DDPM (ours) |" in r.stdout
    res = json.loads((tmp_path / "out.json").read_text())["results"]
    assert [x["model"] for x in res] == ["LeNet (clean)", "+ DDPM (ours)"] and len(res[1]["rows"]) == 2


def test_bench_diffusion_speed_smoke(tmp_path):
    argv = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_diffusion_speed.py"), "--configs", "lenet",
            "ddpm-quick+lenet", "--n", "100", "--batch", "50", "--repeats", "1", "--clock", "process", "--no-optimize",
            "--json", str(tmp_path / "speed.json")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-1500:]
    res = json.loads((tmp_path / "speed.json").read_text())["results"]
    assert set(res) == {"lenet", "ddpm-quick+lenet"} and res["lenet"]["relative_to_first"] == 1.0
    assert "passes/s" in r.stdout
