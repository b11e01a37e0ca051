"""Rectifiers: Caffe ``ReLU`` (with ``negative_slope``) and ``Clip`` (min/max; ReLU6 is Clip 0..6).

Shapes: any ``x`` -> same shape. Both usually run in place (top == bottom), as in Caffe: after
``relu1`` the blob ``conv1`` holds the rectified value. The net keeps the pre-activation array
when asked (``keep_pre_activation``), so the kernels may overwrite their input when ``inplace``.
Implementations: ``relu_reference``/``clip_reference`` (NumPy), ``relu_cpu``/``clip_cpu`` (Numba,
parallel, in place when allowed), ``relu_cuda``/``clip_cuda`` (a thread per element).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, njit, prange

from ..backend import blocks, device_empty
from .base import Layer, flat_memory, register


def relu_reference(x, negative_slope=0.0):
    """x: any shape -> same shape, ``max(x, 0) + negative_slope * min(x, 0)``."""
    return np.where(x > 0, x, x * np.float32(negative_slope)).astype(np.float32)


def clip_reference(x, lo, hi):
    """x: any shape -> same shape, clipped to [lo, hi]."""
    return np.clip(x, np.float32(lo), np.float32(hi)).astype(np.float32)


@njit(parallel=True, cache=True, nogil=True)
def _relu_flat(x, slope, y):
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else v * slope


@njit(parallel=True, cache=True, nogil=True)
def _clip_flat(x, lo, hi, y):
    for i in prange(x.size):
        y[i] = min(max(x[i], lo), hi)


def relu_cpu(x, negative_slope=0.0, inplace=False):
    xf, shaped = flat_memory(x)          # channels-last blobs stay channels last
    y = xf if inplace else np.empty_like(xf)
    _relu_flat(xf, np.float32(negative_slope), y)
    return shaped(y)


def clip_cpu(x, lo, hi, inplace=False):
    xf, shaped = flat_memory(x)
    y = xf if inplace else np.empty_like(xf)
    _clip_flat(xf, np.float32(lo), np.float32(hi), y)
    return shaped(y)


@cuda.jit
def _relu_kernel(x, slope, y):
    i = cuda.grid(1)
    if i < x.size:
        v = x[i]
        y[i] = v if v > 0 else v * slope


@cuda.jit
def _clip_kernel(x, lo, hi, y):
    i = cuda.grid(1)
    if i < x.size:
        y[i] = min(max(x[i], lo), hi)


def relu_cuda(x, negative_slope=0.0, inplace=False):
    y = x if inplace else device_empty(x.shape)
    _relu_kernel[blocks(x.size, 256), 256](x.reshape(x.size), np.float32(negative_slope), y.reshape(y.size))
    return y


def clip_cuda(x, lo, hi, inplace=False):
    y = x if inplace else device_empty(x.shape)
    _clip_kernel[blocks(x.size, 256), 256](x.reshape(x.size), np.float32(lo), np.float32(hi), y.reshape(y.size))
    return y


@register("ReLU")
class ReLU(Layer):
    can_run_inplace = True

    def reads_channels_last(self, bottom_shapes):
        return True

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        self.slope = float(self.pget("relu_param").get("negative_slope", 0.0))

    def setup(self, shapes):
        return [tuple(shapes[0])]

    def flops(self, bshapes, tshapes):
        return int(np.prod(bshapes[0]))

    def forward(self, bottoms, params, backend, inplace=False):
        if backend == "numpy":
            return [relu_reference(bottoms[0], self.slope)]
        f = relu_cpu if backend == "cpu" else relu_cuda
        return [f(bottoms[0], self.slope, inplace)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _relu_layer_backward(self, top_diffs, bottoms, tops, params, backend)


@register("Clip", "ReLU6")
class Clip(Layer):
    can_run_inplace = True

    def reads_channels_last(self, bottom_shapes):
        return True

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        if self.lp.get("type") == "ReLU6":
            self.lo, self.hi = 0.0, 6.0
        else:
            p = self.pget("clip_param")
            if p.get("min") is None or p.get("max") is None:
                raise self.err("clip_param needs both min and max")
            self.lo, self.hi = float(p.get("min")), float(p.get("max"))
            if self.lo > self.hi:
                raise self.err("clip_param.min must not exceed max")

    def setup(self, shapes):
        return [tuple(shapes[0])]

    def flops(self, bshapes, tshapes):
        return int(np.prod(bshapes[0]))

    def forward(self, bottoms, params, backend, inplace=False):
        if backend == "numpy":
            return [clip_reference(bottoms[0], self.lo, self.hi)]
        f = clip_cpu if backend == "cpu" else clip_cuda
        return [f(bottoms[0], self.lo, self.hi, inplace)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _clip_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# backward (training): both need the *bottom* (pre-activation) value, which the training
# forward keeps because it never runs these layers in place


def relu_backward_reference(dy, x, negative_slope=0.0):
    """dy, x: same shape -> dx = dy * (1 if x > 0 else negative_slope) (Caffe's rule at x == 0)."""
    return np.where(x > 0, dy, dy * negative_slope)


def clip_backward_reference(dy, x, lo, hi):
    """dy, x: same shape -> dx = dy where lo <= x <= hi, else 0 (Caffe's clip_layer: closed interval)."""
    return np.where((x >= lo) & (x <= hi), dy, np.zeros_like(dy))


@njit(parallel=True, cache=True, nogil=True)
def _relu_back_flat(dy, x, slope, dx):
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > 0 else dy[i] * slope


@njit(parallel=True, cache=True, nogil=True)
def _clip_back_flat(dy, x, lo, hi, dx):
    for i in prange(x.size):
        dx[i] = dy[i] if (x[i] >= lo and x[i] <= hi) else np.float32(0.0)


def relu_backward_cpu(dy, x, negative_slope=0.0):
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    dx = np.empty_like(dy)
    _relu_back_flat(dy.reshape(-1), x.reshape(-1), np.float32(negative_slope), dx.reshape(-1))
    return dx


def clip_backward_cpu(dy, x, lo, hi):
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    dx = np.empty_like(dy)
    _clip_back_flat(dy.reshape(-1), x.reshape(-1), np.float32(lo), np.float32(hi), dx.reshape(-1))
    return dx


def _relu_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    f = self.backend_kernel(backend, "backward", numpy=relu_backward_reference, cpu=relu_backward_cpu)
    return [f(top_diffs[0], bottoms[0], self.slope)], []


def _clip_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    f = self.backend_kernel(backend, "backward", numpy=clip_backward_reference, cpu=clip_backward_cpu)
    return [f(top_diffs[0], bottoms[0], self.lo, self.hi)], []


