"""minicaffe.threads.run_on_threads: the caller always runs the function, a helper that wakes in time
runs it too, a late one is skipped (never waited for), errors reach the caller, one thread runs
it alone. No timing is asserted: a helper's participation is shown by what it did."""
import threading

import pytest

from minicaffe.threads import run_on_threads


def test_a_helper_runs_the_function_beside_the_caller():
    """The caller's call waits (up to 30 s) for a call on another thread: it returns early only
    because a helper ran the function at the same time."""
    met = threading.Event()
    callers = []

    def fn(main):
        me = threading.get_ident()
        callers.append(me)
        if me == main:
            assert met.wait(30), "no helper ran the function"
        else:
            met.set()
    run_on_threads(fn, (threading.get_ident(),), 2)
    assert len(set(callers)) == 2


def test_one_worker_runs_on_the_caller_only_and_errors_reach_the_caller():
    callers = []
    run_on_threads(lambda: callers.append(threading.get_ident()), (), 1)
    assert callers == [threading.get_ident()]

    started = threading.Event()

    def boom(main):
        if threading.get_ident() != main:
            started.set()
            raise ValueError("from a helper")
        assert started.wait(30), "no helper ran the function"
    with pytest.raises(ValueError, match="from a helper"):
        run_on_threads(boom, (threading.get_ident(),), 2)


def test_a_second_caller_runs_alone_while_a_job_runs():
    """Two Python threads calling at once: the second does not wait for the first's helpers."""
    inside = threading.Event()
    release = threading.Event()
    done = []

    def slow():
        if threading.current_thread().name == "first":
            inside.set()
            release.wait(30)

    def first():
        run_on_threads(slow, (), 2)
    t = threading.Thread(target=first, name="first")
    t.start()
    assert inside.wait(30)
    run_on_threads(lambda: done.append(threading.current_thread().name), (), 2)
    release.set()
    t.join(30)
    assert "MainThread" in done
