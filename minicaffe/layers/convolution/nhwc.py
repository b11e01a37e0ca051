"""Channels-last convolution kernels: 1x1 as a GEMM over pixels, depthwise along channel vectors.

Shapes: the input is an ``(N, C, H, W)`` blob whose memory is ``(N, H, W, C)`` (channels last, see
:func:`minicaffe.layers.base.is_channels_last`); weight ``(M, C, 1, 1)`` or ``(C, 1, kh, kw)``
(OIHW); the output is again an ``(N, M, Ho, Wo)`` blob with ``(N, Ho, Wo, M)`` memory. In this
layout a 1x1 convolution is one matrix product ``Y (N*H*W, M) = X (N*H*W, C) @ W^T`` whose A rows
are contiguous, run by the register-blocked tile of :mod:`minicaffe.simd` with bias and the fused
activation applied as each tile is stored (contiguous output rows, no layout change), and a
depthwise convolution is, per output pixel, a multiply-add of contiguous channel vectors per tap
(register tiles of pixels x one channel vector). An inverted-residual chain (1x1 expansion ->
depthwise -> 1x1 projection [+ input], MobileNet v2 / EfficientNet) runs as one kernel band by band
(:func:`convolution_block_nhwc_cpu`), which also runs lone depthwise layers; convolutions with few
taps at small batches (an RGB stem) go through the 1x1 GEMM as rows of taps. All are dynamically
scheduled like the direct kernel, and never change layout between layers.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ...backend import SERIAL_BELOW
from ...simd import (
    DW_R,
    MR,
    NR,
    dw_tile,
    dw_tile1,
    fetch_add,
    indirect_tile_residual,
    indirect_tile_residual_half,
    indirect_tile_store,
    indirect_tile_store_half,
)
from ...simd import W as SIMD_W
from ..base import channels_last_view, is_channels_last, nhwc_memory
from .cache import cached_transform, fused_cap
from .direct import _pack_weights
from .reference import conv_out_hw

#: tiles per task of the 1x1 kernel
TILES_PER_TASK = 8
#: multiply-adds from which a layer runs on all threads (~10 us of one core's work: below it,
#: waking the pool costs more than it saves)
PARALLEL_MACS = 8 * SERIAL_BELOW

_ARANGE = {}


def _arange(k):
    a = _ARANGE.get(k)
    if a is None:
        a = np.arange(k, dtype=np.int64)
        a.setflags(write=False)
        _ARANGE[k] = a
    return a


@njit(cache=True, nogil=True, inline="always")
def _tile_out(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n):
    # one tile of a 1x1 product stored with bias and clip (simd.indirect_tile_store), the
    # one-vector tile when the panel's used channels fit one vector (inlined: a call per tile
    # would cost as much as a short tile)
    if n <= SIMD_W:
        indirect_tile_store_half(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n)
    else:
        indirect_tile_store(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n)


@njit(cache=True, nogil=True, inline="always")
def _tile_out_residual(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res):
    # _tile_out adding res (y's layout) before the clip
    if n <= SIMD_W:
        indirect_tile_residual_half(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res)
    else:
        indirect_tile_residual(xf, pix, offs, K, panel, bias, lo, hi, y, ypix, n, res)


@njit(parallel=True, cache=True, nogil=True)
def _gemm_rows(x2, offs, bp, b, lo, hi, workers, counter, y2):
    # x2: (P, K) float32 rows (pixels, channels last), offs: arange(K), bp: (Pn, K*NR) packed weight
    # panels, b: (Pn*NR,) bias zero-padded, y2: (P, M) -> y2 = clip(x2 @ W^T + b, lo, hi). Tasks
    # (block of MR-row tiles, panel), block fastest so consecutive tasks share a panel; the last tile
    # is shifted back to end at row P-1 (P >= MR), recomputing a few rows rather than narrowing. The
    # tile adds the bias, clips and stores its rows itself.
    P, K = x2.shape
    M = y2.shape[1]
    Pn = bp.shape[0]
    ntiles = (P + MR - 1) // MR
    nblk = (ntiles + TILES_PER_TASK - 1) // TILES_PER_TASK
    total = nblk * Pn
    xf = x2.reshape(P * K)
    yf = y2.reshape(P * M)
    for _w in prange(workers):
        pix = np.empty(MR, dtype=np.int64)
        ypix = np.empty(MR, dtype=np.int64)
        while True:
            t = fetch_add(counter, 0, 1)
            if t >= total:
                break
            blk = t % nblk
            pnl = t // nblk
            panel = bp[pnl]
            m0 = pnl * NR
            mcount = min(NR, M - m0)
            bias = b[m0:m0 + NR]
            for ti in range(blk * TILES_PER_TASK, min(ntiles, (blk + 1) * TILES_PER_TASK)):
                q0 = min(ti * MR, P - MR)
                for p in range(MR):
                    pix[p] = (q0 + p) * K
                    ypix[p] = (q0 + p) * M + m0
                _tile_out(xf, pix, offs, K, panel, bias, lo, hi, yf, ypix, mcount)


@njit(cache=True, nogil=True)
def _dw_pixel(src, r0, H, wt, b, oh, ow, sh, sw, pt, pl, c_from, lo, hi, yrow):
    # one output pixel of _dw_row, channels c_from..C, taps outside the image skipped (the channel
    # tails past the last full vector only: a function of its own, compiled once)
    W, C = src.shape[1], src.shape[2]
    kh, kw = wt.shape[0], wt.shape[1]
    acc = yrow[ow]
    for c in range(c_from, C):
        acc[c] = b[c]
    for i in range(max(0, pt - oh * sh), min(kh, H + pt - oh * sh)):
        xrow = src[oh * sh + i - pt - r0]
        for j in range(max(0, pl - ow * sw), min(kw, W + pl - ow * sw)):
            xr = xrow[ow * sw + j - pl]
            wr = wt[i, j]
            for c in range(c_from, C):
                acc[c] += xr[c] * wr[c]
    for c in range(c_from, C):
        v = acc[c]
        v = lo if v < lo else v
        acc[c] = hi if v > hi else v


@njit(cache=True, nogil=True, inline="always")
def _dw_row(src, r0, H, wt, b, oh, sh, sw, pt, pl, lo, hi, yrow, toffs, wofs):
    # One output row of a depthwise convolution along channel vectors. src: (R, W, C) holding rows
    # r0 .. r0+R-1 of an image of H rows (every row a valid tap of this output row reads);
    # wt: (kh, kw, C); yrow: (Wo, C). The pixels whose taps all fall inside the image in columns
    # ("interior") run as register tiles of DW_R pixels x one channel vector (simd.dw_tile) over a
    # table of the row's valid taps (toffs, wofs: scratch of 2*kh*kw); border pixels as one-pixel
    # tiles over their own tap tables; the channels past the last full vector through _dw_pixel.
    R, W, C = src.shape
    kh, kw = wt.shape[0], wt.shape[1]
    Wo = yrow.shape[0]
    CV = C - C % SIMD_W
    owa = min(Wo, (pl + sw - 1) // sw)
    owb = max(owa, min(Wo, (W - kw + pl) // sw + 1))
    nt = 0
    for i in range(max(0, pt - oh * sh), min(kh, H + pt - oh * sh)):
        for j in range(kw):
            toffs[nt] = ((oh * sh + i - pt - r0) * W + j - pl) * C
            wofs[nt] = (i * kw + j) * C
            nt += 1
    xf = src.reshape(R * W * C)
    wf = wt.reshape(kh * kw * C)
    yf = yrow.reshape(Wo * C)
    # border pixels: their own table of the taps inside the image (second half of the scratch),
    # one pixel x one channel vector per tile
    bt = toffs[kh * kw:]
    bw = wofs[kh * kw:]
    for ow in range(Wo):
        if owa <= ow < owb:
            continue
        nb = 0
        for i in range(max(0, pt - oh * sh), min(kh, H + pt - oh * sh)):
            for j in range(max(0, pl - ow * sw), min(kw, W + pl - ow * sw)):
                bt[nb] = ((oh * sh + i - pt - r0) * W + j - pl) * C
                bw[nb] = (i * kw + j) * C
                nb += 1
        for c0 in range(0, CV, SIMD_W):
            dw_tile1(xf, ow * sw * C + c0, sw * C, bt, bw, nb, wf, c0, b, lo, hi, yf, ow * C + c0, C)
        if CV < C:
            _dw_pixel(src, r0, H, wt, b, oh, ow, sh, sw, pt, pl, CV, lo, hi, yrow)
    ow = owa
    while ow < owb:
        r = DW_R if ow + DW_R <= owb else 1
        for c0 in range(0, CV, SIMD_W):
            if r == DW_R:
                dw_tile(xf, ow * sw * C + c0, sw * C, toffs, wofs, nt, wf, c0, b, lo, hi, yf, ow * C + c0, C)
            else:
                dw_tile1(xf, ow * sw * C + c0, sw * C, toffs, wofs, nt, wf, c0, b, lo, hi, yf, ow * C + c0, C)
        if CV < C:
            for q in range(r):
                _dw_pixel(src, r0, H, wt, b, oh, ow + q, sh, sw, pt, pl, CV, lo, hi, yrow)
        ow += r


def clip_bounds(relu, relu_cap):
    """The fused activation as float32 clip bounds (lo, hi): none (-inf, inf), ReLU (0, inf) or
    ReLU6 / Clip(0, cap) (0, cap)."""
    if not relu:
        return np.float32(-np.inf), np.float32(np.inf)
    return np.float32(0.0), fused_cap(relu_cap)


def _padded_bias(b, n):
    out = np.zeros(n, dtype=np.float32)
    if b is not None:
        out[:b.shape[0]] = b
    return out


def _as_nhwc(x):
    """x: (N, C, H, W) blob -> C-contiguous (N, H, W, C) float32: its memory when channels last, else
    a copy (NCHW -> NHWC)."""
    if is_channels_last(x) and x.dtype == np.float32:
        return nhwc_memory(x)
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32).transpose(0, 2, 3, 1))


def conv1x1_applies(x_shape, w_shape, stride, pad, dilation, group):
    """A 1x1, stride 1, unpadded, ungrouped convolution with at least MR output pixels in all."""
    N, C, H, W = x_shape
    M, Cg, kh, kw = w_shape
    return (kh == kw == 1 and tuple(stride) == (1, 1) and tuple(pad) == (0, 0, 0, 0) and group == 1
            and N * H * W >= MR)


def convolution_1x1_nhwc_cpu(x, w, b, relu=False, relu_cap=None):
    """x: (N, C, H, W) (channels-last memory read in place; NCHW copied once), w: (M, C, 1, 1) ->
    (N, M, H, W) with (N, H, W, M) memory; same values as :func:`convolution_reference` (``relu``,
    ``relu_cap``: the fused ReLU / ReLU6 in the output pass)."""
    xt = _as_nhwc(x)
    N, H, W, C = xt.shape
    if w.shape[1:] != (C, 1, 1) or N * H * W < MR:
        raise ValueError(f"not a 1x1 convolution of {C} channels over >= {MR} pixels: weight {w.shape}, input "
                         f"{x.shape}")
    return _gemm_nhwc(xt, w, b, relu, relu_cap)


def _gemm_nhwc(xt, w, b, relu, relu_cap):
    """xt: C-contiguous (N, H, W, K) rows, w: (M, ...) with K = its size per output channel, in the
    rows' order -> (N, M, H, W) with (N, H, W, M) memory: rows @ W^T + b, activation fused."""
    N, H, W, K = xt.shape
    M = w.shape[0]
    P = N * H * W
    bp = cached_transform(w, ("direct", 1), lambda wf: _pack_weights(wf, 1))[0]
    y = np.empty((N, H, W, M), dtype=np.float32)
    small = P * M * K < PARALLEL_MACS
    _gemm_rows(xt.reshape(P, K), _arange(K), bp, _padded_bias(b, bp.shape[0] * NR), *clip_bounds(relu, relu_cap),
               1 if small else numba.get_num_threads(), np.zeros(1, np.int64), y.reshape(P, M))
    return channels_last_view(y)


