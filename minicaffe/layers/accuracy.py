"""Top-k classification accuracy (Caffe type ``Accuracy``), an evaluation layer.

Shapes: scores ``x: (N, C)`` (or ``(N, C, H, W)``, one prediction per position, classes on
``accuracy_param.axis``), labels with one value per position -> top 0: the 0-d accuracy; an
optional top 1: the per-class accuracy ``(C,)``. A position counts as right when fewer than
``top_k`` classes score at least the true class's score besides the true class itself (Caffe's
accuracy_layer.cpp: ties count against the prediction); ``ignore_label`` positions are skipped.
It has no backward (Caffe's has none either).
"""
from __future__ import annotations

import numpy as np

from .base import Layer, register


def accuracy_reference(x, labels, axis=1, top_k=1, ignore_label=None):
    """x: (outer, C, inner) or any shape with classes on ``axis``; labels: one per position ->
    (accuracy: float, per_class: (C,) float32)."""
    x = np.asarray(x, dtype=np.float32)
    C = x.shape[axis]
    xm = np.moveaxis(x, axis, -1).reshape(-1, C)
    lab = np.asarray(labels).reshape(-1).astype(np.int64)
    if lab.size != xm.shape[0]:
        raise ValueError(f"{lab.size} labels for {xm.shape[0]} predictions")
    keep = np.ones(lab.size, bool) if ignore_label is None else lab != ignore_label
    xm, lab = xm[keep], lab[keep]
    if lab.size and (lab.min() < 0 or lab.max() >= C):
        raise ValueError(f"labels must lie in [0, {C}), got {lab.min()}..{lab.max()}")
    true = xm[np.arange(lab.size), lab]
    better = (xm >= true[:, None]).sum(axis=1) - 1
    right = better < top_k
    acc = float(right.sum()) / max(lab.size, 1)
    per_class = np.zeros(C, np.float32)
    counts = np.bincount(lab, minlength=C)
    hits = np.bincount(lab[right], minlength=C)
    nz = counts > 0
    per_class[nz] = hits[nz] / counts[nz]
    return acc, per_class


@register("Accuracy")
class Accuracy(Layer):
    """bottoms: [scores, label] -> [accuracy] (and [per-class accuracy] with a second top)."""

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        if len(self.bottoms) != 2:
            raise self.err("needs two bottoms: scores and labels")
        p = self.pget("accuracy_param")
        self.top_k = int(p.get("top_k", 1))
        self.axis = int(p.get("axis", 1))
        self.ignore_label = p.get("ignore_label")

    def setup(self, shapes):
        n = len(shapes[0])
        self._ax = self.axis if self.axis >= 0 else n + self.axis
        C = shapes[0][self._ax]
        if self.top_k > C:
            raise self.err(f"top_k {self.top_k} is larger than the number of classes {C}")
        positions = int(np.prod(shapes[0])) // C
        if int(np.prod(shapes[1])) != positions:
            raise self.err(f"label shape {shapes[1]} does not give one label per prediction of {shapes[0]}")
        return [()] + ([(C,)] if len(self.tops) > 1 else [])

    def forward(self, bottoms, params, backend, inplace=False):
        acc, per_class = accuracy_reference(np.asarray(bottoms[0]), np.asarray(bottoms[1]), self._ax,
                                            self.top_k, self.ignore_label)
        out = [np.asarray(acc, np.float32)]
        return out + ([per_class] if len(self.tops) > 1 else [])
