"""Tests for certifynet.analysis and the analyze CLI (fast: small hand-made logs + Cohen's published logs)."""
import csv
import json
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from certifynet import analysis
from certifynet.cli.analyze import main
from certifynet.errors import CertifyNetError, CertifyNetWarning

from helpers import reference_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "analyze.py"

# idx label predict radius correct time n   (hand-made; m = 5)
ROWS = [(0, 1, 1, 0.5, 1, 1.0, 1000),
        (1, 2, 2, 0.2, 1, 2.0, 1000),
        (2, 3, -1, 0.0, 0, 3.0, 1000),
        (3, 4, 5, 0.9, 0, 4.0, 1000),
        (4, 5, 5, 1.2, 1, 0.5, 1000)]


def write_log(path, rows, header=("idx", "label", "predict", "radius", "correct", "time", "n"), meta=None):
    path = Path(path)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    if meta is not None:
        Path(str(path) + ".meta.json").write_text(json.dumps({"kind": "certify_log", **meta}))
    return path


@pytest.fixture
def ours(tmp_path):
    return write_log(tmp_path / "ours.tsv", ROWS,
                     meta={"method": "np", "sigma": 0.25, "model": "models/cifar10/resnet110.pt", "dataset": "cifar10",
                           "N0": 100, "N": 1000, "alpha": 0.001})


# ------------------------------------------------------------------------------------------- metrics
def test_metrics_by_hand(ours):
    row = analysis.summarize(analysis.read_logs([ours])).iloc[0]
    # correct rows have radii 0.5, 0.2, 1.2; m = 5
    assert row["r=0"] == pytest.approx(3 / 5)        # clean accuracy; the abstain row has correct 0
    assert row["r=0.25"] == pytest.approx(2 / 5)     # 0.5, 1.2
    assert row["r=0.5"] == pytest.approx(2 / 5)      # radius ≥ r is inclusive
    assert row["r=0.75"] == pytest.approx(1 / 5)     # 0.9 is wrong, so only 1.2
    assert row["r=1"] == pytest.approx(1 / 5)
    assert row["ACR"] == pytest.approx((0.5 + 0.2 + 1.2) / 5)
    assert row["abstain"] == pytest.approx(1 / 5)
    assert row["sec/input"] == pytest.approx(10.5 / 5)
    assert row["samples/input"] == pytest.approx(1000 + 100)  # mean(n) + N0 from the sidecar
    assert row["m"] == 5 and row["log"] == "np σ=0.25 resnet110"


def test_samples_column_speedup_and_labels(tmp_path, ours):
    iss = write_log(tmp_path / "iss.tsv", [r[:6] + (s,) for r, s in zip(ROWS, (150, 250, 1100, 400, 100))],
                    header=("idx", "label", "predict", "radius", "correct", "time", "samples"),
                    meta={"method": "iss-np", "sigma": 0.25, "label": "ISS"})
    df = analysis.summarize(analysis.read_logs([ours, iss]), baseline="np σ=0.25 resnet110")
    assert list(df["log"]) == ["np σ=0.25 resnet110", "ISS"]
    assert df["samples/input"].tolist() == pytest.approx([1100, 400])
    assert df["speed-up"].tolist() == pytest.approx([1.0, 1100 / 400])
    assert list(analysis.summarize(analysis.read_logs([ours, iss], ["a", "b"]))["log"]) == ["a", "b"]
    with pytest.raises(CertifyNetError, match="one per log"):
        analysis.read_logs([ours, iss], ["a"])
    with pytest.raises(CertifyNetError, match="not a log label"):
        analysis.summarize(analysis.read_logs([ours]), baseline="nope")


def test_high_probability_correction(ours):
    alpha, rho, m = 0.001, 0.01, 5
    margin = alpha + math.sqrt(alpha * (1 - alpha) * math.log(1 / rho) / m) + math.log(1 / rho) / (3 * m)
    row = analysis.summarize(analysis.read_logs([ours]), [0, 1], hp_rho=rho).iloc[0]  # α from the sidecar
    assert row["r=0"] == pytest.approx(3 / 5 - margin) and row["r=1"] == pytest.approx(1 / 5 - margin)
    assert row["ACR"] == pytest.approx(1.9 / 5)  # ACR is not corrected


