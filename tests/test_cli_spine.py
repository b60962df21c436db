"""sample.py / certify.py / predict.py: the counts contract, one-line errors, Python-level input checks."""
import json
import os

import pytest
import torch

from certifynet.cli import certify as certify_cli
from certifynet.cli import predict as predict_cli
from certifynet.cli import sample as sample_cli
from certifynet.errors import CertifyNetError
from certifynet.models import get_architecture
from certifynet.records import read_rows
from certifynet.sampling import Smooth
from helpers import untrained_lenet

SMALL = ["--sigma", "0.25", "--N0", "10", "--N", "60", "--batch", "30", "--max", "3"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return untrained_lenet(tmp_path_factory.mktemp("m") / "lenet.pth")


def _one_line_error(capsys, rc, fragment):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err and err[-1].startswith("error:") and fragment in err[-1], err


def test_sample_then_certify_equals_one_go(ckpt, tmp_path, capsys):
    counts = str(tmp_path / "c.csv")
    assert sample_cli.main(["--model", ckpt, *SMALL, "--out", counts]) == 0
    meta = json.load(open(counts + ".meta.json"))
    for key in ("model", "model_sha256", "dataset", "split", "sigma", "dist", "d", "num_classes", "N0", "N",
                "seed", "version", "k", "alpha"):
        assert key in meta, key
    assert certify_cli.main(["--counts", counts, "--alpha", "0.001", "--out", str(tmp_path / "a.tsv")]) == 0
    assert certify_cli.main(["--model", ckpt, *SMALL, "--out", str(tmp_path / "b.tsv")]) == 0
    _, a = read_rows(str(tmp_path / "a.tsv"))
    _, b = read_rows(str(tmp_path / "b.tsv"))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b) and len(a) == 3
    assert list(a[0])[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    # rerunning the same command skips rows already done
    assert certify_cli.main(["--counts", counts, "--alpha", "0.001", "--out", str(tmp_path / "a.tsv")]) == 0
    assert len(read_rows(str(tmp_path / "a.tsv"))[1]) == 3


@pytest.mark.e2e
def test_certify_from_counts_never_loads_torch(ckpt, tmp_path):
    """certify.py --counts is pure numpy/scipy: the process never imports torch (fast on CPU-only nodes)."""
    import subprocess
    import sys
    counts, out = str(tmp_path / "c.csv"), str(tmp_path / "a.tsv")
    assert sample_cli.main(["--model", ckpt, *SMALL, "--out", counts]) == 0
    code = ("import runpy, sys\n"
            f"sys.argv = ['certify.py', '--counts', {counts!r}, '--out', {out!r}]\n"
            "try:\n    runpy.run_path('scripts/certify.py', run_name='__main__')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules, 'certify --counts imported torch'\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    assert len(read_rows(out)[1]) == 3


def test_predict_log(ckpt, tmp_path):
    out = str(tmp_path / "p.tsv")
    assert predict_cli.main(["--model", ckpt, "--sigma", "0.25", "--N", "50", "--max", "2", "--out", out]) == 0
    header, rows = read_rows(out)
    assert header[:5] == ["idx", "label", "predict", "correct", "time"] and len(rows) == 2


@pytest.mark.parametrize("args, fragment", [
    (["--alpha", "1.5"], "--alpha"),
    (["--alpha", "0"], "--alpha"),
    (["--N0", "100", "--N", "50"], "--N0"),
    (["--N", "0"], "--N must be > 0"),
    (["--sigma", "-0.1"], "--sigma"),
])
def test_bad_numbers(ckpt, tmp_path, capsys, args, fragment):
    argv = ["--model", ckpt, *SMALL, "--out", str(tmp_path / "x.tsv")]
    for i in range(0, len(args), 2):  # override
        j = argv.index(args[i]) if args[i] in argv else None
        if j is None:
            argv += args[i:i + 2]
        else:
            argv[j + 1] = args[i + 1]
    _one_line_error(capsys, certify_cli.main(argv), fragment)


def test_missing_and_mismatched_counts(ckpt, tmp_path, capsys):
    _one_line_error(capsys, certify_cli.main(["--counts", str(tmp_path / "none.csv")]), "not found")
    counts = str(tmp_path / "c.csv")
    assert sample_cli.main(["--model", ckpt, *SMALL, "--out", counts]) == 0
    capsys.readouterr()
    os.rename(counts + ".meta.json", counts + ".bak")
    _one_line_error(capsys, certify_cli.main(["--counts", counts]), "sidecar")
    meta = json.load(open(counts + ".bak"))
    meta["columns"] = meta["columns"][::-1]
    json.dump(meta, open(counts + ".meta.json", "w"))
    _one_line_error(capsys, certify_cli.main(["--counts", counts]), "does not match its sidecar")


def test_missing_or_corrupt_model(tmp_path, capsys):
    _one_line_error(capsys, sample_cli.main(["--model", str(tmp_path / "no.pth"), *SMALL]), "not found")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    _one_line_error(capsys, sample_cli.main(["--model", str(bad), *SMALL]), "corrupt")


def test_resume_with_other_settings_is_refused(ckpt, tmp_path, capsys):
    out = str(tmp_path / "c.csv")
    assert sample_cli.main(["--model", ckpt, *SMALL, "--out", out]) == 0
    capsys.readouterr()
    _one_line_error(capsys, sample_cli.main(["--model", ckpt, *SMALL, "--seed", "7", "--out", out]), "seed")


def test_nan_input_is_refused():
    sm = Smooth(get_architecture("lenet", "mnist5k"), 10, 0.25)
    x = torch.rand(1, 28, 28)
    x[0, 3, 3] = float("nan")
    with pytest.raises(CertifyNetError, match="NaN"):
        sm.certify(x, 10, 20, 0.001, batch=10)
