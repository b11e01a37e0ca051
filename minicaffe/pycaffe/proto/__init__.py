"""``caffe.proto``: holds ``caffe_pb2``, Caffe's protobuf message classes (needs ``protobuf``,
the ``pycaffe`` extra). ``caffe.proto.caffe_pb2`` is imported on first access, so importing
``caffe`` alone imports nothing from protobuf."""
from __future__ import annotations

import importlib


def __getattr__(name):
    if name == "caffe_pb2":
        return importlib.import_module(__name__ + ".caffe_pb2")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
