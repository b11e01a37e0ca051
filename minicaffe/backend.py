"""The one place where a compute backend is chosen and checked.

Three backends exist: ``numpy`` (the plain reference of every layer), ``cpu`` (Numba ``@njit``
kernels with BLAS through NumPy for the matrix products) and ``cuda`` (Numba CUDA kernels;
blobs live on the device between layers). Asking for ``cuda`` where no GPU is usable is a
:class:`BackendError`, never a silent fallback. Set ``NUMBA_ENABLE_CUDASIM=1`` *before* numba is
imported to run the CUDA kernels in Numba's simulator on the CPU (slow; tests use tiny shapes).
"""
from __future__ import annotations

import os

import numpy as np

from .errors import BackendError

BACKENDS = ("numpy", "cpu", "cuda")


def cuda_simulated() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def check_backend(name: str) -> str:
    """Validate a backend name; for ``cuda`` make sure a (real or simulated) GPU can run."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "cuda":
        try:
            from numba import cuda
        except Exception as e:  # pragma: no cover - numba always ships numba.cuda today
            raise BackendError(f"backend 'cuda' requested but numba.cuda cannot be imported: {e}") from None
        if not cuda.is_available():
            raise BackendError(
                "backend 'cuda' requested but no usable CUDA GPU/driver was found "
                "(numba.cuda.is_available() is False); use --backend cpu, or set "
                "NUMBA_ENABLE_CUDASIM=1 before starting Python to run the kernels in the simulator")
    return name


def is_device_array(a) -> bool:
    return hasattr(a, "copy_to_host") and not isinstance(a, np.ndarray)


def to_device(a):
    from numba import cuda
    return cuda.to_device(np.ascontiguousarray(a, dtype=np.float32))


def to_host(a):
    """A NumPy array for a NumPy or device array."""
    if is_device_array(a):
        return a.copy_to_host()
    return a


def device_empty(shape):
    from numba import cuda
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.float32)


def synchronize(backend: str):
    """Wait for queued GPU work (so timings measure the kernels, not their launch)."""
    if backend == "cuda":
        from numba import cuda
        cuda.synchronize()


def blocks(n: int, tpb: int) -> int:
    return max(1, (int(n) + tpb - 1) // tpb)


def copy_array(a):
    """A copy of a NumPy or device array, on the same side."""
    if is_device_array(a):
        out = device_empty(a.shape)
        out.copy_to_device(a)
        return out
    return a.copy()


#: elements of work below which a cpu kernel runs on the calling thread: waking the thread pool
#: for a small layer (a pool or softmax at batch 1) costs more than the layer itself
SERIAL_BELOW = 1 << 17


def serial_twin(kernel, **options):
    """The same Python function as ``kernel`` (an ``@njit(parallel=True)`` dispatcher) compiled
    without ``parallel`` (``prange`` runs as ``range``) and cached under its own name.

    A twin made with ``njit(kernel.py_func)`` would share the parallel version's on-disk cache
    entry (Numba keys it by the function's qualified name and line, not by its flags)."""
    import types

    from numba import njit
    f = kernel.py_func
    twin = types.FunctionType(f.__code__, f.__globals__, f.__name__ + "_serial", f.__defaults__, f.__closure__)
    twin.__qualname__ = f.__qualname__ + "_serial"
    twin.__module__ = f.__module__
    return njit(cache=True, nogil=True, **options)(twin)
