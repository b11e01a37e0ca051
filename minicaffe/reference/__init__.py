"""Independent reference frameworks that run the same prototxt + weights as minicaffe.

Each reference answers one question: "what would another implementation say every blob is?".
:func:`reference_blobs` dispatches on a name — ``torch`` (our own prototxt -> ``torch.nn``
translator, :mod:`.torch_net`), ``opencv`` (OpenCV DNN's Caffe importer, :mod:`.opencv_net`),
``pycaffe`` (BVLC Caffe itself, when ``import caffe`` works) and ``caffe-npz:FILE`` (blobs saved
earlier from real Caffe). All return an ordered mapping Caffe blob name -> float32 array with
Caffe's post-in-place semantics (blob ``conv1`` is the value after ``relu1``). The frameworks are
optional test/dev extras: they are imported only when asked for, and a missing one is a single
:class:`MinicaffeError` that says how to install it. This package does not compare anything;
:mod:`minicaffe.comparison` does.
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from ..errors import MinicaffeError, WeightsError
from .common import INSTALL_HINTS, as_caffemodel, load_npz_blobs, npz_key, require  # noqa: F401  (the package's API)

KINDS = ("caffe-npz", "opencv", "torch", "pycaffe")


def pycaffe_blobs(prototxt, weights, x):
    """x: (N, C, H, W) float32 -> every blob of BVLC Caffe's forward (TEST phase, CPU)."""
    caffe = require("caffe", "pycaffe")
    if weights is None:
        raise WeightsError("the pycaffe reference needs a weights file (.caffemodel or .h5)")
    caffe.set_mode_cpu()
    with as_caffemodel(weights) as cm:
        net = caffe.Net(os.fspath(prototxt), cm, caffe.TEST)
    name = net.inputs[0]
    net.blobs[name].reshape(*x.shape)
    net.reshape()
    net.blobs[name].data[...] = x
    net.forward()
    return OrderedDict((k, np.array(v.data, dtype=np.float32)) for k, v in net.blobs.items())


def reference_blobs(kind, prototxt, weights, x):
    """Run reference ``kind`` on x: (N, C, H, W) and return OrderedDict blob name -> array.

    ``kind`` is ``torch``, ``opencv``, ``pycaffe`` or ``caffe-npz:PATH`` (then ``x`` is ignored and
    the keys are the npz keys, '/' stored as '__').
    """
    if kind.startswith("caffe-npz:"):
        return load_npz_blobs(kind.split(":", 1)[1])
    if kind == "torch":
        from .torch_net import torch_blobs
        return torch_blobs(prototxt, weights, x)
    if kind == "opencv":
        from .opencv_net import opencv_blobs
        return opencv_blobs(prototxt, weights, x)
    if kind == "pycaffe":
        return pycaffe_blobs(prototxt, weights, x)
    raise MinicaffeError(f"unknown reference {kind!r}; choose caffe-npz:BLOBS.npz, opencv, torch or pycaffe")
