"""minicaffe: a from-scratch NumPy/Numba reimplementation of Caffe inference for DeCAF features.

Public interface: :class:`minicaffe.Net` (``net.forward``, ``net.blobs``, ``net.params``,
``net.add_hook``), the ``python -m minicaffe.*`` commands, and :class:`minicaffe.DeCAF` (a
scikit-learn transformer, imported lazily).
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

import os as _os
import sys as _sys

# Numba's parallel kernels run on its OpenMP threading layer, alternating with OpenBLAS's own
# threads. With OpenMP's default spin-waiting, a kernel whose other thread was descheduled (decode
# workers, another job on the box) waits a whole time slice: measured on the 2-core machine under
# load, ReLU + fc6 at batch 1 took a median 40-50 ms spinning vs 24-28 ms with PASSIVE. It must be
# set before the OpenMP runtime starts; an explicit OMP_WAIT_POLICY from the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# OpenBLAS's idle threads likewise spin (with sched_yield) for 2^28 cycles, ~0.1 s, after every
# matrix product before they sleep: a spinning thread holds a core that Numba's threads and
# extract's low-priority decoders need. 2^20 cycles (~0.4 ms) still bridges the back-to-back
# GEMMs inside one layer. Measured (2 cores, batch 64 extraction, 5-6 paired runs): end-to-end /
# pure forward 0.79 with the default, 0.83-0.89 with 4 or 20; the pure forward is unchanged
# within noise. Read when OpenBLAS loads (numpy's import); a user's setting wins. Where numpy was
# imported first, OpenBLAS has already read its environment: see _openblas_thread_timeout_late.
_OPENBLAS_TIMEOUT_LATE = "OPENBLAS_THREAD_TIMEOUT" not in _os.environ and "numpy" in _sys.modules
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")


def _openblas_thread_timeout_late():
    """numpy was imported before minicaffe: give its already-loaded OpenBLAS our thread timeout.

    ``import numpy as np`` before ``import minicaffe`` is the common order, and OpenBLAS reads
    OPENBLAS_THREAD_TIMEOUT once, when numpy loads it; its pthreads server applies the value
    when it starts its threads. So OpenBLAS's own fork handling is reused: re-read the
    environment (``openblas_read_env``) and stop the thread pool (``blas_thread_shutdown_``, what
    OpenBLAS runs in a forked child); the next threaded BLAS call starts it again with the new
    timeout. Measured (2 cores, extraction of 1280 JPEGs in a process that imported numpy first):
    the process spent 2.1-2.2 s of CPU spinning while it waited for its decoders (0.15 s with the
    timeout) and end to end took 20.5 s instead of 16.1-16.8 s. Done only for OpenBLAS's pthreads
    builds that export both functions (numpy's wheels; found with threadpoolctl), only when the
    user has not set OPENBLAS_THREAD_TIMEOUT, and never with MINICAFFE_OPENBLAS_RESTART=0: a
    threaded BLAS call running on another thread during ``import minicaffe`` would race the restart
    (import minicaffe first, or set the variable, in such programs)."""
    if _os.environ.get("MINICAFFE_OPENBLAS_RESTART", "1") == "0":
        return False
    try:
        import threadpoolctl
        libs = threadpoolctl.ThreadpoolController().select(internal_api="openblas").lib_controllers
    except Exception:  # noqa: BLE001 - no threadpoolctl, or it cannot inspect this process: leave BLAS alone
        return False
    done = False
    for lib in libs:
        dll = getattr(lib, "dynlib", None)
        if (getattr(lib, "threading_layer", None) != "pthreads" or dll is None
                or not hasattr(dll, "openblas_read_env") or not hasattr(dll, "blas_thread_shutdown_")):
            continue
        dll.openblas_read_env()
        dll.blas_thread_shutdown_()
        done = True
    return done


if _OPENBLAS_TIMEOUT_LATE:
    _openblas_thread_timeout_late()
# NumPy asks Linux for transparent huge pages on every array >= 4 MB. Where the kernel then
# compacts memory to find them (THP defrag "madvise", the common default), each fresh 2 MB page
# costs a synchronous compaction: the first CaffeNet forward at batch 64 took 2.2-2.9 s instead of
# 1.1-1.6 s (4 interleaved pairs, 2026-11-30), while steady-state forwards -- whose arrays reuse
# freed memory, see below -- measured the same either way (b64 medians 770-838 vs 684-865 ms).
# Extraction pays that first forward in every run. A user's NUMPY_MADVISE_HUGEPAGE wins.
def _no_numpy_hugepages():
    if "NUMPY_MADVISE_HUGEPAGE" in _os.environ:
        return
    _os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"          # read when numpy is first imported ...
    np = _sys.modules.get("numpy")                         # ... which may have happened already
    if np is not None:
        ma = getattr(getattr(np, "_core", None), "multiarray", None) or getattr(np.core, "multiarray", None)
        if hasattr(ma, "_set_madvise_hugepage"):
            ma._set_madvise_hugepage(False)


_no_numpy_hugepages()


def _keep_freed_memory():
    """glibc: serve large arrays from the heap and keep freed memory in the process.

    Every forward allocates fresh activation arrays (batch 64: ~75 MB for conv1 alone). By default
    glibc maps each large array anew and unmaps it when freed, so the next forward page-faults all
    of it again: measured 2,000 faults and 50 ms of kernel time per conv1 call at batch 64 (conv1
    took 218 ms; 160 ms with this). Caffe avoids the same cost by keeping its blobs allocated.
    Skipped when the user set any MALLOC_* variable or MINICAFFE_MALLOC_TUNING=0; harmless
    elsewhere (no glibc: nothing happens)."""
    if _os.environ.get("MINICAFFE_MALLOC_TUNING", "1") == "0" or any(k.startswith("MALLOC_") for k in _os.environ):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1)
    except (OSError, AttributeError):
        pass


_keep_freed_memory()

from .errors import (
    BackendError,
    ImageError,
    MinicaffeError,
    ModelError,
    PrototxtError,
    WeightsError,
)


def __getattr__(name):
    # Lazy: the extract command's decoder processes import this package (minicaffe.preprocess,
    # and minicaffe.extract as their __main__) but never run a net; importing Numba and every
    # layer there cost ~0.45 s of CPU per decoder at start, on the cores the first batch needs.
    if name == "Net":
        from .net import Net
        return Net
    if name == "DeCAF":
        from .sklearn import DeCAF
        return DeCAF
    raise AttributeError(f"module 'minicaffe' has no attribute {name!r}")
