"""Channels-last convolution kernels: 1x1 as a GEMM over pixels, depthwise along channel vectors.

Shapes: the input is an ``(N, C, H, W)`` blob whose memory is ``(N, H, W, C)`` (channels last, see
:func:`minicaffe.layers.base.is_channels_last`); weight ``(M, C, 1, 1)`` or ``(C, 1, kh, kw)``
(OIHW); the output is again an ``(N, M, Ho, Wo)`` blob with ``(N, Ho, Wo, M)`` memory. In this
layout a 1x1 convolution is one matrix product ``Y (N*H*W, M) = X (N*H*W, C) @ W^T`` whose A rows
are contiguous, run by the register-blocked tile of :mod:`minicaffe.simd` with bias and the fused
activation applied as each tile is stored (contiguous output rows, no layout change), and a
depthwise convolution reads a zero-padded copy of its input (or the expansion's output stored
padded) with register tiles of pixels x one channel vector that share input columns between taps.
An inverted-residual chain (1x1 expansion -> depthwise -> 1x1 projection [+ input], MobileNet v2 /
EfficientNet) runs as one kernel band by band where its intermediate tensors outgrow the cache
(:func:`convolution_block_nhwc_cpu`), else as its layers' kernels with the residual sum in the
projection's output pass; convolutions with few taps at small batches (an RGB stem) go through the
1x1 GEMM reading the taps of a padded channels-last copy. Each layer is prepared once per input
shape (for frozen weights) as a :class:`~minicaffe.executor.Program` of the task loops in
:mod:`.nhwc_kernels`, run on all threads; nothing changes layout between layers.
"""
from __future__ import annotations

import numba
import numpy as np

from ... import executor  # the module (not its names): executor imports the kernels beside this one
from ...backend import SERIAL_BELOW
from ...simd import MR, NR
from ...simd import W as SIMD_W
from ..base import channels_last_view, is_channels_last, nhwc_memory
from .cache import cached_runner, cached_transform, clip_bounds, runner_key
from .direct import _pack_weights
from .reference import conv_out_hw

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







def _pad_workers(xp):
    """Threads for a padding copy into xp: all from PARALLEL_MACS elements (a copy is cheap work)."""
    return numba.get_num_threads() if xp.size >= PARALLEL_MACS else 1



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
    return channels_last_view(conv1x1_runner(xt.shape, w, b, relu, relu_cap)(xt))


def conv1x1_runner(shape, w, b, relu=False, relu_cap=None):
    """The prepared :func:`convolution_1x1_nhwc_cpu` for (N, H, W, K) inputs (cached for frozen
    weights): xt -> y (N, H, W, M), with ``ops``."""
    return cached_runner(runner_key((w, b), ("1x1", shape, relu, relu_cap)), (w, b),
                         lambda: _gemm_runner(shape, w, b, relu, relu_cap))


def _gemm_runner(shape, w, b, relu, relu_cap):
    """convolution_1x1_nhwc_cpu for (N, H, W, K) inputs, prepared: xt -> y (N, H, W, M)."""
    N, H, W, K = shape
    M = w.shape[0]
    args = _gemm_args(K, w, b, relu, relu_cap, (N, H, W, H, W, K, 1, 1), (H, W, 0, 0))

    return _runner((N, K, H, W), (N, M, H, W), ("gemm", ("in", args, "out", None)))


def _gemm_args(offs, w, b, relu, relu_cap, geo_in, geo_out, key=("direct", 1), pack=None):
    """The arguments of the 1x1 GEMM kernel (nhwc_kernels._gemm_worker) between its input and
    output: offs: the tap offsets (or K, for contiguous rows of K) read from each output pixel's
    base in the input; geo_in = (N, Ho, Wo, iHp, iWp, iC, sh, sw) (contiguous rows of K when iHp,
    iWp, iC, sh, sw = Ho, Wo, K, 1, 1); geo_out = (oHp, oWp, ot, ol): the output pixels' place in an
    (N, oHp, oWp, M) array; w: (M, ...) packed by ``pack`` (default: its own order) and cached
    under ``key``. -> (offs, packed panels, padded bias, lo, hi, geo, threads)."""
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


