"""A frozen net's forward as one executor program: every kernel in one pass over the threads.

Layer by layer, a forward (EfficientNet-Lite0: ~45 kernels of 30-300 us at batch 1; CaffeNet: ~25
OpenMP regions and BLAS calls) wakes threads once per kernel, with Python in between. :func:`build`
strings the kernels into one :class:`~minicaffe.executor.Program` (:class:`NetProgram`): a forward
then wakes the helpers once, runs no Python between kernels, and a helper that wakes late leaves
its share to the others. Channels-last nets run the same kernels as layer by layer, bit for bit;
CaffeNet-style nets run channels last from their first convolution: the direct convolution
through the taps GEMM, Winograd with channels-last transforms, pool + LRN in one pass, inner
products reading their weights in place (values within float32 rounding of the layer-by-layer
forward's, which sums in other orders).

It covers the planned steps (:meth:`minicaffe.Net._steps`) of one input shape and fetch list when
the weights are frozen, up to the first step it has no kernel for (:attr:`NetProgram.rest`; the net
runs the rest layer by layer from the blobs the program returns): convolutions (1x1, depthwise, few
taps, Winograd, any other ungrouped one), inverted-residual chains, windowed and global pooling,
across-channel LRN, inner products, Dropout (at test time) and softmax. :func:`build` returns None
when not even the first step is one of them.
"""
from __future__ import annotations

import numba
import numpy as np

from .executor import (
    OP_BIAST,
    OP_DW,
    OP_FC,
    OP_GEMM,
    OP_PACKT,
    OP_PAD,
    OP_POOL,
    OP_SOFTMAX,
    OP_WIN_GEMM,
    OP_WIN_IN,
    OP_WIN_OUT,
    OP_WPOOL,
    Program,
)
from .layers.base import channels_last_view
from .layers.convolution import layer as conv_layer
from .layers.convolution.cache import _frozen, cached_transform
from .layers.convolution.direct import direct_applies
from .layers.convolution.layer import nhwc_route, winograd_applies
from .layers.convolution.nhwc import (
    _gemm_args,
    _padded_bias,
    block_runner,
    clip_bounds,
    conv1x1_runner,
    depthwise_runner,
    taps_runner,
)
from .layers.convolution.winograd import WINOGRAD_BUDGET, _pack_panels, _winograd_filters_uncached, winograd_plan
from .layers.inner_product import ROWS_MAX_BATCH, ROWS_MR
from .layers.lrn import ACROSS
from .simd import MR, NR


class NetProgram:
    """One forward's kernels (for one input shape, fetch list and thread) as an executor
    :class:`~minicaffe.executor.Program`: the input and the fetched blobs are its slots (fetched
    blobs are new arrays every run: the caller keeps them), the other blobs its own arrays."""

    def __init__(self):
        self.prog = Program()
        self.blobs = {}          # blob name -> (F index, logical shape, channels last, floats)
        self.input = None
        self.fetch = []
        self.kernel_layers = []  # per kernel, the layer (or chain's layers) it computes
        self.rest = 0            # the first planned step it does not run (all: their number)
        self.absorbed = set()    # layers whose work a previous kernel did (an LRN after its pool)
        self._outs = []          # per returned blob, in slot order: name, floats, blob floats, array shape,
                                 # channels last (finish)

    def new_blob(self, name, shape, cl, fetched, size=None):
        """The array of blob ``name`` of logical shape (N, C, H, W) (memory (N, H, W, C) when cl;
        ``size`` floats, its first ones the blob's) -> its F index."""
        size = int(np.prod(shape)) if size is None else size
        idx = self.prog.slot(name) if fetched else self.prog.f(np.empty(size, dtype=np.float32))
        self.blobs[name] = (idx, tuple(shape), cl, size)
        return idx

    def finish(self):
        """Freeze the program (all threads, weights packed) and plan the arrays :meth:`run` hands
        out, in the order of the program's slots (:meth:`~minicaffe.executor.Program.run_slots`):
        the input's first."""
        self.prog.finish(numba.get_num_threads(), pack_weights=True)
        assert next(iter(self.prog.slots)) == self.input and set(self.prog.slots) == {self.input, *self.fetch}
        for name in list(self.prog.slots)[1:]:
            _, shape, cl, size = self.blobs[name]
            N, C = shape[0], shape[1]
            self._outs.append((name, size, int(np.prod(shape)), (N,) + tuple(shape[2:]) + (C,) if cl else shape, cl))

    def run(self, x):
        """x: the net input (C-contiguous float32) -> {fetched blob: array}."""
        if x.shape != self.blobs[self.input][1]:
            raise RuntimeError(f"a program made for input {self.blobs[self.input][1]} was given {x.shape}")
        arrays = [x]
        res = {}
        for name, size, n, shape, cl in self._outs:
            a = np.empty(size, dtype=np.float32)
            arrays.append(a)
            res[name] = channels_last_view(a.reshape(shape)) if cl else a[:n].reshape(shape)
        self.prog.run_slots(arrays)
        return res


