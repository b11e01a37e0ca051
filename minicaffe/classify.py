"""``python -m minicaffe.classify``: the command's entry point, and the old import path of :func:`classify`.

The command lives in :mod:`minicaffe.tools.classify`, the classifying in :mod:`minicaffe.classification`;
this module runs the one and re-exports both, so that ``python -m minicaffe.classify`` and
``from minicaffe.classify import classify`` keep working.
"""
from .classification import classify
from .cli import exit_with
from .tools.classify import build_parser, main

__all__ = ["build_parser", "classify", "main"]

if __name__ == "__main__":
    exit_with(main)
