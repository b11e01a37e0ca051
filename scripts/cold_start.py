"""Where the first run's seconds go: Numba compilations (cache misses) of the default model, kernel by kernel.

Runs, in this one process, what ``python -m minicaffe.extract`` does for one image of the default
model, timing each stage (import, net load, the decoders' resize kernels, preprocessing, the first
and a second forward) and every top-level Numba compilation through Numba's ``numba:compile``
event (which fires only on a cache miss). ``--clear-cache`` first deletes minicaffe's Numba cache
files (``*.nbi``/``*.nbc`` under the package), so the run is a cold start. It does not start
decoder processes or write feature files; docs/notes/cold-start.md holds the measured numbers.

usage: nice -n 19 python scripts/cold_start.py --clear-cache [--model efficientnet-lite0] [--json out.json]
"""
import argparse
import json
import os
import pathlib
import sys
import time


def clear_numba_cache(root):
    n = 0
    for p in pathlib.Path(root).rglob("*"):
        if p.suffix in (".nbi", ".nbc"):
            p.unlink()
            n += 1
    return n


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clear-cache", action="store_true", help="delete minicaffe's Numba cache files first")
    ap.add_argument("--model", default=None, help="a registered model (default: extract's default model)")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    stages, compiles = {}, []
    t = time.perf_counter()
    import minicaffe
    from minicaffe import runtime
    runtime.tune()
    pkg = pathlib.Path(minicaffe.__file__).parent
    if args.clear_cache:
        print(f"removed {clear_numba_cache(pkg)} Numba cache files under {pkg}", file=sys.stderr)
    from numba.core import event

    from minicaffe.features import default_model
    from minicaffe.models import get_model
    from minicaffe.preprocess import load_resized, normalize_batch
    stages["import"] = time.perf_counter() - t

    class Timer(event.Listener):
        depth = 0

        def on_start(self, ev):
            self.depth += 1
            if self.depth == 1:
                self.t0, self.c0 = time.perf_counter(), time.process_time()
                self.name = ev.data["dispatcher"].py_func.__qualname__
                self.mod = ev.data["dispatcher"].py_func.__module__

        def on_end(self, ev):
            self.depth -= 1
            if self.depth == 0:
                compiles.append({"kernel": f"{self.mod}.{self.name}", "stage": current[0],
                                 "seconds": time.perf_counter() - self.t0,
                                 "cpu_seconds": time.process_time() - self.c0})

    current = ["load"]
    event.register("numba:compile", Timer())
    name = args.model or default_model()
    spec = get_model(name)
    t = time.perf_counter()
    net = spec.load("cpu")
    net.freeze()                  # as extraction loads it (features.load_model)
    stages["net load"] = time.perf_counter() - t
    current[0] = "resize kernels (decoders)"
    t = time.perf_counter()
    from minicaffe import resize
    resize.warm()
    stages[current[0]] = time.perf_counter() - t
    current[0] = "decode + preprocess"
    img_dir = pathlib.Path(os.path.dirname(__import__("sklearn.datasets").datasets.__file__)) / "images"
    t = time.perf_counter()
    img = load_resized(str(img_dir / "china.jpg"), spec.preprocessing)
    x = normalize_batch([img], spec.preprocessing, "center", "cpu")
    stages[current[0]] = time.perf_counter() - t
    stages["process CPU so far"] = time.process_time()
    # the blobs extraction fetches (its default layers): the net then runs as extraction runs it
    fetch = [b for b in dict.fromkeys(spec.aliases.values()) if b in net.blob_shapes] or [net.layers[-1].tops[0]]
    for stage in ("first forward", "second forward"):
        current[0] = stage
        t = time.perf_counter()
        net.forward(x, fetch=fetch)
        stages[stage] = time.perf_counter() - t
    total_compile = sum(c["seconds"] for c in compiles)
    total_cpu = sum(c["cpu_seconds"] for c in compiles)
    print(f"model {name}: {len(compiles)} compilations, {total_compile:.1f} s wall, {total_cpu:.1f} s CPU")
    for k, v in stages.items():
        print(f"  {k:28s} {v:7.2f} s")
    for c in sorted(compiles, key=lambda c: -c["seconds"]):
        print(f"  {c['seconds']:6.2f} s ({c['cpu_seconds']:5.2f} s CPU)  {c['kernel']}  ({c['stage']})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": name, "stages": stages, "compiles": compiles}, f, indent=1)


if __name__ == "__main__":
    main()
