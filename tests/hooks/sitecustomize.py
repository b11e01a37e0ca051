"""Test-only faults for the processes a test starts: imported by Python at start-up (``site``) when
a test puts this folder on PYTHONPATH with ``MINICAFFE_TEST_HOOKS=1``; minicaffe never imports it.

Extract's decoders are forked from a fork server and Dask's workers are spawned, so a monkeypatch
in the test process cannot reach them; this file patches ``minicaffe.preprocess.worker_load`` (the
decode entry of both) in every such process instead. Read at each call, so a test can switch a
fault on in running processes (Dask: ``client.run``):

- ``MINICAFFE_TEST_CRASH_ON=TEXT``: a decoder process SIGKILLs itself on a path containing TEXT,
  as the OOM killer or a crashing codec would (never the test's or the driver's own process);
- ``MINICAFFE_TEST_DECODE_DELAY=SECONDS``: every decode sleeps first, so a kill lands mid-run.

Python imports only the first ``sitecustomize`` on the path: one installed by the system is
loaded after this one by name, so its effects are kept.
"""
import os

if os.environ.get("MINICAFFE_TEST_HOOKS") == "1":
    import functools
    import multiprocessing
    import signal
    import time

    import minicaffe.preprocess as _pre

    _real = _pre.worker_load

    @functools.wraps(_real)
    def _worker_load(args):
        delay = float(os.environ.get("MINICAFFE_TEST_DECODE_DELAY", "0") or 0)
        if delay:
            time.sleep(delay)
        crash_on = os.environ.get("MINICAFFE_TEST_CRASH_ON")
        if crash_on and crash_on in os.fspath(args[1]) and multiprocessing.parent_process() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return _real(args)

    _pre.worker_load = _worker_load


def _chain():
    """Run the next sitecustomize on the path, if any (this one shadows it)."""
    import importlib.util
    import pathlib
    import sys
    here = pathlib.Path(__file__).resolve().parent
    for entry in sys.path:
        cand = pathlib.Path(entry or ".") / "sitecustomize.py"
        if cand.is_file() and cand.resolve().parent != here:
            spec = importlib.util.spec_from_file_location("_next_sitecustomize", cand)
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_chain()
