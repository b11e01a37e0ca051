"""minicaffe: a from-scratch NumPy/Numba reimplementation of Caffe inference for DeCAF features.

Public interface: :class:`minicaffe.Net` (``net.forward``, ``net.blobs``, ``net.params``,
``net.add_hook``), the ``python -m minicaffe.*`` commands, and :class:`minicaffe.DeCAF` (a
scikit-learn transformer, imported lazily).
"""
__version__ = "0.1.0"

import os as _os

# Numba's parallel kernels run on its OpenMP threading layer, alternating with OpenBLAS's own
# threads. With OpenMP's default spin-waiting, a kernel whose other thread was descheduled (decode
# workers, another job on the box) waits a whole time slice: measured on the 2-core machine under
# load, ReLU + fc6 at batch 1 took a median 40-50 ms spinning vs 24-28 ms with PASSIVE. It must be
# set before the OpenMP runtime starts; an explicit OMP_WAIT_POLICY from the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import (BackendError, ImageError, MinicaffeError, ModelError,  # noqa: F401
                     PrototxtError, WeightsError)
from .net import Net  # noqa: F401


def __getattr__(name):
    if name == "DeCAF":
        from .sklearn import DeCAF
        return DeCAF
    raise AttributeError(name)
