"""Shared test fixtures: paths to ../shared reference material and a comparison helper."""
import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("MINICAFFE_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "reference" / "caffe_fixtures"
MODELS = ROOT / "minicaffe" / "data" / "models"


def rel_err(ours, ref):
    """max |ours - ref| / max |ref|, the project-wide comparison measure."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def assert_close(ours, ref, tol=1e-4, what=""):
    """Fail with max abs/rel error and where the worst element is."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    diff = np.abs(ours.astype(np.float64) - ref)
    idx = np.unravel_index(int(diff.argmax()), diff.shape) if diff.size else ()
    rel = rel_err(ours, ref) if diff.size else 0.0
    assert rel <= tol, (f"{what}: max abs err {diff.max():.3e} at {idx} (ours {ours[idx]:.6g}, ref {ref[idx]:.6g}), "
                        f"rel err {rel:.3e} > tol {tol:g}")
    return rel


@pytest.fixture(scope="session")
def fixtures_dir():
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES


# ---- the CUDA-simulator run of the small CaffeNet fixture, overlapped with the rest of the suite
_CUDASIM = {}


def pytest_sessionstart(session):
    import subprocess
    import sys
    import tempfile
    if os.environ.get("MINICAFFE_SKIP_CUDASIM_NET") or not FIXTURES.is_dir():
        return
    wanted = [str(a) for a in session.config.args]
    if wanted and not any("test_zz_cuda_sim_caffenet" in a or os.path.isdir(a) for a in wanted):
        return
    out = os.path.join(tempfile.mkdtemp(prefix="minicaffe-cudasim-"), "result.json")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    _CUDASIM["out"] = out
    _CUDASIM["proc"] = subprocess.Popen([sys.executable, str(ROOT / "tests" / "cuda_sim_caffenet.py"),
                                         str(FIXTURES), out], env=env, cwd=ROOT,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def pytest_sessionfinish(session, exitstatus):
    import shutil
    p = _CUDASIM.get("proc")
    if p is not None:
        if p.poll() is None:
            p.kill()
        p.wait()
        if p.stderr is not None:
            p.stderr.close()
    if "out" in _CUDASIM:       # the run's own temporary folder (result.json)
        shutil.rmtree(os.path.dirname(_CUDASIM["out"]), ignore_errors=True)


@pytest.fixture(scope="session")
def cudasim_caffenet():
    return _CUDASIM


def fault_env(**faults):
    """Environment for a subprocess whose decoders misbehave: tests/hooks/sitecustomize.py reads
    ``faults`` (MINICAFFE_TEST_CRASH_ON=..., MINICAFFE_TEST_DECODE_DELAY=...) in every process it starts."""
    path = os.pathsep.join([str(ROOT / "tests" / "hooks"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "MINICAFFE_TEST_HOOKS": "1", **faults}


class lazy_importorskip:
    """``torch = lazy_importorskip("torch")`` at module level: the import (or the skip, when the
    optional package is missing) happens in the first test that uses an attribute, so the tests of a
    file that do not need the package still run without it."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("_"):     # pytest's collection probes module attributes (fixture markers ...)
            raise AttributeError(attr)
        return getattr(pytest.importorskip(self._name), attr)
