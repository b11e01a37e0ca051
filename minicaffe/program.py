"""A frozen net's forward as one executor program: every kernel in one pass over the threads.

Layer by layer, a forward of a channels-last net (EfficientNet-Lite0: ~45 kernels of 30-300 us at
batch 1) wakes the helper threads once per kernel, with Python in between. :func:`build` strings
the same kernels, with the same arguments and in the same order, into one
:class:`~minicaffe.executor.Program` (:class:`NetProgram`): a forward then wakes the helpers once,
runs no Python between kernels, and a helper that wakes late leaves its share to the others. The
values are those of the layer-by-layer forward, bit for bit (the inner product, through the 1x1
GEMM, sums in another order: within 1e-6).

It covers the planned steps (:meth:`minicaffe.Net._steps`) of one input shape and fetch list when
the weights are frozen and every step is a kernel it knows: the channels-last convolutions and
chains of :mod:`minicaffe.layers.convolution.nhwc`, global pooling of a channels-last blob, inner
products (as 1x1 GEMMs) and softmax; otherwise :func:`build` returns None and the net runs layer by
layer.
"""
from __future__ import annotations

import numba
import numpy as np

from .executor import OP_DW, OP_PAD, OP_POOL, OP_SOFTMAX, Program
from .layers.base import channels_last_view
from .layers.convolution.cache import _frozen
from .layers.convolution.layer import nhwc_route
from .layers.convolution.nhwc import (
    _gemm_args,
    block_runner,
    conv1x1_runner,
    depthwise_runner,
    taps_runner,
)


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

    def new_blob(self, name, shape, cl, fetched, size=None):
        """The array of blob ``name`` of logical shape (N, C, H, W) (memory (N, H, W, C) when cl;
        ``size`` floats, its first ones the blob's) -> its F index."""
        size = int(np.prod(shape)) if size is None else size
        idx = self.prog.slot(name) if fetched else self.prog.f(np.empty(size, dtype=np.float32))
        self.blobs[name] = (idx, tuple(shape), cl, size)
        return idx

    def run(self, x):
        """x: the net input (C-contiguous float32) -> {fetched blob: array}."""
        outs = {name: np.empty(self.blobs[name][3], dtype=np.float32) for name in self.fetch}
        self.prog.run({self.input: x, **outs})
        res = {}
        for name, a in outs.items():
            _, shape, cl, _ = self.blobs[name]
            if cl:
                N, C, H, W = shape
                res[name] = channels_last_view(a.reshape(N, H, W, C))
            else:
                res[name] = a[:int(np.prod(shape))].reshape(shape)
        return res


def build(net, steps, fetch):
    """A :class:`NetProgram` for ``net``'s planned ``steps`` (from its single input) and the blobs
    ``fetch``, or None when a step is not one it runs or a weight is not frozen."""
    if len(net.input_names) != 1 or not all(_frozen(a) for ps in net.params.values() for a in ps):
        return None
    prog = NetProgram()
    name = net.input_names[0]
    fetch = list(dict.fromkeys(fetch))
    if name in fetch:
        return None
    prog.input = name
    prog.new_blob(name, net.blob_shapes[name], False, True)
    prog.fetch = fetch
    for _i, layer, kind, arg in steps:
        # a reason not to run as a program (the net then runs layer by layer), or None
        n0 = len(prog.prog.rows)
        why = _chain(net, prog, arg, fetch) if kind == 1 else _layer(net, prog, layer, arg, fetch) if kind == 0 \
            else "a fused activation is listed"
        if why is not None:
            return None
        prog.kernel_layers += _kernel_layers(net, prog.prog.rows[n0:], kind, layer, arg)
    if any(b not in prog.blobs for b in fetch):
        return None
    prog.prog.finish(numba.get_num_threads(), pack_weights=True)
    return prog


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
        elif route == "taps":
            run = taps_runner(shape, not cl, w, b, stride, pad, dil, relu, cap)
        else:
            return "a convolution without a channels-last kernel"
        y_idx = prog.new_blob(top, oshape, True, top in fetch)
        prog.prog.emit(run.ops, x_idx, shape, y_idx, oshape)
    elif layer.type == "Pooling":
        if not (getattr(layer, "global_pooling", False) and layer.method in (0, 1) and cl):
            return "pooling other than global on a channels-last blob"
        N, C, H, W = shape
        y_idx = prog.new_blob(top, oshape, False, top in fetch)
        prog.prog.op([OP_POOL, x_idx, y_idx, N, H * W, C, layer.method])
    elif layer.type == "InnerProduct":
        # through the 1x1 GEMM: the inputs as rows of K, the weights packed like a 1x1's
        w = ps[0]
        b = _bias(layer, ps)
        N = int(np.prod(shape[:layer._ax]))
        K = int(np.prod(shape[layer._ax:]))
        M = w.shape[0]
        if layer.transpose or (cl and np.prod(shape[2:]) != 1):
            return "inner product transposed or of a channels-last plane"
        relu, cap = extra.get("relu", False), extra.get("relu_cap")
        args = _gemm_args(K, w.reshape(M, K, 1, 1), b, relu, cap, (1, N, 1, N, 1, K, 1, 1), (N, 1, 0, 0))
        y_idx = prog.new_blob(top, oshape, False, top in fetch)
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
