"""Side-by-side CPU (and GPU) speed of full-size CaffeNet: minicaffe against the frameworks users would pick.

Every framework runs the *same* seeded weights (``Net(prototxt, None, seed=0)``) on the *same*
input, and the timings are **interleaved in one run**: for each repeat, for each batch, for each
framework (in an order that rotates every repeat), one forward pass is timed (after untimed
warm-up calls, which JIT-compile Numba and let the peers pick their kernels), so machine load
drifts over all frameworks alike. Peers:
OpenVINO CPU f32 and ONNX Runtime CPU (both read an ONNX graph written from the prototxt by
:mod:`minicaffe.export.onnx_export`, native LRN op), PyTorch CPU (``torch``: the project's
prototxt -> torch translator :mod:`minicaffe.reference.torch_net`, Caffe-exact; ``torch-native``:
the same module with LRN and max pooling swapped for ``F.local_response_norm`` /
``F.max_pool2d(ceil_mode=True)``, which compute the same thing for CaffeNet and are what a
PyTorch user would write) and OpenCV DNN (``readNetFromCaffe`` on a caffemodel written by
:func:`minicaffe.io.caffemodel.write_caffemodel`, default settings: fusion and Winograd on).
Prints images/s (best = from the minimum time, and median), the ratio to the best peer in the
same batch, the numpy sgemm ceiling measured in the same run (GFLOP/s of a large float32 matmul
-> images/s at the net's conv+fc GFLOP per image), fc7 agreement (max |a - b| / max |b|)
between frameworks, the peak RSS of a batch-64 minicaffe cpu forward, and the time a second
fresh process (Numba cache warm) takes from start to its first result; ``--json`` saves all.
Threads: every framework is told to use ``--threads`` (default: the CPUs this process may run
on) through its own API — Numba ``set_num_threads``, numpy's BLAS via ``threadpoolctl``,
``torch.set_num_threads``, ORT ``intra_op_num_threads``, OpenVINO ``INFERENCE_NUM_THREADS``,
``cv2.setNumThreads``. Missing peers are skipped with the line that installs them
(``pip install -e .[bench]``). It is a measurement, not a test: it asserts nothing about speed,
and numbers depend on the machine and its load (the load average is printed before and after).
"""
from __future__ import annotations

import argparse
import atexit
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from minicaffe.errors import MinicaffeError  # noqa: E402  (after the sys.path entry above)

DEFAULT_PROTO = os.path.join(REPO, "minicaffe", "data", "models", "bvlc_reference_caffenet.deploy.prototxt")
FRAMEWORKS = ("minicaffe-numpy", "minicaffe-cpu", "minicaffe-cuda", "openvino", "onnxruntime", "torch",
              "torch-native", "torch-cuda", "opencv")
PEERS = ("openvino", "onnxruntime", "torch", "torch-native", "opencv")
INSTALL = {
    "openvino": "pip install openvino==2026.4.1 onnx==1.23.2",
    "onnxruntime": "pip install onnxruntime==1.32.0 onnx==1.23.2",
    "torch": "pip install torch==2.13.0",
    "opencv": "pip install 'opencv-python-headless<5'",
}


class Skip(Exception):
    """A framework that cannot run here (not installed, no GPU): reported, never fatal."""


