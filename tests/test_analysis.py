"""Tests for certifynet.analysis and the analyze CLI (fast: small hand-made logs + Cohen's published logs)."""
import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from certifynet import analysis
from certifynet.cli.analyze import main
from certifynet.errors import CertifyNetError
from helpers import REFERENCE

ROOT = Path(__file__).resolve().parents[1]
PEER = REFERENCE / "peer-logs"
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
    assert analysis.best_mask(pd.Series([0.1234, 0.1231]), 3, "max").tolist() == [True, True]  # equal as shown


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


def test_cli_missing_file_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.tsv" in err[0]
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "missing.tsv")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


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


def _readme_acr():
    """{(dataset prefix, σ): ACR} from the table in peer-logs/README.md."""
    lines = [ln for ln in (PEER / "README.md").read_text().splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    sigmas = [float(h.split("=")[1]) for h in head[1:]]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        prefix = {"CIFAR-10": "cifar10", "ImageNet": "imagenet"}[cells[0]]
        out.update({(prefix, s): float(c) for s, c in zip(sigmas, cells[1:]) if c not in ("–", "-")})
    return out


@pytest.mark.skipif(not PEER.is_dir(), reason="peer logs not available")
def test_peer_logs_match_hand_computation_and_readme():
    radii = [0.0, 0.25, 0.5, 0.75, 1.0]
    paths = sorted(PEER.glob("*.tsv"))
    assert len(paths) == 7
    logs = analysis.read_logs(paths)
    df = analysis.summarize(logs, radii)
    readme = _readme_acr()
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
    (HEAD6 + "0\t1\t1\t0.5\t1\t1\n1\t1\t1\t0.5\t1\t1\t9\n2\t1\t1\tabc\t1\t1\n", "line 3: expected 6 tab-separated fields, got 7"),
    (HEAD6 + "0\t1\t2\t0.5\t1\t1\n1\t1\t1\t0.5\t1\n", "line 2: correct=1 but predict=2"),
    (HEAD6 + "0\t1\t1\t0.5\t1\t1\n0\t1\t1\t0.5\t1\t1\n1\t1\t1\t-1\t1\t1\n", "line 3: duplicate idx 0 (first at line 2)"),
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
