"""How large can the fc6-fc8 share of a batch-1 CaffeNet forward get on this machine?

DeCAF (and Caffe's logs in ../shared/reference/caffe_time_logs) show the fully connected layers
taking ~60% of a single image's forward time. Our share is lower because our fc layers stream
their 224 MB of weights at the memory bandwidth while the convolutions are compute-bound. This
script bounds the share that im2col convolutions could ever give here:

* profiles full-size CaffeNet (seeded weights) at batch 1 with ``minicaffe.profiling``'s hooks;
* times, for each convolution, only the GEMMs its im2col lowering needs (per group
  (M/g x K/g) @ (K/g x Ho*Wo), NumPy/OpenBLAS, hot caches, best of ``--repeat``): no im2col, no
  bias, no cold cache -- a floor no im2col convolution reaches;
* prints fc / (fc + sum of GEMM floors + the other layers as measured), i.e. the share if every
  convolution ran at the speed of its bare, hot GEMM, next to the measured share.

Not a test: numbers depend on the machine and its load. Example:
    python scripts/fc_share_bound.py --iterations 30
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def gemm_floor_ms(M, K, N, group, repeat, rng):
    """Best-of-``repeat`` ms of ``group`` hot (M/g x K/g) @ (K/g x N) float32 products."""
    a = [rng.standard_normal((M // group, K), dtype=np.float32) for _ in range(group)]
    b = [rng.standard_normal((K, N), dtype=np.float32) for _ in range(group)]
    out = [np.empty((M // group, N), np.float32) for _ in range(group)]
    best = float("inf")
    for _ in range(repeat + 3):          # 3 warm-up products: threads up, caches hot
        t = time.perf_counter()
        for g in range(group):
            np.matmul(a[g], b[g], out=out[g])
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=30, help="timed batch-1 forwards (after 3 warm-up)")
    ap.add_argument("--repeat", type=int, default=30, help="repeats of each GEMM (best is kept)")
    args = ap.parse_args(argv)

    from minicaffe import Net
    from minicaffe.models import MODELS_DIR
    from minicaffe.profiling import profile_net

    net = Net(str(MODELS_DIR / "bvlc_reference_caffenet.deploy.prototxt"), seed=0, backend="cpu")
    run = profile_net(net, batch=1, iterations=args.iterations, warmup=3)
    by_name = {l["name"]: l for l in run["layers"]}
    rng = np.random.default_rng(0)
    print(f"CaffeNet, cpu backend, batch 1, {args.iterations} forwards; {os.cpu_count()} CPUs")
    print(f"{'layer':8s} {'in net median':>14s} {'min':>7s} {'bare hot GEMM':>14s}   GEMM shape per group")
    floor = 0.0
    for layer in net.layers:
        if layer.type != "Convolution":
            continue
        grp = layer.group
        M, Cg, kh, kw = net.params[layer.name][0].shape
        _, _, Ho, Wo = net.blob_shapes[layer.tops[0]]
        ms = gemm_floor_ms(M, Cg * kh * kw, Ho * Wo, grp, args.repeat, rng)
        floor += ms
        r = by_name[layer.name]
        print(f"{layer.name:8s} {r['median_ms']:11.2f} ms {r['min_ms']:7.2f} {ms:11.2f} ms   "
              f"{grp} x ({M // grp} x {Cg * kh * kw}) @ ({Cg * kh * kw} x {Ho * Wo})")
    groups = run["groups"]
    fc, conv = groups["fc"]["median_ms"], groups["conv"]["median_ms"]
    other = run["sum_of_layer_medians_ms"] - fc - conv
    print(f"\nmeasured (medians): conv {conv:.2f} ms, fc {fc:.2f} ms, the rest {other:.2f} ms -> "
          f"fc share {100 * run['fc_share']:.1f}% (of minima {100 * run['fc_share_of_minima']:.1f}%)")
    bound = fc / (fc + floor + other)
    print(f"if every conv took only its bare hot GEMM ({floor:.2f} ms): fc share {100 * bound:.1f}%")
    print(f"for > 50% the convs must take < {fc - other:.2f} ms in the net "
          f"({(fc - other) / floor:.2f}x their bare GEMM time; measured {conv / floor:.2f}x)")
    return 0


if __name__ == "__main__":
    from minicaffe import runtime
    runtime.tune()      # what the tools do at start (minicaffe/runtime.py), before any timed work
    sys.exit(main())
