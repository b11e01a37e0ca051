"""Per-layer gap table: minicaffe's per-layer times beside OpenVINO's and ONNX Runtime's own profilers.

Same net (any deploy prototxt, seeded weights), same batch, same thread count. minicaffe is timed
by :func:`minicaffe.profile.profile_net` (its before/after hooks); OpenVINO by its performance
counters (``PERF_COUNT``, ``get_profiling_info``: per executed node, real time), ONNX Runtime by
its profiler (``enable_profiling``: the ``*_kernel_time`` events). The peers' nodes are mapped back
to Caffe layer names (the ONNX export names every node after its layer; fused nodes keep the
first layer's name, so a peer's ``conv1`` may include ``relu1``). Medians over ``--iterations``.

    python scripts/gap_table.py --batch 64
    python scripts/gap_table.py --prototxt minicaffe/data/models/efficientnet-lite0.deploy.prototxt --batch 1

It reports; it does not judge. Layers that a peer fused away show "-" there.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from collections import OrderedDict, defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PROTO = os.path.join(HERE, "..", "minicaffe", "data", "models", "bvlc_reference_caffenet.deploy.prototxt")


REORDER = "(layout reorders)"


def _layer_of(node_name, names):
    """A peer's node name -> the Caffe layer it computes, REORDER for layout conversions the peer
    inserted, or None. ONNX nodes carry the layer's name ("conv1", "fc6.flatten", "block1/expand");
    ONNX Runtime renames fused / blocked ones ("fused fc6", "conv1_nchwc", "ReorderInput"),
    OpenVINO appends parts ("conv1/WithoutBiases") and names reorders by their layouts
    ("pool1_acdb_aBcd16b_norm1")."""
    name = node_name[len("fused "):] if node_name.startswith("fused ") else node_name
    if (name.startswith(("ReorderInput", "ReorderOutput"))
            or re.search(r"_(abcd|acdb|aBcd\w*|[a-z]*f32|[a-z]*bf16)_", name)):
        return REORDER
    if name.endswith("_nchwc"):
        name = name[:-len("_nchwc")]
    if name in names:
        return name
    best = None
    for n in names:
        if name.startswith(n) and name[len(n):len(n) + 1] in ("/", ".", "_") and (best is None or len(n) > len(best)):
            best = n
    return best


def minicaffe_times(net, batch, iterations):
    from minicaffe.profile import profile_net
    run = profile_net(net, batch=batch, iterations=iterations, warmup=2)
    return OrderedDict((row["name"], row["median_ms"]) for row in run["layers"]), run["forward_ms"]["median_ms"]


def minicaffe_program_times(net, batch, iterations):
    """minicaffe's per-layer times in the forward users run (frozen weights, a fetch list: one
    executor program, scripts/kernel_clock.py): each kernel's median under the first layer it
    computes (a pool with its LRN: under the pool), the layers a program leaves to the
    layer-by-layer forward (CaffeNet's inner products past batch 16) from the hook profiler; the
    total: the program's median run plus those layers."""
    from kernel_clock import measure
    shape = (batch,) + tuple(net.input_shapes[net.input_names[0]][1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    measured = measure(net, x, [net.layers[-1].tops[0]], iterations)
    if measured is None:
        return minicaffe_times(net, batch, iterations)
    prog, us, walls, _ = measured
    times = OrderedDict()
    for k, label in enumerate(prog.kernel_layers):
        first = label.split("+")[0]
        times[first] = times.get(first, 0.0) + float(np.median(us[:, k])) / 1e3
    total = float(np.median(walls)) * 1e3
    steps = net._steps_cache[1]
    if prog.rest < len(steps):
        rest = [layer.name for layer in net.layers[steps[prog.rest][0]:]]
        layered, _ = minicaffe_times(net, batch, iterations)
        for name in rest:
            if name in layered:
                times[name] = layered[name]
                total += layered[name]
    return times, total


def openvino_times(onnx_path, input_name, shape, threads, batch, iterations, names):
    import openvino as ov
    core = ov.Core()
    model = core.read_model(onnx_path)
    model.reshape({input_name: [batch, *shape]})
    cfg = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
           "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}
    compiled = core.compile_model(model, "CPU", cfg)
    req = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    for _ in range(2):
        req.infer({input_name: x})
    per = defaultdict(list)
    kinds = {}
    totals = []
    for _ in range(iterations):
        req.infer({input_name: x})
        acc = defaultdict(float)
        for info in req.get_profiling_info():
            us = (info.real_time.total_seconds() * 1e6 if hasattr(info.real_time, "total_seconds")
                  else float(info.real_time))
            if us <= 0:
                continue
            layer = _layer_of(info.node_name, names) or "(other)"
            acc[layer] += us / 1e3
            kinds.setdefault(layer, info.exec_type)
        for k, v in acc.items():
            per[k].append(v)
        totals.append(sum(acc.values()))
    return OrderedDict((k, float(np.median(v))) for k, v in per.items()), float(np.median(totals)), kinds


def onnxruntime_times(onnx_path, input_name, shape, threads, batch, iterations, names, workdir):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(workdir, "ort")
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
    warm = 2
    for _ in range(warm + iterations):
        sess.run(None, {input_name: x})
    path = sess.end_profiling()
    with open(path) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    per = defaultdict(lambda: defaultdict(float))
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        # which run: the model_run event whose span contains this node
        t = e["ts"]
        r = next((i for i, m in enumerate(runs) if m["ts"] <= t <= m["ts"] + m["dur"]), None)
        if r is None or r < warm:
            continue
        layer = _layer_of(e["name"][:-len("_kernel_time")], names) or "(other)"
        per[layer][r] += e["dur"] / 1e3
    totals = [m["dur"] / 1e3 for m in runs[warm:]]
    return (OrderedDict((k, float(np.median(list(v.values())))) for k, v in per.items()),
            float(np.median(totals)) if totals else float("nan"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prototxt", default=DEFAULT_PROTO)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--layer-by-layer", action="store_true",
                    help="time minicaffe layer by layer with the hook profiler (python -m minicaffe.profile) "
                         "instead of the one-program forward extraction and the benchmark run")
    ap.add_argument("--json", metavar="OUT")
    a = ap.parse_args(argv)
    from minicaffe.runtime import auto_tune
    auto_tune()        # before any thread pool starts, as minicaffe's tools do
    import numba

    from minicaffe import Net
    from minicaffe.export import export_onnx
    numba.set_num_threads(min(a.threads, numba.config.NUMBA_NUM_THREADS))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(a.threads)
    except ImportError:
        pass
    net = Net(a.prototxt, None, backend="cpu", seed=0)
    net.freeze()
    names = [l.name for l in net.layers]
    inp = net.input_names[0]
    shape = tuple(net.input_shapes[inp][1:])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "net.onnx")
        export_onnx(net, onnx_path)
        mc, mc_total = (minicaffe_times if a.layer_by_layer else minicaffe_program_times)(net, a.batch,
                                                                                          a.iterations)
        out["minicaffe"] = (mc, mc_total)
        try:
            ov, ov_total, kinds = openvino_times(onnx_path, inp, shape, a.threads, a.batch, a.iterations, set(names))
            out["openvino"] = (ov, ov_total)
        except ImportError as e:
            print(f"# openvino skipped: {e}", file=sys.stderr)
        try:
            ortt, ort_total = onnxruntime_times(onnx_path, inp, shape, a.threads, a.batch, a.iterations,
                                                set(names), tmp)
            out["onnxruntime"] = (ortt, ort_total)
        except ImportError as e:
            print(f"# onnxruntime skipped: {e}", file=sys.stderr)
    from benchmark import machine_info  # scripts/benchmark.py: CPU model and ISA flags
    mi = machine_info()
    print(f"# {os.path.basename(a.prototxt)}, batch {a.batch}, {a.threads} threads, "
          f"{mi['cpu']} ({mi['cpu_flags']}); medians of {a.iterations} runs, ms")
    peers = [p for p in ("openvino", "onnxruntime") if p in out]
    print("| layer | minicaffe | " + " | ".join(peers) + " | minicaffe / best peer |")
    print("|---|---|" + "---|" * len(peers) + "---|")
    for name in names + [REORDER, "(other)"]:
        m = out["minicaffe"][0].get(name)
        ps = [out[p][0].get(name) for p in peers]
        if m is None and all(p is None for p in ps):
            continue
        best = min((p for p in ps if p), default=None)
        ratio = f"{m / best:.2f}x" if (m and best) else "-"
        cells = [f"{v:.2f}" if v is not None else "-" for v in [m, *ps]]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    tot = [out["minicaffe"][1]] + [out[p][1] for p in peers]
    print("| **whole forward** | " + " | ".join(f"**{t:.2f}**" for t in tot) + " | "
          + (f"{tot[0] / min(tot[1:]):.2f}x" if peers else "-") + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: {"layers": v[0], "total_ms": v[1]} for k, v in out.items()}, f, indent=1)


if __name__ == "__main__":
    main()
