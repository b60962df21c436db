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
