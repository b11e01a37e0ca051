"""A pycaffe drop-in: BVLC Caffe's Python interface (``import caffe``) on minicaffe's engine.

``sys.modules['caffe'] = minicaffe.pycaffe`` (done by :func:`install`, or by running a script
with ``python -m minicaffe.pycaffe SCRIPT.py``) lets unchanged pycaffe code run without Caffe:
``caffe.Net`` with blobs / params / forward / backward (:mod:`.net`), ``caffe.io`` (:mod:`.io`),
``Classifier`` / ``Detector``, the solvers (:mod:`.solver`), Python layers (``caffe.Layer``),
``NetSpec`` / ``layers`` / ``params`` (:mod:`.net_spec`) and ``caffe.proto.caffe_pb2``.
``TRAIN`` / ``TEST`` are Caffe's phase enum values (0 / 1). Nothing is installed under the
name ``caffe`` unless :func:`install` is called. The net, io and solvers need no protobuf;
``NetSpec``, ``caffe_pb2`` and the proto helpers of ``caffe.io`` do (``pip install
minicaffe[pycaffe]``), and are imported on first use.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from ..layers import REGISTRY
from ..layers.python_layer import TEST, TRAIN, Blob
from ..layers.python_layer import Layer as Layer
from . import io
from ._mode import set_device, set_mode_cpu, set_mode_gpu, set_random_seed
from .classifier import Classifier
from .detector import Detector
from .net import Net
from .solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    get_solver,
)

__all__ = [
    "TEST",
    "TRAIN",
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "Blob",
    "Classifier",
    "Detector",
    "Layer",
    "NesterovSolver",
    "Net",
    "RMSPropSolver",
    "SGDSolver",
    "Timer",
    "get_solver",
    "has_nccl",
    "init_log",
    "install",
    "io",
    "layer_type_list",
    "log",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_multiprocess",
    "set_random_seed",
    "set_solver_count",
    "set_solver_rank",
    "solver_count",
    "solver_rank",
]

_LAZY = {"layers": "net_spec", "params": "net_spec", "NetSpec": "net_spec", "to_proto": "net_spec",
         "proto": None, "net_spec": None, "coord_map": None}


def __getattr__(name):
    # NetSpec and caffe_pb2 need protobuf: import them when first asked for
    if name in _LAZY:
        try:
            mod = importlib.import_module(f"{__name__}.{_LAZY[name] or name}")
        except ImportError as e:
            if "google" not in str(e):
                raise
            raise ImportError(f"caffe.{name} needs protobuf: pip install 'minicaffe[pycaffe]' ({e})") from None
        return mod if _LAZY[name] is None else getattr(mod, name)
    raise AttributeError(f"module 'caffe' (minicaffe.pycaffe) has no attribute {name!r}")


def layer_type_list():
    """The layer type strings this engine can build (Caffe's LayerRegistry::LayerTypeList)."""
    return sorted(REGISTRY)


def has_nccl():
    """No NCCL here: training runs in one process."""
    return False


def solver_count():
    return 1


def set_solver_count(count):
    if int(count) != 1:
        raise ValueError("minicaffe trains with one solver (no NCCL multi-GPU training)")


def solver_rank():
    return 0


def set_solver_rank(rank):
    if int(rank) != 0:
        raise ValueError("minicaffe trains with one solver: the only rank is 0")


def set_multiprocess(multiprocess):
    """Accepted for pycaffe compatibility; there is one process."""


class Timer:
    """pycaffe's Timer: ``start()``, ``stop()``, ``ms`` (elapsed milliseconds between them)."""

    def __init__(self):
        self._t0 = self._t1 = None

    def start(self):
        import time
        self._t0, self._t1 = time.perf_counter(), None

    def stop(self):
        import time
        self._t1 = time.perf_counter()

    @property
    def ms(self):
        import time
        if self._t0 is None:
            return 0.0
        return ((self._t1 if self._t1 is not None else time.perf_counter()) - self._t0) * 1e3


def init_log(*args, **kwargs):
    """Caffe sets up glog here; minicaffe logs nothing, so there is nothing to set up."""


def log(message):
    print(message, file=sys.stderr)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``caffe`` and ``caffe.<sub>`` to ``minicaffe.pycaffe`` and its submodules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "caffe" or fullname.startswith("caffe."):
            target_name = __name__ + fullname[len("caffe"):]
            if importlib.util.find_spec(target_name) is None:
                return None
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(__name__ + spec.name[len("caffe"):])

    def exec_module(self, module):
        pass


def install():
    """Make ``import caffe`` (and ``caffe.io``, ``caffe.proto.caffe_pb2`` ...) give this package."""
    me = sys.modules[__name__]
    sys.modules["caffe"] = me
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
    return me
