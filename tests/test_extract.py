"""``python -m minicaffe.extract`` and ``minicaffe.DeCAF`` end to end on real photos and bad files.

Real photos from scikit-image / scikit-learn are copied into a temp ImageFolder at test time; the
net is the small CaffeNet-topology fixture with seeded random weights written to a temp .h5.
Expected features come from ``preprocess_image`` + ``Net.forward`` directly (the pieces tested
in test_preprocess.py / the fixture tests), never from an earlier run of the CLI. One test kills
a real subprocess with SIGKILL mid-run and resumes it.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import FIXTURES, assert_close, fault_env, lazy_importorskip
from test_images import BAD_INPUTS, make_bad_inputs, reads_despite_chmod

from minicaffe import Net
from minicaffe.cli import run
from minicaffe.datasets import list_inputs
from minicaffe.extract import main
from minicaffe.models import CAFFE_PREPROCESSING
from minicaffe.preprocess import oversample, preprocess_image

skdata = lazy_importorskip("skimage.data")
PROTO = str(FIXTURES / "caffenet_small.prototxt")
PHOTOS = {  # class folder -> real photos
    "animals": [("skimage", "chelsea.png"), ("skimage", "astronaut.png")],
    "things": [("skimage", "coffee.png"), ("skimage", "rocket.jpg"), ("sklearn", "china.jpg"),
               ("sklearn", "flower.jpg")],
}


def _source(kind, name):
    if kind == "skimage":
        return os.path.join(skdata.data_dir, name)
    import sklearn.datasets
    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    root = tmp_path_factory.mktemp("extract")
    weights = str(root / "small_seed3.h5")
    Net(PROTO, seed=3).save_h5(weights)
    photos = root / "photos"
    for cls, items in PHOTOS.items():
        os.makedirs(photos / cls)
        for kind, name in items:
            shutil.copy(_source(kind, name), photos / cls / name)
    os.chdir(root)   # paths in outputs are as given on the command line: keep them relative
    return {"root": root, "weights": weights, "photos": "photos", "net": Net(PROTO, weights, backend="cpu")}


def extract(env, *args, capsys=None):
    argv = [*args, "--prototxt", PROTO, "--weights", env["weights"], "-q"]
    rc = run(main, argv)
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


def read(path):
    with h5py.File(path, "r") as f:
        out = {k: f["features"][k][()] for k in f["features"]}
        out["paths"] = list(f["paths"].asstr()[()])
        out["failed"] = [tuple(r) for r in f["failed"].asstr()[()]]
        out["labels"] = f["labels"][()] if "labels" in f else None
        out["class_names"] = list(f["class_names"].asstr()[()]) if "class_names" in f else None
        out["attrs"] = dict(f.attrs)
    return out


def direct(env, paths, blob, pre=False, crop="center"):
    """Features by hand: preprocess_image / oversample + one Net.forward, no extract code."""
    if crop == "center":
        x = np.stack([preprocess_image(p, CAFFE_PREPROCESSING) for p in paths])
    else:
        x = np.concatenate([oversample(p, CAFFE_PREPROCESSING) for p in paths])   # image-major, 10 each
    b = env["net"].forward(x, keep_pre_activation=pre)
    f = b[blob + (".pre" if pre else "")].reshape(len(x), -1)
    return f if crop == "center" else f.reshape(len(paths), 10, -1).mean(1)


def test_features_labels_and_attrs(env, capsys):
    rc, err = extract(env, env["photos"], "-o", "a.h5", "--layers", "decaf5,fc6.pre,fc7", "--workers", "0",
                      capsys=capsys)
    assert rc == 0, err
    r = read("a.h5")
    want_paths = [os.path.join("photos", c, n) for c in sorted(PHOTOS) for n in sorted(n for _, n in PHOTOS[c])]
    assert r["paths"] == want_paths
    assert r["class_names"] == ["animals", "things"]
    assert list(r["labels"]) == [0, 0, 1, 1, 1, 1]
    assert r["failed"] == []
    assert set(k for k in r if not k.islower() or k in ("pool5", "fc6.pre", "fc7")) >= {"pool5", "fc6.pre", "fc7"}
    assert r["pool5"].shape == (6, 32 * 6 * 6) and r["pool5"].dtype == np.float32
    assert_close(r["pool5"], direct(env, want_paths, "pool5"), 1e-5, "pool5 (decaf5)")
    assert_close(r["fc6.pre"], direct(env, want_paths, "fc6", pre=True), 1e-5, "fc6.pre")
    assert_close(r["fc7"], direct(env, want_paths, "fc7"), 1e-5, "fc7")
    a = r["attrs"]
    with open(env["weights"], "rb") as f:
        assert a["weights_sha1"] == hashlib.sha1(f.read()).hexdigest()
    assert json.loads(a["preprocessing"]) == CAFFE_PREPROCESSING.describe()
    assert a["minicaffe_version"] and a["crop"] == "center"
    assert "wrote a.h5: 6 image(s)" in err


def test_pre_relu_flag_and_post_relu(env, capsys):
    rc, err = extract(env, env["photos"], "-o", "pre.h5", "--layers", "fc6", "--pre-relu", "--workers", "0",
                      capsys=capsys)
    assert rc == 0, err
    rc, err = extract(env, env["photos"], "-o", "post.h5", "--layers", "decaf6", "--workers", "0", capsys=capsys)
    assert rc == 0, err
    pre, post = read("pre.h5")["fc6.pre"], read("post.h5")["fc6"]
    assert (pre < 0).any(), "pre-ReLU features must keep negative values"
    # the pre-ReLU blob is kept by a layer-by-layer forward, the post-ReLU one comes from a
    # whole-forward program whose kernels sum in other orders: equal to float32 rounding
    assert_close(post, np.maximum(pre, 0), 1e-5, "fc6 == relu(fc6.pre)")
    assert not post[pre < -1e-4 * np.abs(pre).max()].any(), "a negative pre-ReLU value was not zeroed"


def test_bad_inputs_are_listed_and_the_run_finishes(env, capsys, tmp_path):
    bad = make_bad_inputs(str(tmp_path / "bad"))
    good = [os.path.join(env["photos"], "animals", "chelsea.png"), os.path.join(env["photos"], "things", "rocket.jpg")]
    names = list(BAD_INPUTS)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([os.path.abspath(good[0])] + [bad[n] for n in names] +
                             [str(tmp_path / "missing.jpg"), os.path.abspath(good[1])]) + "\n")
    rc, err = extract(env, str(lst), "-o", "bad.h5", "--layers", "fc7", "--workers", "0", capsys=capsys)
    assert rc == 0, err
    r = read("bad.h5")
    failed = dict(r["failed"])
    root_reads = reads_despite_chmod(bad["unreadable.jpg"])
    table = []
    for n in names:
        p = bad[n]
        why = BAD_INPUTS[n]
        if n == "unreadable.jpg" and root_reads:
            why = None  # as root the chmod 000 file is readable: it must then succeed
        if why is None:
            assert p in r["paths"], f"{n} should have been accepted; failed with {failed.get(p)!r}"
            table.append((n, "ok"))
        else:
            assert p in failed, f"{n} should be in failed"
            assert why in failed[p], f"{n}: reason {failed[p]!r} lacks {why!r}"
            table.append((n, failed[p]))
            assert sum(1 for line in err.splitlines() if line.startswith("minicaffe: warning: " + p + ": ")) == 1
    assert "no such file" in failed[str(tmp_path / "missing.jpg")]
    assert len(r["paths"]) + len(r["failed"]) == len(names) + 3
    assert r["paths"][0] == os.path.abspath(good[0]) and r["paths"][-1] == os.path.abspath(good[1])
    assert_close(r["fc7"][[0, -1]], direct(env, [good[0], good[1]], "fc7"), 1e-5, "good rows among bad ones")
    print("\n".join(f"{n:18s} {o}" for n, o in table))


def test_exit_status_and_usage_errors(env, capsys, tmp_path):
    (tmp_path / "x.jpg").write_text("not an image")
    rc, err = extract(env, str(tmp_path / "x.jpg"), "-o", str(tmp_path / "none.h5"), "--workers", "0", capsys=capsys)
    assert rc == 1 and "no image could be used" in err and "x.jpg" in err
    assert not os.path.exists(tmp_path / "none.h5") and not os.path.exists(tmp_path / "none.h5.parts")
    (tmp_path / "none.h5").write_bytes(b"an earlier output")
    rc, err = extract(env, "no/such/folder", "-o", str(tmp_path / "u.h5"), capsys=capsys)
    assert rc == 2 and err.count("\n") == 1 and "no/such/folder: no such file or folder" in err
    rc, err = extract(env, env["photos"], "-o", str(tmp_path / "u.h5"), "--layers", "fc99", capsys=capsys)
    assert rc == 2 and "'fc99' is not a blob" in err
    rc, err = extract(env, env["photos"], "-o", str(tmp_path / "u.h5"), "--layers", "pool5.pre", capsys=capsys)
    assert rc == 2 and "no pre-activation" in err
    rc, err = extract(env, env["photos"], "-o", str(tmp_path / "none.h5"), capsys=capsys)
    assert rc == 2 and "exists; add --resume" in err and "--force" in err
    rc, err = extract(env, env["photos"], "-o", str(tmp_path / "none.h5"), "--force", "--layers", "fc7",
                      "--workers", "0", capsys=capsys)
    assert rc == 0 and len(read(str(tmp_path / "none.h5"))["paths"]) == 6
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    assert "--resume" in capsys.readouterr().out


def test_oversample_concat_npz(env, capsys):
    rc, err = extract(env, env["photos"], "-o", "o.npz", "--layers", "fc6,fc7", "--concat", "--crop",
                      "oversample", "--workers", "0", "--batch-size", "4", capsys=capsys)
    assert rc == 0, err
    z = np.load("o.npz")
    paths = [str(p) for p in z["paths"]]
    want = np.concatenate([direct(env, paths, "fc6", crop="oversample"),
                           direct(env, paths, "fc7", crop="oversample")], 1)
    # the same by numbers: mean over the 10 crops of image 0, written out
    x0 = oversample(paths[0], CAFFE_PREPROCESSING)
    f0 = env["net"].forward(x0)["fc7"]
    assert_close(z["features/concat"][0, 64:], f0.sum(0) / 10.0, 1e-5, "image 0 fc7 = sum of 10 crops / 10")
    assert z["features/concat"].shape == (6, 128)
    assert_close(z["features/concat"], want, 1e-5, "10-crop average, fc6|fc7 concatenated")
    assert json.loads(str(z["meta"]))["crop"] == "oversample"


def test_worker_processes_match_in_process(env, capsys):
    rc, err = extract(env, env["photos"], "-o", "w0.h5", "--layers", "fc7", "--workers", "0", "--batch-size", "4",
                      capsys=capsys)
    assert rc == 0, err
    rc, err = extract(env, env["photos"], "-o", "w2.h5", "--layers", "fc7", "--workers", "2", "--batch-size", "4",
                      capsys=capsys)
    assert rc == 0, err
    rc, err = extract(env, env["photos"], "-o", "w2n.h5", "--layers", "fc7", "--workers", "2", "--batch-size", "4",
                      "--decoder-priority", "normal", capsys=capsys)
    assert rc == 0, err
    a, b, c = read("w0.h5"), read("w2.h5"), read("w2n.h5")
    assert a["paths"] == b["paths"] == c["paths"]
    assert_close(b["fc7"], a["fc7"], 0, "workers=2 vs in-process decoding")
    assert_close(c["fc7"], a["fc7"], 0, "workers=2 at normal priority vs in-process decoding")


def test_decoder_priority(monkeypatch):
    """auto -> idle on a free machine, normal when less than half a CPU is free; idle decoders
    really run under SCHED_IDLE (Linux)."""
    import minicaffe.features.decode as ex
    monkeypatch.setattr(ex, "_free_cpus", lambda: 1.6)
    assert ex.decoder_priority("auto") == "idle"
    monkeypatch.setattr(ex, "_free_cpus", lambda: 0.3)
    assert ex.decoder_priority("auto") == "normal"
    monkeypatch.setattr(ex, "_free_cpus", lambda: None)
    assert ex.decoder_priority("auto") == "idle"
    assert ex.decoder_priority("normal") == "normal" and ex.decoder_priority("idle") == "idle"
    if not hasattr(os, "SCHED_IDLE"):
        pytest.skip("no SCHED_IDLE on this platform")
    for priority, policy in (("idle", os.SCHED_IDLE), ("normal", os.SCHED_OTHER)):
        pool = ex.DecodePool(1, priority)
        try:
            photo = os.path.join(skdata.data_dir, "chelsea.png")
            [(i, img, reason)] = pool.submit([(0, photo, CAFFE_PREPROCESSING, 10 ** 8, 8)]).result(timeout=60)
            assert img is not None and img.shape == (256, 256, 3), reason
            pids = list(pool.ex._processes)
            assert pids and all(os.sched_getscheduler(p) == policy for p in pids), (priority, pids)
        finally:
            pool.close()


def test_decoder_side_imports_stay_light():
    """The decoder processes import minicaffe.extract (their __main__ under ``python -m``) and
    minicaffe.preprocess; neither may pull in Numba or the layers (~0.45 s of CPU per decoder at
    start), while ``minicaffe.Net`` still resolves on first use."""
    code = ("import sys, minicaffe.extract, minicaffe.preprocess; "
            "heavy = [m for m in ('numba', 'minicaffe.net', 'minicaffe.layers') if m in sys.modules]; "
            "print(heavy); import minicaffe; minicaffe.Net; from minicaffe import Net; "
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(env, capsys, tmp_path):
    """Kill a real extraction with SIGKILL after two checkpoints; --resume must finish it exactly."""
    many = tmp_path / "many"
    for rep in range(3):
        for cls, items in PHOTOS.items():
            os.makedirs(many / f"{cls}{rep}", exist_ok=True)
            for _, n in items:
                shutil.copy(os.path.join(env["photos"], cls, n), many / f"{cls}{rep}" / n)
    out = str(tmp_path / "k.h5")
    common = ["--prototxt", PROTO, "--weights", env["weights"], "--layers", "pool5,fc7", "--batch-size", "4",
              "--workers", "1"]
    cmd = [sys.executable, "-m", "minicaffe.extract", str(many), "-o", out, *common]
    proc = subprocess.Popen(cmd, env=fault_env(MINICAFFE_TEST_DECODE_DELAY="0.1"),     # ~0.4 s per checkpoint
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = out + ".parts"
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.isdir(parts) and sum(f.endswith(".npz") for f in os.listdir(parts)) >= 2:
            break
        assert proc.poll() is None, f"extraction ended before it could be killed: {proc.communicate()[1][-2000:]}"
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no checkpoint appeared within 120 s")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(out), "the output must not exist (complete or absent) after a kill"
    # a kill may land inside a checkpoint write: its part-*.npz.tmp<pid> must be ignored on resume
    n_parts = sum(f.endswith(".npz") for f in os.listdir(parts))
    assert 2 <= n_parts < 5, f"killed with {n_parts} checkpoints of 5"

    rc, err = run(main, [str(many), "-o", out, *common, "-q"]), capsys.readouterr().err
    assert rc == 2 and "--resume" in err
    rc, err = run(main, [str(many), "-o", out, *common, "-q", "--resume"]), capsys.readouterr().err
    assert rc == 0, err
    assert f"resuming: {4 * n_parts} image(s) already done" in err
    assert not os.path.exists(parts)
    rc, err = run(main, [str(many), "-o", str(tmp_path / "full.h5"), *common, "-q"]), capsys.readouterr().err
    assert rc == 0, err
    a, b = read(out), read(str(tmp_path / "full.h5"))
    assert a["paths"] == b["paths"] and len(a["paths"]) == 18
    assert list(a["labels"]) == list(b["labels"]) and a["class_names"] == b["class_names"]
    # Same windows of 4 images in both runs, but the checkpointed rows come from the killed process and
    # the rest from this one: float32 results of two processes are not guaranteed bit-equal (BLAS and
    # Numba choose kernels and work splits at run time), so they are compared to rounding: 1e-6
    # relative, as across batch sizes in test_net. Rows, paths and labels stay exact.
    for k in ("pool5", "fc7"):
        assert_close(a[k], b[k], 1e-6, f"{k}: resumed vs uninterrupted")


def test_resume_complete_file_adds_new_images(env, capsys, tmp_path):
    d = tmp_path / "grow"
    os.makedirs(d)
    photos = sorted(os.path.join(env["photos"], c, n) for c in PHOTOS for _, n in PHOTOS[c])
    for p in photos[:3]:
        shutil.copy(p, d)
    common = ["--layers", "fc7", "--workers", "0", "--batch-size", "2"]
    rc, err = extract(env, str(d), "-o", str(tmp_path / "g.h5"), *common, capsys=capsys)
    assert rc == 0, err
    for p in photos[3:]:
        shutil.copy(p, d)
    rc, err = extract(env, str(d), "-o", str(tmp_path / "g.h5"), *common, "--resume", capsys=capsys)
    assert rc == 0 and "3 image(s) already done, 3 to go" in err, err
    rc, err = extract(env, str(d), "-o", str(tmp_path / "g_full.h5"), *common, capsys=capsys)
    a, b = read(str(tmp_path / "g.h5")), read(str(tmp_path / "g_full.h5"))
    assert a["paths"] == b["paths"] and len(a["paths"]) == 6
    assert_close(a["fc7"], b["fc7"], 1e-6, "grown file vs fresh run")
    rc, err = extract(env, str(d), "-o", str(tmp_path / "g.h5"), "--layers", "fc6", "--workers", "0",
                      "--batch-size", "2", "--resume", capsys=capsys)
    assert rc == 2 and "layers" in err and "--force" in err


def test_listing_rules(tmp_path):
    (tmp_path / "flat" / "sub").mkdir(parents=True)
    for n in ("b.JPG", "a.png", ".hidden.jpg", "notes.txt"):
        (tmp_path / "flat" / n).write_bytes(b"x")
    (tmp_path / "flat" / "sub" / "c.jpeg").write_bytes(b"x")
    lst = list_inputs([str(tmp_path / "flat")])
    assert [os.path.basename(p) for p in lst.paths] == ["a.png", "b.JPG", "c.jpeg"]
    assert not lst.has_labels and lst.class_names is None   # images at the top: not an ImageFolder
    (tmp_path / "l.txt").write_text("# comment\n\nflat/a.png 3\nflat/my photo.jpg\nflat/b.JPG\tcat\n")
    with pytest.raises(Exception, match="mix integer labels and class names"):
        list_inputs([str(tmp_path / "l.txt")])
    (tmp_path / "l2.txt").write_text("flat/a.png\tdog\nflat/my photo.jpg\tcat\nflat/a.png\tdog\n")
    lst = list_inputs([str(tmp_path / "l2.txt")])
    assert lst.paths == [str(tmp_path / "flat" / "a.png"), str(tmp_path / "flat" / "my photo.jpg")]
    assert lst.class_names == ["cat", "dog"] and lst.labels == [1, 0] and lst.duplicates == 1
    (tmp_path / "l3.txt").write_text("flat/my photo.jpg 7\n")
    assert list_inputs([str(tmp_path / "l3.txt")]).labels == [7]


def test_decaf_transformer_pipeline(env):
    import pickle

    from PIL import Image
    from sklearn.base import clone
    from sklearn.pipeline import make_pipeline
    from sklearn.svm import LinearSVC

    import minicaffe
    paths = sorted(os.path.join(env["photos"], c, n) for c in PHOTOS for _, n in PHOTOS[c])
    y = [0 if "animals" in p else 1 for p in paths]
    dc = minicaffe.DeCAF(prototxt=PROTO, weights=env["weights"], layer="decaf7", batch_size=4)
    pipe = make_pipeline(dc, LinearSVC(C=1.0, max_iter=5000))
    pipe.fit(paths, y)
    assert pipe.predict(paths).shape == (6,)
    feats = pipe[0].transform(paths)
    assert_close(feats, direct(env, paths, "fc7"), 1e-5, "DeCAF.transform(paths)")
    pngs = [p for p in paths if p.endswith(".png")]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in pngs]
    assert_close(dc.transform(arrays), dc.transform(pngs), 0, "arrays vs PNG paths")
    two = minicaffe.DeCAF(prototxt=PROTO, weights=env["weights"], layer=["fc6.pre", "fc7"]).fit()
    assert two.transform(pngs[:1]).shape == (1, 128)
    c = clone(dc)
    assert c.get_params()["layer"] == "decaf7"
    back = pickle.loads(pickle.dumps(pipe))
    assert_close(back[0].transform(pngs[:1]), feats[[paths.index(pngs[0])]], 1e-6, "after pickling (batch of 1 vs 4)")
    with pytest.raises(minicaffe.ImageError, match="no such file"):
        dc.transform(["nope.jpg"])


def test_default_model_quickstart(env, capsys):
    """The README quickstart: no model flags -> the embedded EfficientNet-Lite0, global-pool features."""
    from minicaffe.extract import default_model
    from minicaffe.models import MODELS
    if default_model() not in MODELS or not MODELS[default_model()].source.get("package"):
        pytest.skip("no embedded default model registered")
    pytest.importorskip(MODELS[default_model()].source["module"])
    rc = run(main, [os.path.join(env["photos"], "animals"), "-o", "quick.h5", "--workers", "0"])
    err = capsys.readouterr().err
    assert rc == 0, err
    with h5py.File("quick.h5", "r") as f:
        assert f.attrs["model"] == default_model()
        (name,) = list(f["features"])
        X = f["features"][name][()]
    assert X.shape[0] == 2 and X.shape[1] > 100 and np.isfinite(X).all() and (X != 0).any()
    # the run says where the file is and how to load it (the README promises both)
    hint = f"load it with h5py.File({os.path.abspath('quick.h5')!r})['features/{name}'][:]"
    assert hint in err, err[-2000:]


@pytest.mark.slow
def test_decoder_process_death_is_one_failed_row(env, tmp_path):
    """A worker killed while decoding one file (codec crash, OOM killer) fails that file only."""
    d = tmp_path / "crashy"
    os.makedirs(d)
    for c in PHOTOS:
        for _, n in PHOTOS[c]:
            shutil.copy(os.path.join(env["photos"], c, n), d / n)
    shutil.copy(d / "coffee.png", d / "killer.png")
    out = str(tmp_path / "c.h5")
    cmd = [sys.executable, "-m", "minicaffe.extract", str(d), "-o", out, "--prototxt", PROTO, "--weights",
           env["weights"], "--layers", "fc7", "--workers", "2", "--batch-size", "3", "-q"]
    p = subprocess.run(cmd, env=fault_env(MINICAFFE_TEST_CRASH_ON="killer"), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = read(out)
    assert [f for f, _ in r["failed"]] == [str(d / "killer.png")]
    assert "decoder process died" in r["failed"][0][1]
    assert len(r["paths"]) == 6
    want = direct(env, r["paths"], "fc7")
    assert_close(r["fc7"], want, 1e-5, "the other images after a worker death")


def test_typed_load_model_and_the_old_import_path(env):
    """``minicaffe.features.load_model`` takes the command line's options as keywords; the old
    ``minicaffe.extract`` names still import, and its load_model still takes a parsed namespace."""
    from minicaffe import extract as old
    from minicaffe import features
    from minicaffe.tools.extract import build_parser
    loaded = features.load_model(prototxt=PROTO, weights=env["weights"], backend="numpy", mean="channel")
    net, spec, aliases, desc = loaded
    assert loaded.net is net and spec.mean_image is None and spec.mean_values is not None
    assert aliases == {"decaf5": "pool5", "decaf6": "fc6", "decaf7": "fc7"}
    assert desc["weights_sha1"] == net.weights_sha1 and desc["prototxt"] == os.path.abspath(PROTO)
    args = build_parser().parse_args(["x", "-o", "y.h5", "--prototxt", PROTO, "--weights", env["weights"],
                                      "--backend", "numpy", "--mean", "channel"])
    _, spec2, aliases2, desc2 = old.load_model(args)
    assert (spec2, aliases2, desc2) == (spec, aliases, desc)
    assert old.preprocessing_for(args) == spec == features.preprocessing_for(prototxt=PROTO, weights=env["weights"],
                                                                             mean="channel")
    assert (old.FeatureExtractor, old.resolve_layers, old.DecodePool, old.Source) == (
        features.FeatureExtractor, features.resolve_layers, features.DecodePool, features.Source)
    with pytest.raises(old.UsageError, match="give either --model or --prototxt"):
        features.load_model(model="caffenet", prototxt=PROTO, weights=env["weights"])
