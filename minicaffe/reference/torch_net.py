"""A general Caffe prototxt -> ``torch.nn`` translator, used as an independent reference.

:class:`TorchCaffeNet` builds one ``torch.nn`` module per Caffe layer of the TEST phase (current
or legacy V1 text format) for the layer types minicaffe supports — Input, Convolution (groups,
dilation, pad, _h/_w forms, bias_term), ReLU (negative_slope), Pooling (MAX/AVE, pad,
global_pooling, Caffe's ceil-mode output size and its clipping rule), LRN (ACROSS_CHANNELS and
WITHIN_CHANNEL, Caffe's alpha convention), InnerProduct (axis, transpose), Dropout (identity at
test time), Softmax, Concat, Eltwise (SUM with coeff, PROD, MAX), Flatten, Clip, BatchNorm
(global statistics) and Scale (per channel), plus minicaffe's ``pad_top/pad_bottom/pad_left/
pad_right`` extension of ``convolution_param`` (TF 'SAME' padding of converted models) — and its forward
returns **every** Caffe blob by name with Caffe's in-place semantics (after ``relu1`` the blob
``conv1`` is post-ReLU). It reads layer parameters from the prototxt itself rather than from
minicaffe's layer objects, and computes with PyTorch's own kernels (``conv2d``, ``linear``,
``max_pool2d``...), so that a parameter-parsing or kernel bug in minicaffe shows up as a
difference. Where PyTorch's semantics differ from Caffe's they are bridged explicitly here:
pooling sizes are computed with Caffe's rule and windows are formed by explicit padding (never
``ceil_mode``); AVE pooling divides by the window clipped to the padded image; LRN is written
out (PyTorch's ``LocalResponseNorm`` also divides alpha by the size, but centres even windows
differently and has no WITHIN_CHANNEL). It shares only the text-format parser and the
caffemodel/h5 readers with minicaffe (OpenCV, the other reference, has its own). It does not
train, and it is float32 CPU only. ``torch`` is imported lazily (``pip install torch==2.13.0``).
"""
from __future__ import annotations

import functools
import math
import operator
import os
from collections import OrderedDict

import numpy as np

from ..errors import ModelError, PrototxtError, WeightsError
from ..io.prototxt import Message, parse, parse_file
from .common import require

#: legacy V1 enum type names of the layers translated here -> current type strings
_V1 = {"CONVOLUTION": "Convolution", "RELU": "ReLU", "POOLING": "Pooling", "LRN": "LRN",
       "INNER_PRODUCT": "InnerProduct", "DROPOUT": "Dropout", "SOFTMAX": "Softmax",
       "CONCAT": "Concat", "ELTWISE": "Eltwise", "FLATTEN": "Flatten"}
SUPPORTED = ("Input", "Convolution", "ReLU", "Pooling", "LRN", "InnerProduct", "Dropout", "Softmax",
             "Concat", "Eltwise", "Flatten", "Clip", "BatchNorm", "Scale")


def _tensor(a):
    """a: float32 array -> a torch tensor of a private copy (the net's weights may be read-only,
    frozen, which torch.from_numpy warns about)."""
    torch = require("torch", "torch")
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def caffe_pool_size(size, k, stride, pad, ceil_mode=True):
    """Caffe's pooling output size: ceil((size + 2 pad - k) / stride) + 1, minus one when the
    last window would start in the bottom/right padding (pooling_layer.cpp)."""
    if ceil_mode:
        out = int(math.ceil((size + 2 * pad - k) / stride)) + 1
    else:
        out = (size + 2 * pad - k) // stride + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _hw(p, name, default=None):
    """Caffe's ``X`` (1 or 2 repeated values) / ``X_h`` + ``X_w`` convention -> (h, w)."""
    key = "kernel_size" if name == "kernel" else name
    if p.get(name + "_h") is not None:
        return int(p.get(name + "_h")), int(p.get(name + "_w"))
    vals = p.getall(key)
    if not vals:
        return default, default
    if len(vals) == 1:
        return int(vals[0]), int(vals[0])
    return int(vals[0]), int(vals[1])


