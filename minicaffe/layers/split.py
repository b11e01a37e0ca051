"""Caffe's plumbing layers ``Split`` and ``Silence``.

``Split``: one bottom -> N tops, each a copy of the bottom (Caffe shares the memory; a copy keeps
a later in-place layer on one branch from changing another); its backward sums the tops' diffs,
which is how Caffe accumulates the gradient of a blob read by several layers (the pycaffe net
inserts Split layers where Caffe's insert_splits.cpp does). ``Silence``: consumes its bottoms,
produces nothing (its backward gives zero diffs).
"""
from __future__ import annotations

import numpy as np

from .base import Layer, register


@register("Split")
class Split(Layer):
    def setup(self, shapes):
        return [tuple(shapes[0])] * len(self.tops)

    def forward(self, bottoms, params, backend, inplace=False):
        return [np.array(bottoms[0], copy=True) for _ in self.tops]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        total = np.array(top_diffs[0], dtype=np.float32, copy=True)
        for d in top_diffs[1:]:
            total += d
        return [total], []


@register("Silence")
class Silence(Layer):
    def setup(self, shapes):
        return []

    def forward(self, bottoms, params, backend, inplace=False):
        return []

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return [np.zeros(np.shape(b), np.float32) for b in bottoms], []
