"""Per-channel affine transform (Caffe type ``Scale``): ``y = gamma[c] * x + beta[c]``.

Shapes: ``x: (N, C, ...)`` -> same shape; blobs ``gamma (C,)`` and, with
``scale_param { bias_term: true }``, ``beta (C,)``. Caffe pairs it with ``BatchNorm`` (which has
no affine part) to express a PyTorch/TF batch norm. Only the one-bottom form with ``axis: 1``
and ``num_axes: 1`` (one factor per channel) is supported: the two-bottom form (scale taken from a
second blob) and other axes are refused with an error. Implementations: ``scale_reference``
(NumPy), ``scale_cpu`` (Numba, shared per-channel affine kernel of :mod:`.batchnorm`),
``scale_cuda`` (a thread per element). In-place (top == bottom) runs are allowed.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..backend import is_device_array, to_device
from .base import Layer, as_bool, register
from .batchnorm import channel_affine_cpu, channel_affine_cuda


def scale_reference(x, gamma, beta=None):
    """x: (N, C, ...), gamma: (C,), beta: (C,) or None -> same shape as x."""
    shp = (1, -1) + (1,) * (x.ndim - 2)
    y = x * gamma.reshape(shp)
    if beta is not None:
        y = y + beta.reshape(shp)
    return y.astype(np.float32)


def scale_cpu(x, gamma, beta=None, inplace=False):
    b = beta if beta is not None else np.zeros_like(gamma)
    return channel_affine_cpu(x, gamma, b, inplace)


def scale_cuda(x, gamma, beta=None, inplace=False):
    """x, gamma, beta: device arrays."""
    if beta is None:
        beta = to_device(np.zeros(gamma.shape, np.float32))
    return channel_affine_cuda(x, gamma, beta, inplace)


@register("Scale")
class Scale(Layer):
    can_run_inplace = True

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("scale_param")
        if len(self.bottoms) != 1:
            raise self.err("only the one-bottom form (learned per-channel scale) is supported")
        if p.get("axis", 1) != 1 or p.get("num_axes", 1) != 1:
            raise self.err("only axis: 1, num_axes: 1 (one factor per channel) is supported")
        self.bias_term = as_bool(p.get("bias_term"), False)

    def setup(self, shapes):
        if len(shapes[0]) < 2:
            raise self.err(f"expects an (N, C, ...) input, got shape {shapes[0]}")
        C = shapes[0][1]
        self.param_shapes = [(C,)] + ([(C,)] if self.bias_term else [])
        return [tuple(shapes[0])]

    def init_params(self, rng):
        C = self.param_shapes[0][0]
        out = [rng.uniform(0.5, 1.5, C).astype(np.float32)]
        if self.bias_term:
            out.append((rng.standard_normal(C) * 0.1).astype(np.float32))
        return out

    def flops(self, bshapes, tshapes):
        return (2 if self.bias_term else 1) * int(np.prod(bshapes[0]))

    def forward(self, bottoms, params, backend, inplace=False):
        gamma = params[0]
        beta = params[1] if self.bias_term else None
        if backend == "numpy":
            return [scale_reference(bottoms[0], gamma, beta)]
        if backend == "cpu":
            return [scale_cpu(bottoms[0], gamma, beta, inplace)]
        x = bottoms[0] if is_device_array(bottoms[0]) else to_device(bottoms[0])
        return [scale_cuda(x, gamma, beta, inplace)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _scale_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# backward (training)


def scale_backward_reference(dy, x, gamma, bias_term=True):
    """dy, x: (N, C, ...), gamma: (C,) -> (dx like x, dgamma (C,), dbeta (C,) or None)."""
    shp = (1, -1) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    dx = dy * gamma.reshape(shp)
    return dx, (dy * x).sum(axis=axes), (dy.sum(axis=axes) if bias_term else None)


@njit(parallel=True, cache=True, nogil=True)
def _channel_sums(dy, x, dg, db):
    # dy, x: (N, C, P) -> dg[c] = sum dy*x, db[c] = sum dy (float64 accumulation per channel)
    N, C, P = dy.shape
    for c in prange(C):
        sg = 0.0
        sb = 0.0
        for n in range(N):
            for p in range(P):
                sg += dy[n, c, p] * x[n, c, p]
                sb += dy[n, c, p]
        dg[c] = sg
        db[c] = sb


def scale_backward_cpu(dy, x, gamma, bias_term=True):
    """Same contract as :func:`scale_backward_reference`, float32 (Numba)."""
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C = x.shape[0], x.shape[1]
    dg = np.empty(C, np.float32)
    db = np.empty(C, np.float32)
    _channel_sums(dy.reshape(N, C, -1), x.reshape(N, C, -1), dg, db)
    dx = channel_affine_cpu(dy, gamma, np.zeros_like(gamma))
    return dx, dg, (db if bias_term else None)


def _scale_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    f = self.backend_kernel(backend, "backward", numpy=scale_backward_reference, cpu=scale_backward_cpu)
    dx, dg, db = f(top_diffs[0], bottoms[0], params[0], self.bias_term)
    return [dx], ([dg, db] if self.bias_term else [dg])