def rel_err(a, ref):
    """max |a - ref| / max |ref| (the project-wide comparison measure)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


def _import(module, fw):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as e:
        key = "onnxruntime" if fw == "onnxruntime" else "openvino" if fw == "openvino" else \
            "opencv" if fw == "opencv" else "torch"
        raise Skip(f"cannot import {module} ({e}); install: {INSTALL[key]}") from None


# ---------------------------------------------------------------------------------------- runners
# A runner is built once; ``prepare(batch)`` returns a callable x -> fc7 (host ndarray), one per
# batch size, so that no timed call pays for a reshape/re-plan when the batch changes between
# interleaved calls (OpenCV and OpenVINO re-plan on a new input shape; minicaffe reshapes).

class Shared:
    """What every runner reads: the net, its weights, files written once, thread count."""

    def __init__(self, prototxt, threads, workdir, blob="fc7"):
        from minicaffe import Net
        self.prototxt, self.threads, self.workdir, self.blob = prototxt, threads, workdir, blob
        self.net = Net(prototxt, None, backend="numpy", seed=0)
        self.params = self.net.params          # layer -> [weight, bias] float32, shared by all
        self.input_name = self.net.input_names[0]
        self.in_shape = tuple(self.net.input_shapes[self.input_name][1:])
        self._onnx = self._caffemodel = None
        self.final_blob = [t for l in self.net.layers for t in l.tops][-1]   # e.g. prob

    def onnx_path(self):
        if self._onnx is None:
            from minicaffe.export import export_onnx
            self._onnx = os.path.join(self.workdir, "net.onnx")
            export_onnx(self.net, self._onnx, outputs=[self.blob, self.final_blob])
        return self._onnx

    def caffemodel_path(self):
        if self._caffemodel is None:
            from minicaffe.io.caffemodel import write_caffemodel
            self._caffemodel = os.path.join(self.workdir, "net.caffemodel")
            types = {l.name: l.type for l in self.net.layers}
            write_caffemodel(self._caffemodel, [(n, types[n], list(p)) for n, p in self.params.items()],
                             name=self.net.name)
        return self._caffemodel


def minicaffe_runner(sh, backend):
    from minicaffe import Net
    from minicaffe.backend import check_backend
    if backend == "cuda":
        try:
            check_backend("cuda")
        except MinicaffeError as e:
            raise Skip(str(e)) from None
    version = __import__("minicaffe").__version__
    if backend == "cpu":
        import numba
        numba.set_num_threads(min(sh.threads, numba.config.NUMBA_NUM_THREADS))

    def prepare(batch):
        # one Net per batch size; the weight arrays themselves are shared (load_weights keeps
        # float32 contiguous arrays as they are)
        net = Net(sh.prototxt, sh.params, backend=backend)
        net.freeze()
        fetch = [sh.blob, sh.final_blob]
        return lambda x: net.forward(x, fetch=fetch)[sh.blob]
    return version, prepare


def torch_runner(sh, native=False, device="cpu"):
    torch = _import("torch", "torch")
    from minicaffe.reference.torch_net import build_torch_net
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip("torch.cuda.is_available() is False (CPU build of torch or no GPU)")
    torch.set_num_threads(sh.threads)
    module = build_torch_net(sh.prototxt, sh.params)
    if native:
        module = nativize(torch, module)
    module = module.to(device).eval()
    blob = sh.blob

    def prepare(batch):
        if device == "cuda":
            def run(x):
                with torch.inference_mode():
                    y = module(torch.from_numpy(x).to(device))[blob].cpu().numpy()   # .cpu() synchronises
                return y
            return run

        def run(x):
            with torch.inference_mode():
                return module(torch.from_numpy(x))[blob].numpy()
        return run
    return torch.__version__, prepare


def nativize(torch, module):
    """A copy of the translator's module whose Caffe LRN / MAX pooling are PyTorch's own ops where
    they compute the same thing: ACROSS_CHANNELS LRN with an odd size (``local_response_norm``
    also divides alpha by size and pads (size-1)/2 on both sides), and MAX pooling without
    padding (``ceil_mode=True``: the last window starts inside the image, clipped like Caffe's).
    Other layers (and the convolution/fc weights) are shared with ``module``."""
    F = torch.nn.functional
    Lambda = None
    new = torch.nn.ModuleDict()
    for name, m in module.layers.items():
        kind = type(m).__name__
        if Lambda is None and kind == "Lambda":
            Lambda = type(m)
        if kind == "CaffeLRN" and m.region == "ACROSS_CHANNELS" and m.size % 2 == 1:
            new[name] = _Fn(torch, lambda x, m=m: F.local_response_norm(x, m.size, m.alpha, m.beta, m.k),
                            f"local_response_norm({m.size})")
        elif (kind == "CaffePool" and m.method == "MAX" and not m.global_pooling and m.ceil_mode
              and tuple(m.pad) == (0, 0)):
            new[name] = _Fn(torch, lambda x, m=m: F.max_pool2d(x, m.kernel, m.stride, ceil_mode=True),
                            f"max_pool2d({m.kernel}, {m.stride}, ceil_mode=True)")
        else:
            new[name] = m
    out = copy.copy(module)      # same plan and input names; only the layer table differs
    out._modules = OrderedDict(module._modules)
    out._modules["layers"] = new
    return out


def _Fn(torch, fn, what):
    class Fn(torch.nn.Module):
        def forward(self, x):
            return fn(x)

        def extra_repr(self):
            return what
    return Fn()


def onnxruntime_runner(sh):
    ort = _import("onnxruntime", "onnxruntime")
    _import("onnx", "onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = sh.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(sh.onnx_path(), so, providers=["CPUExecutionProvider"])
    outs = [sh.blob, sh.final_blob]

    def prepare(batch):
        return lambda x: sess.run(outs, {sh.input_name: x})[0]
    return ort.__version__, prepare


def openvino_runner(sh):
    ov = _import("openvino", "openvino")
    _import("onnx", "openvino")
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": sh.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_PRECISION_HINT": "f32"}   # f32: no bf16/f16 shortcuts, same arithmetic as the rest

    def prepare(batch):
        # a static shape per batch: what an OpenVINO user deploys, and its fastest mode
        model = core.read_model(sh.onnx_path())
        model.reshape({sh.input_name: [batch, *sh.in_shape]})
        compiled = core.compile_model(model, "CPU", config)
        req = compiled.create_infer_request()
        port = compiled.output(sh.blob)

        def run(x):
            res = req.infer({sh.input_name: x})
            return res[port]
        return run
    version = ov.__version__ if hasattr(ov, "__version__") else ov.get_version()
    return version.split("-")[0], prepare   # "2026.4.1-22982-<hash>-releases/..." -> "2026.4.1"


def opencv_runner(sh):
    cv2 = _import("cv2", "opencv")
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise Skip(f"OpenCV {cv2.__version__} has no Caffe importer; install: {INSTALL['opencv']}")
    from minicaffe.reference.opencv_net import caffe_blob_sources
    cv2.setNumThreads(sh.threads)
    _, sources = caffe_blob_sources(sh.prototxt)
    # OpenCV names outputs per layer: Caffe's blob fc7 (after relu7 and drop7) is layer drop7's
    layer = sources[sh.blob]

    def prepare(batch):
        net = cv2.dnn.readNetFromCaffe(sh.prototxt, sh.caffemodel_path())
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

        def run(x):
            net.setInput(x)
            return net.forward([layer, sources[sh.final_blob]])[0]
        return run
    return cv2.__version__, prepare


def make_runner(fw, sh):
    if fw.startswith("minicaffe-"):
        return minicaffe_runner(sh, fw.split("-", 1)[1])
    if fw == "torch":
        return torch_runner(sh)
    if fw == "torch-native":
        return torch_runner(sh, native=True)
    if fw == "torch-cuda":
        return torch_runner(sh, device="cuda")
    if fw == "onnxruntime":
        return onnxruntime_runner(sh)
    if fw == "openvino":
        return openvino_runner(sh)
    if fw == "opencv":
        return opencv_runner(sh)
    raise SystemExit(f"benchmark: error: unknown framework {fw!r}; choose from {', '.join(FRAMEWORKS)}")


# ------------------------------------------------------------------------------- measurements
def sgemm_gflops(n=2048, reps=3):
    """GFLOP/s of numpy's float32 (n, n) @ (n, n), best of ``reps`` (2 n^3 FLOPs each)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)   # warm: thread pool up, pages touched
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


def conv_fc_gflop_per_image(net):
    """FLOPs of Convolution + InnerProduct layers for one image (multiply-add = 2), in GFLOP."""
    total = 0
    for l in net.layers:
        if l.type in ("Convolution", "InnerProduct"):
            b = [(1,) + tuple(net.blob_shapes[x][1:]) for x in l.bottoms]
            t = [(1,) + tuple(net.blob_shapes[x][1:]) for x in l.tops]
            total += l.flops(b, t)
    return total / 1e9


_CHILD_COMMON = r"""
import os, sys, json
import numpy as np
proto, weights, batch, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from minicaffe import Net
from minicaffe.runtime import auto_tune
auto_tune()
import numba
numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
net = Net(proto, weights, backend="cpu")
net.freeze()
shape = (batch,) + tuple(net.input_shapes[net.input_names[0]][1:])
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
"""

_CHILD_STARTUP = _CHILD_COMMON + r"""
net.forward(x)
print("READY", flush=True)
"""

_CHILD_RSS = _CHILD_COMMON + r"""
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return None
# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a child forked from a
# big parent (this benchmark with every framework loaded) would report the parent's peak
maxrss = lambda: status("VmHWM")
after_load = maxrss()              # peak so far: imports + weights (+ Net's own set-up)
net.forward(x)                     # JIT (or cache load) and first-call allocations
after_first = maxrss()
before = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")               # Linux: reset the peak RSS (VmHWM) to the current RSS
    reset = True
except OSError:
    reset = False
net.forward(x)
out = {"rss_before_forward": before, "peak_rss_during_forward": status("VmHWM") if reset else None,
       "process_maxrss": maxrss(), "maxrss_after_load": after_load, "maxrss_after_first_forward": after_first,
       "hwm_reset": reset}
print("RESULT " + json.dumps(out), flush=True)
"""


def _child_env(threads):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)   # the child's BLAS (numpy import) reads these at start-up
    return env


