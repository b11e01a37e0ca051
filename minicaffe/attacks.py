"""Can DeCAF be fooled? FGSM and iterated FGSM on input images: the library under
``python -m minicaffe.robustness`` (:mod:`minicaffe.tools.robustness`).

``fgsm(net, x, labels, eps)`` moves each preprocessed input ``x: (N, C, H, W)`` by
``eps * sign(d loss / d x)`` (Goodfellow et al. 2015), the loss being softmax cross-entropy of the
classifier scores (``logits`` blob) against ``labels``; ``steps > 1`` is the iterated version
(Kurakin et al. 2017: steps of ``alpha``, projected back into the L-infinity ball of radius
``eps`` after each). ``eps`` is given in *pixel levels* (0..255) and converted to the net's input
units with the model's preprocessing (``std_values`` / ``input_scale``, :func:`input_bounds`);
adversarial images are kept inside the valid pixel range. Gradients come from ``net.backward``
(TRAIN bookkeeping, Dropout kept at its TEST behaviour). :func:`survival` tells how many top-1
predictions survive each epsilon, :func:`save_figure` draws original / perturbation /
adversarial, :func:`sample_photos` gives the real photos shipped with scikit-image and
scikit-learn. It does not implement other attacks (PGD with random starts, C&W) or defences,
attacks one classifier, not an ensemble, parses no arguments and prints nothing.
"""
from __future__ import annotations

import warnings

import numpy as np

from .errors import MinicaffeWarning


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
            warnings.warn(f"skipping scikit-image sample {n!r}: {e}", MinicaffeWarning, stacklevel=2)
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


def survival(net, x, labels, eps_list, logits, unit, lo, hi, steps=3, on_row=None):
    """For each eps (pixel levels): FGSM and iterated FGSM (``steps``) on ``x`` -> (rows, adversarials).

    rows: [{"eps", "fgsm", "ifgsm"}], the fraction of images whose top-1 prediction stayed ``labels``
    under each attack; adversarials: {(kind, eps): (adversarial x, predictions)}. ``on_row(row)`` is
    called as each eps finishes (progress).
    """
    rows, advs = [], {}
    for eps in eps_list:
        row = {"eps": eps}
        for kind, n in (("fgsm", 1), ("ifgsm", steps)):
            adv = fgsm(net, x, labels, eps, logits, unit, lo, hi, steps=n)
            pred = predict(net, adv, logits)
            row[kind] = float(np.mean(pred == labels))
            advs[(kind, eps)] = (adv, pred)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows, advs


def save_figure(path, x, adv, clean, pred, names, class_names, spec, eps, kind="fgsm"):
    """Original / amplified perturbation / adversarial for the first (at most) 4 images -> an image file
    (any format matplotlib writes). clean, pred: top-1 classes before and after the attack."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = min(4, len(x))
    fig, axs = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for i in range(n):
        d = adv[i] - x[i]
        amp = np.abs(d).max() or 1.0
        axs[i, 0].imshow(to_display(x[i], spec))
        axs[i, 0].set_title(f"{names[i]}: {class_names[clean[i]].split(',')[0]}", fontsize=8)
        axs[i, 1].imshow(np.clip((d / amp).transpose(1, 2, 0) * 0.5 + 0.5, 0, 1))
        axs[i, 1].set_title(f"perturbation, amplified (eps {eps:g} px)", fontsize=8)
        axs[i, 2].imshow(to_display(adv[i], spec))
        axs[i, 2].set_title(f"{kind.upper()}: {class_names[pred[i]].split(',')[0]}", fontsize=8)
        for a in axs[i]:
            a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
