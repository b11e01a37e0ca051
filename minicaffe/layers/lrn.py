"""Local response normalisation (Caffe type ``LRN``), ACROSS_CHANNELS and WITHIN_CHANNEL.

Shapes: ``x: (N, C, H, W)`` -> same shape. Caffe's convention (which differs from PyTorch's and
TensorFlow's, a classic source of mismatches): ACROSS_CHANNELS uses
``scale = k + (alpha / local_size) * sum(x[c']^2 for c' in [c - (n-1)/2, c + (n-1)/2])`` — alpha is
divided by the window size — and ``y = x * scale^-beta``. WITHIN_CHANNEL ignores ``k`` and uses
``scale = 1 + (alpha / local_size^2) * sum over the zero-padded local_size x local_size square``
(Caffe builds it from AVE pooling with pad (n-1)/2, whose divisor counts the padding).
Implementations: ``lrn_reference`` (NumPy), ``lrn_cpu`` (Numba, running window sum over channels,
rows in parallel), ``lrn_cuda`` (a thread per element).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, njit, prange

from ..backend import SERIAL_BELOW, blocks, device_empty, serial_twin
from .base import Layer, register

ACROSS, WITHIN = 0, 1


def lrn_reference(x, size, alpha, beta, k, region=ACROSS):
    """x: (N, C, H, W) -> (N, C, H, W), Caffe LRN semantics (see module docstring)."""
    N, C, H, W = x.shape
    sq = x.astype(np.float64) ** 2
    pre = (size - 1) // 2
    if region == ACROSS:
        padded = np.zeros((N, C + size - 1, H, W))
        padded[:, pre:pre + C] = sq
        s = np.zeros((N, C, H, W))
        for i in range(size):
            s += padded[:, i:i + C]
        scale = k + (alpha / size) * s
    else:
        padded = np.zeros((N, C, H + size - 1, W + size - 1))
        padded[:, :, pre:pre + H, pre:pre + W] = sq
        s = np.zeros((N, C, H, W))
        for i in range(size):
            for j in range(size):
                s += padded[:, :, i:i + H, j:j + W]
        scale = 1.0 + (alpha / (size * size)) * s
    return (x * scale ** -beta).astype(np.float32)


@njit(cache=True, inline="always")
def _pow_neg(t, beta):
    # t^-beta. CaffeNet/AlexNet's beta 0.75 as r*sqrt(r), r = 1/sqrt(t): two square roots instead
    # of pow() (measured: norm1 at batch 64 went from longer than conv1 to ~1/4 of it)
    if beta == 0.75:
        r = 1.0 / np.sqrt(t)
        return r * np.sqrt(r)
    return t ** (-beta)


@njit(parallel=True, cache=True, nogil=True, fastmath=True)
def _lrn_across(x, size, alpha, beta, k, y):
    # One (image, channel) plane per task, float32 as Caffe computes it: the window's sum of
    # squares is recomputed from its (at most size) planes rather than kept as a running sum, so
    # it never cancels, and every loop runs along a whole contiguous plane (vectorised).
    N, C, H, W = x.shape
    P = H * W
    pre = (size - 1) // 2
    a = np.float32(alpha / size)
    kk = np.float32(k)
    x3 = x.reshape(N, C, P)
    y3 = y.reshape(N, C, P)
    for t in prange(N * C):
        n = t // C
        c = t % C
        s = np.zeros(P, dtype=np.float32)
        for cc in range(max(0, c - pre), min(C, c - pre + size)):
            src = x3[n, cc]
            for i in range(P):
                s[i] += src[i] * src[i]
        _lrn_scale(x3[n, c], s, a, kk, beta, y3[n, c])


@njit(cache=True, inline="always")
def _lrn_scale(x, s, a, kk, beta, y):
    # y = x * (kk + a * s)^-beta, elementwise along 1-D arrays of one length (y may be x); beta
    # 0.75 as r*sqrt(r), r = 1/sqrt(t): two square roots instead of pow()
    if beta == 0.75:
        for i in range(x.shape[0]):
            r = np.float32(1.0) / np.sqrt(kk + a * s[i])
            y[i] = x[i] * (r * np.sqrt(r))
    else:
        nb = np.float32(-beta)
        for i in range(x.shape[0]):
            y[i] = x[i] * (kk + a * s[i]) ** nb


_lrn_across_serial = serial_twin(_lrn_across, fastmath=True)


@njit(cache=True, inline="always")
def _lrn_vector(v, sq, s, size, a, kk, beta):
    # v: (C,) one pixel's channels (channels last) -> v * (kk + a * sum of the window's squares)^-beta,
    # in place, the window summed in ascending channel order from zero as _lrn_across does (the
    # zeros past either end add nothing); sq: (C + size - 1,) scratch whose first and last
    # (size - 1) / 2 entries are zero, s: (C,) scratch. Every loop runs along the channels.
    C = v.shape[0]
    pre = (size - 1) // 2
    for c in range(C):
        sq[pre + c] = v[c] * v[c]
        s[c] = np.float32(0.0)
    for j in range(size):
        for c in range(C):
            s[c] += sq[c + j]
    _lrn_scale(v, s, a, kk, beta, v)


@njit(parallel=True, cache=True, nogil=True)
def _lrn_within(x, size, alpha, beta, y):
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    a = alpha / (size * size)
    for t in prange(N * C):
        n = t // C
        c = t % C
        for h in range(H):
            for w in range(W):
                s = 0.0
                for i in range(max(0, h - pre), min(H, h - pre + size)):
                    for j in range(max(0, w - pre), min(W, w - pre + size)):
                        v = np.float64(x[n, c, i, j])
                        s += v * v
                y[n, c, h, w] = np.float32(x[n, c, h, w] * (1.0 + a * s) ** (-beta))


def lrn_cpu(x, size, alpha, beta, k, region=ACROSS):
    """Same contract as :func:`lrn_reference`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    if region == ACROSS:
        (_lrn_across_serial if x.size < SERIAL_BELOW else _lrn_across)(x, size, float(alpha), float(beta), float(k), y)
    else:
        _lrn_within(x, size, float(alpha), float(beta), y)
    return y


