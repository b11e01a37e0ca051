"""Where the forward pass spends its time, layer by layer (DeCAF's figure): the library under
``python -m minicaffe.profile`` (:mod:`minicaffe.tools.profile`).

DeCAF showed that classifying one image with the ImageNet net spends over half its time in the
fully connected layers fc6-fc8, while batches amortise their weight traffic. :func:`profile`
measures that decomposition for any prototxt, backend and batch size. It attaches a before/after
pair of hooks through :meth:`minicaffe.Net.add_hook` (no timing code lives in layers); on the cuda
backend both hooks call :func:`minicaffe.backend.synchronize` so each layer's kernels are billed
to that layer. Each batch size runs ``warmup`` untimed forwards (the first call JIT-compiles)
and then ``iterations`` timed ones; per layer it reports min / median / mean ms, share of the
forward pass (median over the sum of medians), FLOPs (``layer.flops``), achieved GFLOP/s and
parameter bytes, then group totals (conv, fc, LRN, pool, ReLU, other), the fc share, the whole
forward (the span from the first layer's before-hook to the last layer's after-hook) and
images/s. :func:`parse_caffe_log` reads real ``caffe time`` logs to put Caffe's numbers beside
ours; :func:`format_table` / :func:`format_caffe` turn a run into text (ours, or in ``caffe
time``'s own format); :func:`plot` and :func:`write_html_report` draw it. Timings do not depend
on weight values, so without weights the net gets seeded random ones. It does not time input
copies or host<->device transfers outside the layers, does not profile backward passes, and does
not judge speed: it only reports. It parses no arguments and prints nothing (progress goes to a
callback).
"""
from __future__ import annotations

import os
import platform
import re
from collections import OrderedDict

import numpy as np

from .backend import synchronize
from .errors import MinicaffeError
from .timing import now_ms, stats

#: bump when a key is renamed or removed (adding keys keeps the version)
SCHEMA = "minicaffe.profile/1"

GROUPS = ("conv", "fc", "LRN", "pool", "ReLU", "other")
_TYPE_GROUP = {"Convolution": "conv", "InnerProduct": "fc", "LRN": "LRN", "Pooling": "pool",
               "ReLU": "ReLU", "Clip": "ReLU", "ReLU6": "ReLU"}
# colours of the chart, one per group (conv blue, fc red: the two the DeCAF figure contrasts)
_COLORS = {"conv": "#4C72B0", "fc": "#C44E52", "LRN": "#8172B2", "pool": "#55A868",
           "ReLU": "#CCB974", "other": "#8C8C8C"}


def layer_group(layer_type: str) -> str:
    return _TYPE_GROUP.get(layer_type, "other")


# ---------------------------------------------------------------------------- measuring
class LayerTimer:
    """Hooks that time every layer of ``net.forward`` and the span of the whole pass.

    After each forward, :meth:`end_pass` files one sample per layer (ms) and one span sample
    (first before-hook to last after-hook, ms). ``sync`` runs in both hooks (device backends).
    """

    def __init__(self, net, sync=None):
        self.net, self.sync = net, sync
        self.samples: OrderedDict[str, list[float]] = OrderedDict()
        self.span: list[float] = []
        self._t0 = {}
        self._pass_start = self._pass_end = None
        self._handle = None

    def __enter__(self):
        self._handle = self.net.add_hook(before=self._before, after=self._after)
        return self

    def __exit__(self, *exc):
        self.net.remove_hook(self._handle)
        return False

    def _before(self, net, i, layer):
        if self.sync is not None:
            self.sync()  # work queued by the previous layer is not this layer's
        t = now_ms()
        if self._pass_start is None:
            self._pass_start = t
        self._t0[i] = t

    def _after(self, net, i, layer, tops):
        if self.sync is not None:
            self.sync()  # kernels are asynchronous: wait for them before stopping the clock
        t = now_ms()
        self.samples.setdefault(layer.name, []).append(t - self._t0.pop(i))
        self._pass_end = t

    def end_pass(self):
        if self._pass_start is None:
            raise MinicaffeError("the forward pass ran no layer (nothing to time)")
        self.span.append(self._pass_end - self._pass_start)
        self._pass_start = self._pass_end = None


