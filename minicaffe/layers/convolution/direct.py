"""Direct convolution by an indirect register-blocked micro-kernel: no im2col buffer, no BLAS.

Shapes: ``x: (N, C, H, W)``, weight ``(M, C/group, kh, kw)`` (OIHW), output ``(N, M, Ho, Wo)``;
any stride, padding and dilation (not depthwise). The input is zero-padded once; a table of K =
Cg*kh*kw offsets (one per kernel tap, OIHW order) locates each tap relative to an output pixel's
base index, so :func:`minicaffe.simd.indirect_tile` reads the input in place. Weights are packed
once per weight array into panels of ``NR`` output channels (K x NR, zero-padded past M) and
cached. Each task is a block of tiles (``MR`` consecutive output pixels each, row-major over the
plane) of one image, group and channel panel, taken by the threads from a shared counter as they
finish (dynamic scheduling: a busy core slows the pass by its share); the tile's bias and ReLU
are applied when it is stored (NHWC register tile -> NCHW).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ...backend import serial_twin
from ...simd import MR, NR, fetch_add, indirect_tile, indirect_tile_store, tile_task
from ..base import channels_last_view
from .cache import cached_transform, fused_cap
from .reference import conv_out_hw

#: tiles per task (a few output rows: tasks stay many, a panel stays hot across them)
TILES_PER_TASK = 8
#: elements from which the padding copy runs on all threads (below, waking them costs more)
PARALLEL_PAD_FROM = 1 << 18


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


_pad_planes_serial = serial_twin(_pad_planes)

_OFFSETS = {}


def _tap_offsets(Cg, kh, kw, Hp, Wp, dh, dw):
    """(Cg*kh*kw,) int64: where tap (c, i, j), OIHW order, sits relative to an output pixel's base
    index in a stack of padded (Hp, Wp) planes; cached per geometry."""
    key = (Cg, kh, kw, Hp, Wp, dh, dw)
    offs = _OFFSETS.get(key)
    if offs is None:
        ci, ii, jj = np.meshgrid(np.arange(Cg), np.arange(kh), np.arange(kw), indexing="ij")
        offs = (ci * (Hp * Wp) + ii * dh * Wp + jj * dw).reshape(-1).astype(np.int64)
        offs.setflags(write=False)
        if len(_OFFSETS) > 256:
            _OFFSETS.clear()
        _OFFSETS[key] = offs
    return offs


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
def _direct(xp, offs, bp, b, has_bias, relu, cap, sh, sw, Cg, Wo, workers, counter, out_nhwc, y3):
    # xp: (N, C, Hp, Wp) padded; offs: (K,) tap offsets within a group's channels; bp: (G, P, K*NR)
    # packed weights; y3: (N, M, Ho*Wo), or (N, Ho*Wo, M) when out_nhwc (channels last). Tiles run
    # over the output plane's pixels in row-major order (a tile may span two rows; the plane's last
    # tile is shifted back to end at the last pixel), each pixel located in the padded input by its
    # own base index, so no computed pixel is wasted on padding columns. Tasks (image, group,
    # panel, block of tiles) are taken from a shared counter by ``workers`` threads as they finish
    # (counter: int64[1] = 0): a thread that shares its core with another process does less.
    # Consecutive tasks share a panel.
    N, C, Hp, Wp = xp.shape
    G, P = bp.shape[0], bp.shape[1]
    M = y3.shape[2] if out_nhwc else y3.shape[1]
    L = y3.shape[1] if out_nhwc else y3.shape[2]
    Mg = M // G
    K = offs.shape[0]
    plane = Hp * Wp
    ntiles = (L + MR - 1) // MR
    nblk = (ntiles + TILES_PER_TASK - 1) // TILES_PER_TASK
    total = N * G * P * nblk
    lo = np.float32(0.0) if relu else np.float32(-np.inf)
    for _w in prange(workers):
        cs = np.empty(MR * NR, dtype=np.float32)
        pix = np.empty(MR, dtype=np.int64)
        ypix = np.empty(MR, dtype=np.int64)
        bias = np.zeros(NR, dtype=np.float32)
        while True:
            t = fetch_add(counter, 0, 1)
            if t >= total:
                break
            n, g, pnl, blk = tile_task(t, nblk, P, G)
            xf = xp[n].reshape(C * plane)
            panel = bp[g, pnl]
            base = g * Cg * plane
            m0 = g * Mg + pnl * NR
            mcount = min(NR, Mg - pnl * NR)
            if has_bias:
                for mm in range(mcount):
                    bias[mm] = b[m0 + mm]
            yn = y3[n]
            yflat = yn.reshape(L * M)
            for ti in range(blk * TILES_PER_TASK, min(ntiles, (blk + 1) * TILES_PER_TASK)):
                q0 = min(ti * MR, L - MR)
                oh = q0 // Wo
                ow = q0 - oh * Wo
                for p in range(MR):
                    pix[p] = base + oh * sh * Wp + ow * sw
                    ow += 1
                    if ow == Wo:
                        ow = 0
                        oh += 1
                if out_nhwc:
                    for p in range(MR):
                        ypix[p] = (q0 + p) * M + m0
                    indirect_tile_store(xf, pix, offs, K, panel, bias, lo, cap, yflat, ypix, mcount)
                else:
                    indirect_tile(xf, pix, offs, K, panel, cs)
                    for mm in range(mcount):
                        dst = yn[m0 + mm]
                        for p in range(MR):
                            v = cs[p * NR + mm] + bias[mm]
                            dst[q0 + p] = min(max(v, np.float32(0.0)), cap) if relu else v


def direct_applies(x_shape, w, stride, pad, dilation, group):
    """True when :func:`convolution_direct_cpu` can run the layer: not depthwise, and at least MR
    output pixels per plane (the plane's last tile is shifted back, never narrowed)."""
    N, C, H, W = x_shape
    M, Cg, kh, kw = w.shape
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad, dilation)
    return not (group == C and Cg == 1) and Ho * Wo >= MR


