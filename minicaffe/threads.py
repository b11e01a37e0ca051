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

__all__ = ["run_on_threads"]


class _Helper:
    def __init__(self, pool):
        self.pool = pool
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="minicaffe-helper", daemon=True)
        self.thread.start()

    def _loop(self):
        pool = self.pool
        while True:
            self.wake.wait()
            self.wake.clear()
            with pool.lock:
                job = pool.job
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
