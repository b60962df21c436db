"""Certify-Net's docstrings are plain text, not reStructuredText: render them as what they are.

They are written for `help()` and the source: math in Unicode (σ, Φ⁻¹, p̲_A, |x|, x*, E[·]), `name` for code,
lists that start right after a sentence, and formulas or commands on deeper-indented lines. Parsed as RST, `|x|` is
a substitution, `p_` a link, `*args` an unclosed emphasis, a line that starts with `--flag` an option list, and an
indented formula an error or a block quote. Instead of bending hundreds of docstrings to RST, `plain_to_rst` (run
on every docstring by autodoc's `autodoc-process-docstring` event) turns the plain text into RST that shows the
same text:

- a run of lines indented deeper than the text before it (a displayed formula, a command) becomes a literal
  block, shown as written (a paragraph that already ends with RST's `::` keeps its meaning);
- a list (`-`, `*`, `•`, `1.`) gets the blank lines RST needs around it, and its wrapped lines are aligned with
  the item's text;
- outside code spans, the characters RST would read as markup (`*`, `|`, `_`, a backslash, a lone backtick,
  a leading `-`, `+`, `..` or `:`) are escaped, and a code span touching other text is set off with RST's
  escaped space.

`name` and ``name`` stay code: conf.py sets `default_role = "code"`.
"""
from __future__ import annotations

import re

_BULLET = re.compile(r"^(?P<indent> *)(?P<marker>[-*•]|\d{1,2}[.)]) +(?=\S)")
_CODE = re.compile(r"``[^`]+?``|`[^`]+`")
_MARKUP = re.compile(r"[*|_`\\]")
_LEADING = re.compile(r"^(?:-(?! )|\+|\.\.|:)")  # an option list, a table, a comment or a field list in RST
_UNDERLINE = re.compile(r"^([=\-~^\"'#+:.])\1{3,}$")  # a line RST would read as a title underline or transition


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _escape_markup(text: str) -> str:
    return _MARKUP.sub(lambda m: "\\" + m.group(0), text)


def escape_text(text: str) -> str:
    """`text` (lines joined by newlines, no indentation) with RST markup escaped outside its code spans."""
    out, end = [], 0
    for m in _CODE.finditer(text):
        out.append(_escape_markup(text[end:m.start()]))
        before = text[m.start() - 1] if m.start() else " "
        after = text[m.end()] if m.end() < len(text) else " "
        out.append(("" if before.isspace() else "\\ ") + m.group(0) + ("" if after.isspace() else "\\ "))
        end = m.end()
    out.append(_escape_markup(text[end:]))
    lines = "".join(out).split("\n")
    return "\n".join("\\" + ln if _LEADING.match(ln) or _UNDERLINE.match(ln) else ln for ln in lines)


class _Converter:
    """One pass over the lines; `out` collects RST, `para` the paragraph or list item being read."""

    def __init__(self, lines: list[str]):
        self.lines = [ln.rstrip().expandtabs(8) for ln in lines]
        self.out: list[str] = []
        self.literal: set[int] = set()  # indices in out of literal-block lines (never escaped or changed)
        self.para: list[str] = []
        self.item = False  # para is a list item
        self.col = 0  # column of the current text: a paragraph's indent, or an item's text after its marker
        self.list_indent: int | None = None  # indent of the current list's markers

    def flush(self):
        if not self.para:
            return
        head = self.para[0]
        marker = _BULLET.match(head).group(0) if self.item else " " * _indent(head)
        body = "\n".join([head[len(marker):]] + [ln.strip() for ln in self.para[1:]])
        lines = escape_text(body).split("\n")
        self.out.append(marker + lines[0])
        self.out += [" " * self.col + ln for ln in lines[1:]]
        self.para = []

    def blank(self):
        if self.out and self.out[-1].strip():
            self.out.append("")

    def literal_block(self, k: int) -> int:
        """Copy the run of lines deeper than self.col from k on as a literal block; the index after it."""
        self.flush()
        j = k
        while j < len(self.lines):
            if self.lines[j] and _indent(self.lines[j]) <= self.col:
                break
            if not self.lines[j] and not (j + 1 < len(self.lines) and _indent(self.lines[j + 1]) > self.col
                                          and self.lines[j + 1]):
                break
            j += 1
        prev = next((ln for ln in reversed(self.out) if ln.strip()), "")
        self.blank()
        if not prev.endswith("::"):
            self.out += [" " * self.col + "::", ""]
        for ln in self.lines[k:j]:
            self.literal.add(len(self.out))
            self.out.append(ln)
        self.out.append("")
        return j

    def bullet(self, line: str, m: re.Match):
        ind = len(m.group("indent"))
        sibling = self.item and self.para and ind == self.list_indent
        self.flush()
        if not sibling:
            self.blank()
        self.para, self.item, self.col, self.list_indent = [line], True, m.end(), ind

    def paragraph(self, line: str):
        """Start a paragraph: a further paragraph of the current item when aligned with its text, else the list
        (if any) ends."""
        ind = _indent(line)
        self.flush()
        self.blank()
        if not (self.item and ind == self.col):
            self.list_indent = None
        self.para, self.col, self.item = [line], ind, False

    def line(self, k: int) -> int:
        """Read the non-blank line k; the index of the next line to read."""
        line = self.lines[k]
        ind, m = _indent(line), _BULLET.match(line)
        if m:
            self.bullet(line, m)
        elif self.para and self.item:  # inside a list item
            if ind >= self.col + 4:
                return self.literal_block(k)
            if ind > self.list_indent:
                self.para.append(line)  # a wrapped line, aligned with the item's text on output
            else:
                self.paragraph(line)
        elif self.para:  # inside a paragraph
            if ind > self.col:
                return self.literal_block(k)
            if ind == self.col:
                self.para.append(line)
            else:
                self.paragraph(line)
        elif ind > self.col and self.out:  # after a blank line or a literal block
            return self.literal_block(k)
        else:
            self.paragraph(line)
        return k + 1

    def run(self) -> list[str]:
        k = 0
        while k < len(self.lines):
            if self.lines[k]:
                k = self.line(k)
            else:
                self.flush()
                self.blank()
                k += 1
        self.flush()
        return self.finish()

    def finish(self) -> list[str]:
        """Escape a paragraph-final `::` that no literal block follows (RST would expect one)."""
        out = self.out
        for i, ln in enumerate(out):
            if i in self.literal or not ln.endswith("::") or ln.endswith("\\::"):
                continue
            nxt = next((j for j in range(i + 1, len(out)) if out[j].strip()), None)
            if nxt is None or nxt not in self.literal:
                out[i] = ln[:-1] + "\\:"
        while out and not out[-1].strip():
            out.pop()
        return out


def plain_to_rst(lines: list[str]) -> list[str]:
    """RST lines that render the plain-text docstring `lines` as written (see the module docstring)."""
    return _Converter(lines).run()


def _process(app, what, name, obj, options, lines):
    lines[:] = plain_to_rst(lines) + ([""] if lines and not lines[-1] else [])


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
