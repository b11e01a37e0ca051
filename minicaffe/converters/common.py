"""Shared pieces of the converters: a small Caffe prototxt writer, TF-"SAME" padding, BN folding, saving.

The writer emits the current Caffe text format (``layer { ... }`` with an ``Input`` layer), one
layer per call, so generated files read like hand-written ones. :func:`same_padding` turns
TensorFlow's "SAME" rule into the four explicit paddings minicaffe's Convolution accepts
(``convolution_param { pad_top pad_bottom pad_left pad_right }``, a minicaffe extension: stock
Caffe has only symmetric ``pad``/``pad_h``/``pad_w``; symmetric cases are written as plain
``pad``). :func:`fold_bn` merges an inference batch norm into the convolution before it. Nothing
here reads files or knows a specific network.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import WeightsError
from ..io import file_digest


class PrototxtWriter:
    """Accumulate layers as Caffe text; ``str(writer)`` is the whole file."""

    def __init__(self, name, header_comments=()):
        self.lines = [f"# {c}" if c else "#" for c in header_comments]
        self.lines.append(f'name: "{name}"')

    def input(self, name, shape):
        dims = " ".join(f"dim: {d}" for d in shape)
        self.lines.append(f'layer {{ name: "{name}" type: "Input" top: "{name}" '
                          f"input_param {{ shape {{ {dims} }} }} }}")

    def layer(self, name, type_, bottoms, tops, params=None, comment=None):
        """params: {"convolution_param": {"num_output": 32, ...}} -> nested text, in order."""
        if comment:
            self.lines.append(f"# {comment}")
        out = ["layer {", f'  name: "{name}"', f'  type: "{type_}"']
        out += [f'  bottom: "{b}"' for b in ([bottoms] if isinstance(bottoms, str) else bottoms)]
        out += [f'  top: "{t}"' for t in ([tops] if isinstance(tops, str) else tops)]
        for key, fields in (params or {}).items():
            body = " ".join(f"{k}: {_fmt(v)}" for k, v in fields.items())
            out.append(f"  {key} {{ {body} }}")
        out.append("}")
        self.lines.extend(out)

    def __str__(self):
        return "\n".join(self.lines) + "\n"


def _fmt(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def same_padding(size, k, stride):
    """TF "SAME": out = ceil(size / stride); the total padding goes mostly to the bottom/right.

    -> (pad_lo, pad_hi, out). At stride 2 on even sizes this is asymmetric (e.g. 224, k3: 0 and 1).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2, out


def conv_padding_fields(pt, pb, pl, pr):
    """Four paddings -> convolution_param fields: plain ``pad`` when symmetric, else the extension."""
    if pt == pb == pl == pr:
        return {"pad": pt} if pt else {}
    return {"pad_top": pt, "pad_bottom": pb, "pad_left": pl, "pad_right": pr}


def fold_bn(w, b, gamma, beta, mean, var, eps):
    """Fold inference BN into the conv before it: w: (M, ...), b: (M,) or None -> (w', b').

    ``BN(conv(x)) = gamma * (w*x + b - mean) / sqrt(var + eps) + beta`` equals ``conv'(x)`` with
    ``w' = w * a``, ``b' = (b - mean) * a + beta``, ``a = gamma / sqrt(var + eps)`` per output
    channel. This is the same function in exact arithmetic (valid because the conv output feeds
    only the BN and the BN uses its running statistics); in float32 only the rounding differs.
    Computed in float64, rounded once.
    """
    a = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    w2 = np.asarray(w, np.float64) * a.reshape((-1,) + (1,) * (np.ndim(w) - 1))
    b0 = np.zeros_like(a) if b is None else np.asarray(b, np.float64)
    b2 = (b0 - np.asarray(mean, np.float64)) * a + np.asarray(beta, np.float64)
    return w2.astype(np.float32), b2.astype(np.float32)


def take(sd, key, path, shape=None):
    """sd[key] as float32, with a WeightsError naming the file when missing or misshapen."""
    if key not in sd:
        raise WeightsError(f"{path}: checkpoint has no tensor {key!r}")
    a = np.asarray(sd[key], np.float32)
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise WeightsError(f"{path}: tensor {key!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    return a




def save_converted(out, prototxt_text, params, source, converter, prototxt_out=None, **attrs):
    """Validate (build a Net from the text and the blobs) and save ``.h5`` (+ the prototxt) atomically.

    Returns the built numpy-backend Net.
    """
    from ..io.h5weights import save_h5
    from ..net import Net
    net = Net(prototxt_text, params, backend="numpy")
    types = {l.name: l.type for l in net.layers}
    save_h5(out, net.params, prototxt=prototxt_text, types=types,
            source=os.path.basename(os.fspath(source)), source_sha1=file_digest(source, "sha1"),
            source_sha256=file_digest(source, "sha256"), converter=converter, **attrs)
    if prototxt_out:
        tmp = f"{prototxt_out}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(prototxt_text)
        os.replace(tmp, prototxt_out)
    return net
