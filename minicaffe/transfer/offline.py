"""Real labelled images that are available offline, for demonstrating transfer without the paper's data.

* :func:`load_lfw_subset`: scikit-image's ``lfw_subset`` — 100 face crops and 100 non-face crops
  (background patches from the same photos), 25x25 grey; classes ``face`` / ``non-face``.
* :func:`load_fashion_mnist`: Fashion-MNIST (28x28 grey product photos, 10 classes) read from
  the IDX files of the Debian package ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist``; ``$FASHION_MNIST_DIR`` overrides), a fixed subset of
  ``per_class`` images per class drawn with a seed from the official *test* file (10k images;
  any subset of it is unseen by an ImageNet-trained net), or with ``split="train"`` from the
  60k training file: a development set, disjoint from the reported test-file subset, on which
  feature configurations are chosen.

Images are returned as (H, W) uint8 arrays (items :func:`~minicaffe.transfer.features.compute_features`
accepts; grey is replicated to RGB there). This module does not download anything.
"""
from __future__ import annotations

import gzip
import os
import pathlib

import numpy as np

from .protocols import Dataset, DatasetError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)


def load_lfw_subset() -> Dataset:
    """-> Dataset of 200 (25, 25) uint8 arrays; label 0 = face (first 100), 1 = non-face."""
    from skimage.data import lfw_subset
    imgs = np.asarray(lfw_subset())
    if imgs.dtype != np.uint8:                # older scikit-image returned floats in [0, 1]
        imgs = np.round(np.clip(imgs, 0, 1) * 255).astype(np.uint8)
    labels = np.r_[np.zeros(100, int), np.ones(100, int)]
    return Dataset(list(imgs), labels, ["face", "non-face"], "skimage.data.lfw_subset")


def fashion_mnist_dir():
    """The folder with the Fashion-MNIST IDX files, or None."""
    cands = [os.environ["FASHION_MNIST_DIR"]] if os.environ.get("FASHION_MNIST_DIR") else []
    cands += list(FASHION_DIRS)
    for d in cands:
        if (pathlib.Path(d) / "t10k-images-idx3-ubyte.gz").is_file():
            return pathlib.Path(d)
    return None


def _read_idx(path):
    """IDX (big-endian; magic 0x0000 08 NDIM) gz file -> uint8 ndarray."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise DatasetError(f"{path}: not a uint8 IDX file")
    nd = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(nd))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(shape)


def load_fashion_mnist(per_class=60, seed=0, split="t10k") -> Dataset:
    """-> Dataset of 10 * per_class (28, 28) uint8 arrays (a seeded subset of the IDX file
    ``split``: ``"t10k"`` or ``"train"``); ``meta["index"]`` holds the rows drawn."""
    if split not in ("t10k", "train"):
        raise ValueError(f"Fashion-MNIST split must be 't10k' or 'train', got {split!r}")
    d = fashion_mnist_dir()
    if d is None:
        raise DatasetError("Fashion-MNIST not found (install the Debian package dataset-fashion-mnist, "
                           "or set FASHION_MNIST_DIR to a folder with t10k-images-idx3-ubyte.gz)")
    imgs = _read_idx(d / f"{split}-images-idx3-ubyte.gz")
    labels = _read_idx(d / f"{split}-labels-idx1-ubyte.gz").astype(int)
    rng = np.random.default_rng(seed)
    pick = np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == c), per_class, replace=False))
                           for c in range(10)])
    return Dataset([imgs[i] for i in pick], labels[pick], list(FASHION_CLASSES), str(d),
                   {"index": pick})
