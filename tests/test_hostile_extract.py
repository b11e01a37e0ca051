"""Hostile inputs and careless use of the extraction and command-line tools (issue 19, CLI half).

Each test builds its own hostile case: a second writer on one output, a resume with another net
or weights under the same file names, an image of extreme aspect ratio, link cycles and file
names that are not UTF-8, unwritable outputs, Ctrl-C, a cluster that cannot be reached, damaged
checkpoints, a truncated cached weights file, references that cannot run, contradictory
arguments, fine-tuned weights given to ``--model``, NaN weights. The net is the small
CaffeNet-topology fixture with seeded weights; images are small seeded random pictures. Most runs
are in-process with ``--backend numpy --workers 0`` (no JIT, no decoder processes); subprocesses
only where a signal or the peak memory of a whole run is the point. docs/reliability.md has the
table of cases.
"""
import fcntl
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import FIXTURES, ROOT, fault_env

from minicaffe import Net
from minicaffe.cli import Interrupted, run, shown
from minicaffe.datasets import list_inputs
from minicaffe.errors import ImageError, WeightsError
from minicaffe.extract import main

PROTO = str(FIXTURES / "caffenet_small.prototxt")
#: the peak resident memory allowed for the memory-bound cases
PEAK_LIMIT_KB = 1536 * 1024


def _save_png(path, h, w, seed):
    from PIL import Image
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    root = tmp_path_factory.mktemp("hostile")
    weights = str(root / "small_seed3.h5")
    Net(PROTO, seed=3).save_h5(weights)
    imgs = root / "imgs"
    imgs.mkdir()
    for i in range(5):
        _save_png(imgs / f"im{i}.png", 40 + 7 * i, 60 - 5 * i, i)
    return {"root": root, "weights": weights, "imgs": str(imgs)}


def common(env, weights=None, proto=PROTO):
    return ["--prototxt", proto, "--weights", weights or env["weights"], "--backend", "numpy", "--workers", "0",
            "--layers", "fc7", "-q"]


def extract(capsys, *argv):
    rc = run(main, list(argv))
    return rc, capsys.readouterr().err


def read(path):
    with h5py.File(path, "r") as f:
        out = {"fc7": f["features/fc7"][()], "paths": list(f["paths"].asstr()[()]),
               "failed": [tuple(r) for r in f["failed"].asstr()[()]], "keys": list(f)}
        if "path_bytes" in f:
            out["path_bytes"] = list(f["path_bytes"][()])
    return out


def one_error_line(err):
    lines = [ln for ln in err.strip().splitlines() if ln]
    return len(lines) == 1 and lines[0].startswith("minicaffe: error: ") and "Traceback" not in err


# ------------------------------------------------------------------------------------ lock and digest
def test_second_writer_gets_one_line_error(env, capsys, tmp_path):
    out = str(tmp_path / "o.h5")
    fd = os.open(out + ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)     # another run holds the output
        os.write(fd, b"4242\n")
        rc, err = extract(capsys, env["imgs"], "-o", out, *common(env))
        assert rc == 2 and one_error_line(err) and "another extract run (pid 4242)" in err, err
        assert not os.path.exists(out) and not os.path.exists(out + ".parts")
    finally:
        os.close(fd)
    # the holder died (its lock went with it): the stale lock file does not block, and goes away
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env))
    assert rc == 0, err
    assert not os.path.exists(out + ".lock")


def test_resume_compares_content_not_names(env, capsys, tmp_path):
    out = str(tmp_path / "r.h5")
    proto = str(tmp_path / "net.prototxt")
    shutil.copy(PROTO, proto)
    w = str(tmp_path / "w.h5")
    shutil.copy(env["weights"], w)
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env, w, proto))
    assert rc == 0, err
    # other weights under the same file name: refused, naming the weights
    Net(PROTO, seed=4).save_h5(w)
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env, w, proto), "--resume")
    assert rc == 2 and one_error_line(err) and "different weights" in err and "--force" in err, err
    # another net (a changed parameter) under the same file name: refused, naming the net
    shutil.copy(env["weights"], w)
    text = pathlib.Path(PROTO).read_text()
    pathlib.Path(proto).write_text(text.replace("local_size: 5", "local_size: 3", 1))
    assert pathlib.Path(proto).read_text() != text
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env, w, proto), "--resume")
    assert rc == 2 and one_error_line(err) and "different net" in err, err
    # the same content under other names resumes (nothing to do: every image is done)
    proto2, w2 = str(tmp_path / "renamed.prototxt"), str(tmp_path / "renamed.h5")
    shutil.copy(PROTO, proto2)
    shutil.copy(env["weights"], w2)
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env, w2, proto2), "--resume")
    assert rc == 0, err
    # another backend and another preprocessing are named too
    argv = [a if a != "numpy" else "cpu" for a in common(env, w2, proto2)]
    rc, err = extract(capsys, env["imgs"], "-o", out, *argv, "--resume")
    assert rc == 2 and "different backend" in err, err
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env, w2, proto2), "--mean", "channel", "--resume")
    assert rc == 2 and "different preprocessing" in err, err


