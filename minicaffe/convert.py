"""``python -m minicaffe.convert``: the command's entry point, and the old import path.

The command lives in :mod:`minicaffe.tools.convert`, :func:`convert_caffemodel` in
:mod:`minicaffe.weight_files`; this module runs the one and re-exports both, so that
``python -m minicaffe.convert`` and ``from minicaffe.convert import convert_caffemodel`` keep working.
"""
from .cli import exit_with
from .tools.convert import SUBCOMMANDS, build_parser, build_torch_parser, main, main_torch
from .weight_files import convert_caffemodel

__all__ = ["SUBCOMMANDS", "build_parser", "build_torch_parser", "convert_caffemodel", "main", "main_torch"]

if __name__ == "__main__":
    exit_with(main)
