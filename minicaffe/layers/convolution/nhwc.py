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
    dw_rows_3s1,
    dw_rows_3s2,
    dw_rows_5s1,
    dw_rows_5s2,
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
from .cache import cached_runner, cached_transform, fused_cap, runner_key
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
def _gemm_rows(xf, offs, bp, b, lo, hi, geo, workers, counter, yf):
    # The 1x1 product over output pixels, yf[pixel q's base + m] = clip(sum_k xf[q's input base +
    # offs[k]] * W[m, k] + b[m], lo, hi). offs: (K,) int64, bp: (Pn, K*NR) packed weight panels, b:
    # (Pn*NR,) bias zero-padded; geo: int64 (Ho, Wo, iHp, iWp, iC, sh, sw, oHp, oWp, ot, ol, in_rows,
    # out_rows, N, M): output pixel q = (n, oh, ow) of N x Ho x Wo reads from input base
    # ((n*iHp + oh*sh)*iWp + ow*sw)*iC (or q*K when in_rows: contiguous rows of K) and writes at
    # ((n*oHp + oh + ot)*oWp + ow + ol)*M (or q*M when out_rows): a padded input read by taps
    # (offs), an output stored into a zero-padded buffer. Tasks (block of MR-pixel tiles, panel),
    # block fastest so consecutive tasks share a panel; the last tile is shifted back to end at the
    # last pixel (P >= MR), recomputing a few rather than narrowing. The tile adds the bias, clips
    # and stores its rows itself.
    K = offs.shape[0]
    Ho, Wo, iHp, iWp, iC, sh, sw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
    oHp, oWp, ot, ol, in_rows, out_rows, N, M = geo[7], geo[8], geo[9], geo[10], geo[11], geo[12], geo[13], geo[14]
    P = N * Ho * Wo
    Pn = bp.shape[0]
    ntiles = (P + MR - 1) // MR
    nblk = (ntiles + TILES_PER_TASK - 1) // TILES_PER_TASK
    total = nblk * Pn
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
                if in_rows and out_rows:
                    for p in range(MR):
                        pix[p] = (q0 + p) * K
                        ypix[p] = (q0 + p) * M + m0
                else:
                    n = q0 // (Ho * Wo)
                    oh = (q0 - n * Ho * Wo) // Wo
                    ow = q0 - (n * Ho + oh) * Wo
                    for p in range(MR):
                        pix[p] = (q0 + p) * K if in_rows else ((n * iHp + oh * sh) * iWp + ow * sw) * iC
                        ypix[p] = ((q0 + p) * M if out_rows else ((n * oHp + oh + ot) * oWp + ow + ol) * M) + m0
                        ow += 1
                        if ow == Wo:
                            ow = 0
                            oh += 1
                            if oh == Ho:
                                oh = 0
                                n += 1
                _tile_out(xf, pix, offs, K, panel, bias, lo, hi, yf, ypix, mcount)


@njit(parallel=True, cache=True, nogil=True)
def _pad_nhwc(x, nchw, pt, pl, xp):
    # x: (N, C, H, W) array (nchw) or (N, H, W, C) array -> xp: (N, Hp, Wp, C) channels last, x at
    # (pt, pl), zeros elsewhere (NCHW -> NHWC when nchw); one padded row per task
    N, Hp, Wp, C = xp.shape
    H, W = (x.shape[2], x.shape[3]) if nchw else (x.shape[1], x.shape[2])
    xpf = xp.reshape(xp.size)
    xf = x.reshape(x.size)
    for t in prange(N * Hp):
        n = t // Hp
        h = t - n * Hp - pt
        d = t * Wp * C
        if h < 0 or h >= H:
            xpf[d:d + Wp * C] = 0.0
            continue
        xpf[d:d + pl * C] = 0.0
        xpf[d + (pl + W) * C:d + Wp * C] = 0.0
        d += pl * C
        if nchw:
            for c in range(C):
                src = x[n, c, h]
                for q in range(W):
                    xpf[d + q * C + c] = src[q]
        else:
            src = (n * H + h) * W * C
            xpf[d:d + W * C] = xf[src:src + W * C]