def build(net, steps, fetch):
    """A :class:`NetProgram` for ``net``'s planned ``steps`` (from its single input) and the blobs
    ``fetch``, or None when its first step is not one it runs or a weight is not frozen. When a
    later step is not (an inner product over more images than its in-place route takes, a layer it
    has no kernel for), the program covers the steps before it (``rest``: the first step left to
    the layer-by-layer forward) and also returns the blobs the remaining steps read."""
    if len(net.input_names) != 1 or not all(_frozen(a) for ps in net.params.values() for a in ps):
        return None
    name = net.input_names[0]
    fetch = list(dict.fromkeys(fetch))
    if name in fetch:
        return None
    end = len(steps)
    while True:
        # the blobs the steps after ``end`` read: returned too (made again if an earlier step then
        # turns out not to run, e.g. a returned blob that only an alias would make)
        later = [b for _i, layer, kind, arg in steps[end:] for b in ([arg["input"]] if kind == 1 else layer.bottoms)]
        want = list(dict.fromkeys(fetch + later))
        prog, done = _emit(net, steps[:end], name, want)
        if done == 0:
            return None
        if done == end:
            break
        end = done
    prog.fetch = [b for b in want if b in prog.blobs and b != name]
    if end == len(steps) and any(b not in prog.blobs for b in fetch):
        return None
    prog.rest = end
    prog.finish()
    return prog


def _emit(net, steps, name, fetch):
    """-> (a NetProgram of ``steps`` up to the first it cannot run, how many it runs)."""
    prog = NetProgram()
    prog.input = name
    prog.new_blob(name, net.blob_shapes[name], False, True)
    for done, (_i, layer, kind, arg) in enumerate(steps):
        n0, made = len(prog.prog.rows), set(prog.blobs)
        if layer.name in prog.absorbed:
            prog.kernel_layers[-1] += "+" + layer.name
            continue
        # a reason not to run this step in the program, or None
        why = _chain(net, prog, arg, fetch) if kind == 1 else _layer(net, prog, layer, arg, fetch) if kind == 0 \
            else "a fused activation is listed"
        if why is not None:
            _drop_from(prog, n0, made)
            return prog, done
        prog.kernel_layers += _kernel_layers(net, prog.prog.rows[n0:], kind, layer, arg)
    return prog, len(steps)


def _drop_from(prog, n0, made):
    # a step that could not be run may have emitted kernels or named blobs before it found why:
    # drop them (the program then neither runs nor returns them)
    del prog.prog.rows[n0:], prog.prog.fpar[n0:]
    for b in set(prog.blobs) - made:
        del prog.blobs[b]
        prog.prog.slots.pop(b, None)


def _kernel_layers(net, rows, kind, layer, arg):
    """The layer each of a step's kernels computes: a layer's name; in a chain, its expansion, depthwise
    and projection layers in kernel order (a fused chain's one kernel: all of them, joined by "+")."""
    if kind != 1:
        return [layer.name] * len(rows)
    names = {k: None if arg[k] is None else net.layers[arg[k]].name for k in ("expand", "dw", "project")}
    if len(rows) == 1:
        return ["+".join(v for v in names.values() if v)]
    out, seen_dw = [], False
    for row in rows:
        if row[0] == OP_DW:
            seen_dw = True
            out.append(names["dw"])
        elif row[0] == OP_PAD:
            out.append(names["dw"])
        else:
            out.append(names["project"] if seen_dw else names["expand"])
    return out


