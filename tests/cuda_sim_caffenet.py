"""The small CaffeNet fixture through the cuda backend under NUMBA_ENABLE_CUDASIM=1.

Started in the background by tests/conftest.py at session start (the simulator needs ~3 minutes
of one core for one 227x227 image), checked by tests/test_zz_cuda_sim_caffenet.py. Writes a JSON
result: per-blob relative error against real Caffe's blobs for the first image of the batch.
"""
import json
import os
import sys
import time

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

import numpy as np

import minicaffe


def main(fixtures, out):
    t0 = time.time()
    res = {"ok": False}
    try:
        net = minicaffe.Net(os.path.join(fixtures, "caffenet_small.prototxt"),
                            os.path.join(fixtures, "caffenet_small.caffemodel"), backend="cuda")
        x = np.load(os.path.join(fixtures, "caffenet_small_input_227.npy"))[:1]
        blobs = np.load(os.path.join(fixtures, "caffenet_small_blobs_227.npz"))
        got = net.forward(x)
        errs = {}
        for k in blobs.files:
            ref = blobs[k][:1].astype(np.float64)
            errs[k] = float(np.abs(got[k] - ref).max() / max(np.abs(ref).max(), 1e-30))
        res = {"ok": True, "rel_err": errs}
    except Exception as e:  # reported by the test
        res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    res["seconds"] = time.time() - t0
    with open(out + ".tmp", "w") as f:
        json.dump(res, f)
    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
