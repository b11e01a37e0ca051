"""Can DeCAF be fooled? FGSM and iterated FGSM on input images: ``python -m minicaffe.robustness``.

``fgsm(net, x, labels, eps)`` moves each preprocessed input ``x: (N, C, H, W)`` by
``eps * sign(d loss / d x)`` (Goodfellow et al. 2015), the loss being softmax cross-entropy of the
classifier scores (``logits`` blob) against ``labels``; ``steps > 1`` is the iterated version
(Kurakin et al. 2017: steps of ``alpha``, projected back into the L-infinity ball of radius
``eps`` after each). ``eps`` is given in *pixel levels* (0..255) and converted to the net's input
units with the model's preprocessing (``std_values`` / ``input_scale``); adversarial images are
kept inside the valid pixel range. Gradients come from ``net.backward`` (TRAIN bookkeeping,
Dropout kept at its TEST behaviour). The CLI attacks the full pretrained classifier on real photos
(scikit-image / scikit-learn sample images by default, or image files), using its clean top-1
prediction as the label, and reports how many predictions survive per epsilon; it writes a PNG
of original / perturbation / adversarial. It does not implement other attacks (PGD with random
starts, C&W) or defences, and attacks one classifier, not an ensemble.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .errors import MinicaffeError


def input_bounds(spec):
    """Preprocessing -> (per-channel input units per pixel level (3,), low (3,), high (3,)) in the
    net's channel order; a mean image is summarised by its per-channel mean (bounds approximate)."""
    if spec.mean_image is not None:
        from .preprocess import mean_image
        mean = mean_image(spec).reshape(3, -1).mean(axis=1)
    else:
        # mean_values are listed in the net's channel order (BGR for Caffe models), like x
        mean = np.asarray(spec.mean_values if spec.mean_values is not None else (0.0,) * 3, np.float64)
    std = np.asarray(spec.std_values if spec.std_values is not None else (1.0,) * 3, np.float64)
    unit = spec.input_scale / std
    return unit, (0.0 - mean) * unit, (255.0 - mean) * unit


def loss_and_input_grad(net, x, labels, logits):
    """x: (N, C, H, W) -> (per-image loss (N,), predictions (N,), d mean-loss / d x)."""
    from .layers.loss import softmax_loss_backward_cpu, softmax_loss_cpu
    from .train import forward
    net.set_phase("TRAIN")
    for layer in net.layers:       # attack the deployed (TEST-behaviour) classifier
        if layer.type == "Dropout":
            layer.phase = "TEST"
    s = forward(net, x)[logits]
    s2 = np.asarray(s, np.float64).reshape(len(x), -1)
    z = s2 - s2.max(axis=1, keepdims=True)
    per = -(z[np.arange(len(x)), labels] - np.log(np.exp(z).sum(axis=1)))
    _, prob = softmax_loss_cpu(s.reshape(len(x), -1), labels)
    d = softmax_loss_backward_cpu(prob, labels).reshape(s.shape)
    g = net.backward({logits: d})[net.input_names[0]]
    net.set_phase("TEST")
    return per, s2.argmax(axis=1), g


def predict(net, x, logits):
    """x: (N, C, H, W) -> top-1 class per image (a plain TEST-phase forward, no gradient)."""
    net.set_phase("TEST")
    s = net.forward(x, fetch=[logits])[logits]
    return np.asarray(s).reshape(len(x), -1).argmax(axis=1)


def fgsm(net, x, labels, eps, logits, unit, lo, hi, steps=1, alpha=None):
    """-> adversarial x (N, C, H, W). eps, alpha in pixel levels; unit/lo/hi from :func:`input_bounds`."""
    u = np.asarray(unit, np.float32).reshape(1, -1, 1, 1)
    lo = np.asarray(lo, np.float32).reshape(1, -1, 1, 1)
    hi = np.asarray(hi, np.float32).reshape(1, -1, 1, 1)
    labels = np.asarray(labels, np.int64)
    if eps == 0:
        return x.copy()
    alpha = eps if steps == 1 else (alpha or 1.25 * eps / steps)
    adv = x.copy()
    for _ in range(steps):
        _, _, g = loss_and_input_grad(net, adv, labels, logits)
        adv = adv + np.float32(alpha) * u * np.sign(g)
        adv = np.clip(adv, x - np.float32(eps) * u, x + np.float32(eps) * u)   # the eps ball
        adv = np.clip(adv, lo, hi)                                             # valid pixels
    return adv.astype(np.float32)


