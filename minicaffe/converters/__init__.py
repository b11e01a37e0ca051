"""Converters from other frameworks' checkpoints to a generated Caffe prototxt + minicaffe ``.h5``.

Each converter reads its checkpoint with :mod:`minicaffe.io.torch_pickle` (no torch needed, no
pickled code run), derives the architecture from the tensor shapes, writes readable Caffe text
(:mod:`.common`) and an ordered ``[blobs]`` mapping per layer, validates both by building a
:class:`minicaffe.Net`, and saves the ``.h5`` with provenance. Modules: :mod:`.torchvision_alexnet`,
:mod:`.efficientnet_lite`. They do not download anything (``minicaffe.weights`` does).
"""
import importlib

#: the one converter registry: name (``python -m minicaffe.convert NAME``, a model's
#: ``converter``) -> module with ``convert(checkpoint, out, prototxt_out=None, **options)``
CONVERTERS = {
    "efficientnet-lite": "minicaffe.converters.efficientnet_lite",
    "torchvision-alexnet": "minicaffe.converters.torchvision_alexnet",
}


def get_converter(name):
    """The converter module registered as ``name``; an unknown name is a WeightsError."""
    from ..errors import WeightsError
    if name not in CONVERTERS:
        raise WeightsError(f"unknown converter {name!r} (known: {', '.join(CONVERTERS)})")
    return importlib.import_module(CONVERTERS[name])
