"""Command-line entry points. Each module `certifynet.cli.<stage>` has `build_parser()` and `main(argv=None)`;
`scripts/<stage>.py` and the `certifynet-<stage>` console scripts are thin shells over them."""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import warnings

from certifynet.errors import CertifyNetError, CertifyNetWarning, refuse  # noqa: F401 (refuse: for cli.train)

# Characters that str.splitlines() breaks a line at: a message holding one (a value the user typed) is escaped, so
# that every `error:` / `warning:` line stays one line.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(text: str) -> str:
    """`text` with its line breaks escaped (a newline in a typed value is shown as \\n)."""
    return str(text).translate(_LINE_BREAKS)


def text_arg(value: str) -> str:
    """argparse type of free text that goes into files (labels, titles): bytes that are not UTF-8 (Python hands them
    over as lone surrogates, which no UTF-8 file or plot can hold) are refused as a usage error."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {value!r}") from None
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows every option's default."""


class CliParser(argparse.ArgumentParser):
    """argparse with help that shows defaults and usage errors as ONE line: `error: ... (see prog --help)`."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        kw.setdefault("allow_abbrev", False)
        super().__init__(*args, **kw)

    def error(self, message):
        print(f"error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def given_options(parser: argparse.ArgumentParser, argv) -> set:
    """The `dest` of every option that appears in argv (given explicitly, whatever its value)."""
    saved = [(a, a.default, a.required) for a in parser._actions]
    try:
        for a in parser._actions:
            a.default, a.required = argparse.SUPPRESS, False
        ns, _ = parser.parse_known_args(argv)
    finally:
        for a, default, required in saved:
            a.default, a.required = default, required
    return set(vars(ns))


def parse(parser: argparse.ArgumentParser, argv=None):
    """parse_args, plus `args.given`: the set of options the user gave explicitly."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.given = given_options(parser, argv)
    return args


def parse_strict(parser: argparse.ArgumentParser, argv):
    """`parse` for callers that are not a command line (the web app): usage errors raise CertifyNetError."""
    def error(message):
        raise CertifyNetError(message)

    parser.error = error
    return parse(parser, argv)


def one_line_errors(main):
    """Run `main(argv)`; print user errors as one line `error: ...` on stderr and exit 2 (no traceback).

    OS errors (permission denied, no space, a folder where a file was expected) are user errors too.
    Anything else is a bug: one line saying so (set CERTIFYNET_DEBUG=1 for the traceback), exit 1.
    """

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            with console_diagnostics():
                rc = main(argv)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # noqa: BLE001 - the last line of defence of a CLI
            if os.environ.get("CERTIFYNET_DEBUG") and not isinstance(e, (CertifyNetError, OSError)):
                raise
            line, rc = _error_line(e)
            print(f"error: {one_line(line)}", file=sys.stderr)
            return rc
        return 0 if rc is None else int(rc)

    return wrapper


def _error_line(e: Exception) -> tuple[str, int]:
    """(the message after `error: `, the exit status) of an exception that ends a command."""
    if isinstance(e, CertifyNetError):
        return e.render(cli=True), 2
    if isinstance(e, FileNotFoundError):
        return f"file not found: {e.filename or e}", 2
    if isinstance(e, OSError):
        where = f" '{e.filename}'" if e.filename else ""
        return f"cannot access{where}: {e.strerror or e}", 2
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return (f"unexpected {type(e).__name__}: {first} (a bug in certifynet: please report it; CERTIFYNET_DEBUG=1 "
            f"shows the traceback)"), 1


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """certifynet's warnings as one line `warning: ...`; others in Python's usual form."""
    stream = file or sys.stderr
    if issubclass(category, CertifyNetWarning):
        inner = message.args[0] if isinstance(message, Warning) and message.args else message  # warn(CertifyNetError)
        text = inner.render(cli=True) if isinstance(inner, CertifyNetError) else str(message)
        print(f"warning: {one_line(text)}", file=stream)
    else:
        stream.write(warnings.formatwarning(message, category, filename, lineno, line))


class _ConsoleHandler(logging.Handler):
    """The library's log records (`logging.getLogger("certifynet...")`, INFO and up) as bare lines on stderr."""

    def emit(self, record):
        try:  # a message naming arguments as fields (a CertifyNetError) is spelled with the CLI's flags
            text = record.msg.render(cli=True) if isinstance(record.msg, CertifyNetError) else record.getMessage()
            print(text, file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never break a command
            self.handleError(record)


@contextlib.contextmanager
def console_diagnostics():
    """While a command runs: every certifynet warning is printed (as one line, each time it is raised), and the
    library's informational log lines (load summaries, resume notes) go to stderr. Python users of the library
    see neither unless they configure `warnings`/`logging` themselves. Re-entrant: a command run by another
    (the quickstart runs each stage in-process) prints each line once."""
    logger = logging.getLogger("certifynet")
    if any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        yield
        return
    handler, level, propagate = _ConsoleHandler(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with warnings.catch_warnings():
        warnings.simplefilter("always", CertifyNetWarning)
        warnings.showwarning = _show_warning
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