@njit(parallel=True, cache=True, nogil=True)
def _im2row(x, Ho, Wo, kh, kw, sh, sw, pt, pl, dh, dw, rows):
    # x: (N, C, H, W) -> rows: (N*Ho*Wo, C*kh*kw), one row per output pixel in the weights' OIHW
    # (c, i, j) order, zeros where a tap falls in the padding; one (image, output row) per task
    N, C, H, W = x.shape
    for t in prange(N * Ho):
        n = t // Ho
        oh = t - n * Ho
        for ow in range(Wo):
            row = rows[t * Wo + ow]
            k = 0
            for c in range(C):
                for i in range(kh):
                    ih = oh * sh + i * dh - pt
                    for j in range(kw):
                        iw = ow * sw + j * dw - pl
                        row[k] = x[n, c, ih, iw] if 0 <= ih < H and 0 <= iw < W else np.float32(0.0)
                        k += 1


#: input-channel x tap count up to which a channels-last convolution of a small batch runs as rows
#: of taps through the 1x1 GEMM (EfficientNet's 3x3 stem from RGB: 27) rather than the direct kernel
IM2ROW_UP_TO = 32
#: largest batch for that route: as fast as the direct kernel at batch 1 (0.50 ms for the stem), so
#: a first small run need not compile the direct kernel; slower at batch 64 (35-45 vs 24 ms: the
#: rows are a pass over memory)
IM2ROW_MAX_BATCH = 4


