"""``python -m minicaffe.robustness``: the command's entry point, and the old import path of the attacks.

The command lives in :mod:`minicaffe.tools.robustness`, FGSM and its helpers in :mod:`minicaffe.attacks`;
this module runs the one and re-exports both, so that ``python -m minicaffe.robustness`` and
``from minicaffe.robustness import fgsm, input_bounds`` keep working.
"""
from .attacks import (
    fgsm,
    input_bounds,
    loss_and_input_grad,
    predict,
    sample_photos,
    save_figure,
    survival,
    to_display,
)
from .cli import exit_with
from .tools.robustness import build_parser, check_figure_path, main, parse_eps

__all__ = ["build_parser", "check_figure_path", "fgsm", "input_bounds", "loss_and_input_grad", "main", "parse_eps",
           "predict", "sample_photos", "save_figure", "survival", "to_display"]

if __name__ == "__main__":
    exit_with(main)
