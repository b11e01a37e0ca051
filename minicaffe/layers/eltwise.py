"""Element-wise combination (Caffe type ``Eltwise``): SUM (with per-input ``coeff``), PROD, MAX.

Shapes: every ``xs[i]`` has the same shape; output the same shape. SUM is what residual nets
(EfficientNet's MBConv skips) use. Implementations: ``eltwise_reference`` (NumPy),
``eltwise_cpu`` (Numba, parallel, one pass per input), ``eltwise_cuda`` (a thread per element).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, njit, prange

from ..backend import SERIAL_BELOW, blocks, device_empty, serial_twin
from .base import Layer, flat_memory, is_channels_last, register

PROD, SUM, MAX = 0, 1, 2


def eltwise_reference(xs, op=SUM, coeffs=None):
    if op == SUM:
        coeffs = coeffs or [1.0] * len(xs)
        y = np.zeros_like(xs[0], dtype=np.float32)
        for c, x in zip(coeffs, xs):
            y += np.float32(c) * x
        return y
    if op == PROD:
        y = xs[0].copy()
        for x in xs[1:]:
            y *= x
        return y
    y = xs[0].copy()
    for x in xs[1:]:
        y = np.maximum(y, x)
    return y


@njit(parallel=True, cache=True, nogil=True)
def _combine(y, x, op, c, first):
    for i in prange(y.size):
        if first:
            y[i] = x[i] * c if op == 1 else x[i]
        elif op == 1:
            y[i] += x[i] * c
        elif op == 0:
            y[i] *= x[i]
        else:
            y[i] = max(y[i], x[i])


def eltwise_cpu(xs, op=SUM, coeffs=None):
    coeffs = coeffs or [1.0] * len(xs)
    # all bottoms channels last: combine their memory as it is, the top channels last too
    same = all(is_channels_last(x) for x in xs)
    flats = [flat_memory(x) if same else (np.ascontiguousarray(x, dtype=np.float32).reshape(-1), None) for x in xs]
    y = np.empty(flats[0][0].size, dtype=np.float32)
    combine = _combine_serial if y.size < SERIAL_BELOW else _combine
    for k, (xf, _) in enumerate(flats):
        combine(y, xf, op, np.float32(coeffs[k]), k == 0)
    return flats[0][1](y) if same else y.reshape(xs[0].shape)


_combine_serial = serial_twin(_combine)


@cuda.jit
def _combine_kernel(y, x, op, c, first):
    i = cuda.grid(1)
    if i < y.size:
        if first:
            y[i] = x[i] * c if op == 1 else x[i]
        elif op == 1:
            y[i] += x[i] * c
        elif op == 0:
            y[i] *= x[i]
        else:
            y[i] = max(y[i], x[i])


def eltwise_cuda(xs, op=SUM, coeffs=None):
    coeffs = coeffs or [1.0] * len(xs)
    y = device_empty(xs[0].shape)
    for k, x in enumerate(xs):
        _combine_kernel[blocks(y.size, 256), 256](y.reshape(y.size), x.reshape(x.size), op,
                                                   np.float32(coeffs[k]), k == 0)
    return y


@register("Eltwise")
class Eltwise(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("eltwise_param")
        op = str(p.get("operation", "SUM"))
        self.op = {"PROD": PROD, "SUM": SUM, "MAX": MAX, "0": PROD, "1": SUM, "2": MAX}.get(op)
        if self.op is None:
            raise self.err(f"unknown eltwise operation {op}")
        self.coeffs = [float(c) for c in p.getall("coeff")] or None
        if self.coeffs and (self.op != SUM or len(self.coeffs) != len(self.bottoms)):
            raise self.err("coeff is for SUM only, one per bottom")

    def setup(self, shapes):
        if len(shapes) < 2:
            raise self.err("needs at least two bottoms")
        for s in shapes[1:]:
            if tuple(s) != tuple(shapes[0]):
                raise self.err(f"input shapes differ: {[tuple(x) for x in shapes]}")
        return [tuple(shapes[0])]

    def flops(self, bshapes, tshapes):
        return int(np.prod(tshapes[0])) * len(bshapes)

    def reads_channels_last(self, bottom_shapes):
        return True

    def forward(self, bottoms, params, backend, inplace=False):
        f = {"numpy": eltwise_reference, "cpu": eltwise_cpu, "cuda": eltwise_cuda}[backend]
        return [f(bottoms, self.op, self.coeffs)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _eltwise_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# backward (training)


def eltwise_max_index(xs):
    """xs: list of same-shape arrays -> int array: the input each MAX output came from, by
    Caffe's eltwise_layer.cpp rule (bottom 1 wins a tie with bottom 0; later bottoms must be
    strictly greater)."""
    idx = np.where(xs[0] > xs[1], 0, 1)
    m = np.maximum(xs[0], xs[1])
    for k in range(2, len(xs)):
        upd = xs[k] > m
        idx = np.where(upd, k, idx)
        m = np.where(upd, xs[k], m)
    return idx


def eltwise_backward_reference(dy, xs, op=SUM, coeffs=None):
    """dy: shape S, xs: list of shape-S inputs -> list of dx_i (shape S).

    SUM: coeff_i * dy; PROD: dy times the product of the other inputs (Caffe's default
    ``stable_prod_grad``); MAX: dy where input i was the maximum."""
    if op == SUM:
        coeffs = coeffs or [1.0] * len(xs)
        return [dy * c for c in coeffs]
    if op == PROD:
        out = []
        for i in range(len(xs)):
            g = dy.copy()
            for j, x in enumerate(xs):
                if j != i:
                    g = g * x
            out.append(g)
        return out
    idx = eltwise_max_index(xs)
    return [np.where(idx == i, dy, np.zeros_like(dy)) for i in range(len(xs))]


@njit(parallel=True, cache=True, nogil=True)
def _scaled_copy(dy, c, out):
    for i in prange(dy.size):
        out[i] = dy[i] * c


def eltwise_backward_cpu(dy, xs, op=SUM, coeffs=None):
    """Same contract as :func:`eltwise_backward_reference`, float32; SUM (the residual-net case)
    is a Numba kernel, PROD and MAX use the reference (NumPy is already element-wise)."""
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    if op != SUM:
        return [g.astype(np.float32, copy=False) for g in eltwise_backward_reference(dy, xs, op, coeffs)]
    coeffs = coeffs or [1.0] * len(xs)
    out = []
    for c in coeffs:
        g = np.empty_like(dy)
        _scaled_copy(dy.reshape(-1), np.float32(c), g.reshape(-1))
        out.append(g)
    return out


def _eltwise_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    f = self.backend_kernel(backend, "backward", numpy=eltwise_backward_reference, cpu=eltwise_backward_cpu)
    return f(top_diffs[0], bottoms, self.op, self.coeffs), []


