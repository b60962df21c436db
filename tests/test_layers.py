"""Layers point one way: every import in src/certifynet (module level, inside functions, relative, and
importlib.import_module of a literal name) is an edge of an allowed table.

The developers' rule: the front ends (cli, web) use the engines (sampling, training, denoise, attack,
analysis), which use the foundations (certify, records, models, noise, data, errors, paths, progress).
- certifynet.certify is pure math: numpy, scipy, the standard library's pure modules and certifynet.errors;
  no torch, no files (no file modules, no open(), no numpy file IO);
- nothing outside certifynet.cli imports certifynet.cli;
- certifynet.web and certifynet.attack are imported by nothing in the library but certifynet.cli (and attack by
  certifynet.web too: the web app runs attack.py's audit and curve as jobs, issue 28).
A package a module belongs to is its first component below certifynet (certifynet.certify.dsrs → certify).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

FOUNDATIONS = {"certify", "records", "merge", "models", "noise", "data", "errors", "paths", "progress", "_version",
               "bounds", "lazy"}
ENGINES = {"sampling", "pipeline", "training", "denoise", "attack", "analysis"}
FRONT_ENDS = {"cli", "web"}
# package → the other packages it may import. Engines use any foundation plus the engines named here;
# foundations only those below them, and any of them the pure math of certify (one definition of σ′, k's range).
# `pipeline` is the sample stage until sampling absorbs it (issue 24).
ALLOWED = {
    "certifynet": {"_version", "errors"},    # the package root
    "_version": set(),
    "errors": set(),
    "lazy": set(),                           # PEP 562 exports (importlib only)
    "certify": {"errors"},
    "paths": {"errors"},
    "progress": {"errors"},
    "bounds": {"errors"},                    # sizes vs memory (torch-free)
    "noise": {"errors", "certify"},
    "data": {"errors", "paths", "certify"},
    "records": {"errors", "paths", "_version", "certify"},
    "merge": {"errors", "paths", "records", "_version", "certify"},
    "models": {"errors", "paths", "data", "records", "_version", "certify", "bounds"},
    "analysis": FOUNDATIONS,
    "sampling": FOUNDATIONS | {"denoise"},                 # a smoothed model may be a denoiser + classifier
    "pipeline": FOUNDATIONS | {"sampling", "denoise"},
    "training": FOUNDATIONS | {"sampling"},                # the device resolver and noise streams
    "denoise": FOUNDATIONS | {"sampling"},                 # denoiser training: the same
    "attack": FOUNDATIONS | {"sampling", "training"},      # the smoothed PGD: sampler streams, training losses
    "web": FOUNDATIONS | ENGINES,
    "cli": FOUNDATIONS | ENGINES | FRONT_ENDS,
}
ONLY_FROM_CLI = {"cli", "web", "attack"}
ALSO_FROM = {"attack": {"web"}}    # besides certifynet.cli
# certify: third-party and standard-library modules it may import (pure computation, no IO)
CERTIFY_EXTERNAL = {"numpy", "scipy", "__future__", "abc", "bisect", "collections", "contextlib", "copy",
                    "dataclasses", "enum", "fractions", "functools", "heapq", "importlib", "itertools", "logging",
                    "math", "numbers", "operator", "re", "statistics", "types", "typing", "warnings"}
NUMPY_FILE_IO = {"load", "save", "savez", "savez_compressed", "loadtxt", "savetxt", "genfromtxt", "fromfile",
                 "tofile", "memmap"}


@dataclass(frozen=True)
class Violation:
    importer: str    # module that imports (dotted)
    target: str      # what it imports: a certifynet module, an external top-level module, or a call
    where: str       # file:line
    rule: str

    def __str__(self):
        return f"{self.where}: {self.importer} -> {self.target} ({self.rule})"


def _modules(src: Path) -> dict[str, Path]:
    """{dotted module name: file} of every module under src/certifynet."""
    out = {}
    for path in sorted((src / "certifynet").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _literal_prefix(node) -> str | None:
    """The leading literal of a str constant or f-string argument (f"certifynet.cli.{x}" → "certifynet.cli.")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def _imports(tree, module: str, is_package: bool, modules) -> list[tuple[str, int]]:
    """(imported name, line) of every import in the tree: a certifynet module (resolved) or an external name."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for a in node.names:     # `from pkg import sub` imports the submodule pkg.sub when there is one
                sub = f"{base}.{a.name}"
                out.append((sub if sub in modules else base, node.lineno))
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            prefix = _literal_prefix(node.args[0]) if node.args else None
            if name in ("import_module", "__import__") and prefix:
                level = len(prefix) - len(prefix.lstrip("."))   # import_module(".x", __package__): relative
                target = ".".join(package[:len(package) - level + 1] + [prefix[level:]]) if level else prefix
                out.append((target.rstrip("."), node.lineno))
    return out


def _file_io_calls(tree) -> list[tuple[str, int]]:
    """Calls that touch files: open(...), x.open(...), numpy's load/save family."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            out.append(("open()", node.lineno))
        elif isinstance(func, ast.Attribute) and (func.attr == "open" or (
                func.attr in NUMPY_FILE_IO and isinstance(func.value, ast.Name) and func.value.id in ("np", "numpy"))):
            out.append((f"{ast.unparse(func)}()", node.lineno))
    return out


