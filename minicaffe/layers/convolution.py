"""Convolution layer (Caffe type ``Convolution``): grouped, strided, padded, dilated 2-D convolution.

Shapes: ``x: (N, C, H, W)``, weight ``(M, C/group, kh, kw)`` (Caffe's blob order, NCHW / OIHW),
bias ``(M,)``, output ``(N, M, Ho, Wo)`` with Caffe's *floor* rule
``Ho = (H + pad_top + pad_bottom - (dilation*(kh-1)+1)) // stride + 1``. Padding is kept as four
numbers so TF-"SAME" asymmetric padding can be expressed (prototxt extension fields
``pad_top/pad_bottom/pad_left/pad_right`` inside ``convolution_param``; plain Caffe files use
``pad``/``pad_h``/``pad_w``). Implementations: ``convolution_reference`` (NumPy, one tensordot per
kernel tap), ``convolution_cpu`` (a dispatcher over Numba + BLAS kernels: direct depthwise kernels,
Winograd F(2x2,3x3) for 3x3 stride-1 convs at batch >= 8, "wide" im2col + GEMM for other stride-1 convs,
stride-phase "wide" im2col + GEMM for strided ones, per-pixel im2col + GEMM for the rest (unequal
strides, strided + dilated); every buffer bounded), ``convolution_cuda`` (one thread
per output element).
It does not implement Deconvolution or 3-D convolution.
"""
from __future__ import annotations

import os
import weakref

import numpy as np
from numba import cuda, njit, prange

from ..backend import blocks, device_empty, to_device
from .base import Layer, as_bool, hw_param, int_value, register

# ---------------------------------------------------------------------------------------------
# shape rule


def conv_out_size(size, k, stride, pad_lo, pad_hi, dilation=1):
    """Caffe rounds convolution output sizes down."""
    return (size + pad_lo + pad_hi - (dilation * (k - 1) + 1)) // stride + 1


# ---------------------------------------------------------------------------------------------
# NumPy reference


def convolution_reference(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1):
    """x: (N, C, H, W), w: (M, C/group, kh, kw), b: (M,) or None -> (N, M, Ho, Wo).

    pad = (top, bottom, left, right). Plain NumPy: one tensordot per kernel tap and group.
    """
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Ho = conv_out_size(H, kh, sh, pt, pb, dh)
    Wo = conv_out_size(W, kw, sw, pl, pr, dw)
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=np.float32)
    xp[:, :, pt:pt + H, pl:pl + W] = x
    Mg = M // group
    y = np.zeros((N, M, Ho, Wo), dtype=np.float32)
    for g in range(group):
        xs = xp[:, g * Cg:(g + 1) * Cg]
        wg = w[g * Mg:(g + 1) * Mg]
        acc = np.zeros((N, Mg, Ho, Wo), dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (Ho - 1) + 1: sh, j * dw: j * dw + sw * (Wo - 1) + 1: sw]
                # (N, Cg, Ho, Wo) x (Mg, Cg) -> (N, Ho, Wo, Mg) -> NCHW
                acc += np.tensordot(patch, wg[:, :, i, j], axes=([1], [1])).transpose(0, 3, 1, 2)
        y[:, g * Mg:(g + 1) * Mg] = acc
    if b is not None:
        y += b.reshape(1, M, 1, 1)
    return y


# ---------------------------------------------------------------------------------------------
# Numba CPU


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
    # columns whose last Wp - Wo columns are garbage (cropped by _crop_wide). ~15% more GEMM work
    # for CaffeNet's 13x13 planes, but the copy is a memcpy (measured 2-4x faster than _im2col's
    # per-pixel gather at batch 1).
    C = xf.shape[1]
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        off = i * dh * Wp + j * dw
        for n in range(nb):
            col[r, n * L:(n + 1) * L] = xf[n0 + n, c, off:off + L]


@njit(parallel=True, cache=True, nogil=True)
def _crop_wide(yw, b, has_bias, n0, nb, Wp, L, y):
    # yw: (M, nb*L) wide GEMM result -> y[n0:n0+nb]: (N, M, Ho, Wo) + bias, dropping each row's
    # Wp - Wo garbage columns; the bias add rides along so the output is touched once
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
def _add_bias_planes(y, b):
    # y: (N, M, P) += b[m]
    N, M, P = y.shape
    for t in prange(N * M):
        m = t % M
        n = t // M
        bm = b[m]
        for p in range(P):
            y[n, m, p] += bm


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