def _bias(layer, ps):
    return ps[1] if layer.bias_term else None


def _chain(net, prog, c, fetch):
    """Emit an inverted-residual chain (:meth:`Net._block_plan`) -> None, or why it cannot."""
    lay, params = net.layers, net.params
    if c["input"] not in prog.blobs:
        return "input not made by the program"
    x_idx, shape, cl, _ = prog.blobs[c["input"]]
    if not cl:
        return "chain input not channels last"
    ex, pr = c["expand"], c["project"]
    dw = lay[c["dw"]]
    e, d, p = dw.block_stages(params[dw.name], c["act"], None if ex is None else lay[ex],
                              None if ex is None else params[lay[ex].name], c["expand_act"],
                              None if pr is None else lay[pr], None if pr is None else params[lay[pr].name])
    N, C, H, W = shape
    run = block_runner((N, H, W, C), e, d, p, c["residual"])
    top = lay[c["members"][-1]].tops[0]
    oshape = net.blob_shapes[top]
    y_idx = prog.new_blob(top, oshape, True, top in fetch)
    prog.prog.emit(run.ops, x_idx, shape, y_idx, oshape)
    return None


def _layer(net, prog, layer, arg, fetch):
    """Emit a layer -> None, or why it cannot."""
    inplace, extra, pre = arg
    if pre is not None or len(layer.tops) != 1 or len(layer.bottoms) != 1:
        return "layer form"
    if layer.bottoms[0] not in prog.blobs:
        return "input not made by the program"
    x_idx, shape, cl, _ = prog.blobs[layer.bottoms[0]]
    top = layer.tops[0]
    oshape = net.blob_shapes[top]
    ps = net.params.get(layer.name, [])
    if layer.type == "Convolution":
        w, b = ps[0], _bias(layer, ps)
        relu, cap = extra.get("relu", False), extra.get("relu_cap")
        N, C, H, W = shape
        stride, pad, dil, group = layer.stride, layer.pad, layer.dilation, layer.group
        route = nhwc_route(shape, cl, w, stride, pad, dil, group, extra.get("channels_last", False), program=True)
        if route == "1x1" and cl:         # (from NCHW the layer would copy its input first)
            run = conv1x1_runner((N, H, W, C), w, b, relu, cap)
        elif route == "depthwise":
            run = depthwise_runner(shape, not cl, w, b, stride, pad, relu, cap)
        elif conv_layer.WINOGRAD and winograd_applies(w, stride, dil, group, shape):
            return _winograd(net, prog, x_idx, shape, cl, w, b, pad, group, relu, cap, top, fetch)
        elif group == 1 and direct_applies(shape, w, stride, pad, dil, group):
            # the direct convolution channels last (the "taps" route, and any other ungrouped
            # layer): the 1x1 GEMM reading each output pixel's taps (kh x kw x C) from a
            # zero-padded channels-last copy of the input
            run = taps_runner(shape, not cl, w, b, stride, pad, dil, relu, cap)
        else:
            return "a convolution without a channels-last kernel"
        y_idx = prog.new_blob(top, oshape, True, top in fetch)
        prog.prog.emit(run.ops, x_idx, shape, y_idx, oshape)
    elif layer.type == "Pooling" and getattr(layer, "global_pooling", False):
        if not (layer.method in (0, 1) and cl):
            return "global pooling other than MAX / AVE of a channels-last blob"
        N, C, H, W = shape
        y_idx = prog.new_blob(top, oshape, False, top in fetch)
        prog.prog.op([OP_POOL, x_idx, y_idx, N, H * W, C, layer.method])
    elif layer.type in ("Pooling", "LRN"):
        return _window_pool(net, prog, layer, x_idx, shape, cl, top, oshape, fetch)
    elif layer.type == "Dropout":
        # the identity at test time: its top is its bottom's array
        if top != layer.bottoms[0]:
            if top in fetch:
                return "a fetched blob made by a Dropout that does not run in place"
            prog.blobs[top] = prog.blobs[layer.bottoms[0]]
    elif layer.type == "InnerProduct":
        w = ps[0]
        b = _bias(layer, ps)
        N = int(np.prod(shape[:layer._ax]))
        K = int(np.prod(shape[layer._ax:]))
        M = w.shape[0]
        if layer.transpose or (cl and np.prod(shape[2:]) != 1):
            return "inner product transposed or of a channels-last plane"
        relu, cap = extra.get("relu", False), extra.get("relu_cap")
        in_place = w.size >= FC_ROWS_FROM and M >= ROWS_MR
        if in_place and (not w.flags.c_contiguous or w.dtype != np.float32):
            return "an inner product whose weights are not contiguous float32"
        y_idx = prog.new_blob(top, oshape, False, top in fetch)
        if in_place and N > ROWS_MAX_BATCH:
            _fc_columns(prog.prog, x_idx, w, b, N, K, M, relu, cap, y_idx)
        elif in_place:
            # large weights (CaffeNet's fc6: 144 MB) are streamed once a forward as they are, by
            # blocks of rows that meet every input while in cache
            lo, hi = clip_bounds(relu, cap)
            prog.prog.op([OP_FC, x_idx, prog.prog.f(w, shared=True), prog.prog.f(_padded_bias(b, M)), y_idx, N, K, M],
                         lo, hi)
        else:
            # through the 1x1 GEMM: the inputs as rows of K, the weights packed like a 1x1's
            args = _gemm_args(K, w.reshape(M, K, 1, 1), b, relu, cap, (1, N, 1, N, 1, K, 1, 1), (N, 1, 0, 0))
            prog.prog.emit([("gemm", ("in", args, "out", None))], x_idx, shape, y_idx, (1, M, N, 1))
    elif layer.type == "Softmax":
        if cl and np.prod(shape[2:]) != 1:
            return "softmax over a channels-last plane"
        ax = layer.axis if layer.axis >= 0 else len(shape) + layer.axis
        O, C, In = int(np.prod(shape[:ax])), shape[ax], int(np.prod(shape[ax + 1:]))
        y_idx = prog.new_blob(top, oshape, False, top in fetch)
        prog.prog.op([OP_SOFTMAX, x_idx, y_idx, O, C, In])
    else:
        return f"a {layer.type} layer"
    return None