def im2row_applies(x_shape, w_shape, group):
    """An ungrouped convolution with at most IM2ROW_UP_TO taps per output (channels x kernel) on at
    most IM2ROW_MAX_BATCH images: :func:`convolution_im2row_nhwc_cpu`."""
    M, Cg, kh, kw = w_shape
    return group == 1 and Cg * kh * kw <= IM2ROW_UP_TO and x_shape[0] <= IM2ROW_MAX_BATCH


def convolution_im2row_nhwc_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), relu=False,
                                relu_cap=None):
    """x: (N, C, H, W), w: (M, C, kh, kw) with few taps (:func:`im2row_applies`) -> (N, M, Ho, Wo)
    with (N, Ho, Wo, M) memory: each output pixel's taps gathered into a row, the rows multiplied by
    the weights through the 1x1 GEMM (bias, activation and channels-last stores in its tiles)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad, dilation)
    K = C * kh * kw
    rows = np.empty((N * Ho * Wo, K), dtype=np.float32)
    _im2row(x, Ho, Wo, kh, kw, sh, sw, pt, pl, dh, dw, rows)
    # the rows' (c, i, j) order is the OIHW weights' own: their packed panels as they are
    return _gemm_nhwc(rows.reshape(N, Ho, Wo, K), w, b, relu, relu_cap)


def depthwise_nhwc_applies(x_shape, w_shape, dilation, group):
    """One filter per channel (no channel multiplier), no dilation."""
    N, C, H, W = x_shape
    M, Cg = w_shape[:2]
    return group == C and Cg == 1 and M == C and tuple(dilation) == (1, 1)


def convolution_depthwise_nhwc_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), relu=False, relu_cap=None):
    """x: (N, C, H, W) (channels-last memory read in place; NCHW copied once), w: (C, 1, kh, kw) ->
    (N, C, Ho, Wo) with (N, Ho, Wo, C) memory; same values as :func:`convolution_reference` with
    ``group == C``."""
    xt = _as_nhwc(x)
    N, H, W, C = xt.shape
    M, Cg, kh, kw = w.shape
    if M != C or Cg != 1:
        raise ValueError(f"not a depthwise convolution of {C} channels: weight {w.shape}")
    sh, sw = stride
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad)
    # OIHW (C, 1, kh, kw) -> (kh, kw, C): a tap's weights for all channels contiguous
    wt = cached_transform(w, ("dw-hwc",), lambda wf: np.ascontiguousarray(wf.reshape(C, kh * kw).T)
                          .reshape(kh, kw, C))
    y = np.empty((N, Ho, Wo, C), dtype=np.float32)
    # the inverted-residual kernel with neither 1x1 stage: one compiled kernel serves both
    workers = 1 if y.size * kh * kw < PARALLEL_MACS else numba.get_num_threads()
    chunk = max(1, min(Ho, -(-N * Ho // (4 * workers))))
    one = np.ones((1, NR), dtype=np.float32)
    _block(xt, False, _arange(C), one, one[0], np.float32(0.0), np.float32(0.0), wt, _padded_bias(b, C), sh, sw,
           pt, pl, *clip_bounds(relu, relu_cap), False, _arange(C), one, one[0], False, chunk, 1, chunk, workers,
           np.zeros(1, np.int64), y)
    return channels_last_view(y)


# --------------------------------------------------------------------------------------------
# Inverted-residual blocks (MobileNet v2 / EfficientNet): [1x1 expansion] -> depthwise -> [1x1
# projection] [+ the block input] as one kernel, band by band, so the expanded and depthwise
# tensors, the block's largest, never go to memory.

#: bytes of expanded and depthwise rows one thread keeps (in its share of L2)
EXPAND_BUFFER_BYTES = 384 << 10
#: fuse only when an intermediate tensor is larger than this (below, it stays in cache anyway)
FUSE_EXPANDED_FROM = 1 << 20
#: fuse only while a chunk's re-expanded overlap rows stay below this share of its rows
FUSE_HALO = 1.0


@njit(cache=True, nogil=True)
def _block_worker(xt, has_expand, offs_e, bp_e, be, elo, ehi, wt, bd, sh, sw, pt, pl, dlo, dhi, has_project,
                  offs_p, bp_p, bpp, residual, band, rows_max, chunk, counter, y):
    # xt: (N, H, W, Cin) block input. Expansion (has_expand): offs_e = arange(Cin), bp_e: (Pe,
    # Cin*NR) packed 1x1 weights, be: (Pe*NR,) bias zero-padded, elo/ehi its clip. Depthwise: wt:
    # (kh, kw, Ce), bd: (Ce,), dlo/dhi. Projection (has_project): offs_p = arange(Ce), bp_p: (Pp,
    # Ce*NR), bpp: (Pp*NR,); residual: add xt (same shape as y). y: (N, Ho, Wo, Cout), Cout = Ce
    # without a projection. Tasks are (image, chunk of output rows) from a shared counter. A task
    # walks its chunk in bands of ``band`` output rows: it expands the input rows the band's taps
    # read into a per-thread buffer E (rows_max x W x Ce), keeping the rows the previous band
    # already expanded (moved to the front), runs the depthwise rows on E (or on the input rows
    # themselves without an expansion) into a band buffer D (or y), then projects D into y. One
    # thread's loop over tasks; _block runs it on every thread.
    N, H, W, Cin = xt.shape
    Ho, Wo, Cout = y.shape[1], y.shape[2], y.shape[3]
    kh, kw, Ce = wt.shape[0], wt.shape[1], wt.shape[2]
    Pe = bp_e.shape[0]
    Pp = bp_p.shape[0]
    nchunks = (Ho + chunk - 1) // chunk
    total = N * nchunks
    yf = y.reshape(N * Ho * Wo * Cout)
    rf = xt.reshape(N * H * W * Cin)
    E = np.empty((rows_max if has_expand else 1, W, Ce), dtype=np.float32)
    ef = E.reshape(E.size)
    D = np.empty((band if has_project else 1, Wo, Ce), dtype=np.float32)
    df = D.reshape(D.size)
    pix = np.empty(MR, dtype=np.int64)
    ypix = np.empty(MR, dtype=np.int64)
    toffs = np.empty(2 * kh * kw, dtype=np.int64)
    wofs = np.empty(2 * kh * kw, dtype=np.int64)
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        n = t // nchunks
        o0 = (t % nchunks) * chunk
        o1 = min(Ho, o0 + chunk)
        xf = xt[n].reshape(H * W * Cin)
        e0 = 0
        e1 = 0                                   # image rows [e0, e1) are in E
        for b0 in range(o0, o1, band):
            b1 = min(o1, b0 + band)
            r0 = max(0, b0 * sh - pt)
            r1 = min(H, (b1 - 1) * sh - pt + kh)
            if has_expand:
                start = r0
                if e0 <= r0 < e1:
                    # rows r0..e1 were expanded for the previous band: move them to the front
                    # (ascending copy: the destination starts before the source)
                    keep = (e1 - r0) * W * Ce
                    src = (r0 - e0) * W * Ce
                    for q in range(keep):
                        ef[q] = ef[src + q]
                    start = e1
                e0 = r0
                e1 = r1
                # expand pixels [start*W, r1*W); the last tile shifts back into rows already
                # in E (recomputing them: same values) rather than narrowing
                p_lo = start * W
                p_hi = r1 * W
                if p_hi > p_lo:
                    for ti in range((p_hi - p_lo + MR - 1) // MR):
                        q0 = max(r0 * W, min(p_lo + ti * MR, p_hi - MR))
                        for p in range(MR):
                            pix[p] = (q0 + p) * Cin
                        for pnl in range(Pe):
                            m0 = pnl * NR
                            for p in range(MR):
                                ypix[p] = (q0 + p - r0 * W) * Ce + m0
                            _tile_out(xf, pix, offs_e, Cin, bp_e[pnl], be[m0:m0 + NR], elo, ehi, ef, ypix,
                                      min(NR, Ce - m0))
            for oh in range(b0, b1):
                dst = D[oh - b0] if has_project else y[n, oh]
                # one call site, one compiled _dw_row: the source is E or the input rows
                src = E if has_expand else xt[n]
                _dw_row(src, r0 if has_expand else np.int64(0), H, wt, bd, oh, sh, sw, pt, pl, dlo, dhi, dst, toffs,
                        wofs)
            if has_project:
                # the band's Wo*(b1-b0) >= MR pixels; the last tile shifts back
                Pb = (b1 - b0) * Wo
                for ti in range((Pb + MR - 1) // MR):
                    q0 = min(ti * MR, Pb - MR)
                    for p in range(MR):
                        pix[p] = (q0 + p) * Ce
                    for pnl in range(Pp):
                        m0 = pnl * NR
                        for p in range(MR):
                            ypix[p] = ((n * Ho + b0) * Wo + q0 + p) * Cout + m0
                        mc = min(NR, Cout - m0)
                        lo = np.float32(-np.inf)
                        hi = np.float32(np.inf)
                        if residual:
                            _tile_out_residual(df, pix, offs_p, Ce, bp_p[pnl], bpp[m0:m0 + NR], lo, hi, yf, ypix,
                                               mc, rf)
                        else:
                            _tile_out(df, pix, offs_p, Ce, bp_p[pnl], bpp[m0:m0 + NR], lo, hi, yf, ypix, mc)


@njit(parallel=True, cache=True, nogil=True)
def _block(xt, has_expand, offs_e, bp_e, be, elo, ehi, wt, bd, sh, sw, pt, pl, dlo, dhi, has_project, offs_p,
           bp_p, bpp, residual, band, rows_max, chunk, workers, counter, y):
    # _block_worker on ``workers`` threads sharing the task counter (the parallel region stays
    # small: Numba compiles a large prange body slowly)
    for _w in prange(workers):
        _block_worker(xt, has_expand, offs_e, bp_e, be, elo, ehi, wt, bd, sh, sw, pt, pl, dlo, dhi, has_project,
                      offs_p, bp_p, bpp, residual, band, rows_max, chunk, counter, y)


def block_applies(x_shape, w_expand_shape, w_dw_shape, w_project_shape, stride, pad, dilation, residual):
    """x: (N, C, H, W) -> True when :func:`convolution_block_nhwc_cpu` runs the chain: an optional
    1x1 expansion (ungrouped), a depthwise convolution (no dilation, no channel multiplier), an
    optional 1x1 projection (at least one of the two), and a residual sum only with a projection
    whose output has x's shape. Input rows at least MR pixels wide (and output rows, with a
    projection)."""
    N, C, H, W = x_shape
    Ce = w_dw_shape[0]
    kh, kw = w_dw_shape[2:]
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad)
    if w_expand_shape is None and w_project_shape is None:
        return False
    if w_expand_shape is not None and tuple(w_expand_shape) != (Ce, C, 1, 1):
        return False
    if w_expand_shape is None and Ce != C:
        return False
    if w_project_shape is not None and tuple(w_project_shape[1:]) != (Ce, 1, 1):
        return False
    if residual and (w_project_shape is None or (w_project_shape[0], Ho, Wo) != (C, H, W)):
        return False
    return (tuple(w_dw_shape[:2]) == (Ce, 1) and tuple(dilation) == (1, 1) and W >= MR
            and (w_project_shape is None or Wo >= MR))


def convolution_block_nhwc_cpu(x, expand, dw, project=None, residual=False):
    """x: (N, C, H, W) (channels-last memory read in place) -> (N, Cout, Ho, Wo) with channels-last
    memory: the chain expansion -> depthwise -> projection (+ x), the same values as its layers one
    after the other, without the intermediate tensors being stored whole where they outgrow the
    cache (otherwise the layers' own kernels run one after the other).

    expand: None or (w (Ce, C, 1, 1), b, relu, relu_cap); dw: (w (Ce, 1, kh, kw), b, stride, pad,
    relu, relu_cap); project: None or (w (Cout, Ce, 1, 1), b) without activation; residual: add x
    to the projection (x and the output of one shape)."""
    we, be_, erelu, ecap = expand if expand is not None else (None, None, False, None)
    wd, bd, stride, pad, drelu, dcap = dw
    wp, bp_ = project if project is not None else (None, None)
    if not block_applies(x.shape, None if we is None else we.shape, wd.shape, None if wp is None else wp.shape,
                         stride, pad, (1, 1), residual):
        raise ValueError(f"not an inverted-residual chain: input {x.shape}, weights "
                         f"{[None if a is None else a.shape for a in (we, wd, wp)]}, residual {residual}")
    xt = _as_nhwc(x)
    N, H, W, C = xt.shape
    Ce, _, kh, kw = wd.shape
    sh, sw = stride
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad)
    # a band's expanded rows and depthwise rows fit the buffer; at least one output row per band
    e_row = W * Ce * 4 if we is not None else 0
    d_row = Wo * Ce * 4 if wp is not None else 0
    band = min(Ho, max(1, (EXPAND_BUFFER_BYTES - kh * e_row) // (sh * e_row + d_row) + 1))
    workers = numba.get_num_threads()
    macs = N * Ho * Wo * Ce * kh * kw + (N * H * W * Ce * C if we is not None else 0) + \
        (N * Ho * Wo * Ce * wp.shape[0] if wp is not None else 0)
    small = macs < PARALLEL_MACS
    if small:
        workers = 1
    elif N * -(-Ho // band) < 3 * workers:
        band = -(-N * Ho // (3 * workers))            # smaller bands: enough tasks for the threads
    # chunks: enough tasks for dynamic scheduling, each several bands long (a chunk re-expands
    # only the rows it shares with the previous chunk)
    chunk = Ho if small else min(Ho, max(band, -(-Ho * N // (4 * workers))))
    big = max(N * H * W * e_row, N * Ho * d_row) > FUSE_EXPANDED_FROM
    if not big or (we is not None and (kh - sh) > FUSE_HALO * chunk * sh):
        # the intermediate tensors stay in cache anyway, or the chunks' overlapping rows would
        # cost more expansion work than the fusion saves: the layers' kernels one after the other
        y = x if we is None else convolution_1x1_nhwc_cpu(x, we, be_, erelu, ecap)
        y = convolution_depthwise_nhwc_cpu(y, wd, bd, stride, pad, drelu, dcap)
        if wp is None:
            return y
        y = convolution_1x1_nhwc_cpu(y, wp, bp_)
        if residual:
            ym = nhwc_memory(y)
            np.add(ym, xt, out=ym)
        return y
    rows_max = min(H, (band - 1) * sh + kh) if we is not None else 1
    one = np.ones((1, NR), dtype=np.float32)
    if we is not None:
        bpe = cached_transform(we, ("direct", 1), lambda wf: _pack_weights(wf, 1))[0]
        bee = _padded_bias(be_, bpe.shape[0] * NR)
    else:
        bpe, bee = one, one[0]
    if wp is not None:
        bpp = cached_transform(wp, ("direct", 1), lambda wf: _pack_weights(wf, 1))[0]
        bpb = _padded_bias(bp_, bpp.shape[0] * NR)
    else:
        bpp, bpb = one, one[0]
    wt = cached_transform(wd, ("dw-hwc",), lambda wf: np.ascontiguousarray(wf.reshape(Ce, kh * kw).T)
                          .reshape(kh, kw, Ce))
    Cout = wp.shape[0] if wp is not None else Ce
    y = np.empty((N, Ho, Wo, Cout), dtype=np.float32)
    _block(
        xt, we is not None, _arange(C), bpe, bee, *clip_bounds(erelu, ecap),
        wt, _padded_bias(bd, Ce), sh, sw, pt, pl, *clip_bounds(drelu, dcap),
        wp is not None, _arange(Ce), bpp, bpb, bool(residual), band, rows_max, chunk, workers,
        np.zeros(1, np.int64), y)
    return channels_last_view(y)


def convolution_expand_depthwise_nhwc_cpu(x, w_expand, b_expand, w_dw, b_dw, stride=(1, 1), pad=(0, 0, 0, 0),
                                          expand_relu=False, expand_cap=None, relu=False, relu_cap=None):
    """x: (N, C, H, W), w_expand: (Ce, C, 1, 1), w_dw: (Ce, 1, kh, kw) -> (N, Ce, Ho, Wo), channels
    last: :func:`convolution_block_nhwc_cpu` without a projection."""
    return convolution_block_nhwc_cpu(x, (w_expand, b_expand, expand_relu, expand_cap),
                                      (w_dw, b_dw, stride, pad, relu, relu_cap))
