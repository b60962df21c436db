"""Sphinx configuration of the Certify-Net documentation: the Markdown pages of docs/ (MyST) and an API reference
generated from the docstrings of `certifynet` (autosummary, recursive over whatever modules exist).

`make docs` builds it with warnings as errors. The build imports the library but runs no command, reads no data
and needs no network (the theme is Sphinx's built-in alabaster).
"""
from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# Document this checkout's code, not a copy installed elsewhere; docs/_ext holds the docstring converter.
sys.path[:0] = [str(ROOT / "src"), str(DOCS / "_ext")]

import plain_docstrings  # noqa: E402  (docs/_ext/plain_docstrings.py, found through the path set just above)

_version: dict = {}
exec((ROOT / "src" / "certifynet" / "_version.py").read_text(encoding="utf-8"), _version)

project = "Certify-Net"
author = "the Certify-Net authors"
copyright = "the Certify-Net authors, MIT License"
release = version = _version["__version__"]

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.autosummary"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
templates_path = ["_templates"]
smartquotes = False  # keep `--flag`, quotes and "..." as typed: no en dashes or curly quotes in commands
highlight_language = "text"  # unlabelled blocks (trees, outputs) and the docstrings' formulas: no highlighting

# Markdown pages: GitHub's heading anchors, so that `page.md#section` works on GitHub and here alike.
myst_heading_anchors = 3
# docs/sequential.md (and other pages written with a `##` title) start at H2; they render the same.
suppress_warnings = ["myst.header"]

# API reference: a page per module (docs/api/generated/, written at build time), the members each module defines
# (a package's re-exports are documented where they are defined), docstrings read as plain text (docs/_ext).
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
default_role = "code"  # `name` in a docstring is code, as in the Markdown pages

html_theme = "alabaster"
html_theme_options = {"page_width": "1200px"}  # room for the wide tables of the benchmark pages
html_static_path = ["_static"]
html_title = f"Certify-Net {release}"


def setup(app):
    plain_docstrings.setup(app)
