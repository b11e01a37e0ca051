"""End-to-end extraction speed (JPEG files -> features in the .h5) next to the pure forward pass.

Builds full-size CaffeNet with seeded weights (written to a temp .h5), writes N JPEGs made from
the real photos shipped with scikit-image / scikit-learn (random crops and flips so no two files
are equal), then, alternating ``--repeat`` times:

* pure forward: ``net.forward`` of already-preprocessed batches up to the deepest requested layer
  (what extraction cannot avoid), timed before and after the extractions of each repeat; the faster
  of the two counts (a VM whose host gets busy can halve one of them, which would flatter the ratio);
* end to end: ``python -m minicaffe.extract`` (in-process ``main``) over the JPEG folder: listing,
  decode + resize in worker processes, normalisation, forward, checkpoints and the final file,
  pool start-up included.

* marginal end to end: the same command over the first half of the files, then
  ``(N - N/2) / (t(N) - t(N/2))`` -- the steady-state rate of a long run, with the fixed costs
  (pool start-up, weight loading, the first batch's decoding, the final file) cancelled out.

Prints the images/s (median over repeats) and both ratios to the pure forward; the target is >= 0.8
on the cpu backend at batch 64. Not a test: numbers depend on the machine and its load, which is printed.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np


def make_jpegs(folder, n, seed=0):
    import skimage.data as skd
    import sklearn.datasets
    from PIL import Image
    srcs = [os.path.join(skd.data_dir, f) for f in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg",
                                                     "motorcycle_left.png", "hubble_deep_field.jpg")]
    srcs += [os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", f) for f in ("china.jpg", "flower.jpg")]
    imgs = [np.asarray(Image.open(s).convert("RGB")) for s in srcs if os.path.exists(s)]
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    sizes = []
    for i in range(n):
        a = imgs[i % len(imgs)]
        h, w = a.shape[:2]
        ch, cw = int(h * rng.uniform(0.8, 1.0)), int(w * rng.uniform(0.8, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        c = a[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        Image.fromarray(np.ascontiguousarray(c)).save(os.path.join(folder, f"img{i:05d}.jpg"), quality=90)
        sizes.append(c.shape[:2])
    return sizes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep-files", action="store_true", help="keep the temporary folder (weights, JPEGs, outputs)")
    ap.add_argument("--n-images", type=int, default=1280)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None, help="decoding processes (default: extract's default)")
    ap.add_argument("--decoder-priority", default=None, help="passed to extract (default: extract's default)")
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--layers", default="fc6,fc7")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    from minicaffe import Net, __version__
    from minicaffe.cli import run
    from minicaffe.extract import main as extract_main
    from minicaffe.features import FeatureExtractor, resolve_layers
    from minicaffe.models import CAFFE_PREPROCESSING, DECAF_ALIASES, MODELS_DIR
    from minicaffe.preprocess import load_resized

    proto = str(MODELS_DIR / "bvlc_reference_caffenet.deploy.prototxt")
    tmp = tempfile.mkdtemp(prefix="bench_extract_")
    if not args.keep_files:     # weights, JPEGs and outputs: ~0.5 GB per run
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    t = time.perf_counter()
    net = Net(proto, seed=0, backend=args.backend)
    weights = os.path.join(tmp, "caffenet_seed0.h5")
    net.save_h5(weights)
    sizes = make_jpegs(os.path.join(tmp, "jpegs"), args.n_images)
    print(f"setup {time.perf_counter() - t:.1f}s: full CaffeNet (seeded), {args.n_images} JPEGs "
          f"~{int(np.median([h for h, _ in sizes]))}x{int(np.median([w for _, w in sizes]))} px, "
          f"minicaffe {__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    fx = FeatureExtractor(net, CAFFE_PREPROCESSING, resolve_layers(net, args.layers.split(","), DECAF_ALIASES))
    first = sorted(os.listdir(os.path.join(tmp, "jpegs")))[:args.batch_size]
    batch = fx.normalize([load_resized(os.path.join(tmp, "jpegs", f), CAFFE_PREPROCESSING) for f in first])
    fx.forward(batch, len(first))  # warm-up: JIT compile / caches
    n_batches = -(-args.n_images // args.batch_size)

    half_list = os.path.join(tmp, "first_half.txt")
    half = sorted(os.listdir(os.path.join(tmp, "jpegs")))[:args.n_images // 2]
    with open(half_list, "w") as fh:
        fh.write("".join(os.path.join(tmp, "jpegs", f) + "\n" for f in half))

    def pure_forward():
        t = time.perf_counter()
        for _ in range(n_batches):
            fx.forward(batch, len(first))
        return n_batches * len(first) / (time.perf_counter() - t)

    fwd, e2e, marg = [], [], []
    for r in range(args.repeat):
        before = pure_forward()
        out = os.path.join(tmp, f"out{r}.h5")
        cmd = [os.path.join(tmp, "jpegs"), "-o", out, "--prototxt", proto, "--weights", weights,
               "--layers", args.layers, "--batch-size", str(args.batch_size), "--backend", args.backend, "-q"]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        if args.decoder_priority is not None:
            cmd += ["--decoder-priority", args.decoder_priority]
        t = time.perf_counter()
        rc = run(extract_main, cmd)
        t_full = time.perf_counter() - t
        e2e.append(args.n_images / t_full)
        if rc != 0:
            sys.exit(f"extraction failed with status {rc}")
        cmd_half = [half_list, "-o", os.path.join(tmp, f"half{r}.h5")] + cmd[3:]
        t = time.perf_counter()
        rc = run(extract_main, cmd_half)
        t_half = time.perf_counter() - t
        if rc != 0:
            sys.exit(f"extraction failed with status {rc}")
        marg.append((args.n_images - len(half)) / max(1e-9, t_full - t_half))
        after = pure_forward()
        fwd.append(max(before, after))
        print(f"  repeat {r}: pure forward {fwd[-1]:.1f} images/s (before {before:.1f}, after {after:.1f}), "
              f"end-to-end {e2e[-1]:.1f} images/s "
              f"({args.n_images} in {t_full:.2f} s; {len(half)} in {t_half:.2f} s -> marginal {marg[-1]:.1f} images/s)",
              flush=True)

    f, e, mg = statistics.median(fwd), statistics.median(e2e), statistics.median(marg)
    print(f"\nbackend {args.backend}, batch {args.batch_size}, layers {args.layers}, workers "
          f"{args.workers if args.workers is not None else 'default'}, decoder priority "
          f"{args.decoder_priority or 'default'}")
    print(f"{'pure forward':>14s}: {f:8.1f} images/s")
    print(f"{'end-to-end':>14s}: {e:8.1f} images/s  (JPEG decode -> features in the .h5)")
    print(f"{'ratio':>14s}: {e / f:8.2f}  (target >= 0.80)")
    print(f"{'marginal e2e':>14s}: {mg:8.1f} images/s  (start-up and final file cancelled: N vs N/2 images)")
    print(f"{'ratio':>14s}: {mg / f:8.2f}")
    # the machine's speed drifts between repeats: each repeat's ratio to its own pure forward too
    pe = [a / b for a, b in zip(e2e, fwd)]
    pm = [a / b for a, b in zip(marg, fwd)]
    print(f"{'paired ratios':>14s}: end-to-end {statistics.median(pe):.2f} (each repeat: "
          f"{', '.join(f'{v:.2f}' for v in pe)}), marginal {statistics.median(pm):.2f} "
          f"({', '.join(f'{v:.2f}' for v in pm)})")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    from minicaffe import runtime
    runtime.tune()      # what the tools do at start (minicaffe/runtime.py), before any timed work
    main()
