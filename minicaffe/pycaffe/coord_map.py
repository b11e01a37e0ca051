"""pycaffe's ``caffe.coord_map``: how output coordinates of a NetSpec top map to another top's.

Each spatial layer maps its top's coordinate ``y`` to its bottom's ``x = a * y + b`` along the
axes from ``axis`` on: Convolution / Pooling / Im2col give ``a = 1/stride``, ``b = (pad -
(extent - 1)/2) / stride`` with ``extent = (kernel - 1) * dilation + 1``; Deconvolution the
inverse map (``a = stride``, ``b = (extent - 1)/2 - pad``); Crop shifts by ``-offset``; the
element-wise layers (ReLU, Eltwise, Dropout, BatchNorm, ...) keep coordinates. The map is
``(axis, a, b)`` in that sense: it tells where a top's pixel sits in the coordinates of another
top. ``coord_map_from_to(top_from, top_to)`` composes maps up to a common ancestor;
``crop(top_from, top_to)`` builds the ``Crop`` layer that aligns ``top_from`` with ``top_to``
(FCN's crops). It reads layer parameters from the spec only (no net is built) and refuses the
legacy ``kernel_h``/``stride_w``-style parameters.
"""
from __future__ import annotations

import numpy as np

from .net_spec import layers as L

#: layers whose top pixel (i, j) depends on the bottom pixel (i, j) only
PASS_THROUGH_LAYERS = ("AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold")


class UndefinedMapException(Exception):
    """The layer has no coordinate map (InnerProduct, Reshape, ...)."""


class AxisMismatchException(Exception):
    """Two maps act on different first axes and cannot be composed."""


def _vec(v):
    return np.array(v, ndmin=1)


def conv_params(fn):
    """-> (axis, stride, effective kernel extent, pad) of a Convolution/Pooling/Deconvolution spec."""
    p = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(p)
    if legacy:
        raise AssertionError(f"coordinate maps need kernel_size/stride/pad, not the legacy {sorted(legacy)}")
    extent = (_vec(p["kernel_size"]) - 1) * _vec(p.get("dilation", 1)) + 1
    return p.get("axis", 1), _vec(p.get("stride", 1)), extent, _vec(p.get("pad", 0))


def crop_params(fn):
    p = fn.params.get("crop_param", fn.params)
    return p.get("axis", 2), _vec(p.get("offset", 0))


def coord_map(fn):
    """The map (axis, a, b) from ``fn``'s top coordinates to its (first) bottom's."""
    t = fn.type_name
    if t in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if t == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if t in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if t == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset  # the map's axis is the last one before the cropped ones
    raise UndefinedMapException(t)


def compose(first, then):
    """Apply ``then`` after ``first``: x = a1 (a2 y + b2) + b1."""
    ax1, a1, b1 = first
    ax2, a2, b2 = then
    if ax1 is not None and ax2 is not None and ax1 != ax2:
        raise AxisMismatchException(f"axes {ax1} and {ax2}")
    return (ax2 if ax1 is None else ax1), a1 * a2, a1 * b2 + b1


def inverse(m):
    ax, a, b = m
    return ax, 1 / a, -b / a


def _bottoms(top):
    # a Crop's second bottom only gives the reference size, not the coordinates
    return top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs


def _ancestors(top):
    """{ancestor Top: map from ``top`` to it}, walking down through mappable layers."""
    maps = {top: (None, 1, 0)}
    todo = [top]
    while todo:
        t = todo.pop()
        try:
            m = coord_map(t.fn)
        except UndefinedMapException:
            continue
        for b in _bottoms(t):
            maps[b] = compose(maps[t], m)
            todo.append(b)
    return maps


def coord_map_from_to(top_from, top_to):
    """-> (axis, a, b) with ``top_to``'s coordinate = a * ``top_from``'s + b; RuntimeError when the
    two tops share no ancestor reachable through spatial layers."""
    from_maps = _ancestors(top_from)
    to_maps = {top_to: (None, 1, 0)}
    todo = [top_to]
    while todo:
        t = todo.pop(0)
        if t in from_maps:
            return compose(to_maps[t], inverse(from_maps[t]))
        try:
            m = coord_map(t.fn)
        except UndefinedMapException:
            continue
        for b in _bottoms(t):
            to_maps[b] = compose(to_maps[t], m)
            todo.append(b)
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from, top_to):
    """A Crop layer spec that cuts ``top_from`` to align with ``top_to``."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a), np.asarray(b)
    if not np.all(a == 1):
        raise AssertionError(f"scale mismatch on crop (a = {a})")
    if not np.all(b <= 0):
        raise AssertionError(f"cannot crop negative offset (b = {b})")
    if not np.all(np.round(b) == b):
        raise AssertionError(f"cannot crop noninteger offset (b = {b})")
    return L.Crop(top_from, top_to, crop_param={"axis": ax + 1, "offset": [int(v) for v in -np.round(b)]})
