"""Helpers the reference frameworks share: importing an optional framework with one clear error,
the npz blob store of real Caffe's outputs, and a ``.caffemodel`` view of our ``.h5`` weights.

Kept apart from :mod:`minicaffe.reference` (which dispatches to the framework modules) so that the
framework modules import only this, never their own package. Nothing here runs a net.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections import OrderedDict

import numpy as np

from ..errors import MinicaffeError

#: how to install each optional reference (pins from the project brief)
INSTALL_HINTS = {
    "torch": "pip install torch==2.13.0",
    "opencv": "pip install 'opencv-python-headless<5'",
    "pycaffe": ("build BVLC Caffe with its Python bindings (e.g. pip install brocolli-caffe) so that "
                "`import caffe` works"),
}


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