# ------------------------------------------------------------------------------------ images
def test_extreme_aspect_ratio_is_refused_before_resizing():
    from minicaffe.models import Preprocessing
    from minicaffe.preprocess import load_resized
    spec = Preprocessing(resize=256, crop=224, mean_values=(0.0, 0.0, 0.0))
    strip = np.zeros((1, 20000, 3), np.uint8)
    with pytest.raises(ImageError, match="extreme aspect ratio: 20000x1 px would be resized to 5120000x256"):
        load_resized(strip, spec, min_size=1)
    assert load_resized(np.zeros((300, 900, 3), np.uint8), spec).shape == (256, 768, 3)   # a panorama is fine


def _strip_folder(env, tmp_path):
    d = tmp_path / "strip"
    shutil.copytree(env["imgs"], d)
    _save_png(d / "strip.png", 1, 20000, 9)
    # a short-side resize (EfficientNet's recipe, cropped to the small net's 227)
    return d, ["--prototxt", PROTO, "--weights", env["weights"], "--backend", "numpy", "--workers", "0",
               "--layers", "fc7", "-q", "--preprocess", "efficientnet-lite0", "--crop-size", "227", "--min-size", "1"]


def test_extreme_aspect_image_is_one_failed_row(env, capsys, tmp_path):
    """A 1x20000 strip among good images (a short-side resize to 256 would make 256x5120000 pixels):
    one warning, one failed row, the good images extracted."""
    d, argv = _strip_folder(env, tmp_path)
    out = str(tmp_path / "s.h5")
    rc, err = extract(capsys, str(d), "-o", out, *argv)
    assert rc == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("minicaffe: warning:")]
    assert len(warnings) == 1 and "strip.png: extreme aspect ratio" in warnings[0], err
    r = read(out)
    assert len(r["paths"]) == 5 and [f for f, _ in r["failed"]] == [str(d / "strip.png")]


@pytest.mark.slow
def test_extreme_aspect_run_peak_memory(env, tmp_path):
    """The same run in a fresh process: its peak resident memory (docs/reliability.md)."""
    d, argv = _strip_folder(env, tmp_path)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve from the forking
    # parent (here pytest, whose own peak can be larger than the child's)
    code = ("import sys; from minicaffe.cli import run; from minicaffe.extract import main; "
            "rc = run(main, sys.argv[1:]); "
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]; "
            "print('maxrss_kb', hwm, file=sys.stderr); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, str(d), "-o", str(tmp_path / "s.h5"), *argv],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    peak = int(p.stderr.rsplit("maxrss_kb ", 1)[1].split()[0])
    print(f"peak RSS of the run with a 1x20000 strip: {peak / 1024:.0f} MiB")
    assert peak < PEAK_LIMIT_KB, f"peak RSS {peak / 1024:.0f} MiB >= {PEAK_LIMIT_KB / 1024:.0f} MiB"


