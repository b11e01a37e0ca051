"""Write a minicaffe net (prototxt + weights) as an ONNX graph, one native ONNX op per Caffe layer.

This exists so that ONNX Runtime and OpenVINO can run *the same weights* as minicaffe in
``scripts/benchmark.py``. ``torch.onnx.export`` of a PyTorch translation would split Caffe's
LRN into ~35 elementwise nodes and lose the peers their fused kernels; here every layer maps to
the op a user of those runtimes would write: Convolution -> ``Conv`` (``group``), ReLU ->
``Relu``/``LeakyRelu``, Clip/ReLU6 -> ``Clip``, Pooling -> ``MaxPool``/``AveragePool`` (Caffe's
ceil-mode size, see :func:`_pool_nodes`), LRN (ACROSS_CHANNELS) -> ``LRN`` (ONNX, like Caffe,
divides alpha by ``size`` and centres the window the same way), InnerProduct -> ``Flatten`` +
``Gemm`` (``transB=1``: Caffe stores (num_output, K), K in (c, h, w) row-major order, which is
exactly ONNX Flatten's order, so no weight reorder), Softmax, Concat, Flatten, Eltwise,
BatchNorm (global statistics) and Scale. Dropout (identity at test time) emits no node. Caffe's
in-place layers become SSA tensors: the *last* write of a blob is the tensor named like the
blob (``fc7`` is the value after ``relu7``), earlier writes are ``<blob>.<layer>``. The batch
axis is symbolic (``N``); spatial sizes are the prototxt's. It parses nothing itself: the layer
geometry comes from minicaffe's own :class:`~minicaffe.net.Net` (so a parsing bug there would be
shared — the fixtures, OpenCV and the torch translator guard against those). It does not export
WITHIN_CHANNEL LRN, training-phase layers, or anything minicaffe cannot build.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import MinicaffeError, ModelError

#: ONNX opset of the graphs written here (LRN, Conv, MaxPool ceil_mode, Softmax-on-one-axis all exist)
OPSET = 17


def _require_onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise MinicaffeError(f"ONNX export needs the 'onnx' package, which cannot be imported ({e}); "
                             "install it with: pip install onnx") from None
    return onnx, helper, numpy_helper


def _caffe_pool_size(size, k, s, p, ceil_mode):
    """Caffe's pooling output size (pooling_layer.cpp): ceil (or floor) of (size + 2p - k)/s, +1,
    minus one when the last window would start inside the bottom/right padding."""
    if ceil_mode:
        out = -(-(size + 2 * p - k) // s) + 1
    else:
        out = (size + 2 * p - k) // s + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_nodes(helper, layer, x, y, in_shape, add_init):
    """Nodes for one Caffe Pooling layer, x -> y; in_shape: (N, C, H, W) at export time.

    MAX without padding is ``MaxPool(ceil_mode=1)``: with pad 0 the last ceil-mode window always
    starts inside the image, ONNX clips it to the image like Caffe, and Caffe's "window starts in
    the padding" rule cannot apply. With padding the sizes could differ between the two rules
    (and ONNX's rule changed between opsets), so the windows are spelled out instead: pad
    ``p`` before and exactly what Caffe's last window needs after, then floor mode. MAX padding
    never wins (ONNX pads MaxPool with -inf). AVE divides by the window clipped to the *padded*
    image (Caffe's ``pool_size``), so its ``p`` zero cells are made real by an explicit ``Pad``
    and only the extra ceil-mode overhang is left to ``count_include_pad=0``.
    """
    N, C, H, W = in_shape
    is_max = int(layer.method) == 0   # minicaffe.layers.pooling: MAX, AVE = 0, 1
    if layer.global_pooling:
        return [helper.make_node("GlobalMaxPool" if is_max else "GlobalAveragePool", [x], [y], name=layer.name)]
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
    Ho = _caffe_pool_size(H, kh, sh, ph, layer.ceil_mode)
    Wo = _caffe_pool_size(W, kw, sw, pw, layer.ceil_mode)
    if (Ho, Wo) != tuple(layer.out_hw):  # the two copies of Caffe's rule must agree
        raise ModelError(f"layer {layer.name!r}: pooling size {(Ho, Wo)} != minicaffe's {tuple(layer.out_hw)}")
    # padding after the image that makes floor-mode pooling produce exactly Ho x Wo windows
    eh = max((Ho - 1) * sh + kh - H - ph, 0)
    ew = max((Wo - 1) * sw + kw - W - pw, 0)
    if is_max:
        if ph == 0 and pw == 0 and layer.ceil_mode:
            return [helper.make_node("MaxPool", [x], [y], name=layer.name, kernel_shape=[kh, kw],
                                     strides=[sh, sw], ceil_mode=1)]
        # ONNX pads are [top, left, bottom, right] (begins of H, W then ends of H, W)
        return [helper.make_node("MaxPool", [x], [y], name=layer.name, kernel_shape=[kh, kw],
                                 strides=[sh, sw], pads=[ph, pw, eh, ew], ceil_mode=0)]
    nodes, src = [], x
    if ph or pw:
        pads = add_init(f"{layer.name}.pads", np.array([0, 0, ph, pw, 0, 0, ph, pw], np.int64))
        src = f"{y}.padded"
        nodes.append(helper.make_node("Pad", [x, pads], [src], name=f"{layer.name}.pad", mode="constant"))
    # after the explicit pad the image is H + 2p; what floor mode still needs beyond it is overhang
    oh = max(eh - ph, 0)
    ow = max(ew - pw, 0)
    nodes.append(helper.make_node("AveragePool", [src], [y], name=layer.name, kernel_shape=[kh, kw],
                                  strides=[sh, sw], pads=[0, 0, oh, ow], count_include_pad=0, ceil_mode=0))
    return nodes


def onnx_model(net, outputs=None, opset=OPSET):
    """``net``: a built :class:`minicaffe.Net` (weights loaded) -> ``onnx.ModelProto``.

    outputs : Caffe blob names to expose as graph outputs (default: blobs no layer reads, e.g.
        ``prob``); the value exposed is the blob after the net's last in-place write (``fc7`` is
        post-``relu7``).
    The graph input is ``net.input_names[0]`` with shape (N, C, H, W), N symbolic.
    """
    onnx, helper, numpy_helper = _require_onnx()
    from onnx import TensorProto

    layers = [l for l in net.layers if l.type != "Input"]
    if len(net.input_names) != 1:
        raise ModelError(f"ONNX export handles nets with one input, this one has {net.input_names}")
    # the last *computing* write of each blob gets the plain name (Dropout emits nothing, so it
    # must not claim the name, or drop7 would leave no tensor called fc7)
    last = {}
    for i, l in enumerate(layers):
        if l.type != "Dropout" or l.tops[0] != l.bottoms[0]:
            for t in l.tops:
                last[t] = i
    current = {n: n for n in net.input_names}   # Caffe blob -> ONNX tensor now holding it
    nodes, inits = [], []

    def add_init(name, arr):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def out_name(i, layer, blob):
        return blob if last.get(blob) == i else f"{blob}.{layer.name}"

    for i, l in enumerate(layers):
        try:
            xs = [current[b] for b in l.bottoms]
        except KeyError as e:
            raise ModelError(f"layer {l.name!r} reads blob {e.args[0]!r}, which no earlier layer produces") from None
        if l.type == "Dropout":
            if l.tops[0] == l.bottoms[0]:
                continue   # in place at test time: the blob is unchanged
            y = out_name(i, l, l.tops[0])
            nodes.append(helper.make_node("Identity", xs, [y], name=l.name))
            current[l.tops[0]] = y
            continue
        y = out_name(i, l, l.tops[0])
        p = net.params.get(l.name, [])
        if l.type == "Convolution":
            t, b, le, r = l.pad   # minicaffe: (top, bottom, left, right); ONNX: [top, left, bottom, right]
            ins = xs + [add_init(f"{l.name}.weight", p[0])]   # (O, C/group, kh, kw): ONNX's layout too
            if l.bias_term:
                ins.append(add_init(f"{l.name}.bias", p[1]))
            nodes.append(helper.make_node("Conv", ins, [y], name=l.name, kernel_shape=list(l.kernel),
                                          strides=list(l.stride), pads=[t, le, b, r],
                                          dilations=list(l.dilation), group=int(l.group)))
        elif l.type == "InnerProduct":
            shp = net.blob_shapes[l.bottoms[0]]
            if l._ax != 1:
                raise ModelError(f"layer {l.name!r}: InnerProduct axis {l.axis} is not exported (axis 1 is)")
            src = xs[0]
            if len(shp) != 2:
                src = f"{y}.flat"
                # ONNX Flatten(axis=1) keeps (c, h, w) row-major order = Caffe's K order: no reorder
                nodes.append(helper.make_node("Flatten", xs, [src], name=f"{l.name}.flatten", axis=1))
            ins = [src, add_init(f"{l.name}.weight", p[0])]
            if l.bias_term:
                ins.append(add_init(f"{l.name}.bias", p[1]))
            # Caffe stores (num_output, K) -> transB=1; with transpose: true it stores (K, num_output)
            nodes.append(helper.make_node("Gemm", ins, [y], name=l.name, transB=0 if l.transpose else 1))
        elif l.type == "ReLU":
            if l.slope:
                nodes.append(helper.make_node("LeakyRelu", xs, [y], name=l.name, alpha=float(l.slope)))
            else:
                nodes.append(helper.make_node("Relu", xs, [y], name=l.name))
        elif l.type in ("Clip", "ReLU6"):
            lo = add_init(f"{l.name}.min", np.array(l.lo, np.float32))
            hi = add_init(f"{l.name}.max", np.array(l.hi, np.float32))
            nodes.append(helper.make_node("Clip", xs + [lo, hi], [y], name=l.name))
        elif l.type == "Pooling":
            nodes += _pool_nodes(helper, l, xs[0], y, net.blob_shapes[l.bottoms[0]], add_init)
        elif l.type == "LRN":
            if l.region != 0:
                raise ModelError(f"layer {l.name!r}: WITHIN_CHANNEL LRN has no ONNX op; not exported")
            # ONNX LRN: x / (bias + alpha/size * sum of squares over channels
            # [c - floor((size-1)/2), c + ceil((size-1)/2)])^beta -- Caffe's formula and window
            nodes.append(helper.make_node("LRN", xs, [y], name=l.name, size=int(l.size), alpha=float(l.alpha),
                                          beta=float(l.beta), bias=float(l.k)))
        elif l.type == "Softmax":
            nodes.append(helper.make_node("Softmax", xs, [y], name=l.name, axis=int(l._ax)))
        elif l.type == "Concat":
            nodes.append(helper.make_node("Concat", xs, [y], name=l.name, axis=int(l._ax)))
        elif l.type == "Flatten":
            a, e = l._a, l._e
            if e != len(net.blob_shapes[l.bottoms[0]]) - 1:
                raise ModelError(f"layer {l.name!r}: Flatten with end_axis {l.end_axis} is not exported")
            nodes.append(helper.make_node("Flatten", xs, [y], name=l.name, axis=int(a)))
        elif l.type == "Eltwise":
            op = {0: "Mul", 1: "Sum", 2: "Max"}[int(l.op)]
            if op == "Sum" and l.coeffs and any(c != 1.0 for c in l.coeffs):
                terms = []
                for j, (x, c) in enumerate(zip(xs, l.coeffs)):
                    cn = add_init(f"{l.name}.coeff{j}", np.array(c, np.float32))
                    terms.append(f"{y}.term{j}")
                    nodes.append(helper.make_node("Mul", [x, cn], [terms[-1]], name=f"{l.name}.mul{j}"))
                xs = terms
            if op == "Mul":
                acc = xs[0]
                for j, x in enumerate(xs[1:]):
                    nxt = y if j == len(xs) - 2 else f"{y}.prod{j}"
                    nodes.append(helper.make_node("Mul", [acc, x], [nxt], name=f"{l.name}.{j}"))
                    acc = nxt
            else:
                nodes.append(helper.make_node(op, xs, [y], name=l.name))
        elif l.type == "BatchNorm":
            mean, var, sf = (np.asarray(a, np.float32) for a in p)
            # Caffe stores moving sums: the statistics are blob / scale_factor (0 when the factor is 0)
            f = float(sf.reshape(-1)[0])
            f = 0.0 if f == 0 else 1.0 / f
            C = mean.size
            ins = xs + [add_init(f"{l.name}.gamma", np.ones(C, np.float32)),
                        add_init(f"{l.name}.beta", np.zeros(C, np.float32)),
                        add_init(f"{l.name}.mean", (mean.reshape(-1) * f).astype(np.float32)),
                        add_init(f"{l.name}.var", (var.reshape(-1) * f).astype(np.float32))]
            nodes.append(helper.make_node("BatchNormalization", ins, [y], name=l.name, epsilon=float(l.eps)))
        elif l.type == "Scale":
            nd = len(net.blob_shapes[l.bottoms[0]])
            bshape = (-1,) + (1,) * (nd - 2)   # per channel (axis 1): broadcast over the spatial axes
            g = add_init(f"{l.name}.gamma", np.asarray(p[0], np.float32).reshape(bshape))
            if l.bias_term:
                b = add_init(f"{l.name}.beta", np.asarray(p[1], np.float32).reshape(bshape))
                nodes.append(helper.make_node("Mul", [xs[0], g], [f"{y}.scaled"], name=f"{l.name}.mul"))
                nodes.append(helper.make_node("Add", [f"{y}.scaled", b], [y], name=l.name))
            else:
                nodes.append(helper.make_node("Mul", [xs[0], g], [y], name=l.name))
        else:
            raise ModelError(f"layer {l.name!r}: type {l.type} has no ONNX export")
        for t in l.tops[1:]:
            raise ModelError(f"layer {l.name!r}: multi-top layers are not exported (top {t!r})")
        current[l.tops[0]] = y

    if outputs is None:
        read = {b for l in layers for b in l.bottoms}
        outputs = [t for l in layers for t in l.tops if t not in read]
        outputs = list(dict.fromkeys(outputs))
    missing = [o for o in outputs if o not in current]
    if missing:
        raise ModelError(f"requested output blob(s) {missing} are not produced by the net")
    name = net.input_names[0]
    shape = ["N"] + [int(d) for d in net.blob_shapes[name][1:]]   # the shapes the layers were set up for
    graph = helper.make_graph(
        nodes, str(net.name),
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(current[o], TensorProto.FLOAT,
                                       ["N"] + [int(d) for d in net.blob_shapes[o][1:]]) for o in outputs],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="minicaffe")
    model.ir_version = min(model.ir_version, 8)   # readable by older runtimes too
    onnx.checker.check_model(model)
    return model


def export_onnx(net, path, outputs=None, opset=OPSET):
    """Write ``onnx_model(net, outputs)`` to ``path`` (weights inline; CaffeNet is ~244 MB).

    Returns {Caffe blob name: ONNX output tensor name} for the exposed outputs.
    """
    onnx, _, _ = _require_onnx()
    model = onnx_model(net, outputs, opset)
    try:
        onnx.save(model, os.fspath(path))
    except OSError as e:
        raise MinicaffeError(f"{path}: cannot write the ONNX file: {e}") from None
    return {o.name: o.name for o in model.graph.output}
