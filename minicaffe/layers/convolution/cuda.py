"""CUDA convolution kernels (Numba): one thread per output element, and a depthwise variant.

Shapes as :func:`convolution_reference`; inputs and outputs are device arrays. Simple by design:
the CUDA path is checked against the reference, it is not tuned.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ...backend import blocks, device_empty, to_device
from .reference import conv_out_hw


@cuda.jit
def _conv_kernel(x, w, b, y, sh, sw, pt, pl, dh, dw, group):
    idx = cuda.grid(1)
    N, M, Ho, Wo = y.shape
    if idx >= N * M * Ho * Wo:
        return
    ow = idx % Wo
    t = idx // Wo
    oh = t % Ho
    t = t // Ho
    m = t % M
    n = t // M
    Cg, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    H, W = x.shape[2], x.shape[3]
    g = m // (M // group)
    acc = 0.0
    for c in range(Cg):
        ci = g * Cg + c
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            if ih >= 0 and ih < H:
                for j in range(kw):
                    iw = ow * sw - pl + j * dw
                    if iw >= 0 and iw < W:
                        acc += x[n, ci, ih, iw] * w[m, c, i, j]
    y[n, m, oh, ow] = acc + b[m]


@cuda.jit
def _depthwise_kernel(x, w, b, y, sh, sw, pt, pl, dh, dw, mult):
    # depthwise (group == C, one input channel per filter): a thread per output element, the
    # kh*kw taps of one channel only, no group/channel-block arithmetic in the inner loop
    idx = cuda.grid(1)
    N, M, Ho, Wo = y.shape
    if idx >= N * M * Ho * Wo:
        return
    ow = idx % Wo
    t = idx // Wo
    oh = t % Ho
    t = t // Ho
    m = t % M
    n = t // M
    c = m // mult
    kh, kw = w.shape[2], w.shape[3]
    H, W = x.shape[2], x.shape[3]
    ih0 = oh * sh - pt
    iw0 = ow * sw - pl
    acc = 0.0
    for i in range(kh):
        ih = ih0 + i * dh
        if ih >= 0 and ih < H:
            for j in range(kw):
                iw = iw0 + j * dw
                if iw >= 0 and iw < W:
                    acc += x[n, c, ih, iw] * w[m, 0, i, j]
    y[n, m, oh, ow] = acc + b[m]


def convolution_cuda(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1):
    """x: device (N, C, H, W), w/b: device arrays -> device (N, M, Ho, Wo).

    Depthwise convolutions (group == C, w: (C*mult, 1, kh, kw)) use a dedicated kernel."""
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad, dilation)
    if b is None:
        b = to_device(np.zeros(M, np.float32))
    y = device_empty((N, M, Ho, Wo))
    n = N * M * Ho * Wo
    if group == C and Cg == 1:
        _depthwise_kernel[blocks(n, 128), 128](x, w, b, y, stride[0], stride[1], pt, pl, dilation[0],
                                               dilation[1], M // C)
        return y
    _conv_kernel[blocks(n, 128), 128](x, w, b, y, stride[0], stride[1], pt, pl, dilation[0], dilation[1], group)
    return y