def _param(lp, name):
    m = lp.get(name)
    return m if isinstance(m, Message) else Message()


def _phase_ok(lp, phase="TEST"):
    for rule in lp.getall("include"):
        if rule.get("phase") is not None and str(rule.get("phase")) != phase:
            return False
    for rule in lp.getall("exclude"):
        if rule.get("phase") is not None and str(rule.get("phase")) == phase:
            return False
    return True


def _bool(v, default):
    if v is None:
        return default
    return str(v).lower() in ("true", "1")


def _layers_of(proto, where):
    """(input names, [(name, type, bottoms, tops, LayerParameter)]) of the TEST phase."""
    entries = proto.getall("layer") or proto.getall("layers")
    inputs = [str(n) for n in proto.getall("input")]
    out = []
    for lp in entries:
        if not _phase_ok(lp):
            continue
        t = str(lp.get("type"))
        t = _V1.get(t, t)
        name = str(lp.get("name"))
        bottoms = [str(b) for b in lp.getall("bottom")]
        tops = [str(b) for b in lp.getall("top")]
        if t == "Input":
            inputs += tops
            continue
        if t not in SUPPORTED:
            raise ModelError(f"{where}: layer {name!r} has type {t!r}, which the torch reference does not "
                             f"translate (supported: {', '.join(SUPPORTED)})")
        out.append((name, t, bottoms, tops, lp))
    return inputs, out


def _make_modules():
    """Define the torch modules lazily (torch is an optional dependency)."""
    torch = require("torch", "torch")
    nn, F = torch.nn, torch.nn.functional

    class CaffePool(nn.Module):
        """x: (N, C, H, W) -> (N, C, Ho, Wo), Caffe MAX/AVE pooling by explicit padding."""

        def __init__(self, method, kernel, stride, pad, global_pooling, ceil_mode):
            super().__init__()
            self.method, self.kernel, self.stride, self.pad = method, kernel, stride, pad
            self.global_pooling, self.ceil_mode = global_pooling, ceil_mode

        def forward(self, x):
            H, W = x.shape[2], x.shape[3]
            if self.global_pooling:
                k, s, p = (H, W), (1, 1), (0, 0)
            else:
                k, s, p = self.kernel, self.stride, self.pad
            Ho = caffe_pool_size(H, k[0], s[0], p[0], self.ceil_mode)
            Wo = caffe_pool_size(W, k[1], s[1], p[1], self.ceil_mode)
            # pad top/left by `pad`, bottom/right by whatever Caffe's last (ceil-mode) window needs;
            # then a plain floor-mode pooling without padding sees exactly Caffe's windows
            eb = max((Ho - 1) * s[0] + k[0] - H - p[0], 0)
            er = max((Wo - 1) * s[1] + k[1] - W - p[1], 0)
            if self.method == "MAX":
                # -inf padding: Caffe's MAX windows are clipped to the image, never see padding
                xp = F.pad(x, (p[1], er, p[0], eb), value=-math.inf)
                y = F.max_pool2d(xp, k, s)
            else:
                # Caffe's AVE divisor counts cells of the *padded* image (H + 2 pad) inside the
                # window, not cells beyond it: divide a plain average by the average of that mask
                xp = F.pad(x, (p[1], er, p[0], eb), value=0.0)
                mask = torch.zeros((1, 1) + tuple(xp.shape[2:]), dtype=x.dtype)
                mask[:, :, :H + 2 * p[0], :W + 2 * p[1]] = 1.0
                y = F.avg_pool2d(xp, k, s) / F.avg_pool2d(mask, k, s)
            return y[:, :, :Ho, :Wo]

    class CaffeLRN(nn.Module):
        """x: (N, C, H, W) -> same; Caffe LRN: alpha is divided by local_size (ACROSS) or by
        local_size^2 (WITHIN, whose zero-padded average counts the padding)."""

        def __init__(self, size, alpha, beta, k, region):
            super().__init__()
            self.size, self.alpha, self.beta, self.k, self.region = size, alpha, beta, k, region

        def forward(self, x):
            n = self.size
            pre = (n - 1) // 2
            sq = x * x
            if self.region == "ACROSS_CHANNELS":
                C = x.shape[1]
                # window of channel c: [c - pre, c - pre + n - 1], zero outside (lrn_layer.cpp)
                padded = F.pad(sq, (0, 0, 0, 0, pre, n - 1 - pre))
                s = sum(padded[:, i:i + C] for i in range(n))
                scale = self.k + (self.alpha / n) * s
            else:
                s = F.avg_pool2d(F.pad(sq, (pre, n - 1 - pre, pre, n - 1 - pre)), n, 1) * (n * n)
                scale = 1.0 + (self.alpha / (n * n)) * s
            return x * scale.pow(-self.beta)

    class CaffeInnerProduct(nn.Module):
        """x: (d0..d_{axis-1}, ...) -> (d0..d_{axis-1}, num_output): Caffe flattens every axis from
        ``axis`` on in C (row-major) order, so the weight's K index is (c, h, w) — no reorder."""

        def __init__(self, axis, weight, bias):
            super().__init__()
            self.axis = axis
            self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
            with torch.no_grad():
                self.linear.weight.copy_(_tensor(weight))
                if bias is not None:
                    self.linear.bias.copy_(_tensor(bias))

        def forward(self, x):
            lead = tuple(x.shape[:self.axis])
            return self.linear(x.reshape(int(np.prod(lead)), -1)).reshape(lead + (-1,))

    class Lambda(nn.Module):
        def __init__(self, fn, what):
            super().__init__()
            self.fn, self.what = fn, what

        def forward(self, *xs):
            return self.fn(*xs)

        def extra_repr(self):
            return self.what

    return torch, nn, F, CaffePool, CaffeLRN, CaffeInnerProduct, Lambda