def test_cohen_formats_both_time_styles(tmp_path):
    secs = [13.736080, 151.5, 3600.25]
    hms = ["0:00:13.736080", "0:02:31.500000", "1:00:00.250000"]
    base = [(0, 3, -1, 0.0, 0), (20, 7, 7, 0.0734, 1), (40, 4, 4, 0.405, 1)]
    header = ("idx", "label", "predict", "radius", "correct", "time")
    a = write_log(tmp_path / "cifar10_resnet110_noise_0.12_test_sigma_0.12.tsv",
                  [r + (t,) for r, t in zip(base, secs)], header)
    b = write_log(tmp_path / "imagenet_resnet50_noise_0.50_test_sigma_0.50.tsv",
                  [r + (t,) for r, t in zip(base, hms)], header)
    la, lb = analysis.read_logs([a, b])
    assert la.data["time"].tolist() == pytest.approx(secs) and lb.data["time"].tolist() == pytest.approx(secs)
    assert (la.dataset, la.sigma, la.method, lb.dataset, lb.sigma) == ("cifar10", 0.12, "np", "imagenet", 0.5)
    assert analysis.parse_time("1 day, 0:00:01.5") == pytest.approx(86401.5)
    df = analysis.summarize([la, lb])
    assert math.isnan(df["samples/input"].iloc[0])  # Cohen's logs carry no sample counts


# ------------------------------------------------------------------------------------------- tables
def test_bold_best_ties_and_lower_is_better():
    df = pd.DataFrame({"log": ["a", "b", "c"], "m": [5, 5, 5], "r=0": [0.5, 0.7, 0.7],
                       "ACR": [0.3, 0.2, 0.1], "sec/input": [2.0, 1.0, 3.0]})
    md = analysis.to_markdown(df).splitlines()
    assert md[2] == "| a | 5 | 0.500 | **0.300** | 2.00 |"
    assert md[3] == "| b | 5 | **0.700** | 0.200 | **1.00** |"  # tie at r=0 → both bold; sec/input: min
    assert md[4] == "| c | 5 | **0.700** | 0.100 | 3.00 |"
    tex = analysis.to_latex(df, title="T")
    assert r"b & 5 & \textbf{0.700} & 0.200 & \textbf{1.00} \\" in tex
    assert r"\toprule" in tex and r"\caption{T}" in tex and "$r=0$" in tex
    assert analysis.best_mask(pd.Series([0.1234, 0.1231, 0.1]), 3, "max").tolist() == [True, True, False]  # as shown
    assert analysis.best_mask(pd.Series([0.1234, 0.1231]), 3, "max").tolist() == [False, False]  # all tie: none


def test_summarize_runs_writes_everything(tmp_path, ours):
    df = analysis.summarize_runs([ours], tmp_path / "out", title="demo", envelope_over_sigma=True)
    out = tmp_path / "out"
    for name in ("certified_accuracy", "certified_accuracy_envelope"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    for name in ("table.md", "table.tex", "table.csv", "envelope.md", "report.md"):
        assert (out / name).stat().st_size > 0
    assert "![Certified accuracy vs radius](certified_accuracy.png)" in (out / "report.md").read_text()
    assert pd.read_csv(out / "table.csv")["ACR"].tolist() == pytest.approx(df["ACR"].tolist())


# ------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("content, where", [
    ("", "empty file"),
    ("idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t2.0\n", "line 1: missing column(s) radius"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n", "no data rows"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n" + "".join(f"{i}\t1\t1\t0.5\t1\t1.0\n" for i in range(5))
     + "5\t1\t1\tabc\t1\t1.0\n", "line 7: column 'radius'"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\n", "line 2: expected 6 tab-separated fields"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1:2\n", "line 2: column 'time'"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t2\t0.5\t1\t1.0\n", "line 2: correct=1 but predict=2"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1\n0\t1\t1\t0.5\t1\t1\n", "line 3: duplicate idx 0"),
])
def test_malformed_log_names_file_and_line(tmp_path, content, where):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(CertifyNetError) as e:
        analysis.read_log(path)
    assert str(path) in str(e.value) and where in str(e.value)


@pytest.mark.e2e
def test_cli_missing_file_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.tsv" in err[0]
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing.tsv")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.e2e
def test_cli_help_and_table(ours, capsys):
    r = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--radii" in r.stdout and "--envelope" in r.stdout
    assert main([str(ours), "--label", "mine", "--radii", "0.5"]) == 0  # r=0 (clean accuracy) always included
    out = capsys.readouterr().out
    assert out.startswith("| log | m | r=0 | r=0.5 | ACR |") and "| mine | 5 | 0.600 | 0.400 | 0.380 |" in out


