"""Tests of ``python -m minicaffe.check``: it passes on every real-Caffe fixture, and it FAILS —
non-zero exit, the right blob named first — when a reference blob is perturbed by 1e-3 relative,
when the input channel order is swapped, and when the LRN alpha convention is changed. Also: the
torch/opencv references run from the CLI, missing optional frameworks give one install line, and
the comparison itself handles NaN, shape mismatches and all-zero blobs.
"""
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from minicaffe import check
from minicaffe.cli import run
from minicaffe.errors import MinicaffeError

# (id, prototxt, caffemodel, blobs npz) for every shared real-Caffe case
CASES = [
    ("caffenet_227", "caffenet_small.prototxt", "caffenet_small.caffemodel", "caffenet_small_blobs_227.npz"),
    ("caffenet_224", "caffenet_small.prototxt", "caffenet_small.caffemodel", "caffenet_small_blobs_224.npz"),
    ("caffenet_v1_227", "caffenet_small_v1.prototxt", "caffenet_small_v1.caffemodel", "caffenet_small_blobs_227.npz"),
    ("caffenet_v1_224", "caffenet_small_v1.prototxt", "caffenet_small_v1.caffemodel", "caffenet_small_blobs_224.npz"),
    ("alexnet_227", "alexnet_small.prototxt", "alexnet_small.caffemodel", "alexnet_small_blobs_227.npz"),
    ("alexnet_v1model_227", "alexnet_small.prototxt", "alexnet_small_v1.caffemodel", "alexnet_small_blobs_227.npz"),
    ("googlenet_224", "googlenet/googlenet.prototxt", "googlenet/googlenet.caffemodel",
     "googlenet/googlenet_blobs_224.npz"),
]


def run_check(tmp_path, prototxt, weights, *extra, backend="numpy"):
    """Call the CLI in-process; returns (exit code, parsed JSON report or None)."""
    out = tmp_path / "report.json"
    if out.exists():
        out.unlink()
    rc = run(check.main, ["--prototxt", str(prototxt), "--weights", str(weights), "--backend", backend,
                          "--json", str(out), *extra])
    return rc, (json.loads(out.read_text()) if out.exists() else None)


def failed_blobs(report):
    return [r["blob"] for ref in report["references"] for r in ref["rows"] if not r["ok"]]


def all_rows(report):
    return [r for ref in report["references"] for r in ref["rows"]]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_check_passes_on_every_caffe_fixture(fixtures_dir, tmp_path, case):
    _, proto, model, npz = case
    rc, rep = run_check(tmp_path, fixtures_dir / proto, fixtures_dir / model,
                        "--against", f"caffe-npz:{fixtures_dir / npz}")
    rows = all_rows(rep)
    worst = max(rows, key=lambda r: r["rel"])
    assert rc == 0, f"{case[0]}: failed {failed_blobs(rep)}; worst {worst['blob']} rel {worst['rel']:.3e}"
    with np.load(fixtures_dir / npz) as z:
        assert len(rows) == len(z.files), "every stored Caffe blob must be compared"
    assert worst["rel"] <= 1e-4


def test_check_passes_on_cpu_backend(fixtures_dir, tmp_path):
    rc, rep = run_check(tmp_path, fixtures_dir / "caffenet_small.prototxt", fixtures_dir / "caffenet_small.caffemodel",
                        "--against", f"caffe-npz:{fixtures_dir / 'caffenet_small_blobs_224.npz'}", backend="cpu")
    assert rc == 0, failed_blobs(rep)