@njit(parallel=True, cache=True, nogil=True)
def _depthwise_s1(x, w, b, has_bias, pt, pl, mult, y):
    # x: (N, C, H, W), w: (C*mult, 1, kh, kw), y: (N, C*mult, Ho, Wo); stride 1, no dilation
    N = x.shape[0]
    M = w.shape[0]
    for t in prange(N * M):
        n = t // M
        m = t % M
        _dw_plane_s1(x[n, m // mult], w[m, 0], b[m] if has_bias else np.float32(0.0), pt, pl, y[n, m])


# ---- Winograd F(2x2, 3x3) (Lavin & Gray, 2016) for 3x3 stride-1 convolutions (CaffeNet conv3-5)
# Each 2x2 output tile is computed from a 4x4 input tile with 16 multiplies per (m, c) pair
# instead of 36: Y = A^T [ (G g G^T) * (B^T d B) ] A, the elementwise products summed over c as
# 16 GEMMs (M x C) @ (C x tiles). 2.25x fewer FLOPs in the GEMMs; the transforms are adds.


@njit(parallel=True, cache=True, nogil=True)
def _winograd_filter(w):
    # w: (M, Cg, 3, 3) -> U: (16, M, Cg) = G g G^T, G = [[1,0,0],[.5,.5,.5],[.5,-.5,.5],[0,0,1]]
    M, Cg = w.shape[0], w.shape[1]
    U = np.empty((16, M, Cg), dtype=np.float32)
    for m in prange(M):
        t = np.empty((4, 3), dtype=np.float32)
        for c in range(Cg):
            for j in range(3):
                g0, g1, g2 = w[m, c, 0, j], w[m, c, 1, j], w[m, c, 2, j]
                t[0, j] = g0
                t[1, j] = 0.5 * (g0 + g1 + g2)
                t[2, j] = 0.5 * (g0 - g1 + g2)
                t[3, j] = g2
            for i in range(4):
                g0, g1, g2 = t[i, 0], t[i, 1], t[i, 2]
                U[i * 4 + 0, m, c] = g0
                U[i * 4 + 1, m, c] = 0.5 * (g0 + g1 + g2)
                U[i * 4 + 2, m, c] = 0.5 * (g0 - g1 + g2)
                U[i * 4 + 3, m, c] = g2
    return U


@njit(parallel=True, cache=True, nogil=True)
def _winograd_input(xp, n0, nb, th, tw, V):
    # xp: (N, C, 2*th+2, 2*tw+2) zero-padded input -> V: (16, C, nb*th*tw) = B^T d B per 4x4 tile,
    # B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]; scalars only (no scratch arrays)
    C = xp.shape[1]
    T = th * tw
    for t in prange(nb * C):
        n = t // C
        c = t % C
        img = xp[n0 + n, c]
        for a in range(th):
            r = 2 * a
            for b in range(tw):
                q = 2 * b
                col = n * T + a * tw + b
                # columns j of B^T d
                u00 = img[r, q] - img[r + 2, q]
                u01 = img[r, q + 1] - img[r + 2, q + 1]
                u02 = img[r, q + 2] - img[r + 2, q + 2]
                u03 = img[r, q + 3] - img[r + 2, q + 3]
                u10 = img[r + 1, q] + img[r + 2, q]
                u11 = img[r + 1, q + 1] + img[r + 2, q + 1]
                u12 = img[r + 1, q + 2] + img[r + 2, q + 2]
                u13 = img[r + 1, q + 3] + img[r + 2, q + 3]
                u20 = img[r + 2, q] - img[r + 1, q]
                u21 = img[r + 2, q + 1] - img[r + 1, q + 1]
                u22 = img[r + 2, q + 2] - img[r + 1, q + 2]
                u23 = img[r + 2, q + 3] - img[r + 1, q + 3]
                u30 = img[r + 1, q] - img[r + 3, q]
                u31 = img[r + 1, q + 1] - img[r + 3, q + 1]
                u32 = img[r + 1, q + 2] - img[r + 3, q + 2]
                u33 = img[r + 1, q + 3] - img[r + 3, q + 3]
                V[0, c, col] = u00 - u02
                V[1, c, col] = u01 + u02
                V[2, c, col] = u02 - u01
                V[3, c, col] = u01 - u03
                V[4, c, col] = u10 - u12
                V[5, c, col] = u11 + u12
                V[6, c, col] = u12 - u11
                V[7, c, col] = u11 - u13
                V[8, c, col] = u20 - u22
                V[9, c, col] = u21 + u22
                V[10, c, col] = u22 - u21
                V[11, c, col] = u21 - u23
                V[12, c, col] = u30 - u32
                V[13, c, col] = u31 + u32
                V[14, c, col] = u32 - u31
                V[15, c, col] = u31 - u33


@njit(parallel=True, cache=True, nogil=True)
def _winograd_output(Mt, b, has_bias, n0, nb, th, tw, y):
    # Mt: (16, M, nb*th*tw) -> y[n0:n0+nb]: (N, M, Ho, Wo) = A^T m A (+ bias), A^T = [[1,1,1,0],[0,1,-1,-1]]
    M = Mt.shape[1]
    Ho, Wo = y.shape[2], y.shape[3]
    T = th * tw
    for t in prange(nb * M):
        n = t // M
        m = t % M
        bias = b[m] if has_bias else np.float32(0.0)
        for a in range(th):
            for bb in range(tw):
                col = n * T + a * tw + bb
                # rows of A^T m, then columns
                s00 = Mt[0, m, col] + Mt[4, m, col] + Mt[8, m, col]
                s01 = Mt[1, m, col] + Mt[5, m, col] + Mt[9, m, col]
                s02 = Mt[2, m, col] + Mt[6, m, col] + Mt[10, m, col]
                s03 = Mt[3, m, col] + Mt[7, m, col] + Mt[11, m, col]
                s10 = Mt[4, m, col] - Mt[8, m, col] - Mt[12, m, col]
                s11 = Mt[5, m, col] - Mt[9, m, col] - Mt[13, m, col]
                s12 = Mt[6, m, col] - Mt[10, m, col] - Mt[14, m, col]
                s13 = Mt[7, m, col] - Mt[11, m, col] - Mt[15, m, col]
                oh = 2 * a
                ow = 2 * bb
                y[n0 + n, m, oh, ow] = s00 + s01 + s02 + bias
                if ow + 1 < Wo:
                    y[n0 + n, m, oh, ow + 1] = s01 - s02 - s03 + bias
                if oh + 1 < Ho:
                    y[n0 + n, m, oh + 1, ow] = s10 + s11 + s12 + bias
                    if ow + 1 < Wo:
                        y[n0 + n, m, oh + 1, ow + 1] = s11 - s12 - s13 + bias


def _zero_pad_to(x, pt, pl, Hp, Wp):
    """x: (N, C, H, W) -> (N, C, Hp, Wp) float32: x placed at row pt, column pl, zeros around it,
    and cut where it would extend past Hp x Wp (rows/columns the caller never reads)."""
    N, C, H, W = x.shape
    xp = np.zeros((N, C, Hp, Wp), dtype=np.float32)
    h1, w1 = min(H, Hp - pt), min(W, Wp - pl)
    xp[:, :, pt:pt + h1, pl:pl + w1] = x[:, :, :h1, :w1]
    return xp


#: use Winograd for eligible 3x3 layers in ``convolution_cpu`` (False: always im2col + GEMM)
WINOGRAD = os.environ.get("MINICAFFE_WINOGRAD", "1") != "0"
#: bytes allowed for the transformed input of one Winograd chunk
WINOGRAD_BUDGET = 4 << 20


def winograd_applies(w, stride, dilation, group, x_shape):
    """Where ``convolution_cpu`` uses Winograd: a 3x3 kernel, stride 1, no dilation, not
    depthwise, enough channels for the GEMMs to dominate, batch >= 8."""
    M, Cg, kh, kw = w.shape
    if not (kh == kw == 3 and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and Cg >= 16 and M // group >= 16):
        return False
    # From batch 8. Measured 2026-11-30 with 2 threads inside the whole CaffeNet forward
    # (`python -m minicaffe.profile`, MINICAFFE_WINOGRAD=0 vs 1, medians, conv3/4/5): batch 1
    # 2.1/1.9/1.5 ms wide im2col vs 2.8/2.4/1.9 Winograd -- in the net every layer starts with a
    # cold cache (the fc weights flushed it), and the transformed filters (16/9 of the weights)
    # plus the cache check read ~4x the weight bytes; batch 4 a tie; batch 10 20/19/15 vs 16/16/13.
    # (Isolated micro-benchmarks with hot caches favour Winograd even at batch 1: do not trust them.)
    return x_shape[0] >= 8


def _winograd_filters_uncached(w):
    # w: (M, Cg, k, k) -> U: (16, M, S*Cg), S = ceil(k/3)^2 pieces; a group's K axis runs over
    # (piece, channel), matching V's layout in convolution_winograd_cpu
    M, Cg, k, _ = w.shape
    ks = -(-k // 3)
    wp = np.zeros((M, Cg, 3 * ks, 3 * ks), dtype=np.float32)
    wp[:, :, :k, :k] = w
    U = np.empty((16, M, ks * ks * Cg), dtype=np.float32)
    for s in range(ks * ks):
        oa, ob = 3 * (s // ks), 3 * (s % ks)
        U[:, :, s * Cg:(s + 1) * Cg] = _winograd_filter(np.ascontiguousarray(wp[:, :, oa:oa + 3, ob:ob + 3]))
    return U


@njit(parallel=True, cache=True, nogil=True)
def _same_values(a, b):
    # a, b: flat float32 of one size -> True when bitwise-equal as numbers (NaN never equal)
    diff = 0
    for i in prange(a.size):
        if a[i] != b[i]:
            diff += 1
    return diff == 0


#: transformed filters by weight array: id(w) -> (copy of w, U); bounded, least recently used out
_FILTER_CACHE = {}
FILTER_CACHE_SIZE = 64


def winograd_filters(w):
    """w: (M, Cg, k, k) float32 -> U: (16, M, S*Cg), the Winograd filter transform, computed once
    per weight array and reused while the array's values are unchanged.

    Recomputing it per call cost as much as the whole Winograd GEMM at small batches (CaffeNet
    conv3 at batch 1: ~1 ms of 3). Weights may be edited in place (``net.params[...][0][...] =``,
    training), so every hit compares the current values with a private copy (one parallel pass
    over w, ~1/16 of the transform's memory traffic) and recomputes on any difference: the
    cache can never serve a stale transform."""
    key = (id(w), w.shape)
    hit = _FILTER_CACHE.pop(key, None)
    wf = np.ascontiguousarray(w, dtype=np.float32)
    if hit is not None and _same_values(hit[0].ravel(), wf.ravel()):
        _FILTER_CACHE[key] = hit                      # re-insert: most recently used last
        return hit[1]
    U = _winograd_filters_uncached(wf)
    _FILTER_CACHE[key] = (wf.copy(), U)
    if hit is None:
        # the entry goes with the weight array (a deleted net frees its transforms at once); an
        # id can only be reused after this callback has run, so it never drops a newer entry
        weakref.finalize(w, _FILTER_CACHE.pop, key, None)
    while len(_FILTER_CACHE) > FILTER_CACHE_SIZE:
        _FILTER_CACHE.pop(next(iter(_FILTER_CACHE)))
    return U


def convolution_winograd_cpu(x, w, b, pad=(1, 1, 1, 1), group=1):
    """x: (N, C, H, W), w: (M, C/group, k, k) -> (N, M, Ho, Wo); stride-1 convolution by Winograd
    F(2x2, 3x3) (same contract as :func:`convolution_reference` for those layers).

    k > 3 (CaffeNet conv2: 5x5) is zero-padded to 3*ks and split into ks*ks 3x3 pieces at offsets
    (3a, 3b); their transformed inputs are stacked along the GEMM's K axis, so each 2x2 tile
    still needs a single GEMM and a single output transform: y = sum over pieces."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, k, _ = w.shape
    ks = -(-k // 3)
    S = ks * ks
    pt, pb, pl, pr = pad
    Ho, Wo = H + pt + pb - k + 1, W + pl + pr - k + 1
    th, tw = (Ho + 1) // 2, (Wo + 1) // 2
    T = th * tw
    Mg = M // group
    offsets = [(3 * a, 3 * c) for a in range(ks) for c in range(ks)]
    U = winograd_filters(w)
    has_bias = b is not None
    bb = b if has_bias else np.zeros(M, np.float32)
    nb = int(max(1, min(N, WINOGRAD_BUDGET // max(1, 16 * C * S * T * 4))))
    V = np.empty((16, C * S, nb * T), dtype=np.float32)     # K rows ordered (group, piece, channel)
    Mt = np.empty((16, M, nb * T), dtype=np.float32)
    y = np.empty((N, M, Ho, Wo), dtype=np.float32)
    # zero-pad once to whole 4x4 tiles for every piece's offset: the tile loops need no bounds checks
    hp, wq = 2 * th + 2, 2 * tw + 2
    xp = _zero_pad_to(x, pt, pl, hp + 3 * (ks - 1), wq + 3 * (ks - 1))
    for n0 in range(0, N, nb):
        cur = min(nb, N - n0)
        V_ = V if cur == nb else np.empty((16, C * S, cur * T), dtype=np.float32)
        M_ = Mt if cur == nb else np.empty((16, M, cur * T), dtype=np.float32)
        for g in range(group):
            for s, (oa, ob) in enumerate(offsets):
                r = (g * S + s) * Cg
                _winograd_input(xp[:, g * Cg:(g + 1) * Cg, oa:oa + hp, ob:ob + wq], n0, cur, th, tw,
                                V_[:, r:r + Cg])
            # 16 GEMMs per group: (Mg, S*Cg) @ (S*Cg, cur*T)
            np.matmul(U[:, g * Mg:(g + 1) * Mg], V_[:, g * S * Cg:(g + 1) * S * Cg], out=M_[:, g * Mg:(g + 1) * Mg])
        _winograd_output(M_, bb, has_bias, n0, cur, th, tw, y)
    return y


def _im2col_chunk(N, K, L):
    # images per chunk: the im2col buffer (K rows x images*L columns) within IM2COL_BUDGET
    return int(max(1, min(N, IM2COL_BUDGET // max(1, K * L * 4))))


def _wide_gemms(w, b, group, nb, L, Wrow, fill, y, per_group=False):
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
        _crop_wide(yw, bb, has_bias, n0, cur, Wrow, L, y)
    return y


def convolution_wide_cpu(x, w, b, pad=(0, 0, 0, 0), dilation=(1, 1), group=1):
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
    return _wide_gemms(w, b, group, nb, L, Wp, fill, y, per_group=nb == 1 and group > 1)


def convolution_phase_cpu(x, w, b, stride, pad=(0, 0, 0, 0), group=1):
    """x: (N, C, H, W), w: (M, C/group, kh, kw), stride (s, s) -> (N, M, Ho, Wo); strided
    convolution (no dilation) by stride-phase planes + "wide" im2col + one GEMM per group and chunk
    (same contract as :func:`convolution_reference` for those layers).

    Each padded input plane is split once into its s*s stride phases (:func:`_phase_planes`);
    every im2col row is then one contiguous slice of a phase (:func:`_im2col_phase`) instead of a
    per-pixel strided gather, the GEMM computes Ws >= Wo columns per output row and
    :func:`_crop_wide` keeps Wo and adds the bias. The rows keep OIHW order, so the weights need
    no re-layout. CaffeNet conv1 (11x11/4): Ws = 57 for Wo = 55, 3.6% extra GEMM work; measured
    2026-11-30 in isolation with 2 threads 1.2-1.3x faster than the per-pixel im2col at batch
    1/10/64."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, _, kh, kw = w.shape
    st = stride[0]
    pt, pb, pl, pr = pad
    Ho = conv_out_size(H, kh, st, pt, pb)
    Wo = conv_out_size(W, kw, st, pl, pr)
    Hs, Ws = Ho + (kh - 1) // st, Wo + (kw - 1) // st
    L = Ho * Ws
    nb = _im2col_chunk(N, C * kh * kw, L)
    xs = np.empty((nb, C, st, st, Hs * Ws + (kw - 1) // st), dtype=np.float32)

    def fill(n0, cur, g, col):
        _phase_planes(x, n0, cur, st, pt, pl, Hs, Ws, xs)
        _im2col_phase(xs, cur, kh, kw, st, Ws, L, col)

    y = np.empty((N, M, Ho, Wo), dtype=np.float32)
    return _wide_gemms(w, b, group, nb, L, Ws, fill, y)


#: route strided convs like conv1 through space-to-depth + Winograd in ``convolution_cpu``. Off:
#: measured neutral against im2col with 2 threads (conv1 0.96-1.02x at batch 1/10/64), and it needs
#: two extra copies of the input; kept (and tested) for machines where the GEMM is the bottleneck.
SPACE_TO_DEPTH = os.environ.get("MINICAFFE_SPACE_TO_DEPTH", "0") == "1"

# ---- space-to-depth for strided convolutions (CaffeNet conv1: 11x11 stride 4 over 3 channels)
# A stride-s convolution equals a stride-1 convolution over s*s*C channels of s x s pixel blocks
# with a ceil(k/s) kernel (the weight zero-padded to a multiple of s). conv1 becomes a 3x3
# stride-1 convolution over 48 channels: Winograd applies and the expensive stride-4 im2col goes.


def space_to_depth_applies(w, stride, dilation, group):
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    return (sh == sw and sh > 1 and tuple(dilation) == (1, 1) and group == 1 and kh >= sh and kw >= sw
            and -(-kh // sh) == 3 and -(-kw // sw) == 3 and Cg * sh * sw >= 16)


def convolution_s2d_cpu(x, w, b, stride, pad=(0, 0, 0, 0)):
    """x: (N, C, H, W), w: (M, C, kh, kw), stride (s, s) -> (N, M, Ho, Wo) by space-to-depth and a
    stride-1 convolution (same contract as :func:`convolution_reference`, group 1, no dilation)."""
    N, C, H, W = x.shape
    M, _, kh, kw = w.shape
    s = stride[0]
    pt, pb, pl, pr = pad
    Ho = conv_out_size(H, kh, s, pt, pb)
    Wo = conv_out_size(W, kw, s, pl, pr)
    ks, ls = -(-kh // s), -(-kw // s)
    Hs, Ws = Ho + ks - 1, Wo + ls - 1
    # padded input cut/extended to exactly Hs*s x Ws*s rows/cols (beyond that is never read)
    xp = _zero_pad_to(x, pt, pl, Hs * s, Ws * s)
    # (N, C, Hs, s, Ws, s) -> (N, C, s_h, s_w, Hs, Ws): channel c*s*s + a*s + b holds x[c, p*s+a, q*s+b]
    xs = np.ascontiguousarray(xp.reshape(N, C, Hs, s, Ws, s).transpose(0, 1, 3, 5, 2, 4)).reshape(N, C * s * s, Hs, Ws)
    wp = np.zeros((M, C, ks * s, ls * s), dtype=np.float32)
    wp[:, :, :kh, :kw] = w
    ws = np.ascontiguousarray(wp.reshape(M, C, ks, s, ls, s).transpose(0, 1, 3, 5, 2, 4)).reshape(M, C * s * s, ks, ls)
    return convolution_cpu(xs, ws, b, (1, 1), (0, 0, 0, 0), (1, 1), 1)


#: bytes allowed for one im2col buffer; batches are processed in chunks that fit. Small enough
#: for the buffer to stay in cache between im2col and the GEMMs that read it (measured: 64 MB
#: -> 8-16 MB made CaffeNet conv1 at batch 64 ~25% faster)
IM2COL_BUDGET = 16 << 20


def convolution_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1):
    """x: (N, C, H, W) -> (N, M, Ho, Wo); same contract as :func:`convolution_reference`."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Ho = conv_out_size(H, kh, sh, pt, pb, dh)
    Wo = conv_out_size(W, kw, sw, pl, pr, dw)
    has_bias = b is not None
    bb = b if has_bias else np.zeros(M, np.float32)
    if group == C and Cg == 1:
        y = np.empty((N, M, Ho, Wo), dtype=np.float32)
        if sh == sw == 1 and dh == dw == 1:
            _depthwise_s1(x, w, bb, has_bias, pt, pl, M // C, y)
        else:
            _depthwise(x, w, bb, has_bias, sh, sw, pt, pl, dh, dw, M // C, y)
        return y
    if WINOGRAD and winograd_applies(w, stride, dilation, group, x.shape):
        return convolution_winograd_cpu(x, w, b, pad, group)
    if SPACE_TO_DEPTH and space_to_depth_applies(w, stride, dilation, group):
        return convolution_s2d_cpu(x, w, b, stride, pad)
    if kh == kw == 1 and sh == sw == 1 and pad == (0, 0, 0, 0) and group == 1:
        # 1x1 conv is a plain GEMM per image: (M, C) @ (C, H*W); no im2col copy needed
        y = np.matmul(w.reshape(M, C), x.reshape(N, C, H * W))
        if has_bias:
            _add_bias_planes(y, bb)
        return y.reshape(N, M, Ho, Wo)
    if sh == sw == 1:
        return convolution_wide_cpu(x, w, b, pad, dilation, group)
    if sh == sw and dh == dw == 1:
        return convolution_phase_cpu(x, w, b, stride, pad, group)
    # unequal strides, or strided and dilated: the per-pixel gather, through the same chunk loop
    # (a "wide" row of exactly Wo columns, so the crop pass only adds the bias)
    P = Ho * Wo
    nb = _im2col_chunk(N, C * kh * kw, P)

    def fill(n0, cur, g, col):
        _im2col(x, n0, cur, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo, col)

    return _wide_gemms(w, b, group, nb, P, Wo, fill, np.empty((N, M, Ho, Wo), dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# Numba CUDA


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
    Ho = conv_out_size(H, kh, stride[0], pt, pb, dilation[0])
    Wo = conv_out_size(W, kw, stride[1], pl, pr, dilation[1])
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


# ---------------------------------------------------------------------------------------------
# layer


def conv_geometry(layer, p):
    """Parse kernel/stride/pad/dilation from a convolution_param (Caffe field conventions)."""
    kh, kw = hw_param(layer, p, "kernel", required=True)
    if kh < 1 or kw < 1:
        raise layer.err("kernel size must be >= 1")
    sh, sw = hw_param(layer, p, "stride", default=1)
    if sh < 1 or sw < 1:
        raise layer.err("stride must be >= 1")
    ph, pw = hw_param(layer, p, "pad", default=0)
    pad = (ph, ph, pw, pw)
    asym = [p.get(k) for k in ("pad_top", "pad_bottom", "pad_left", "pad_right")]
    if any(v is not None for v in asym):
        if p.has("pad") or p.has("pad_h"):
            raise layer.err("give either pad/pad_h/pad_w or pad_top/pad_bottom/pad_left/pad_right")
        pad = tuple(int_value(layer, k, v or 0, 0) for k, v in zip(("pad_top", "pad_bottom", "pad_left",
                                                                      "pad_right"), asym))
    dil = p.getall("dilation")
    if len(dil) == 0:
        dh = dw = 1
    elif len(dil) == 1:
        dh = dw = dil[0]
    elif len(dil) == 2:
        dh, dw = dil[0], dil[1]
    else:
        raise layer.err(f"dilation given {len(dil)} times; 2-D layers take 1 or 2 values")
    int_value(layer, "dilation", dh, 1)
    int_value(layer, "dilation", dw, 1)
    return (kh, kw), (sh, sw), pad, (dh, dw)


@register("Convolution")
class Convolution(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("convolution_param")
        self.num_output = p.get("num_output")
        if not isinstance(self.num_output, int) or self.num_output < 1:
            raise self.err("convolution_param.num_output must be a positive integer")
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, p)
        self.group = p.get("group", 1)
        if not isinstance(self.group, int) or self.group < 1 or self.num_output % self.group:
            raise self.err(f"group {self.group!r} must be >= 1 and divide num_output {self.num_output}")
        self.bias_term = as_bool(p.get("bias_term"), True)
        if p.get("axis", 1) != 1:
            raise self.err("only axis: 1 (NCHW) is supported")

    def setup(self, shapes):
        if len(shapes[0]) != 4:
            raise self.err(f"expects a 4-D (N, C, H, W) input, got shape {shapes[0]}")
        N, C, H, W = shapes[0]
        if C % self.group:
            raise self.err(f"input channels {C} not divisible by group {self.group}")
        kh, kw = self.kernel
        Ho = conv_out_size(H, kh, self.stride[0], self.pad[0], self.pad[1], self.dilation[0])
        Wo = conv_out_size(W, kw, self.stride[1], self.pad[2], self.pad[3], self.dilation[1])
        if Ho < 1 or Wo < 1:
            raise self.err(f"input {H}x{W} is smaller than the kernel {kh}x{kw} (with padding)")
        self.param_shapes = [(self.num_output, C // self.group, kh, kw)]
        if self.bias_term:
            self.param_shapes.append((self.num_output,))
        return [(N, self.num_output, Ho, Wo)]

    def flops(self, bshapes, tshapes):
        N, M, Ho, Wo = tshapes[0]
        _, Cg, kh, kw = self.param_shapes[0]
        return 2 * N * M * Ho * Wo * Cg * kh * kw

    def forward(self, bottoms, params, backend, inplace=False):
        w = params[0]
        b = params[1] if self.bias_term else None
        f = {"numpy": convolution_reference, "cpu": convolution_cpu, "cuda": convolution_cuda}[backend]
        return [f(bottoms[0], w, b, self.stride, self.pad, self.dilation, self.group)]


# ---------------------------------------------------------------------------------------------
# backward (training): gradients w.r.t. the input, the weight and the bias


def convolution_backward_reference(dy, x, w, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1):
    """dy: (N, M, Ho, Wo), x: (N, C, H, W), w: (M, C/group, kh, kw) -> (dx, dw, db).

    dx: (N, C, H, W), dw: (M, C/group, kh, kw), db: (M,). Plain NumPy, one tensordot per kernel
    tap and group (the transpose of :func:`convolution_reference`); keeps the inputs' dtype, so
    float64 inputs give a float64 gradient for finite-difference checks.
    """
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw_ = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = dy.shape[2], dy.shape[3]
    dt = np.result_type(dy, x, w)
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=dt)
    xp[:, :, pt:pt + H, pl:pl + W] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape, dtype=dt)
    Mg = M // group
    for g in range(group):
        dyg = dy[:, g * Mg:(g + 1) * Mg]                      # (N, Mg, Ho, Wo)
        wg = w[g * Mg:(g + 1) * Mg]
        for i in range(kh):
            for j in range(kw):
                hs = slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh)
                ws = slice(j * dw_, j * dw_ + sw * (Wo - 1) + 1, sw)
                patch = xp[:, g * Cg:(g + 1) * Cg, hs, ws]     # (N, Cg, Ho, Wo)
                dw[g * Mg:(g + 1) * Mg, :, i, j] = np.tensordot(dyg, patch, axes=([0, 2, 3], [0, 2, 3]))
                # (N, Mg, Ho, Wo) x (Mg, Cg) -> (N, Ho, Wo, Cg) -> NCHW
                dxp[:, g * Cg:(g + 1) * Cg, hs, ws] += np.tensordot(dyg, wg[:, :, i, j],
                                                                    axes=([1], [0])).transpose(0, 3, 1, 2)
    dx = np.ascontiguousarray(dxp[:, :, pt:pt + H, pl:pl + W])
    return dx, dw, dy.sum(axis=(0, 2, 3)).astype(dt)


@njit(parallel=True, cache=True, nogil=True)
def _col2im(col, n0, nb, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo, dx):
    # col: (C*kh*kw, nb*Ho*Wo), rows (c, i, j) as in _im2col; adds into dx[n0:n0+nb].
    # One (image, channel) plane per iteration (plane writes never overlap: no races; CaffeNet's
    # conv1 has only 3 channels, so parallelising over channels alone left a core idle). The
    # valid ow range of each (j) is found once, so the inner loop is a branch-free pass over
    # strided views indexed by the loop variable only.
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    P = Ho * Wo
    for t in prange(nb * C):
        n = t // C
        c = t % C
        plane = dx[n0 + n, c]
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                off = j * dw - pl
                lo, hi = _valid_cols(off, sw, W, Wo)
                if hi <= lo:
                    continue
                for oh in range(Ho):
                    ih = oh * sh - pt + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    base = n * P + oh * Wo
                    src = col[r, base + lo:base + hi]
                    dst = plane[ih, lo * sw + off:(hi - 1) * sw + off + 1:sw]
                    for k in range(hi - lo):
                        dst[k] += src[k]


@njit(parallel=True, cache=True, nogil=True)
def _gather_dy(dy, n0, nb, out):
    # dy: (N, M, P) -> out: (M, nb*P), the column layout of the forward GEMM result
    M, P = dy.shape[1], dy.shape[2]
    for m in prange(M):
        for n in range(nb):
            for p in range(P):
                out[m, n * P + p] = dy[n0 + n, m, p]


@njit(parallel=True, cache=True, nogil=True)
def _depthwise_backward(dy, x, w, sh, sw, pt, pl, dh, dw, mult, dx, dwt):
    # dy: (N, C*mult, Ho, Wo); dx: (N, C, H, W) zeroed; dwt: (N, C*mult, kh, kw) per-sample
    # weight gradients (summed by the caller), so each (n, c) iteration writes only its own cells.
    # Zero-padded copies of the input plane and of its gradient make every tap a branch-free pass
    # over whole output rows, on views indexed by the loop variable only (vectorises).
    N, C, H, W = x.shape
    kh, kw = w.shape[2], w.shape[3]
    Ho, Wo = dy.shape[2], dy.shape[3]
    Hp = max(H + pt, (Ho - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl, (Wo - 1) * sw + (kw - 1) * dw + 1)
    for t in prange(N * C):
        n = t // C
        c = t % C
        xp = np.zeros((Hp, Wp), dtype=np.float32)
        xp[pt:pt + H, pl:pl + W] = x[n, c]
        dxp = np.zeros((Hp, Wp), dtype=np.float32)
        for q in range(mult):
            m = c * mult + q
            for i in range(kh):
                for j in range(kw):
                    wv = w[m, 0, i, j]
                    acc = np.float32(0.0)
                    for oh in range(Ho):
                        r = oh * sh + i * dh
                        g = dy[n, m, oh]
                        xr = xp[r, j * dw:j * dw + (Wo - 1) * sw + 1:sw]
                        dr = dxp[r, j * dw:j * dw + (Wo - 1) * sw + 1:sw]
                        for ow in range(Wo):
                            acc += g[ow] * xr[ow]
                            dr[ow] += g[ow] * wv
                    dwt[n, m, i, j] = acc
        dx[n, c] = dxp[pt:pt + H, pl:pl + W]


def convolution_backward_cpu(dy, x, w, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1):
    """Same contract as :func:`convolution_backward_reference`, float32.

    im2col per batch chunk (Numba), the two GEMMs per group through NumPy's BLAS
    (``dW_g = dY_g col_g^T``, ``dcol_g = W_g^T dY_g``), col2im back (Numba). Depthwise convs use a
    direct kernel.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw_ = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = dy.shape[2], dy.shape[3]
    db = dy.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    dx = np.zeros((N, C, H, W), dtype=np.float32)
    if group == C and Cg == 1:
        dwt = np.zeros((N, M, kh, kw), dtype=np.float32)
        _depthwise_backward(dy, x, np.ascontiguousarray(w, np.float32), sh, sw, pt, pl, dh, dw_, M // C, dx, dwt)
        return dx, dwt.sum(axis=0).reshape(w.shape), db
    if kh == kw == 1 and sh == sw == 1 and pad == (0, 0, 0, 0) and group == 1:
        # 1x1 conv: the column matrix is the input itself, (C, H*W) per image; no im2col/col2im
        # two plain 2-D GEMMs over all images at once (batched matmul with a transposed operand
        # leaves BLAS): NCHW -> (C, N*H*W) and (M, N*H*W) copies
        P = H * W
        xc = np.ascontiguousarray(x.reshape(N, C, P).transpose(1, 0, 2)).reshape(C, N * P)
        dyc = np.ascontiguousarray(dy.reshape(N, M, P).transpose(1, 0, 2)).reshape(M, N * P)
        w2 = np.ascontiguousarray(w.reshape(M, C), dtype=np.float32)
        dw = dyc @ xc.T                                            # (M, N*P) @ (N*P, C)
        dxc = w2.T @ dyc                                           # (C, M) @ (M, N*P)
        dx = np.ascontiguousarray(dxc.reshape(C, N, P).transpose(1, 0, 2))   # back to NCHW
        return dx.reshape(N, C, H, W), dw.reshape(w.shape), db
    P = Ho * Wo
    K = C * kh * kw
    Kg, Mg = Cg * kh * kw, M // group
    nb = _im2col_chunk(N, K, P)
    w2 = np.ascontiguousarray(w.reshape(M, Kg), dtype=np.float32)   # OIHW -> (M, Cg*kh*kw)
    dw2 = np.zeros((M, Kg), dtype=np.float32)
    dy3 = dy.reshape(N, M, P)
    for n0 in range(0, N, nb):
        cur = min(nb, N - n0)
        col = np.empty((K, cur * P), dtype=np.float32)
        _im2col(x, n0, cur, kh, kw, sh, sw, pt, pl, dh, dw_, Ho, Wo, col)
        dyc = np.empty((M, cur * P), dtype=np.float32)
        _gather_dy(dy3, n0, cur, dyc)
        dcol = np.empty((K, cur * P), dtype=np.float32)
        for g in range(group):
            dw2[g * Mg:(g + 1) * Mg] += dyc[g * Mg:(g + 1) * Mg] @ col[g * Kg:(g + 1) * Kg].T
            np.matmul(w2[g * Mg:(g + 1) * Mg].T, dyc[g * Mg:(g + 1) * Mg], out=dcol[g * Kg:(g + 1) * Kg])
        _col2im(dcol, n0, cur, kh, kw, sh, sw, pt, pl, dh, dw_, Ho, Wo, dx)
    return dx, dw2.reshape(w.shape), db


def _convolution_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    """-> ([dx], [dw, db]) for the layer's bottom and parameters (numpy/cpu backends)."""
    f = {"numpy": convolution_backward_reference, "cpu": convolution_backward_cpu}[backend]
    dx, dw, db = f(top_diffs[0], bottoms[0], params[0], self.stride, self.pad, self.dilation, self.group)
    return [dx], ([dw, db] if self.bias_term else [dw])


# attached here, after the forward code, so the backward lives beside it in this module
Convolution.backward = _convolution_layer_backward
