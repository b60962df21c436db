"""Every Python name the README and docs/*.md promise can be imported, and the certify package's API.

The scan reads fenced code blocks and inline code spans:
- `from certifynet.x import a, b` and `import certifynet.x` statements;
- dotted names `certifynet.x.y` (a module, or a module and an attribute path);
- a list of code spans that starts with a dotted name: in "`certifynet.certify.cp_lower(...)`,
  `np_radius(...)`, ..." or "`certifynet.certify.iss` (`iss_dsrs_budget`, ...)" the bare names are read in
  the namespace of the dotted one (the module itself, or the module that holds it).
Each name is its own test case, so every missing name is reported.
"""
from __future__ import annotations

import importlib
import importlib.util
import keyword
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^ *(```|~~~)[^\n]*\n(.*?)^ *\1", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_FROM = re.compile(r"^\s*from\s+(certifynet(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n#]+)", re.MULTILINE)
_IMPORT = re.compile(r"^\s*import\s+(certifynet(?:\.\w+)*)", re.MULTILINE)
_DOTTED = re.compile(r"(?<![\w./\\-])certifynet(?:\.[A-Za-z_]\w*)+")
_BARE = re.compile(r"^([A-Za-z_]\w*)(?:\(.*\))?$", re.DOTALL)


def _import_names(module: str, names: str) -> list[tuple[str, str]]:
    """(module, name) for each name of `from module import names` (parentheses, aliases, comments)."""
    names = re.sub(r"#[^\n]*", "", names).strip().strip("()")
    return [(module, n.split(" as ")[0].strip()) for n in names.split(",") if n.strip()]


def _continued(prose: str) -> list[tuple[str, str]]:
    """(dotted, bare) for each bare-name span in a list that starts with a dotted `certifynet.…` span.

    A list is a run of code spans separated only by commas, parentheses, "and"/"or" and single line breaks.
    """
    out, base, end = [], None, 0
    for m in _SPAN.finditer(prose):
        gap, span, end = prose[end:m.start()], m.group(2).strip(), m.end()
        if "\n\n" in gap or gap.strip(" \t\n,()") not in ("", "and", "or"):
            base = None
        dotted = _DOTTED.fullmatch(span.split("(")[0].strip())
        bare = _BARE.match(span)
        if dotted:
            base = dotted.group(0)
        elif base and bare and not keyword.iskeyword(bare.group(1)):
            out.append((base, bare.group(1)))
        else:
            base = None
    return out


def _namespace(dotted: str) -> str:
    """`dotted` itself when it is a module, else the module path that holds it (its parent)."""
    try:
        if importlib.util.find_spec(dotted) is not None:
            return dotted
    except (ImportError, ValueError):
        pass
    return dotted.rsplit(".", 1)[0]


def doc_references(path: Path) -> list[str]:
    """The names one document promises, as test ids: 'from M import n', 'import M' or a dotted name."""
    text = path.read_text(encoding="utf-8")
    refs: list[str] = []
    code = [m.group(2) for m in _FENCE.finditer(text)]
    prose = _FENCE.sub("\n\n", text)
    spans = [m.group(2) for m in _SPAN.finditer(prose)]
    for chunk in code + spans:
        for m in _FROM.finditer(chunk):
            refs += [f"from {mod} import {name}" for mod, name in _import_names(m.group(1), m.group(2))]
        refs += [f"import {m.group(1)}" for m in _IMPORT.finditer(chunk)]
        refs += _DOTTED.findall(chunk)
    refs += [f"from {_namespace(base)} import {name}" for base, name in _continued(prose)]
    return list(dict.fromkeys(refs))


def _longest_module(dotted: str):
    """(module, rest): the longest importable prefix of `dotted` and the attribute path after it."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            return importlib.import_module(name), parts[i:]
        except ModuleNotFoundError as e:
            if not (e.name == name or name.startswith(f"{e.name}.")):   # a missing import inside the module
                raise
    raise ModuleNotFoundError(dotted)


def resolve(ref: str):
    """The object a reference names; raises ImportError / AttributeError when the docs promise too much."""
    if ref.startswith("import "):
        return importlib.import_module(ref.split()[1])
    if ref.startswith("from "):
        _, module, _, name = ref.split()
        mod = importlib.import_module(module)
        return getattr(mod, name) if hasattr(mod, name) else importlib.import_module(f"{module}.{name}")
    obj, rest = _longest_module(ref)
    for attr in rest:
        obj = getattr(obj, attr)
    return obj


def _all_references():
    return [pytest.param(ref, id=f"{path.relative_to(ROOT)}: {ref}") for path in DOCS for ref in doc_references(path)]


REFERENCES = _all_references()


@pytest.mark.parametrize("ref", REFERENCES)
def test_documented_name_imports(ref):
    assert resolve(ref) is not None


def test_scanner_finds_the_promised_names():
    """The scan itself: the README's list of the certify math and the docs' import statements are found."""
    readme = doc_references(ROOT / "README.md")
    for name in ("cp_lower", "np_radius", "generalized_np_radius", "dsrs_radius", "iss_sample_size"):
        assert any(r == f"from certifynet.certify import {name}" or r.endswith(f".{name}") for r in readme), name
    assert "from certifynet.sampling import Smooth" in readme
    assert len(REFERENCES) >= 20


def test_resolver_rejects_missing_names():
    """Control: names that do not exist must fail, in every form the scan produces."""
    for ref in ("from certifynet.certify import no_such_name", "import certifynet.no_such_module",
                "certifynet.certify.no_such_name", "certifynet.no_such_module.x"):
        with pytest.raises((ImportError, AttributeError)):
            resolve(ref)
    assert doc_references(ROOT / "README.md") != []


def test_list_continuation_rule():
    prose = ("Use `certifynet.certify.cp_lower(c, n, a)`, `np_radius(p, s)`,\n`dsrs_radius(…)` and `iss_sample_size`. "
             "Then `other_name` is not read.\n\n"
             "Code: `certifynet.certify.iss` (`iss_sample_size`, `IssPlanner`).\n\n"
             "`certifynet.models.parse_normalization` accepts `dataset` or `identity`.\n\n"
             "`certifynet.certify.iss`\n\n`not_continued`")
    assert _continued(prose) == [("certifynet.certify.cp_lower", "np_radius"),
                                 ("certifynet.certify.cp_lower", "dsrs_radius"),
                                 ("certifynet.certify.cp_lower", "iss_sample_size"),
                                 ("certifynet.certify.iss", "iss_sample_size"),
                                 ("certifynet.certify.iss", "IssPlanner")]
    assert _namespace("certifynet.certify.cp_lower") == "certifynet.certify"
    assert _namespace("certifynet.certify.iss") == "certifynet.certify.iss"


# ----------------------------------------------------------------------------------------- the certify package

CERTIFY_API = ["cp_lower", "cp_upper", "cp_interval", "np_radius", "certify_from_counts", "predict_from_counts",
               "predict_pvalue", "predict_abstains", "dsrs_radius", "dsrs_certify", "dsrs_intervals",
               "generalized_np_radius", "sigma_prime", "check_k", "iss_sample_size", "IssPlanner",
               "SequentialCertifier", "confidence_sequence", "simulate", "radius_threshold", "methods", "METHODS",
               "outcome", "is_correct", "ABSTAIN", "UNKNOWN_LABEL"]


@pytest.mark.parametrize("name", CERTIFY_API)
def test_certify_exports(name):
    from certifynet import certify
    assert name in certify.__all__ and getattr(certify, name) is not None


def test_certify_all_is_importable():
    from certifynet import certify
    for name in certify.__all__:
        assert hasattr(certify, name), name


def test_certify_imports_no_torch_and_no_files():
    """certify is numpy/scipy math: importing it loads no torch, no records/file reading, no CLI."""
    code = ("import sys, certifynet.certify, certifynet.certify.dsrs, certifynet.certify.iss, "
            "certifynet.certify.sequential; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas') or "
            "m.startswith(('certifynet.records', 'certifynet.cli', 'certifynet.certify.from_counts'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
