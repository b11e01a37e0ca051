"""Python layers (Caffe type ``Python``): a user class with setup / reshape / forward / backward.

``python_param { module: "m" layer: "Cls" param_str: "..." }`` imports ``m`` and builds
``m.Cls(layer_param)``; the object gets ``param_str``, ``phase`` (0 TRAIN, 1 TEST, Caffe's enum)
and ``blobs`` (its learnable :class:`Blob` list, ``blobs.add_blob(*shape)``), and is then called as
Caffe calls it: ``setup(bottom, top)`` once, ``reshape(bottom, top)`` before every forward,
``forward(bottom, top)``, ``backward(top, propagate_down, bottom)``, where ``bottom``/``top`` are
lists of :class:`Blob` (``.data``/``.diff`` ndarrays, ``.reshape(*shape)``). :class:`Layer` is the
base class such code subclasses (pycaffe's ``caffe.Layer``). This module also holds the
:class:`Blob` those calls see. The :class:`PythonLayer` adapter runs such a layer inside the array-
based engine (:class:`minicaffe.Net`); the pycaffe net calls the user object directly on its own
blobs. It does not sandbox the user's code: the module runs with the caller's rights.
"""
from __future__ import annotations

import importlib

import numpy as np

from .base import Layer as _EngineLayer
from .base import register

TRAIN, TEST = 0, 1


class Blob:
    """A Caffe blob: ``data`` and ``diff``, float32 arrays of one shape (``()`` for a scalar)."""

    def __init__(self, shape=(), data=None):
        shape = tuple(int(d) for d in shape)
        self._data = np.zeros(shape, np.float32) if data is None else np.ascontiguousarray(data, np.float32)
        self._diff = np.zeros(self._data.shape, np.float32)

    @property
    def data(self):
        return self._data

    @property
    def diff(self):
        return self._diff

    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def count(self):
        return int(self._data.size)

    def _legacy(self, i):
        s = self.shape
        return int(s[i]) if len(s) > i else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape):
        """New shape; the arrays are reallocated (zeros) only when the shape changes."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"blob dimensions must be >= 0, got {shape}")
        if shape != self.shape:
            self._data = np.zeros(shape, np.float32)
            self._diff = np.zeros(shape, np.float32)

    def set_data(self, arr):
        """Write ``arr`` into ``data`` in place (reshaping first when the shape differs)."""
        arr = np.asarray(arr)
        if arr.shape != self._data.shape:
            self.reshape(*arr.shape)
        self._data[...] = arr

    def set_diff(self, arr):
        arr = np.asarray(arr)
        if arr.shape != self._diff.shape:
            self.reshape(*arr.shape)
        self._diff[...] = arr

    def share_data(self, other):
        self._data = other._data

    def __repr__(self):
        return f"Blob(shape={self.shape})"


class BlobVec(list):
    """A layer's learnable blobs; ``add_blob(*shape)`` appends a zero blob (pycaffe's API)."""

    def add_blob(self, *shape):
        self.append(Blob(shape))


class Layer:
    """Base class of Python layers (pycaffe's ``caffe.Layer``)."""

    def __init__(self, param=None):
        self.param = param
        pp = None
        if param is not None:
            pp = param.python_param if hasattr(param, "python_param") else param.get("python_param")
        ps = "" if pp is None else (pp.param_str if hasattr(pp, "param_str") else pp.get("param_str", ""))
        self.param_str = str(ps)
        self.phase = TEST
        self.blobs = BlobVec()

    @property
    def type(self):
        return "Python"

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} defines no reshape(bottom, top)")

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} defines no forward(bottom, top)")

    def backward(self, top, propagate_down, bottom):
        raise NotImplementedError(f"{type(self).__name__} defines no backward(top, propagate_down, bottom)")


def make_python_layer(lp, phase, where="layer"):
    """lp: the LayerParameter Message -> the user's layer object (imported, constructed, configured)."""
    p = lp.get("python_param")
    if p is None or p.get("module") is None or p.get("layer") is None:
        raise ValueError(f"{where}: python_param {{ module layer }} is required")
    module, cls_name = str(p.get("module")), str(p.get("layer"))
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{where}: cannot import python_param.module {module!r}: {e}") from None
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise ImportError(f"{where}: module {module!r} has no layer class {cls_name!r}")
    obj = cls(lp)
    if not hasattr(obj, "blobs"):  # a class that does not call Layer.__init__
        obj.blobs = BlobVec()
    obj.param_str = str(p.get("param_str", ""))
    obj.phase = phase
    return obj


@register("Python")
class PythonLayer(_EngineLayer):
    """Runs a Python layer inside :class:`minicaffe.Net`: arrays in, arrays out, through Blobs."""

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        self.obj = None

    def _blobs(self, arrays):
        return [Blob(data=a) for a in arrays]

    def setup(self, shapes):
        bottom = [Blob(s) for s in shapes]
        top = [Blob() for _ in self.tops]
        if self.obj is None:
            self.obj = make_python_layer(self.lp, TEST, f"layer {self.name!r}")
            self.obj.setup(bottom, top)
        self.obj.reshape(bottom, top)
        return [t.shape for t in top]

    def forward(self, bottoms, params, backend, inplace=False):
        bottom = self._blobs(bottoms)
        top = [Blob() for _ in self.tops]
        self.obj.reshape(bottom, top)
        self.obj.forward(bottom, top)
        return [t.data for t in top]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        bottom = self._blobs(bottoms)
        top = self._blobs(tops)
        for t, d in zip(top, top_diffs):
            t.set_diff(d)
        self.obj.backward(top, [True] * len(bottom), bottom)
        return [b.diff for b in bottom], [b.diff.copy() for b in self.obj.blobs]