def _inputs_for(net, batch, rng):
    """Seeded N(0,1) inputs (batch, C, H, W) for every net input (timings do not depend on values)."""
    out = OrderedDict()
    for name in net.input_names:
        shape = (batch,) + tuple(net.input_shapes[name][1:])
        out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def profile_net(net, batch=1, iterations=10, warmup=2, seed=0) -> dict:
    """Time ``net`` at one batch size -> the run dict of the JSON (see ``docs/profile.md``).

    net: a built :class:`minicaffe.Net`; its inputs are reshaped to (batch, C, H, W).
    warmup: untimed forwards first (>= 1: the first call compiles and must never be timed).
    """
    if batch < 1:
        raise MinicaffeError(f"batch size must be >= 1, got {batch}")
    if iterations < 1:
        raise MinicaffeError(f"--iterations must be >= 1, got {iterations}")
    if warmup < 1:
        raise MinicaffeError(f"--warmup must be >= 1 (the first forward JIT-compiles), got {warmup}")
    inputs = _inputs_for(net, batch, np.random.default_rng(seed))
    names = list(inputs)
    first = inputs[names[0]]
    rest = {k: inputs[k] for k in names[1:]}

    def forward():
        # fetch=[]: on cuda no blob is copied back (transfers are outside the layers anyway)
        net.forward(first, fetch=[], **rest)

    for _ in range(warmup):
        forward()
    sync = (lambda: synchronize(net.backend)) if net.backend == "cuda" else None
    with LayerTimer(net, sync) as timer:
        for _ in range(iterations):
            forward()
            timer.end_pass()

    shapes = net.blob_shapes
    by_name = {l.name: l for l in net.layers}
    layers = []
    for name, samples in timer.samples.items():
        layer = by_name[name]
        st = stats(samples)
        bshapes = [shapes[b] for b in layer.bottoms]
        tshapes = [shapes[t] for t in layer.tops]
        flops = int(layer.flops(bshapes, tshapes))
        pbytes = int(sum(a.nbytes for a in net.params.get(name, [])))
        layers.append(OrderedDict(
            name=name, type=layer.type, group=layer_group(layer.type),
            min_ms=st.min_ms, median_ms=st.median_ms, mean_ms=st.mean_ms, share=0.0,
            flops=flops, gflops_per_s=(flops / (st.median_ms * 1e6) if st.median_ms > 0 else 0.0),
            param_bytes=pbytes, top_shapes=[list(s) for s in tshapes], samples_ms=list(samples)))
    total = sum(l["median_ms"] for l in layers)
    for l in layers:
        # share of the decomposed pass: median of the layer over the sum of layer medians
        l["share"] = l["median_ms"] / total if total > 0 else 0.0
    groups = OrderedDict()
    for g in GROUPS:
        ms = sum(l["median_ms"] for l in layers if l["group"] == g)
        groups[g] = OrderedDict(median_ms=ms, share=ms / total if total > 0 else 0.0,
                                min_ms=sum(l["min_ms"] for l in layers if l["group"] == g),
                                layers=[l["name"] for l in layers if l["group"] == g])
    # the same decomposition from per-layer minima: on a shared machine, where other processes
    # inflate some samples, this is the closer estimate of the undisturbed split
    total_min = sum(l["min_ms"] for l in layers)
    span = stats(timer.span)
    return OrderedDict(
        batch=int(batch),
        input_shapes={k: list(v.shape) for k, v in inputs.items()},
        iterations=int(iterations), warmup=int(warmup),
        layers=layers, groups=groups,
        fc_layers=groups["fc"]["layers"], fc_share=groups["fc"]["share"],
        fc_share_of_minima=groups["fc"]["min_ms"] / total_min if total_min > 0 else 0.0,
        sum_of_layer_medians_ms=total,
        forward_ms=span.as_dict(),
        forward_samples_ms=list(timer.span),
        images_per_s=batch / (span.median_ms * 1e-3) if span.median_ms > 0 else 0.0,
        total_flops=int(sum(l["flops"] for l in layers)),
        caffe=None)


