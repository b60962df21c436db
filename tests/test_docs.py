"""The documentation keeps its promises (issue 24): a short README, links that lead somewhere, a methods table that
is the code's, and docstrings that the Sphinx build renders without warnings.

- README.md has at most 200 lines: it is the front door; the manual is docs/.
- Every relative link and image of README.md and docs/**/*.md points at a file inside the repository, and a
  `page.md#anchor` link at a heading of that page (GitHub's anchors, which the Sphinx build uses too).
- Every page of docs/ is linked from the README, so the front door shows the whole house.
- The README's methods table is `certifynet.certify.methods.METHODS`, row for row, and every `Method.doc` exists.
- docs/_ext/plain_docstrings.py turns plain-text docstrings into reStructuredText that docutils reads without a warning.
"""
from __future__ import annotations

import importlib.util
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted(p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts)
MAX_README_LINES = 200

_FENCED = re.compile(r"^ *(`{3,}|~{3,})[^\n]*\n.*?^ *\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
    """The Markdown without fenced blocks and code spans (their brackets are not links)."""
    return _CODE_SPAN.sub("", _FENCED.sub("", text))


def slug(heading: str) -> str:
    """GitHub's (and MyST's) anchor of a heading: markup dropped, lower case, punctuation removed, spaces → '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> list[str]:
    """The anchors of a Markdown page's headings; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    out = []
    for m in _HEADING.finditer(_FENCED.sub("", path.read_text(encoding="utf-8"))):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return [m.group(1) for m in _LINK.finditer(_prose(path.read_text(encoding="utf-8")))]


def broken_link(source: Path, target: str, root: Path = ROOT) -> str | None:
    """Why the link `target` of the file `source` leads nowhere, or None when it is fine (or not relative)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
        return None
    file_part, _, anchor = target.partition("#")
    dest = (source.parent / file_part).resolve() if file_part else source
    if root not in dest.parents and dest != root:
        return f"{target}: outside the repository"
    if not dest.exists():
        return f"{target}: no such file"
    if anchor and dest.suffix == ".md" and anchor not in set(anchors(dest)):
        return f"{target}: no heading with anchor #{anchor} in {dest.relative_to(root)}"
    return None


def test_readme_is_a_front_door():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move details to docs/ (at most {MAX_README_LINES})"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(path):
    found = links(path)
    problems = [why for t in found if (why := broken_link(path, t))]
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_links_are_found_and_checked(tmp_path):
    """Control: the scan sees links and images (not code), and a missing file or heading is reported."""
    (tmp_path / "b.md").write_text("# Title\n\n## Files (`--out DIR`)\n\n```bash\n# not a heading\n```\n")
    doc = tmp_path / "a.md"
    doc.write_text("See [b](b.md#files---out-dir), ![img](b.md) and `[c](c.md)`.\n\n```md\n[d](d.md)\n```\n"
                   "[gone](gone.md), [bad anchor](b.md#not-a-heading), [web](https://example.org/x)\n")
    assert links(doc) == ["b.md#files---out-dir", "b.md", "gone.md", "b.md#not-a-heading", "https://example.org/x"]
    assert anchors(tmp_path / "b.md") == ["title", "files---out-dir"]
    assert [broken_link(doc, t, root=tmp_path) for t in links(doc)] == [
        None, None, "gone.md: no such file", "b.md#not-a-heading: no heading with anchor #not-a-heading in b.md", None]
    assert broken_link(doc, "../outside.md", root=tmp_path) == "../outside.md: outside the repository"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    top = [p for p in PAGES if p.parent == ROOT / "docs" and p.name != "index.md"]
    missing = [str(p.relative_to(ROOT)) for p in top if p.resolve() not in linked]
    assert not missing, f"add these pages to the README's documentation table: {missing}"


def methods_table(text: str) -> list[tuple[str, ...]]:
    """The rows of the first table under '## Methods', cells unescaped (`\\|` → `|`, code and link markup off)."""
    section = text.split("\n## Methods\n", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")][2:]
    out = []
    for row in rows:
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
        cells = [re.sub(r"^\[[^\]]*\]\(([^)]*)\)$", r"\1", c.strip("`")) for c in cells]
        out.append(tuple(cells))
    return out


def test_readme_methods_table_is_the_method_list():
    from certifynet.certify.methods import METHODS
    expected = [(m.name, m.title, m.sampling, m.paper, m.doc) for m in METHODS.values()]
    assert methods_table(README.read_text(encoding="utf-8")) == expected
    for m in METHODS.values():
        assert broken_link(README, m.doc) is None, m


def test_methods_table_parser_sees_a_wrong_row():
    """Control: a changed cell or a missing row makes the table differ."""
    text = ("# x\n\n## Methods\n\n| a | b | c | d | e |\n|---|---|---|---|---|\n"
            "| `np` | NP | no --iss | Cohen | [docs/m.md#np](docs/m.md#np) |\n| `dsrs` | DSRS | --q-dist a\\|b | Li | "
            "[docs/m.md](docs/m.md) |\n\n## Next\n\n| not | this |\n")
    assert methods_table(text) == [("np", "NP", "no --iss", "Cohen", "docs/m.md#np"),
                                   ("dsrs", "DSRS", "--q-dist a|b", "Li", "docs/m.md")]


# ------------------------------------------------------------------------------------ docstrings → RST


def _converter():
    spec = importlib.util.spec_from_file_location("plain_docstrings", ROOT / "docs" / "_ext" / "plain_docstrings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.plain_to_rst


def rst_warnings(lines: list[str]) -> str:
    from docutils.core import publish_doctree
    stream = io.StringIO()
    publish_doctree("\n".join(lines), settings_overrides={"warning_stream": stream, "report_level": 2,
                                                          "halt_level": 5})
    return stream.getvalue()


PLAIN = {
    "list after a sentence, wrapped items": "Methods:\n- `np`: p̲_A = CP(count; n, α), R = σΦ⁻¹(p̲_A)\n  for k = 0.\n"
                                            "- `dsrs`: two runs.\nAfter the list.",
    "indented formula after a sentence": "For a prior Beta(a, b),\n    M_t(p) = B(a + S_t, b) / B(a, b)\n"
                                         "           = …\nis a martingale.",
    "markup characters": "|x| ≤ ‖x‖, x*y and *args, **extra, p_ and __init__, a\\b, a lone ` tick.",
    "nested list and a paragraph": "Intro\n  * one\n    wrapped\n  * two\nEnd.\n\n    L = (1/m) Σ_i CE\n\nDone::\n",
}


@pytest.mark.parametrize("name", PLAIN)
def test_plain_docstrings_become_clean_rst(name):
    text = PLAIN[name]
    assert rst_warnings(text.splitlines()), f"control: {name!r} should be bad RST as it stands"
    converted = _converter()(text.splitlines())
    assert rst_warnings(converted) == "", "\n".join(converted)


def _unescape(rst: str) -> str:
    return re.sub(r"\\(.)", lambda m: "" if m.group(1) == " " else m.group(1), rst)


def test_conversion_keeps_the_text():
    """Nothing is lost: the converted docstring, with RST's escapes and `::` markers removed, is the same words."""
    plain_to_rst = _converter()
    for text in PLAIN.values():
        converted = _unescape("\n".join(plain_to_rst(text.splitlines())))
        assert converted.replace("::", "").split() == text.replace("::", "").split(), converted


def test_lines_rst_would_misread_stay_text():
    """A line that starts like an option list, a comment or a title underline is text after the conversion
    (control: as it stands, docutils reads an option list, a comment and a section)."""
    from docutils import nodes
    from docutils.core import publish_doctree
    text = "Flags:\n\n--sequential  at fixed radii\n\n.. not a comment\n\nTitle\n=====\n\nEnd."
    kinds = (nodes.option_list, nodes.comment, nodes.section)

    def misread(lines):
        tree = publish_doctree("\n".join(lines), settings_overrides={"report_level": 5, "doctitle_xform": False})
        return [type(n).__name__ for n in tree.findall(lambda n: isinstance(n, kinds))]

    assert misread(text.splitlines()) == ["option_list", "comment", "section"]
    converted = _converter()(text.splitlines())
    assert misread(converted) == [], "\n".join(converted)
    assert _unescape("\n".join(converted)).split() == text.split()


def test_rst_literal_marker_is_kept():
    """A docstring already written for RST (`text::` and an indented block) stays as it is."""
    text = 'Our file::\n\n    {"format": 1}\n\nEnd.'
    assert _converter()(text.splitlines()) == text.splitlines()


def test_certify_docstrings_render_without_warnings():
    """The math docstrings (numpy/scipy modules, cheap to import) convert to warning-free RST; `make docs` checks
    every module the same way."""
    import importlib
    import inspect
    import pkgutil

    import certifynet.certify as package
    plain_to_rst = _converter()
    checked = 0
    for info in pkgutil.walk_packages(package.__path__, "certifynet.certify."):
        module = importlib.import_module(info.name)
        objects = [module] + [o for o in vars(module).values()
                              if (inspect.isfunction(o) or inspect.isclass(o)) and o.__module__ == info.name]
        for obj in objects:
            doc = inspect.getdoc(obj) if obj is not module else inspect.cleandoc(module.__doc__ or "")
            if doc:
                assert rst_warnings(plain_to_rst(doc.splitlines())) == "", f"{info.name}: {obj}"
                checked += 1
    assert checked >= 50