def test_link_cycles_and_any_bytes_in_names(env, capsys, tmp_path):
    d = tmp_path / "odd"
    (d / "a" / "b").mkdir(parents=True)
    _save_png(d / "a" / "b" / "ok.png", 30, 30, 1)
    os.symlink("..", d / "a" / "b" / "up")          # a -> b -> up -> a ... (cycle)
    os.symlink(str(d), d / "a" / "root")             # back to the top (cycle)
    os.symlink("b/ok.png", d / "a" / "same.png")     # the same real file under another name
    bad = os.fsdecode(os.path.join(os.fsencode(str(d)), b"caf\xe9-\xff.png"))   # not UTF-8 (Latin-1 bytes)
    _save_png(bad, 32, 32, 2)
    nl = str(d / "two\nlines.png")
    _save_png(nl, 33, 33, 3)
    (d / "not\xa0an image.jpg").write_bytes(b"junk")
    listing = list_inputs([str(d)])
    names = sorted(os.path.basename(p) for p in listing.paths)
    assert len(listing.paths) == 4, listing.paths           # each real file once, the cycles ended
    assert os.path.basename(bad) in names and "two\nlines.png" in names
    out = str(tmp_path / "odd.h5")
    rc, err = extract(capsys, str(d), "-o", out, *common(env))
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and "not\xa0an image.jpg" in warn[0], err    # one line each, even odd names
    r = read(out)
    assert len(r["paths"]) == 3 and "path_bytes" in r
    assert [os.fsdecode(b) for b in r["path_bytes"]] == [p for p in listing.paths
                                                          if not os.path.basename(p).startswith("not")]
    assert any(p.endswith("caf\\xe9-\\xff.png") for p in r["paths"])     # readable, and exact in path_bytes
    assert any(p.endswith("two\nlines.png") for p in r["paths"])
    # --resume recognises every odd name as done
    _save_png(d / "new.png", 30, 31, 5)
    rc, err = extract(capsys, str(d), "-o", out, *common(env), "--resume")
    assert rc == 0 and "4 image(s) already done, 1 to go" in err, err
    assert shown(bad).endswith("caf\\xe9-\\xff.png") and shown(nl).endswith("two\\nlines.png")


def test_class_folders_with_any_bytes_in_names(env, capsys, tmp_path):
    root = tmp_path / "classes"
    odd = os.fsdecode(os.path.join(os.fsencode(str(root)), b"\xffclass"))
    os.makedirs(odd)
    (root / "plain").mkdir()
    _save_png(os.path.join(odd, "a.png"), 30, 30, 1)
    _save_png(root / "plain" / "b.png", 30, 30, 2)
    out = str(tmp_path / "cls.h5")
    rc, err = extract(capsys, str(root), "-o", out, *common(env))
    assert rc == 0, err
    with h5py.File(out) as f:
        assert list(f["class_names"].asstr()[()]) == ["plain", "\\xffclass"]
        assert list(f["labels"][()]) == [0, 1]        # classes in code-point order, as the walk


def test_disk_error_mid_run_keeps_checkpoints_and_says_resume(env, capsys, tmp_path, monkeypatch):
    import minicaffe.tools.extract as ex
    real, calls = ex.write_part, {"n": 0}

    def full_disk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device", a[0] + "/part-0000001.npz")
        return real(*a, **k)
    monkeypatch.setattr(ex, "write_part", full_disk)
    out = str(tmp_path / "full.h5")
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env), "--batch-size", "2")
    assert rc == 2 and one_error_line(err) and "No space left on device" in err and "--resume" in err, err
    monkeypatch.setattr(ex, "write_part", real)
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env), "--batch-size", "2", "--resume")
    assert rc == 0 and "2 image(s) already done, 3 to go" in err, err


# ------------------------------------------------------------------------------------ outputs and CLI errors
def test_odd_output_paths_are_one_line(env, capsys, tmp_path):
    cases = {"/proc/minicaffe-hostile.h5": "cannot write there",
             str(tmp_path / "no" / "such" / "dir.h5"): "No such file or directory",
             str(tmp_path / "f.txt"): "unknown output extension '.txt'; use one of .h5, .hdf5, .hdf, .npz",
             str(tmp_path / "noext"): "unknown output extension '(none)'"}
    (tmp_path / "blocked.h5.parts").write_text("a file where the checkpoint folder goes")
    cases[str(tmp_path / "blocked.h5")] = "blocked.h5.parts exists and is not a folder"
    for out, want in cases.items():
        rc, err = extract(capsys, env["imgs"], "-o", out, *common(env))
        assert rc == 2 and one_error_line(err) and want in err, (out, err)
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):
            return          # root ignores the mode: /proc above covers the unwritable case
        rc, err = extract(capsys, env["imgs"], "-o", str(ro / "x.h5"), *common(env))
        assert rc == 2 and one_error_line(err) and "Permission denied" in err, err
    finally:
        os.chmod(ro, 0o755)


