"""The quickstart runs end to end at toy size and writes every table, plot and report."""
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