def load_weights_mapping(weights):
    """``.caffemodel`` / ``.h5`` path or mapping -> {layer name: [arrays]}."""
    if weights is None or not isinstance(weights, (str, os.PathLike)):
        return weights
    path = os.fspath(weights)
    if path.endswith((".h5", ".hdf5")):
        from ..io.h5weights import load_h5
        return load_h5(path)
    from ..io.caffemodel import read_caffemodel
    _, layers = read_caffemodel(path)
    return {k: v[1] for k, v in layers.items()}


def build_torch_net(prototxt, weights, seed=None):
    """Translate ``prototxt`` with ``weights`` (path or {layer: [arrays]}) into a torch module.

    Returns a :class:`torch.nn.Module` whose ``forward(x)`` (x: (N, C, H, W) float32 tensor) returns
    an OrderedDict of every blob by Caffe name. Weights are required: this is a reference, and
    seeding its own random values would compare nothing.
    """
    torch, nn, F, CaffePool, CaffeLRN, CaffeInnerProduct, Lambda = _make_modules()
    is_path = isinstance(prototxt, (str, os.PathLike)) and "{" not in str(prototxt)
    where = os.fspath(prototxt) if is_path else "<prototxt>"
    proto = parse_file(where) if where != "<prototxt>" else parse(str(prototxt))
    params = load_weights_mapping(weights)
    if params is None:
        raise WeightsError("the torch reference needs weights (a .caffemodel, .h5 or a mapping)")
    inputs, layers = _layers_of(proto, where)
    if not inputs:
        raise PrototxtError("the net declares no input", where)

    def blobs_of(name, n):
        if name not in params:
            raise WeightsError(f"{where}: no weights for layer {name!r}")
        b = [np.asarray(a, dtype=np.float32) for a in params[name]]
        if len(b) < n:
            raise WeightsError(f"{where}: layer {name!r} has {len(b)} parameter blobs, expected {n}")
        return b

    modules = nn.ModuleDict()
    plan = []
    for name, t, bottoms, tops, lp in layers:
        if t == "Convolution":
            p = _param(lp, "convolution_param")
            O = int(p.get("num_output"))
            k = _hw(p, "kernel")
            s = _hw(p, "stride", 1)
            pad = _hw(p, "pad", 0)
            dil = p.getall("dilation")
            d = (int(dil[0]), int(dil[-1])) if dil else (1, 1)
            g = int(p.get("group", 1))
            bias = _bool(p.get("bias_term"), True)
            asym = [p.get(f"pad_{side}") for side in ("top", "bottom", "left", "right")]
            b = blobs_of(name, 1 + bias)
            # Caffe's weight blob is (O, C/group, kh, kw), the same layout as torch's Conv2d; legacy
            # V1 blobs carry the same 4-D (num, channels, height, width) order
            w = b[0].reshape(O, -1, k[0], k[1])
            conv = nn.Conv2d(w.shape[1] * g, O, k, s, (0, 0) if any(v is not None for v in asym) else pad,
                             d, g, bias=bias)
            with torch.no_grad():
                conv.weight.copy_(_tensor(w))
                if bias:
                    conv.bias.copy_(_tensor(b[1].reshape(-1)))
            if any(v is not None for v in asym):
                t_, b_, l_, r_ = (int(v or 0) for v in asym)
                # F.pad takes (left, right, top, bottom) for the last two axes (W then H)
                m = nn.Sequential(Lambda(lambda x, q=(l_, r_, t_, b_): F.pad(x, q), f"pad{(t_, b_, l_, r_)}"), conv)
            else:
                m = conv
        elif t == "InnerProduct":
            p = _param(lp, "inner_product_param")
            O = int(p.get("num_output"))
            bias = _bool(p.get("bias_term"), True)
            b = blobs_of(name, 1 + bias)
            if _bool(p.get("transpose"), False):
                w = b[0].reshape(-1, O).T      # transpose: true stores (K, O); torch wants (O, K)
            else:
                w = b[0].reshape(O, -1)        # V1 stores (1, 1, O, K)
            m = CaffeInnerProduct(int(p.get("axis", 1)), np.ascontiguousarray(w),
                                  b[1].reshape(-1) if bias else None)
        elif t == "ReLU":
            slope = float(_param(lp, "relu_param").get("negative_slope", 0.0))
            m = nn.LeakyReLU(slope) if slope else nn.ReLU()
        elif t == "Pooling":
            p = _param(lp, "pooling_param")
            method = str(p.get("pool", "MAX"))
            method = {"0": "MAX", "1": "AVE"}.get(method, method)
            if method not in ("MAX", "AVE"):
                raise ModelError(f"{where}: layer {name!r}: pool {method} is not translated (MAX, AVE are)")
            gp = _bool(p.get("global_pooling"), False)
            m = CaffePool(method, _hw(p, "kernel"), _hw(p, "stride", 1), _hw(p, "pad", 0), gp,
                          str(p.get("round_mode", "CEIL")) in ("CEIL", "0"))
        elif t == "LRN":
            p = _param(lp, "lrn_param")
            region = str(p.get("norm_region", "ACROSS_CHANNELS"))
            region = {"0": "ACROSS_CHANNELS", "1": "WITHIN_CHANNEL"}.get(region, region)
            m = CaffeLRN(int(p.get("local_size", 5)), float(p.get("alpha", 1.0)), float(p.get("beta", 0.75)),
                         float(p.get("k", 1.0)), region)
        elif t == "Clip":
            p = _param(lp, "clip_param")
            lo, hi = float(p.get("min")), float(p.get("max"))
            m = Lambda(lambda x, lo=lo, hi=hi: x.clamp(lo, hi), f"clip({lo}, {hi})")
        elif t == "BatchNorm":
            p = _param(lp, "batch_norm_param")
            eps = float(p.get("eps", 1e-5))
            mean, var, sf = blobs_of(name, 3)[:3]
            # Caffe stores moving sums: the statistics are blob / scale_factor (0 when the factor is 0)
            f = float(sf.reshape(-1)[0])
            f = 0.0 if f == 0 else 1.0 / f
            m = nn.BatchNorm2d(mean.size, eps=eps, affine=False)
            with torch.no_grad():
                m.running_mean.copy_(torch.from_numpy((mean.reshape(-1) * f).astype(np.float32)))
                m.running_var.copy_(torch.from_numpy((var.reshape(-1) * f).astype(np.float32)))
        elif t == "Scale":
            p = _param(lp, "scale_param")
            bias = _bool(p.get("bias_term"), False)
            b = blobs_of(name, 1 + bias)
            gamma = torch.from_numpy(b[0].reshape(1, -1, 1, 1).copy())
            beta = torch.from_numpy(b[1].reshape(1, -1, 1, 1).copy()) if bias else None
            m = Lambda(lambda x, g_=gamma, b_=beta: x * g_ + b_ if b_ is not None else x * g_, "scale")
        elif t == "Dropout":
            m = nn.Identity()   # TEST phase: Caffe's Dropout is the identity (no rescaling at test)
        elif t == "Softmax":
            axis = int(_param(lp, "softmax_param").get("axis", 1))
            m = Lambda(lambda x, a=axis: F.softmax(x, dim=a), f"softmax(axis={axis})")
        elif t == "Concat":
            p = _param(lp, "concat_param")
            axis = int(p.get("axis", p.get("concat_dim", 1)))
            m = Lambda(lambda *xs, a=axis: torch.cat(xs, dim=a), f"concat(axis={axis})")
        elif t == "Eltwise":
            p = _param(lp, "eltwise_param")
            op = str(p.get("operation", "SUM"))
            op = {"0": "PROD", "1": "SUM", "2": "MAX"}.get(op, op)
            coeff = [float(c) for c in p.getall("coeff")] or [1.0] * len(bottoms)
            if op == "SUM":
                def fn(*xs, c=coeff):
                    return sum(ci * x for ci, x in zip(c, xs))
            elif op == "PROD":
                def fn(*xs):
                    return functools.reduce(operator.mul, xs)
            else:
                def fn(*xs):
                    return torch.stack(xs).amax(0)
            m = Lambda(fn, f"eltwise({op})")
        elif t == "Flatten":
            p = _param(lp, "flatten_param")
            a, e = int(p.get("axis", 1)), int(p.get("end_axis", -1))
            m = Lambda(lambda x, a=a, e=e: x.flatten(a, e), f"flatten({a}, {e})")
        else:  # pragma: no cover - _layers_of rejects the rest
            raise ModelError(f"{where}: layer {name!r}: type {t} not translated")
        modules[name.replace(".", "_")] = m
        plan.append((name, bottoms, tops))

    class TorchCaffeNet(nn.Module):
        """forward(x: (N, C, H, W)) -> OrderedDict of every Caffe blob (post-in-place)."""

        def __init__(self):
            super().__init__()
            self.layers = modules
            self.plan = plan
            self.input_names = inputs

        def forward(self, x):
            blobs = OrderedDict([(self.input_names[0], x)])
            for name, bottoms, tops in self.plan:
                missing = [b for b in bottoms if b not in blobs]
                if missing:
                    raise ModelError(f"layer {name!r} reads blob(s) {missing}, which no earlier layer produces")
                y = self.layers[name.replace(".", "_")](*[blobs[b] for b in bottoms])
                # a top that equals its bottom replaces that blob (Caffe's in-place layers), so the
                # dict ends up holding what Caffe holds after the whole forward pass
                blobs[tops[0]] = y
            return blobs

    return TorchCaffeNet().eval()


def torch_blobs(prototxt, weights, x):
    """x: (N, C, H, W) float32 ndarray -> OrderedDict blob name -> float32 ndarray (torch, CPU)."""
    torch = require("torch", "torch")
    net = build_torch_net(prototxt, weights)
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return OrderedDict((k, v.detach().cpu().numpy().astype(np.float32, copy=False)) for k, v in out.items())