def test_cli_run_turns_oserror_memoryerror_and_ctrl_c_into_one_line(capsys):
    def raises(e):
        def f(argv):
            raise e
        return f
    for exc, code, want in [
            (PermissionError(13, "Permission denied", "/ro/out.h5"), 2, "error: /ro/out.h5: Permission denied"),
            (OSError(28, "No space left on device"), 2, "error: No space left on device"),
            (MemoryError(), 2, "error: out of memory"),
            (KeyboardInterrupt(), 130, "minicaffe: interrupted"),
            (Interrupted("run the same command with --resume"), 130,
             "minicaffe: interrupted; run the same command with --resume")]:
        assert run(raises(exc)) == code
        err = capsys.readouterr().err
        assert err.strip() == err.strip().splitlines()[0] and want in err, (exc, err)


def test_ctrl_c_keeps_checkpoints_and_says_resume(env, capsys, tmp_path, monkeypatch):
    import minicaffe.extract as ex
    calls = {"n": 0}
    real = ex.FeatureExtractor.features

    def stop_on_second(self, images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, images)
    monkeypatch.setattr(ex.FeatureExtractor, "features", stop_on_second)
    out = str(tmp_path / "i.h5")
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env), "--batch-size", "2")
    assert rc == 130 and one_line_130(err) and "--resume" in err and "i.h5.parts" in err, err
    assert os.listdir(out + ".parts") and not os.path.exists(out) and not os.path.exists(out + ".lock")
    monkeypatch.setattr(ex.FeatureExtractor, "features", real)
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env), "--batch-size", "2", "--resume")
    assert rc == 0 and "2 image(s) already done, 3 to go" in err, err
    rc, err = extract(capsys, env["imgs"], "-o", str(tmp_path / "whole.h5"), *common(env), "--batch-size", "2")
    a, b = read(out), read(str(tmp_path / "whole.h5"))
    assert a["paths"] == b["paths"] and np.array_equal(a["fc7"], b["fc7"]), "resumed after Ctrl-C vs whole run"


def one_line_130(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("minicaffe: interrupted") and "Traceback" not in err


def _sigint_group_after_first_part(env, tmp_path, extra, part):
    """Run extract in its own process group, SIGINT the group after the first finished `part`
    file -> (return code, stderr)."""
    d = tmp_path / "many"
    d.mkdir()
    for i in range(12):
        _save_png(d / f"x{i:02d}.png", 30 + i, 40, i)
    out = str(tmp_path / "g.h5")
    cmd = [sys.executable, "-m", "minicaffe.extract", str(d), "-o", out, "--prototxt", PROTO, "--weights",
           env["weights"], "--backend", "numpy", "--layers", "fc7", "--batch-size", "2", "-q", *extra]
    p = subprocess.Popen(cmd, cwd=ROOT, env=fault_env(MINICAFFE_TEST_DECODE_DELAY="0.25"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and p.poll() is None:
        if os.path.isdir(out + ".parts") and any(f.startswith(part[0]) and f.endswith(part[1])
                                                 for f in os.listdir(out + ".parts")):
            break
        time.sleep(0.05)
    assert p.poll() is None, f"ended before the interrupt: {p.communicate()[1][-2000:]}"
    os.killpg(p.pid, signal.SIGINT)          # as a terminal's Ctrl-C: the whole foreground group
    _, err = p.communicate(timeout=120)
    return p.returncode, err


@pytest.mark.slow
def test_sigint_to_the_process_group_is_quiet(env, tmp_path):
    """Ctrl-C in a terminal reaches the driver and every decoder process: one line, no traceback."""
    rc, err = _sigint_group_after_first_part(env, tmp_path, ["--workers", "2"], ("part-", ".npz"))
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert one_line_130(err) and "--resume" in err, err


@pytest.mark.slow
def test_sigint_with_a_local_cluster_is_quiet(env, tmp_path):
    """The same with --cluster local:2: the Dask worker processes print nothing either."""
    pytest.importorskip("distributed")
    rc, err = _sigint_group_after_first_part(env, tmp_path, ["--cluster", "local:2", "--shard-size", "2"],
                                             ("shard-", ".h5"))
    assert rc == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("minicaffe: interrupted; ") and "--resume" in last, err


def test_cluster_that_fails_before_any_work_leaves_no_checkpoint(env, capsys, tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    import minicaffe.features.cluster as md

    def unreachable(spec, threads=None):
        raise md.ClusterError(f"--cluster {spec}: cannot reach the Dask scheduler (connection refused)")
    monkeypatch.setattr(md, "connect", unreachable)
    out = str(tmp_path / "c.h5")
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env), "--cluster", "tcp://127.0.0.1:9")
    assert rc == 2 and one_error_line(err) and "cannot reach" in err, err
    assert not os.path.exists(out + ".parts")
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env))      # the next plain run just works
    assert rc == 0, err
    # a folder that holds only run.json (left by an older version) does not block either
    os.remove(out)
    os.makedirs(out + ".parts")
    with open(os.path.join(out + ".parts", "run.json"), "w") as f:
        f.write("{}")
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env))
    assert rc == 0, err


