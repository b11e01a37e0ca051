"""Caffe's fillers and the ``DummyData`` layer that uses them.

A filler turns a ``FillerParameter`` message (``type`` constant / gaussian / uniform / xavier /
msra / positive_unitball / bilinear, with ``value``, ``mean``, ``std``, ``min``, ``max``,
``sparse``, ``variance_norm``) into a float32 array of a given shape, following Caffe's
filler.hpp: ``fan_in = count / shape[0]``, ``fan_out = count / shape[1]``; xavier draws
U(-sqrt(3/n), sqrt(3/n)) and msra N(0, 2/n) with ``n`` = fan_in (FAN_IN, the default), fan_out or
their mean (AVERAGE). Random draws come from NumPy's generator, not Caffe's, so they are
distributed as Caffe's but are not the same numbers. ``DummyData`` produces one top per ``shape``
(or legacy ``num/channels/height/width``) filled by its ``data_filler``; as in Caffe, a constant
filler fills once (later writes by the caller stay) and other fillers refill on every forward
(``refill``). It has no backward and reads nothing.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, register

FILLERS = ("constant", "gaussian", "uniform", "xavier", "msra", "positive_unitball", "bilinear")


def _fans(shape):
    count = int(np.prod(shape)) if len(shape) else 1
    fan_in = count // shape[0] if len(shape) > 0 and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _norm_n(fp, shape):
    fan_in, fan_out = _fans(shape)
    mode = str(fp.get("variance_norm", "FAN_IN"))
    if mode == "AVERAGE":
        return (fan_in + fan_out) / 2.0
    return float(fan_out if mode == "FAN_OUT" else fan_in)


def fill(fp, shape, rng):
    """fp: a FillerParameter Message (or None: constant 0), shape: tuple -> float32 array of ``shape``."""
    shape = tuple(int(d) for d in shape)
    kind = "constant" if fp is None else str(fp.get("type", "constant"))
    get = (lambda k, d: d) if fp is None else (lambda k, d: fp.get(k, d))
    if kind == "constant":
        return np.full(shape, get("value", 0.0), np.float32)
    if kind == "gaussian":
        out = rng.normal(get("mean", 0.0), get("std", 1.0), shape).astype(np.float32)
        sparse = int(get("sparse", -1))
        if sparse >= 0 and len(shape) >= 2:
            # Caffe keeps each weight with probability sparse / num_outputs (shape[0])
            keep = rng.random(shape) < min(sparse / max(shape[0], 1), 1.0)
            out *= keep
        return out
    if kind == "uniform":
        return rng.uniform(get("min", 0.0), get("max", 1.0), shape).astype(np.float32)
    if kind == "xavier":
        a = np.sqrt(3.0 / _norm_n(fp, shape))
        return rng.uniform(-a, a, shape).astype(np.float32)
    if kind == "msra":
        return rng.normal(0.0, np.sqrt(2.0 / _norm_n(fp, shape)), shape).astype(np.float32)
    if kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, shape).astype(np.float32)
        rows = out.reshape(shape[0] if shape else 1, -1)
        rows /= rows.sum(axis=1, keepdims=True)
        return out
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ValueError(f"the bilinear filler needs a square 4-D shape, got {shape}")
        k = shape[3]
        f = np.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        x = np.arange(k)
        w1 = 1 - np.abs(x / f - c)
        return np.broadcast_to(np.outer(w1, w1), shape).astype(np.float32)
    raise ValueError(f"unknown filler type {kind!r} (known: {', '.join(FILLERS)})")


@register("DummyData")
class DummyData(Layer):
    """no bottoms -> one top per shape, filled by the matching ``data_filler``."""

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("dummy_data_param")
        shapes = [tuple(s.getall("dim")) for s in p.getall("shape")]
        legacy = [p.getall(k) for k in ("num", "channels", "height", "width")]
        if not shapes and any(legacy):
            if len({len(v) for v in legacy}) != 1:
                raise self.err("num, channels, height and width must be given the same number of times")
            shapes = [tuple(int(v[i]) for v in legacy) for i in range(len(legacy[0]))]
        n = len(self.tops)
        if len(shapes) == 1 and n > 1:
            shapes = shapes * n
        if len(shapes) != n:
            raise self.err(f"{n} tops but {len(shapes)} shapes")
        fillers = p.getall("data_filler")
        if len(fillers) == 1 and n > 1:
            fillers = fillers * n
        if fillers and len(fillers) != n:
            raise self.err(f"{n} tops but {len(fillers)} data_filler entries (give 0, 1 or {n})")
        self.shapes = shapes
        self.fillers = fillers or [None] * n
        #: per top: refill on every forward (Caffe: every filler but constant)
        self.refill = [f is not None and str(f.get("type", "constant")) != "constant" for f in self.fillers]
        for f in self.fillers:
            if f is not None and str(f.get("type", "constant")) not in FILLERS:
                raise self.err(f"unknown filler type {f.get('type')!r}")
        self.rng = np.random.default_rng(0)

    def setup(self, shapes):
        return list(self.shapes)

    def forward(self, bottoms, params, backend, inplace=False):
        return [fill(f, s, self.rng) for f, s in zip(self.fillers, self.shapes)]