#: input-channel x tap count up to which a channels-last convolution of a small batch runs as a
#: 1x1 GEMM whose A operand is read through the taps (EfficientNet's 3x3 stem from RGB: 27)
#: rather than through the direct kernel
TAPS_UP_TO = 32
#: largest batch for that route in a layer-by-layer forward: at batch 1 it takes half the direct
#: kernel's time (0.19 vs 0.35 ms for the stem), at batch 64 1.4x (20.8 vs 14.4 ms: the
#: channels-last copy of the input is a pass over memory the direct kernel does not make). A
#: whole-forward program takes it at any batch (the direct kernel is not one of its kernels, and a
#: forward as one program gains more than the stem loses)
TAPS_MAX_BATCH = 4


def taps_applies(x_shape, w_shape, group, any_batch=False):
    """An ungrouped convolution with at most TAPS_UP_TO taps per output (channels x kernel) on at
    most TAPS_MAX_BATCH images (any number with ``any_batch``): :func:`convolution_taps_nhwc_cpu`."""
    M, Cg, kh, kw = w_shape
    return group == 1 and Cg * kh * kw <= TAPS_UP_TO and (any_batch or x_shape[0] <= TAPS_MAX_BATCH)


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
    run = taps_runner(x.shape, nchw, w, b, stride, pad, dilation, relu, relu_cap)
    return channels_last_view(run(np.ascontiguousarray(x, dtype=np.float32) if nchw else nhwc_memory(x)))


def taps_runner(shape, nchw, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), relu=False, relu_cap=None):
    """The prepared :func:`convolution_taps_nhwc_cpu` for (N, C, H, W) inputs held as NCHW arrays
    (``nchw``) or as their (N, H, W, C) channels-last memory (cached for frozen weights): x -> y
    (N, Ho, Wo, M), with ``ops``."""
    return cached_runner(runner_key((w, b), ("taps", shape, nchw, tuple(stride), tuple(pad), tuple(dilation), relu,
                                             relu_cap)),
                         (w, b), lambda: _taps_runner(shape, nchw, w, b, stride, pad, dilation, relu, relu_cap))


def _taps_runner(shape, nchw, w, b, stride, pad, dilation, relu, relu_cap):
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
    return _runner(shape, (N, M, Ho, Wo), ("pad", ("in", nchw, pt, pl, xp)), ("gemm", (xp, args, "out", None)))


def depthwise_nhwc_applies(x_shape, w_shape, dilation, group):
    """One filter per channel (no channel multiplier), no dilation."""
    N, C, H, W = x_shape
    M, Cg = w_shape[:2]
    return group == C and Cg == 1 and M == C and tuple(dilation) == (1, 1)


def convolution_depthwise_nhwc_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), relu=False, relu_cap=None):
    """x: (N, C, H, W) (channels-last memory read in place; NCHW converted), w: (C, 1, kh, kw) ->
    (N, C, Ho, Wo) with (N, Ho, Wo, C) memory; same values as :func:`convolution_reference` with
    ``group == C``: the input copied once into a zero-padded channels-last array, then
    :func:`depthwise_runner`."""
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    if M != C or Cg != 1:
        raise ValueError(f"not a depthwise convolution of {C} channels: weight {w.shape}")
    nchw = not (is_channels_last(x) and x.dtype == np.float32)
    run = depthwise_runner(x.shape, nchw, w, b, stride, pad, relu, relu_cap)
    return channels_last_view(run(np.ascontiguousarray(x, dtype=np.float32) if nchw else nhwc_memory(x)))