def _interrupted_run(env, capsys, monkeypatch, out, after=2):
    """Leave `out`.parts with `after` checkpoints of 1 image each (a run stopped by Ctrl-C)."""
    import minicaffe.extract as ex
    calls = {"n": 0}
    real = ex.FeatureExtractor.features

    def stop(self, images):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return real(self, images)
    monkeypatch.setattr(ex.FeatureExtractor, "features", stop)
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env), "--batch-size", "1")
    monkeypatch.setattr(ex.FeatureExtractor, "features", real)
    assert rc == 130, err
    parts = sorted(f for f in os.listdir(out + ".parts") if f.startswith("part-"))
    assert len(parts) == after
    return [os.path.join(out + ".parts", f) for f in parts]


def test_damaged_checkpoints_are_redone(env, capsys, tmp_path, monkeypatch):
    whole = str(tmp_path / "whole.h5")
    rc, err = extract(capsys, env["imgs"], "-o", whole, *common(env), "--batch-size", "1")
    assert rc == 0, err
    out = str(tmp_path / "d.h5")
    p0, p1, p2 = _interrupted_run(env, capsys, monkeypatch, out, after=3)
    data = pathlib.Path(p0).read_bytes()
    pathlib.Path(p0).write_bytes(data[: len(data) // 2])               # truncated
    pathlib.Path(p1).write_bytes(b"PK\x03\x04 not really a zip")       # garbage
    with np.load(p2) as z:                                              # rows that do not add up
        arrays = {k: z[k] for k in z.files}
    arrays["f:fc7"] = np.concatenate([arrays["f:fc7"]] * 2)
    np.savez(p2, **arrays)
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env), "--batch-size", "1", "--resume")
    assert rc == 0, err
    damaged = [ln for ln in err.splitlines() if "damaged checkpoint" in ln]
    assert len(damaged) == 3 and all(ln.startswith("minicaffe: warning: ") for ln in damaged), err
    assert "Traceback" not in err
    a, b = read(out), read(whole)
    assert a["paths"] == b["paths"] and np.array_equal(a["fc7"], b["fc7"]), "redone checkpoints vs whole run"


def test_damaged_run_description_and_foreign_checkpoint_are_one_line(env, capsys, tmp_path, monkeypatch):
    out = str(tmp_path / "j.h5")
    _interrupted_run(env, capsys, monkeypatch, out, after=1)
    with open(os.path.join(out + ".parts", "run.json"), "w") as f:
        f.write('{"features_digest": ')                                 # cut short
    rc, err = extract(capsys, env["imgs"], "-o", out, *common(env), "--resume")
    assert rc == 2 and one_error_line(err) and "run.json: damaged run description" in err, err
    out2 = str(tmp_path / "k.h5")
    (q0,) = _interrupted_run(env, capsys, monkeypatch, out2, after=1)
    with np.load(q0) as z:                                              # well formed, other width
        arrays = {k: z[k] for k in z.files}
    arrays["f:fc7"] = np.zeros((arrays["f:fc7"].shape[0], 7), np.float32)
    np.savez(q0, **arrays)
    rc, err = extract(capsys, env["imgs"], "-o", out2, *common(env), "--batch-size", "1", "--resume")
    assert rc == 2 and one_error_line(err) and "it is not from this run" in err, err


def test_all_failed_extraction_writes_no_file(env, capsys, tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"not an image")
    (tmp_path / "b.png").write_bytes(b"")
    out = str(tmp_path / "none.h5")
    rc, err = extract(capsys, str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), "-o", out, *common(env))
    assert rc == 1 and "no image could be used (2 failed" in err and "none.h5 was not written" in err, err
    assert not os.path.exists(out) and not os.path.exists(out + ".parts")


