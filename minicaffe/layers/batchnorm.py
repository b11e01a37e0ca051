"""Batch normalisation at inference (Caffe type ``BatchNorm``), with Caffe's three-blob layout.

Shapes: ``x: (N, C, ...)`` -> same shape. Caffe's BatchNorm has no affine part (a following
``Scale`` layer with ``bias_term: true`` holds gamma/beta) and stores three blobs: ``mean (C,)``,
``variance (C,)`` and ``scale_factor (1,)`` — the moving-average normaliser; the statistics used
are ``mean / s`` and ``variance / s`` with ``s = scale_factor`` (``0`` when ``scale_factor`` is
0, as in Caffe). ``y = (x - mean/s) / sqrt(variance/s + eps)`` with ``batch_norm_param { eps }``
(default 1e-5). Only the global-statistics (inference) mode is implemented:
``use_global_stats: false`` (training-time batch statistics) is refused. Implementations:
``batchnorm_reference`` (NumPy), ``batchnorm_cpu`` (Numba, a (n, c) plane per iteration),
``batchnorm_cuda`` (a thread per element). In-place (top == bottom) runs are allowed.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, njit, prange

from ..backend import blocks, device_empty, is_device_array, to_device, to_host
from .base import Layer, as_bool, register


def bn_coefficients(mean, var, scale_factor, eps):
    """Caffe blobs -> per-channel (a, b) with ``y = a * x + b``, computed in float64 then rounded.

    mean, var: (C,), scale_factor: (1,) -> a, b: (C,) float32.
    """
    sf = float(np.asarray(scale_factor, np.float64).reshape(-1)[0])
    s = 0.0 if sf == 0 else 1.0 / sf
    m = np.asarray(mean, np.float64) * s
    v = np.asarray(var, np.float64) * s
    a = 1.0 / np.sqrt(v + eps)
    return a.astype(np.float32), (-m * a).astype(np.float32)


def batchnorm_reference(x, mean, var, scale_factor, eps=1e-5):
    """x: (N, C, ...) -> same shape, ``(x - mean/s) / sqrt(var/s + eps)`` (float64 then float32)."""
    sf = float(np.asarray(scale_factor).reshape(-1)[0])
    s = 0.0 if sf == 0 else 1.0 / sf
    shp = (1, -1) + (1,) * (x.ndim - 2)
    m = (np.asarray(mean, np.float64) * s).reshape(shp)
    v = (np.asarray(var, np.float64) * s).reshape(shp)
    return ((x.astype(np.float64) - m) / np.sqrt(v + eps)).astype(np.float32)


@njit(parallel=True, cache=True, nogil=True)
def _affine_planes(x, a, b, y):
    # x, y: (N, C, P) views; a, b: (C,)
    N, C, P = x.shape
    for t in prange(N * C):
        n = t // C
        c = t % C
        ac, bc = a[c], b[c]
        for p in range(P):
            y[n, c, p] = x[n, c, p] * ac + bc


def channel_affine_cpu(x, a, b, inplace=False):
    """x: (N, C, ...) -> ``a[c] * x + b[c]`` per channel (Numba). Shared by BatchNorm and Scale."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = x if inplace else np.empty_like(x)
    N, C = x.shape[0], x.shape[1]
    _affine_planes(x.reshape(N, C, -1), np.ascontiguousarray(a, np.float32),
                   np.ascontiguousarray(b, np.float32), y.reshape(N, C, -1))
    return y


def batchnorm_cpu(x, mean, var, scale_factor, eps=1e-5, inplace=False):
    """x: (N, C, ...) -> same shape; per-channel coefficients in float64, the pass in Numba."""
    a, b = bn_coefficients(mean, var, scale_factor, eps)
    return channel_affine_cpu(x, a, b, inplace)


