"""``python -m minicaffe.extract --cluster``: Dask shards merged into the single-machine layout, under faults.

Every test runs on loopback (127.0.0.1) with 2 worker processes, the small CaffeNet-topology
fixture net with seeded weights saved to a temp .h5 (numpy backend: no JIT in fresh workers), and
a dozen generated images in an ImageFolder plus one file that is not an image. The reference is a
single-process run of the same CLI without ``--cluster`` (the path tested against hand-computed
features in test_extract.py); rows are compared by path, never by position. The fault tests
really kill processes: a worker (``os.kill`` of its pid, SIGKILL) in the middle of a shard, and a
driver subprocess after two shards, which is then resumed.
"""
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
from conftest import FIXTURES, assert_close, fault_env

from minicaffe import Net
from minicaffe.cli import run
from minicaffe.extract import main
from minicaffe.features import cluster as mdist

PROTO = str(FIXTURES / "caffenet_small.prototxt")
N_IMAGES = 12
LAYERS = "pool5,fc7"
# seconds each worker sleeps before every decode (batches of 1 image) so kills land mid-run
THROTTLE = "0.25"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    from PIL import Image
    root = tmp_path_factory.mktemp("dist")
    weights = str(root / "small_seed3.h5")
    Net(PROTO, seed=3).save_h5(weights)
    rng = np.random.default_rng(10)
    for i in range(N_IMAGES):
        cls = root / "imgs" / ("cats" if i % 3 else "dogs")
        os.makedirs(cls, exist_ok=True)
        h, w = (int(v) for v in rng.integers(30, 140, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(cls / f"im{i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / "imgs" / "dogs" / "broken.jpg").write_bytes(b"not an image at all")
    old = os.getcwd()
    os.chdir(root)          # relative paths on the command line: outputs keep them as given
    common = ["--prototxt", PROTO, "--weights", weights, "--backend", "numpy", "--layers", LAYERS, "-q"]
    rc = run(main, ["imgs", "-o", "single.h5", *common, "--workers", "0", "--batch-size", "4"])
    assert rc == 0
    yield {"root": root, "common": common, "single": read("single.h5")}
    os.chdir(old)


@pytest.fixture(scope="module")
def cluster(env):
    """A LocalCluster the tests hold (and can kill workers of): 2 processes, 1 thread each, loopback only."""
    import logging

    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster
    # the test hooks (tests/hooks/sitecustomize.py) in every worker, also those the nanny restarts after a kill
    hooks = {k: v for k, v in fault_env().items() if k in ("PYTHONPATH", "MINICAFFE_TEST_HOOKS")}
    saved = {k: os.environ.get(k) for k in hooks}
    os.environ.update(hooks)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.CRITICAL) as lc, Client(lc) as client:
        yield lc, client
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def slow_workers(cluster):
    """Every decode on the cluster's workers sleeps THROTTLE seconds during the test."""
    _, client = cluster
    client.run(lambda: os.environ.__setitem__("MINICAFFE_TEST_DECODE_DELAY", THROTTLE))
    yield
    client.run(lambda: os.environ.pop("MINICAFFE_TEST_DECODE_DELAY", None))


@pytest.fixture
def reports(monkeypatch):
    """Every ClusterReport the extract command's cluster runs return during the test, in order."""
    got, real = [], mdist.run_cluster

    def recording(*a, **kw):
        got.append(real(*a, **kw))
        return got[-1]
    monkeypatch.setattr(mdist, "run_cluster", recording)
    return got


def read(path):
    with h5py.File(path, "r") as f:
        return {"paths": list(f["paths"].asstr()[()]),
                "feats": {k: f["features"][k][()] for k in f["features"]},
                "labels": f["labels"][()], "class_names": list(f["class_names"].asstr()[()]),
                "failed": [tuple(r) for r in f["failed"].asstr()[()]], "attrs": dict(f.attrs),
                "dsattrs": {k: {a: np.asarray(v).tolist() for a, v in f["features"][k].attrs.items()}
                            for k in f["features"]}}


def assert_same_as_single(env, path):
    """The file at ``path`` holds every input once, with the single-process run's features, by path."""
    a, ref = read(path), env["single"]
    dup = {p for p in a["paths"] if a["paths"].count(p) > 1}
    assert not dup, f"duplicated rows: {sorted(dup)}"
    assert sorted(a["paths"]) == sorted(ref["paths"]) and len(a["paths"]) == N_IMAGES
    assert a["paths"] == ref["paths"], "rows must be in input order, as a single-machine run"
    assert a["failed"] == ref["failed"] and len(a["failed"]) == 1 and "broken.jpg" in a["failed"][0][0]
    row = {p: i for i, p in enumerate(ref["paths"])}
    order = [row[p] for p in a["paths"]]        # by path, whatever order the file has
    assert list(a["labels"]) == list(ref["labels"][order]) and a["class_names"] == ref["class_names"]
    for k, v in ref["feats"].items():
        assert_close(a["feats"][k], v[order], 1e-5, f"{k}: cluster vs single process")
    skip = {"created", "batch_size"}     # the run's own time and --batch-size; all other provenance equal
    assert {k: v for k, v in a["attrs"].items() if k not in skip | {"run"}} == \
           {k: v for k, v in ref["attrs"].items() if k not in skip | {"run"}}
    assert a["dsattrs"] == ref["dsattrs"]


@pytest.mark.slow
def test_local_cluster_matches_single_process(env, capsys, reports):
    pytest.importorskip("distributed")
    rc = run(main, ["imgs", "-o", "local.h5", *env["common"], "--cluster", "local:2", "--shard-size", "3",
                    "--batch-size", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert_same_as_single(env, "local.h5")
    assert read("local.h5")["attrs"]["batch_size"] == 2
    assert not os.path.exists("local.h5.parts")
    assert "5 shard(s) of <= 3 image(s) on 2 Dask worker(s) at tcp://127.0.0.1:" in err
    assert "dashboard: " in err and err.count("broken.jpg: not a recognised image") == 1
    res = reports[-1].results
    assert sorted(r["seq"] for r in res) == list(range(5)) and sum(r["n"] for r in res) == N_IMAGES + 1
    assert len({r["pid"] for r in res}) == 2, "both worker processes should have taken shards"
    # the net is loaded once per worker process: only each process's first shard pays for it
    for pid in {r["pid"] for r in res}:
        mine = sorted((r for r in res if r["pid"] == pid), key=lambda r: r["start"])
        assert all(r["net_load_s"] == 0 for r in mine[1:]) and mine[0]["net_load_s"] > 0


@pytest.mark.slow
def test_worker_killed_mid_shard(env, cluster, slow_workers, reports):
    lc, client = cluster
    out = "killw.h5"
    box = {}
    argv = ["imgs", "-o", out, *env["common"], "--cluster", lc.scheduler_address, "--shard-size", "2",
            "--batch-size", "1"]
    t = threading.Thread(target=lambda: box.update(rc=run(main, argv)), daemon=True)
    t.start()
    pids = client.run(os.getpid)                           # worker address -> pid
    deadline, victim = time.time() + 60, None
    while time.time() < deadline and victim is None:
        # kill once one shard has finished (the net is loaded) and a worker is inside another
        parts = out + ".parts"
        n_done = sum(f.endswith(".h5") for f in os.listdir(parts)) if os.path.isdir(parts) else 0
        busy = {a: ks for a, ks in client.processing().items() if ks}
        if n_done >= 1 and busy:
            addr = sorted(busy)[0]
            victim, keys = pids[addr], set(busy[addr])
        else:
            time.sleep(0.02)
    assert victim is not None, "no shard was running within 60 s"
    os.kill(victim, signal.SIGKILL)
    t.join(90)
    assert not t.is_alive(), "the driver did not finish after a worker was killed"
    assert box.get("rc") == 0
    assert_same_as_single(env, out)
    res = reports[-1].results
    assert sorted(r["seq"] for r in res) == list(range(7)), "each shard reported once"
    rerun = [r for r in res if f"minicaffe-shard-{os.path.basename(r['part'])[6:-3]}" in keys]
    assert rerun and all(r["pid"] != victim for r in rerun), "the killed worker's shards were redone elsewhere"
    print(f"\nkilled worker pid {victim} while it held {sorted(keys)}; redone by pids "
          f"{sorted({r['pid'] for r in rerun})}")


@pytest.mark.slow
def test_resume_after_driver_killed(env, cluster, slow_workers, capsys, tmp_path, reports):
    lc, _ = cluster
    out = str(tmp_path / "killd.h5")
    parts = out + ".parts"
    args = ["imgs", "-o", out, *env["common"], "--cluster", lc.scheduler_address, "--shard-size", "2",
            "--batch-size", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "minicaffe.extract", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60

    def n_parts():
        return sum(f.endswith(".h5") for f in os.listdir(parts)) if os.path.isdir(parts) else 0
    while time.time() < deadline and n_parts() < 2:
        assert proc.poll() is None, f"the driver ended before it could be killed: {proc.communicate()[1][-2000:]}"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(out), "after a kill the output is absent (never half written)"
    done = [f for f in os.listdir(parts) if f.endswith(".h5")]
    assert 2 <= len(done) < 7, f"killed with {len(done)} of 7 shards finished"
    # an orphaned task of the dead driver finishing late: a second copy of a finished part
    # under a later run id must not give duplicate rows
    src = os.path.join(parts, sorted(done)[0])
    with open(src, "rb") as f, open(os.path.join(parts, "shard-99990101T000000-late00-0000000.h5"), "wb") as g:
        g.write(f.read())

    rc = run(main, args)
    err = capsys.readouterr().err
    assert rc == 2 and "--resume" in err
    rc = run(main, [*args, "--resume"])
    err = capsys.readouterr().err
    assert rc == 0, err
    # the parts of a run killed mid-way are reused: only the other images are extracted again
    n_resumed = reports[-1].resumed
    assert n_resumed >= 4 and f"resuming: {n_resumed} image(s) already done" in err
    assert reports[-1].images == N_IMAGES + 1 - n_resumed
    assert reports[-1].dropped_duplicates >= 2
    assert not os.path.exists(parts)
    assert_same_as_single(env, out)


def test_usage_errors_are_one_line(env, capsys, tmp_path):
    for extra, want in ((["--cluster", "bogus"], "expected local, local:N or a scheduler address"),
                        (["--cluster", "local:0"], "local:N needs a number of worker processes >= 1"),
                        (["--cluster", "local:1", "--shard-size", "0"], "--shard-size must be at least 1")):
        rc = run(main, ["imgs", "-o", str(tmp_path / "u.h5"), *env["common"], *extra])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and want in err, err
        assert not os.path.exists(tmp_path / "u.h5")
        shutil.rmtree(tmp_path / "u.h5.parts", ignore_errors=True)   # main wrote run.json before the check


def test_dedupe_keeps_first_occurrence():
    from minicaffe.features.store import Source
    def f(rows):
        return lambda: {"x": np.asarray(rows, np.float32)[:, None]}
    a = Source(["p0", "p1"], [("bad", "why")], f([0, 1]))
    b = Source(["p1", "p2"], [("bad", "why again")], f([10, 2]))
    merged, dropped = mdist.dedupe([a, b])
    assert dropped == 2 and merged[0] is a
    assert merged[1].paths == ["p2"] and merged[1].failed == [] and merged[1].feats()["x"].ravel().tolist() == [2]
