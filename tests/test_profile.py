"""Tests of ``minicaffe.profiling`` (``python -m minicaffe.profile``) and ``minicaffe.timing``: consistency, schema,
log parsing, CLI, CUDA path.

Nothing here asserts a speed: the checks compare timings of the same run with each other (the
per-layer decomposition must add up to the whole pass) and check structure. Nets are the small
fixture CaffeNet and a tiny hand-written net, so the file runs in seconds.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import FIXTURES, ROOT, SHARED

from minicaffe import Net
from minicaffe.errors import MinicaffeError
from minicaffe.profiling import GROUPS, SCHEMA, group_caffe_log, parse_caffe_log, profile_net
from minicaffe.timing import Timing, repeat, stats
from minicaffe.tools.profile import main

LOGS = SHARED / "reference" / "caffe_time_logs"
SMALL = FIXTURES / "caffenet_small.prototxt"

# a tiny net for the simulator (which runs every CUDA thread in Python): conv 4x3x3, relu, pool, fc 5
TINY = textwrap.dedent("""\
    name: "tiny"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
            convolution_param { num_output: 4 kernel_size: 3 } }
    layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
    layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
            pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
    layer { name: "fc1" type: "InnerProduct" bottom: "pool1" top: "fc1" inner_product_param { num_output: 5 } }
    """)

LAYER_KEYS = {"name", "type", "group", "min_ms", "median_ms", "mean_ms", "share", "flops", "gflops_per_s",
              "param_bytes", "top_shapes", "samples_ms"}
RUN_KEYS = {"batch", "input_shapes", "iterations", "warmup", "layers", "groups", "fc_layers", "fc_share",
            "fc_share_of_minima",
            "sum_of_layer_medians_ms", "forward_ms", "forward_samples_ms", "images_per_s", "total_flops", "caffe"}
REPORT_KEYS = {"schema", "net", "model", "prototxt", "weights", "backend", "iterations", "warmup", "machine",
               "runs", "caffe_logs"}
STATS_KEYS = {"min_ms", "median_ms", "mean_ms", "n"}


@pytest.fixture(scope="module")
def small_prototxt():
    if not SMALL.is_file():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return str(SMALL)


@pytest.fixture(scope="module")
def caffe_logs():
    logs = sorted(LOGS.glob("caffenet_b*_TEST.log"))
    if len(logs) != 3:
        pytest.skip(f"shared caffe time logs not found at {LOGS}")
    return [str(p) for p in logs]


# ---------------------------------------------------------------------------- timing helper
def test_stats_min_median_mean():
    s = stats([3.0, 1.0, 2.0, 10.0])
    assert (s.min_ms, s.median_ms, s.mean_ms, s.n) == (1.0, 2.5, 4.0, 4)
    with pytest.raises(ValueError):
        stats([])


def test_repeat_warms_up_untimed_and_syncs():
    calls, syncs = [], []
    st = repeat(lambda: calls.append(1), repeats=4, warmup=3, sync=lambda: syncs.append(1))
    assert len(calls) == 7 and st.n == 4, (len(calls), st)
    assert len(syncs) == 8, "sync must run before the clock starts and before it stops"


def test_timing_measures_the_block_between_two_syncs(monkeypatch, capsys):
    """A fake clock: the block's time is exactly the clock's advance between the two syncs."""
    import minicaffe.timing as timing
    clock, log = [100.0], []
    monkeypatch.setattr(timing, "now_ms", lambda: log.append("clock") or clock[0])
    with Timing("fc6: ", sync=lambda: log.append("sync")) as t:
        clock[0] += 3.25
    assert t.ms == 3.25 and log == ["sync", "clock", "sync", "clock"], (t.ms, log)
    assert capsys.readouterr().out == "fc6: 3.25 ms\n"
    with Timing("quiet: ", enabled=False) as t:
        clock[0] += 1.5
    assert t.ms == 1.5 and capsys.readouterr().out == ""


# ---------------------------------------------------------------------------- consistency
def test_per_layer_sum_matches_whole_forward(small_prototxt, monkeypatch):
    """A fake clock that only the layers advance (layer i "costs" i + 1 ms, plus a 0.5 ms gap before
    every layer): each layer's samples, the pass span and the derived figures are then known exactly,
    so nothing missed, counted twice or billed to the wrong layer can hide in timing noise."""
    import minicaffe.profiling as prof
    net = Net(small_prototxt, None, backend="cpu", seed=0)
    names = [l.name for l in net.layers if l.type != "Input"]
    cost = {n: float(i + 1) for i, n in enumerate(names)}
    gap = 0.5
    clock = [0.0]
    monkeypatch.setattr(prof, "now_ms", lambda: clock[0])

    def before(net_, i, layer):       # registered before the profiler's hooks: runs before its clock read
        clock[0] += gap

    def after(net_, i, layer, tops):  # ... and before its after-hook's read: the layer's own time
        clock[0] += cost[layer.name]
    h = net.add_hook(before=before, after=after)
    try:
        run = profile_net(net, batch=1, iterations=4, warmup=1)
    finally:
        net.remove_hook(h)
    assert [l["name"] for l in run["layers"]] == names, "every non-Input layer is timed once, in order"
    for l in run["layers"]:
        assert l["samples_ms"] == [cost[l["name"]]] * 4, (l["name"], l["samples_ms"])
    span = sum(cost.values()) + gap * (len(names) - 1)    # first before-hook to last after-hook
    assert run["forward_samples_ms"] == [span] * 4 and run["forward_ms"]["median_ms"] == span
    assert run["sum_of_layer_medians_ms"] == sum(cost.values())
    for l in run["layers"]:
        assert abs(l["share"] - cost[l["name"]] / sum(cost.values())) < 1e-12, l["name"]
    assert abs(sum(g["share"] for g in run["groups"].values()) - 1) < 1e-12


def test_flops_and_params_per_layer(small_prototxt):
    net = Net(small_prototxt, None, backend="cpu", seed=0)
    run = profile_net(net, batch=3, iterations=1, warmup=1)
    by = {l["name"]: l for l in run["layers"]}
    # conv1: 16 filters 3x11x11 over a 55x55 output, batch 3, multiply-add = 2 FLOPs
    assert by["conv1"]["flops"] == 2 * 3 * 16 * 55 * 55 * 3 * 11 * 11, by["conv1"]["flops"]
    assert by["fc6"]["param_bytes"] == 4 * sum(a.size for a in net.params["fc6"])
    assert by["relu1"]["param_bytes"] == 0 and by["relu1"]["group"] == "ReLU"
    assert run["fc_layers"] == ["fc6", "fc7", "fc8"]
    assert run["input_shapes"] == {"data": [3, 3, 227, 227]}


def test_rejects_timing_the_first_call(small_prototxt):
    net = Net(small_prototxt, None, backend="cpu", seed=0)
    with pytest.raises(MinicaffeError, match="warmup"):
        profile_net(net, batch=1, iterations=2, warmup=0)


# ---------------------------------------------------------------------------- JSON schema
def test_json_schema_stable(small_prototxt, caffe_logs, tmp_path):
    out = tmp_path / "p.json"
    assert main(["--prototxt", small_prototxt, "--batch", "1,10", "--iterations", "1", "--warmup", "1",
                 "--caffe-log", *caffe_logs, "--json", str(out), "-q"]) == 0
    rep = json.loads(out.read_text())
    assert set(rep) == REPORT_KEYS, sorted(set(rep) ^ REPORT_KEYS)
    assert rep["schema"] == SCHEMA == "minicaffe.profile/1"
    assert [r["batch"] for r in rep["runs"]] == [1, 10]
    for r in rep["runs"]:
        assert set(r) == RUN_KEYS, sorted(set(r) ^ RUN_KEYS)
        assert set(r["forward_ms"]) == STATS_KEYS
        assert list(r["groups"]) == list(GROUPS)
        assert all(set(g) == {"median_ms", "share", "min_ms", "layers"} for g in r["groups"].values())
        for l in r["layers"]:
            assert set(l) == LAYER_KEYS, sorted(set(l) ^ LAYER_KEYS)
        assert r["caffe"] is not None and set(r["caffe"]["groups"]) == set(GROUPS)
    assert sorted(c["batch"] for c in rep["caffe_logs"]) == [1, 10, 64]


# ---------------------------------------------------------------------------- caffe logs
def test_parse_shared_caffe_logs(caffe_logs, small_prototxt):
    net = Net(small_prototxt, None, backend="numpy", seed=0)
    parsed = {}
    for p in caffe_logs:
        log = group_caffe_log(parse_caffe_log(p), net)
        parsed[log["batch"]] = log
        with open(p) as f:
            n_lines = sum("\tforward:" in line for line in f)
        assert len(log["layers"]) == n_lines == 24, (p, len(log["layers"]), n_lines)
        assert list(log["layers"])[:2] == ["data", "conv1"] and list(log["layers"])[-1] == "prob"
        # caffe time's "Average Forward pass" is the sum of its per-layer means (to its print precision)
        assert abs(log["sum_of_layers_ms"] - log["forward_ms"]) / log["forward_ms"] < 0.01, \
            (p, log["sum_of_layers_ms"], log["forward_ms"])
        assert log["unmatched"] == ["data"]
    assert sorted(parsed) == [1, 10, 64]
    # the numbers the shared README quotes: fc6+fc7+fc8 ~60% at batch 1, ~6% at batch 64
    assert parsed[1]["layers"]["fc6"] == 24.18
    assert 0.55 < parsed[1]["fc_share"] < 0.65, parsed[1]["fc_share"]
    assert 0.03 < parsed[64]["fc_share"] < 0.09, parsed[64]["fc_share"]


def test_caffe_log_batch_from_text_and_errors(tmp_path):
    body = "I1125 11:18:30.705430 13802 caffe.cpp:393]      conv1\tforward: 3.5 ms.\n" \
           "I1125 11:18:30.706037 13802 caffe.cpp:401] Average Forward pass: 3.5 ms.\n"
    p = tmp_path / "run.log"
    p.write_text("I1125 net.cpp:155] Top shape: 7 3 227 227 (1082109)\n" + body)
    log = parse_caffe_log(p)
    assert (log["batch"], log["batch_from"], log["layers"], log["forward_ms"]) == (7, "log", {"conv1": 3.5}, 3.5)
    q = tmp_path / "nobatch.log"
    q.write_text(body)
    with pytest.raises(MinicaffeError, match="batch size"):
        parse_caffe_log(q)
    r = tmp_path / "empty_b3.log"
    r.write_text("nothing here\n")
    with pytest.raises(MinicaffeError, match="forward"):
        parse_caffe_log(r)


# ---------------------------------------------------------------------------- CLI
def test_cli_table_caffe_format_and_plot(small_prototxt, caffe_logs, tmp_path, capsys):
    png = tmp_path / "p.png"
    assert main(["--prototxt", small_prototxt, "--batch", "1", "--iterations", "2", "--warmup", "1",
                 "--caffe-log", *caffe_logs, "--plot", str(png), "-q"]) == 0
    out = capsys.readouterr().out
    assert "fc6+fc7+fc8 share:" in out and "(Caffe: 58." in out and "images/s" in out, out
    assert "is for batch 64, which was not profiled" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--prototxt", small_prototxt, "--iterations", "2", "--warmup", "1", "--caffe-format", "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].endswith(" ms.") and out[1].split("\t")[0].strip() == "conv1" and "\tforward: " in out[1], out[1]
    assert out[-1].startswith("Average Forward pass: ") and out[-1].endswith(" ms."), out[-1]


def test_cli_model_name_and_bad_input(tmp_path):
    from minicaffe.cli import run
    assert run(main, ["--model", "no_such_model", "-q"]) == 2
    assert run(main, ["--prototxt", str(tmp_path / "missing.prototxt"), "-q"]) == 2
    with pytest.raises(MinicaffeError, match="--batch"):
        main(["--prototxt", str(tmp_path / "x"), "--batch", "1,zero"])


def test_model_resolves_registry_prototxt(monkeypatch):
    # --model NAME must profile the registry's prototxt with seeded random weights (no weights file needed)
    import minicaffe.profiling as prof
    seen = {}

    def fake_profile(prototxt, weights, *a, **k):
        seen.update(prototxt=prototxt, weights=weights, model=k.get("model"))
        raise MinicaffeError("stop here")
    monkeypatch.setattr(prof, "profile", fake_profile)
    with pytest.raises(MinicaffeError, match="stop here"):
        main(["--model", "caffenet", "-q"])
    from minicaffe.models import get_model
    assert seen == {"prototxt": get_model("caffenet").prototxt, "weights": None, "model": "caffenet"}


# ---------------------------------------------------------------------------- CUDA (simulator)
@pytest.mark.slow
def test_cuda_path_under_simulator(tmp_path):
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    out = tmp_path / "cuda.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "minicaffe.profile", "--prototxt", str(proto), "--backend", "cuda",
           "--iterations", "2", "--warmup", "1", "--json", str(out), "-q"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads(out.read_text())
    assert rep["backend"] == "cuda" and rep["machine"]["cuda_simulator"] is True
    run = rep["runs"][0]
    assert [l["name"] for l in run["layers"]] == ["conv1", "relu1", "pool1", "fc1"]
    assert [l["group"] for l in run["layers"]] == ["conv", "ReLU", "pool", "fc"]
    assert all(len(l["samples_ms"]) == 2 and l["min_ms"] > 0 for l in run["layers"])
    assert run["fc_layers"] == ["fc1"] and "fc1 share:" in res.stdout


def test_profile_html_page(tmp_path):
    """--html: one self-contained page with the chart and a per-layer table per batch size; it
    renders in a real headless browser where one is installed."""
    from minicaffe import html_report as report
    proto = tmp_path / "p.prototxt"
    proto.write_text("""name: "p"
input: "data" input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }
""")
    out = tmp_path / "profile.html"
    assert main(["--prototxt", str(proto), "--batch", "1,2", "--iterations", "2", "-q", "--html", str(out)]) == 0
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 1
    assert "batch 1" in page and "batch 2" in page
    for name in ("conv", "relu", "fc"):
        assert f">{name}<" in page
    if report.find_browser() is None:
        pytest.skip("no Chromium-family browser installed: the page was checked as text only")
    res = report.browser_check(out, screenshot=tmp_path / "shot.png")
    if res["state"] == "missing":
        pytest.skip(f"the browser could not render: {res.get('stderr', '')[:200]}")
    assert res["state"] == "ok" and res["loaded"] == res["total"] == 1, res