def convolution_direct_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1, relu=False,
                           relu_cap=None, channels_last=False):
    """x: (N, C, H, W), w: (M, C/group, kh, kw) -> (N, M, Ho, Wo); same contract as
    :func:`convolution_reference` where :func:`direct_applies` (``relu=True``: max(0, .) applied
    when the tile is stored, the fused in-place ReLU; ``relu_cap``: also min(., cap), ReLU6;
    ``channels_last``: the output's memory is (N, Ho, Wo, M), see :mod:`.nhwc`)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad, dilation)
    if not direct_applies(x.shape, w, stride, pad, dilation, group):
        raise ValueError(f"direct convolution needs >= {MR} output pixels and a non-depthwise layer")
    # padded just far enough for every tap of every output pixel: the kernel has no bounds checks
    Hp = max(H + pt, (Ho - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl, (Wo - 1) * sw + (kw - 1) * dw + 1)
    if (Hp, Wp, pt, pl) == (H, W, 0, 0):
        xp = x                # every tap falls inside the image (CaffeNet's conv1): no padded copy
    else:
        xp = np.empty((N, C, Hp, Wp), dtype=np.float32)
        (_pad_planes if x.size >= PARALLEL_PAD_FROM else _pad_planes_serial)(x, pt, pl, xp)
    offs = _tap_offsets(Cg, kh, kw, Hp, Wp, dh, dw)
    bp = cached_transform(w, ("direct", group), lambda wf: _pack_weights(wf, group))
    has_bias = b is not None
    bb = np.ascontiguousarray(b, dtype=np.float32) if has_bias else np.zeros(1, np.float32)
    cap = fused_cap(relu_cap)
    if channels_last:
        y = np.empty((N, Ho, Wo, M), dtype=np.float32)
        _direct(xp, offs, bp, bb, has_bias, relu, cap, sh, sw, Cg, Wo, numba.get_num_threads(),
                np.zeros(1, np.int64), True, y.reshape(N, Ho * Wo, M))
        return channels_last_view(y)
    y = np.empty((N, M, Ho, Wo), dtype=np.float32)
    _direct(xp, offs, bp, bb, has_bias, relu, cap, sh, sw, Cg, Wo, numba.get_num_threads(),
            np.zeros(1, np.int64), False, y.reshape(N, M, Ho * Wo))
    return y