# ------------------------------------------------------------------------------------------- peer logs
def _hand_metrics(path, radii):
    """Independent recomputation with csv + plain arithmetic: (acc at each r, ACR, mean seconds)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    m = len(rows)
    acc = [sum(1 for x in rows if int(x["correct"]) == 1 and float(x["radius"]) >= r) / m for r in radii]
    acr = sum(float(x["radius"]) * int(x["correct"]) for x in rows) / m

    def secs(t):
        if ":" not in t:
            return float(t)
        h, mi, s = t.split(":")
        return int(h) * 3600 + int(mi) * 60 + float(s)
    return acc, acr, sum(secs(x["time"]) for x in rows) / m


def _readme_acr(peer):
    """{(dataset prefix, σ): ACR} from the table in peer-logs/README.md."""
    lines = [ln for ln in (peer / "README.md").read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    sigmas = [float(h.split("=")[1]) for h in head[1:]]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        prefix = {"CIFAR-10": "cifar10", "ImageNet": "imagenet"}[cells[0]]
        out.update({(prefix, s): float(c) for s, c in zip(sigmas, cells[1:]) if c not in ("–", "-")})
    return out


def test_peer_logs_match_hand_computation_and_readme():
    radii = [0.0, 0.25, 0.5, 0.75, 1.0]
    peer = reference_file("peer-logs")
    paths = sorted(peer.glob("*.tsv"))
    assert len(paths) == 7
    logs = analysis.read_logs(paths)
    df = analysis.summarize(logs, radii)
    readme = _readme_acr(peer)
    best = {}
    for path, (_, row) in zip(paths, df.iterrows()):
        acc, acr, secs = _hand_metrics(path, radii)
        assert [row[f"r={r:g}"] for r in radii] == pytest.approx(acc, abs=1e-9, rel=0)
        assert row["ACR"] == pytest.approx(acr, abs=1e-9, rel=0)
        assert row["sec/input"] == pytest.approx(secs, abs=1e-9, rel=0)
        dataset, sigma = path.name.split("_")[0], float(path.stem.split("sigma_")[1])
        assert round(row["ACR"], 3) == pytest.approx(readme[(dataset, sigma)], abs=1e-12)
        best[dataset] = [max(a, b) for a, b in zip(best.get(dataset, acc), acc)]
    env = analysis.envelope(logs, radii).set_index("dataset")
    assert set(env.index) == {"cifar10", "imagenet"}
    for dataset, acc in best.items():
        assert [env.loc[dataset, f"r={r:g}"] for r in radii] == pytest.approx(acc, abs=1e-9, rel=0)


# ------------------------------------------------------------------------------------------- pandas reader
HEAD6 = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


@pytest.mark.parametrize("content, where", [
    # the earliest offending line is reported, whatever the kind of error on later lines
    (HEAD6 + "0\t1\t1\tabc\t1\t1\n1\t1\t1\t0.5\t1\t1\t9\n", "line 2: column 'radius'"),
    (HEAD6 + "0\t1\t1\t0.5\t1\t1\n1\t1\t1\t0.5\t1\t1\t9\n2\t1\t1\tabc\t1\t1\n",
     "line 3: expected 6 tab-separated fields, got 7"),
    (HEAD6 + "0\t1\t2\t0.5\t1\t1\n1\t1\t1\t0.5\t1\n", "line 2: correct=1 but predict=2"),
    (HEAD6 + "0\t1\t1\t0.5\t1\t1\n0\t1\t1\t0.5\t1\t1\n1\t1\t1\t-1\t1\t1\n",
     "line 3: duplicate idx 0 (first at line 2)"),
    (HEAD6 + "0\t1\t1\t0.5\t1\t1\n\n   \n0\t1\t1\t0.5\t1\t1\n", "line 5: duplicate idx 0 (first at line 2)"),
    (HEAD6 + "0\t1\t1\t0.5\t1\t1\n1\t1\t1\t0.5\t1\t\n", "line 3: column 'time': not seconds or H:MM:SS: ''"),
    (HEAD6 + "0\t1\t1\t0.5\t2\t1\n", "line 2: column 'correct': correct must be 0 or 1, got '2'"),
    (HEAD6 + "0\t1.5\t1\t0.5\t1\t1\n", "line 2: column 'label': not an integer: '1.5'"),
    (HEAD6 + "0\t1\t1\tinf\t1\t1\n", "line 2: column 'radius': radius must be finite and >= 0, got 'inf'"),
    ("idx\tidx\tlabel\tpredict\tradius\tcorrect\ttime\n", "line 1: duplicate column names"),
    ("\n \n\t\t\n", "empty file"),
])
def test_reader_reports_the_first_offending_line(tmp_path, content, where):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(CertifyNetError, match="^" + re.escape(f"{path}{', ' if 'line' in where else ': '}{where}")):
        analysis.read_log(path)


def test_reader_accepts_what_cohen_and_we_write(tmp_path):
    """BOM, CRLF, blank lines, padded fields, true/false, H:MM:SS, quotes kept verbatim, numeric extra columns."""
    path = tmp_path / "ok.tsv"
    path.write_bytes(("\ufeff" + "idx\tlabel\tpredict\tradius\tcorrect\ttime\tn\tmethod\tnote\r\n"
                      "0\t1\t1\t 0.5 \tTrue\t0:00:01.5\t100\tnp\t\"a\r\n\r\n"
                      "1\t2\t-1\t0\tfalse\t2\t100\tnp\tb c\r\n").encode("utf-8"))
    d = analysis.read_log(path).data
    assert d["idx"].tolist() == [0, 1] and d["radius"].tolist() == [0.5, 0.0] and d["correct"].tolist() == [1, 0]
    assert d["time"].tolist() == [1.5, 2.0] and d["n"].dtype.kind == "i" and d["note"].tolist() == ['"a', "b c"]
    assert d["predict"].dtype.kind == "i" and analysis.read_log(path).method == "np"


# ------------------------------------------------------------------------------------------- paper-ready output
def _method_logs(tmp_path, sigma, methods, rows=ROWS, stem=""):
    """One log per method, all with the same rows (their curves coincide exactly)."""
    return [write_log(tmp_path / f"{stem}{m}_{sigma}.tsv", rows,
                      meta={"method": m, "sigma": sigma, "dataset": "mnist5k", "N0": 100, "N": 1000, "alpha": 0.001,
                            "label": f"{m.upper()} σ={sigma}"}) for m in methods]


def test_plot_has_a_panel_per_sigma_and_every_coinciding_curve_is_visible(tmp_path, monkeypatch):
    """Four σ=0.25 methods with identical results and two σ=1.0 runs: two panels, and each curve's own colour
    shows in the PNG (the NP curve is not hidden under the others)."""
    from matplotlib.colors import to_hex
    four = _method_logs(tmp_path, 0.25, ["np", "dsrs", "iss-np", "iss-dsrs"])
    two = _method_logs(tmp_path, 1.0, ["np", "np"], stem="x")  # e.g. clean classifier and + denoiser
    logs = analysis.read_logs(four + two, None)
    fig = analysis.certified_accuracy_figure(logs)
    assert [ax.get_title() for ax in fig.axes] == ["σ = 0.25", "σ = 1"]
    legend_sets = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes]
    assert legend_sets == [[log.label for log in logs[:4]], [log.label for log in logs[4:]]]
    lines = [ln for ax in fig.axes for ln in ax.get_lines()]
    styles = {(ln.get_linestyle(), ln.get_marker(), to_hex(ln.get_color())) for ln in lines}
    assert len(styles) == 6  # every curve differs in line style, marker or shade
    widths = [ln.get_linewidth() for ln in fig.axes[0].get_lines()]
    assert widths == sorted(widths, reverse=True)  # the first (NP) is widest and lies below

    assert min(_visible_pixels(fig, tmp_path / "ours.png")) > 100  # NP, drawn first, is still on screen

    def naive(ax, grid, curves, styles, colours, labels, **kw):  # control: same width, no order, no markers
        for curve, colour, label in zip(curves, colours, labels):
            ax.plot(grid, curve, color=colour, lw=1.5, drawstyle="steps-pre", label=label)
    monkeypatch.setattr(analysis.plots, "_draw_curves", naive)
    hidden = _visible_pixels(analysis.certified_accuracy_figure(logs), tmp_path / "naive.png")
    assert hidden[0] < 20 and hidden[-1] > 100  # the check sees a hidden NP curve


def _visible_pixels(fig, png):
    """Pixels of each curve's own colour in the first panel, legends removed."""
    import matplotlib.image
    from matplotlib.colors import to_hex
    for ax in fig.axes:
        if ax.get_legend():
            ax.get_legend().remove()
    fig.savefig(png)
    img = (matplotlib.image.imread(str(png))[..., :3] * 255).round().astype(int)
    counts = []
    for ln in fig.axes[0].get_lines():
        rgb = [int(to_hex(ln.get_color())[i:i + 2], 16) for i in (1, 3, 5)]
        counts.append(int((abs(img - rgb).max(axis=-1) <= 2).sum()))
    return counts