def test_nonfinite_features_are_counted(env, capsys, tmp_path):
    net = Net(PROTO, seed=3)
    net.params["fc7"][0][5, :] = np.nan             # one output unit of fc7 is NaN for every image
    w = str(tmp_path / "nan.h5")
    net.save_h5(w)
    rc, err = extract(capsys, env["imgs"], "-o", str(tmp_path / "n.h5"), *common(env, w))
    assert rc == 0, err
    line = [ln for ln in err.splitlines() if "non-finite feature" in ln]
    assert len(line) == 1 and "5 non-finite feature value(s) (NaN or inf) in 5 image row(s)" in line[0], err
    # the load-time warning names the weights' layer, one line too
    weights = [ln for ln in err.splitlines() if "non-finite values" in ln]
    assert len(weights) == 1 and weights[0].startswith("minicaffe: warning:") and "'fc7'" in weights[0], err


# ------------------------------------------------------------------------------------ new-user points
def test_truncated_cached_weights_are_not_converted(fixtures_dir, tmp_path, monkeypatch, capsys):
    from minicaffe import weight_files, weights
    from minicaffe.models import MODELS, ModelSpec, Preprocessing, register_model
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setattr(weight_files, "weights_dirs", lambda: [home])
    register_model(ModelSpec("test-trunc", str(fixtures_dir / "caffenet_small.prototxt"), "test-trunc.h5",
                             Preprocessing(), source={"url": "http://127.0.0.1:9/none.caffemodel"}))
    try:
        Net(PROTO, seed=1).save_h5(str(home / "test-trunc.h5"))
        data = (home / "test-trunc.h5").read_bytes()
        (home / "test-trunc.h5").write_bytes(data[: len(data) // 3])      # a copy cut short
        assert weights.main(["list"]) == 0
        row = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("test-trunc ")]
        assert len(row) == 1 and " damaged " in row[0] and "converted" not in row[0], row
        assert "python -m minicaffe.weights fetch test-trunc --force" in row[0]
        with pytest.raises(WeightsError, match="fetch test-trunc --force"):
            MODELS["test-trunc"].load(backend="numpy")
        # `fetch NAME` (no --force) replaces the damaged file; the download is a local copy here
        monkeypatch.setattr(weight_files, "download", lambda url, dest, **kw: shutil.copy(
            fixtures_dir / "caffenet_small.caffemodel", dest))
        logged = []
        weights.fetch("test-trunc", log=logged.append)
        assert "is damaged" in logged[0] and "fetching it again" in logged[0], logged
        assert weights.status(MODELS["test-trunc"])[0] == "converted"
        MODELS["test-trunc"].load(backend="numpy")
    finally:
        MODELS.pop("test-trunc", None)


def test_check_runs_every_reference_it_can(fixtures_dir, tmp_path, monkeypatch, capsys):
    from minicaffe import check
    monkeypatch.setitem(sys.modules, "caffe", None)     # pycaffe cannot be imported here
    js = tmp_path / "r.json"
    rc = run(check.main, ["--prototxt", str(fixtures_dir / "caffenet_small.prototxt"), "--weights",
                          str(fixtures_dir / "caffenet_small.caffemodel"), "--random", "1",
                          "--against", "pycaffe,opencv", "--json", str(js)])
    cap = capsys.readouterr()
    assert rc == 2, cap.err
    rep = json.loads(js.read_text())
    by = {r["against"]: r for r in rep["references"]}
    assert by["opencv"]["pass"] and len(by["opencv"]["rows"]) > 5, "opencv still ran after pycaffe could not"
    assert rep["not_run"] == ["pycaffe"] and by["pycaffe"]["rows"] == []
    errs = cap.err.strip().splitlines()
    assert len(errs) == 1 and errs[0].startswith("minicaffe: error: --against pycaffe could not run"), cap.err
    assert "PASS: all" in cap.out and "not run:" in cap.out


def test_robustness_png_eps_must_be_attacked(capsys):
    from minicaffe import robustness
    rc = run(robustness.main, ["--eps", "0,0.5", "--png", "x.png", "--png-eps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and one_error_line(err) and "--png-eps 1 is not among --eps 0,0.5" in err, err
    rc = run(robustness.main, ["--eps", "0,a"])
    err = capsys.readouterr().err
    assert rc == 2 and one_error_line(err) and "--eps '0,a'" in err, err
    assert robustness.parse_eps("0,1,2", 2.0) == [0.0, 1.0, 2.0]
    for png, want in (("/no/such/folder/x.png", "no such folder /no/such/folder"),
                      ("fig.txt", "unknown figure extension '.txt'; use one of")):
        rc = run(robustness.main, ["--eps", "0,1", "--png", png])
        err = capsys.readouterr().err
        assert rc == 2 and one_error_line(err) and want in err, err


def test_outputs_of_long_commands_are_checked_before_the_work(fixtures_dir, tmp_path, capsys):
    from minicaffe import check, finetune
    for mod, argv, want in (
            (finetune, [str(tmp_path), "--train-from", "fc8", "--out", "/no/such/folder/w.h5"], "--out"),
            (check, ["--prototxt", PROTO, "--weights", str(fixtures_dir / "caffenet_small.caffemodel"), "--random",
                     "1", "--against", "torch", "--json", "/no/such/folder/r.json"], "--json")):
        rc = run(mod.main, argv)
        err = capsys.readouterr().err
        assert rc == 2 and one_error_line(err) and f"{want} /no/such/folder/" in err and "no such folder" in err, err


def test_finetuned_weights_with_a_new_classifier_reach_extract(env, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from minicaffe import finetune
    from minicaffe.models import CAFFE_PREPROCESSING, MODELS, ModelSpec, register_model
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "ds" / f"c{c}").mkdir(parents=True)
        for i in range(2):
            img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / "ds" / f"c{c}" / f"{i}.png")
    out = str(tmp_path / "refined.h5")
    rc = run(finetune.main, [str(tmp_path / "ds"), "--prototxt", PROTO, "--weights", env["weights"],
                             "--train-from", "fc8", "--iters", "2", "--batch", "3", "--backend", "numpy",
                             "--out", out])
    err = capsys.readouterr().err
    assert rc == 0, err
    side = str(tmp_path / "refined.prototxt")
    assert os.path.isfile(side) and "num_output: 3" in pathlib.Path(side).read_text()
    assert f"--prototxt {side} --weights {out}" in err
    register_model(ModelSpec("test-small-net", PROTO, "test-small-net.h5", CAFFE_PREPROCESSING,
                             {"decaf7": "fc7"}))
    try:
        feats = str(tmp_path / "f.h5")
        # the base model's name with the refined weights: one line saying exactly which flags to use
        rc, err = extract(capsys, env["imgs"], "-o", feats, "--model", "test-small-net", "--weights", out,
                          "--backend", "numpy", "--workers", "0", "-q")
        assert rc == 2 and one_error_line(err), err
        want = f"use --prototxt {side} --weights {out} --preprocess test-small-net"
        assert want in err, err
        # and that command works, with the model's aliases (decaf7)
        rc, err = extract(capsys, env["imgs"], "-o", feats, "--prototxt", side, "--weights", out,
                          "--preprocess", "test-small-net", "--layers", "decaf7,fc8", "--backend", "numpy",
                          "--workers", "0", "-q")
        assert rc == 0, err
        with h5py.File(feats) as f:
            assert f["features/fc8"].shape == (5, 3)
    finally:
        MODELS.pop("test-small-net", None)


def test_finetune_and_convert_refuse_non_h5_outputs(capsys, tmp_path):
    from minicaffe import convert, finetune
    for mod, argv in ((finetune, [str(tmp_path), "--train-from", "fc8", "--out", "w.txt"]),
                      (convert, [PROTO, "x.caffemodel", "-o", "w.txt"])):
        rc = run(mod.main, argv)
        err = capsys.readouterr().err
        assert rc == 2 and one_error_line(err) and ".h5" in err, err


def test_shown_is_one_printable_line():
    for raw in (b"a\xffb\n.png", b"tab\there.jpg", "caf\u00e9.jpg".encode()):
        s = shown(os.fsdecode(raw))
        assert s.isprintable() and "\n" not in s
    assert shown("caf\u00e9 \u00a0x.jpg") == "caf\u00e9 \u00a0x.jpg"     # printable text stays as it is
    assert shown("a\u202eb") == "a\\u202eb"                               # a direction override is escaped