def machine_info(backend) -> dict:
    import numba
    info = OrderedDict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                       cpu_count=os.cpu_count(), numba_threads=numba.get_num_threads(),
                       python=platform.python_version(), numpy=np.__version__, numba=numba.__version__)
    if backend == "cuda":
        from numba import cuda

        from .backend import cuda_simulated
        info["cuda_simulator"] = cuda_simulated()
        if not cuda_simulated():
            name = cuda.get_current_device().name
            info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
    return info


# ---------------------------------------------------------------------------- caffe time logs
_LAYER_LINE = re.compile(r"\]\s*(\S+)\s+forward:\s*([-+0-9.eE]+)\s*ms\.")
_AVG_LINE = re.compile(r"Average Forward pass:\s*([-+0-9.eE]+)\s*ms\.")
# batch from the log text: the net setup prints "Top shape: N C H W (count)" for the input first
_TOP_SHAPE = re.compile(r"Top shape:\s*(\d+)\s+\d+")
_INPUT_DIM = re.compile(r"input_dim:\s*(\d+)")
# batch from the file name: caffenet_b64_TEST.log, alexnet-batch10.log
_NAME_BATCH = re.compile(r"(?:^|[_\-.])b(?:atch)?(\d+)(?=[_\-.]|$)", re.IGNORECASE)


