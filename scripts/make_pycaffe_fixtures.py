"""Regenerate tests/fixtures/pycaffe/ from real BVLC pycaffe: the training-parity reference.

Real Caffe builds the tiny net of ``tiny_train.prototxt`` in the TRAIN phase with its own fillers
(``caffe.set_random_seed(7)``) and saves it as ``tiny_init.caffemodel``; then, for each of the
SGD, Nesterov, Adam, AdaGrad, RMSProp and AdaDelta solver prototxts, it loads that caffemodel,
and for 50 iterations writes batch ``it % 3`` of the seeded data into the Input blobs and runs
``solver.step(1)``, recording ``net.blobs['loss']``. ``tiny_curves.npz`` keeps the data, the
labels, the loss curves and the SGD run's final parameters. tests/test_pycaffe_training.py
replays the same loop on minicaffe's drop-in and compares. Needs the real pycaffe (see /work/shared/tools/caffe).

usage: MINICAFFE_CAFFE_BUILD=/work/caffe-build python scripts/make_pycaffe_fixtures.py
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(REPO, "tests", "fixtures", "pycaffe")
SOLVERS = ("sgd", "nesterov", "adam", "adagrad", "rmsprop", "adadelta")
ITERS = 50


def fixture_data():
    """-> (data (3, 6, 2, 6, 6) float32, labels (3, 6) float32): three seeded batches."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 6, 2, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, (3, 6)).astype(np.float32)
    return x, y


def train_curve(caffe, solver_file, init, x, y):
    """The parity loop, for real pycaffe or the drop-in: -> (losses (ITERS,), final params)."""
    solver = caffe.get_solver(solver_file)
    solver.net.copy_from(init)
    losses = []
    for it in range(ITERS):
        solver.net.blobs["data"].data[...] = x[it % len(x)]
        solver.net.blobs["label"].data[...] = y[it % len(y)]
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    params = {f"{k}/{i}": p.data.copy() for k, v in solver.net.params.items() for i, p in enumerate(v)}
    return np.array(losses), params


def main():
    sys.path.insert(0, "/work/shared/tools/caffe")
    from pycaffe_import import caffe

    caffe.set_mode_cpu()
    x, y = fixture_data()
    with tempfile.TemporaryDirectory(prefix="pycaffe-fix-") as d:
        for f in os.listdir(FIX):
            if f.endswith(".prototxt"):
                shutil.copy(os.path.join(FIX, f), d)
        os.chdir(d)
        caffe.set_random_seed(7)
        net = caffe.Net("tiny_train.prototxt", caffe.TRAIN)
        net.save("tiny_init.caffemodel")
        out = {"data": x, "labels": y}
        for name in SOLVERS:
            losses, params = train_curve(caffe, f"tiny_solver_{name}.prototxt", "tiny_init.caffemodel", x, y)
            out[f"loss_{name}"] = losses
            print(name, "loss", losses[0], "->", losses[-1])
            if name == "sgd":
                out.update({f"final_{k}": v for k, v in params.items()})
        shutil.copy("tiny_init.caffemodel", FIX)
    np.savez_compressed(os.path.join(FIX, "tiny_curves.npz"), **out)
    print("wrote", FIX)


if __name__ == "__main__":
    main()