def _padded_nhwc(x, Hp, Wp, pt, pl):
    """x: (N, C, H, W) blob -> C-contiguous (N, Hp, Wp, C) float32, x at rows pt.., columns pl..,
    zeros around (read from channels-last memory in place, else NCHW -> NHWC)."""
    N, C = x.shape[:2]
    xp = np.empty((N, Hp, Wp, C), dtype=np.float32)
    if is_channels_last(x) and x.dtype == np.float32:
        _pad_nhwc(nhwc_memory(x), False, pt, pl, xp)
    else:
        _pad_nhwc(np.ascontiguousarray(x, dtype=np.float32), True, pt, pl, xp)
    return xp


@njit(cache=True, nogil=True)
def _dw_out_row(src, sb, rstep, kh, kw, sw, wf, bd, lo, hi, Wo, y, yb, toffs, wofs, ca, cb):
    # One output row of a depthwise convolution on zero-padded channels-last rows: src: flat rows
    # of rstep floats, pixels of C = bd.shape[0] channels; output pixel ow's first tap at
    # src[sb + ow*sw*C]; wf: (kh*kw*C,) weights tap-major; y[yb + ow*C + c] gets its clipped sum.
    # Tiles of DW_R pixels x one channel vector (the row's last tile shifted back to end at its
    # last pixel, recomputing a few), through the column-sharing tiles for 3x3 / 5x5 kernels at
    # stride 1 / 2, else (and for rows narrower than DW_R) through the tap table toffs / wofs
    # (kh*kw entries: (i*Wp + j)*C and t*C); the channels past the last full vector one by one.
    # Channels [ca, cb) only (ca a multiple of the vector width).
    C = bd.shape[0]
    CV = min(cb, C - C % SIMD_W)
    nt = kh * kw
    if Wo >= DW_R:
        ow = 0
        while True:
            o = min(ow, Wo - DW_R)
            xb = sb + o * sw * C
            ob = yb + o * C
            for c0 in range(ca, CV, SIMD_W):
                if kw == 3 and sw == 1:
                    dw_rows_3s1(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                elif kw == 3 and sw == 2:
                    dw_rows_3s2(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                elif kw == 5 and sw == 1:
                    dw_rows_5s1(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                elif kw == 5 and sw == 2:
                    dw_rows_5s2(src, xb + c0, rstep, C, kh, wf, c0, bd, lo, hi, y, ob + c0, C)
                else:
                    dw_tile(src, xb + c0, sw * C, toffs, wofs, nt, wf, c0, bd, lo, hi, y, ob + c0, C)
            if o == Wo - DW_R:
                break
            ow += DW_R
    else:
        for o in range(Wo):
            for c0 in range(ca, CV, SIMD_W):
                dw_tile1(src, sb + o * sw * C + c0, sw * C, toffs, wofs, nt, wf, c0, bd, lo, hi, y, yb + o * C + c0,
                         C)
    for o in range(Wo):
        for c in range(max(ca, CV), cb):
            acc = bd[c]
            for i in range(kh):
                for j in range(kw):
                    acc += src[sb + i * rstep + (o * sw + j) * C + c] * wf[(i * kw + j) * C + c]
            acc = lo if acc < lo else acc
            y[yb + o * C + c] = hi if acc > hi else acc


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
    run = cached_runner(runner_key((w, b), ("1x1", xt.shape, relu, relu_cap)), (w, b),
                        lambda: _gemm_runner(xt.shape, w, b, relu, relu_cap))
    return channels_last_view(run(xt))


def _gemm_runner(shape, w, b, relu, relu_cap):
    """convolution_1x1_nhwc_cpu for (N, H, W, K) inputs, prepared: xt -> y (N, H, W, M)."""
    N, H, W, K = shape
    M = w.shape[0]
    args = _gemm_args(K, w, b, relu, relu_cap, (N, H, W, H, W, K, 1, 1), (H, W, 0, 0))

    def run(xt):
        y = np.empty((N, H, W, M), dtype=np.float32)
        _run_gemm(args, xt, y)
        return y
    return run


def _gemm_nhwc(xt, w, b, relu, relu_cap):
    """xt: C-contiguous (N, H, W, K) rows, w: (M, K, 1, 1) -> (N, M, H, W) with (N, H, W, M) memory:
    rows @ W^T + b, activation fused."""
    N, H, W, K = xt.shape
    M = w.shape[0]
    y = np.empty((N, H, W, M), dtype=np.float32)
    _gemm_geo(xt, K, w, b, relu, relu_cap, (N, H, W, H, W, K, 1, 1), y, (H, W, 0, 0))
    return channels_last_view(y)


def _gemm_geo(xp, offs, w, b, relu, relu_cap, geo_in, y, geo_out, key=("direct", 1), pack=None):
    """The 1x1 GEMM kernel over output pixels (_gemm_rows). xp: the C-contiguous input, read at
    offs from each pixel's base; geo_in = (N, Ho, Wo, iHp, iWp, iC, sh, sw) (contiguous rows of K
    when iHp, iWp, iC, sh, sw = Ho, Wo, K, 1, 1); y: (N, oHp, oWp, M) output, geo_out = (oHp, oWp,
    ot, ol) the pixels' place in it; w: (M, ...) packed by ``pack`` (default: its own order) and
    cached under ``key``."""
    _run_gemm(_gemm_args(offs, w, b, relu, relu_cap, geo_in, geo_out, key, pack), xp, y)


def _gemm_args(offs, w, b, relu, relu_cap, geo_in, geo_out, key=("direct", 1), pack=None):
    """:func:`_gemm_geo`'s kernel arguments but the input and output (offs: the tap offsets, or K
    for contiguous rows of K)."""
    if isinstance(offs, (int, np.integer)):
        offs = _arange(int(offs))
    N, Ho, Wo, iHp, iWp, iC, sh, sw = geo_in
    oHp, oWp, ot, ol = geo_out
    K = offs.shape[0]
    M = w.shape[0]
    bp = cached_transform(w, key, pack or (lambda wf: _pack_weights(wf, 1)))[0]
    in_rows = (iHp, iWp, iC, sh, sw) == (Ho, Wo, K, 1, 1)
    out_rows = (oHp, oWp, ot, ol) == (Ho, Wo, 0, 0)
    geo = np.array((Ho, Wo, iHp, iWp, iC, sh, sw, oHp, oWp, ot, ol, in_rows, out_rows, N, M), dtype=np.int64)
    workers = 1 if N * Ho * Wo * M * K < PARALLEL_MACS else numba.get_num_threads()
    return offs, bp, _padded_bias(b, bp.shape[0] * NR), *clip_bounds(relu, relu_cap), geo, workers


def _run_gemm(args, xp, y):
    offs, bp, b, lo, hi, geo, workers = args
    _gemm_rows(xp.reshape(xp.size), offs, bp, b, lo, hi, geo, workers, np.zeros(1, np.int64), y.reshape(y.size))


#: input-channel x tap count up to which a channels-last convolution runs as a 1x1 GEMM whose
#: A operand is read through the taps (EfficientNet's 3x3 stem from RGB: 27) rather than through
#: the direct kernel
TAPS_UP_TO = 32

def taps_applies(x_shape, w_shape, group):
    """An ungrouped convolution with at most TAPS_UP_TO taps per output (channels x kernel):
    :func:`convolution_taps_nhwc_cpu`."""
    M, Cg, kh, kw = w_shape
    return group == 1 and Cg * kh * kw <= TAPS_UP_TO


def _pack_hwc(w):
    # OIHW -> OHWI (a pixel's taps in channels-last order), then the GEMM's panels
    return _pack_weights(np.ascontiguousarray(w.transpose(0, 2, 3, 1)), 1)


def convolution_taps_nhwc_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), relu=False,
                              relu_cap=None):
    """x: (N, C, H, W), w: (M, C, kh, kw) with few taps (:func:`taps_applies`) -> (N, M, Ho, Wo)
    with (N, Ho, Wo, M) memory: the input copied once into a zero-padded channels-last array, then
    the 1x1 GEMM with each output pixel's A row read through its taps' offsets there (an indirect
    convolution: bias, activation and channels-last stores in its tiles)."""
    nchw = not (is_channels_last(x) and x.dtype == np.float32)
    run = cached_runner(runner_key((w, b), ("taps", x.shape, nchw, tuple(stride), tuple(pad), tuple(dilation), relu,
                                           relu_cap)),
                        (w, b), lambda: _taps_runner(x.shape, w, b, stride, pad, dilation, relu, relu_cap))
    return channels_last_view(run(np.ascontiguousarray(x, dtype=np.float32) if nchw else nhwc_memory(x), nchw))


def _taps_runner(shape, w, b, stride, pad, dilation, relu, relu_cap):
    """convolution_taps_nhwc_cpu for (N, C, H, W) inputs, prepared: (x, nchw) -> y (N, Ho, Wo, M),
    x the input's (N, C, H, W) array (nchw) or its (N, H, W, C) channels-last memory."""
    N, C, H, W = shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad, dilation)
    # padded just far enough for every tap of every output pixel: the kernel has no bounds checks
    Hp = max(H + pt, (Ho - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl, (Wo - 1) * sw + (kw - 1) * dw + 1)
    # tap (i, j, c) in OHWI order, relative to a pixel's base
    ii, jj, cc = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(C), indexing="ij")
    offs = ((ii * dh * Wp + jj * dw) * C + cc).reshape(-1).astype(np.int64)
    args = _gemm_args(offs, w, b, relu, relu_cap, (N, Ho, Wo, Hp, Wp, C, sh, sw), (Ho, Wo, 0, 0), ("taps-hwc",),
                      _pack_hwc)
    xp = np.empty((N, Hp, Wp, C), dtype=np.float32)

    def run(x, nchw):
        _pad_nhwc(x, nchw, pt, pl, xp)
        y = np.empty((N, Ho, Wo, M), dtype=np.float32)
        _run_gemm(args, xp, y)
        return y
    return run