def check_layers(src: Path) -> list[Violation]:
    """Every import edge of src/certifynet that the table does not allow, sorted."""
    modules = _modules(src)
    found = set()
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        pkg = _package(module)
        allowed = ALLOWED.get(pkg)
        rel = path.relative_to(src.parent)
        if allowed is None:
            found.add(Violation(module, pkg, f"{rel}:1", "package missing from the layer table: add it to ALLOWED"))
            continue
        for name, line in _imports(tree, module, path.name == "__init__.py", modules):
            top = name.split(".")[0]
            if top != "certifynet":
                if pkg == "certify" and top not in CERTIFY_EXTERNAL:
                    found.add(Violation(module, top, f"{rel}:{line}", "certify: numpy, scipy and pure stdlib only"))
                continue
            target = _package(name)
            if target == pkg:
                continue
            if target in ONLY_FROM_CLI and pkg != "cli" and pkg not in ALSO_FROM.get(target, ()):
                found.add(Violation(module, name, f"{rel}:{line}", f"only certifynet.cli may import {target}"))
            elif target not in allowed:
                found.add(Violation(module, name, f"{rel}:{line}", f"{pkg} -> {target} is not in the layer table"))
        if pkg == "certify":
            for call, line in _file_io_calls(tree):
                found.add(Violation(module, call, f"{rel}:{line}", "certify: no file IO"))
    return sorted(found, key=lambda v: (v.where.rsplit(":", 1)[0], int(v.where.rsplit(":", 1)[1]), v.target))


def test_layers_point_one_way():
    """src/certifynet: no import edge outside the table (see the module docstring for the rule)."""
    violations = check_layers(SRC)
    assert not violations, f"{len(violations)} import(s) against the layers:\n" + "\n".join(map(str, violations))


def test_every_package_is_in_the_table():
    packages = {_package(m) for m in _modules(SRC)}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)
    assert FRONT_ENDS | ENGINES | FOUNDATIONS | {"certifynet"} == set(ALLOWED)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "src" / "certifynet" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "src"


def test_the_checker_finds_a_certify_torch_and_a_sampling_cli_edge(tmp_path):
    """A tiny fake tree with two deliberate edges, certify → torch and sampling → cli, among allowed ones:
    the checker reports exactly those two."""
    src = _tree(tmp_path, {
        "__init__.py": "from certifynet._version import __version__\n",
        "_version.py": "__version__ = '0'\n",
        "errors.py": "import math\n",
        "certify/__init__.py": "from certifynet.certify.radius import radius\n",
        "certify/radius.py": "import math\nimport numpy as np\nimport torch\nfrom certifynet.errors import math as m\n"
                             "def radius(p):\n    return math.sqrt(p)\n",
        "sampling.py": "import torch\nfrom certifynet.certify import radius\n"
                       "def run():\n    from certifynet.cli import main\n    return main\n",
        "cli/__init__.py": "from certifynet import sampling\ndef main():\n    return 0\n",
    })
    got = check_layers(src)
    assert [(v.importer, v.target, v.where) for v in got] == [
        ("certifynet.certify.radius", "torch", "src/certifynet/certify/radius.py:3"),
        ("certifynet.sampling", "certifynet.cli", "src/certifynet/sampling.py:4"),
    ], got


@pytest.mark.parametrize("files, want", [
    ({"certify/io.py": "def read(p):\n    with open(p) as f:\n        return f.read()\n"},
     ("certifynet.certify.io", "open()", "certify: no file IO")),
    ({"certify/io.py": "import numpy as np\ndef read(p):\n    return np.loadtxt(p)\n"},
     ("certifynet.certify.io", "np.loadtxt()", "certify: no file IO")),
    ({"certify/io.py": "import os\n"}, ("certifynet.certify.io", "os", "certify: numpy, scipy and pure stdlib only")),
    ({"certify/io.py": "from .. import records\n", "records.py": ""},
     ("certifynet.certify.io", "certifynet.records", "certify -> records is not in the layer table")),
    ({"web/worker.py": "import importlib\ndef run(s):\n    return importlib.import_module(f'certifynet.cli.{s}')\n",
      "cli/__init__.py": ""},
     ("certifynet.web.worker", "certifynet.cli", "only certifynet.cli may import cli")),
    ({"analysis.py": "from certifynet.attack import x\n", "attack.py": ""},
     ("certifynet.analysis", "certifynet.attack", "only certifynet.cli may import attack")),
    ({"records.py": "from certifynet.models import m\n", "models.py": ""},
     ("certifynet.records", "certifynet.models", "records -> models is not in the layer table")),
    ({"newpkg/__init__.py": ""}, ("certifynet.newpkg", "newpkg", "package missing from the layer table: add it to "
                                                                  "ALLOWED")),
    ({"certify/__init__.py": "import importlib\ndef __getattr__(n):\n    return importlib.import_module(f'.{n}', "
      "__name__)\n", "certify/lazy.py": "import importlib\ntorch = importlib.import_module('torch')\n"},
     ("certifynet.certify.lazy", "torch", "certify: numpy, scipy and pure stdlib only")),
], ids=["open", "numpy-io", "os", "relative", "import_module", "attack", "foundation-up", "unknown-package",
        "lazy-imports"])
def test_the_checker_sees_each_kind_of_edge(tmp_path, files, want):
    """Function-level, relative and importlib imports, file IO in certify, packages missing from the table."""
    got = check_layers(_tree(tmp_path, {"__init__.py": "", "errors.py": "", **files}))
    assert [(v.importer, v.target, v.rule) for v in got] == [want], got
