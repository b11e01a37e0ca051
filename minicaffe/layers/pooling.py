"""Pooling layer (Caffe type ``Pooling``): MAX and AVE, padded, with Caffe's ceil-mode output size.

Shapes: ``x: (N, C, H, W)`` -> ``(N, C, Ho, Wo)`` with Caffe's rule
``Ho = ceil((H + 2*pad - k) / stride) + 1``, then, when padding is used, one fewer if the last
window would start inside the bottom padding (``(Ho-1)*stride >= H + pad``). ``round_mode: FLOOR``
(later Caffe) is honoured. MAX windows are clipped to the image; AVE divides by the window size
clipped to the *padded* image (Caffe counts padding cells, but not cells beyond the padding).
``global_pooling`` pools the whole plane. Implementations: ``pooling_reference`` (NumPy, a loop
over output positions), ``pooling_cpu`` (Numba, prange over N*C), ``pooling_nhwc_cpu`` (channels
last along channel vectors, optionally followed by an across-channel LRN in the same pass: the task
loop a whole-forward program runs), ``pooling_cuda`` (a thread per output). STOCHASTIC pooling (a
training-time method) is not implemented.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, njit, prange

from ..backend import SERIAL_BELOW, blocks, device_empty, serial_twin
from ..simd import fetch_add, task_done
from .base import Layer, as_bool, hw_param, is_channels_last, nhwc_memory, register
from .convolution.nhwc_kernels import next_task, store_pixel
from .lrn import _lrn_vector

MAX, AVE = 0, 1


def pool_out_size(size, k, stride, pad, ceil_mode=True):
    """Caffe rounds pooling output sizes up (ceil mode), and clips a window starting in padding."""
    if ceil_mode:
        out = int(math.ceil((size + 2 * pad - k) / stride)) + 1
    else:
        out = (size + 2 * pad - k) // stride + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pooling_reference(x, method, kernel, stride, pad, out_hw):
    """x: (N, C, H, W) -> (N, C, Ho, Wo); method MAX=0 / AVE=1; out_hw from :func:`pool_out_size`."""
    N, C, H, W = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = pad
    Ho, Wo = out_hw
    y = np.empty((N, C, Ho, Wo), dtype=np.float32)
    for oh in range(Ho):
        for ow in range(Wo):
            hs, ws = oh * sh - ph, ow * sw - pw
            if method == MAX:
                he, we = min(hs + kh, H), min(ws + kw, W)
                hs, ws = max(hs, 0), max(ws, 0)
                y[:, :, oh, ow] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
            else:
                he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
                y[:, :, oh, ow] = x[:, :, hs:he, ws:we].sum(axis=(2, 3), dtype=np.float32) / np.float32(size)
    return y


@njit(cache=True, inline="always")
def _window_max(x, n, c, hs, he, ws, we):
    # max over x[n, c, hs:he, ws:we] (a window already clipped to the image; padding never wins)
    m = np.float32(-3.402823466e38)
    for i in range(hs, he):
        for j in range(ws, we):
            v = x[n, c, i, j]
            m = max(m, v)
    return m


@njit(parallel=True, cache=True, nogil=True)
def _pool_cpu(x, method, kh, kw, sh, sw, ph, pw, y):
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t % C
        for oh in range(Ho):
            for ow in range(Wo):
                hs = oh * sh - ph
                ws = ow * sw - pw
                if method == 0:
                    y[n, c, oh, ow] = _window_max(x, n, c, max(hs, 0), min(hs + kh, H), max(ws, 0),
                                                  min(ws + kw, W))
                else:
                    he = min(hs + kh, H + ph)
                    we = min(ws + kw, W + pw)
                    size = (he - hs) * (we - ws)
                    hs = max(hs, 0)
                    ws = max(ws, 0)
                    he = min(he, H)
                    we = min(we, W)
                    s = np.float32(0.0)
                    for i in range(hs, he):
                        for j in range(ws, we):
                            s += x[n, c, i, j]
                    y[n, c, oh, ow] = s / np.float32(size)


@njit(parallel=True, cache=True, nogil=True)
def _maxpool3_cpu(x, sh, sw, y):
    # MAX 3x3, no padding (CaffeNet's pool1/2/5): windows wholly inside the image take an unrolled
    # 9-load path; only the last row/column (ceil mode may clip them) go through the bounds checks.
    N, C, H, W = x.shape
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * C):
        n = t // C
        c = t % C
        full_h = min(Ho, (H - 3) // sh + 1)
        full_w = min(Wo, (W - 3) // sw + 1)
        for oh in range(Ho):
            hs = oh * sh
            if oh < full_h:
                r0 = x[n, c, hs]
                r1 = x[n, c, hs + 1]
                r2 = x[n, c, hs + 2]
                for ow in range(full_w):
                    q = ow * sw
                    m = max(max(r0[q], r0[q + 1]), r0[q + 2])
                    m = max(m, max(max(r1[q], r1[q + 1]), r1[q + 2]))
                    m = max(m, max(max(r2[q], r2[q + 1]), r2[q + 2]))
                    y[n, c, oh, ow] = m
                start = full_w
            else:
                start = 0
            he = min(hs + 3, H)
            for ow in range(start, Wo):
                y[n, c, oh, ow] = _window_max(x, n, c, hs, he, ow * sw, min(ow * sw + 3, W))


def pooling_cpu(x, method, kernel, stride, pad, out_hw):
    """Same contract as :func:`pooling_reference`."""
    if (is_channels_last(x) and method in (0, 1) and tuple(kernel) == x.shape[2:] and tuple(pad) == (0, 0)
            and tuple(out_hw) == (1, 1)):
        return global_pooling_nhwc(x, method)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty(x.shape[:2] + tuple(out_hw), dtype=np.float32)
    small = x.size < SERIAL_BELOW
    if method == 0 and tuple(kernel) == (3, 3) and tuple(pad) == (0, 0):
        (_maxpool3_serial if small else _maxpool3_cpu)(x, stride[0], stride[1], y)
        return y
    (_pool_serial if small else _pool_cpu)(x, method, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], y)
    return y


def global_pooling_nhwc(x, method):
    """x: (N, C, H, W) with channels-last memory -> (N, C, 1, 1): the max (method 0) or mean
    (method 1) of each channel over the whole plane, reduced along contiguous channel vectors."""
    m = nhwc_memory(x)
    N, H, W, C = m.shape
    y = np.empty((N, C), dtype=np.float32)
    _global_pool_rows(m.reshape(N, H * W, C), method, y)
    return y.reshape(N, C, 1, 1)


@njit(cache=True, nogil=True)
def _global_pool_rows(rows, method, y):
    # rows: (N, P, C) -> y: (N, C), image by image on this thread (one pass over memory: a parallel
    # kernel's compilation would cost more than it saves)
    _global_pool_worker(rows, method, y, np.zeros(2, dtype=np.int64))


@njit(cache=True, nogil=True)
def _global_pool_worker(rows, method, y, counter):
    # rows: (N, P, C) float32 -> y: (N, C): the max (method 0) or mean (1) over P, pixel by pixel in
    # order along contiguous channel rows (a mean sums in float32, then divides; NaN propagates);
    # images as tasks from counter[0] (counted in counter[1]); returns N
    N, P, C = rows.shape
    while True:
        n = fetch_add(counter, 0, 1)
        if n >= N:
            break
        acc = y[n]
        r0 = rows[n, 0]
        for c in range(C):
            acc[c] = r0[c]
        for p in range(1, P):
            r = rows[n, p]
            if method == 0:
                for c in range(C):
                    v = r[c]
                    if v > acc[c] or v != v:         # a NaN stays, as numpy's max
                        acc[c] = v
            else:
                for c in range(C):
                    acc[c] += r[c]
        if method != 0:
            for c in range(C):
                acc[c] /= np.float32(P)
        task_done(counter, 1)
    return N


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"arcp", "contract", "afn"})
def _pool_nhwc_worker(x, method, kh, kw, sh, sw, ph, pw, lrn, yf, geo, counter):
    # x: (N, H, W, C) channels last -> yf: the (N, C, Ho, Wo) pooled blob, then (lrn[0] = size > 0)
    # across-channel LRN with alpha lrn[1], beta lrn[2], k lrn[3] applied to each pooled pixel's
    # channels (a pool + LRN pair in one pass; kernel 1, stride 1: the LRN alone). geo: int64 (Ho,
    # Wo, oHp, oWp, ot, ol, nchw): stored NCHW when nchw (an inner product's input), else channels
    # last at (ot, ol) of an (N, oHp, oWp, C) array whose zero border is written too (a padded
    # input for the next convolution). Windows as _pool_cpu's (MAX clipped to the image, AVE divided
    # by the window clipped to the padded image), every loop along a pixel's contiguous channels.
    # Tasks: output rows, then the border's rows, from counter[0] (counted in counter[1]); one
    # thread's loop, returns the task count.
    N, H, W, C = x.shape
    Ho, Wo, oHp, oWp, ot, ol, nchw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
    size = int(lrn[0])
    a, kk, beta = np.float32(lrn[1] / max(size, 1)), np.float32(lrn[3]), lrn[2]
    rows = N * Ho
    border = 0 if nchw or (oHp, oWp, ot, ol) == (Ho, Wo, 0, 0) else N * oHp
    acc = np.empty(C, dtype=np.float32)
    sq = np.zeros(C + max(size, 1) - 1, dtype=np.float32)
    s = np.empty(C, dtype=np.float32)
    xf = x.reshape(x.size)
    while True:
        t = next_task(counter, rows, border, yf, oHp, oWp, ot, ol, Ho, Wo, C)
        if t < 0:
            break
        n = t // Ho
        oh = t - n * Ho
        hs = oh * sh - ph
        he = min(hs + kh, H + ph)
        h0, h1 = max(hs, 0), min(he, H)
        for ow in range(Wo):
            ws = ow * sw - pw
            we = min(ws + kw, W + pw)
            w0, w1 = max(ws, 0), min(we, W)
            if method == MAX:
                for c in range(C):
                    acc[c] = np.float32(-3.402823466e38)
                for i in range(h0, h1):
                    for j in range(w0, w1):
                        r = xf[((n * H + i) * W + j) * C:((n * H + i) * W + j + 1) * C]
                        for c in range(C):
                            acc[c] = max(acc[c], r[c])
            else:
                for c in range(C):
                    acc[c] = np.float32(0.0)
                for i in range(h0, h1):
                    for j in range(w0, w1):
                        r = xf[((n * H + i) * W + j) * C:((n * H + i) * W + j + 1) * C]
                        for c in range(C):
                            acc[c] += r[c]
                div = np.float32((he - hs) * (we - ws))
                for c in range(C):
                    acc[c] = acc[c] / div
            if size > 0:
                _lrn_vector(acc, sq, s, size, a, kk, beta)
            store_pixel(acc, yf, n, oh, ow, nchw, Ho, Wo, oHp, oWp, ot, ol)
        task_done(counter, 1)
    return rows + border


def pooling_nhwc_cpu(x, method, kernel, stride, pad, out_hw, lrn=None, nchw_out=False, out_pad=(0, 0, 0, 0),
                     out=None):
    """x: (N, H, W, C) channels-last array -> the pooled (N, C, Ho, Wo) blob as an (N, Ho, Wo, C)
    array (pooling_reference's windows), or (N, C, Ho, Wo) when ``nchw_out``; ``lrn``: (size,
    alpha, beta, k) of an across-channel LRN applied to the pooled values (the pool -> LRN pair);
    ``out_pad`` (top, bottom, left, right): the channels-last output stored inside a zero border
    of that size (``out``: the array to store into, whatever it holds). On the calling thread (a
    whole-forward program runs the same kernel on all)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, H, W, C = x.shape
    Ho, Wo = out_hw
    pt, pb, pl, pr = out_pad
    shape = (N, C, Ho, Wo) if nchw_out else (N, Ho + pt + pb, Wo + pl + pr, C)
    y = np.empty(shape, dtype=np.float32) if out is None else out
    if y.shape != shape or y.dtype != np.float32 or not y.flags.c_contiguous:
        raise ValueError(f"out: a C-contiguous float32 array of shape {shape}")
    geo = np.array((Ho, Wo, Ho + pt + pb, Wo + pl + pr, pt, pl, int(nchw_out)), dtype=np.int64)
    lrn_arr = np.array((0, 0, 0, 0) if lrn is None else lrn, dtype=np.float32)
    _pool_nhwc_worker(x, method, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], lrn_arr,
                      y.reshape(-1), geo, np.zeros(2, dtype=np.int64))
    return y


