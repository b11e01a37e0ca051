"""Measure similar-image search: approximate indexes against exact search, and streaming memory.

Part 1 (``ann``): synthetic clustered features (N x D, default 200k x 256: 2000 clusters whose
centres and spread lie in a 64-dimensional subspace, plus isotropic noise, then ReLU as DeCAF's
post-ReLU features), 1000 held-out queries from the same distribution. Exact top-10 with
:func:`minicaffe.search.search`, then each approximate index kind at several search breadths:
build seconds, query ms per query, recall@10 of the raw index and after exact re-scoring, index
file size. Part 2 (``stream``): writes an N x 4096 float32 HDF5 file as ``minicaffe.extract``
lays it out (default 200k rows = 3.2 GB, in --tmp), searches it in a child process and reports
the child's peak RSS and time, then deletes the file. Prints Markdown tables for docs/search.md.

    nice -n 19 python scripts/bench_search.py ann
    nice -n 19 python scripts/bench_search.py stream --rows 200000 --tmp /tmp
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minicaffe.search import ANN_KINDS, ANNIndex, recall_at_k, search


def clustered(n, d, seed, clusters=2000, rank=64, local=0.7, noise=0.5):
    """(n, d) float32 synthetic features: cluster centres in a rank-`rank` subspace, a spread
    within the cluster in that subspace (``local``), isotropic ``noise``, then ReLU. The defaults
    give a nearest neighbour at cosine ~0.74 and the 10th at ~0.67 (real CNN features' range)."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((rank, d)).astype(np.float32) / np.sqrt(rank)
    centres = rng.standard_normal((clusters, rank)).astype(np.float32) @ basis
    out = np.empty((n, d), np.float32)
    for i0 in range(0, n, 50_000):
        i1 = min(n, i0 + 50_000)
        lab = rng.integers(0, clusters, i1 - i0)
        out[i0:i1] = (centres[lab] + local * (rng.standard_normal((i1 - i0, rank)).astype(np.float32) @ basis)
                      + noise * rng.standard_normal((i1 - i0, d)).astype(np.float32))
    return np.maximum(out, 0.0)


def bench_ann(args):
    x = clustered(args.rows + args.queries, args.dim, args.seed)
    q, x = x[:args.queries], x[args.queries:]
    t0 = time.perf_counter()
    _, exact = search(x, q, 10)
    t_exact = time.perf_counter() - t0
    print(f"data: {len(x)} x {args.dim} synthetic clustered, {len(q)} queries; exact top-10 "
          f"{1000 * t_exact / len(q):.2f} ms/query (brute dot, streamed)\n")
    print("| index | params | build s | breadth | query ms | recall@10 | recall@10 re-scored | index MB |")
    print("|---|---|---|---|---|---|---|---|")
    configs = {"faiss-ivf": [8, 32, 55, 128], "faiss-hnsw": [32, 64, 128], "hnswlib": [32, 64, 128]}
    rows = []
    for kind in args.kinds:
        t0 = time.perf_counter()
        try:
            idx = ANNIndex.build(x, kind, seed=args.seed)
        except Exception as e:  # noqa: BLE001 - a missing library is reported, the others still run
            print(f"| {kind} | - | - | - | - | - | - | {e} |")
            continue
        t_build = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            idx.save(os.path.join(tmp, "i"))
            mb = os.path.getsize(os.path.join(tmp, "i")) / 2**20
        for b in configs[kind]:
            idx.set_search_breadth(b)
            t0 = time.perf_counter()
            _, approx = idx.search(q, 10)
            t_q = time.perf_counter() - t0
            _, resc = idx.search_rescored(x, q, 10)
            params = ", ".join(f"{k}={v}" for k, v in idx.params.items() if k not in ("nprobe", "ef"))
            r = (kind, params, t_build, b, 1000 * t_q / len(q), recall_at_k(approx, exact), recall_at_k(resc, exact), mb)
            rows.append(r)
            print("| {} | {} | {:.1f} | {} | {:.3f} | {:.4f} | {:.4f} | {:.0f} |".format(*r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"exact_ms_per_query": 1000 * t_exact / len(q), "rows": rows}, f, indent=1)


CHILD = r"""
import resource, sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
from minicaffe.search import open_features, search
t0 = time.perf_counter()
with open_features(sys.argv[2]) as ff:
    q = ff.read(0, 10) + 0.01
    s, i = search(ff, q, 10)
    assert (i[:, 0] == np.arange(10)).all(), i[:, 0]
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_stream(args):
    import h5py
    d = 4096
    path = os.path.join(args.tmp, f"bench_search_{os.getpid()}.h5")
    rng = np.random.default_rng(args.seed)
    try:
        t0 = time.perf_counter()
        with h5py.File(path, "w") as f:
            rows_per_chunk = max(1, (1 << 20) // (4 * d))        # extract's layout: ~1 MiB chunks of whole rows
            ds = f.create_group("features").create_dataset("fc6", shape=(args.rows, d), dtype=np.float32,
                                                           chunks=(rows_per_chunk, d))
            for i0 in range(0, args.rows, 8192):
                i1 = min(args.rows, i0 + 8192)
                ds[i0:i1] = np.maximum(rng.standard_normal((i1 - i0, d), np.float32), 0)
            f.create_dataset("paths", data=np.asarray([f"img{i}.jpg" for i in range(args.rows)], dtype=object),
                             dtype=h5py.string_dtype())
        size = os.path.getsize(path)
        print(f"wrote {path}: {args.rows} x {d} float32, {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f}s")
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
        out = subprocess.run([sys.executable, "-c", CHILD, root, path], capture_output=True, text=True, check=True)
        secs, rss_kb = out.stdout.split()
        base_code = ("import resource, sys, h5py; sys.path.insert(0, sys.argv[1]); import minicaffe.search; "
                     "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        base = subprocess.run([sys.executable, "-c", base_code, root], capture_output=True, text=True, check=True)
        print(f"| {args.rows} x {d} float32 | {size / 1e9:.2f} GB | 10 queries, k=10 | {float(secs):.1f} s | "
              f"peak RSS {int(rss_kb) / 1024:.0f} MiB (interpreter + imports alone: {int(base.stdout) / 1024:.0f} MiB) |")
    finally:
        if os.path.exists(path):
            os.remove(path)
            print(f"deleted {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ann")
    a.add_argument("--rows", type=int, default=200_000)
    a.add_argument("--dim", type=int, default=256)
    a.add_argument("--queries", type=int, default=1000)
    a.add_argument("--kinds", nargs="+", default=list(ANN_KINDS))
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--json")
    s = sub.add_parser("stream")
    s.add_argument("--rows", type=int, default=200_000)
    s.add_argument("--tmp", default=tempfile.gettempdir())
    s.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    bench_ann(args) if args.cmd == "ann" else bench_stream(args)


if __name__ == "__main__":
    main()
