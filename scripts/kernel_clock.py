"""Per-kernel times of a frozen net's forward run as one executor program (``minicaffe.program``).

The profiler (``python -m minicaffe.profile``) times layer by layer through hooks, and with a hook
attached a net does not run as one program: every layer is a program of its own, each waking the
helper threads. This script times the forward as the benchmark and extraction run it: it reads the
time-stamp counter each thread records at every kernel's end (``Program.run(clock=...)``), so a
kernel's time is the stretch from the previous kernel's barrier to its own, on the calling thread.

    python scripts/kernel_clock.py --prototxt minicaffe/data/models/efficientnet-lite0.deploy.prototxt \\
        --blob pool --batch 1 --iterations 200 [--gap 0.1] [--json out.json]

Prints, per kernel: the layer(s) it computes, its kind, the median and minimum microseconds, the
GFLOP/s of its convolutions and inner products, and the threads' waits at its barrier.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _tsc_hz():
    from numba import njit

    from minicaffe.simd import cycles

    @njit
    def tsc():
        return cycles()
    tsc()
    c0, t0 = tsc(), time.perf_counter()
    time.sleep(0.2)
    return (tsc() - c0) / (time.perf_counter() - t0)


def _flops(net, names, batch):
    """2 x multiply-adds of the convolution / inner-product layers named in ``names``."""
    total = 0
    by = {layer.name: layer for layer in net.layers}
    for name in names.split("+"):
        layer = by.get(name)
        if layer is None or layer.type not in ("Convolution", "InnerProduct"):
            continue
        w = net.params[layer.name][0]
        top = net.blob_shapes[layer.tops[0]]
        total += 2 * w.size * (batch if layer.type == "InnerProduct" else top[0] * top[2] * top[3])
    return total


def measure(net, x, fetch, iterations, gap=0.0):
    """Run the frozen ``net``'s program for input ``x`` and blobs ``fetch`` ``iterations`` times
    (after ``gap`` s idle each) with its kernel clock -> (the NetProgram, us: (iterations, kernels)
    each kernel's time (from the first thread's end of the previous kernel to its end of this one),
    wall times in s, waits: per thread (iterations, kernels) us spent at each barrier), or None
    when the forward does not run as a program."""
    for _ in range(3):
        net.forward(x, fetch=fetch)
    progs = [p for p in net.__dict__.get("_programs", {}).values() if p is not None]
    if not progs:
        return None
    prog = progs[-1]
    P = prog.prog
    n = len(P.ops)
    hz = _tsc_hz()
    clocks, walls = [], []
    for _ in range(iterations):
        if gap:
            time.sleep(gap)
        clock = np.zeros((2, n + 1, 2), dtype=np.int64)
        outs = {name: np.empty(prog.blobs[name][3], dtype=np.float32) for name in prog.fetch}
        t = time.perf_counter()
        P.run({prog.input: x, **outs}, clock=clock)
        walls.append(time.perf_counter() - t)
        clocks.append(clock)
    C = np.array(clocks)                             # (iterations, threads, kernels + 1, 2)
    ends = C[:, 0, 1:, 1]
    starts = np.concatenate([C[:, 0, :1, 0], ends[:, :-1]], axis=1)
    us = (ends - starts) / hz * 1e6
    waits = [(C[:, t, 1:, 1] - C[:, t, 1:, 0]) / hz * 1e6 for t in range(2)]
    return prog, us, walls, waits


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prototxt", default="minicaffe/data/models/efficientnet-lite0.deploy.prototxt")
    ap.add_argument("--blob", default="pool", help="blob fetched (with the net's last) (default pool)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--gap", type=float, default=0.0, help="seconds of idle before each timed forward")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.iterations < 1 or args.gap < 0:
        ap.error("--batch and --iterations must be >= 1, --gap >= 0")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from minicaffe.runtime import auto_tune
    auto_tune()
    import minicaffe
    from minicaffe.executor import OP_NAMES
    net = minicaffe.Net(args.prototxt, None, seed=0)
    net.freeze()
    shape = (args.batch,) + tuple(net.input_shapes[net.input_names[0]][1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    fetch = [args.blob, net.layers[-1].tops[0]]
    measured = measure(net, x, fetch, args.iterations, args.gap)
    if measured is None:
        ap.error(f"{args.prototxt}: this net does not run as one program (see minicaffe/program.py)")
    prog, us, walls, waits = measured
    P = prog.prog
    n = len(P.ops)
    rows = []
    for k in range(n):
        label = prog.kernel_layers[k]
        med = float(np.median(us[:, k]))
        products = ("gemm", "dw", "block", "winograd-gemm", "fc")
        fl = _flops(net, label, args.batch) if OP_NAMES[P.ops[k, 0]] in products else 0
        rows.append({"kernel": k, "kind": OP_NAMES[P.ops[k, 0]], "layers": label, "median_us": med,
                     "min_us": float(us[:, k].min()), "gflops": fl / med / 1e3 if fl else None,
                     "wait_us": [float(np.median(w[:, k])) if w[:, k].min() >= 0 else None for w in waits]})
    print(f"{os.path.basename(args.prototxt)}  batch {args.batch}  {args.iterations} forwards"
          f"{f' after {args.gap} s idle each' if args.gap else ' back to back'}, {P.workers} threads")
    print(f"{'#':>3} {'kind':7} {'layers':52} {'med us':>8} {'min us':>8} {'GFLOP/s':>8} {'waits us':>12}")
    for r in rows:
        w = "/".join("-" if v is None else f"{v:.0f}" for v in r["wait_us"])
        g = f"{r['gflops']:.0f}" if r["gflops"] else "-"
        print(f"{r['kernel']:3d} {r['kind']:7} {r['layers'][:52]:52} {r['median_us']:8.1f} {r['min_us']:8.1f} "
              f"{g:>8} {w:>12}")
    wall = np.array(walls) * 1e3
    print(f"sum of kernel medians {us.sum(axis=1).mean() / 1e3:.2f} ms (mean of sums); program run "
          f"median {np.median(wall):.2f} ms, min {wall.min():.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prototxt": args.prototxt, "batch": args.batch, "gap": args.gap, "kernels": rows,
                       "run_ms": {"median": float(np.median(wall)), "min": float(wall.min())}}, f, indent=1)


if __name__ == "__main__":
    main()
