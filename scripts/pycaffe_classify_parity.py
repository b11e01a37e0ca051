"""Caffe's own ``python/classify.py``, unchanged, on real pycaffe and on minicaffe's drop-in: same numbers?

Writes a seeded full-size CaffeNet as a real ``.caffemodel`` (minicaffe's seeded weights, fc8
scaled down so the softmax is not one-hot), copies scikit-learn's two sample photos (JPEG) into a
folder, and runs ``classify.py`` from the given Caffe source tree twice — once with real pycaffe
(imported as /work/shared/tools/caffe/pycaffe_import.py does), once through ``python -m
minicaffe.pycaffe`` — with a per-channel mean (pycaffe's Classifier rejects the 256x256 mean image
for a 227 input). Prints the max abs difference of the two prediction arrays and whether the
top-5 classes agree; exit status 1 when the difference exceeds ``--tol``.

usage: python scripts/pycaffe_classify_parity.py [--caffe-build /work/caffe-build] [--center-only]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = os.path.join(REPO, "minicaffe", "data", "models", "bvlc_reference_caffenet.deploy.prototxt")
MEAN = os.path.join(REPO, "minicaffe", "data", "models", "ilsvrc_2012_mean.npy")
SHIM = "/work/shared/tools/caffe"


def make_inputs(d):
    sys.path.insert(0, REPO)
    from minicaffe import Net
    from minicaffe.io.caffemodel import write_caffemodel

    net = Net(PROTO, None, backend="numpy", seed=0)
    params = {k: [a.copy() for a in v] for k, v in net.params.items()}
    params["fc8"][0] *= 0.02  # keep the seeded logits small: a spread-out softmax is a stricter test
    types = {l.name: l.type for l in net.layers}
    model = os.path.join(d, "caffenet_seeded.caffemodel")
    write_caffemodel(model, [(k, types[k], v) for k, v in params.items()], name="CaffeNet")
    mean = os.path.join(d, "mean_bgr.npy")
    np.save(mean, np.load(MEAN).mean(1).mean(1))  # (3,) per-channel BGR mean
    import sklearn.datasets
    imgs = os.path.join(d, "images")
    os.makedirs(imgs)
    src = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    for f in sorted(os.listdir(src)):
        if f.endswith(".jpg"):
            shutil.copy(os.path.join(src, f), imgs)
    return model, mean, imgs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--caffe-build", default="/work/caffe-build")
    ap.add_argument("--center-only", action="store_true")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    classify = os.path.join(args.caffe_build, "caffe", "python", "classify.py")
    if not os.path.isfile(classify):
        print(f"error: {classify}: no such file", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="pycaffe-parity-") as d:
        model, mean, imgs = make_inputs(d)
        common = [imgs, None, "--model_def", PROTO, "--pretrained_model", model, "--mean_file", mean]
        if args.center_only:
            common.append("--center_only")
        real_out, ours_out = os.path.join(d, "real.npy"), os.path.join(d, "ours.npy")
        env = dict(os.environ, MINICAFFE_CAFFE_BUILD=args.caffe_build, GLOG_minloglevel="2")
        runner = (f"import runpy, sys; sys.path.insert(0, {SHIM!r}); from pycaffe_import import caffe; "
                  "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")
        real_cmd = [sys.executable, "-c", runner, classify] + [real_out if a is None else a for a in common]
        subprocess.run(real_cmd, check=True, env=env, cwd=d)
        env_ours = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        ours_cmd = [sys.executable, "-m", "minicaffe.pycaffe", classify] + [ours_out if a is None else a
                                                                          for a in common]
        subprocess.run(ours_cmd, check=True, env=env_ours, cwd=d)
        real, ours = np.load(real_out), np.load(ours_out)
    diff = np.abs(real.astype(np.float64) - ours)
    i = np.unravel_index(int(diff.argmax()), diff.shape)
    top5_real = np.argsort(-real, axis=1)[:, :5]
    top5_ours = np.argsort(-ours, axis=1)[:, :5]
    res = {"images": int(real.shape[0]), "classes": int(real.shape[1]), "oversample": not args.center_only,
           "max_abs_diff": float(diff.max()), "at": [int(v) for v in i],
           "max_prob": float(real.max()), "top5_equal": bool((top5_real == top5_ours).all()),
           "top1_real": top5_real[:, 0].tolist(), "top1_ours": top5_ours[:, 0].tolist()}
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if diff.max() <= args.tol and res["top5_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