def sample_photos():
    """-> (names, list of (H, W, 3) uint8 RGB) real photos shipped with scikit-image / scikit-learn."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images
    names, imgs = [], []
    for n in ("astronaut", "chelsea", "coffee", "rocket"):
        f = getattr(sd, n, None)
        if f is None:
            continue
        try:
            im = np.asarray(f())
        except Exception as e:  # noqa: BLE001 - a sample missing from this scikit-image build
            print(f"robustness: skipping scikit-image sample {n!r}: {e}", file=sys.stderr)
            continue
        if im.ndim == 3 and im.shape[2] >= 3:
            names.append(n)
            imgs.append(np.ascontiguousarray(im[:, :, :3]))
    sk = load_sample_images()
    for n, im in zip(sk.filenames, sk.images):
        names.append(n.rsplit("/", 1)[-1])
        imgs.append(im)
    return names, imgs


def to_display(x, spec):
    """(C, H, W) net input -> (H, W, 3) float RGB in [0, 1] for plotting."""
    unit, lo, _ = input_bounds(spec)
    px = (x / unit.reshape(-1, 1, 1)) - lo.reshape(-1, 1, 1) / unit.reshape(-1, 1, 1)
    px = px.transpose(1, 2, 0)
    if spec.channel_order == "BGR":
        px = px[:, :, ::-1]                     # BGR -> RGB for display
    return np.clip(px / 255.0, 0, 1)


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minicaffe.robustness", description=__doc__.split("\n\n")[0])
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
    import os

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from .cli import check_writable
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
    from .models import class_names, get_model
    from .preprocess import preprocess_image
    from .runtime import auto_tune
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
    rows = []
    advs = {}
    for eps in eps_list:
        row = {"eps": eps}
        for kind, steps in (("fgsm", 1), ("ifgsm", args.steps)):
            adv = fgsm(net, x, clean, eps, logits, unit, lo, hi, steps=steps)
            pred = predict(net, adv, logits)
            row[kind] = float(np.mean(pred == clean))
            advs[(kind, eps)] = (adv, pred)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(f"| eps (pixel levels) | FGSM: top-1 unchanged | I-FGSM ({args.steps} steps): top-1 unchanged |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['eps']:g} | {r['fgsm']:.2f} | {r['ifgsm']:.2f} |")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        key = ("fgsm", args.png_eps)
        adv, pred = advs[key]
        n = min(4, len(x))
        fig, axs = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
        for i in range(n):
            d = adv[i] - x[i]
            amp = np.abs(d).max() or 1.0
            axs[i, 0].imshow(to_display(x[i], spec.preprocessing))
            axs[i, 0].set_title(f"{names[i]}: {cls[clean[i]].split(',')[0]}", fontsize=8)
            axs[i, 1].imshow(np.clip((d / amp).transpose(1, 2, 0) * 0.5 + 0.5, 0, 1))
            axs[i, 1].set_title(f"perturbation, amplified (eps {key[1]:g} px)", fontsize=8)
            axs[i, 2].imshow(to_display(adv[i], spec.preprocessing))
            axs[i, 2].set_title(f"{key[0].upper()}: {cls[pred[i]].split(',')[0]}", fontsize=8)
            for a in axs[i]:
                a.axis("off")
        fig.tight_layout()
        fig.savefig(args.png, dpi=80)
    return 0


if __name__ == "__main__":
    from .cli import exit_with
    exit_with(main)