def parse_caffe_log(path, batch=None) -> dict:
    """A ``caffe time`` log -> {path, batch, batch_from, layers: {name: forward ms}, forward_ms}.

    Caffe prints the *mean* over its iterations per layer (``conv1\\tforward: 3.9986 ms.``) and
    ``Average Forward pass: ... ms.``; if the log holds several blocks, the last one wins. The
    batch size comes from ``batch`` if given, else the first ``Top shape:`` / ``input_dim:``
    line of the log, else the file name (``..._b64_...``); if none is found it is an error.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise MinicaffeError(f"{path}: cannot read caffe log: {e.strerror}") from None
    layers = OrderedDict()
    forward = None
    for line in text.splitlines():
        m = _LAYER_LINE.search(line)
        if m:
            layers[m.group(1)] = float(m.group(2))
            continue
        m = _AVG_LINE.search(line)
        if m:
            forward = float(m.group(1))
    if not layers:
        raise MinicaffeError(f"{path}: no 'NAME<TAB>forward: X ms.' lines; is this the output of `caffe time`?")
    src = "argument"
    if batch is None:
        m = _TOP_SHAPE.search(text) or _INPUT_DIM.search(text)
        src = "log"
        if m is None:
            m = _NAME_BATCH.search(os.path.splitext(os.path.basename(str(path)))[0])
            src = "file name"
        if m is None:
            raise MinicaffeError(f"{path}: cannot tell the batch size (no 'Top shape:' line in the log and no "
                                 "'_bN' in the file name); rename it like caffenet_b10_TEST.log")
        batch = int(m.group(1))
    return OrderedDict(path=str(path), batch=int(batch), batch_from=src, layers=layers,
                       forward_ms=forward, sum_of_layers_ms=sum(layers.values()))


def group_caffe_log(log: dict, net) -> dict:
    """Add per-layer shares and group totals to a parsed log, grouping by ``net``'s layer types.

    Caffe's log names layers but not their types: a layer is grouped by the type of the
    same-named layer of our net; names our net lacks (Caffe's ``data`` Input layer) are "other".
    """
    types = {l.name: l.type for l in net.layers}
    total = log["sum_of_layers_ms"]
    groups = OrderedDict((g, 0.0) for g in GROUPS)
    for name, ms in log["layers"].items():
        groups[layer_group(types[name]) if name in types else "other"] += ms
    log["layer_shares"] = OrderedDict((n, ms / total if total > 0 else 0.0) for n, ms in log["layers"].items())
    log["groups"] = OrderedDict((g, OrderedDict(ms=v, share=v / total if total > 0 else 0.0))
                                for g, v in groups.items())
    log["fc_share"] = groups["fc"] / total if total > 0 else 0.0
    log["images_per_s"] = (log["batch"] / (log["forward_ms"] * 1e-3)) if log["forward_ms"] else None
    log["unmatched"] = [n for n in log["layers"] if n not in types or types[n] == "Input"]
    return log


def attach_caffe(run: dict, log: dict):
    """Put a parsed, grouped Caffe log beside our run of the same batch size."""
    run["caffe"] = OrderedDict(
        path=log["path"], forward_ms=log["forward_ms"], sum_of_layers_ms=log["sum_of_layers_ms"],
        layers=OrderedDict((n, OrderedDict(ms=ms, share=log["layer_shares"][n])) for n, ms in log["layers"].items()),
        groups=log["groups"], fc_share=log["fc_share"], images_per_s=log["images_per_s"],
        unmatched=log["unmatched"])
    return run


# ---------------------------------------------------------------------------- output
def _fmt_bytes(n):
    return f"{n / 2**20:8.2f}" if n else "       -"


def format_table(report: dict, run: dict) -> str:
    """The readable per-layer table of one run (one batch size)."""
    caffe = run.get("caffe")
    head = (f"{report['net']}  backend {report['backend']}  batch {run['batch']}  "
            f"({run['iterations']} timed forwards after {run['warmup']} warm-up; "
            f"{report['machine']['numba_threads']} numba threads)")
    m = report["machine"]
    lb, la = m.get("load_average_before"), m.get("load_average_after")
    if lb and la and max(lb[0], la[0]) > 0.5 * (m.get("cpu_count") or 1):
        head += (f"\nnote: 1-min load average {lb[0]:.1f} before / {la[0]:.1f} after on {m.get('cpu_count')} cores: "
                 "other processes shared the CPU; minima are the better estimate")
    cols = (f"{'layer':<18}{'type':<13}{'min ms':>9}{'median ms':>11}{'share':>8}{'MFLOP':>10}{'GFLOP/s':>9}"
            f"{'param MiB':>10}")
    if caffe:
        cols += f" | {'caffe ms':>9}{'caffe %':>8}"
    lines = [head, cols, "-" * len(cols)]
    for l in run["layers"]:
        row = (f"{l['name'][:17]:<18}{l['type'][:12]:<13}{l['min_ms']:9.3f}{l['median_ms']:11.3f}"
               f"{100 * l['share']:7.1f}%{l['flops'] / 1e6:10.1f}{l['gflops_per_s']:9.2f} "
               f"{_fmt_bytes(l['param_bytes'])} ")
        if caffe:
            c = caffe["layers"].get(l["name"])
            row += f"| {c['ms']:9.3f}{100 * c['share']:7.1f}%" if c else f"| {'-':>9}{'-':>8}"
        lines.append(row)
    lines.append("-" * len(cols))
    g = run["groups"]
    lines.append("groups (median ms, share): " + "  ".join(
        f"{k} {v['median_ms']:.2f} ({100 * v['share']:.1f}%)" for k, v in g.items()))
    if caffe:
        lines.append("caffe groups (ms, share):  " + "  ".join(
            f"{k} {v['ms']:.2f} ({100 * v['share']:.1f}%)" for k, v in caffe["groups"].items()))
    fc = "+".join(run["fc_layers"]) or "(no fc layers)"
    line = (f"{fc} share: {100 * run['fc_share']:.1f}% of the forward pass "
            f"(from per-layer minima: {100 * run['fc_share_of_minima']:.1f}%)")
    if caffe:
        line += f"   (Caffe: {100 * caffe['fc_share']:.1f}%)"
    lines.append(line)
    f = run["forward_ms"]
    line = (f"sum of layer medians {run['sum_of_layer_medians_ms']:.2f} ms; "
            f"whole forward median {f['median_ms']:.2f} ms "
            f"(min {f['min_ms']:.2f}); {run['images_per_s']:.1f} images/s; {run['total_flops'] / 1e9:.2f} GFLOP "
            f"-> {run['total_flops'] / (f['median_ms'] * 1e6):.2f} GFLOP/s")
    lines.append(line)
    if caffe:
        line = f"Caffe: Average Forward pass {caffe['forward_ms']} ms"
        if caffe["images_per_s"]:
            line += (f", {caffe['images_per_s']:.1f} images/s; "
                     f"ours / Caffe time: {f['median_ms'] / caffe['forward_ms']:.2f}x")
        lines.append(line)
    return "\n".join(lines)


def format_caffe(run: dict) -> str:
    """Our numbers as ``caffe time`` prints them (mean ms per layer, as Caffe averages)."""
    lines = [f"Average time per layer: (batch {run['batch']}, {run['iterations']} iterations)"]
    for l in run["layers"]:
        lines.append(f"{l['name']:>10}\tforward: {l['mean_ms']:.5g} ms.")
    lines.append(f"Average Forward pass: {run['forward_ms']['mean_ms']:.6g} ms.")
    return "\n".join(lines)


def plot(report: dict, out_png: str):
    """Stacked bars per batch size (ours, and Caffe's beside when logs were given) -> PNG.

    Left: share of forward time by layer group (100% stacked); right: ms per image by group.
    """
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    bars = []  # (label, batch, {group: ms}, is_caffe)
    batches = sorted({r["batch"] for r in report["runs"]} | {c["batch"] for c in report["caffe_logs"]})
    for b in batches:
        for r in report["runs"]:
            if r["batch"] == b:
                bars.append((f"minicaffe\nbatch {b}", b, {g: r["groups"][g]["median_ms"] for g in GROUPS}, False))
                if r.get("caffe"):
                    bars.append((f"Caffe\nbatch {b}", b, {g: r["caffe"]["groups"][g]["ms"] for g in GROUPS}, True))
        if not any(r["batch"] == b for r in report["runs"]):
            for c in report["caffe_logs"]:
                if c["batch"] == b:
                    bars.append((f"Caffe\nbatch {b}", b, {g: c["groups"][g]["ms"] for g in GROUPS}, True))
    if not bars:
        raise MinicaffeError("nothing to plot")
    # group bars of one batch together, with a gap between batch sizes
    xs, x, prev = [], 0.0, None
    for _, b, _, _ in bars:
        if prev is not None:
            x += 1.0 if b == prev else 1.6
        xs.append(x)
        prev = b
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, per_image in zip(axes, (False, True)):
        bottoms = np.zeros(len(bars))
        for g in GROUPS:
            vals = []
            for _, b, ms, _ in bars:
                tot = sum(ms.values())
                vals.append(ms[g] / b if per_image else (100 * ms[g] / tot if tot > 0 else 0.0))
            vals = np.array(vals)
            for k, (xx, v, bot) in enumerate(zip(xs, vals, bottoms)):
                ax.bar(xx, v, bottom=bot, width=0.8, color=_COLORS[g], edgecolor="white", linewidth=0.5,
                       hatch="//" if bars[k][3] else None, label=g if k == 0 else None)
                if not per_image and g == "fc" and v >= 4:
                    ax.text(xx, bot + v / 2, f"{v:.0f}%", ha="center", va="center", color="white",
                            fontsize=8, fontweight="bold")
            bottoms += vals
        ax.set_xticks(xs)
        ax.set_xticklabels([lab for lab, _, _, _ in bars], fontsize=8)
        ax.set_ylabel("ms per image" if per_image else "share of forward time (%)")
        ax.set_title("time per image by layer group" if per_image else "forward time decomposed by layer group",
                     fontsize=10)
        if not per_image:
            ax.set_ylim(0, 100)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles[::-1], labels[::-1], loc="center right", fontsize=9, frameon=False)
    m = report["machine"]
    fig.suptitle(f"{report['net']} forward pass, minicaffe backend {report['backend']} "
                 f"({m['numba_threads']} threads, median of {report['iterations']})"
                 + ("; hatched: real Caffe (caffe time)" if any(c for *_, c in bars) else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    fig.savefig(out_png, dpi=150)
    plt.close(fig)


# ---------------------------------------------------------------------------- driver
def profile(prototxt, weights=None, batches=(1,), backend="cpu", iterations=10, warmup=2,
            caffe_logs=(), seed=0, model=None, progress=None) -> dict:
    """Profile one net at several batch sizes -> the full report dict (the JSON)."""
    from .net import Net
    # other processes on the machine inflate timings: keep the load next to the numbers
    load_before = _loadavg()
    net = Net(prototxt, weights, backend=backend, seed=seed)
    net.freeze()                     # as feature extraction runs it: weights never edited
    logs = [group_caffe_log(parse_caffe_log(p), net) for p in caffe_logs]
    runs = []
    for b in batches:
        if progress:
            progress(f"profiling {net.name} at batch {b} ({warmup} warm-up + {iterations} timed forwards)")
        run = profile_net(net, b, iterations, warmup, seed=seed)
        for log in logs:
            if log["batch"] == b:
                attach_caffe(run, log)
        runs.append(run)
    machine = machine_info(backend)
    machine["load_average_before"], machine["load_average_after"] = load_before, _loadavg()
    return OrderedDict(
        schema=SCHEMA, net=net.name, model=model, prototxt=_display_path(prototxt),
        weights=None if weights is None else str(weights), backend=backend,
        iterations=int(iterations), warmup=int(warmup), machine=machine,
        runs=runs, caffe_logs=logs)


def _loadavg():
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _display_path(path):
    """Paths inside the working directory are stored relative (the JSON is committed to the repository)."""
    p = os.path.abspath(str(path))
    cwd = os.getcwd()
    return os.path.relpath(p, cwd) if p.startswith(cwd + os.sep) else str(path)


def write_html_report(report: dict, out_html: str, chart_png: str | None = None):
    """The profile as one self-contained page (:mod:`minicaffe.html_report`): the stacked-bar chart
    (``chart_png``, or drawn into a temporary file) and, per batch size, the per-layer table."""
    import tempfile

    from . import html_report as rep
    with tempfile.TemporaryDirectory() as tmp:
        png = chart_png or os.path.join(tmp, "profile.png")
        if not chart_png:
            plot(report, png)
        sections = [rep.Figure(png, caption="per-layer share of the forward pass, by layer group")]
        for run in report["runs"]:
            rows = [[l["name"], l["type"], f"{l['min_ms']:.3f}", f"{l['median_ms']:.3f}", f"{100 * l['share']:.1f}%",
                     f"{l['flops'] / 1e6:.1f}", f"{l['gflops_per_s']:.1f}"] for l in run["layers"]]
            sections.append(rep.Table(["layer", "type", "min ms", "median ms", "share", "MFLOP", "GFLOP/s"], rows,
                                      title=f"batch {run['batch']}",
                                      caption=f"whole forward median {run['forward_ms']['median_ms']:.2f} ms, "
                                              f"{run['images_per_s']:.1f} images/s; "
                                              f"fc share {100 * run['fc_share']:.1f}%"))
        rep.write_html(out_html, f"minicaffe profile: {report.get('net', '')}".strip(), sections)
