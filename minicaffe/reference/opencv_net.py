"""OpenCV DNN as a reference: its own Caffe importer runs the same prototxt + caffemodel.

``cv2.dnn.readNetFromCaffe`` parses the prototxt and the binary caffemodel with OpenCV's own
protobuf code (so it also checks minicaffe's readers) and computes with OpenCV's kernels. Two
OpenCV habits would hide Caffe's blobs, and are undone here: (1) fusion — OpenCV folds ReLU into
the preceding convolution/fully connected layer; we call ``enableFusion(False)`` (and
``enableWinograd(False)``, whose 3x3 convolutions are less exact); (2) naming — OpenCV returns
outputs *per layer*, so the output of layer ``conv5`` is pre-ReLU. Caffe's blob ``conv5`` is the
value after the last layer that writes that top (``relu5``), so each Caffe blob is fetched from
the *last* layer of the TEST phase whose top it is (``conv1`` <- ``relu1``, ``fc6`` <- ``drop6``).
The input blob itself is not returned (OpenCV does not expose it as a layer output). Requires
``opencv-python-headless<5`` (5.x dropped the Caffe importer); imported lazily. Only
single-top layers are mapped (all minicaffe's types are).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from ..errors import MinicaffeError, WeightsError
from ..io.prototxt import parse_file
from .common import as_caffemodel, require
from .torch_net import _phase_ok


def caffe_blob_sources(prototxt):
    """prototxt path -> (input names, OrderedDict blob name -> name of the last layer writing it)."""
    proto = parse_file(os.fspath(prototxt))
    inputs = [str(n) for n in proto.getall("input")]
    last = OrderedDict()
    for lp in proto.getall("layer") or proto.getall("layers"):
        if not _phase_ok(lp):
            continue
        tops = [str(t) for t in lp.getall("top")]
        if str(lp.get("type")) == "Input":
            inputs += tops
            continue
        for t in tops[:1]:
            last[t] = str(lp.get("name"))
    for n in inputs:
        last.pop(n, None)
    return inputs, last


def opencv_blobs(prototxt, weights, x):
    """x: (N, C, H, W) float32 -> OrderedDict Caffe blob name -> float32 array from OpenCV DNN."""
    cv2 = require("cv2", "opencv")
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise MinicaffeError(f"OpenCV {cv2.__version__} has no Caffe importer (cv2.dnn.readNetFromCaffe); "
                             "install it with: pip install 'opencv-python-headless<5'")
    if weights is None or not isinstance(weights, (str, os.PathLike)):
        raise WeightsError("the opencv reference needs a weights file (.caffemodel or .h5)")
    inputs, sources = caffe_blob_sources(prototxt)
    with as_caffemodel(weights) as cm:
        try:
            net = cv2.dnn.readNetFromCaffe(os.fspath(prototxt), cm)
        except cv2.error as e:
            msg = " ".join(str(e).split())
            raise MinicaffeError(f"OpenCV cannot load {prototxt} + {weights}: {msg[-300:]}") from None
    net.enableFusion(False)      # keep ReLU separate from conv/fc so every Caffe blob exists
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.setInput(np.ascontiguousarray(x, dtype=np.float32))
    known = set(net.getLayerNames())
    blobs = [b for b, layer in sources.items() if layer in known]
    try:
        outs = net.forward([sources[b] for b in blobs])
    except cv2.error as e:
        msg = " ".join(str(e).split())
        raise MinicaffeError(f"OpenCV forward failed on {prototxt} with input {tuple(x.shape)}: {msg[-300:]}") from None
    return OrderedDict((b, np.asarray(o, dtype=np.float32)) for b, o in zip(blobs, outs))
