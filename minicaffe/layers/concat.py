"""Concat (Caffe type ``Concat``): join blobs along an axis (default 1, channels; legacy ``concat_dim``).

Shapes: ``xs[i]: (N, C_i, H, W)`` -> ``(N, sum C_i, H, W)`` for axis 1. Implementations:
``concat_reference`` (NumPy), ``concat_cpu`` (one preallocated output filled by slices — memory
copies, which NumPy already does at bandwidth, so no Numba kernel would be faster),
``concat_cuda`` (a copy kernel per input into its slice of the output).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ..backend import blocks, device_empty
from .base import Layer, register


def concat_reference(xs, axis=1):
    return np.concatenate(xs, axis=axis)


def concat_cpu(xs, axis=1):
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    y = np.empty(shape, dtype=np.float32)
    off = 0
    idx = [slice(None)] * len(shape)
    for x in xs:
        idx[axis] = slice(off, off + x.shape[axis])
        y[tuple(idx)] = x
        off += x.shape[axis]
    return y


@cuda.jit
def _copy_slice(x, y, off):
    # x: (outer, Cx, inner) into y: (outer, Cy, inner) at channel offset off
    t = cuda.grid(1)
    O, C, I = x.shape
    if t < O * C * I:
        i = t % I
        c = (t // I) % C
        o = t // (I * C)
        y[o, off + c, i] = x[o, c, i]


def concat_cuda(xs, axis=1):
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    y = device_empty(shape)
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    y3 = y.reshape(outer, shape[axis], inner)
    off = 0
    for x in xs:
        x3 = x.reshape(outer, x.shape[axis], inner)
        _copy_slice[blocks(x.size, 256), 256](x3, y3, off)
        off += x.shape[axis]
    return y


@register("Concat")
class Concat(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("concat_param")
        self.axis = p.get("axis", p.get("concat_dim", 1))

    def setup(self, shapes):
        n = len(shapes[0])
        ax = self.axis if self.axis >= 0 else n + self.axis
        if not 0 <= ax < n:
            raise self.err(f"axis {self.axis} out of range for shape {shapes[0]}")
        for s in shapes[1:]:
            if len(s) != n or any(a != b for i, (a, b) in enumerate(zip(s, shapes[0])) if i != ax):
                raise self.err(f"inputs {[tuple(x) for x in shapes]} differ outside the concat axis {ax}")
        self._ax = ax
        out = list(shapes[0])
        out[ax] = sum(s[ax] for s in shapes)
        return [tuple(out)]

    def forward(self, bottoms, params, backend, inplace=False):
        f = {"numpy": concat_reference, "cpu": concat_cpu, "cuda": concat_cuda}[backend]
        return [f(bottoms, self._ax)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _concat_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# backward (training): the gradient of a concatenation is the matching slice for each input


def concat_backward_reference(dy, sizes, axis=1):
    """dy: (N, sum C_i, H, W), sizes: [C_i] -> [dx_i] (copies of the slices)."""
    return [np.ascontiguousarray(a) for a in np.split(dy, np.cumsum(sizes)[:-1], axis=axis)]


concat_backward_cpu = concat_backward_reference  # memory copies: NumPy already runs at bandwidth


def _concat_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    return concat_backward_reference(top_diffs[0], [b.shape[self._ax] for b in bottoms], self._ax), []