@cuda.jit
def _lrn_kernel(x, size, alpha, beta, k, region, y):
    idx = cuda.grid(1)
    N, C, H, W = x.shape
    if idx >= N * C * H * W:
        return
    w = idx % W
    t = idx // W
    h = t % H
    t = t // H
    c = t % C
    n = t // C
    pre = (size - 1) // 2
    s = 0.0
    if region == 0:
        for cc in range(max(0, c - pre), min(C, c - pre + size)):
            v = x[n, cc, h, w]
            s += v * v
        scale = k + alpha / size * s
    else:
        for i in range(max(0, h - pre), min(H, h - pre + size)):
            for j in range(max(0, w - pre), min(W, w - pre + size)):
                v = x[n, c, i, j]
                s += v * v
        scale = 1.0 + alpha / (size * size) * s
    y[n, c, h, w] = x[n, c, h, w] * scale ** (-beta)


def lrn_cuda(x, size, alpha, beta, k, region=ACROSS):
    """x: device (N, C, H, W) -> device, same shape."""
    y = device_empty(x.shape)
    _lrn_kernel[blocks(y.size, 128), 128](x, size, float(alpha), float(beta), float(k), region, y)
    return y


#: largest accepted local_size (real nets use 3 to 11)
MAX_LOCAL_SIZE = 1023


