"""Direct depthwise convolutions (group == C, one input channel per filter) in Numba.

Shapes: ``x: (N, C, H, W)``, weight ``(C*mult, 1, kh, kw)``, output ``(N, C*mult, Ho, Wo)``.
Stride 1 without dilation runs each kernel tap as one long contiguous multiply-add over a padded
plane; equal strides without dilation do the same over the plane's stride phases; other strides
and dilations go through strided row views. No BLAS.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...backend import SERIAL_BELOW, serial_twin
from .cache import fused_cap
from .reference import conv_out_hw


@njit(parallel=True, cache=True, nogil=True)
def _depthwise(x, w, b, has_bias, sh, sw, pt, pl, dh, dw, mult, y):
    # x: (N, C, H, W), w: (C*mult, 1, kh, kw), y: (N, C*mult, Ho, Wo). Per output plane: copy the
    # input plane into a zero-padded scratch once, then accumulate one kernel tap at a time along
    # whole output rows (no branches in the inner loop). Strided/dilated layers; stride 1 goes to
    # _depthwise_s1.
    N, C, H, W = x.shape
    M, _, kh, kw = w.shape
    Ho, Wo = y.shape[2], y.shape[3]
    Hp = max(H + pt, (Ho - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl, (Wo - 1) * sw + (kw - 1) * dw + 1)
    for t in prange(N * M):
        n = t // M
        m = t % M
        c = m // mult
        xp = np.zeros((Hp, Wp), dtype=np.float32)
        xp[pt:pt + H, pl:pl + W] = x[n, c]
        acc = np.empty(Wo, dtype=np.float32)
        bias = b[m] if has_bias else np.float32(0.0)
        for oh in range(Ho):
            for ow in range(Wo):
                acc[ow] = bias
            for i in range(kh):
                r = oh * sh + i * dh
                for j in range(kw):
                    wv = w[m, 0, i, j]
                    # a (strided) view indexed by the loop variable alone: no negative-index
                    # wraparound code in the loop (xp[r, q + ow*sw] kept it scalar)
                    src = xp[r, j * dw:j * dw + (Wo - 1) * sw + 1:sw]
                    for ow in range(Wo):
                        acc[ow] += wv * src[ow]
            for ow in range(Wo):
                y[n, m, oh, ow] = acc[ow]


@njit(cache=True, nogil=True)
def _dw_plane_s1(img, wk, bias, pt, pl, out):
    # One depthwise plane, stride 1, no dilation: img (H, W), wk (kh, kw), out (Ho, Wo). The padded
    # plane is flattened with row pitch Wp, so each tap is one long contiguous multiply-add over
    # Ho*Wp elements (the columns past Wo are computed and dropped). A plain (non-parallel) function
    # so LLVM vectorises its loops; the caller runs planes in parallel.
    H, W = img.shape
    kh, kw = wk.shape
    Ho, Wo = out.shape
    Wp = Wo + kw - 1
    Hp = Ho + kh - 1
    L = Ho * Wp
    xp = np.zeros(Hp * Wp + kw, dtype=np.float32)     # + kw: the last tap reads past the end
    h1, w1 = min(H, Hp - pt), min(W, Wp - pl)
    xp[:Hp * Wp].reshape((Hp, Wp))[pt:pt + h1, pl:pl + w1] = img[:h1, :w1]
    acc = np.full(L, bias, dtype=np.float32)
    for i in range(kh):
        for j in range(kw):
            wv = wk[i, j]
            src = xp[i * Wp + j:i * Wp + j + L]
            # a slice indexed by the loop variable alone: no negative-index wraparound code in
            # the loop, so LLVM vectorises it (xp[off + q] stayed scalar: 5x slower)
            for q in range(L):
                acc[q] += wv * src[q]
    out[:, :] = acc.reshape((Ho, Wp))[:, :Wo]


@njit(cache=True, nogil=True)
def _dw_plane_phase(img, wk, bias, s, pt, pl, out):
    # One depthwise plane, stride s > 1, no dilation: img (H, W), wk (kh, kw), out (Ho, Wo). The
    # padded plane is split into its s*s stride phases (row pitch Ws); tap (i, j) reads phase
    # (i % s, j % s) from offset (i // s)*Ws + j // s, so each tap is one contiguous multiply-add
    # over Ho*Ws elements (columns past Wo computed and dropped), as in _dw_plane_s1.
    H, W = img.shape
    kh, kw = wk.shape
    Ho, Wo = out.shape
    Hs = Ho + (kh - 1) // s
    Ws = Wo + (kw - 1) // s
    L = Ho * Ws
    xs = np.zeros((s, s, Hs * Ws + (kw - 1) // s + 1), dtype=np.float32)
    for a in range(s):
        for p in range(Hs):
            ih = p * s + a - pt
            if ih < 0 or ih >= H:
                continue
            src = img[ih]
            for b in range(s):
                # phase columns q with 0 <= q*s + b - pl < W, found once: the copy is branch-free
                q0 = max(0, (pl - b + s - 1) // s)
                q1 = min(Ws, (W - 1 + pl - b) // s + 1)
                if q1 <= q0:
                    continue
                dst = xs[a, b, p * Ws + q0:p * Ws + q1]
                sv = src[q0 * s + b - pl:(q1 - 1) * s + b - pl + 1:s]
                for q in range(q1 - q0):
                    dst[q] = sv[q]
    acc = np.full(L, bias, dtype=np.float32)
    for i in range(kh):
        for j in range(kw):
            wv = wk[i, j]
            o = (i // s) * Ws + j // s
            src = xs[i % s, j % s, o:o + L]
            for q in range(L):
                acc[q] += wv * src[q]
    out[:, :] = acc.reshape((Ho, Ws))[:, :Wo]


@njit(parallel=True, cache=True, nogil=True)
def _depthwise_phase(x, w, b, has_bias, s, pt, pl, mult, y):
    # x: (N, C, H, W), w: (C*mult, 1, kh, kw), y: (N, C*mult, Ho, Wo); stride (s, s), no dilation
    N = x.shape[0]
    M = w.shape[0]
    for t in prange(N * M):
        n = t // M
        m = t % M
        _dw_plane_phase(x[n, m // mult], w[m, 0], b[m] if has_bias else np.float32(0.0), s, pt, pl, y[n, m])


@njit(parallel=True, cache=True, nogil=True)
def _depthwise_s1(x, w, b, has_bias, pt, pl, mult, y):
    # x: (N, C, H, W), w: (C*mult, 1, kh, kw), y: (N, C*mult, Ho, Wo); stride 1, no dilation
    N = x.shape[0]
    M = w.shape[0]
    for t in prange(N * M):
        n = t // M
        m = t % M
        _dw_plane_s1(x[n, m // mult], w[m, 0], b[m] if has_bias else np.float32(0.0), pt, pl, y[n, m])


@njit(parallel=True, cache=True, nogil=True)
def _to_nhwc(x, xt):
    # x: (N, C, H, W) -> xt: (N, H, W, C), one (image, row) per task: the task's W x C block of xt
    # stays in L1 while the C source rows are read
    N, C, H, W = x.shape
    for t in prange(N * H):
        n = t // H
        h = t % H
        dst = xt[n, h]
        for c in range(C):
            src = x[n, c, h]
            for q in range(W):
                dst[q, c] = src[q]


@njit(parallel=True, cache=True, nogil=True)
def _dw_nhwc(xt, wt, b, has_bias, sh, sw, pt, pl, relu, cap, y):
    # xt: (N, H, W, C) -> y: (N, C, Ho, Wo), depthwise with one filter per channel (wt: (kh, kw, C)),
    # computed along channel vectors: every tap is a multiply-add over C contiguous channels, taps
    # outside the image skipped, each output row stored back NHWC -> NCHW. No per-plane padding
    # copies: for small planes (late layers, batch 1) those cost more than the arithmetic.
    N, H, W, C = xt.shape
    kh, kw = wt.shape[0], wt.shape[1]
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(N * Ho):
        n = t // Ho
        oh = t % Ho
        out = np.empty((Wo, C), dtype=np.float32)
        for ow in range(Wo):
            acc = out[ow]
            for c in range(C):
                acc[c] = b[c] if has_bias else np.float32(0.0)
            for i in range(kh):
                ih = oh * sh + i - pt
                if ih < 0 or ih >= H:
                    continue
                for j in range(kw):
                    iw = ow * sw + j - pl
                    if iw < 0 or iw >= W:
                        continue
                    xr = xt[n, ih, iw]
                    wr = wt[i, j]
                    for c in range(C):
                        acc[c] += xr[c] * wr[c]
            if relu:
                for c in range(C):
                    acc[c] = min(max(acc[c], np.float32(0.0)), cap)
        for c in range(C):
            dst = y[n, c, oh]
            for ow in range(Wo):
                dst[ow] = out[ow, c]


#: output elements below which a depthwise layer (one filter per channel, no dilation) runs along
#: channel vectors (:func:`_dw_nhwc`) instead of plane by plane: every layer of EfficientNet-Lite0
#: at batch 1 (within +-30% of the plane kernels there, and the plane kernels, the slowest to
#: compile, are then not needed for a first single-image run)
NHWC_BELOW = 1 << 21

_depthwise_s1_serial = serial_twin(_depthwise_s1)
_depthwise_phase_serial = serial_twin(_depthwise_phase)
_dw_nhwc_serial = serial_twin(_dw_nhwc)
_to_nhwc_serial = serial_twin(_to_nhwc)


def convolution_depthwise_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1, relu=False,
                              relu_cap=None):
    """x: (N, C, H, W), w: (C*mult, 1, kh, kw) -> (N, C*mult, Ho, Wo); depthwise only
    (``group == C``), same contract as :func:`convolution_reference` for those layers."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    if group != C or Cg != 1:
        raise ValueError(f"not a depthwise convolution: group {group}, {C} channels, weight {w.shape}")
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad, dilation)
    has_bias = b is not None
    bb = b if has_bias else np.zeros(M, np.float32)
    y = np.empty((N, M, Ho, Wo), dtype=np.float32)
    if M == C and dh == dw == 1 and y.size < NHWC_BELOW:
        small = y.size < SERIAL_BELOW
        xt = np.empty((N, H, W, C), dtype=np.float32)
        (_to_nhwc_serial if small else _to_nhwc)(x, xt)
        wt = np.ascontiguousarray(w.reshape(C, kh * kw).T.reshape(kh, kw, C), dtype=np.float32)   # OIHW -> HWC
        (_dw_nhwc_serial if small else _dw_nhwc)(xt, wt, bb, has_bias, sh, sw, pt, pl, bool(relu),
                                                 fused_cap(relu_cap), y)
        return y
    if sh == sw == 1 and dh == dw == 1:
        (_depthwise_s1_serial if y.size < SERIAL_BELOW else _depthwise_s1)(x, w, bb, has_bias, pt, pl, M // C, y)
    elif sh == sw and dh == dw == 1:
        (_depthwise_phase_serial if y.size < SERIAL_BELOW else _depthwise_phase)(x, w, bb, has_bias, sh, pt, pl,
                                                                                  M // C, y)
    else:
        _depthwise(x, w, bb, has_bias, sh, sw, pt, pl, dh, dw, M // C, y)
    if relu:
        np.clip(y, 0, np.inf if relu_cap is None else relu_cap, out=y)
    return y