def startup_times(prototxt, weights_h5, threads, runs=2):
    """Wall seconds from launching ``python -c`` to its first forward result (batch 1, cpu
    backend, weights from an .h5), ``runs`` times in a row: the first may compile (or load) the
    Numba cache, later ones find it warm."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", _CHILD_STARTUP, prototxt, weights_h5, "1", str(threads)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(threads))
        line = p.stdout.readline()
        t1 = time.perf_counter()
        _, err = p.communicate()
        if line.strip() != "READY" or p.returncode != 0:
            raise MinicaffeError(f"start-up child failed (rc {p.returncode}): {err.strip()[-500:]}")
        out.append(t1 - t0)
    return out


def peak_rss(prototxt, weights_h5, threads, batch=64):
    """Peak resident memory of a fresh process while it runs one batch-``batch`` cpu forward."""
    p = subprocess.run([sys.executable, "-c", _CHILD_RSS, prototxt, weights_h5, str(batch), str(threads)],
                       capture_output=True, text=True, env=_child_env(threads))
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise MinicaffeError(f"memory child failed (rc {p.returncode}): {p.stderr.strip()[-500:]}")


def machine_info():
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = set(line.split(":", 1)[1].split())
                    flags = " ".join(x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if x in fl)
                    break
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": flags, "cpus_usable": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "numpy": np.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node()}


def blas_info():
    try:
        import threadpoolctl
        return [{"api": p.get("internal_api"), "version": p.get("version"), "threads": p.get("num_threads")}
                for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]
    except ImportError:
        return []


# --------------------------------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,10,64", help="comma-separated batch sizes (default 1,10,64)")
    ap.add_argument("--repeats", type=int, default=5, help="timed forwards per framework and batch (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed forwards per framework and batch first")
    ap.add_argument("--frameworks", default="all",
                    help=f"comma-separated subset of {','.join(FRAMEWORKS)} (default: all that can run here)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                    help="threads every framework may use (default: the CPUs this process may run on)")
    ap.add_argument("--gap", type=float, default=0.1,
                    help="seconds of idle before each timed call, so the previous framework's spinning "
                         "worker threads go to sleep (default 0.1)")
    ap.add_argument("--prototxt", default=DEFAULT_PROTO, help="net to run (default: full-size CaffeNet)")
    ap.add_argument("--blob", default="fc7", help="blob compared between frameworks (default fc7)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child process")
    ap.add_argument("--no-startup", action="store_true", help="skip the two start-up child processes")
    ap.add_argument("--json", metavar="OUT", help="write every sample and summary to this JSON file")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="run N CPU-bound processes (`python -c 'while True: pass'`) beside the benchmark, "
                         "from before the warm-up to the end of the timing: a shared machine (default 0)")
    args = ap.parse_args(argv)
    if args.load < 0:
        ap.error("--load must be >= 0")
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    if not args.batches or min(args.batches) < 1:
        ap.error("--batches needs positive integers")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--repeats and --threads must be >= 1, --warmup >= 0")
    fws = FRAMEWORKS if args.frameworks == "all" else [f.strip() for f in args.frameworks.split(",") if f.strip()]
    bad = [f for f in fws if f not in FRAMEWORKS]
    if bad:
        ap.error(f"unknown framework(s) {bad}; choose from {', '.join(FRAMEWORKS)}")
    args.frameworks = list(dict.fromkeys(fws))
    return args


def fmt_rate(r):
    return f"{r:.1f}" if r < 100 else f"{r:.0f}"


def start_load(n):
    """n busy-looping child processes (one core each when the scheduler lets them)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    atexit.register(stop_load, procs)
    return procs


