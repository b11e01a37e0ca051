"""pycaffe's global state: the CPU/GPU mode, the device and the random seed (Caffe keeps these
per process, too), and the error type of pycaffe's own argument checks. It holds no nets;
:mod:`minicaffe.pycaffe.net` reads the mode at run time."""
from __future__ import annotations


class PycaffeError(Exception):
    """What pycaffe raises as a bare ``Exception`` (e.g. "Input is not batch sized"): a subclass,
    so code that catches ``Exception`` keeps working."""


_state = {"mode": "cpu", "device": 0, "seed": None}


def mode():
    return _state["mode"]


def seed():
    return _state["seed"]


def set_mode_cpu():
    _state["mode"] = "cpu"


def set_mode_gpu():
    """Run the forward of layers that have CUDA kernels on the GPU (Numba CUDA)."""
    from ..backend import check_backend
    check_backend("cuda")
    _state["mode"] = "gpu"


def set_device(device_id):
    from ..backend import check_backend
    check_backend("cuda")
    from numba import cuda
    cuda.select_device(int(device_id))
    _state["device"] = int(device_id)


def set_random_seed(seed):
    """Seed NumPy's global generator (fillers and dropout draw from generators seeded from it)."""
    import numpy as np
    _state["seed"] = int(seed)
    np.random.seed(int(seed) % 2 ** 32)