def depthwise_nhwc_applies(x_shape, w_shape, dilation, group):
    """One filter per channel (no channel multiplier), no dilation."""
    N, C, H, W = x_shape
    M, Cg = w_shape[:2]
    return group == C and Cg == 1 and M == C and tuple(dilation) == (1, 1)


def convolution_depthwise_nhwc_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), relu=False, relu_cap=None):
    """x: (N, C, H, W) (channels-last memory read in place; NCHW converted), w: (C, 1, kh, kw) ->
    (N, C, Ho, Wo) with (N, Ho, Wo, C) memory; same values as :func:`convolution_reference` with
    ``group == C``: the input copied once into a zero-padded channels-last array, then
    :func:`_depthwise_padded`."""
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    if M != C or Cg != 1:
        raise ValueError(f"not a depthwise convolution of {C} channels: weight {w.shape}")
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad)
    Hp, Wp = _padded_hw(H, W, Ho, Wo, kh, kw, stride, pad)
    y = _depthwise_padded(_padded_nhwc(x, Hp, Wp, pt, pl), w, b, stride, Ho, Wo, relu, relu_cap)
    return channels_last_view(y)


def _padded_hw(H, W, Ho, Wo, kh, kw, stride, pad):
    """The zero-padded input plane (Hp, Wp) every tap of every output pixel falls inside."""
    return max(H + pad[0], (Ho - 1) * stride[0] + kh), max(W + pad[2], (Wo - 1) * stride[1] + kw)