def stop_load(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def main(argv=None):
    args = parse_args(argv)
    # minicaffe's process tuning, as its tools apply it, before any thread pool starts (OpenMP
    # reads OMP_WAIT_POLICY once); it is process-wide, so the peers run under it too
    from minicaffe.runtime import auto_tune
    auto_tune()
    load_procs = start_load(args.load)
    try:
        import threadpoolctl
        threadpoolctl.threadpool_limits(args.threads, user_api="blas")   # numpy's BLAS (numpy backend, sgemm)
        blas_how = "threadpoolctl.threadpool_limits"
    except ImportError:
        blas_how = "not limited (threadpoolctl missing)"
    info = machine_info()
    load0 = os.getloadavg()
    print(f"# {info['date']}  {info['cpu']} ({info['cpu_flags']}), {info['cpus_usable']} usable CPUs, "
          f"{args.threads} threads per framework; load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
          + (f"; --load {args.load}: {args.load} busy-looping process(es) beside it" if args.load else ""))

    work = tempfile.TemporaryDirectory(prefix="minicaffe-bench-")
    sh = Shared(args.prototxt, args.threads, work.name, args.blob)
    gflop = conv_fc_gflop_per_image(sh.net)
    rng = np.random.default_rng(0)
    # one input for everyone: (max batch, C, H, W) float32, scaled like mean-subtracted pixels;
    # batch b uses its first b images
    x_all = (rng.standard_normal((max(args.batches),) + sh.in_shape) * 50).astype(np.float32)
    xs = {b: np.ascontiguousarray(x_all[:b]) for b in args.batches}

    runners, versions, skipped = OrderedDict(), {}, {}
    for fw in args.frameworks:
        try:
            t0 = time.perf_counter()
            version, prepare = make_runner(fw, sh)
            fns = {b: prepare(b) for b in args.batches}
            for b in args.batches:        # warm-up: JIT, kernel selection, first-touch allocations
                for _ in range(args.warmup):
                    fns[b](xs[b])
            runners[fw], versions[fw] = fns, str(version)
            print(f"# {fw} {version}: ready in {time.perf_counter() - t0:.1f} s")
        except Skip as e:
            skipped[fw] = str(e)
            print(f"# {fw}: skipped: {e}")
    if not runners:
        raise SystemExit("benchmark: error: no framework can run here")

    samples = {fw: {b: [] for b in args.batches} for fw in runners}
    last_out = {fw: {} for fw in runners}
    sgemm = []
    for r in range(args.repeats):
        sgemm.append(sgemm_gflops())
        # the order rotates every repeat: each framework follows each other one equally often, so
        # a peer whose threads are still busy after its call slows every framework alike
        order = list(runners.items())
        order = order[r % len(order):] + order[:r % len(order)]
        for b in args.batches:
            for fw, fns in order:
                time.sleep(args.gap)
                t0 = time.perf_counter()
                y = fns[b](xs[b])
                dt = time.perf_counter() - t0
                samples[fw][b].append(dt * 1e3)
                if r == args.repeats - 1:
                    last_out[fw][b] = np.array(y, dtype=np.float32, copy=True)   # after the clock stopped
        print(f"# repeat {r + 1}/{args.repeats} done (sgemm {sgemm[-1]:.0f} GFLOP/s)", flush=True)
    load1 = os.getloadavg()
    stop_load(load_procs)

    # --- summaries
    res = {}
    for fw in runners:
        res[fw] = {}
        for b in args.batches:
            s = samples[fw][b]
            mn, med = min(s), statistics.median(s)
            res[fw][b] = {"samples_ms": s, "min_ms": mn, "median_ms": med,
                          "images_per_s_best": b / (mn / 1e3), "images_per_s_median": b / (med / 1e3)}
    best_peer, best_peer_median = {}, {}
    for b in args.batches:
        peers = [(res[fw][b]["images_per_s_best"], fw) for fw in runners if fw in PEERS]
        best_peer[b] = max(peers) if peers else None
        peers_med = [(res[fw][b]["images_per_s_median"], fw) for fw in runners if fw in PEERS]
        best_peer_median[b] = max(peers_med) if peers_med else None
        for fw in runners:
            res[fw][b]["ratio_to_best_peer"] = (res[fw][b]["images_per_s_best"] / best_peer[b][0]
                                                if best_peer[b] else None)
            res[fw][b]["median_ratio_to_best_peer_median"] = (
                res[fw][b]["images_per_s_median"] / best_peer_median[b][0] if best_peer_median[b] else None)
    sg_best, sg_med = max(sgemm), statistics.median(sgemm)

    ref_fw = "minicaffe-numpy" if "minicaffe-numpy" in runners else next(iter(runners))
    agree = {}
    for fw in runners:
        agree[fw] = {}
        for other in runners:
            agree[fw][other] = max(rel_err(last_out[fw][b], last_out[other][b]) for b in args.batches)

    # --- table
    cols = [f"batch {b}" for b in args.batches]
    print()
    print(f"{sh.net.name} ({os.path.basename(args.prototxt)}, seeded weights), images/s best / median over "
          f"{args.repeats} interleaved repeats (ratios: best to the best peer's best / median to the best "
          f"peer's median){'; under --load ' + str(args.load) if args.load else ''}")
    print("| framework | " + " | ".join(cols) + f" | {args.blob} rel err vs {ref_fw} |")
    print("|---|" + "---|" * len(cols) + "---|")
    for fw in runners:
        cells = []
        for b in args.batches:
            q = res[fw][b]
            ratio = (f" ({q['ratio_to_best_peer']:.2f}x / {q['median_ratio_to_best_peer_median']:.2f}x)"
                     if q["ratio_to_best_peer"] is not None else "")
            cells.append(f"{fmt_rate(q['images_per_s_best'])} / {fmt_rate(q['images_per_s_median'])}{ratio}")
        print(f"| {fw} {versions[fw]} | " + " | ".join(cells) + f" | {agree[fw][ref_fw]:.1e} |")
    ceil_best, ceil_med = sg_best / gflop, sg_med / gflop
    print(f"| numpy sgemm ceiling ({sg_best:.0f} / {sg_med:.0f} GFLOP/s at {gflop:.3f} GFLOP/image) | "
          + " | ".join(f"{fmt_rate(ceil_best)} / {fmt_rate(ceil_med)}" for _ in args.batches) + " | |")
    print()
    bp = ", ".join(f"batch {b}: {best_peer[b][1]}" for b in args.batches if best_peer[b])
    if bp:
        print(f"best peer: {bp}")
    worst = max(agree[a][b_] for a in runners for b_ in runners)
    print(f"{args.blob} agreement: largest pairwise rel err {worst:.1e} (max |a - b| / max |b| over batches)")
    print(f"threads: {args.threads} per framework (numba.set_num_threads, BLAS via {blas_how}, torch.set_num_threads, "
          f"ORT intra_op_num_threads, OpenVINO INFERENCE_NUM_THREADS, cv2.setNumThreads)")
    print(f"load average before {load0[0]:.2f}, after {load1[0]:.2f} (1 min) on {info['cpus_usable']} CPUs")
    for fw, why in skipped.items():
        print(f"skipped {fw}: {why}")

    # --- memory and start-up (after the timing loop: they would disturb it)
    memory = startup = None
    if not (args.no_memory and args.no_startup) and "minicaffe-cpu" in args.frameworks:
        h5 = os.path.join(work.name, "net.h5")
        sh.net.save_h5(h5)
        if not args.no_memory:
            try:
                memory = peak_rss(args.prototxt, h5, args.threads, max(args.batches))
                def mb(v):
                    return f"{v / 2 ** 20:.0f} MiB" if v else "n/a"
                what = "peak RSS during" if memory["hwm_reset"] else "process peak RSS (HWM reset refused) around"
                print(f"minicaffe cpu memory: {what} a batch-{max(args.batches)} forward "
                      f"{mb(memory['peak_rss_during_forward'] or memory['process_maxrss'])}; RSS before it "
                      f"{mb(memory['rss_before_forward'])}; process peak after loading the weights "
                      f"{mb(memory['maxrss_after_load'])}, after the first (JIT/cache-loading) forward "
                      f"{mb(memory['maxrss_after_first_forward'])}")
                memory["batch"] = max(args.batches)
            except MinicaffeError as e:
                print(f"minicaffe cpu memory: failed: {e}")
        if not args.no_startup:
            try:
                st = startup_times(args.prototxt, h5, args.threads)
                startup = {"seconds": st, "second_run_s": st[-1]}
                print(f"minicaffe cpu start-up to first result (fresh `python -c`, .h5 weights, batch 1): "
                      f"first {st[0]:.2f} s, second (cached JIT) {st[-1]:.2f} s")
            except MinicaffeError as e:
                print(f"minicaffe cpu start-up: failed: {e}")

    if "minicaffe-cpu" not in args.frameworks and not (args.no_memory and args.no_startup):
        print("memory / start-up: not measured (they are for minicaffe-cpu, which --frameworks left out)")

    if args.json:
        out = {"machine": info, "blas": blas_info(), "load_average_before": load0, "load_average_after": load1,
               "settings": {"prototxt": args.prototxt, "batches": args.batches, "repeats": args.repeats,
                            "load_processes": args.load,
                            "warmup": args.warmup, "threads": args.threads, "gap_s": args.gap,
                            "threads_how": "numba.set_num_threads, BLAS " + blas_how
                                           + ", torch.set_num_threads, ORT intra_op_num_threads, "
                                           "OpenVINO INFERENCE_NUM_THREADS, cv2.setNumThreads",
                            "input": "rng(0).standard_normal * 50, float32"},
               "gflop_per_image": gflop, "sgemm_gflops": sgemm,
               "sgemm_ceiling_images_per_s": {"best": ceil_best, "median": ceil_med},
               "versions": versions, "skipped": skipped,
               "results": {fw: {str(b): v for b, v in r_.items()} for fw, r_ in res.items()},
               "best_peer": {str(b): (v[1] if v else None) for b, v in best_peer.items()},
               "agreement": {"blob": args.blob, "reference": ref_fw, "rel_err": agree},
               "memory": memory, "startup": startup}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"wrote {args.json}")
    work.cleanup()


if __name__ == "__main__":
    from minicaffe import runtime
    runtime.tune()      # what the tools do at start (minicaffe/runtime.py), before any timed work
    main()
