"""``python -m minicaffe.weights list|fetch NAME``: the command's entry point, and the old import path.

The command lives in :mod:`minicaffe.tools.weights`, the fetching, verifying and converting in
:mod:`minicaffe.weight_files`; this module runs the one and re-exports both, so that
``python -m minicaffe.weights`` and ``from minicaffe.weights import fetch, ensure_weights`` keep working.
"""
from .cli import exit_with
from .tools.weights import build_parser, fetch, main, status
from .weight_files import (
    cache_dir,
    check_converted,
    download,
    ensure_weights,
    fetch_weights,
    package_checkpoint,
    refetch_hint,
    weights_dirs,
)

__all__ = ["build_parser", "cache_dir", "check_converted", "download", "ensure_weights", "fetch", "fetch_weights",
           "main", "package_checkpoint", "refetch_hint", "status", "weights_dirs"]

if __name__ == "__main__":
    exit_with(main)
