"""Every script answers --help, and fails on bad input with one `error:` line and a non-zero exit."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCRIPTS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "scripts")) if f.endswith(".py"))


def _run(*argv):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=180, cwd=ROOT)


HELP_ALL = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv, buf, code = [path, "--help"], io.StringIO(), None
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            code = e.code
    out[path] = [code, buf.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def helps():
    """`scripts/<name>.py --help` of every script, each run as __main__ in one interpreter (one torch import)."""
    paths = [os.path.join("scripts", f"{s}.py") for s in SCRIPTS]
    r = _run("-c", HELP_ALL, *paths)
    assert r.returncode == 0, r.stderr[-1500:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, helps):
    code, text = helps[os.path.join("scripts", f"{script}.py")]
    assert code in (0, None) and "usage" in text.lower(), text[-500:]


@pytest.mark.e2e
@pytest.mark.parametrize("argv, fragment", [
    (["certify.py", "--counts", "missing.csv"], "not found"),
    (["sample.py", "--model", "missing.pth", "--sigma", "0.25"], "not found"),
    (["analyze.py", "missing.tsv"], "missing.tsv"),
    (["merge.py", "out.tsv", "missing.tsv"], "missing.tsv"),
])
def test_bad_input_one_line(argv, fragment):
    r = _run(os.path.join("scripts", argv[0]), *argv[1:])
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and lines and lines[-1].startswith("error:") and fragment in lines[-1], r.stderr[-500:]
    assert "Traceback" not in r.stderr


def _parsers():
    import importlib
    for name in ("sample", "certify", "predict", "train", "train_smoothmix", "train_denoiser", "analyze", "merge",
                 "run_shards", "quickstart", "attack"):
        yield name, importlib.import_module(f"certifynet.cli.{name}").build_parser()


@pytest.mark.parametrize("name, parser", list(_parsers()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_flag_has_help_and_defaults_are_shown(name, parser):
    import argparse
    missing = [a.option_strings or a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help and a.help.strip())]
    assert not missing, f"{name}: flags without help: {missing}"
    text = " ".join(parser.format_help().split())
    if name in ("sample", "certify", "predict"):
        assert "(default: 0.001)" in text and "(required" in text
