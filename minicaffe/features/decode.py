"""Decoding and resizing images in worker processes, in input order, surviving a decoder that dies.

:class:`DecodePool` runs :func:`minicaffe.preprocess.worker_load` (file -> resized (H, W, 3)
uint8 RGB image, or a reason why not) in processes started by a fork server that preloaded
:mod:`minicaffe.decoder_preload`; :func:`iter_decoded` keeps a bounded number of tasks in flight
and yields the results in the order of the paths, so the caller can batch them while the
decoders work ahead. A decoder process that crashes (a codec segfault, the OOM killer) costs
one failed row, not the run. Decoders run at idle priority by default (:func:`decoder_priority`).
This module does not normalise, forward or write anything.
"""
from __future__ import annotations

import collections
import itertools
import os
import threading
import time

from ..images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE
from ..preprocess import worker_load, worker_load_many

DECODER_PRIORITIES = ("auto", "idle", "normal")


def decoder_priority(choice: str) -> str:
    """``--decoder-priority`` -> ``idle`` or ``normal``.

    Why idle: the forward pass keeps every core busy in parallel regions that wait for their
    slowest thread, so a decoder that preempts one compute thread stalls all of them; SCHED_IDLE
    decoders run while the main process waits or a core idles (measurements: docs/extract.md,
    "Speed"). Idle decoders starve when other CPU-bound jobs fill the machine, hence ``auto``'s
    look at the CPUs at start: normal when less than half a CPU is free.
    """
    if choice != "auto":
        return choice
    free = _free_cpus()
    return "normal" if free is not None and free < 0.5 else "idle"


def _cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]   # user nice system idle iowait irq softirq steal
    return sum(v), v[3] + v[4]


def _free_cpus(sample_s=0.1):
    """CPUs idle over a short sample (Linux /proc/stat; this process sleeps meanwhile), or None."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(sample_s)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (i1 - i0) / max(1, t1 - t0)


class DecodePool:
    """Worker processes that decode + resize images, surviving a worker that dies.

    A decoder that crashes its process (a segfault in a codec, the OOM killer) breaks a
    ``ProcessPoolExecutor`` and every pending task with it. :func:`iter_decoded` then restarts the
    pool, runs the task at the head of the queue alone in a fresh one-worker pool to find out
    whether it is the culprit (it becomes a failed row: "decoder process died"), and resubmits
    the rest. Processes start by forkserver (or spawn), never fork: the parent runs Numba threads.
    """

    #: images to decode from which the decoders use Numba's resize: it is faster per image than
    #: Pillow's (the same pixels), but loading Numba in the fork server delays the first batch, so
    #: short jobs do not pay for it (docs/extract.md, "Speed")
    NUMBA_RESIZE_FROM = 1000
    #: whether this process's fork server preloads Numba (fixed by the first pool: later ones get it free)
    _server_numba = None

    def __init__(self, workers, priority="normal", n_images=None):
        # with the work spread over `workers` decoders the start-up pays for itself later
        self.numba = (n_images is None or n_images >= self.NUMBA_RESIZE_FROM * max(1, workers) / 2
                      or bool(DecodePool._server_numba))
        if DecodePool._server_numba is None:
            DecodePool._server_numba = self.numba
        self.workers, self.priority = workers, priority
        self.ex = self._new(workers, priority, self.numba)

    @staticmethod
    def start_method(numba=True):
        """``forkserver`` where it exists, after asking it to preload :mod:`minicaffe.decoder_preload`
        (NumPy, Pillow and, with ``numba``, Numba's resize kernels: paid once instead of per
        decoder). The preload list counts only if this process has not started its fork server yet."""
        import multiprocessing as mp
        if "forkserver" not in mp.get_all_start_methods():
            return "spawn"
        mp.get_context("forkserver").set_forkserver_preload(
            ["minicaffe.decoder_preload" if numba else "minicaffe.preprocess"])
        return "forkserver"

    @classmethod
    def _new(cls, n, priority="normal", numba=True):
        import concurrent.futures as cf
        import multiprocessing as mp
        return cf.ProcessPoolExecutor(n, mp_context=mp.get_context(cls.start_method(numba)), initializer=_decoder_init,
                                      initargs=(os.getpid(), priority, numba))

    def submit(self, tasks):
        """tasks: a list of worker_load tuples -> future of the list of their results."""
        return self.ex.submit(worker_load_many, tasks)

    def restart(self):
        self.ex.shutdown(wait=False, cancel_futures=True)
        self.ex = self._new(self.workers, self.priority, self.numba)

    def run_isolated(self, task):
        from concurrent.futures.process import BrokenProcessPool
        ex = self._new(1, self.priority, self.numba)
        try:
            return ex.submit(worker_load_many, [task]).result()[0]
        except BrokenProcessPool:
            return task[0], None, "decoder process died while reading this file (crash or out of memory)"
        finally:
            ex.shutdown(wait=False, cancel_futures=True)

    def close(self, wait=True):
        """wait=False (Ctrl-C): drop the queued chunks; decoders finish their current one and exit."""
        self.ex.shutdown(wait=wait, cancel_futures=True)


def _lower_priority(priority):
    """In a decoder process: ``idle`` -> Linux SCHED_IDLE (nice 19 where that does not exist)."""
    if priority != "idle":
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass


def _decoder_init(pid, priority="normal", numba=True):
    """Decoder-process initializer: set the scheduling priority and the resizer, then watch the parent.

    Ctrl-C reaches every process of the terminal's foreground group: decoders ignore it (no
    traceback from each of them), the extracting process stops and shuts the pool down."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from .. import preprocess
    preprocess.BILINEAR_RESIZER = "numba" if numba else "pillow"
    _lower_priority(priority)
    from ..runtime import auto_tune
    auto_tune()     # the allocator setting (the environment ones came with the parent's environment)
    _exit_with_parent(pid)


