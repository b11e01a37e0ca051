"""Images/s of ``extract --cluster`` with 1 and 2 Dask workers on this machine, and the cost of one shard.

Builds full-size CaffeNet with seeded weights (or uses the embedded EfficientNet-Lite0 with
``--model efficientnet-lite0``), writes N JPEGs from the real photos shipped with scikit-image /
scikit-learn (``bench_extract.make_jpegs``), then for each ``--configs`` entry WxT (a LocalCluster
on 127.0.0.1 from ``minicaffe.features.cluster.connect``: W worker processes, T BLAS+Numba threads each;
default 1x2 = what ``local:1`` gives on 2 cores, 1x1 and 2x1 = one core per worker, the fair
1-vs-2-workers comparison):

* cold start: cluster start-up + every worker loading the net and running a first forward;
* steady throughput, the configurations alternating ``--repeat`` times: ``extract --cluster ADDR``
  over the N JPEGs with warm workers; images/s of the shard phase (submit -> last part written) and
  of the whole command (listing, the driver's own net load, merge included); the workers' time
  split into net load, decode+resize, normalise+forward, part writing, other;
* per-shard overhead: on the first configuration, ``--shard-size 1`` over K paths that do not exist
  (each shard fails its one image at once, then writes its part, returns, is merged): wall / K is
  the fixed cost of a shard; next to it a Dask no-op task round trip.

The single-machine extractor (no ``--cluster``, its default decoding processes) runs in the same
rounds as the peer the ratios refer to. Not a test: numbers depend on the machine and its load
(other processes sharing the cores hurt a multi-threaded worker most), which is printed. Prints a
table and an estimate for 1.3M images on M machines.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_extract import make_jpegs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep-files", action="store_true", help="keep the temporary folder (weights, JPEGs, outputs)")
    ap.add_argument("--model", default="caffenet", choices=("caffenet", "efficientnet-lite0"))
    ap.add_argument("--n-images", type=int, default=96)
    ap.add_argument("--shard-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--layers", default=None, help="default: decaf6 (fc6) for CaffeNet, the model's default otherwise")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--overhead-shards", type=int, default=100)
    ap.add_argument("--configs", default="1x2,1x1,2x1",
                    help="local clusters to compare, WORKERSxTHREADS (BLAS/Numba threads per worker process)")
    args = ap.parse_args(argv)

    import numpy as np

    from minicaffe import Net, __version__
    from minicaffe.cli import run
    from minicaffe.extract import main as extract_main
    from minicaffe.features import cluster as mdist
    from minicaffe.models import MODELS_DIR

    # every cluster run's ClusterReport, in order: the extract command calls mdist.run_cluster
    reports = []
    run_cluster = mdist.run_cluster

    def recording_run_cluster(*a, **kw):
        reports.append(run_cluster(*a, **kw))
        return reports[-1]
    mdist.run_cluster = recording_run_cluster

    tmp = tempfile.mkdtemp(prefix="bench_dask_")
    if not args.keep_files:     # weights, JPEGs and outputs: ~0.5 GB per run
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    t = time.perf_counter()
    if args.model == "caffenet":
        proto = str(MODELS_DIR / "bvlc_reference_caffenet.deploy.prototxt")
        weights = os.path.join(tmp, "caffenet_seed0.h5")
        Net(proto, seed=0).save_h5(weights)
        model = ["--prototxt", proto, "--weights", weights, "--layers", args.layers or "decaf6"]
    else:
        model = ["--model", args.model] + (["--layers", args.layers] if args.layers else [])
    jpegs = os.path.join(tmp, "jpegs")
    sizes = make_jpegs(jpegs, args.n_images)
    missing = os.path.join(tmp, "missing.txt")
    with open(missing, "w") as f:
        f.writelines(f"/nonexistent/minicaffe_bench/{i:05d}.jpg\n" for i in range(args.overhead_shards))
    common = [*model, "--backend", args.backend, "--batch-size", str(args.batch_size), "-q", "--force"]
    print(f"setup {time.perf_counter() - t:.1f}s: {args.model}, {args.n_images} JPEGs ~"
          f"{int(np.median([h for h, _ in sizes]))}x{int(np.median([w for _, w in sizes]))} px, backend "
          f"{args.backend}, shard {args.shard_size}, batch {args.batch_size}, minicaffe {__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)

    warm = os.path.join(tmp, "warm.txt")      # a few images: one-image shards so every worker gets one
    with open(warm, "w") as f:
        f.writelines(os.path.join(jpegs, fn) + "\n" for fn in sorted(os.listdir(jpegs))[:2 * max(
            int(c.split("x")[0]) for c in args.configs.split(","))])

    def extract(extra, out, quiet_stderr=False, inputs=jpegs):
        argv_ = [inputs, "-o", os.path.join(tmp, out), *common, *extra]
        err = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(err) if quiet_stderr else contextlib.nullcontext():
            rc = run(extract_main, argv_)
        wall = time.perf_counter() - t0
        if rc not in (0, 1):
            sys.exit(f"extraction failed with status {rc}: {err.getvalue()[-2000:]}")
        return wall

    # ---- clusters: start, warm every worker (net load + first forward) ------------------------
    counts = args.configs.split(",")        # "1x2": 1 worker process with 2 threads
    clusters, cold = {}, {}
    for n in counts:
        t0 = time.perf_counter()
        w, th = (int(v) for v in n.split("x"))
        client, cluster = mdist.connect(f"local:{w}", threads=th)
        t1 = time.perf_counter()
        extract(["--cluster", cluster.scheduler_address, "--shard-size", "1"], f"warm{n}.h5", quiet_stderr=True,
                inputs=warm)
        loads = [r["net_load_s"] for r in reports[-1].results if r["net_load_s"]]
        client.run(_noop)
        cold[n] = (t1 - t0, time.perf_counter() - t1, loads)
        clusters[n] = (client, cluster)
        print(f"  {n}: cluster start {t1 - t0:.1f}s, warm-up run {cold[n][1]:.1f}s "
              f"(net load per worker {', '.join(f'{v:.1f}s' for v in loads)})", flush=True)

    # ---- steady throughput, alternating ---------------------------------------------------------
    rates = {n: [] for n in counts}
    walls = {n: [] for n in counts}
    shares = {n: [] for n in counts}
    single = []
    for r in range(args.repeat):
        wall = extract([], "single.h5")
        single.append(args.n_images / wall)
        line = [f"single-machine {single[-1]:.2f}"]
        for n in counts:
            wall = extract(["--cluster", clusters[n][1].scheduler_address, "--shard-size", str(args.shard_size)],
                           f"c{n}.h5")
            lr = reports[-1]
            rates[n].append(lr.images / lr.elapsed)
            walls[n].append(args.n_images / wall)
            shares[n].append(mdist.summarize(lr.results, lr.elapsed))
            line.append(f"{n} {rates[n][-1]:.2f} (cmd {walls[n][-1]:.2f}, merge {lr.merge_s:.2f}s)")
        print(f"  repeat {r}: images/s " + ", ".join(line), flush=True)

    # ---- per-shard overhead on 1 warm worker --------------------------------------------------
    n1 = counts[0]
    addr = clusters[n1][1].scheduler_address
    t0 = time.perf_counter()
    wall = extract_missing(run, extract_main, missing, tmp, addr, common)
    per_shard = reports[-1].elapsed / args.overhead_shards
    per_cmd = wall / args.overhead_shards
    res = reports[-1].results
    write_ms = 1000 * statistics.median(r["write_s"] for r in res)
    client = clusters[n1][0]
    t0 = time.perf_counter()
    for _ in range(50):
        client.submit(_noop, pure=False).result()
    noop_ms = 1000 * (time.perf_counter() - t0) / 50

    for client, cluster in clusters.values():
        client.close()
        cluster.close()

    # ---- report ---------------------------------------------------------------------------------
    s = statistics.median(single)
    print(f"\n{'run':<26s} {'images/s':>9s} {'vs single':>9s} {'cmd images/s':>13s}")
    print(f"{'single-machine extract':<26s} {s:9.2f} {1:9.2f} {s:13.2f}")
    for n in counts:
        m, w = statistics.median(rates[n]), statistics.median(walls[n])
        print(f"{f'workers x threads {n}':<26s} {m:9.2f} {m / s:9.2f} {w:13.2f}")
    med = {n: statistics.median(rates[n]) for n in counts}
    for a in counts:
        for b in counts:
            if a < b:
                print(f"{b} vs {a}: x{med[b] / med[a]:.2f}")
    for n in counts:
        print(f"  {n}, last repeat: {shares[n][-1]}")
    print(f"per-shard overhead ({n1} warm, {args.overhead_shards} one-image shards that fail at once): "
          f"{1000 * per_shard:.1f} ms/shard in the shard phase, {1000 * per_cmd:.1f} ms with listing+merge; "
          f"of it part write {write_ms:.1f} ms; a Dask no-op task round trip {noop_ms:.1f} ms")
    for n in counts:
        st, wu, loads = cold[n]
        print(f"cold start, {n}: cluster {st:.1f}s + first shards {wu:.1f}s "
              f"(net load {max(loads, default=0):.1f}s per worker)")
    best = max(statistics.median(rates[n]) for n in counts)
    frac = per_shard / (per_shard + args.shard_size / best)
    print(f"\nestimate, 1.3M images at {best:.1f} images/s per machine like this one (shard overhead "
          f"{100 * frac:.1f}% at --shard-size {args.shard_size}):")
    for machines in (1, 4, 16, 64):
        hours = 1.3e6 / (best * machines) / 3600
        print(f"  {machines:3d} machine(s): {hours:8.1f} h  ({hours / 24:.1f} days)")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


def extract_missing(run, extract_main, missing, tmp, addr, common):
    """--shard-size 1 over paths that do not exist: every shard is pure overhead (warnings muted)."""
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err):
        rc = run(extract_main, [missing, "-o", os.path.join(tmp, "missing.h5"), *common, "--cluster", addr,
                                "--shard-size", "1"])
    if rc != 1:
        sys.exit(f"overhead run: expected status 1 (no image usable), got {rc}: {err.getvalue()[-2000:]}")
    return time.perf_counter() - t0


def _noop(*_):
    return None


if __name__ == "__main__":
    from minicaffe import runtime
    runtime.tune()      # what the tools do at start (minicaffe/runtime.py), before any timed work
    main()
