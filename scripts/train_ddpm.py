#!/usr/bin/env python
"""Thin shell over certifynet.cli.train_ddpm (see --help)."""
import os
import sys

try:
    import certifynet  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from certifynet.cli.train_ddpm import main

raise SystemExit(main())