def _pdf_has_type3(path):
    return b"/Type3" in Path(path).read_bytes()


@pytest.mark.e2e
def test_pdfs_embed_truetype_not_type3(tmp_path, ours):
    import shutil
    logs = analysis.read_logs([ours])
    paths = analysis.plot_certified_accuracy(logs, tmp_path / "acc", title="σ, ε, ℓ2 and ≥")
    paths += analysis.plot_cost(logs, tmp_path / "cost") + analysis.plot_gain(logs[0], logs, tmp_path / "gain")
    pdfs = [p for p in paths if p.suffix == ".pdf"]
    assert len(pdfs) == 3 and not any(_pdf_has_type3(p) for p in pdfs)
    assert b"/FontFile2" in pdfs[0].read_bytes()  # an embedded TrueType program
    import matplotlib  # control: the same figure with Type 3 fonts is caught by the check
    with matplotlib.rc_context({"pdf.fonttype": 3}):
        analysis.certified_accuracy_figure(logs).savefig(tmp_path / "type3.pdf")
    assert _pdf_has_type3(tmp_path / "type3.pdf")
    if shutil.which("pdffonts"):
        for p in pdfs:
            out = subprocess.run(["pdffonts", str(p)], capture_output=True, text=True, check=True).stdout
            assert "Type 3" not in out and "TrueType" in out, out


