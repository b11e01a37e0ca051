"""Training parity with real BVLC Caffe: the same solver prototxt, the same starting caffemodel
(written by real Caffe), the same data, 50 iterations; the loss curve must match real Caffe's.

The reference curves and the starting weights are in tests/fixtures/pycaffe/ (regenerate with
scripts/make_pycaffe_fixtures.py and a built pycaffe). The loop is the one that script runs.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import minicaffe.pycaffe as caffe

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "pycaffe")
ITERS = 50
TOL = 1e-4


def _curve(solver_file, init, x, y):
    solver = caffe.get_solver(solver_file)
    solver.net.copy_from(init)
    losses = []
    for it in range(ITERS):
        solver.net.blobs["data"].data[...] = x[it % len(x)]
        solver.net.blobs["label"].data[...] = y[it % len(y)]
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    return np.array(losses), solver


@pytest.fixture
def fixture_dir(tmp_path, monkeypatch):
    for f in os.listdir(FIX):
        shutil.copy(os.path.join(FIX, f), tmp_path)
    monkeypatch.chdir(tmp_path)  # the solver prototxts name the net relative to the working folder
    return tmp_path


@pytest.mark.parametrize("solver", ["sgd", "nesterov", "adam", "adagrad", "rmsprop", "adadelta"])
def test_loss_curve_matches_real_caffe(fixture_dir, solver):
    ref = np.load(os.path.join(FIX, "tiny_curves.npz"))
    losses, s = _curve(f"tiny_solver_{solver}.prototxt", "tiny_init.caffemodel", ref["data"], ref["labels"])
    want = ref[f"loss_{solver}"]
    err = np.abs(losses - want)
    i = int(err.argmax())
    assert err.max() <= TOL, (f"{solver}: max abs loss difference {err.max():.3g} at iteration {i} "
                              f"(ours {losses[i]:.7f}, Caffe {want[i]:.7f})")
    assert s.iter == ITERS
    assert want[-1] < 0.6 * want[0], "the reference run must actually learn, or the test shows little"


def test_final_weights_match_real_caffe(fixture_dir):
    ref = np.load(os.path.join(FIX, "tiny_curves.npz"))
    _, s = _curve("tiny_solver_sgd.prototxt", "tiny_init.caffemodel", ref["data"], ref["labels"])
    for name, blobs in s.net.params.items():
        for i, b in enumerate(blobs):
            want = ref[f"final_{name}/{i}"]
            err = np.abs(b.data - want)
            assert err.max() <= TOL, (f"{name}[{i}] after {ITERS} SGD steps: max abs error {err.max():.3g} at "
                                      f"{np.unravel_index(err.argmax(), err.shape)}")
