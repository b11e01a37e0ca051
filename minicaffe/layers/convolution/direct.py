"""Direct convolution by an indirect register-blocked micro-kernel: no im2col buffer, no BLAS.

Shapes: ``x: (N, C, H, W)``, weight ``(M, C/group, kh, kw)`` (OIHW), output ``(N, M, Ho, Wo)``;
any stride, padding and dilation (not depthwise). The input is zero-padded once; a table of K =
Cg*kh*kw offsets (one per kernel tap, OIHW order) locates each tap relative to an output pixel, so
:func:`minicaffe.simd.indirect_tile` reads the input in place. Weights are packed once per weight
array into panels of ``NR`` output channels (K x NR, zero-padded past M) and cached. Each task is
one output row of one image, group and channel panel; the tile's bias and ReLU are applied when it
is stored (NHWC register tile -> NCHW).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...simd import MR, NR, indirect_tile
from .reference import conv_out_size
from .cache import cached_transform


@njit(parallel=True, cache=True, nogil=True)
def _pad_planes(x, pt, pl, xp):
    # x: (N, C, H, W) -> xp: (N, C, Hp, Wp), x at (pt, pl), zeros elsewhere, cut at Hp x Wp
    N, C, H, W = x.shape
    Hp, Wp = xp.shape[2], xp.shape[3]
    h1, w1 = min(H, Hp - pt), min(W, Wp - pl)
    for t in prange(N * C):
        n = t // C
        c = t % C
        dst = xp[n, c]
        dst[:, :] = 0.0
        for h in range(h1):
            src = x[n, c, h]
            row = dst[pt + h]
            for q in range(w1):
                row[pl + q] = src[q]


def _pack_weights(w, group):
    # w: (M, Cg, kh, kw) -> (group, panels, K*NR): panel p of group g holds output channels
    # g*Mg + p*NR .. + NR as K x NR row-major (k in OIHW (c, i, j) order), zeros past Mg
    M, Cg, kh, kw = w.shape
    Mg = M // group
    K = Cg * kh * kw
    P = -(-Mg // NR)
    out = np.zeros((group, P, K, NR), dtype=np.float32)
    w2 = w.reshape(group, Mg, K)
    for p in range(P):
        m1 = min(Mg, (p + 1) * NR)
        out[:, p, :, :m1 - p * NR] = w2[:, p * NR:m1].transpose(0, 2, 1)
    return out.reshape(group, P, K * NR)


@njit(parallel=True, cache=True, nogil=True)
def _direct(xp, offs, bp, b, has_bias, relu, sh, sw, Cg, y):
    # xp: (N, C, Hp, Wp) padded; offs: (K,) tap offsets within a group's channels; bp: (G, P, K*NR)
    # packed weights; y: (N, M, Ho, Wo). One task per (image, group, panel, output row).
    N, C, Hp, Wp = xp.shape
    G, P = bp.shape[0], bp.shape[1]
    M, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    Mg = M // G
    K = offs.shape[0]
    plane = Hp * Wp
    for t in prange(N * G * P * Ho):
        oh = t % Ho
        r = t // Ho
        pnl = r % P
        r = r // P
        g = r % G
        n = r // G
        xf = xp[n].reshape(C * plane)
        panel = bp[g, pnl]
        cs = np.empty(MR * NR, dtype=np.float32)
        row0 = g * Cg * plane + oh * sh * Wp
        m0 = g * Mg + pnl * NR
        mcount = min(NR, Mg - pnl * NR)
        for ow0 in range(0, Wo, MR):
            # the last tile of a row is shifted left to end at Wo: it recomputes a few pixels
            # instead of running a narrower kernel
            s = min(ow0, Wo - MR)
            indirect_tile(xf, row0 + s * sw, sw, offs, K, panel, cs)
            for mm in range(mcount):
                bias = b[m0 + mm] if has_bias else np.float32(0.0)
                dst = y[n, m0 + mm, oh]
                for p in range(MR):
                    v = cs[p * NR + mm] + bias
                    if relu and v < 0:
                        v = np.float32(0.0)
                    dst[s + p] = v


#: tiles per task in the stride-1 kernel (a few output rows: tasks stay many, panels stay hot)
TILES_PER_TASK = 8


@njit(parallel=True, cache=True, nogil=True)
def _direct_s1(xp, offs, bp, b, has_bias, relu, Cg, y):
    # Stride 1: output pixel (oh, ow) reads the padded input at oh*Wp + ow + offs[k], so the
    # pixels of a "wide" output of Ho rows x Wp columns are consecutive addresses: tiles run along
    # the flattened wide output with no per-row tail (only ow < Wo is stored). Tasks: (image,
    # group, panel, block of TILES_PER_TASK tiles).
    N, C, Hp, Wp = xp.shape
    G, P = bp.shape[0], bp.shape[1]
    M, Ho, Wo = y.shape[1], y.shape[2], y.shape[3]
    Mg = M // G
    K = offs.shape[0]
    plane = Hp * Wp
    L = (Ho - 1) * Wp + Wo                        # wide pixels up to the last valid one
    ntiles = (L + MR - 1) // MR
    nblk = (ntiles + TILES_PER_TASK - 1) // TILES_PER_TASK
    for t in prange(N * G * P * nblk):
        blk = t % nblk
        r = t // nblk
        pnl = r % P
        r = r // P
        g = r % G
        n = r // G
        xf = xp[n].reshape(C * plane)
        panel = bp[g, pnl]
        cs = np.empty(MR * NR, dtype=np.float32)
        base = g * Cg * plane
        m0 = g * Mg + pnl * NR
        mcount = min(NR, Mg - pnl * NR)
        for ti in range(blk * TILES_PER_TASK, min(ntiles, (blk + 1) * TILES_PER_TASK)):
            q0 = min(ti * MR, L - MR)             # the last tile shifted back to end at L
            indirect_tile(xf, base + q0, 1, offs, K, panel, cs)
            for p in range(MR):
                oh = (q0 + p) // Wp
                ow = (q0 + p) - oh * Wp
                if ow >= Wo:
                    continue
                for mm in range(mcount):
                    v = cs[p * NR + mm]
                    if has_bias:
                        v += b[m0 + mm]
                    if relu and v < 0:
                        v = np.float32(0.0)
                    y[n, m0 + mm, oh, ow] = v


def direct_applies(x_shape, w, stride, pad, dilation, group):
    """True when :func:`convolution_direct_cpu` can run the layer: not depthwise, and output rows
    at least MR pixels wide (a row's last tile is shifted, never narrowed)."""
    N, C, H, W = x_shape
    M, Cg, kh, kw = w.shape
    Wo = conv_out_size(W, kw, stride[1], pad[2], pad[3], dilation[1])
    Ho = conv_out_size(H, kh, stride[0], pad[0], pad[1], dilation[0])
    Wp = max(W + pad[2], (Wo - 1) * stride[1] + (kw - 1) * dilation[1] + 1)
    if tuple(stride) == (1, 1):
        return not (group == C and Cg == 1) and (Ho - 1) * Wp + Wo >= MR
    return not (group == C and Cg == 1) and Wo >= MR


def convolution_direct_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1, relu=False):
    """x: (N, C, H, W), w: (M, C/group, kh, kw) -> (N, M, Ho, Wo); same contract as
    :func:`convolution_reference` where :func:`direct_applies` (``relu=True``: max(0, .) applied
    when the tile is stored, the fused in-place ReLU)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Ho = conv_out_size(H, kh, sh, pt, pb, dh)
    Wo = conv_out_size(W, kw, sw, pl, pr, dw)
    if not direct_applies(x.shape, w, stride, pad, dilation, group):
        raise ValueError(f"direct convolution needs >= {MR} output pixels per row (strided) or plane "
                         "(stride 1) and a non-depthwise layer")
    # padded just far enough for every tap of every output pixel: the kernel has no bounds checks
    Hp = max(H + pt, (Ho - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl, (Wo - 1) * sw + (kw - 1) * dw + 1)
    xp = np.empty((N, C, Hp, Wp), dtype=np.float32)
    _pad_planes(x, pt, pl, xp)
    ci, ii, jj = np.meshgrid(np.arange(Cg), np.arange(kh), np.arange(kw), indexing="ij")
    offs = (ci * (Hp * Wp) + ii * dh * Wp + jj * dw).reshape(-1).astype(np.int64)   # OIHW tap order
    bp = cached_transform(w, ("direct", group), lambda wf: _pack_weights(wf, group))
    has_bias = b is not None
    bb = np.ascontiguousarray(b, dtype=np.float32) if has_bias else np.zeros(1, np.float32)
    y = np.empty((N, M, Ho, Wo), dtype=np.float32)
    if sh == sw == 1:
        _direct_s1(xp, offs, bp, bb, has_bias, relu, Cg, y)
    else:
        _direct(xp, offs, bp, bb, has_bias, relu, sh, sw, Cg, y)
    return y