@register("LRN")
class LRN(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("lrn_param")
        self.size = p.get("local_size", 5)
        if not isinstance(self.size, int) or self.size < 1 or self.size % 2 == 0:
            raise self.err(f"local_size must be a positive odd integer, got {self.size!r}")
        if self.size > MAX_LOCAL_SIZE:  # the reference pads the channel axis by local_size
            raise self.err(f"local_size {self.size} is larger than {MAX_LOCAL_SIZE}")
        self.alpha = float(p.get("alpha", 1.0))
        self.beta = float(p.get("beta", 0.75))
        self.k = float(p.get("k", 1.0))
        region = str(p.get("norm_region", "ACROSS_CHANNELS"))
        if region in ("ACROSS_CHANNELS", "0"):
            self.region = ACROSS
        elif region in ("WITHIN_CHANNEL", "1"):
            self.region = WITHIN
        else:
            raise self.err(f"unknown norm_region {region}")

    def setup(self, shapes):
        if len(shapes[0]) != 4:
            raise self.err(f"expects a 4-D (N, C, H, W) input, got shape {shapes[0]}")
        return [tuple(shapes[0])]

    def flops(self, bshapes, tshapes):
        n = self.size if self.region == ACROSS else self.size * self.size
        return int(np.prod(bshapes[0])) * (2 * n + 4)

    def forward(self, bottoms, params, backend, inplace=False):
        f = {"numpy": lrn_reference, "cpu": lrn_cpu, "cuda": lrn_cuda}[backend]
        return [f(bottoms[0], self.size, self.alpha, self.beta, self.k, self.region)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _lrn_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# backward (training)
#
# With y_j = x_j * s_j^-beta and s_j = k + a * sum_{i in win(j)} x_i^2 (a = alpha/n ACROSS,
# alpha/n^2 WITHIN; windows are symmetric, so i in win(j) <=> j in win(i)):
#   dx_j = dy_j * s_j^-beta - 2 a beta x_j * sum_{i in win(j)} dy_i y_i / s_i
# which is Caffe's lrn_layer.cpp CrossChannelBackward, used here for both regions.


def _window_sum_reference(v, size, region):
    N, C, H, W = v.shape
    pre = (size - 1) // 2
    if region == ACROSS:
        padded = np.zeros((N, C + size - 1, H, W), dtype=v.dtype)
        padded[:, pre:pre + C] = v
        return sum(padded[:, i:i + C] for i in range(size))
    padded = np.zeros((N, C, H + size - 1, W + size - 1), dtype=v.dtype)
    padded[:, :, pre:pre + H, pre:pre + W] = v
    return sum(padded[:, :, i:i + H, j:j + W] for i in range(size) for j in range(size))


def lrn_backward_reference(dy, x, size, alpha, beta, k, region=ACROSS):
    """dy, x: (N, C, H, W) -> dx: (N, C, H, W) (float64 inside; float64 inputs stay float64)."""
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    if region == ACROSS:
        a, kk = alpha / size, k
    else:
        a, kk = alpha / (size * size), 1.0
    scale = kk + a * _window_sum_reference(x64 * x64, size, region)
    y = x64 * scale ** -beta
    acc = _window_sum_reference(dy64 * y / scale, size, region)
    dx = dy64 * scale ** -beta - 2.0 * a * beta * x64 * acc
    return dx.astype(np.result_type(dy, x))


@njit(parallel=True, cache=True, nogil=True)
def _lrn_across_back(dy, x, size, alpha, beta, k, dx):
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    a = alpha / size
    for t in prange(N * H):
        n = t // H
        h = t % H
        scale = np.empty((C, W))
        powb = np.empty((C, W))        # scale^-beta; scale^(-beta-1) = powb / scale
        ratio = np.empty((C, W))
        for w in range(W):
            for c in range(C):
                s = 0.0
                for cc in range(max(0, c - pre), min(C, c - pre + size)):
                    v = np.float64(x[n, cc, h, w])
                    s += v * v
                sc = k + a * s
                scale[c, w] = sc
                powb[c, w] = _pow_neg(sc, beta)
            for c in range(C):
                ratio[c, w] = np.float64(dy[n, c, h, w]) * np.float64(x[n, c, h, w]) * powb[c, w] / scale[c, w]
            for c in range(C):
                acc = 0.0
                for cc in range(max(0, c - pre), min(C, c - pre + size)):
                    acc += ratio[cc, w]
                dx[n, c, h, w] = np.float32(dy[n, c, h, w] * powb[c, w]
                                            - 2.0 * a * beta * x[n, c, h, w] * acc)


@njit(parallel=True, cache=True, nogil=True)
def _lrn_within_back(dy, x, size, alpha, beta, dx):
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    a = alpha / (size * size)
    for t in prange(N * C):
        n = t // C
        c = t % C
        scale = np.empty((H, W))
        ratio = np.empty((H, W))
        for h in range(H):
            for w in range(W):
                s = 0.0
                for i in range(max(0, h - pre), min(H, h - pre + size)):
                    for j in range(max(0, w - pre), min(W, w - pre + size)):
                        v = np.float64(x[n, c, i, j])
                        s += v * v
                scale[h, w] = 1.0 + a * s
                ratio[h, w] = np.float64(dy[n, c, h, w]) * np.float64(x[n, c, h, w]) * scale[h, w] ** (-beta - 1.0)
        for h in range(H):
            for w in range(W):
                acc = 0.0
                for i in range(max(0, h - pre), min(H, h - pre + size)):
                    for j in range(max(0, w - pre), min(W, w - pre + size)):
                        acc += ratio[i, j]
                dx[n, c, h, w] = np.float32(dy[n, c, h, w] * scale[h, w] ** (-beta)
                                            - 2.0 * a * beta * x[n, c, h, w] * acc)


def lrn_backward_cpu(dy, x, size, alpha, beta, k, region=ACROSS):
    """Same contract as :func:`lrn_backward_reference`, float32 out (float64 accumulation, Numba)."""
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    dx = np.empty_like(x)
    if region == ACROSS:
        _lrn_across_back(dy, x, size, float(alpha), float(beta), float(k), dx)
    else:
        _lrn_within_back(dy, x, size, float(alpha), float(beta), dx)
    return dx


def _lrn_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    f = self.backend_kernel(backend, "backward", numpy=lrn_backward_reference, cpu=lrn_backward_cpu)
    return [f(top_diffs[0], bottoms[0], self.size, self.alpha, self.beta, self.k, self.region)], []