def depthwise_runner(shape, nchw, w, b, stride=(1, 1), pad=(0, 0, 0, 0), relu=False, relu_cap=None):
    """The prepared :func:`convolution_depthwise_nhwc_cpu` for (N, C, H, W) inputs held as NCHW
    arrays (``nchw``) or as their channels-last memory (cached for frozen weights): x -> y (N, Ho,
    Wo, C), with ``ops``."""
    def make():
        N, C, H, W = shape
        kh, kw = w.shape[2:]
        Ho, Wo = conv_out_hw(H, W, kh, kw, stride, pad)
        Hp, Wp = _padded_hw(H, W, Ho, Wo, kh, kw, stride, pad)
        xp = np.empty((N, Hp, Wp, C), dtype=np.float32)
        args = _depthwise_args(xp.shape, w, b, stride, Ho, Wo, relu, relu_cap)
        return _runner(shape, (N, C, Ho, Wo), ("pad", ("in", nchw, pad[0], pad[2], xp)), ("dw", (xp, args, "out")))
    return cached_runner(runner_key((w, b), ("dw", shape, nchw, tuple(stride), tuple(pad), relu, relu_cap)), (w, b),
                         make)


def _padded_hw(H, W, Ho, Wo, kh, kw, stride, pad):
    """The zero-padded input plane (Hp, Wp) every tap of every output pixel falls inside."""
    return max(H + pad[0], (Ho - 1) * stride[0] + kh), max(W + pad[2], (Wo - 1) * stride[1] + kw)


def _dw_hwc(w):
    # OIHW (C, 1, kh, kw) -> (kh, kw, C): a tap's weights for all channels contiguous
    C, _, kh, kw = w.shape
    return cached_transform(w, ("dw-hwc",), lambda wf: np.ascontiguousarray(wf.reshape(C, kh * kw).T)
                            .reshape(kh, kw, C))


def _depthwise_args(shape, w, b, stride, Ho, Wo, relu, relu_cap):
    """The depthwise kernel's arguments (_dw_padded between xp and its counter) for a zero-padded
    channels-last input of ``shape`` (N, Hp, Wp, C) (:func:`_padded_hw`) and an (N, Ho, Wo, C)
    output: tasks of (image, output rows, channels) on every thread."""
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


# --------------------------------------------------------------------------------------------
# Inverted-residual blocks (MobileNet v2 / EfficientNet): [1x1 expansion] -> depthwise -> [1x1
# projection] [+ the block input] as one kernel, band by band, so the expanded and depthwise
# tensors, the block's largest, never go to memory.

#: bytes of expanded and depthwise rows one thread keeps (most of its L2: fewer, taller bands,
#: so fewer halo rows expanded twice)
EXPAND_BUFFER_BYTES = 768 << 10
#: fuse only when an intermediate tensor is larger than this (below, it stays in cache anyway)
FUSE_EXPANDED_FROM = 1 << 20
#: fuse only while a chunk's re-expanded overlap rows stay below this share of its rows
FUSE_HALO = 1.0


