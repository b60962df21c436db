"""Command-line entry points. Each module `certifynet.cli.<stage>` has `build_parser()` and `main(argv=None)`;
`scripts/<stage>.py` and the `certifynet-<stage>` console scripts are thin shells over them."""
from __future__ import annotations

import functools
import sys

from certifynet.errors import CertifyNetError


def one_line_errors(main):
    """Run `main(argv)`; print user errors as one line `error: ...` on stderr and exit 2 (no traceback)."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            rc = main(argv)
        except CertifyNetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except FileNotFoundError as e:
            print(f"error: file not found: {e.filename or e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        return 0 if rc is None else int(rc)

    return wrapper

