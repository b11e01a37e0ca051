"""``python -m minicaffe.finetune``: the command's entry point, and the old import path of fine-tuning.

The command lives in :mod:`minicaffe.tools.finetune`, the net surgery, cached features and SGD in
:mod:`minicaffe.finetuning`; this module runs the one and re-exports both, so that
``python -m minicaffe.finetune`` and ``from minicaffe.finetune import build_finetune_net, train`` keep
working.
"""
from .cli import exit_with
from .finetuning import (
    NEW_LAYER_STD,
    build_finetune_net,
    cached_cut_features,
    cut_blob,
    forward_from,
    load_base,
    load_images,
    predict,
    replace_num_output,
    train,
)
from .tools.finetune import build_parser, main

__all__ = ["NEW_LAYER_STD", "build_finetune_net", "build_parser", "cached_cut_features", "cut_blob", "forward_from",
           "load_base", "load_images", "main", "predict", "replace_num_output", "train"]

if __name__ == "__main__":
    exit_with(main)
