"""minicaffe: a from-scratch NumPy/Numba reimplementation of Caffe inference for DeCAF features.

Public interface: :class:`minicaffe.Net` (``net.forward``, ``net.blobs``, ``net.params``,
``net.add_hook``), the ``python -m minicaffe.*`` commands, and :class:`minicaffe.DeCAF` (a
scikit-learn transformer, imported lazily).

Importing the package changes nothing in the process (no environment variables, no thread-pool
or allocator settings): the process tuning the tools and ``Net`` apply lives in
:mod:`minicaffe.runtime`, where library users can call, inspect or switch it off.
"""
__version__ = "0.1.0"
__all__ = [
    "BackendError",
    "DeCAF",
    "ImageError",
    "MinicaffeError",
    "ModelError",
    "Net",
    "PrototxtError",
    "WeightsError",
    "__version__",
]

from .errors import (
    BackendError,
    ImageError,
    MinicaffeError,
    ModelError,
    PrototxtError,
    WeightsError,
)


def __getattr__(name):
    # Lazy: the decoder processes import this package (minicaffe.preprocess, minicaffe.features,
    # and minicaffe.extract as their __main__) but never run a net; importing Numba and every
    # layer there would cost each decoder CPU time at start, on the cores the first batch needs.
    if name == "Net":
        from .net import Net
        return Net
    if name == "DeCAF":
        from .sklearn import DeCAF
        return DeCAF
    raise AttributeError(f"module 'minicaffe' has no attribute {name!r}")
