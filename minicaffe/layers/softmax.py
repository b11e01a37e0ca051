"""Softmax (Caffe type ``Softmax``) over one axis (default 1, the channels).

Shapes: ``x: (outer, C, inner...)`` -> same shape; normalised over ``axis`` after subtracting the
maximum, as Caffe does. Implementations: ``softmax_reference`` (NumPy), ``softmax_cpu`` (Numba,
parallel over outer*inner positions), ``softmax_cuda`` (a thread per outer*inner position).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, njit, prange

from ..backend import SERIAL_BELOW, blocks, device_empty, serial_twin
from ..simd import fetch_add, task_done
from .base import Layer, int_value, register


def softmax_reference(x, axis=1):
    """x: any shape, normalised along ``axis``."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def _softmax_at(x, y, t):
    # position t = (o, i) of x, y: (outer, C, inner); compiled for the CPU (_softmax_task, inlined
    # where used: no function of its own to compile) and as a CUDA device function
    O, C, I = x.shape
    o = t // I
    i = t % I
    m = x[o, 0, i]
    for c in range(1, C):
        m = max(m, x[o, c, i])
    s = 0.0
    for c in range(C):
        e = np.exp(x[o, c, i] - m)
        y[o, c, i] = e
        s += e
    for c in range(C):
        y[o, c, i] = y[o, c, i] / s


_softmax_task = njit(cache=True, nogil=True, inline="always")(_softmax_at)
_softmax_device = cuda.jit(device=True)(_softmax_at)


@njit(parallel=True, cache=True, nogil=True)
def _softmax3(x, y):
    # x, y: (outer, C, inner)
    O, C, I = x.shape
    for t in prange(O * I):
        _softmax_task(x, y, t)


@njit(cache=True, nogil=True)
def _softmax_worker(x, y, counter):
    # _softmax3's positions as tasks from counter[0] (counted in counter[1]); returns their count
    total = x.shape[0] * x.shape[2]
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        _softmax_task(x, y, t)
        task_done(counter, 1)
    return total


def _as3(shape, axis):
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    return (outer, shape[axis], inner)


def softmax_cpu(x, axis=1):
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    s3 = _as3(x.shape, axis)
    (_softmax3_serial if x.size < SERIAL_BELOW else _softmax3)(x.reshape(s3), y.reshape(s3))
    return y


_softmax3_serial = serial_twin(_softmax3)


@cuda.jit
def _softmax_kernel(x, y):
    t = cuda.grid(1)
    if t < x.shape[0] * x.shape[2]:
        _softmax_device(x, y, t)


def softmax_cuda(x, axis=1):
    s3 = _as3(x.shape, axis)
    y = device_empty(x.shape)
    _softmax_kernel[blocks(s3[0] * s3[2], 128), 128](x.reshape(s3), y.reshape(s3))
    return y


@register("Softmax")
class Softmax(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        self.axis = int_value(self, "softmax_param.axis", self.pget("softmax_param").get("axis", 1))

    def setup(self, shapes):
        n = len(shapes[0])
        ax = self.axis if self.axis >= 0 else n + self.axis
        if not 0 <= ax < n:
            raise self.err(f"axis {self.axis} out of range for shape {shapes[0]}")
        self._ax = ax
        return [tuple(shapes[0])]

    def flops(self, bshapes, tshapes):
        return 5 * int(np.prod(bshapes[0]))

    def forward(self, bottoms, params, backend, inplace=False):
        f = {"numpy": softmax_reference, "cpu": softmax_cpu, "cuda": softmax_cuda}[backend]
        return [f(bottoms[0], self._ax)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _softmax_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# backward (training)


def softmax_backward_reference(dy, y, axis=1):
    """dy, y (the softmax output): same shape -> dx = y * (dy - sum(dy * y, axis))."""
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


@njit(parallel=True, cache=True, nogil=True)
def _softmax3_back(dy, y, dx):
    O, C, I = y.shape
    for t in prange(O * I):
        o = t // I
        i = t % I
        s = 0.0
        for c in range(C):
            s += dy[o, c, i] * y[o, c, i]
        for c in range(C):
            dx[o, c, i] = y[o, c, i] * (dy[o, c, i] - s)


def softmax_backward_cpu(dy, y, axis=1):
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)
    dx = np.empty_like(y)
    s3 = _as3(y.shape, axis)
    _softmax3_back(dy.reshape(s3), y.reshape(s3), dx.reshape(s3))
    return dx


def _softmax_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    f = self.backend_kernel(backend, "backward", numpy=softmax_backward_reference, cpu=softmax_backward_cpu)
    return [f(top_diffs[0], tops[0], self._ax)], []


