"""Shared command-line plumbing: one clear error line instead of a traceback.

Every ``python -m minicaffe.*`` entry point wraps its ``main`` with :func:`run`: a
:class:`MinicaffeError` (bad file, bad argument, missing backend) becomes ``minicaffe: error:
<message>`` on stderr and exit status 2; Ctrl-C exits 130. Other exceptions are bugs and keep
their traceback.
"""
from __future__ import annotations

import sys

from .errors import MinicaffeError


def run(main, argv=None):
    try:
        rc = main(argv)
    except MinicaffeError as e:
        print(f"minicaffe: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minicaffe: interrupted", file=sys.stderr)
        return 130
    return 0 if rc is None else rc


def exit_with(main):
    sys.exit(run(main))
