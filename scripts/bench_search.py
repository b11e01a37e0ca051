"""Measure similar-image search: approximate indexes against exact search, and streaming memory.

Part 1 (``ann``): synthetic clustered features (N x D, default 200k x 256: 2000 clusters whose
centres and spread lie in a 64-dimensional subspace, plus isotropic noise, then ReLU as DeCAF's
post-ReLU features), 1000 held-out queries from the same distribution. Exact top-10 with
:func:`minicaffe.similarity.search`, then each approximate index kind at several search breadths:
build seconds, query ms per query, recall@10 of the raw index and after exact re-scoring, index
file size. Part 2 (``stream``): writes an N x 4096 float32 HDF5 file as ``minicaffe.extract``
lays it out (default 200k rows = 3.2 GB, in --tmp), searches it in a child process and reports
the child's peak RSS and time, then deletes the file. Part 3 (``photos``): the near-duplicate
collection of the tests (tests/search_photos.py: six real photos + mirror / crop / JPEG copies)
through the embedded EfficientNet-Lite0: recall of each image's own copies, the cosine gap,
rotated query copies, and the HTML report with its screenshot (``--screenshot
docs/search_report.png``). Prints Markdown tables for docs/search.md.

    nice -n 19 python scripts/bench_search.py ann
    nice -n 19 python scripts/bench_search.py stream --rows 200000 --tmp /tmp
    nice -n 19 python scripts/bench_search.py photos --screenshot docs/search_report.png
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

from minicaffe.similarity import ANN_KINDS, ANNIndex, recall_at_k, search


def clustered(n, d, seed, clusters=2000, rank=64, local=0.7, noise=0.5):
    """(n, d) float32 synthetic features: cluster centres in a rank-`rank` subspace, a spread
    within the cluster in that subspace (``local``), isotropic ``noise``, then ReLU. The defaults
    put neighbour cosines in real CNN features' range (docs/search.md)."""
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
            r = (kind, params, t_build, b, 1000 * t_q / len(q), recall_at_k(approx, exact),
                 recall_at_k(resc, exact), mb)
            rows.append(r)
            print("| {} | {} | {:.1f} | {} | {:.3f} | {:.4f} | {:.4f} | {:.0f} |".format(*r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"exact_ms_per_query": 1000 * t_exact / len(q), "rows": rows}, f, indent=1)


CHILD = r"""
import sys, time, numpy as np
sys.path.insert(0, sys.argv[1])
from minicaffe.similarity import open_features, search

def status(key):   # kB from /proc/self/status: VmRSS now, VmHWM the peak so far
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))

with open_features(sys.argv[2]) as ff:
    q = ff.read(0, 10) + 0.01
    before, t0 = status("VmRSS"), time.perf_counter()
    s, i = search(ff, q, 10, chunk_rows=int(sys.argv[3]) or None)
    assert (i[:, 0] == np.arange(10)).all(), i[:, 0]
print(time.perf_counter() - t0, before, status("VmHWM"))
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
        print("| file | chunk rows | 10 queries, k=10 | RSS before the search | peak RSS |\n|---|---|---|---|---|")
        for chunk in (0, 1024):
            out = subprocess.run([sys.executable, "-c", CHILD, root, path, str(chunk)], capture_output=True,
                                 text=True, check=True)
            secs, before, peak = out.stdout.split()
            print(f"| {args.rows} x {d} float32, {size / 1e9:.2f} GB | {chunk or 'default (4096)'} | "
                  f"{float(secs):.1f} s | {int(before) / 1024:.0f} MiB | {int(peak) / 1024:.0f} MiB |", flush=True)
    finally:
        if os.path.exists(path):
            os.remove(path)
            print(f"deleted {path}")


def bench_photos(args):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from search_photos import group_recall, make_collection, stem

    from minicaffe import html_report as report
    from minicaffe.cli import run
    from minicaffe.extract import main as extract_main
    from minicaffe.similarity import QueryEncoder, l2_normalize, open_features, search_rows
    from minicaffe.tools.search import main as search_main
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)   # paths in the file and the page stay short: coll/chelsea.png
        group = make_collection("coll", "queries")
        assert run(extract_main, ["coll", "-o", "coll.h5", "--workers", "0", "-q"]) == 0
        with open_features("coll.h5") as ff:
            n = len(ff)
            x = l2_normalize(ff.read(0, n))
            g = np.asarray([group[os.path.basename(p)] for p in ff.paths])
            sim = x @ x.T
            mate = (g[:, None] == g[None, :]) & ~np.eye(n, dtype=bool)
            print(f"{n} images ({len(set(g))} photos x 4), EfficientNet-Lite0 {ff.dataset} ({ff.dim})")
            print(f"own copies: cosine {sim[mate].min():.3f} .. {sim[mate].max():.3f}; other photos: "
                  f"{sim[g[:, None] != g[None, :]].min():.3f} .. {sim[g[:, None] != g[None, :]].max():.3f}")
            print("\n| method | recall@1 | recall@3 | own copies above every other photo |\n|---|---|---|---|")
            methods = [("exact", None)]
            try:
                methods.append(("faiss-ivf", ANNIndex.build(ff, "faiss-ivf")))
            except Exception as e:  # noqa: BLE001 - FAISS is optional
                print(f"(faiss-ivf skipped: {e})")
            for name, idx in methods:
                s, j = search_rows(ff, np.arange(n), k=n - 1, index=idx)
                above = sum(bool((g[j[i][:3]] == g[i]).all()) for i in range(n))
                print(f"| {name} | {group_recall(ff.paths, j[:, :1], group):.3f} | "
                      f"{group_recall(ff.paths, j[:, :3], group):.3f} | {above}/{n} |")
            queries = sorted(os.listdir("queries"))
            f, _ = QueryEncoder(ff).encode([os.path.join("queries", q) for q in queries])
            s, j = search(ff, f, 4)
            hits = [float(np.mean(g[jj] == stem(q).rsplit("_", 1)[0])) for q, jj in zip(queries, j)]
            print(f"\nrotated 8 deg + 60% queries (never extracted): recall@4 {np.mean(hits):.3f}, "
                  f"top-1 cosine {s[:, 0].min():.3f} .. {s[:, 0].max():.3f}")
        if args.screenshot:
            page = os.path.join(tmp, "search.html")
            run(search_main, ["coll.h5", "--query", "queries/rocket_rot.png", "queries/chelsea_rot.png", "-k", "5",
                              "--html", page, "--thumb", "120"])
            shot = os.path.join(tmp, "shot.png")
            r = report.browser_check(page, shot, size=(980, 720))
            print(f"browser: {r['state']}, {r['loaded']}/{r['total']} images")
            from PIL import Image
            Image.open(shot).convert("RGB").quantize(128).save(args.screenshot, optimize=True)
            print(f"wrote {args.screenshot} ({os.path.getsize(args.screenshot) // 1024} KiB)")


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
    ph = sub.add_parser("photos")
    ph.add_argument("--screenshot", help="write the HTML report's screenshot here (PNG)")
    args = p.parse_args()
    if getattr(args, "screenshot", None):
        args.screenshot = os.path.abspath(args.screenshot)
    {"ann": bench_ann, "stream": bench_stream, "photos": bench_photos}[args.cmd](args)


if __name__ == "__main__":
    main()
