"""im2col + BLAS convolutions: "wide" im2col for stride 1, stride-phase im2col for equal strides,
the per-pixel gather for the rest; one GEMM per group and batch chunk through NumPy's BLAS.

Shapes: ``x: (N, C, H, W)``, weight ``(M, C/group, kh, kw)`` (OIHW), output ``(N, M, Ho, Wo)``.
Every buffer is bounded by :data:`IM2COL_BUDGET` (batches run in chunks that fit). The backward
pass reuses :func:`_im2col` and :func:`_valid_cols`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...backend import SERIAL_BELOW, serial_twin
from .cache import fused_cap
from .reference import conv_out_hw

#: bytes allowed for one im2col buffer; batches are processed in chunks that fit, small enough for
#: the buffer to stay in cache between im2col and the GEMMs that read it
IM2COL_BUDGET = 16 << 20


@njit(cache=True, inline="always")
def _valid_cols(off, sw, W, Wo):
    # -> (lo, hi): the output columns ow with 0 <= ow*sw + off < W (an input column inside the
    # image), found once per kernel tap so the copy loops need no per-element branch
    lo = 0 if off >= 0 else min(Wo, (-off + sw - 1) // sw)
    hi = max(lo, min(Wo, (W - 1 - off) // sw + 1)) if W - 1 - off >= 0 else lo
    return lo, hi


@njit(parallel=True, cache=True, nogil=True)
def _im2col(x, n0, nb, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo, col):
    # col: (C*kh*kw, nb*Ho*Wo); row order (c, i, j) matches the OIHW weight rows
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    P = Ho * Wo
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for n in range(nb):
            for oh in range(Ho):
                ih = oh * sh - pt + i * dh
                base = n * P + oh * Wo
                if ih < 0 or ih >= H:
                    for ow in range(Wo):
                        col[r, base + ow] = 0.0
                else:
                    off = j * dw - pl
                    lo, hi = _valid_cols(off, sw, W, Wo)
                    for ow in range(lo):
                        col[r, base + ow] = 0.0
                    for ow in range(lo, hi):
                        col[r, base + ow] = x[n0 + n, c, ih, ow * sw + off]
                    for ow in range(hi, Wo):
                        col[r, base + ow] = 0.0


@njit(parallel=True, cache=True, nogil=True)
def _im2col_wide(xf, n0, nb, kh, kw, dh, dw, Wp, L, col):
    # xf: (N, C, Lp) zero-padded planes flattened with row length Wp -> col: (C*kh*kw, nb*L).
    # Stride 1 only. Row (c, i, j) is ONE contiguous slice of the padded plane per image, starting
    # at the tap's offset i*dh*Wp + j*dw: the GEMM then computes a "wide" output of Ho rows x Wp
    # columns whose last Wp - Wo columns are garbage (cropped by _crop_wide): ~15% more GEMM work
    # for CaffeNet's 13x13 planes, but the copy is a memcpy instead of _im2col's per-pixel gather.
    C = xf.shape[1]
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        off = i * dh * Wp + j * dw
        for n in range(nb):
            col[r, n * L:(n + 1) * L] = xf[n0 + n, c, off:off + L]


@njit(parallel=True, cache=True, nogil=True)
def _crop_wide(yw, b, has_bias, relu, cap, n0, nb, Wp, L, y):
    # yw: (M, nb*L) wide GEMM result -> y[n0:n0+nb]: (N, M, Ho, Wo) + bias (then max(0, .) when
    # relu), dropping each row's Wp - Wo garbage columns; bias and ReLU ride along so the output
    # is touched once
    M = yw.shape[0]
    Ho, Wo = y.shape[2], y.shape[3]
    for t in prange(nb * M):
        n = t // M
        m = t % M
        bias = b[m] if has_bias else np.float32(0.0)
        for oh in range(Ho):
            # row views indexed by the loop variable: Numba vectorises these, not src[base + ow]
            src = yw[m, n * L + oh * Wp:n * L + oh * Wp + Wo]
            dst = y[n0 + n, m, oh]
            if relu:
                for ow in range(Wo):
                    dst[ow] = min(max(src[ow] + bias, np.float32(0.0)), cap)
            else:
                for ow in range(Wo):
                    dst[ow] = src[ow] + bias


@njit(parallel=True, cache=True, nogil=True)
def _phase_planes(x, n0, nb, s, pt, pl, Hs, Ws, xs):
    # x: (N, C, H, W) -> xs: (nb, C, s, s, Hs*Ws + extra), the s*s stride phases of each padded
    # plane: xs[n, c, a, b, p*Ws + q] = x[n0+n, c, p*s + a - pt, q*s + b - pl] (0 outside the
    # image and in the extra tail). A stride-s tap (i, j) reads phase (i % s, j % s) at a fixed
    # offset, so _im2col_phase can copy whole rows.
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    for t in prange(nb * C * s):
        n = t // (C * s)
        c = (t // s) % C
        a = t % s
        for b in range(s):
            dst = xs[n, c, a, b]
            for p in range(Hs):
                ih = p * s + a - pt
                row = dst[p * Ws:(p + 1) * Ws]
                if ih < 0 or ih >= H:
                    row[:] = 0.0
                else:
                    src = x[n0 + n, c, ih]
                    for q in range(Ws):
                        iw = q * s + b - pl
                        row[q] = src[iw] if 0 <= iw < W else 0.0
            dst[Hs * Ws:] = 0.0


@njit(parallel=True, cache=True, nogil=True)
def _im2col_phase(xs, nb, kh, kw, s, Ws, L, col):
    # xs: phase planes from _phase_planes -> col: (C*kh*kw, nb*L), rows (c, i, j) in OIHW order.
    # Row (c, i, j) is the contiguous slice of phase (i % s, j % s) from (i // s)*Ws + j // s:
    # a "wide" output of Ho rows x Ws columns (the last Ws - Wo cropped by _crop_wide)
    C = xs.shape[1]
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        off = (i // s) * Ws + j // s
        for n in range(nb):
            col[r, n * L:(n + 1) * L] = xs[n, c, i % s, j % s, off:off + L]


@njit(parallel=True, cache=True, nogil=True)
def _add_bias_planes(y, b, relu, cap):
    # y: (N, M, P) += b[m], then max(0, .) when relu
    N, M, P = y.shape
    for t in prange(N * M):
        m = t % M
        n = t // M
        bm = b[m]
        row = y[n, m]
        if relu:
            for p in range(P):
                row[p] = min(max(row[p] + bm, np.float32(0.0)), cap)
        else:
            for p in range(P):
                row[p] += bm


def _im2col_chunk(N, K, L):
    # images per chunk: the im2col buffer (K rows x images*L columns) within IM2COL_BUDGET
    return int(max(1, min(N, IM2COL_BUDGET // max(1, K * L * 4))))


def _wide_gemms(w, b, group, nb, L, Wrow, fill, y, per_group=False, relu=False, relu_cap=None):
    """The chunk loop shared by the im2col convolutions. For each chunk of <= nb images,
    ``fill(n0, cur, g, col)`` writes the im2col rows (of group g, or of all groups when g is None;
    OIHW row order), one GEMM per group writes Wrow columns per output row into a (M, cur*L)
    buffer, and :func:`_crop_wide` keeps each row's first Wo into ``y`` (N, M, Ho, Wo) + bias."""
    M, Cg, kh, kw = w.shape
    Kg, Mg = Cg * kh * kw, M // group
    w2 = np.ascontiguousarray(w.reshape(M, Kg), dtype=np.float32)  # OIHW rows (c, i, j) = col rows
    has_bias = b is not None
    bb = b if has_bias else np.zeros(M, np.float32)
    Kc = Kg if per_group else Kg * group
    col = yw = None
    N = y.shape[0]
    for n0 in range(0, N, nb):
        cur = min(nb, N - n0)
        if col is None or col.shape[1] != cur * L:
            col = np.empty((Kc, cur * L), dtype=np.float32)
            yw = np.empty((M, cur * L), dtype=np.float32)
        if not per_group:
            fill(n0, cur, None, col)
        for g in range(group):
            if per_group:
                fill(n0, cur, g, col)
            cg = col if per_group else col[g * Kg:(g + 1) * Kg]
            np.matmul(w2[g * Mg:(g + 1) * Mg], cg, out=yw[g * Mg:(g + 1) * Mg])
        _crop_wide(yw, bb, has_bias, relu, fused_cap(relu_cap), n0, cur, Wrow, L, y)
    return y


