"""Process-wide runtime tuning for fast inference: one explicit call, never an import side effect.

:func:`tune` adjusts four things of the *process* that the Numba kernels and OpenBLAS run in, each
because it costs time on a small shared machine (the measurements are in docs/extract.md and
docs/notes/runtime.md):

- ``OMP_WAIT_POLICY=PASSIVE`` with ``GOMP_SPINCOUNT=3000``: Numba's OpenMP threads spin only
  a few microseconds after a kernel, then sleep, so a descheduled peer thread does not cost a
  whole time slice, while back-to-back kernels of one forward pass (dozens per pass in
  EfficientNet) still find their threads awake. Read when the OpenMP runtime starts (the first
  parallel kernel), so it only helps when tune runs before that.
- ``OPENBLAS_THREAD_TIMEOUT=20``: OpenBLAS's idle threads sleep after ~2^20 cycles instead of
  spinning ~0.1 s after every matrix product. OpenBLAS reads it when it loads (numpy's import);
  where numpy is already loaded, tune re-reads OpenBLAS's environment and stops its thread pool
  (what OpenBLAS itself does in a forked child), and the next threaded product starts it again.
- NumPy's transparent-huge-page ``madvise`` is turned off: with THP defrag "madvise" every fresh
  2 MB page costs a synchronous compaction, which made the first large forward much slower.
- glibc keeps freed memory (``mallopt``: no ``mmap`` for large blocks, no trimming), so each
  forward reuses the previous one's activation memory instead of page-faulting it afresh.

Who calls it: every ``python -m minicaffe.*`` tool at start, and :class:`minicaffe.Net` on its
first ``forward`` (through :func:`auto_tune`; opt out with ``MINICAFFE_RUNTIME_TUNING=0`` or
``net.tune_runtime = False``). ``import minicaffe`` does none of it. The user's own settings win:
an explicit ``OMP_WAIT_POLICY``, ``OPENBLAS_THREAD_TIMEOUT``, ``NUMPY_MADVISE_HUGEPAGE`` or any
``MALLOC_*`` variable leaves that part alone, as do ``MINICAFFE_OPENBLAS_RESTART=0`` and
``MINICAFFE_MALLOC_TUNING=0``. This module does not pin threads, set thread counts or touch
anything but the current process (children inherit the environment variables).
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from dataclasses import dataclass, field

__all__ = ["COMPILE_NOTICE", "Tuning", "auto_tune", "notice_first_compile", "tune", "tuning"]

#: the environment variables tune sets when the user has not (value it sets)
ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "3000", "OPENBLAS_THREAD_TIMEOUT": "20"}
#: what :func:`notice_first_compile` says (the tools print it when Numba's cache is cold)
COMPILE_NOTICE = "minicaffe: compiling kernels (first run only)"
#: set to "0" to make :func:`auto_tune` (the CLIs' and Net's call) do nothing
AUTO_ENV = "MINICAFFE_RUNTIME_TUNING"

_lock = threading.Lock()
_done: Tuning | None = None


@dataclass
class Tuning:
    """What :func:`tune` changed in this process (``skipped``: part -> why it was left alone)."""
    env: dict = field(default_factory=dict)      # variables set by tune: name -> value
    openblas_restarted: bool = False             # an already-loaded OpenBLAS re-read its environment
    hugepages_off: bool = False                  # NumPy's huge-page madvise turned off
    malloc_tuned: bool = False                   # glibc mallopt applied
    skipped: dict = field(default_factory=dict)


def tuning() -> Tuning | None:
    """The record of the :func:`tune` call that ran in this process, or None when none has."""
    return _done


def auto_tune() -> Tuning | None:
    """:func:`tune` once per process unless ``MINICAFFE_RUNTIME_TUNING=0`` (what the CLIs and Net call)."""
    if _done is not None or os.environ.get(AUTO_ENV, "1") == "0":
        return _done
    return tune()


def tune(*, env: bool = True, openblas: bool = True, hugepages: bool = True, malloc: bool = True) -> Tuning:
    """Apply the process tuning of the module docstring; each keyword False skips that part.

    Runs once per process: later calls return the first call's :class:`Tuning` record.
    """
    global _done
    with _lock:
        if _done is not None:
            return _done
        t = Tuning()
        # decided before our own OPENBLAS_THREAD_TIMEOUT is set: only an OpenBLAS that loaded
        # without the variable needs to re-read it
        late_blas = "OPENBLAS_THREAD_TIMEOUT" not in os.environ and "numpy" in sys.modules
        if env:
            for k, v in ENV_DEFAULTS.items():
                if k in os.environ:
                    t.skipped[k] = "set by the user"
                elif k == "GOMP_SPINCOUNT" and "OMP_WAIT_POLICY" in t.skipped:
                    t.skipped[k] = "the user chose the wait policy"
                else:
                    os.environ[k] = v
                    t.env[k] = v
        else:
            t.skipped["env"] = "env=False"
        if not openblas or not env:
            t.skipped["openblas"] = "openblas=False" if not openblas else "env=False"
        elif not late_blas:
            t.skipped["openblas"] = "OpenBLAS reads the variable when it loads" if "numpy" not in sys.modules \
                else "OPENBLAS_THREAD_TIMEOUT set by the user"
        else:
            t.openblas_restarted = _restart_openblas(t.skipped)
        if hugepages:
            t.hugepages_off = _no_numpy_hugepages(t)
        else:
            t.skipped["hugepages"] = "hugepages=False"
        if malloc:
            t.malloc_tuned = _keep_freed_memory(t.skipped)
        else:
            t.skipped["malloc"] = "malloc=False"
        _done = t
        return t


def _restart_openblas(skipped):
    """Make an already-loaded OpenBLAS (numpy's) apply OPENBLAS_THREAD_TIMEOUT -> whether it did.

    OpenBLAS's own fork handling is reused: re-read the environment (``openblas_read_env``) and
    stop the thread pool (``blas_thread_shutdown_``); the next threaded BLAS call starts it again.
    Only for OpenBLAS's pthreads builds that export both functions (numpy's wheels; found with
    threadpoolctl), and only while this process runs a single Python thread: a threaded BLAS
    call on another thread would race the shutdown.
    """
    if os.environ.get("MINICAFFE_OPENBLAS_RESTART", "1") == "0":
        skipped["openblas"] = "MINICAFFE_OPENBLAS_RESTART=0"
        return False
    if threading.active_count() > 1:
        skipped["openblas"] = "other Python threads are running"
        return False
    try:
        import threadpoolctl
        libs = threadpoolctl.ThreadpoolController().select(internal_api="openblas").lib_controllers
    except Exception as e:  # noqa: BLE001 - no threadpoolctl, or it cannot inspect this process: leave BLAS alone
        skipped["openblas"] = f"threadpoolctl: {type(e).__name__}"
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
    if not done:
        skipped["openblas"] = "no pthreads OpenBLAS with openblas_read_env/blas_thread_shutdown_"
    return done


def _no_numpy_hugepages(t):
    """Stop NumPy's huge-page madvise (an explicit NUMPY_MADVISE_HUGEPAGE wins) -> whether it did."""
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ and "NUMPY_MADVISE_HUGEPAGE" not in t.env:
        t.skipped["hugepages"] = "NUMPY_MADVISE_HUGEPAGE set by the user"
        return False
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"      # read when numpy is first imported (here or in children)
    t.env["NUMPY_MADVISE_HUGEPAGE"] = "0"
    np = sys.modules.get("numpy")                   # ... which may have happened already
    if np is not None:
        core = getattr(np, "_core", None) or getattr(np, "core", None)
        ma = getattr(core, "multiarray", None)
        if hasattr(ma, "_set_madvise_hugepage"):
            ma._set_madvise_hugepage(False)
    return True