def _exit_with_parent(pid, period=0.5):
    """In a decoder process (from :func:`_decoder_init`): exit when the extracting process ``pid`` is gone.

    A worker blocks on its task queue forever if the driver is SIGKILLed (its parent is the
    forkserver, which lives on as long as any worker holds its pipe), so without this a killed
    extraction would leave idle decoders behind and the terminal's pipes open."""

    def alive():
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):   # PermissionError: pid reused by another user
            return False
        try:    # a killed driver stays a zombie until its parent reaps it: that is dead too
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except OSError:
            return True                 # no /proc (macOS): os.kill's answer stands

    def watch():
        while alive():
            time.sleep(period)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="minicaffe-parent-watch").start()


def iter_decoded(paths, spec, workers=0, prefetch=128, max_pixels=DEFAULT_MAX_PIXELS,
                 min_size=DEFAULT_MIN_SIZE, pool=None, chunk=8):
    """-> iterator of (i, (H, W, 3) uint8 RGB image | None, reason) in order of ``paths``, up to
    ``prefetch`` ahead in ``pool`` (None: decoded here, one by one, as the caller asks).

    With a pool the first ``prefetch`` tasks are submitted on a thread started before this
    returns (a submission that starts a decoder waits for the fork server's preload), so decoding
    starts while the caller does other work (extract loads the weights meanwhile). A pool task is
    ``chunk`` images: one round trip through the executor's queues per chunk instead of per image."""
    tasks = ((i, p, spec, max_pixels, min_size) for i, p in enumerate(paths))
    if pool is None:
        return (worker_load(t) for t in tasks)
    chunks = iter(lambda: list(itertools.islice(tasks, chunk)), [])
    ahead = max(1, prefetch // chunk)      # chunks in flight
    pending = collections.deque()          # (list of tasks, future), in input order
    first = list(itertools.islice(chunks, ahead))
    errors = []

    def submit_first():
        try:
            for c in first:
                pending.append((c, pool.submit(c)))
        except BaseException as e:  # noqa: BLE001 - re-raised by the iterator, on the caller's thread
            errors.append(e)

    starter = threading.Thread(target=submit_first, daemon=True, name="minicaffe-decoder-start")
    starter.start()
    return _drain_decoded(chunks, pending, pool, ahead, starter, errors)


def _drain_decoded(chunks, pending, pool, ahead, starter, errors):
    from concurrent.futures.process import BrokenProcessPool

    starter.join()
    if errors:
        raise errors[0]

    def head():
        c, fut = pending.popleft()
        try:
            return fut.result()
        except BrokenProcessPool:
            # a decoder died: find the culprit image by image, each alone in a fresh process
            pool.restart()
            results = [pool.run_isolated(t) for t in c]
            for k, (cc, _) in enumerate(pending):
                pending[k] = (cc, pool.submit(cc))
            return results

    for c in chunks:
        pending.append((c, pool.submit(c)))
        if len(pending) >= ahead:
            yield from head()
    while pending:
        yield from head()
