"""Flatten (Caffe type ``Flatten``) and the net's ``Input`` layer: pure shape bookkeeping.

Flatten: ``x: (N, C, H, W)`` -> ``(N, C*H*W)`` for the default ``axis: 1, end_axis: -1``,
row-major (C, H, W) order, as Caffe. Reshaping needs no kernel on any backend: the reference,
cpu and cuda paths are the same ``reshape`` of a contiguous array (device arrays included).
Input: declares the data blob and its shape; the net writes the user's array into it.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, register


def flatten_reference(x, axis=1, end_axis=-1):
    shp = tuple(x.shape)
    end = end_axis if end_axis >= 0 else len(shp) + end_axis
    new = shp[:axis] + (int(np.prod(shp[axis:end + 1])),) + shp[end + 1:]
    return x.reshape(new)


flatten_cpu = flatten_cuda = flatten_reference


@register("Flatten")
class Flatten(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("flatten_param")
        self.axis, self.end_axis = p.get("axis", 1), p.get("end_axis", -1)

    def setup(self, shapes):
        shp = tuple(shapes[0])
        n = len(shp)
        a = self.axis if self.axis >= 0 else n + self.axis
        e = self.end_axis if self.end_axis >= 0 else n + self.end_axis
        if not (0 <= a <= e < n):
            raise self.err(f"axis {self.axis}..{self.end_axis} invalid for shape {shp}")
        self._a, self._e = a, e
        return [shp[:a] + (int(np.prod(shp[a:e + 1])),) + shp[e + 1:]]

    def forward(self, bottoms, params, backend, inplace=False):
        return [flatten_reference(bottoms[0], self._a, self._e)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _flatten_layer_backward(self, top_diffs, bottoms, tops, params, backend)


@register("Input")
class Input(Layer):
    """Declares the data blobs; ``input_param { shape { dim: ... } }`` (one shape per top)."""

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        shapes = self.pget("input_param").getall("shape")
        self.shapes = [tuple(s.getall("dim")) for s in shapes]
        if len(self.shapes) == 1 and len(self.tops) > 1:
            self.shapes = self.shapes * len(self.tops)
        if len(self.shapes) != len(self.tops):
            raise self.err(f"{len(self.tops)} tops but {len(self.shapes)} input shapes")

    def setup(self, shapes):
        return list(self.shapes)

    def forward(self, bottoms, params, backend, inplace=False):  # the net fills input blobs
        raise RuntimeError("Input layers are not run")


# ---------------------------------------------------------------------------------------------
# backward (training)


def flatten_backward_reference(dy, bottom_shape):
    """dy: the flattened shape -> the bottom's shape (the same row-major order)."""
    return dy.reshape(bottom_shape)


flatten_backward_cpu = flatten_backward_reference


def _flatten_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    return [flatten_backward_reference(top_diffs[0], bottoms[0].shape)], []