def _keep_freed_memory(skipped):
    """glibc: serve large arrays from the heap and keep freed memory in the process -> whether it did.

    Every forward allocates fresh activation arrays; by default glibc maps each large array anew
    and unmaps it when freed, so the next forward page-faults all of it again. Caffe avoids the
    same cost by keeping its blobs allocated. Skipped when the user set any MALLOC_* variable or
    MINICAFFE_MALLOC_TUNING=0; nothing happens without glibc.
    """
    if os.environ.get("MINICAFFE_MALLOC_TUNING", "1") == "0":
        skipped["malloc"] = "MINICAFFE_MALLOC_TUNING=0"
        return False
    if any(k.startswith("MALLOC_") for k in os.environ):
        skipped["malloc"] = "a MALLOC_* variable is set"
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2 ** 31 - 1)
    except (OSError, AttributeError):
        skipped["malloc"] = "no glibc"
        return False
    return True


def notice_first_compile(write, message=COMPILE_NOTICE):
    """Call ``write(message)`` once, when this process first compiles a Numba function.

    Numba fires its ``numba:compile`` event only on a cache miss (a kernel loaded from the on-disk
    cache does not compile), so a warm run says nothing, and a cold one says why its first batch
    takes seconds. Returns the listener (``numba.core.event.unregister("numba:compile", it)``
    removes it early); without Numba nothing happens and None is returned.
    """
    try:
        from numba.core import event
    except ImportError:
        return None

    class _Once(event.Listener):
        fired = False

        def on_start(self, ev):
            if not self.fired:
                self.fired = True
                write(message)

        def on_end(self, ev):
            pass

    listener = _Once()
    event.register("numba:compile", listener)
    return listener
