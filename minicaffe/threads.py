"""Helper threads that run compiled code beside the caller without ever taking the GIL.

The channels-last kernels (:mod:`minicaffe.executor`) split their work into tasks that the threads
running them take from shared counters, so any number of threads can run them, and one alone
finishes them. A :class:`Pool` keeps helper threads for that: each is a Python thread whose whole
life is one GIL-free Numba loop (:func:`_helper_loop`) that waits for the next job on a futex,
runs it, and waits again. A job is
posted through the shared int64 array ``ctl`` (a gate, counters, and a mailbox the job reads its
arguments from) and the int32 job number ``gen``:

- the caller fills the mailbox (the job: the address of a C function ``void f(int64 ctl_address)``,
  e.g. a Numba ``cfunc``, and its arguments), opens the gate and wakes sleeping helpers (:func:`open_gate`),
  then runs the job itself at once;
- a helper that sees a new job number enters through the gate (:func:`enter`) only while it is
  open, and counts its exit (:func:`leave`);
- the caller, done, closes the gate and waits for the helpers that entered to leave
  (:func:`close_gate`): a helper that has not started is never waited for, and skips the job.

Waking a helper is one futex syscall, and nothing on either side needs the GIL: a Python
``threading`` hand-off (an Event, then the GIL for the woken thread, then a Condition back) costs
~100 us here against ~17 us, and after an idle gap far more (each hand-off wakes a halted virtual
CPU). Helpers spin a short while (:data:`HELPER_SPINS`) before they sleep, so back-to-back jobs
wake no one. Linux only (the futex); elsewhere :func:`available` is False and jobs run on the
caller alone.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .simd import element_ptr, emit_pause

__all__ = ["Pool", "pool", "available", "HELPER_SPINS"]

#: pause-loop iterations a helper spins (~26 ns each on Zen 4: ~65 us) for the next job before it
#: sleeps on the futex: longer than the Python between two layers of a forward, so a
#: layer-by-layer pass wakes the helpers once; short enough that a CPU shared with another process
#: is given back at once
HELPER_SPINS = 2500

#: ``ctl`` slots: the gate (threads entered, plus CLOSED once the caller is done), threads left,
#: helpers asleep on the futex, the most threads the job may run on, the job's function address,
#: the threads a job waits for before it starts (tests; 0: none), the first mailbox slot (the job's
#: arguments), and the array's size
GATE, LEFT, SLEEPERS, LIMIT, FN, WANT, MAIL, CTL_SIZE = 0, 1, 2, 3, 4, 5, 8, 32
CLOSED = 1 << 40
#: pause iterations a job waits for WANT threads before it starts without them (~30 s)
WANT_SPINS = 1 << 30

_X86 = platform.machine() in ("x86_64", "AMD64")
_SYS_FUTEX, _SYS_GETTID = (202, 186) if _X86 else (98, 178)     # x86-64, aarch64
_FUTEX_WAIT_PRIVATE, _FUTEX_WAKE_PRIVATE = 128, 129
_I32, _I64 = ir.IntType(32), ir.IntType(64)


def available():
    """True where helper threads can sleep on a futex (Linux on x86-64 or aarch64)."""
    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64", "aarch64")


@intrinsic
def atomic_add(typingctx, arr, index, value):
    """Atomically add ``value`` to ``arr[index]`` (a 1-D int32 / int64 array), sequentially
    consistent -> the old value."""
    sig = arr.dtype(arr, types.int64, arr.dtype)

    def codegen(context, builder, signature, args):
        ptr = element_ptr(context, builder, signature.args[0], args[0], args[1])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return sig, codegen


@intrinsic
def atomic_load(typingctx, arr, index):
    """``arr[index]`` read atomically with acquire ordering (1-D int32 / int64 array)."""
    sig = arr.dtype(arr, types.int64)

    def codegen(context, builder, signature, args):
        ptr = element_ptr(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", signature.args[0].dtype.bitwidth // 8)

    return sig, codegen


@intrinsic
def atomic_store(typingctx, arr, index, value):
    """``arr[index] = value`` written atomically with release ordering."""
    sig = types.void(arr, types.int64, arr.dtype)

    def codegen(context, builder, signature, args):
        ptr = element_ptr(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, "release", signature.args[0].dtype.bitwidth // 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def pause(typingctx):
    """The CPU's spin-wait hint (x86 ``pause``; nothing elsewhere)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        emit_pause(builder)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _futex(typingctx, word, op, value):
    """``syscall(SYS_futex, &word[0], op, value, NULL)`` on an int32 array (libc's ``syscall`` by
    name: the compiled code keeps no address and caches)."""
    sig = types.int64(word, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        w, op, value = args
        ptr = element_ptr(context, builder, signature.args[0], w, ir.Constant(_I64, 0))
        mod = builder.module
        fn = mod.globals.get("syscall") or ir.Function(mod, ir.FunctionType(_I64, [_I64], var_arg=True),
                                                       name="syscall")
        return builder.call(fn, [ir.Constant(_I64, _SYS_FUTEX), builder.ptrtoint(ptr, _I64), op, value,
                                 ir.Constant(_I64, 0)])

    return sig, codegen


@intrinsic
def call_with(typingctx, fn_address, value):
    """Call the C function at ``fn_address`` (``void f(int64)``, e.g. a Numba ``cfunc``'s address)
    with ``value``: a call through an address, so the callee is neither linked into nor
    re-optimised with the caller."""
    sig = types.void(types.int64, types.int64)

    def codegen(context, builder, signature, args):
        fty = ir.FunctionType(ir.VoidType(), [_I64])
        builder.call(builder.inttoptr(args[0], fty.as_pointer()), [args[1]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def call_kernel(typingctx, fn_address, a, b):
    """Call the C function at ``fn_address`` (``int64 f(int64, int64)``) with ``a``, ``b`` -> its
    result (as :func:`call_with`, a call through an address)."""
    sig = types.int64(types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        fty = ir.FunctionType(_I64, [_I64, _I64])
        return builder.call(builder.inttoptr(args[0], fty.as_pointer()), [args[1], args[2]])

    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def leave(ctl):
    atomic_add(ctl, LEFT, 1)


@njit(cache=True, nogil=True, inline="always")
def open_gate(ctl, gen, helpers):
    """Caller, mailbox filled: let helpers in, wake those asleep, and enter (the first thread)."""
    atomic_store(ctl, LEFT, 0)
    atomic_store(ctl, LIMIT, helpers + 1)
    atomic_store(ctl, GATE, 0)
    if helpers > 0:
        atomic_add(gen, 0, np.int32(1))
        if atomic_load(ctl, SLEEPERS) > 0:
            _futex(gen, _FUTEX_WAKE_PRIVATE, helpers)
    atomic_add(ctl, GATE, 1)
    want = atomic_load(ctl, WANT)
    spins = 0
    while atomic_load(ctl, GATE) < want and spins < WANT_SPINS:
        pause()
        spins += 1


@njit(cache=True, nogil=True, inline="always")
def close_gate(ctl):
    """Caller, its share done: shut the gate, then wait until every helper that entered has left
    (after the job's last barrier that is a few instructions each)."""
    entered = atomic_add(ctl, GATE, CLOSED)
    while atomic_load(ctl, LEFT) < entered - 1:
        pause()


@njit(cache=True, nogil=True, inline="always")
def enter(ctl):
    """Helper: True when it may run the posted job (the gate is open and the job has fewer threads
    than its limit): it must then :func:`leave`."""
    old = atomic_add(ctl, GATE, 1)
    if old >= CLOSED:
        return False
    if old >= ctl[LIMIT]:
        leave(ctl)            # counted as entered by the caller: counted out
        return False
    return True


@njit(cache=True, nogil=True, inline="always")
def next_job(ctl, gen, seen, spins):
    """Helper: wait until the job number moves off ``seen`` -> the new number. Spins ``spins``
    pauses, then sleeps on the futex (counted in SLEEPERS, so a caller wakes only when someone
    sleeps: the count goes up before the number is checked again, the caller's goes up before it
    reads the count, both by atomic read-modify-writes)."""
    for _ in range(spins):
        g = atomic_load(gen, 0)
        if g != seen:
            return g
        pause()
    atomic_add(ctl, SLEEPERS, 1)
    g = atomic_load(gen, 0)
    while g == seen:
        _futex(gen, _FUTEX_WAIT_PRIVATE, seen)
        g = atomic_load(gen, 0)
    atomic_add(ctl, SLEEPERS, -1)
    return g


@njit(cache=True, nogil=True)
def _helper_loop(ctl, gen, spins, seen):
    # a helper thread's life, without the GIL; seen: the job number when it was made (a job
    # posted while the thread starts is one it takes)
    while True:
        seen = next_job(ctl, gen, seen, spins)
        if enter(ctl):
            call_with(ctl[FN], ctl.ctypes.data)
            leave(ctl)


@njit(cache=True, nogil=True)
def run_job(ctl, gen, helpers, fn):
    """Run ``fn(address of ctl)`` here and on up to ``helpers`` helpers (mailbox filled)."""
    ctl[FN] = fn
    open_gate(ctl, gen, helpers)
    call_with(fn, ctl.ctypes.data)
    close_gate(ctl)


class Pool:
    """Helper threads (:func:`_helper_loop` on this pool's ``ctl`` and ``gen``) and the one job at
    a time they run: :meth:`run`. Made again in a forked child (:func:`pool`)."""

    def __init__(self):
        self.ctl = np.zeros(CTL_SIZE, dtype=np.int64)
        self.ctl[GATE] = CLOSED
        self.gen = np.zeros(1, dtype=np.int32)
        self.helpers = []
        self.busy = threading.Lock()
        self.pid = os.getpid()
        self.cpus = os.sched_getaffinity(0)
        self.cpu = -1                 # the caller's CPU the helpers were last kept off
        self.omp = None               # Numba's OpenMP workers' thread ids, once found
        self.omp_cpu = -1
        self._getcpu = ctypes.CDLL(None).sched_getcpu

    def run(self, fn, mail, workers):
        """Run the C function at address ``fn`` (``void f(int64 ctl_address)``, correct on any
        number of threads, one included) on the caller and up to ``workers - 1`` helpers, its
        arguments ``mail`` (int64 values) at ``ctl[MAIL:]``. A second caller while a job runs, or
        where :func:`available` is False, runs it alone."""
        if workers > 1 and available() and self.busy.acquire(blocking=False):
            try:
                while len(self.helpers) < workers - 1:
                    t = threading.Thread(target=_helper_loop, args=(self.ctl, self.gen, HELPER_SPINS, self.gen[0]),
                                         name=f"minicaffe-helper-{len(self.helpers)}", daemon=True)
                    t.start()
                    self.helpers.append(t)
                    self.cpu = -1
                self._keep_off(self._getcpu())
                self.ctl[MAIL:MAIL + len(mail)] = mail
                run_job(self.ctl, self.gen, workers - 1, fn)
            finally:
                self.busy.release()
            return
        ctl = np.zeros(CTL_SIZE, dtype=np.int64)
        ctl[MAIL:MAIL + len(mail)] = mail
        run_job(ctl, np.zeros(1, dtype=np.int32), 0, fn)

    def keep_numba_workers_off(self):
        """Keep Numba's worker threads (its OpenMP pool, which runs the layer-by-layer forward's
        parallel kernels), too, off the calling thread's CPU: the same wake-up placement stalls
        them (CaffeNet at batch 1 after 0.1 s idle: 28 -> 17 ms median). They are found once, by
        a parallel loop that reports each thread's id. Nothing where :func:`available` is False
        or one thread runs."""
        if not available() or numba.get_num_threads() < 2:
            return
        if self.omp is None:
            ids = np.zeros(4 * numba.get_num_threads(), dtype=np.int64)
            _thread_ids(ids)
            self.omp = sorted(set(ids.tolist()) - {threading.get_native_id(), 0})
            self.omp_cpu = -1
        cpu = self._getcpu()
        if cpu != self.omp_cpu:
            self.omp_cpu = cpu
            _set_affinity(self.omp, self.cpus - {cpu})

    def _keep_off(self, cpu):
        # Helpers may run on any of the process's CPUs but the caller's. Left to itself, the kernel
        # wakes a helper on the waker's CPU (its cache is warm), where it waits for the caller's
        # time slice to end (~3.5 ms here) while another CPU idles.
        if cpu == self.cpu or cpu < 0:
            return
        self.cpu = cpu
        _set_affinity([t.native_id for t in self.helpers], self.cpus - {cpu})


def _set_affinity(tids, cpus):
    if not cpus:
        return
    for t in tids:
        try:
            os.sched_setaffinity(t, cpus)
        except OSError:      # a thread's CPUs are a hint (it may have ended): work runs wherever it is
            pass


@intrinsic
def _gettid(typingctx):
    """The calling thread's kernel id (``syscall(SYS_gettid)``)."""
    sig = types.int64()

    def codegen(context, builder, signature, args):
        mod = builder.module
        fn = mod.globals.get("syscall") or ir.Function(mod, ir.FunctionType(_I64, [_I64], var_arg=True),
                                                       name="syscall")
        return builder.call(fn, [ir.Constant(_I64, _SYS_GETTID)])

    return sig, codegen


@njit(parallel=True, cache=True)
def _thread_ids(out):
    # out[i] = the id of the thread running iteration i (each iteration long enough that every
    # thread of the pool takes some)
    for i in prange(out.shape[0]):
        acc = 0.0
        for j in range(100000):
            acc += j * 1e-12
        out[i] = _gettid() if acc >= 0.0 else 0


_pool = None
_pool_lock = threading.Lock()


def pool():
    """This process's :class:`Pool`."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = Pool()
        return _pool