def test_bold_only_within_comparable_runs():
    df = pd.DataFrame({"log": ["a", "b", "c", "d", "e"], "dataset": ["mnist"] * 4 + ["cifar10"],
                       "sigma": [0.25, 0.25, 1.0, 1.0, 0.25], "m": [5] * 5,
                       "r=0": [0.9, 0.8, 0.6, 0.7, 0.5], "r=1": [0.0, 0.0, 0.3, 0.2, 0.1]})
    md = analysis.to_markdown(df).splitlines()[2:]
    assert md == ["| a | 5 | **0.900** | 0.000 |",   # σ=0.25: a beats b; r=1 ties at 0 → nothing bold
                  "| b | 5 | 0.800 | 0.000 |",
                  "| c | 5 | 0.600 | **0.300** |",   # σ=1.0 is its own group
                  "| d | 5 | **0.700** | 0.200 |",
                  "| e | 5 | 0.500 | 0.100 |"]       # the only cifar10 run: nothing to compare with
    assert analysis.best_mask(pd.Series([0.5, 0.5]), 3, "max").tolist() == [False, False]


@pytest.mark.e2e
def test_latex_is_pure_ascii_and_compiles(tmp_path):
    import shutil
    df = pd.DataFrame({"log": ["NP σ=0.25 ĉ_A p̲_A σ̂ ℓ₂ ≥ Φ⁻¹(α) → 1 – 2 é 日本 100% $ # & ~ ^ \\ | < > {}",
                               "ISS-NP ε=0.05"], "sigma": [0.25, 0.25], "m": [5, 5], "r=0": [0.5, 0.7],
                       "ACR": [0.3, 0.2]})
    tex = analysis.to_latex(df, title="mnist5k, σ=0.25, α ≤ 0.001 & more")
    assert tex.isascii(), [ch for ch in tex if not ch.isascii()]
    for piece in (r"$\sigma$=0.25", r"\^{c}\_A", r"\underline{p}", r"$\hat{\sigma}$", r"$\ell_{2}$", r"$\geq$",
                  r"$\Phi^{-1}$", r"$\varepsilon$=0.05", r"100\%", r"\$", r"\#", r"\&", r"\textbackslash{}",
                  r"\caption{mnist5k, $\sigma$=0.25, $\alpha$ $\leq$ 0.001 \& more}", r"\textbf{0.700}"):
        assert piece in tex, piece
    if shutil.which("pdflatex"):
        (tmp_path / "t.tex").write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n" + tex
                                        + "\\end{document}\n")
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:]
        (tmp_path / "raw.tex").write_text("\\documentclass{article}\\begin{document}\na_b σ\n\\end{document}\n")
        r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "raw.tex"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0  # control: unescaped text does not compile


def test_outputs_include_cost_figure_and_ascii_table(tmp_path, ours):
    out = tmp_path / "out"
    analysis.summarize_runs([ours], out, labels=["NP σ=0.25 ε-free"], title="σ=0.25")
    assert (out / "table.tex").read_text().isascii()
    assert (out / "cost.png").stat().st_size > 0
    assert "![Forward passes per input](cost.png)" in (out / "report.md").read_text()


