"""Hand-crafted baselines that DeCAF features are compared against: raw pixels and HOG + colour.

* ``raw``: the image resized (bilinear, aspect ratio not kept) to ``size x size`` RGB (or at its
  native size), flattened H, W, C-major to ``size*size*3`` values in [0, 1]. The weakest
  sensible baseline.
* ``hog``: HOG (scikit-image ``skimage.feature.hog``: 9 orientations, 8x8-pixel cells, 2x2-cell
  blocks, L2-Hys) of the grey image resized to ``size x size``, concatenated with a joint RGB
  colour histogram (4 x 4 x 4 = 64 bins, L1-normalised). This stands in for the paper's SURF /
  bag-of-visual-words pipelines (the Office baseline in DeCAF is SURF BoW; we do not build a
  codebook) and for GIST-like global descriptors: a fixed, training-free hand-crafted feature.

Both are cheap enough that they are not cached. This module does not learn anything (no
codebook, no PCA) and uses no deep network.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import MinicaffeError
from .features import item_name, load_rgb

BASELINES = ("raw", "hog")

log = logging.getLogger(__name__)   # skipped images (errors="skip"): a warning each


def _resize(rgb, size):
    from PIL import Image
    chans = [np.asarray(Image.fromarray(rgb[:, :, c], mode="F").resize((size, size), 2)) for c in range(3)]
    return np.stack(chans, axis=2)   # (size, size, 3) HWC


def raw_pixels(rgb, size=32):
    """rgb: (H, W, 3) float [0, 255] -> (size*size*3,) float32 in [0, 1]; ``size=None`` keeps the
    native resolution (all images must then share one shape)."""
    small = rgb if size is None else _resize(rgb, size)
    return (small / 255.0).astype(np.float32).ravel()


def hog_colour(rgb, size=64, bins=4):
    """rgb: (H, W, 3) float [0, 255] -> HOG of the grey image ++ (bins**3,) RGB histogram."""
    from skimage.feature import hog
    small = _resize(rgb, size)
    grey = small @ np.array([0.299, 0.587, 0.114], np.float32)    # ITU-R 601 luma
    h = hog(grey, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys",
            feature_vector=True)
    q = np.clip((rgb / 256.0 * bins).astype(int), 0, bins - 1).reshape(-1, 3)
    hist = np.bincount(q[:, 0] * bins * bins + q[:, 1] * bins + q[:, 2], minlength=bins ** 3).astype(np.float32)
    hist /= max(hist.sum(), 1.0)
    return np.concatenate([h.astype(np.float32), hist])


def compute_baseline(images, kind="hog", errors="raise", **kw):
    """images: N items -> (N, D) float32 baseline features; ``errors="skip"`` gives NaN rows."""
    fn = {"raw": raw_pixels, "hog": hog_colour}.get(kind)
    if fn is None:
        raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")
    rows, bad = [], []
    for i, item in enumerate(images):
        try:
            rows.append(fn(load_rgb(item), **kw))
        except MinicaffeError as e:
            if errors == "raise":
                raise
            log.warning("minicaffe: skipping %s: %s", item_name(item), e)
            rows.append(None)
            bad.append(i)
    d = next((r.size for r in rows if r is not None), 0)
    return np.stack([r if r is not None else np.full(d, np.nan, np.float32) for r in rows]) if rows \
        else np.zeros((0, d), np.float32)
