"""``python -m minicaffe.pycaffe SCRIPT.py [ARGS]``: run an unchanged pycaffe script on minicaffe.

``import caffe`` inside the script (and ``caffe.io``, ``caffe.proto.caffe_pb2``...) resolves to
:mod:`minicaffe.pycaffe`; ``sys.argv`` is ``[SCRIPT.py, ARGS...]`` and the script's folder is
first on ``sys.path``, as with ``python SCRIPT.py``. ``python -m minicaffe.pycaffe -m MODULE
[ARGS]`` runs a module instead (``-m pytest``, ``-m unittest``). Errors of the script itself
keep their traceback (they are the script's); a missing script is one error line, exit 2.
"""
from __future__ import annotations

import os
import runpy
import sys

from ..runtime import auto_tune

USAGE = "usage: python -m minicaffe.pycaffe SCRIPT.py [ARGS...] | -m MODULE [ARGS...]"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    auto_tune()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    from . import install
    install()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(f"minicaffe: error: -m needs a module name\n{USAGE}", file=sys.stderr)
            return 2
        sys.argv = [argv[1]] + argv[2:]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    script = argv[0]
    if not os.path.isfile(script):
        print(f"minicaffe: error: {script}: no such script", file=sys.stderr)
        return 2
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