@cuda.jit
def _affine_kernel(x, a, b, y, C, P):
    i = cuda.grid(1)
    if i < x.size:
        c = (i // P) % C
        y[i] = x[i] * a[c] + b[c]


def channel_affine_cuda(x, a, b, inplace=False):
    """x: device (N, C, ...) -> ``a[c] * x + b[c]``; a, b device (C,)."""
    y = x if inplace else device_empty(x.shape)
    C = x.shape[1]
    P = x.size // (x.shape[0] * C)
    _affine_kernel[blocks(x.size, 256), 256](x.reshape(x.size), a, b, y.reshape(y.size), C, P)
    return y


def batchnorm_cuda(x, mean, var, scale_factor, eps=1e-5, inplace=False):
    """x: device (N, C, ...); the (C,) coefficients are computed on the host (tiny) and uploaded."""
    a, b = bn_coefficients(to_host(mean), to_host(var), to_host(scale_factor), eps)
    return channel_affine_cuda(x, to_device(a), to_device(b), inplace)


@register("BatchNorm")
class BatchNorm(Layer):
    can_run_inplace = True

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("batch_norm_param")
        self.eps = float(p.get("eps", 1e-5))
        if not self.eps > 0:
            raise self.err(f"batch_norm_param.eps must be > 0, got {self.eps}")
        # Caffe defaults use_global_stats to true in the TEST phase; that is the only mode here
        if not as_bool(p.get("use_global_stats"), True):
            raise self.err("use_global_stats: false (batch statistics, training) is not supported")

    def setup(self, shapes):
        if len(shapes[0]) < 2:
            raise self.err(f"expects an (N, C, ...) input, got shape {shapes[0]}")
        C = shapes[0][1]
        self.param_shapes = [(C,), (C,), (1,)]
        return [tuple(shapes[0])]

    def init_params(self, rng):
        C = self.param_shapes[0][0]
        return [(rng.standard_normal(C) * 0.1).astype(np.float32),
                rng.uniform(0.5, 1.5, C).astype(np.float32), np.ones(1, np.float32)]

    def flops(self, bshapes, tshapes):
        return 2 * int(np.prod(bshapes[0]))

    def forward(self, bottoms, params, backend, inplace=False):
        mean, var, sf = params
        if backend == "numpy":
            return [batchnorm_reference(bottoms[0], mean, var, sf, self.eps)]
        if backend == "cpu":
            return [batchnorm_cpu(bottoms[0], mean, var, sf, self.eps, inplace)]
        x = bottoms[0] if is_device_array(bottoms[0]) else to_device(bottoms[0])
        return [batchnorm_cuda(x, mean, var, sf, self.eps, inplace)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _batchnorm_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# backward (training). Only the global-statistics mode exists, so BatchNorm is a fixed
# per-channel affine map during fine-tuning (as Caffe with use_global_stats: true, where its
# three blobs have lr_mult 0): dx = dy / sqrt(var/s + eps), and its blobs get no gradient.


def batchnorm_backward_reference(dy, mean, var, scale_factor, eps=1e-5):
    """dy: (N, C, ...) -> dx (same shape and dtype)."""
    sf = float(np.asarray(scale_factor, np.float64).reshape(-1)[0])
    s = 0.0 if sf == 0 else 1.0 / sf
    a64 = 1.0 / np.sqrt(np.asarray(var, np.float64) * s + eps)
    shp = (1, -1) + (1,) * (dy.ndim - 2)
    return (dy * a64.reshape(shp)).astype(dy.dtype)


def batchnorm_backward_cpu(dy, mean, var, scale_factor, eps=1e-5):
    a, _ = bn_coefficients(mean, var, scale_factor, eps)
    return channel_affine_cpu(dy, a, np.zeros_like(a))


def _batchnorm_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    mean, var, sf = params
    f = self.backend_kernel(backend, "backward", numpy=batchnorm_backward_reference, cpu=batchnorm_backward_cpu)
    return [f(top_diffs[0], mean, var, sf, self.eps)], [None, None, None]