def _band(rows, W, Wo, Ce, kh, kw, sh, sw, pl, d_row):
    """Output rows per band (at most ``rows``, at least one) whose padded depthwise input rows and
    d_row bytes of depthwise output per row fit EXPAND_BUFFER_BYTES."""
    e_row = max(W + pl, (Wo - 1) * sw + kw) * Ce * 4
    return min(rows, max(1, (EXPAND_BUFFER_BYTES - kh * e_row) // (sh * e_row + d_row) + 1))




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
    return channels_last_view(block_runner(xt.shape, expand, dw, project, residual)(xt))


def block_runner(shape, expand, dw, project=None, residual=False):
    """The prepared chain of :func:`convolution_block_nhwc_cpu` for (N, H, W, C) inputs (cached for
    frozen weights): xt -> y (N, Ho, Wo, Cout); its ``ops`` attribute lists the kernels it runs
    (see :func:`_ops`)."""
    we, be_, erelu, ecap = expand if expand is not None else (None, None, False, None)
    wd, bd, stride, pad, drelu, dcap = dw
    wp, bp_ = project if project is not None else (None, None)
    arrays = (we, be_, wd, bd, wp, bp_)
    key = runner_key(arrays, (shape, erelu, ecap, tuple(stride), tuple(pad), drelu, dcap, bool(residual)))
    return cached_runner(key, arrays, lambda: _block_runner(shape, expand, dw, project, residual))


def _runner(in_shape, out_shape, *ops):
    """A prepared layer (or chain): its kernels, in order, as (kind, arguments) with "in" / "out"
    for the layer's input (an (N, C, H, W) = ``in_shape`` blob's array: NCHW, or its channels-last
    memory) and output (channels last, ``out_shape`` (N, M, Ho, Wo)), run as one
    :class:`~minicaffe.executor.Program` -> a function x -> y (N, Ho, Wo, M). Its ``ops`` attribute
    keeps the list for a whole-net program (:mod:`minicaffe.program`). Kinds: "pad" (x, nchw, pt,
    pl, xp), "gemm" (x, :func:`_gemm_args`, y, residual or None), "dw" (x, :func:`_depthwise_args`,
    y), "block" (x, the chain kernel's arguments (nhwc_kernels._block_worker), y)."""
    prog = executor.Program()
    x_idx, y_idx = prog.slot("x"), prog.slot("y")
    prog.emit(ops, x_idx, in_shape, y_idx, out_shape)
    workers = max(_pad_workers(a[4]) if k == "pad" else a[1][-1] for k, a in ops)
    prog.finish(workers)
    N, M, Ho, Wo = out_shape

    def run(x):
        y = np.empty((N, Ho, Wo, M), dtype=np.float32)
        prog.run({"x": x, "y": y})
        return y
    run.ops = list(ops)
    return run


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
    chunk = Ho if small else min(Ho, max(band, -(-Ho * N // ((4 if we is not None else 8) * workers))))
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
        first = ("pad", ("in", False, pt, pl, e)) if gemm_e is None else ("gemm", ("in", gemm_e, e, None))
        if wp is None:
            return _runner((N, C, H, W), (N, Cout, Ho, Wo), first, ("dw", (e, dw_args, "out")))
        # the residual sum in the projection's output pass
        return _runner((N, C, H, W), (N, Cout, Ho, Wo), first, ("dw", (e, dw_args, d)),
                       ("gemm", (d, gemm_p, "out", "in" if residual else None)))
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
            *clip_bounds(drelu, dcap), wp is not None, _arange(Ce), bpp, bpb, bool(residual), band,
            _chunks(N, Ho, chunk, workers), workers)

    return _runner((N, C, H, W), (N, Cout, Ho, Wo), ("block", ("in", args, "out")))


def _chunks(N, Ho, chunk, workers):
    """Chunks of about ``chunk`` output rows an image is split into: the tasks (N of them per
    chunk) a multiple of the threads where the image has the rows, so that equal chunks end
    together rather than one thread doing the last alone."""
    n = -(-Ho // chunk)
    while workers > 1 and (N * n) % workers and n < Ho:
        n += 1
    return n


def convolution_expand_depthwise_nhwc_cpu(x, w_expand, b_expand, w_dw, b_dw, stride=(1, 1), pad=(0, 0, 0, 0),
                                          expand_relu=False, expand_cap=None, relu=False, relu_cap=None):
    """x: (N, C, H, W), w_expand: (Ce, C, 1, 1), w_dw: (Ce, 1, kh, kw) -> (N, Ce, Ho, Wo), channels
    last: :func:`convolution_block_nhwc_cpu` without a projection."""
    return convolution_block_nhwc_cpu(x, (w_expand, b_expand, expand_relu, expand_cap),
                                      (w_dw, b_dw, stride, pad, relu, relu_cap))
