"""``python -m minicaffe.check``: the command's entry point, and the old import path of the comparison.

The command lives in :mod:`minicaffe.tools.check`, the blob-by-blob comparison in
:mod:`minicaffe.comparison`; this module runs the one and re-exports both, so that
``python -m minicaffe.check`` and ``from minicaffe.check import compare_blob, run_check`` keep working.
"""
from .cli import exit_with
from .comparison import (
    RANDOM_SCALE,
    Row,
    compare_blob,
    compare_blobs,
    format_table,
    load_images,
    load_npy,
    random_input,
    run_check,
    stored_input,
    verdict,
)
from .tools.check import build_parser, main, make_input, split_against

__all__ = ["RANDOM_SCALE", "Row", "build_parser", "compare_blob", "compare_blobs", "format_table", "load_images",
           "load_npy", "main", "make_input", "random_input", "run_check", "split_against", "stored_input",
           "verdict"]

if __name__ == "__main__":
    exit_with(main)
