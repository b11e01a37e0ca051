"""Run the CUDA kernel tests under Numba's CUDA simulator in a subprocess.

NUMBA_ENABLE_CUDASIM must be set before numba is imported, so these checks cannot share the
pytest process with the CPU tests. On a machine with a real GPU, run
``python -m pytest tests/cuda_sim_kernels.py`` directly instead.
"""
import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_cuda_kernels_under_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT / "tests"))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda_sim_kernels.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    print(r.stdout[-3000:], r.stderr[-2000:])
    assert r.returncode == 0, r.stdout[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
