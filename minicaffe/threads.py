"""Run one GIL-free function on several threads at once, never waiting for a thread that is late.

The channels-last kernels (:mod:`minicaffe.program`) split their work into tasks that the threads
running them take from shared counters, so any number of threads can run them, and one alone
finishes them. :func:`run_on_threads` runs such a function on the calling thread and on helper
threads kept for the purpose: the caller starts at once, a helper joins when it wakes (waking a
sleeping thread costs 20-100 us where an idle CPU halts, as in virtual machines), and a helper that
has not started when the caller is done is not waited for: it skips that call. So a pass of
kernels pays for waking the helpers once, not once per kernel as a parallel region per kernel
does, and a helper whose CPU another process holds slows the pass by the work it took, not more.
Helpers are daemon threads, made on first use and again in a forked child.
"""
from __future__ import annotations

import os
import threading

import numpy as np
from numba import njit

from .simd import spin_while_equal

__all__ = ["run_on_threads"]

#: pause-loop iterations a helper spins (without the GIL) for the next job before it sleeps (about
#: 65 us at ~26 ns a pause on Zen 4): longer than the Python between two layers of a forward, so a
#: layer-by-layer pass wakes the helpers once, not once per layer (an idle CPU of a virtual machine
#: halts, and waking it costs 20-100 us); short enough that a CPU shared with another process is
#: given back at once
HELPER_SPINS = 2500


@njit(cache=True, nogil=True)
def _spin(gen, seen, spins):
    # True when gen[0] moved off ``seen`` within ``spins`` pause iterations
    return spin_while_equal(gen, 0, seen, spins)


class _Helper:
    def __init__(self, pool):
        self.pool = pool
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="minicaffe-helper", daemon=True)
        self.thread.start()

    def _loop(self):
        pool = self.pool
        seen = int(pool.gen[0])
        while True:
            if not _spin(pool.gen, seen, HELPER_SPINS):
                self.wake.wait()
            self.wake.clear()
            with pool.lock:
                job = pool.job
                seen = int(pool.gen[0])
                if job is None:
                    continue
                pool.active += 1
            try:
                job[0](*job[1])
            except BaseException as e:          # reported by the caller, never lost in a thread
                with pool.lock:
                    if pool.error is None:
                        pool.error = e
            finally:
                with pool.lock:
                    pool.active -= 1
                    if pool.active == 0:
                        pool.idle.notify_all()


class _Pool:
    def __init__(self):
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.helpers = []
        self.job = None
        self.active = 0
        self.error = None
        self.pid = os.getpid()
        self.busy = threading.Lock()          # one job at a time: other callers run alone
        self.gen = np.zeros(1, dtype=np.int64)   # job number: spinning helpers watch it


_pool = None
_pool_lock = threading.Lock()


def _get_pool():
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = _Pool()
        return _pool


def run_on_threads(fn, args, workers):
    """Call ``fn(*args)`` on the calling thread and on up to ``workers - 1`` helper threads at once
    and return when every call that started has returned. ``fn`` must release the GIL (a Numba
    ``nogil`` function) and be correct however many threads run it, one included; a helper that
    wakes after the caller's call returned does not call it. An exception in any call is raised
    here. A second caller while a job runs (another Python thread) runs ``fn`` alone."""
    if workers <= 1:
        fn(*args)
        return
    pool = _get_pool()
    if not pool.busy.acquire(blocking=False):
        fn(*args)
        return
    try:
        while len(pool.helpers) < workers - 1:
            pool.helpers.append(_Helper(pool))
        with pool.lock:
            pool.job = (fn, args)
            pool.error = None
            pool.gen[0] += 1
        for h in pool.helpers[:workers - 1]:
            h.wake.set()
        try:
            fn(*args)
        finally:
            with pool.lock:
                pool.job = None               # a helper not yet started skips this call
                while pool.active:
                    pool.idle.wait()
                err, pool.error = pool.error, None
        if err is not None:
            raise err
    finally:
        pool.busy.release()