def _depthwise_padded(xp, w, b, stride, Ho, Wo, relu, relu_cap):
    """xp: C-contiguous (N, Hp, Wp, C) zero-padded channels-last input (:func:`_padded_hw`), w: (C,
    1, kh, kw) -> (N, Ho, Wo, C) float32: the depthwise convolution (bias, activation), on every
    thread from tasks of (image, output rows, channels)."""
    N, Hp, Wp, C = xp.shape
    y = np.empty((N, Ho, Wo, C), dtype=np.float32)
    _run_depthwise(_depthwise_args(xp.shape, w, b, stride, Ho, Wo, relu, relu_cap), xp, y)
    return y


def _dw_hwc(w):
    # OIHW (C, 1, kh, kw) -> (kh, kw, C): a tap's weights for all channels contiguous
    C, _, kh, kw = w.shape
    return cached_transform(w, ("dw-hwc",), lambda wf: np.ascontiguousarray(wf.reshape(C, kh * kw).T)
                            .reshape(kh, kw, C))


def _depthwise_args(shape, w, b, stride, Ho, Wo, relu, relu_cap):
    """:func:`_depthwise_padded`'s kernel arguments for a padded input of ``shape`` but the arrays."""
    N, Hp, Wp, C = shape
    kh, kw = w.shape[2:]
    # the depthwise work is load-bound: it counts 4x its multiply-adds against the parallel threshold
    workers = 1 if 4 * N * Ho * Wo * C * kh * kw < PARALLEL_MACS else numba.get_num_threads()
    rows = max(1, min(Ho, -(-N * Ho // (4 * workers))))
    tasks = N * -(-Ho // rows)
    # too few (image, rows) tasks for the threads: split the channels too, in whole vectors
    groups = 1 if tasks >= 4 * workers or workers == 1 else -(-4 * workers // tasks)
    cg = -(-C // groups)
    cg = min(C, -(-cg // SIMD_W) * SIMD_W)
    return _dw_hwc(w), _padded_bias(b, C), stride[0], stride[1], *clip_bounds(relu, relu_cap), rows, cg, workers


def _run_depthwise(args, xp, y):
    _dw_padded(xp, *args, np.zeros(1, np.int64), y)


@njit(cache=True, nogil=True)
def _dw_padded_worker(xp, wt, bd, sh, sw, lo, hi, rows, cg, counter, y):
    # xp: (N, Hp, Wp, C) zero-padded, wt: (kh, kw, C), y: (N, Ho, Wo, C); tasks (image, chunk of
    # ``rows`` output rows, group of cg channels) from the shared counter, channels fastest
    N, Hp, Wp, C = xp.shape
    Ho, Wo = y.shape[1], y.shape[2]
    kh, kw = wt.shape[0], wt.shape[1]
    nr = (Ho + rows - 1) // rows
    ng = (C + cg - 1) // cg
    total = N * nr * ng
    xf = xp.reshape(xp.size)
    yf = y.reshape(y.size)
    wf = wt.reshape(wt.size)
    rstep = Wp * C
    toffs = np.empty(kh * kw, dtype=np.int64)
    wofs = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            toffs[i * kw + j] = (i * Wp + j) * C
            wofs[i * kw + j] = (i * kw + j) * C
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        g = t % ng
        r = t // ng
        n = r // nr
        o0 = (r - n * nr) * rows
        for oh in range(o0, min(Ho, o0 + rows)):
            _dw_out_row(xf, (n * Hp + oh * sh) * rstep, rstep, kh, kw, sw, wf, bd, lo, hi, Wo, yf,
                        (n * Ho + oh) * Wo * C, toffs, wofs, g * cg, min(C, (g + 1) * cg))


@njit(parallel=True, cache=True, nogil=True)
def _dw_padded(xp, wt, bd, sh, sw, lo, hi, rows, cg, workers, counter, y):
    # _dw_padded_worker on ``workers`` threads sharing the task counter
    for _w in prange(workers):
        _dw_padded_worker(xp, wt, bd, sh, sw, lo, hi, rows, cg, counter, y)


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


def _band(rows, W, Wo, Ce, kh, kw, sh, sw, pl, d_row):
    """Output rows per band (at most ``rows``, at least one) whose padded depthwise input rows and
    d_row bytes of depthwise output per row fit EXPAND_BUFFER_BYTES."""
    e_row = max(W + pl, (Wo - 1) * sw + kw) * Ce * 4
    return min(rows, max(1, (EXPAND_BUFFER_BYTES - kh * e_row) // (sh * e_row + d_row) + 1))


@njit(cache=True, nogil=True)
def _block_worker(xt, has_expand, offs_e, bp_e, be, elo, ehi, wt, bd, sh, sw, pt, pl, dlo, dhi, has_project,
                  offs_p, bp_p, bpp, residual, band, chunk, counter, y):
    # xt: (N, H, W, Cin) block input. Expansion (has_expand): offs_e = arange(Cin), bp_e: (Pe,
    # Cin*NR) packed 1x1 weights, be: (Pe*NR,) bias zero-padded, elo/ehi its clip. Depthwise: wt:
    # (kh, kw, Ce), bd: (Ce,), dlo/dhi. Projection (has_project): offs_p = arange(Ce), bp_p: (Pp,
    # Ce*NR), bpp: (Pp*NR,); residual: add xt (same shape as y). y: (N, Ho, Wo, Cout), Cout = Ce
    # without a projection. Tasks are (image, chunk of output rows) from a shared counter. A task
    # walks its chunk in bands of ``band`` output rows: the rows of the zero-padded depthwise input
    # the band's taps read are in a per-thread buffer E ((band-1)*sh + kh rows of Wp >= pl + W
    # pixels, the padding zeros), expanded there from the input rows (or copied, without an
    # expansion), keeping the rows the previous band already has (moved to the front); the
    # depthwise rows run on E into a band buffer D (or y), then D is projected into y. One
    # thread's loop over tasks; _block runs it on every thread.
    N, H, W, Cin = xt.shape
    Ho, Wo, Cout = y.shape[1], y.shape[2], y.shape[3]
    kh, kw, Ce = wt.shape[0], wt.shape[1], wt.shape[2]
    Pe = bp_e.shape[0]
    Pp = bp_p.shape[0]
    Wp = max(W + pl, (Wo - 1) * sw + kw)
    rows_max = (band - 1) * sh + kh
    rstep = Wp * Ce
    nchunks = (Ho + chunk - 1) // chunk
    total = N * nchunks
    yf = y.reshape(N * Ho * Wo * Cout)
    rf = xt.reshape(N * H * W * Cin)
    wf = wt.reshape(kh * kw * Ce)
    E = np.zeros(rows_max * rstep, dtype=np.float32)
    D = np.empty((band if has_project else 1) * Wo * Ce, dtype=np.float32)
    pix = np.empty(MR, dtype=np.int64)
    ypix = np.empty(MR, dtype=np.int64)
    ebase = np.empty(MR, dtype=np.int64)
    toffs = np.empty(kh * kw, dtype=np.int64)
    wofs = np.empty(kh * kw, dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            toffs[i * kw + j] = (i * Wp + j) * Ce
            wofs[i * kw + j] = (i * kw + j) * Ce
    while True:
        t = fetch_add(counter, 0, 1)
        if t >= total:
            break
        n = t // nchunks
        o0 = (t % nchunks) * chunk
        o1 = min(Ho, o0 + chunk)
        xf = xt[n].reshape(H * W * Cin)
        e0 = 0
        e1 = 0                                   # padded rows [e0, e1) are in E
        for b0 in range(o0, o1, band):
            b1 = min(o1, b0 + band)
            q0r = b0 * sh                        # the band's padded rows [q0r, q1r)
            q1r = (b1 - 1) * sh + kh
            start = q0r
            if e0 <= q0r < e1:
                # rows q0r..e1 are there from the previous band: move them to the front
                # (ascending copy: the destination starts before the source)
                keep = (e1 - q0r) * rstep
                src = (q0r - e0) * rstep
                for q in range(keep):
                    E[q] = E[src + q]
                start = e1
            e0 = q0r
            e1 = q1r
            # rows above and below the image are padding: zeros (their pixels, the pad columns
            # are never written)
            for pr in range(start, q1r):
                if pr < pt or pr >= pt + H:
                    E[(pr - q0r) * rstep:(pr - q0r + 1) * rstep] = 0.0
            ra = max(start - pt, 0)              # image rows [ra, rb) to bring in
            rb = min(q1r - pt, H)
            if rb > ra and has_expand:
                # expand pixels [ra*W, rb*W); the last tile shifts back into rows already in E
                # (recomputing them: same values) rather than narrowing
                p_lo = ra * W
                p_hi = rb * W
                p_min = max(q0r - pt, 0) * W
                for ti in range((p_hi - p_lo + MR - 1) // MR):
                    q0 = max(p_min, min(p_lo + ti * MR, p_hi - MR))
                    r = q0 // W
                    c = q0 - r * W
                    for p in range(MR):
                        pix[p] = (q0 + p) * Cin
                        ebase[p] = (r + pt - q0r) * rstep + (pl + c) * Ce
                        c += 1
                        if c == W:
                            c = 0
                            r += 1
                    for pnl in range(Pe):
                        m0 = pnl * NR
                        for p in range(MR):
                            ypix[p] = ebase[p] + m0
                        _tile_out(xf, pix, offs_e, Cin, bp_e[pnl], be[m0:m0 + NR], elo, ehi, E, ypix,
                                  min(NR, Ce - m0))
            elif rb > ra:
                for r in range(ra, rb):
                    dst = (r + pt - q0r) * rstep + pl * Ce
                    src = r * W * Cin
                    E[dst:dst + W * Ce] = xf[src:src + W * Cin]
            for oh in range(b0, b1):
                if has_project:
                    _dw_out_row(E, (oh * sh - q0r) * rstep, rstep, kh, kw, sw, wf, bd, dlo, dhi, Wo, D,
                                (oh - b0) * Wo * Ce, toffs, wofs, 0, Ce)
                else:
                    _dw_out_row(E, (oh * sh - q0r) * rstep, rstep, kh, kw, sw, wf, bd, dlo, dhi, Wo, yf,
                                (n * Ho + oh) * Wo * Cout, toffs, wofs, 0, Ce)
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
                            _tile_out_residual(D, pix, offs_p, Ce, bp_p[pnl], bpp[m0:m0 + NR], lo, hi, yf, ypix,
                                               mc, rf)
                        else:
                            _tile_out(D, pix, offs_p, Ce, bp_p[pnl], bpp[m0:m0 + NR], lo, hi, yf, ypix, mc)


@njit(parallel=True, cache=True, nogil=True)
def _block(xt, has_expand, offs_e, bp_e, be, elo, ehi, wt, bd, sh, sw, pt, pl, dlo, dhi, has_project, offs_p,
           bp_p, bpp, residual, band, chunk, workers, counter, y):
    # _block_worker on ``workers`` threads sharing the task counter (the parallel region stays
    # small: Numba compiles a large prange body slowly)
    for _w in prange(workers):
        _block_worker(xt, has_expand, offs_e, bp_e, be, elo, ehi, wt, bd, sh, sw, pt, pl, dlo, dhi, has_project,
                      offs_p, bp_p, bpp, residual, band, chunk, counter, y)


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
    arrays = (we, be_, wd, bd, wp, bp_)
    key = runner_key(arrays, (xt.shape, erelu, ecap, tuple(stride), tuple(pad), drelu, dcap, bool(residual)))
    run = cached_runner(key, arrays, lambda: _block_runner(xt.shape, expand, dw, project, residual))
    return channels_last_view(run(xt))


def _block_runner(shape, expand, dw, project, residual):
    """The chain of :func:`convolution_block_nhwc_cpu` for inputs of ``shape`` (N, H, W, C), prepared:
    a function xt -> y (N, Ho, Wo, Cout) that only runs the kernels (packed weights, geometry,
    thread counts and the scratch arrays made here once)."""
    we, be_, erelu, ecap = expand if expand is not None else (None, None, False, None)
    wd, bd, stride, pad, drelu, dcap = dw
    wp, bp_ = project if project is not None else (None, None)
    N, H, W, C = shape
    Ce, _, kh, kw = wd.shape
    sh, sw = stride
    pt, pb, pl, pr = pad
    Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad)
    Cout = wp.shape[0] if wp is not None else Ce
    e_row = W * Ce * 4 if we is not None else 0
    d_row = Wo * Ce * 4 if wp is not None else 0
    band = _band(Ho, W, Wo, Ce, kh, kw, sh, sw, pl, d_row)
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
    big = max(N * H * e_row, N * Ho * d_row) > FUSE_EXPANDED_FROM
    if not big or (we is not None and (kh - sh) > FUSE_HALO * chunk * sh):
        # the intermediate tensors stay in cache anyway, or the chunks' overlapping rows would
        # cost more expansion work than the fusion saves: the layers' kernels one after the other,
        # the expansion storing into a zero-padded array (its borders written once, here) that
        # the depthwise kernel reads
        Hp, Wp = _padded_hw(H, W, Ho, Wo, kh, kw, stride, pad)
        e = np.zeros((N, Hp, Wp, Ce), dtype=np.float32)
        gemm_e = None if we is None else _gemm_args(C, we, be_, erelu, ecap, (N, H, W, H, W, C, 1, 1),
                                                     (Hp, Wp, pt, pl))
        dw_args = _depthwise_args(e.shape, wd, bd, stride, Ho, Wo, drelu, dcap)
        d = np.empty((N, Ho, Wo, Ce), dtype=np.float32) if wp is not None else None
        gemm_p = None if wp is None else _gemm_args(Ce, wp, bp_, False, None, (N, Ho, Wo, Ho, Wo, Ce, 1, 1),
                                                    (Ho, Wo, 0, 0))

        def run(xt):
            if gemm_e is None:
                _pad_nhwc(xt, False, pt, pl, e)
            else:
                _run_gemm(gemm_e, xt, e)
            y = np.empty((N, Ho, Wo, Cout), dtype=np.float32)
            _run_depthwise(dw_args, e, y if wp is None else d)
            if wp is not None:
                _run_gemm(gemm_p, d, y)
                if residual:
                    np.add(y, xt, out=y)
            return y
        return run
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
    wt = _dw_hwc(wd)
    args = (we is not None, _arange(C), bpe, bee, *clip_bounds(erelu, ecap), wt, _padded_bias(bd, Ce), sh, sw, pt, pl,
            *clip_bounds(drelu, dcap), wp is not None, _arange(Ce), bpp, bpb, bool(residual), band, chunk, workers)

    def run(xt):
        y = np.empty((N, Ho, Wo, Cout), dtype=np.float32)
        _block(xt, *args, np.zeros(1, np.int64), y)
        return y
    return run


def convolution_expand_depthwise_nhwc_cpu(x, w_expand, b_expand, w_dw, b_dw, stride=(1, 1), pad=(0, 0, 0, 0),
                                          expand_relu=False, expand_cap=None, relu=False, relu_cap=None):
    """x: (N, C, H, W), w_expand: (Ce, C, 1, 1), w_dw: (Ce, 1, kh, kw) -> (N, Ce, Ho, Wo), channels
    last: :func:`convolution_block_nhwc_cpu` without a projection."""
    return convolution_block_nhwc_cpu(x, (w_expand, b_expand, expand_relu, expand_cap),
                                      (w_dw, b_dw, stride, pad, relu, relu_cap))