_pool_serial = serial_twin(_pool_cpu)
_maxpool3_serial = serial_twin(_maxpool3_cpu)


@cuda.jit
def _pool_kernel(x, method, kh, kw, sh, sw, ph, pw, y):
    idx = cuda.grid(1)
    N, C, Ho, Wo = y.shape
    if idx >= N * C * Ho * Wo:
        return
    H, W = x.shape[2], x.shape[3]
    ow = idx % Wo
    t = idx // Wo
    oh = t % Ho
    t = t // Ho
    c = t % C
    n = t // C
    hs = oh * sh - ph
    ws = ow * sw - pw
    if method == 0:
        he = min(hs + kh, H)
        we = min(ws + kw, W)
        hs = max(hs, 0)
        ws = max(ws, 0)
        m = -3.402823466e38
        for i in range(hs, he):
            for j in range(ws, we):
                m = max(m, x[n, c, i, j])
        y[n, c, oh, ow] = m
    else:
        he = min(hs + kh, H + ph)
        we = min(ws + kw, W + pw)
        size = (he - hs) * (we - ws)
        hs = max(hs, 0)
        ws = max(ws, 0)
        he = min(he, H)
        we = min(we, W)
        s = 0.0
        for i in range(hs, he):
            for j in range(ws, we):
                s += x[n, c, i, j]
        y[n, c, oh, ow] = s / size


