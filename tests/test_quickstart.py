"""The quickstart runs end to end at toy size and writes every table, plot and report."""
import json
import os

from certifynet.cli import quickstart


def test_quickstart_smoke(tmp_path, capsys):
    out = str(tmp_path / "qs")
    assert quickstart.main(["--out", out, "--digits", "3", "--epochs", "1", "--N", "200", "--skip-denoiser"]) == 0
    text = capsys.readouterr().out
    assert "clean test accuracy" in text and "quickstart finished" in text and "forward passes per input" in text
    for method in ("NP", "DSRS", "ISS-NP", "ISS-DSRS", "Sequential"):
        assert f"| {method}" in text, method
    for name in ("table.md", "table.tex", "table.csv", "certified_accuracy.png", "certified_accuracy.pdf", "cost.png",
                 "cost.pdf", "report.md"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert "audit: " in text  # the audit of the NP log (attack stage)
    assert os.path.getsize(os.path.join(out, "attack", "certified_vs_empirical.png")) > 0
    # the folder is the quickstart's: its marker lists what it wrote (what --fresh may delete, and only that)
    marker = json.load(open(os.path.join(out, ".certifynet.json")))
    assert marker["kind"] == "quickstart" and {"lenet_gaussian", "counts_np.csv", "table.md", "attack"} <= set(
        marker["files"]) and sorted(marker["files"]) == sorted(set(os.listdir(out)) - {".certifynet.json"})
    counts = open(os.path.join(out, "counts_np.csv"), "rb").read()
    # the same command again resumes every stage: nothing is refused, nothing recomputed
    assert quickstart.main(["--out", out, "--digits", "3", "--epochs", "1", "--N", "200", "--skip-denoiser"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert open(os.path.join(out, "counts_np.csv"), "rb").read() == counts


def test_denoised_smoothing_stage_commands(tmp_path, capsys):
    """The denoised-smoothing stage: one DRUNet trained over the stage's σ, the quick DDPM (said to be smaller than
    the benchmark's), and at each σ the clean LeNet alone, + DRUNet, + DDPM (the commands, not run here)."""
    def stage(*extra):
        a = quickstart.build_parser().parse_args(["--out", str(tmp_path), "--digits", "3", "--N", "200", *extra])
        demo = quickstart.Demo(str(tmp_path), fast=True)
        runs, labels = [], []
        demo.run = lambda script, argv: runs.append((script, [str(v) for v in argv]))
        demo.certify = lambda counts, method, label, alpha=0.001: labels.append(label)
        quickstart.denoised_smoothing(demo, a)
        return runs, labels

    runs, labels = stage()
    scripts = [s for s, _ in runs]
    assert scripts == ["train", "train_denoiser", "train_ddpm", *["sample"] * 6]
    den = runs[1][1]
    assert den[den.index("--sigmas") + 1] == "0.5,1"
    ddpm = runs[2][1]
    assert ddpm[ddpm.index("--size") + 1] == "quick" and ddpm[ddpm.index("--epochs") + 1] == "3"
    assert "smaller UNet than the benchmark's" in capsys.readouterr().out
    assert labels == [f"clean LeNet{d} σ={s} N=100" for s in (0.5, 1.0) for d in ("", " + DRUNet", " + DDPM")]
    samples = [argv for s, argv in runs if s == "sample"]
    assert [argv[argv.index("--denoiser") + 1] if "--denoiser" in argv else None for argv in samples[:3]] == \
        [None, den[den.index("--outdir") + 1] + "/denoiser.pth", ddpm[ddpm.index("--outdir") + 1]]
    assert [argv[argv.index("--sigma") + 1] for argv in samples] == ["0.5"] * 3 + ["1.0"] * 3
    runs, labels = stage("--skip-diffusion", "--denoiser-sigma", "1.0")
    assert [s for s, _ in runs] == ["train", "train_denoiser", "sample", "sample"] and len(labels) == 2