def test_a_glob_that_also_matches_attack_logs_skips_them(tmp_path, ours, capsys):
    """`analyze.py results/*.tsv` in a folder holding attack.py logs: those are skipped with a note."""
    audit = tmp_path / "ours.audit.tsv"
    audit.write_text("idx\tlabel\tcertified\tradius\teps\n0\t1\t1\t0.5\t0.5\n")
    Path(str(audit) + ".meta.json").write_text(json.dumps({"kind": "attack_audit"}))
    assert main([str(ours), str(audit)]) == 0
    out, err = capsys.readouterr()
    assert f"note: skipping {audit}: an attack.py audit" in err and "| np" in out.lower()
    assert main([str(audit)]) == 2
    assert "no certify log among the files given" in capsys.readouterr().err


def test_figure_text_is_created_at_paper_sizes(ours):
    """Legends and titles get _PAPER_RC's sizes when drawn, not only at save time (they would overflow)."""
    fig = analysis.certified_accuracy_figure(analysis.read_logs([ours]), title="t")
    legend = fig.axes[0].get_legend()
    assert legend.get_texts()[0].get_fontsize() == pytest.approx(7.5)
    assert fig.axes[0].title.get_fontsize() == pytest.approx(9)


# ------------------------------------------------------------------------------------------- unknown labels
REQUIRED = ("idx", "label", "predict", "radius", "correct", "time")
UNKNOWN = ("{} input(s) of unknown label (−1, an image certified without its label): {}; counted as not correct, "
           "so certified accuracy can only be understated")
CERTIFY_HEAD = REQUIRED + ("pA_lower", "n")


def test_unknown_label_rows_are_read_counted_as_not_correct_and_warned_once(tmp_path, capsys):
    """--image without --image-label writes label −1: such rows are never correct (outcome.is_correct), abstain
    or not; read_logs accepts them and warns once with their number."""
    rows = [(0, -1, -1, 0.0, 0, 1.0, 0.40, 100),   # unknown label, abstain
            (1, -1, 4, 0.52, 0, 1.0, 0.98, 100),   # unknown label, a class
            (2, 3, 3, 0.3, 1, 1.0, 0.88, 100),
            (3, 5, 5, 0.9, 1, 1.0, 0.99, 100)]
    a = write_log(tmp_path / "image.tsv", rows, CERTIFY_HEAD, meta={"method": "np", "sigma": 0.25})
    b = write_log(tmp_path / "image2.tsv", rows[:2], CERTIFY_HEAD, meta={"method": "np", "sigma": 0.5})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs = analysis.read_logs([a, b])
    texts = [str(w.message) for w in caught if issubclass(w.category, CertifyNetWarning)]
    assert texts == [UNKNOWN.format("4", "2 in image.tsv, 2 in image2.tsv")]
    assert [log.unknown_labels for log in logs] == [2, 2]
    row = analysis.summarize(logs[:1], [0, 0.5]).iloc[0]
    assert (row["m"], row["r=0"], row["r=0.5"], row["abstain"]) == (4, 2 / 4, 1 / 4, 1 / 4)
    assert row["ACR"] == pytest.approx((0.3 + 0.9) / 4)
    assert main([str(a)]) == 0  # the CLI says it once, as one warning line
    err = capsys.readouterr().err.splitlines()
    assert [ln for ln in err if ln.startswith("warning:")] == ["warning: " + UNKNOWN.format("2", "2 in image.tsv")]
    with warnings.catch_warnings(record=True) as caught:  # control: known labels only, no warning
        warnings.simplefilter("always")
        analysis.read_logs([write_log(tmp_path / "known.tsv", rows[2:], CERTIFY_HEAD)])
    assert not [w for w in caught if issubclass(w.category, CertifyNetWarning)]


@pytest.mark.parametrize("row, why", [
    ((0, -1, -1, 0.0, 1, 1.0), "correct=1 but predict=-1, label=-1"),   # an abstain is never correct
    ((0, -1, 4, 0.5, 1, 1.0), "correct=1 but predict=4, label=-1"),     # nor is a class on an unknown label
    ((0, 3, -1, 0.0, 1, 1.0), "correct=1 but predict=-1, label=3"),
    ((0, 3, 3, 0.5, 0, 1.0), "correct=0 but predict=3, label=3"),
])
def test_correct_that_contradicts_is_correct_is_refused(tmp_path, row, why):
    path = write_log(tmp_path / "bad.tsv", [(1, 2, 2, 0.1, 1, 1.0), row], REQUIRED)
    with pytest.raises(CertifyNetError, match="^" + re.escape(f"{path}, line 3: {why}") + "$"):
        analysis.read_log(path)


