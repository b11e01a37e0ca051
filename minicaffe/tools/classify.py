"""``python -m minicaffe.classify IMAGE...``: top-k ImageNet labels with probabilities.

The command: it parses the arguments, runs :func:`minicaffe.classification.classify` and prints
each image's path followed by its top-k classes (probability, name, index). An image that cannot
be read is reported as one error line and the others are still classified (exit status 1 then);
a usage error is one line, exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from ..classification import classify
from ..errors import MinicaffeError
from ..models import DEFAULT_MODEL, MODELS
from ..runtime import auto_tune


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minicaffe.classify",
                                description="Print the top-k ImageNet classes of each image.")
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(MODELS),
                   help=f"registered model (default {DEFAULT_MODEL}, works offline)")
    p.add_argument("--backend", default="cpu", choices=("numpy", "cpu", "cuda"))
    p.add_argument("-k", "--top", type=int, default=5, help="how many classes to print (default 5)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    if args.top < 1 or args.batch < 1:
        raise MinicaffeError("--top and --batch must be >= 1")
    failed = []

    def on_error(img, e):
        failed.append(img)
        print(f"minicaffe: error: {e}", file=sys.stderr)

    results = classify(args.images, args.model, args.backend, args.top, args.batch, on_error=on_error)
    for img, res in zip(args.images, results):
        if res is None:
            continue
        print(img)
        for prob, k, name in res:
            print(f"  {prob:7.4f}  {name} ({k})")
    return 1 if failed else 0