def _perturb(src, dst, key, rel=1e-3):
    """Copy an npz, adding rel * max|blob| to one element of blob ``key``."""
    with np.load(src) as z:
        blobs = {k: z[k].copy() for k in z.files}
    b = blobs[key]
    idx = tuple(s // 2 for s in b.shape)
    b[idx] += np.float32(rel * np.abs(b).max())
    np.savez(dst, **blobs)
    return idx


@pytest.mark.parametrize("case,key", [(CASES[0], "conv1"), (CASES[0], "norm2"), (CASES[1], "pool5"),
                                      (CASES[0], "fc7"), (CASES[0], "prob"),
                                      (CASES[6], "inception_4a__output")])
def test_check_fails_on_a_perturbed_blob(fixtures_dir, tmp_path, case, key):
    _, proto, model, npz = case
    idx = _perturb(fixtures_dir / npz, tmp_path / "perturbed.npz", key)
    rc, rep = run_check(tmp_path, fixtures_dir / proto, fixtures_dir / model,
                        "--against", f"caffe-npz:{tmp_path / 'perturbed.npz'}")
    blob = key.replace("__", "/")
    assert rc == 1
    assert failed_blobs(rep) == [blob], f"only {blob} was perturbed, failed: {failed_blobs(rep)}"
    row = next(r for r in all_rows(rep) if r["blob"] == blob)
    assert tuple(row["worst"]) == idx
    assert 0.9e-3 <= row["rel"] <= 1.1e-3
    assert f"first divergence at blob {blob!r}" in rep["references"][0]["verdict"]


def test_check_fails_when_channel_order_is_swapped(fixtures_dir, tmp_path):
    x = np.load(fixtures_dir / "caffenet_small_input_227.npy")
    np.save(tmp_path / "rgb.npy", x[:, ::-1])        # BGR -> RGB: the classic preprocessing slip
    rc, rep = run_check(tmp_path, fixtures_dir / "caffenet_small.prototxt", fixtures_dir / "caffenet_small.caffemodel",
                        "--input", str(tmp_path / "rgb.npy"),
                        "--against", f"caffe-npz:{fixtures_dir / 'caffenet_small_blobs_227.npz'}")
    assert rc == 1
    failed = failed_blobs(rep)
    assert failed[0] == "data", failed
    assert "conv1" in failed and "fc7" in failed
    verdict = rep["references"][0]["verdict"]
    assert "first divergence at blob 'data'" in verdict and "channel order" in verdict


def test_check_fails_when_lrn_alpha_convention_changes(fixtures_dir, tmp_path):
    """A framework that applies alpha per element (not alpha / local_size, Caffe's convention)
    computes what Caffe computes with alpha * local_size: write that prototxt and compare."""
    text = (fixtures_dir / "caffenet_small.prototxt").read_text()
    assert text.count("alpha: 0.0001") == 2
    (tmp_path / "lrn.prototxt").write_text(text.replace("alpha: 0.0001", "alpha: 0.0005"))
    rc, rep = run_check(tmp_path, tmp_path / "lrn.prototxt", fixtures_dir / "caffenet_small.caffemodel",
                        "--against", f"caffe-npz:{fixtures_dir / 'caffenet_small_blobs_227.npz'}")
    assert rc == 1
    failed = failed_blobs(rep)
    assert failed[0] == "norm1", failed
    assert {"data", "conv1", "pool1"}.isdisjoint(failed), "blobs before the first LRN must still pass"


def test_check_fails_when_torch_reference_uses_other_lrn_convention(fixtures_dir, tmp_path, monkeypatch):
    """The same slip on the reference side: monkeypatch the torch translator's LRN to alpha per element."""
    from minicaffe.reference import torch_net
    orig = torch_net._make_modules

    def patched():
        mods = orig()
        lrn = mods[4]
        fwd = lrn.forward

        def forward(self, x):
            a = self.alpha
            self.alpha = a * self.size
            try:
                return fwd(self, x)
            finally:
                self.alpha = a
        lrn.forward = forward
        return mods
    monkeypatch.setattr(torch_net, "_make_modules", patched)
    rc, rep = run_check(tmp_path, fixtures_dir / "caffenet_small.prototxt", fixtures_dir / "caffenet_small.caffemodel",
                        "--input", str(fixtures_dir / "caffenet_small_input_227.npy"), "--against", "torch")
    assert rc == 1
    assert failed_blobs(rep)[0] == "norm1"


def test_check_against_torch_and_opencv_on_fixture(fixtures_dir, tmp_path):
    rc, rep = run_check(tmp_path, fixtures_dir / "alexnet_small.prototxt", fixtures_dir / "alexnet_small.caffemodel",
                        "--input", str(fixtures_dir / "alexnet_small_input_227.npy"),
                        "--against", "torch", "--against", "opencv")
    assert rc == 0, failed_blobs(rep)
    refs = {r["against"]: r for r in rep["references"]}
    assert set(refs) == {"torch", "opencv"}
    # torch gives every blob; OpenCV every blob but the input (post-ReLU names mapped from relu layers)
    assert [r["blob"] for r in refs["torch"]["rows"]][:3] == ["data", "conv1", "norm1"]
    assert refs["opencv"]["not_compared"] == ["data"]


def test_check_random_and_image_inputs(fixtures_dir, tmp_path):
    proto, model = fixtures_dir / "caffenet_small.prototxt", fixtures_dir / "caffenet_small.caffemodel"
    rc, rep = run_check(tmp_path, proto, model, "--random", "3", "--seed", "5", "--against", "torch")
    assert rc == 0 and rep["input_shape"] == [3, 3, 227, 227]
    from PIL import Image
    from sklearn.datasets import load_sample_images
    img = load_sample_images().images[0]
    Image.fromarray(img).save(tmp_path / "china.png")
    rc, rep = run_check(tmp_path, proto, model, "--image", str(tmp_path / "china.png"), "--against", "opencv")
    assert rc == 0 and rep["input_shape"] == [1, 3, 227, 227]


def test_missing_optional_references_say_how_to_install(fixtures_dir, tmp_path, monkeypatch, capsys):
    proto, model = fixtures_dir / "caffenet_small.prototxt", fixtures_dir / "caffenet_small.caffemodel"
    for module, kind, hint in [("torch", "torch", "pip install torch==2.13.0"),
                               ("cv2", "opencv", "pip install 'opencv-python-headless<5'"),
                               ("caffe", "pycaffe", "import caffe")]:
        monkeypatch.setitem(sys.modules, module, None)     # makes `import module` raise ImportError
        rc, _ = run_check(tmp_path, proto, model, "--random", "1", "--against", kind)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2
        assert len(err) == 1 and err[0].startswith("minicaffe: error:") and hint in err[0], err


def test_cli_subprocess_exit_codes(fixtures_dir, tmp_path):
    f = fixtures_dir
    ok = subprocess.run([sys.executable, "-m", "minicaffe.check", "--prototxt", str(f / "caffenet_small.prototxt"),
                         "--weights", str(f / "caffenet_small.caffemodel"), "--backend", "numpy",
                         "--against", f"caffe-npz:{f / 'caffenet_small_blobs_227.npz'}"],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert lines[-1].startswith("PASS: all 15 blobs")
    assert sum(line.startswith(("conv", "pool", "norm", "fc", "prob", "data")) for line in lines) == 15
    bad = subprocess.run([sys.executable, "-m", "minicaffe.check", "--prototxt", str(tmp_path / "none.prototxt"),
                          "--weights", str(f / "caffenet_small.caffemodel"), "--against", "torch"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"minicaffe: error: {tmp_path / 'none.prototxt'}: no such file"]


def test_compare_blob_edge_cases():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert check.compare_blob("x", a, a, 1e-4).ok
    nan = a.copy()
    nan[1, 2] = np.nan
    r = check.compare_blob("x", nan, a, 1e-4)
    assert not r.ok and r.worst == [1, 2] and r.note == "non-finite value"
    assert not check.compare_blob("x", a.reshape(4, 3), a, 1e-4).ok
    z = np.zeros((2, 2), np.float32)
    assert check.compare_blob("x", z, z, 1e-4).ok
    assert not check.compare_blob("x", z + 1e-9, z, 1e-4).ok
    r = check.compare_blob("x", a + np.float32(1e-3 * 11), a, 1e-4)
    assert not r.ok and abs(r.rel - 1e-3) < 1e-6
    assert not check.compare_blob("x", None, a, 1e-4).ok


def test_bad_arguments_are_one_line_errors(fixtures_dir, tmp_path):
    proto, model = fixtures_dir / "caffenet_small.prototxt", fixtures_dir / "caffenet_small.caffemodel"
    with pytest.raises(MinicaffeError, match="choose caffe-npz"):
        check.main(["--prototxt", str(proto), "--weights", str(model), "--against", "tensorflow"])
    with pytest.raises(MinicaffeError, match="no input"):
        check.main(["--prototxt", str(proto), "--weights", str(model), "--against", "torch"])
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(MinicaffeError, match="must be"):
        check.main(["--prototxt", str(proto), "--weights", str(model), "--input", str(tmp_path / "x.npy"),
                    "--against", "torch"])


def test_h5_weights_reach_opencv_through_a_temporary_caffemodel(fixtures_dir, tmp_path):
    import minicaffe
    net = minicaffe.Net(fixtures_dir / "caffenet_small.prototxt", str(fixtures_dir / "caffenet_small.caffemodel"),
                        backend="numpy")
    net.save_h5(tmp_path / "w.h5")
    rc, rep = run_check(tmp_path, fixtures_dir / "caffenet_small.prototxt", tmp_path / "w.h5",
                        "--against", "opencv", "--against", "torch",
                        "--against", f"caffe-npz:{fixtures_dir / 'caffenet_small_blobs_227.npz'}")
    assert rc == 0, failed_blobs(rep)
    assert len(all_rows(rep)) == 14 + 15 + 15