# ------------------------------------------------------------------------------------------- sidecar, messages
@pytest.mark.parametrize("sidecar, message", [
    ('{"kind": ', "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"kind": "counts"}', "kind is 'counts', expected a certify log"),
])
def test_a_malformed_sidecar_is_one_error_line(ours, capsys, sidecar, message):
    Path(str(ours) + ".meta.json").write_text(sidecar)
    with pytest.raises(CertifyNetError, match=re.escape(message)):
        analysis.read_log(ours)
    assert main([str(ours)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0] and ".meta.json" in err[0]


def test_a_log_without_sidecar_is_read(tmp_path):
    log = analysis.read_log(write_log(tmp_path / "plain.tsv", ROWS))
    assert log.meta == {"method": "np"} and log.label == "np"


@pytest.mark.parametrize("call, python, cli", [
    (lambda logs, out: analysis.summarize(logs, [-1]), "radii must be", "--radii must be"),
    (lambda logs, out: analysis.summarize(logs, hp_rho=2), "hp_rho must be in (0, 1)", "--hp-rho must be"),
    (lambda logs, out: analysis.summarize(logs, baseline="x"), "baseline 'x' is not", "--baseline 'x' is not"),
    (lambda logs, out: analysis.read_logs([logs[0].path], ["a", "b"]), "got 2 label value(s)", "got 2 --label"),
    (lambda logs, out: analysis.write_outputs(out, logs, None), "out ", "--out "),
])
def test_messages_name_arguments_the_callers_way(ours, tmp_path, call, python, cli):
    (tmp_path / "file").write_text("")
    with pytest.raises(CertifyNetError) as e:
        call(analysis.read_logs([ours]), tmp_path / "file")
    assert python in str(e.value) and cli in e.value.render(cli=True) and "--" not in str(e.value)


def test_method_styles_follow_the_method_table():
    """np, dsrs, iss-np, iss-dsrs keep styles 0-3 (certify.methods.METHODS' order), sequential 4, others next."""
    from certifynet.analysis.plots import _Styles
    from certifynet.certify.methods import METHODS
    logs = [analysis.CertifyLog(Path(f"{m}.tsv"), pd.DataFrame(), {"method": m, "sigma": 0.25})
            for m in ["custom", "sequential", "iss-dsrs", "np", "iss-np", "dsrs"]]
    styles = _Styles(logs)
    assert [styles.index(log) for log in logs] == [5, 4, 3, 0, 2, 1]
    assert list(METHODS)[:5] == ["np", "dsrs", "iss-np", "iss-dsrs", "sequential"]


# ------------------------------------------------------------------------------------------- p̲_A, ACR secondary
PA = [0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99]  # m = 11: quantile positions 1, 2.5, 5, 7.5, 9


def _pa_log(tmp_path, name="pa.tsv", label="mine"):
    rows = [(i, 1, -1 if p < 0.5 else 1, 0.0 if p < 0.5 else round(0.25 * (p - 0.45), 4), 0 if p < 0.5 else 1, 1.0,
             p, 100) for i, p in enumerate(PA)]
    return write_log(tmp_path / name, rows, CERTIFY_HEAD, meta={"method": "np", "sigma": 0.25, "label": label,
                                                                 "dataset": "mnist5k"})


def test_pa_lower_quantiles_by_hand(tmp_path, ours):
    q = analysis.pa_lower_quantiles(analysis.read_logs([_pa_log(tmp_path), ours]))
    assert list(q["log"]) == ["mine"]  # ours has no pA_lower column
    row = q.iloc[0]
    assert row["m"] == 11
    # numpy's linear interpolation at positions q·(m−1) = 1, 2.5, 5, 7.5, 9 of the sorted values
    assert [row[c] for c in ("10%", "25%", "50%", "75%", "90%")] == pytest.approx([0.4, 0.55, 0.8, 0.925, 0.98])
    assert row["p̲_A < ½"] == pytest.approx(2 / 11)  # 0.5 itself is not below ½


def test_pa_lower_figure_draws_the_empirical_cdf_and_the_threshold(tmp_path):
    fig = analysis.pa_lower_figure(analysis.read_logs([_pa_log(tmp_path)]))
    ax = fig.axes[0]
    threshold = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [0.5, 0.5]]
    assert len(threshold) == 1
    (curve,) = [ln for ln in ax.get_lines() if ln.get_label() == "mine"]
    grid, y = curve.get_xdata(), curve.get_ydata()
    assert curve.get_drawstyle() == "steps-pre"

    def drawn(grid, y, x):  # a steps-pre line shows y[j] on (grid[j-1], grid[j]]
        return y[np.searchsorted(grid, x, side="left")]

    def is_ecdf(grid, y):
        return all(drawn(grid, y, v + 1e-9) == pytest.approx(np.mean(np.array(PA) <= v))
                   and drawn(grid, y, v - 1e-9) == pytest.approx(np.mean(np.array(PA) < v)) for v in PA)
    assert is_ecdf(grid, y)
    wrong = np.searchsorted(np.sort(PA), grid, side="right") / len(PA)  # control: F(x) instead of F(x−)
    assert not is_ecdf(grid, wrong)


def test_report_leads_with_certified_accuracy_and_shows_pa_lower(tmp_path, ours):
    """With a log that records p̲_A and one that does not (Cohen-style): the figure, the quantiles, a note for the
    skipped log; certified accuracy columns before ACR, and the sentence saying why ACR is secondary."""
    out = tmp_path / "out"
    analysis.summarize_runs([_pa_log(tmp_path), ours], out, title="σ=0.25")
    report = (out / "report.md").read_text()
    assert "## Distribution of p̲_A" in report and "![Distribution of p̲_A](pA_lower.png)" in report
    assert "| log | m | 10% | 25% | 50% | 75% | 90% | p̲_A < ½ |" in report
    assert "| mine | 11 | 0.4000 | 0.5500 | 0.8000 | 0.9250 | 0.9800 | 0.182 |" in report
    assert "Not shown (no `pA_lower` column, e.g. Cohen et al.'s published logs): **np σ=0.25 resnet110**." in report
    assert "ACR is secondary, because a trivial classifier can reach an arbitrarily large ACR" in report
    head = (out / "table.md").read_text().splitlines()[0].split(" | ")
    assert max(head.index(c) for c in head if c.startswith("r=")) < head.index("ACR")
    assert (out / "pA_lower.png").read_bytes()[:4] == b"\x89PNG"
    assert not _pdf_has_type3(out / "pA_lower.pdf") and b"/FontFile2" in (out / "pA_lower.pdf").read_bytes()


def test_logs_without_pa_lower_get_a_note_and_no_figure(tmp_path, ours):
    out = tmp_path / "out"
    analysis.summarize_runs([ours], out)
    report = (out / "report.md").read_text()
    assert "No log records p̲_A (column `pA_lower`" in report and "pA_lower.png" not in report
    assert not (out / "pA_lower.png").exists() and analysis.plot_pa_lower(analysis.read_logs([ours]), out / "x") is None


def test_every_legend_of_a_multi_panel_figure_stays_on_the_figure(tmp_path):
    """The quickstart's σ = 1 panel drew its long-labelled legend inside the axes, past the figure's right edge
    (cut off in the README's figure). Every legend now lies within the figure and overlaps no other panel."""
    from certifynet.analysis.plots import certified_accuracy_figure
    paths = []
    for sigma, names in ((0.25, ["NP σ=0.25 N=2000", "DSRS σ=0.25 N=1000+1000", "ISS-NP σ=0.25 ε=0.05",
                                 "ISS-DSRS σ=0.25 ε=0.05", "Sequential σ=0.25 cap N=2000"]),
                         (0.5, ["clean LeNet σ=0.5 N=200", "clean LeNet + DRUNet σ=0.5 N=200",
                                "clean LeNet + DDPM σ=0.5 N=200"]),
                         (1.0, ["clean LeNet σ=1.0 N=200", "clean LeNet + DRUNet σ=1.0 N=200",
                                "clean LeNet + DDPM σ=1.0 N=200"])):
        for j, name in enumerate(names):
            rows = [(i, i % 10, i % 10, round(0.1 * ((i + j) % 9), 3), 1, 0.1, 100) for i in range(30)]
            paths.append((write_log(tmp_path / f"{sigma}_{j}.tsv", rows, meta={"method": "np", "sigma": sigma}), name))
    fig = certified_accuracy_figure(analysis.read_logs([p for p, _ in paths], [n for _, n in paths]))
    fig.canvas.draw()  # places the 'best' legends
    renderer = fig.canvas.get_renderer()
    fig_box = fig.bbox
    axes = [ax for ax in fig.axes if ax.get_visible()]
    for ax in axes:
        box = ax.get_legend().get_window_extent(renderer)
        assert fig_box.x0 - 1 <= box.x0 and box.x1 <= fig_box.x1 + 1 and box.y0 >= fig_box.y0 - 1, ax.get_title()
        own = ax.get_window_extent(renderer)
        if box.overlaps(own):  # a legend drawn on its panel fits inside it
            assert own.x0 - 1 <= box.x0 and box.x1 <= own.x1 + 1, ax.get_title()
        for other in axes:
            if other is not ax:
                assert not box.overlaps(other.get_window_extent(renderer)), (ax.get_title(), other.get_title())
