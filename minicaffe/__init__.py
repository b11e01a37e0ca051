"""minicaffe: a from-scratch NumPy/Numba reimplementation of Caffe inference for DeCAF features.

Public interface: :class:`minicaffe.Net` (``net.forward``, ``net.blobs``, ``net.params``,
``net.add_hook``), the ``python -m minicaffe.*`` commands, and :class:`minicaffe.DeCAF` (a
scikit-learn transformer, imported lazily).
"""
__version__ = "0.1.0"

from .errors import (BackendError, ImageError, MinicaffeError, ModelError,  # noqa: F401
                     PrototxtError, WeightsError)
from .net import Net  # noqa: F401


def __getattr__(name):
    if name == "DeCAF":
        from .sklearn import DeCAF
        return DeCAF
    raise AttributeError(name)
