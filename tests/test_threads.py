"""minicaffe.threads: a job runs on the caller and on helper threads that enter through the gate
while it is open, never on more threads than asked, alone for a second caller; the gate's
accounting. No timing is asserted: a helper's participation is shown by what it did (a job may be
told to wait, up to ~30 s, for its helpers before it starts)."""
import numpy as np
import pytest
from numba import cfunc, njit, types

from minicaffe import threads
from minicaffe.simd import at_address
from minicaffe.threads import CTL_SIZE, MAIL, WANT, atomic_add

pytestmark = pytest.mark.skipif(not threads.available(), reason="helper threads need Linux futexes")


def _count(ctl_address):
    # the job: count the threads that ran it in mail[0]'s int64 array
    ctl = at_address(ctl_address, (CTL_SIZE,), np.int64)
    atomic_add(at_address(ctl[MAIL], (1,), np.int64), 0, np.int64(1))


_job = cfunc(types.void(types.int64))(_count)


def _run(workers, want=0):
    n = np.zeros(1, dtype=np.int64)
    pool = threads.pool()
    pool.ctl[WANT] = want
    try:
        pool.run(_job.address, np.array([n.ctypes.data], dtype=np.int64), workers)
    finally:
        pool.ctl[WANT] = 0
    return int(n[0])


def test_a_helper_runs_the_job_beside_the_caller_and_no_more_threads_than_asked():
    assert _run(2, want=2) == 2
    # three threads wanted, two allowed: the job waits out its wait for a third (bounded by the
    # limit check, not by time: a helper over the limit leaves at once, so it starts with two)
    assert _run(2) in (1, 2)
    for _ in range(5):
        assert _run(3, want=3) == 3
    assert _run(2, want=2) == 2


def test_one_worker_or_a_second_caller_runs_alone():
    assert _run(1) == 1
    pool = threads.pool()
    with pool.busy:            # a job in progress on another thread
        assert _run(2) == 1


@njit
def _gate_story(ctl, gen):
    # a job for the caller and one helper: a second helper is over the limit, and after the caller
    # closed the gate a late helper is turned away
    threads.open_gate(ctl, gen, 1)
    first = threads.enter(ctl)
    second = threads.enter(ctl)          # over the limit of 2 threads: counted out at once
    threads.leave(ctl)                   # the first helper leaves
    threads.close_gate(ctl)              # returns: every thread that entered has left
    late = threads.enter(ctl)
    return first, second, late, ctl[threads.LEFT]


def test_the_gate_admits_up_to_its_limit_and_turns_late_helpers_away():
    ctl = np.zeros(CTL_SIZE, dtype=np.int64)
    gen = np.zeros(1, dtype=np.int32)
    first, second, late, left = _gate_story(ctl, gen)
    assert (first, second, late, left) == (True, False, False, 2)
    assert gen[0] == 1


def test_the_arena_plan_never_overlaps_arrays_alive_at_once():
    """executor.plan_arena: arrays whose kernel ranges overlap get disjoint, aligned ranges; arrays
    that never live at once may share memory (so the arena is smaller than their sum)."""
    from minicaffe.executor import ALIGN, plan_arena
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 30))
        sizes = [int(s) for s in rng.integers(1, 5000, n)]
        firsts = rng.integers(0, 40, n)
        lives = [(int(f), int(f + rng.integers(0, 6))) for f in firsts]
        offs, size = plan_arena(sizes, lives)
        for i in range(n):
            assert offs[i] % ALIGN == 0 and offs[i] + sizes[i] <= size
            for j in range(i):
                if lives[i][0] <= lives[j][1] and lives[j][0] <= lives[i][1]:
                    assert offs[i] + sizes[i] <= offs[j] or offs[j] + sizes[j] <= offs[i], (i, j, offs, lives)
    offs, size = plan_arena([100, 100, 100], [(0, 1), (1, 2), (2, 3)])
    assert offs[0] == offs[2] and size == 2 * 112


def test_numba_workers_are_kept_off_the_callers_cpu():
    """Pool.keep_numba_workers_off finds Numba's worker threads (threads of this process, not the
    caller) and lets them run on every CPU of the process but the caller's."""
    import os

    import numba
    if numba.get_num_threads() < 2 or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs and two Numba threads")
    pool = threads.pool()
    pool.keep_numba_workers_off()
    import threading
    tasks = {int(t) for t in os.listdir("/proc/self/task")}
    assert pool.omp and set(pool.omp) <= tasks and threading.get_native_id() not in pool.omp
    for tid in pool.omp:
        assert os.sched_getaffinity(tid) == os.sched_getaffinity(0) - {pool.omp_cpu}
