"""Independent reference frameworks that run the same prototxt + weights as minicaffe.

Each reference answers one question: "what would another implementation say every blob is?".
:func:`reference_blobs` dispatches on a name — ``torch`` (our own prototxt -> ``torch.nn``
translator, :mod:`.torch_net`), ``opencv`` (OpenCV DNN's Caffe importer, :mod:`.opencv_net`),
``pycaffe`` (BVLC Caffe itself, when ``import caffe`` works) and ``caffe-npz:FILE`` (blobs saved
earlier from real Caffe). All return an ordered mapping Caffe blob name -> float32 array with
Caffe's post-in-place semantics (blob ``conv1`` is the value after ``relu1``). The frameworks are
optional test/dev extras: they are imported only when asked for, and a missing one is a single
:class:`MinicaffeError` that says how to install it. This package does not compare anything;
:mod:`minicaffe.check` does.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections import OrderedDict

import numpy as np

from ..errors import MinicaffeError, WeightsError

#: how to install each optional reference (pins from the project brief)
INSTALL_HINTS = {
    "torch": "pip install torch==2.13.0",
    "opencv": "pip install 'opencv-python-headless<5'",
    "pycaffe": "build BVLC Caffe with its Python bindings (e.g. pip install brocolli-caffe) so that `import caffe` works",
}

KINDS = ("caffe-npz", "opencv", "torch", "pycaffe")


def require(module, kind):
    """Import an optional framework or raise one clear line saying how to install it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MinicaffeError(f"the {kind!r} reference needs the Python module {module!r}, which cannot be "
                             f"imported here ({e}); install it with: {INSTALL_HINTS[kind]}") from None


def npz_key(blob):
    """Blob name -> npz key: numpy's savez cannot hold '/' in names, so the fixtures store '__'."""
    return blob.replace("/", "__")


def load_npz_blobs(path):
    """Blobs saved from real Caffe -> OrderedDict keyed by the npz key (see :func:`npz_key`)."""
    try:
        with np.load(path) as z:
            return OrderedDict((k, np.asarray(z[k], dtype=np.float32)) for k in z.files)
    except (OSError, ValueError) as e:
        raise MinicaffeError(f"{path}: cannot read the reference blobs (.npz expected): {e}") from None


@contextlib.contextmanager
def as_caffemodel(weights):
    """Yield a ``.caffemodel`` path for ``weights`` (converting our ``.h5`` to a temporary one).

    OpenCV and pycaffe only read caffemodels; the temporary file is a current-format caffemodel
    written by :func:`minicaffe.io.caffemodel.write_caffemodel`, removed afterwards.
    """
    path = os.fspath(weights)
    if not path.endswith((".h5", ".hdf5")):
        yield path
        return
    from ..io.caffemodel import write_caffemodel
    from ..io.h5weights import load_h5
    params = load_h5(path)
    with tempfile.TemporaryDirectory(prefix="minicaffe-ref-") as d:
        out = os.path.join(d, "weights.caffemodel")
        # the layer type string is not needed by OpenCV/Caffe to match blobs (they match by name)
        write_caffemodel(out, [(name, "", list(blobs)) for name, blobs in params.items()])
        yield out


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
