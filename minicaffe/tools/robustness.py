"""``python -m minicaffe.robustness``: how many of a classifier's predictions survive FGSM and iterated FGSM.

The command: it parses the arguments and checks ``--eps`` and the ``--png`` path before any work,
loads the model, attacks its clean top-1 predictions on real photos (scikit-image /
scikit-learn sample images by default, or image files) with :mod:`minicaffe.attacks`, prints one
JSON line per epsilon on stderr as it goes and then a Markdown table of the surviving fraction per
epsilon, and with ``--png`` writes original / perturbation / adversarial for ``--png-eps``. Exit
status 0, or 2 with one error line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from ..attacks import input_bounds, predict, sample_photos, save_figure, survival
from ..cli import check_writable
from ..errors import MinicaffeError
from ..runtime import auto_tune

DESCRIPTION = "Can DeCAF be fooled? FGSM and iterated FGSM on input images: ``python -m minicaffe.robustness``."


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minicaffe.robustness", description=DESCRIPTION)
    p.add_argument("images", nargs="*", help="image files (default: scikit-image/scikit-learn sample photos)")
    p.add_argument("--model", default="efficientnet-lite0")
    p.add_argument("--logits", default=None, help="score blob (default: the model's 'logits' alias)")
    p.add_argument("--eps", default="0,0.5,1,2,4", help="comma-separated pixel levels (0..255 scale)")
    p.add_argument("--steps", type=int, default=3, help="iterations of the iterated FGSM")
    p.add_argument("--png", default=None, help="write original/perturbation/adversarial figure here")
    p.add_argument("--png-eps", type=float, default=1.0, help="the eps the figure shows; must be one of --eps")
    return p


def check_figure_path(path):
    """--png: a writable place and a format matplotlib writes, checked before the attacks run."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    check_writable(path, "--png")
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    formats = FigureCanvasAgg.get_supported_filetypes()
    if ext not in formats:
        raise MinicaffeError(f"--png {path}: unknown figure extension {('.' + ext) if ext else '(none)'!r}; "
                             f"use one of {', '.join('.' + f for f in sorted(formats))}")


def parse_eps(text, png_eps=None):
    """--eps text -> list of floats; with ``png_eps`` (--png given) it must be one of them."""
    try:
        eps = [float(e) for e in text.split(",") if e.strip()]
    except ValueError:
        raise MinicaffeError(f"--eps {text!r}: expected comma-separated pixel levels, e.g. --eps 0,0.5,1,2") from None
    if not eps or any(not np.isfinite(e) or e < 0 for e in eps):
        raise MinicaffeError(f"--eps {text!r}: expected one or more finite pixel levels >= 0, e.g. --eps 0,1,2")
    if png_eps is not None and png_eps not in eps:
        raise MinicaffeError(f"--png-eps {png_eps:g} is not among --eps {','.join(f'{e:g}' for e in eps)}: the figure "
                             f"shows one attacked eps; add it to --eps or choose --png-eps from those")
    return eps


def main(argv=None):
    from ..models import class_names, get_model
    from ..preprocess import preprocess_image
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    args = build_parser().parse_args(argv)
    eps_list = parse_eps(args.eps, args.png_eps if args.png else None)
    if args.png:
        check_figure_path(args.png)
    spec = get_model(args.model)
    net = spec.load(backend="cpu")
    logits = args.logits or spec.aliases.get("logits")
    if logits is None:
        raise MinicaffeError(f"model {spec.name}: give --logits (the blob before the softmax)")
    if args.images:
        names, srcs = list(args.images), list(args.images)
    else:
        names, srcs = sample_photos()
    x = np.stack([preprocess_image(s, spec.preprocessing) for s in srcs])
    unit, lo, hi = input_bounds(spec.preprocessing)
    clean = predict(net, x, logits)
    cls = class_names(spec.labels)
    rows, advs = survival(net, x, clean, eps_list, logits, unit, lo, hi, steps=args.steps,
                          on_row=lambda row: print(json.dumps(row), file=sys.stderr))
    print(f"| eps (pixel levels) | FGSM: top-1 unchanged | I-FGSM ({args.steps} steps): top-1 unchanged |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['eps']:g} | {r['fgsm']:.2f} | {r['ifgsm']:.2f} |")
    if args.png:
        adv, pred = advs[("fgsm", args.png_eps)]
        save_figure(args.png, x, adv, clean, pred, names, cls, spec.preprocessing, args.png_eps)
    return 0