#: weights (floats) from which an inner product reads its weights in place (OP_FC, or over more than
#: ROWS_MAX_BATCH inputs :func:`_fc_columns`) instead of through the 1x1 GEMM's packed copy
FC_ROWS_FROM = 1 << 22
#: rows of K per product of :func:`_fc_columns` (its panel of inputs, K_CHUNK x NR floats, stays in L2)
K_CHUNK = 2048


def _fc_columns(p, x_idx, w, b, N, K, M, relu, cap, y_idx):
    """Emit an inner product of N inputs (rows of K) with weights w (M, K) read in place: the inputs
    packed as the tile kernel's B operand (x^T in panels of NR inputs, chunk of K_CHUNK rows by
    chunk), then, chunk by chunk, y^T (M, N) (+)= w[:, chunk] x^T[chunk] through the 1x1 GEMM with
    each weight row as an A row (the first chunk stores, the others add), then y = clip(y^T^T + b)."""
    P = -(-N // NR)
    bp = p.f(np.empty(K * P * NR, dtype=np.float32))
    yt = p.f(np.empty(M * N, dtype=np.float32))
    p.op([OP_PACKT, x_idx, bp, N, K, K_CHUNK])
    w_idx, zeros = p.f(w, shared=True), p.f(np.zeros(P * NR, dtype=np.float32))
    # "pixels": the M weight rows (row m's taps at m*K + k), "channels": the N inputs
    geo = p.i((M, 1, M, 1, K, 1, 1, M, 1, 0, 0, 0, 1, 1, N))
    for k0 in range(0, K, K_CHUNK):
        k1 = min(K, k0 + K_CHUNK)
        p.op([OP_GEMM, w_idx, bp, zeros, yt, -1 if k0 == 0 else yt, p.i(np.arange(k0, k1)), geo, P, (k1 - k0) * NR,
              k0 * P * NR])
    p.op([OP_BIAST, yt, p.f(_padded_bias(b, M)), y_idx, M, N], *clip_bounds(relu, cap))


def _winograd(net, prog, x_idx, shape, cl, w, b, pad, group, relu, cap, top, fetch):
    """Emit a Winograd F(4x4, 3x3) convolution (:mod:`minicaffe.layers.convolution.winograd`) with a
    channels-last output, chunk of images by chunk (WINOGRAD_BUDGET bytes of transformed input
    each): the input padded to whole tiles channels last, the tile transform, the 36 x group
    products, the output transform (bias, activation) -> None, or why it cannot."""
    N, C, H, W = shape
    M, Cg, k, _ = w.shape
    ks, Ho, Wo, th, tw, Hp, Wp, nb = winograd_plan(shape, w.shape, pad, WINOGRAD_BUDGET)
    pt, pb, pl, pr = pad
    T, K, Mg = th * tw, ks * ks * Cg, M // group
    if min(nb, N - (N - 1) // nb * nb) * T < MR:
        return "a Winograd chunk of fewer than MR tiles"
    p = prog.prog
    xt = p.f(np.empty((nb, Hp, Wp, C), dtype=np.float32))
    V = p.f(np.empty((36, group, nb * T, K), dtype=np.float32))
    Mt = p.f(np.empty((36, group, nb * T, Mg), dtype=np.float32))
    Up = cached_transform(w, ("winograd-panels", group), lambda wf: _pack_panels(_winograd_filters_uncached(wf, group)))
    up, offs, bias = p.f(Up), p.i(np.arange(K)), p.f(_padded_bias(b, M))
    y_idx = prog.new_blob(top, net.blob_shapes[top], True, top in fetch)
    geo = p.i((Ho, Wo, Ho, Wo, 0, 0, 0))
    for n0 in range(0, N, nb):
        cur = min(nb, N - n0)
        R = cur * T
        p.op([OP_PAD, x_idx, xt, int(not cl), cur, C, H, W, Hp, Wp, pt, pl, n0 * C * H * W])
        p.op([OP_WIN_IN, xt, V, cur, Hp, Wp, C, group, ks, th, tw, R, K])
        p.op([OP_WIN_GEMM, V, up, offs, Mt, group, R, K, Up.shape[2], Mg])
        p.op([OP_WIN_OUT, Mt, bias, y_idx, geo, cur, th, tw, group, R, Mg, n0 * Ho * Wo * M], *clip_bounds(relu, cap))
    return None


def _window_pool(net, prog, layer, x_idx, shape, cl, top, oshape, fetch):
    """Emit a windowed Pooling (MAX / AVE) or an across-channel LRN on a blob, channels last (an LRN:
    a 1x1 pool followed by the normalisation) -> None, or why it cannot. The output is stored NCHW
    where an inner product reads it."""
    N, C, H, W = shape
    if layer.type == "LRN":
        if layer.region != ACROSS:
            return "an LRN within channels"
        method, (kh, kw), (sh, sw), (ph, pw) = 0, (1, 1), (1, 1), (0, 0)
        lrn = (layer.size, layer.alpha, layer.beta, layer.k)
    else:
        if layer.method not in (0, 1):
            return f"pooling method {layer.method}"
        method = layer.method
        (kh, kw), (sh, sw), (ph, pw) = layer.geometry(shape)
        lrn = (0, 0, 0, 0)
    if not cl:
        return "a windowed pooling or LRN of an NCHW blob"
    if layer.type == "Pooling":
        # a pool whose one reader is an across-channel LRN (CaffeNet's pool1 -> norm1) normalises
        # each pooled pixel as it is made: one pass, the pooled blob never stored
        readers = net._readers().get(top, set())
        if len(readers) == 1 and top not in fetch:
            nxt = net.layers[next(iter(readers))]
            if nxt.type == "LRN" and nxt.region == ACROSS and list(nxt.bottoms) == [top] and len(nxt.tops) == 1:
                lrn = (nxt.size, nxt.alpha, nxt.beta, nxt.k)
                prog.absorbed.add(nxt.name)
                top = nxt.tops[0]
    Ho, Wo = oshape[2], oshape[3]
    nchw = any(net.layers[j].type == "InnerProduct" for j in net._readers().get(top, ()))
    y_idx = prog.new_blob(top, oshape, not nchw, top in fetch)
    p = prog.prog
    geo = p.i((Ho, Wo, Ho, Wo, 0, 0, int(nchw)))
    p.op([OP_WPOOL, x_idx, y_idx, N, H, W, C, method, kh, kw, sh, sw, ph, pw, geo, p.f(np.array(lrn, np.float32))])
    return None