def pooling_cuda(x, method, kernel, stride, pad, out_hw):
    """x: device (N, C, H, W) -> device (N, C, Ho, Wo)."""
    y = device_empty(tuple(x.shape[:2]) + tuple(out_hw))
    n = y.size
    _pool_kernel[blocks(n, 128), 128](x, method, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], y)
    return y


@register("Pooling")
class Pooling(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("pooling_param")
        method = str(p.get("pool", "MAX"))
        if method in ("MAX", "0"):
            self.method = MAX
        elif method in ("AVE", "1"):
            self.method = AVE
        else:
            raise self.err(f"pool: {method} is not supported (MAX and AVE are)")
        self.global_pooling = as_bool(p.get("global_pooling"), False)
        self.ceil_mode = str(p.get("round_mode", "CEIL")) in ("CEIL", "0")
        if self.global_pooling:
            if p.has("kernel_size") or p.has("kernel_h"):
                raise self.err("with global_pooling, kernel size cannot be specified")
            self.kernel = None
        else:
            self.kernel = hw_param(self, p, "kernel", required=True)
            if min(self.kernel) < 1:
                raise self.err("kernel size must be >= 1")
        self.stride = hw_param(self, p, "stride", default=1)
        self.pad = hw_param(self, p, "pad", default=0)
        if min(self.stride) < 1:
            raise self.err("stride must be >= 1")
        if self.kernel and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
            raise self.err("pad must be smaller than the kernel")

    def geometry(self, shape):
        N, C, H, W = shape
        if self.global_pooling:
            return (H, W), (1, 1), (0, 0)
        return self.kernel, self.stride, self.pad

    def setup(self, shapes):
        if len(shapes[0]) != 4:
            raise self.err(f"expects a 4-D (N, C, H, W) input, got shape {shapes[0]}")
        N, C, H, W = shapes[0]
        k, s, p = self.geometry(shapes[0])
        Ho = pool_out_size(H, k[0], s[0], p[0], self.ceil_mode)
        Wo = pool_out_size(W, k[1], s[1], p[1], self.ceil_mode)
        if Ho < 1 or Wo < 1:
            raise self.err(f"input {H}x{W} is smaller than the pooling kernel {k[0]}x{k[1]}")
        self.out_hw = (Ho, Wo)
        return [(N, C, Ho, Wo)]

    def reads_channels_last(self, bottom_shapes):
        return self.global_pooling and self.method in (0, 1)

    def flops(self, bshapes, tshapes):
        k, _, _ = self.geometry(bshapes[0])
        return int(np.prod(tshapes[0])) * k[0] * k[1]

    def forward(self, bottoms, params, backend, inplace=False):
        x = bottoms[0]
        k, s, p = self.geometry(x.shape)
        out_hw = (pool_out_size(x.shape[2], k[0], s[0], p[0], self.ceil_mode),
                  pool_out_size(x.shape[3], k[1], s[1], p[1], self.ceil_mode))
        f = {"numpy": pooling_reference, "cpu": pooling_cpu, "cuda": pooling_cuda}[backend]
        return [f(x, self.method, k, s, p, out_hw)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _pooling_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# backward (training)


def pooling_backward_reference(dy, x, method, kernel, stride, pad):
    """dy: (N, C, Ho, Wo), x: (N, C, H, W) -> dx: (N, C, H, W).

    MAX sends each output's gradient to the first maximum of its (image-clipped) window in
    row-major scan order — the cell Caffe's forward records in its mask; AVE spreads it evenly,
    divided by the same padded-window size as the forward. Keeps the inputs' dtype.
    """
    N, C, H, W = x.shape
    kh, kw = kernel
    sh, sw = stride
    ph, pw = pad
    Ho, Wo = dy.shape[2], dy.shape[3]
    dx = np.zeros(x.shape, dtype=np.result_type(dy, x))
    nn, cc = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for oh in range(Ho):
        for ow in range(Wo):
            hs, ws = oh * sh - ph, ow * sw - pw
            if method == MAX:
                he, we = min(hs + kh, H), min(ws + kw, W)
                hs, ws = max(hs, 0), max(ws, 0)
                win = x[:, :, hs:he, ws:we].reshape(N, C, -1)
                k = win.argmax(axis=2)                     # first maximum, row-major
                dx[nn, cc, hs + k // (we - ws), ws + k % (we - ws)] += dy[:, :, oh, ow]
            else:
                he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, H), min(we, W)
                dx[:, :, hs:he, ws:we] += (dy[:, :, oh, ow] / size)[:, :, None, None]
    return dx


@njit(parallel=True, cache=True, nogil=True)
def _pool_back_cpu(dy, x, method, kh, kw, sh, sw, ph, pw, dx):
    N, C, H, W = x.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    for t in prange(N * C):              # a (n, c) plane per iteration: writes never overlap
        n = t // C
        c = t % C
        for oh in range(Ho):
            for ow in range(Wo):
                hs = oh * sh - ph
                ws = ow * sw - pw
                g = dy[n, c, oh, ow]
                if method == 0:
                    he = min(hs + kh, H)
                    we = min(ws + kw, W)
                    hs = max(hs, 0)
                    ws = max(ws, 0)
                    m = np.float32(-3.402823466e38)
                    bi = hs
                    bj = ws
                    for i in range(hs, he):
                        for j in range(ws, we):
                            v = x[n, c, i, j]
                            if v > m:
                                m = v
                                bi = i
                                bj = j
                    dx[n, c, bi, bj] += g
                else:
                    he = min(hs + kh, H + ph)
                    we = min(ws + kw, W + pw)
                    g = g / np.float32((he - hs) * (we - ws))
                    for i in range(max(hs, 0), min(he, H)):
                        for j in range(max(ws, 0), min(we, W)):
                            dx[n, c, i, j] += g


def pooling_backward_cpu(dy, x, method, kernel, stride, pad):
    """Same contract as :func:`pooling_backward_reference`, float32 (Numba, prange over N*C)."""
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    dx = np.zeros(x.shape, dtype=np.float32)
    _pool_back_cpu(dy, x, method, kernel[0], kernel[1], stride[0], stride[1], pad[0], pad[1], dx)
    return dx


def _pooling_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    x = bottoms[0]
    k, s, p = self.geometry(x.shape)
    f = self.backend_kernel(backend, "backward", numpy=pooling_backward_reference, cpu=pooling_backward_cpu)
    return [f(top_diffs[0], x, self.method, k, s, p)], []