def convolution_wide_cpu(x, w, b, pad=(0, 0, 0, 0), dilation=(1, 1), group=1, relu=False, relu_cap=None):
    """x: (N, C, H, W), w: (M, C/group, kh, kw) -> (N, M, Ho, Wo); stride-1 convolution by "wide"
    im2col + one BLAS GEMM per group and chunk (same contract as :func:`convolution_reference`
    for stride 1).

    The input is zero-padded once per chunk into planes of row length Wp = W + pl + pr; every
    im2col row is then a contiguous slice of a plane (see :func:`_im2col_wide`), the GEMM output
    has Wp columns per row, and :func:`_crop_wide` keeps the first Wo of them and adds the bias.
    Several images share one GEMM (N axis = images x Ho x Wp), which keeps BLAS efficient at
    batch > 1 where a 13x13 plane alone makes a thin GEMM."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Hp, Wp = H + pt + pb, W + pl + pr
    Ho, Wo = Hp - dh * (kh - 1), Wp - dw * (kw - 1)
    L = Ho * Wp
    Lp = Hp * Wp + dw * (kw - 1)          # the last tap's slice runs dw*(kw-1) past the plane
    K = C * kh * kw
    nb = _im2col_chunk(N, K, L)
    # borders zeroed once; each chunk overwrites only the interior
    xf = np.zeros((nb, C, Lp), dtype=np.float32)
    interior = xf[:, :, :Hp * Wp].reshape(nb, C, Hp, Wp)[:, :, pt:pt + H, pl:pl + W]

    def fill(n0, cur, g, col):
        if g is None or g == 0:
            interior[:cur] = x[n0:n0 + cur]
        src = xf if g is None else xf[:, g * Cg:(g + 1) * Cg]
        _im2col_wide(src, 0, cur, kh, kw, dh, dw, Wp, L, col)

    # One image per chunk (batch 1): one group's columns at a time, a buffer 1/group the size that
    # is still in cache when the GEMM reads it (CaffeNet conv2, cold caches as in the net: 3.5 vs
    # 3.9 ms). Several images per chunk: all groups' columns in one pass (batch 64: 181 vs 203 ms).
    y = np.empty((N, M, Ho, Wo), dtype=np.float32)
    return _wide_gemms(w, b, group, nb, L, Wp, fill, y, per_group=nb == 1 and group > 1, relu=relu,
                       relu_cap=relu_cap)


def convolution_phase_cpu(x, w, b, stride, pad=(0, 0, 0, 0), group=1, relu=False, relu_cap=None):
    """x: (N, C, H, W), w: (M, C/group, kh, kw), stride (s, s) -> (N, M, Ho, Wo); strided
    convolution (no dilation) by stride-phase planes + "wide" im2col + one GEMM per group and chunk
    (same contract as :func:`convolution_reference` for those layers).

    Each padded input plane is split once into its s*s stride phases (:func:`_phase_planes`);
    every im2col row is then one contiguous slice of a phase (:func:`_im2col_phase`) instead of a
    per-pixel strided gather, the GEMM computes Ws >= Wo columns per output row and
    :func:`_crop_wide` keeps Wo and adds the bias. The rows keep OIHW order, so the weights need
    no re-layout. CaffeNet conv1 (11x11/4): Ws = 57 for Wo = 55, 3.6% extra GEMM work."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, _, kh, kw = w.shape
    st = stride[0]
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad)
    Hs, Ws = Ho + (kh - 1) // st, Wo + (kw - 1) // st
    L = Ho * Ws
    nb = _im2col_chunk(N, C * kh * kw, L)
    xs = np.empty((nb, C, st, st, Hs * Ws + (kw - 1) // st), dtype=np.float32)

    def fill(n0, cur, g, col):
        _phase_planes(x, n0, cur, st, pt, pl, Hs, Ws, xs)
        _im2col_phase(xs, cur, kh, kw, st, Ws, L, col)

    y = np.empty((N, M, Ho, Wo), dtype=np.float32)
    return _wide_gemms(w, b, group, nb, L, Ws, fill, y, relu=relu, relu_cap=relu_cap)


def convolution_gather_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1, relu=False,
                           relu_cap=None):
    """x: (N, C, H, W), w: (M, C/group, kh, kw) -> (N, M, Ho, Wo) by the per-pixel im2col gather
    + one GEMM per group and chunk: any stride and dilation (same contract as
    :func:`convolution_reference`). The output rows are exactly Wo wide, so the crop pass only
    adds the bias."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad, dilation)
    P = Ho * Wo
    nb = _im2col_chunk(N, C * kh * kw, P)

    def fill(n0, cur, g, col):
        _im2col(x, n0, cur, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo, col)

    return _wide_gemms(w, b, group, nb, P, Wo, fill, np.empty((N, M, Ho, Wo), dtype=np.float32), relu=relu,
                       relu_cap=relu_cap)


_add_bias_planes_serial = serial_twin(_add_bias_planes)


def convolution_1x1_cpu(x, w, b, relu=False, relu_cap=None):
    """x: (N, C, H, W), w: (M, C, 1, 1) -> (N, M, H, W): a 1x1 stride-1 unpadded convolution is a
    plain GEMM per image, (M, C) @ (C, H*W); no im2col copy."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M = w.shape[0]
    y = np.matmul(w.reshape(M, C), x.reshape(N, C, H * W))
    if b is not None or relu:
        (_add_bias_planes_serial if y.size < SERIAL_BELOW else _add_bias_planes)(
            y, b if b is not None else np.zeros(M, np.float32), relu, fused_cap(relu_cap))
    return y.reshape(N, M, H, W)
