"""The pycaffe drop-in (minicaffe.pycaffe) behaves as BVLC pycaffe: nets, blobs, partial passes,
NetState rules, split layers, Python layers, fillers, Accuracy, caffe.io, solvers, NetSpec, and
``import caffe`` through ``python -m minicaffe.pycaffe``. Own tests for the behaviours that
Caffe's python/caffe/test/ suite checks (that suite itself runs via scripts/run_pycaffe_tests.sh).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import minicaffe.pycaffe as caffe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _close(got, want, tol, what):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.abs(got - want)
    if err.size and err.max() > tol:
        i = np.unravel_index(int(err.argmax()), err.shape)
        rel = err.max() / max(np.abs(want).max(), 1e-12)
        raise AssertionError(f"{what}: max abs error {err.max():.3g} (rel {rel:.3g}) at {i} > {tol}")


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


SIMPLE = """
name: 'simple' force_backward: true
layer { type: 'DummyData' name: 'data' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 4 dim: 2 dim: 3 dim: 3 } shape { dim: 4 }
    data_filler { type: 'gaussian' std: 1 } data_filler { type: 'constant' } } }
layer { type: 'Convolution' name: 'conv' bottom: 'data' top: 'conv'
  convolution_param { num_output: 3 kernel_size: 2 pad: 1
    weight_filler { type: 'gaussian' std: 0.5 } bias_filler { type: 'constant' value: 0.25 } } }
layer { type: 'InnerProduct' name: 'ip' bottom: 'conv' top: 'ip'
  inner_product_param { num_output: 5 weight_filler { type: 'uniform' min: -1 max: 1 } } }
layer { type: 'SoftmaxWithLoss' name: 'loss' bottom: 'ip' bottom: 'label' top: 'loss' }
"""


@pytest.fixture
def net(tmp_path):
    np.random.seed(3)
    n = caffe.Net(_write(tmp_path, "simple.prototxt", SIMPLE), caffe.TRAIN)
    n.blobs["label"].data[...] = np.arange(4) % 5
    return n


def test_structure_names_and_fillers(net):
    assert list(net.blobs) == ["data", "label", "conv", "ip", "loss"]
    assert net._layer_names == ["data", "conv", "ip", "loss"]
    assert net.inputs == [] and net.outputs == ["loss"]
    assert net.top_names["data"] == ["data", "label"] and net.bottom_names["loss"] == ["ip", "label"]
    assert [net.layer_dict[k].type for k in net._layer_names] == ["DummyData", "Convolution", "InnerProduct",
                                                                  "SoftmaxWithLoss"]
    assert net.blobs["conv"].shape == (4, 3, 4, 4) and net.blobs["loss"].shape == ()
    assert list(net.params) == ["conv", "ip"]
    w, b = net.params["conv"]
    assert w.data.shape == (3, 2, 2, 2) and b.count == 3
    assert np.all(b.data == np.float32(0.25)), "bias_filler constant 0.25"
    assert 0 < float(np.abs(net.params["ip"][0].data).max()) <= 1.0, "uniform [-1, 1] filler"
    assert np.all(net.params["ip"][1].data == 0), "no bias_filler: Caffe's constant 0"
    assert net.blob_loss_weights["loss"] == 1.0 and float(net.blobs["loss"].diff) == 1.0


def test_partial_forward_and_backward_match_numpy(net):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=net.blobs["conv"].shape).astype(np.float32)
    net.blobs["conv"].data[...] = x
    out = net.forward(start="ip", end="ip")
    assert set(out) == {"ip"}
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    _close(out["ip"], x.reshape(4, -1) @ w.T + b, 1e-5, "ip forward")
    dy = rng.uniform(size=net.blobs["ip"].shape).astype(np.float32)
    net.blobs["ip"].diff[...] = dy
    back = net.backward(start="ip", end="ip")
    assert set(back) == {"conv"}
    _close(net.blobs["conv"].diff, (dy @ w).reshape(x.shape), 1e-5, "ip backward (bottom diff)")
    _close(net.params["ip"][0].diff, dy.T @ x.reshape(4, -1), 1e-5, "ip backward (weight diff)")


def test_loss_gradient_matches_finite_differences(net):
    net.forward()
    net.clear_param_diffs()
    net.backward()
    w = net.params["ip"][0]
    analytic = w.diff.copy()
    eps = 1e-2
    for idx in [(0, 0), (2, 7), (4, 40)]:
        old = w.data[idx]
        w.data[idx] = old + eps
        lp = float(net.forward(start="conv")["loss"])
        w.data[idx] = old - eps
        lm = float(net.forward(start="conv")["loss"])
        w.data[idx] = old
        num = (lp - lm) / (2 * eps)
        assert abs(num - analytic[idx]) <= 2e-3 + 2e-2 * abs(num), (f"dL/dW{idx}: finite difference {num:.6g}, "
                                                                     f"backward {analytic[idx]:.6g}")


def test_param_diffs_accumulate_until_cleared(net):
    net.forward()
    net.backward()
    d1 = net.params["conv"][0].diff.copy()
    assert np.abs(d1).max() > 0
    net.backward()
    _close(net.params["conv"][0].diff, 2 * d1, 1e-5, "second backward adds to the parameter diff")
    diff = net.params["conv"][0].diff
    net.clear_param_diffs()
    assert not diff.any(), "clear_param_diffs zeroes the arrays the caller holds"


def test_dummy_data_constant_keeps_writes_and_random_refills(net):
    net.forward()
    first = net.blobs["data"].data.copy()
    net.forward()
    assert not np.array_equal(first, net.blobs["data"].data), "a gaussian filler refills on every forward"
    _close(net.blobs["label"].data, np.arange(4) % 5, 0, "a constant top keeps what the caller wrote")


def test_save_copy_from_and_hdf5_roundtrip(net, tmp_path):
    proto = _write(tmp_path, "s.prototxt", SIMPLE)
    net.save(str(tmp_path / "w.caffemodel"))
    net.save_hdf5(str(tmp_path / "w.h5"))
    a = caffe.Net(proto, str(tmp_path / "w.caffemodel"), caffe.TRAIN)  # the legacy constructor
    b = caffe.Net(proto, caffe.TEST, weights=str(tmp_path / "w.caffemodel"))
    c = caffe.Net(proto, caffe.TRAIN)
    c.load_hdf5(str(tmp_path / "w.h5"))
    for other in (a, b, c):
        for name, blobs in net.params.items():
            for i, p in enumerate(blobs):
                _close(other.params[name][i].data, p.data, 0, f"{name}[{i}] after the round trip")


def test_netstate_levels_stages_and_phases(tmp_path):
    proto = _write(tmp_path, "rules.prototxt", """
        layer { name: 'in' type: 'Input' top: 'x' input_param { shape { dim: 1 dim: 4 } } }
        layer { name: 'always' type: 'InnerProduct' bottom: 'x' top: 'always' inner_product_param { num_output: 1 } }
        layer { name: 'lvl1' type: 'InnerProduct' bottom: 'x' top: 'lvl1' include { min_level: 1 }
                inner_product_param { num_output: 1 } }
        layer { name: 'stA' type: 'InnerProduct' bottom: 'x' top: 'stA' include { stage: 'A' }
                inner_product_param { num_output: 1 } }
        layer { name: 'notB' type: 'InnerProduct' bottom: 'x' top: 'notB' include { not_stage: 'B' }
                inner_product_param { num_output: 1 } }
        layer { name: 'train' type: 'InnerProduct' bottom: 'x' top: 'train' include: { phase: TRAIN }
                inner_product_param { num_output: 1 } }
        layer { name: 'noTest' type: 'InnerProduct' bottom: 'x' top: 'noTest' exclude { phase: TEST }
                inner_product_param { num_output: 1 } }
    """)

    def tops(net):
        return [b for b in net.blobs if b != "x" and "_split_" not in b]
    assert tops(caffe.Net(proto, caffe.TEST)) == ["always", "notB"]
    assert tops(caffe.Net(proto, caffe.TEST, level=1, stages=["A", "B"])) == ["always", "lvl1", "stA"]
    assert tops(caffe.Net(proto, caffe.TRAIN)) == ["always", "notB", "train", "noTest"]


def test_splits_named_as_caffe_and_gradients_add(tmp_path):
    proto = _write(tmp_path, "split.prototxt", """
        force_backward: true
        input: 'x' input_shape { dim: 2 dim: 3 }
        layer { name: 'a' type: 'InnerProduct' bottom: 'x' top: 'a'
                inner_product_param { num_output: 4 weight_filler { type: 'gaussian' } } }
        layer { name: 'b' type: 'InnerProduct' bottom: 'x' top: 'b'
                inner_product_param { num_output: 4 weight_filler { type: 'gaussian' } } }
        layer { name: 's' type: 'Eltwise' bottom: 'a' bottom: 'b' top: 's' }
    """)
    net = caffe.Net(proto, caffe.TEST)
    assert net._layer_names == ["input", "x_input_0_split", "a", "b", "s"]
    assert net.bottom_names["a"] == ["x_input_0_split_0"] and net.bottom_names["b"] == ["x_input_0_split_1"]
    assert net.inputs == ["x"] and net.outputs == ["s"]
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    out = net.forward(x=x)
    wa, wb = net.params["a"][0].data, net.params["b"][0].data
    _close(out["s"], x @ wa.T + x @ wb.T, 1e-5, "Eltwise SUM of the two branches")
    g = np.ones((2, 4), np.float32)
    diffs = net.backward(s=g)
    _close(diffs["x"], g @ wa + g @ wb, 1e-5, "the input diff sums both branches (Split backward)")


def test_forward_kwargs_reshape_and_forward_all(tmp_path):
    proto = _write(tmp_path, "fc.prototxt", """
        layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 3 dim: 2 dim: 2 dim: 2 } } }
        layer { name: 'fc' type: 'InnerProduct' bottom: 'data' top: 'fc'
                inner_product_param { num_output: 2 weight_filler { type: 'xavier' } } }
        layer { name: 'prob' type: 'Softmax' bottom: 'fc' top: 'prob' }
    """)
    net = caffe.Net(proto, caffe.TEST)
    x = np.random.default_rng(2).standard_normal((7, 2, 2, 2)).astype(np.float32)
    w = net.params["fc"][0].data
    z = x.reshape(7, -1) @ w.T
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    _close(net.forward_all(data=x)["prob"], want, 1e-6, "forward_all over 3 batches (last one padded)")
    with pytest.raises(Exception, match="Input blob arguments do not match"):
        net.forward(other=x[:3])
    net.blobs["data"].reshape(7, 2, 2, 2)
    net.blobs["data"].data[...] = x
    _close(net.forward()["prob"], want, 1e-6, "forward after reshaping the input blob to batch 7")
    assert net.blobs["prob"].shape == (7, 2)


PYLAYER = """
import caffe

class Times(caffe.Layer):
    def setup(self, bottom, top):
        self.k = float(self.param_str or 10)
        self.blobs.add_blob(1)
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)
    def forward(self, bottom, top):
        top[0].data[...] = self.k * bottom[0].data
    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.k * top[0].diff
        self.blobs[0].diff[0] = 1

class Phase(caffe.Layer):
    def setup(self, bottom, top):
        pass
    def reshape(self, bottom, top):
        top[0].reshape()
    def forward(self, bottom, top):
        top[0].data[()] = self.phase

class Broken(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("broken on purpose")
"""


@pytest.fixture
def pymod(tmp_path, monkeypatch):
    import minicaffe.pycaffe as mp
    (tmp_path / "mc_pylayers.py").write_text(PYLAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "caffe", mp)  # what install() does, undone after the test
    yield tmp_path
    sys.modules.pop("mc_pylayers", None)


def test_python_layers(pymod):
    proto = _write(pymod, "py.prototxt", """
        name: 'py' force_backward: true
        input: 'data' input_shape { dim: 2 dim: 3 dim: 4 }
        layer { type: 'Python' name: 'one' bottom: 'data' top: 'one'
                python_param { module: 'mc_pylayers' layer: 'Times' param_str: '3' } }
        layer { type: 'Python' name: 'two' bottom: 'one' top: 'two'
                python_param { module: 'mc_pylayers' layer: 'Times' } }
    """)
    net = caffe.Net(proto, caffe.TRAIN)
    net.blobs["data"].data[...] = 2
    net.forward()
    assert np.all(net.blobs["two"].data == 60)
    net.blobs["two"].diff[...] = 1
    net.backward()
    assert np.all(net.blobs["data"].diff == 30)
    assert net.layers[net._layer_names.index("one")].blobs[0].diff[0] == 1
    assert list(net.params) == ["one", "two"]
    net.blobs["data"].reshape(5, 5, 5)
    net.forward()
    assert net.blobs["two"].shape == (5, 5, 5)
    phase = _write(pymod, "ph.prototxt", """
        layer { type: 'Python' name: 'p' top: 'phase' python_param { module: 'mc_pylayers' layer: 'Phase' } }""")
    for ph in (caffe.TRAIN, caffe.TEST):
        assert caffe.Net(phase, ph).forward()["phase"] == ph
    broken = _write(pymod, "br.prototxt", """
        input: 'data' input_shape { dim: 1 }
        layer { type: 'Python' name: 'b' bottom: 'data' top: 'b'
                python_param { module: 'mc_pylayers' layer: 'Broken' } }""")
    with pytest.raises(RuntimeError, match="broken on purpose"):
        caffe.Net(broken, caffe.TEST)


def test_python_layer_in_the_engine_net(pymod):
    import minicaffe
    proto = _write(pymod, "eng.prototxt", """
        layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 1 dim: 3 } } }
        layer { type: 'Python' name: 'one' bottom: 'data' top: 'one'
                python_param { module: 'mc_pylayers' layer: 'Times' param_str: '4' } }
    """)
    out = minicaffe.Net(proto, backend="numpy").forward(np.ones((1, 3), np.float32))
    _close(out["one"], np.full((1, 3), 4.0), 0, "Python layer inside minicaffe.Net")


@pytest.mark.parametrize("kind,check", [
    ("xavier", lambda a, n: abs(a.std() - np.sqrt(1.0 / n)) < 0.1 * np.sqrt(1.0 / n)),  # U(+-sqrt(3/n)): var 1/n
    ("msra", lambda a, n: abs(a.std() - np.sqrt(2.0 / n)) < 0.1 * np.sqrt(2.0 / n)),
    ("uniform", lambda a, n: a.min() >= -2 and a.max() <= 3 and abs(a.mean() - 0.5) < 0.1),
    ("gaussian", lambda a, n: abs(a.mean() - 1) < 0.05 and abs(a.std() - 0.5) < 0.05),
    ("constant", lambda a, n: np.all(a == np.float32(0.7))),
])
def test_fillers(kind, check):
    from minicaffe.io.prototxt import parse
    from minicaffe.layers.dummy_data import fill
    fp = parse(f"type: '{kind}' value: 0.7 min: -2 max: 3 mean: 1 std: 0.5")
    a = fill(fp, (64, 50, 3, 3), np.random.default_rng(0))
    assert a.dtype == np.float32 and a.shape == (64, 50, 3, 3)
    assert check(a, 50 * 9), f"{kind}: mean {a.mean():.4g}, std {a.std():.4g}, range {a.min():.3g}..{a.max():.3g}"


def test_accuracy_layer_against_a_loop():
    from minicaffe.layers.accuracy import accuracy_reference
    rng = np.random.default_rng(4)
    x = rng.integers(0, 4, (40, 6)).astype(np.float32)  # small integers: many ties
    lab = rng.integers(0, 6, 40)
    lab[:5] = 2
    for k in (1, 3):
        right = n = 0
        for i in range(40):
            if lab[i] == 5:  # ignored
                continue
            n += 1
            right += int(sum(x[i, c] >= x[i, lab[i]] for c in range(6)) - 1 < k)
        acc, per_class = accuracy_reference(x, lab.astype(np.float32), 1, k, ignore_label=5)
        assert abs(acc - right / n) < 1e-7, f"top-{k} accuracy {acc} != loop {right / n}"
        assert per_class.shape == (6,) and per_class[5] == 0


def test_io_transformer_and_oversample():
    rng = np.random.default_rng(5)
    img = rng.uniform(size=(8, 8, 3)).astype(np.float32)
    t = caffe.io.Transformer({"data": (1, 3, 8, 8)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    x = t.preprocess("data", img)
    # HWC -> CHW, RGB -> BGR, *255, - mean per channel, *0.5
    want = (img.transpose(2, 0, 1)[::-1] * 255 - np.array([10, 20, 30])[:, None, None]) * 0.5
    _close(x, want, 1e-4, "preprocess")
    _close(t.deprocess("data", x), img, 1e-5, "deprocess inverts preprocess")
    with pytest.raises(ValueError, match="Mean shape"):
        t.set_mean("data", np.zeros((3, 9, 9)))
    ims = rng.uniform(size=(2, 6, 7, 3)).astype(np.float32)
    crops = caffe.io.oversample(ims, (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    _close(crops[1], ims[0, 0:4, 3:7], 0, "top-right corner crop")
    _close(crops[4], ims[0, 1:5, 1:5], 0, "centre crop starts at int(6/2 - 2), int(7/2 - 2)")
    _close(crops[19], ims[1, 1:5, 1:5, :][:, ::-1], 0, "mirrored centre crop of the second image")
    flat = caffe.io.resize_image(np.full((5, 5, 3), 0.3, np.float32), (9, 4))
    assert flat.shape == (9, 4, 3) and np.allclose(flat, 0.3)


def test_io_resize_and_load_image(tmp_path):
    pytest.importorskip("skimage")
    from PIL import Image
    rgb = (np.random.default_rng(6).uniform(size=(12, 10, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    im = caffe.io.load_image(str(tmp_path / "a.png"))
    assert im.shape == (12, 10, 3) and im.dtype == np.float32
    _close(im, rgb / 255.0, 1e-6, "load_image: RGB in [0, 1]")
    gray = caffe.io.load_image(str(tmp_path / "a.png"), color=False)
    assert gray.shape == (12, 10, 1)
    r = caffe.io.resize_image(im, (6, 5))
    assert r.shape == (6, 5, 3) and im.min() - 1e-6 <= r.min() and r.max() <= im.max() + 1e-6


def test_io_proto_conversions():
    pytest.importorskip("google.protobuf")
    from minicaffe.pycaffe.proto import caffe_pb2
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    bp = caffe.io.array_to_blobproto(a)
    _close(caffe.io.blobproto_to_array(bp), a, 0, "BlobProto round trip")
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=3, width=4)
    legacy.data.extend(a.ravel().tolist())
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 2, 3, 4)
    shapeless = caffe_pb2.BlobProto()
    shapeless.data.extend([1.0, 2.0])
    with pytest.raises(ValueError):
        caffe.io.blobproto_to_array(shapeless)
    d = caffe.io.array_to_datum(np.arange(12, dtype=np.uint8).reshape(3, 2, 2), label=4)
    assert d.label == 4 and np.array_equal(caffe.io.datum_to_array(d), np.arange(12).reshape(3, 2, 2))
    s = caffe.io.arraylist_to_blobprotovector_str([a, a[0]])
    back = caffe.io.blobprotovector_str_to_arraylist(s)
    assert [b.shape for b in back] == [(2, 3, 4), (3, 4)]


SOLVER_NET = """
layer { name: 'data' type: 'DummyData' top: 'data' top: 'label'
  dummy_data_param { shape { dim: 4 dim: 6 } shape { dim: 4 }
    data_filler { type: 'constant' value: 0.5 } data_filler { type: 'constant' value: 1 } } }
layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
  inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.1 } } }
layer { name: 'loss' type: 'SoftmaxWithLoss' bottom: 'ip' bottom: 'label' top: 'loss' }
layer { name: 'acc' type: 'Accuracy' bottom: 'ip' bottom: 'label' top: 'acc' include { phase: TEST } }
"""


def _solver(tmp_path, extra=""):
    _write(tmp_path, "net.prototxt", SOLVER_NET)
    return _write(tmp_path, "solver.prototxt", f"""
        net: '{tmp_path}/net.prototxt' test_iter: 2 test_interval: 5 base_lr: 0.1 momentum: 0.9
        weight_decay: 0.001 lr_policy: 'fixed' max_iter: 10 snapshot_after_train: false
        snapshot_prefix: '{tmp_path}/snap' {extra}""")


def test_solver_apply_update_step_and_test_nets(tmp_path):
    s = caffe.SGDSolver(_solver(tmp_path))
    assert isinstance(caffe.get_solver(_solver(tmp_path)), caffe.SGDSolver)
    assert len(s.test_nets) == 1 and s.test_nets[0].outputs == ["acc", "loss"]
    w = s.net.layers[1].blobs[0]
    w.data[...] = 0
    w.diff[...] = 1
    s.apply_update()
    # diff 1 + decay 0.001 * 0, times lr 0.1: W = -0.1
    _close(w.data, np.full(w.shape, -0.1), 1e-7, "one SGD update from zero weights")
    assert s.test_nets[0].params["ip"][0].data is w.data, "test nets share the train net's weights"
    s.step(7)
    assert s.iter == 7 and [it for it, _ in s.test_scores] == [0, 5]  # test_initialization: true
    s.solve()
    assert s.iter == 10


def test_solver_snapshot_and_restore_continue_identically(tmp_path):
    pytest.importorskip("google.protobuf")
    a = caffe.SGDSolver(_solver(tmp_path))
    a.step(3)
    a.snapshot()
    assert os.path.isfile(tmp_path / "snap_iter_3.caffemodel")
    a.step(2)
    b = caffe.SGDSolver(_solver(tmp_path))
    b.restore(str(tmp_path / "snap_iter_3.solverstate"))
    assert b.iter == 3
    b.step(2)
    _close(b.net.params["ip"][0].data, a.net.params["ip"][0].data, 1e-7, "restored run vs uninterrupted run")


def test_netspec_builds_a_loadable_net(tmp_path):
    pytest.importorskip("google.protobuf")
    L, P = caffe.layers, caffe.params
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[{"dim": [2, 1, 8, 8]}, {"dim": [2]}], ntop=2)
    n.conv = L.Convolution(n.data, kernel_size=3, num_output=4, weight_filler={"type": "xavier"})
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu = L.ReLU(n.pool, in_place=True)
    n.ip = L.InnerProduct(n.relu, num_output=3)
    n.loss = L.SoftmaxWithLoss(n.ip, n.label, loss_weight=2)
    proto = n.to_proto()
    assert proto.layer[3].bottom == proto.layer[3].top == ["pool"]
    assert proto.layer[5].loss_weight == [2.0]
    net = caffe.Net(_write(tmp_path, "spec.prototxt", str(proto)), caffe.TRAIN)
    assert net._layer_names == ["data", "conv", "pool", "relu", "ip", "loss"]
    assert net.blobs["pool"].shape == (2, 4, 3, 3) and net.blob_loss_weights["loss"] == 2.0
    anon = L.Softmax(L.InnerProduct(L.DummyData(shape={"dim": [1, 2]}), num_output=2)).to_proto()
    assert [lay.name for lay in anon.layer] == ["DummyData1", "InnerProduct1", "Softmax1"]
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top"):
        L.Silence(L.DummyData(ntop=2), ntop=0)


def _run(args, cwd, extra_env=None, **kw):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **(extra_env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                          check=False, **kw)


def test_main_runs_an_unchanged_script(tmp_path):
    (tmp_path / "helper_mod.py").write_text("VALUE = 42\n")
    script = _write(tmp_path, "script.py", """
        import sys
        import caffe
        import caffe.io
        from helper_mod import VALUE
        blob = caffe.proto.caffe_pb2.BlobProto()  # no explicit import of caffe.proto, as in pycaffe
        print(caffe.__name__, caffe.io.__name__, type(blob).__module__, VALUE, sys.argv[1:], caffe.TRAIN, caffe.TEST)
    """)
    r = _run(["-m", "minicaffe.pycaffe", script, "a", "--b"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["minicaffe.pycaffe", "minicaffe.pycaffe.io", "caffe_pb2",
                                "42", "['a',", "'--b']", "0", "1"]
    r = _run(["-m", "minicaffe.pycaffe", str(tmp_path / "missing.py")], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().endswith("missing.py: no such script")
    assert "Traceback" not in r.stderr


def test_engine_imports_neither_protobuf_nor_caffe(tmp_path):
    code = textwrap.dedent("""
        import sys, numpy as np
        import minicaffe, minicaffe.pycaffe as mp
        net = mp.Net(sys.argv[1], mp.TEST)
        net.forward()
        bad = [m for m in ("google.protobuf", "skimage", "caffe") if m in sys.modules]
        print("loaded:", bad)
    """)
    proto = _write(tmp_path, "n.prototxt", SOLVER_NET)
    r = _run(["-c", code, proto], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "loaded: []"


def test_classifier_predict_matches_manual_pipeline(tmp_path):
    pytest.importorskip("skimage")
    proto = _write(tmp_path, "cls.prototxt", """
        layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 3 dim: 6 dim: 6 } } }
        layer { name: 'fc' type: 'InnerProduct' bottom: 'data' top: 'fc'
                inner_product_param { num_output: 5 weight_filler { type: 'gaussian' std: 0.01 } } }
        layer { name: 'prob' type: 'Softmax' bottom: 'fc' top: 'prob' }
    """)
    caffe.Net(proto, caffe.TEST).save(str(tmp_path / "w.caffemodel"))
    mean = np.array([100.0, 110.0, 120.0])
    clf = caffe.Classifier(proto, str(tmp_path / "w.caffemodel"), image_dims=(8, 8), mean=mean, raw_scale=255,
                           channel_swap=(2, 1, 0))
    rng = np.random.default_rng(7)
    ims = [rng.uniform(size=(10, 9, 3)).astype(np.float32) for _ in range(3)]
    got = clf.predict(ims, oversample=True)
    w, b = clf.params["fc"][0].data.astype(np.float64), clf.params["fc"][1].data
    want = []
    for im in ims:
        r = caffe.io.resize_image(im, (8, 8))
        crops = [r[y:y + 6, x:x + 6] for y, x in [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]]
        crops += [c[:, ::-1] for c in crops]
        z = np.stack([(c.transpose(2, 0, 1)[::-1] * 255 - mean[:, None, None]).ravel() for c in crops]) @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        want.append((p / p.sum(1, keepdims=True)).mean(0))
    _close(got, np.array(want), 1e-5, "Classifier.predict with 10-crop oversampling")
    assert clf.predict(ims, oversample=False).shape == (3, 5)


def test_data_layer_reads_lmdb_with_caffes_transform(tmp_path):
    lmdb = pytest.importorskip("lmdb")
    pytest.importorskip("google.protobuf")
    import io as _io

    from PIL import Image
    rng = np.random.default_rng(8)
    raw = [rng.integers(0, 256, (3, 4, 5)).astype(np.uint8) for _ in range(3)]
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for i, a in enumerate(raw):
            txn.put(f"{i:08d}".encode(), caffe.io.array_to_datum(a, label=i).SerializeToString())
        buf = _io.BytesIO()
        Image.fromarray(raw[0].transpose(1, 2, 0)[:, :, ::-1]).save(buf, format="PNG")  # CHW BGR -> HWC RGB
        enc = caffe.io.array_to_datum(raw[0], label=7)
        enc.data, enc.encoded = buf.getvalue(), True
        txn.put(b"00000003", enc.SerializeToString())
    env.close()
    proto = _write(tmp_path, "data.prototxt", f"""
        layer {{ name: 'd' type: 'Data' top: 'data' top: 'label'
          data_param {{ source: '{tmp_path / "db"}' batch_size: 3 backend: LMDB }}
          transform_param {{ crop_size: 3 mean_value: 1 mean_value: 2 mean_value: 3 scale: 0.5 }} }}""")
    net = caffe.Net(proto, caffe.TEST)
    assert net.blobs["data"].shape == (3, 3, 3, 3) and "Data" in caffe.layer_type_list()
    mean = np.array([1, 2, 3], np.float32)[:, None, None]

    def want(a):  # TEST phase: the centre 3x3 window, (x - mean) * scale
        return (a[:, 0:3, 1:4].astype(np.float32) - mean) * 0.5
    net.forward()
    _close(net.blobs["data"].data, np.stack([want(a) for a in raw]), 0, "first batch")
    _close(net.blobs["label"].data, [0, 1, 2], 0, "labels")
    net.forward()  # the encoded record, then the cursor wraps to the first ones
    _close(net.blobs["data"].data, np.stack([want(raw[0]), want(raw[0]), want(raw[1])]), 0, "encoded + wrap")
    _close(net.blobs["label"].data, [7, 0, 1], 0, "labels after the wrap")


def test_coord_map_through_conv_pool_deconv():
    pytest.importorskip("google.protobuf")
    from minicaffe.pycaffe.coord_map import coord_map_from_to, crop
    L = caffe.layers

    def spec(pool=2, dstride=2, dpad=0):
        n = caffe.NetSpec()
        n.data = L.Input(shape={"dim": [1, 1, 50, 50]})
        n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, pad=0)
        n.pool = L.Pooling(n.conv, kernel_size=pool, stride=pool)
        n.deconv = L.Deconvolution(n.pool, num_output=2, kernel_size=2 * dstride, stride=dstride, pad=dpad)
        return n
    # conv 3x3 (offset +1), pool 2x (x2, offset +0.5 in pool units), deconv 2x: the identity overall
    n = spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, float(a[0]), float(b[0])) == (1, 1.0, 0.0)
    n = spec(pool=4, dstride=4)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert (ax, float(a[0]), float(b[0])) == (1, 1.0, -1.0)
    n = spec(pool=4, dstride=4)
    n.crop = crop(n.deconv, n.data)
    p = n.to_proto().layer[-1]
    assert p.type == "Crop" and p.crop_param.axis == 2 and list(p.crop_param.offset) == [1]
    n = spec()
    n.ip = L.InnerProduct(n.deconv, num_output=3)
    with pytest.raises(RuntimeError):
        coord_map_from_to(n.ip, n.data)
    n = spec(pool=3)
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.deconv, n.data)


@pytest.mark.slow
def test_gpu_mode_forward_matches_cpu_in_the_cuda_simulator(tmp_path):
    proto = _write(tmp_path, "gpu.prototxt", """
        layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
        layer { name: 'conv' type: 'Convolution' bottom: 'data' top: 'conv'
                convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'xavier' } } }
        layer { name: 'relu' type: 'ReLU' bottom: 'conv' top: 'conv' }
        layer { name: 'pool' type: 'Pooling' bottom: 'conv' top: 'pool'
                pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
        layer { name: 'ip' type: 'InnerProduct' bottom: 'pool' top: 'ip'
                inner_product_param { num_output: 5 weight_filler { type: 'xavier' } } }
        layer { name: 'prob' type: 'Softmax' bottom: 'ip' top: 'prob' }
    """)
    code = textwrap.dedent("""
        import sys, numpy as np
        import minicaffe.pycaffe as caffe
        np.random.seed(0)
        net = caffe.Net(sys.argv[1], caffe.TEST)
        net.blobs["data"].data[...] = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
        cpu = {k: v.copy() for k, v in net.forward(blobs=["conv", "pool"]).items()}
        caffe.set_mode_gpu()
        gpu = net.forward(blobs=["conv", "pool"])
        print(max(float(np.abs(gpu[k] - cpu[k]).max()) for k in cpu))
    """)
    r = _run(["-c", code, proto], tmp_path, extra_env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 1e-5, f"GPU-mode forward differs from CPU mode by {r.stdout.split()[-1]}"


@pytest.mark.parametrize("proto,model,blobs,inp", [
    ("caffenet_small_v1.prototxt", "caffenet_small_v1.caffemodel", "caffenet_small_blobs_224.npz",
     "caffenet_small_input_224.npy"),
    ("alexnet_small.prototxt", "alexnet_small_v1.caffemodel", "alexnet_small_blobs_227.npz",
     "alexnet_small_input_227.npy"),
])
def test_blobs_match_real_caffe_fixtures(fixtures_dir, proto, model, blobs, inp):
    """Legacy V1 prototxt / caffemodel, input reshaped as pycaffe users do: every blob vs Caffe's."""
    net = caffe.Net(str(fixtures_dir / proto), str(fixtures_dir / model), caffe.TEST)
    x = np.load(fixtures_dir / inp)
    name = net.inputs[0]
    net.blobs[name].reshape(*x.shape)
    net.blobs[name].data[...] = x
    net.forward()
    ref = np.load(fixtures_dir / blobs)
    assert net._inputs == [0]
    for k in ref.files:
        want = ref[k]
        err = np.abs(net.blobs[k].data - want).max() / max(np.abs(want).max(), 1e-12)
        assert err <= 1e-4, f"{proto}: blob {k} max rel error {err:.3g} against real Caffe"


def test_detector_windows(tmp_path):
    pytest.importorskip("skimage")
    from PIL import Image
    proto = _write(tmp_path, "det.prototxt", """
        layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
        layer { name: 'fc' type: 'InnerProduct' bottom: 'data' top: 'fc'
                inner_product_param { num_output: 3 weight_filler { type: 'gaussian' std: 0.1 } } }
    """)
    caffe.Net(proto, caffe.TEST).save(str(tmp_path / "w.caffemodel"))
    rgb = (np.random.default_rng(9).uniform(size=(12, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    det = caffe.Detector(proto, str(tmp_path / "w.caffemodel"), raw_scale=255, channel_swap=(2, 1, 0))
    windows = [np.array([0, 0, 4, 4]), np.array([2, 3, 10, 11]), np.array([5, 5, 9, 9])]
    out = det.detect_windows([(str(tmp_path / "im.png"), windows)])
    assert [d["filename"] for d in out] == [str(tmp_path / "im.png")] * 3
    im = rgb / 255.0
    w, b = det.params["fc"][0].data, det.params["fc"][1].data
    for d, win in zip(out, windows):
        crop = caffe.io.resize_image(im[win[0]:win[2], win[1]:win[3]].astype(np.float32), (4, 4))
        x = crop.transpose(2, 0, 1)[::-1] * 255  # HWC RGB -> CHW BGR, 0-255
        _close(d["prediction"], w @ x.ravel() + b, 1e-3, f"window {win.tolist()}")
    ctx = caffe.Detector(proto, str(tmp_path / "w.caffemodel"), raw_scale=255, channel_swap=(2, 1, 0), context_pad=1)
    c = ctx.crop(im.astype(np.float32), np.array([0, 0, 6, 6]))
    assert c.shape == (4, 4, 3)


def test_bad_inputs_are_one_line_minicaffe_errors(tmp_path):
    from minicaffe.errors import MinicaffeError
    cases = {
        "missing file": lambda: caffe.Net(str(tmp_path / "nope.prototxt"), caffe.TEST),
        "unknown type": lambda: caffe.Net(_write(tmp_path, "u.prototxt", """
            layer { name: 'x' type: 'Frobnicate' top: 'x' }"""), caffe.TEST),
        "unknown bottom": lambda: caffe.Net(_write(tmp_path, "b.prototxt", """
            layer { name: 'ip' type: 'InnerProduct' bottom: 'nothing' top: 'ip'
                    inner_product_param { num_output: 1 } }"""),
            caffe.TEST),
        "weights of another net": lambda: caffe.Net(_write(tmp_path, "w.prototxt", SIMPLE), caffe.TEST).copy_from(
            str(tmp_path / "other.caffemodel")),
    }
    other = caffe.Net(_write(tmp_path, "o.prototxt", SIMPLE.replace("num_output: 5", "num_output: 6")), caffe.TEST)
    other.save(str(tmp_path / "other.caffemodel"))
    for what, fn in cases.items():
        with pytest.raises(MinicaffeError) as e:
            fn()
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 400, f"{what}: {msg!r}"
    with pytest.raises(ValueError, match="phase"):
        caffe.Net(_write(tmp_path, "p.prototxt", SIMPLE), 7)


def test_hdf5_data_layer_walks_files_and_wraps(tmp_path):
    import h5py
    rng = np.random.default_rng(10)
    xs = [rng.standard_normal((3, 2, 2)).astype(np.float32), rng.standard_normal((2, 2, 2)).astype(np.float32)]
    for i, x in enumerate(xs):
        with h5py.File(tmp_path / f"part{i}.h5", "w") as f:
            f["data"] = x
            f["label"] = np.arange(len(x), dtype=np.float64) + 10 * i
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'part0.h5'}\n{tmp_path / 'part1.h5'}\n")
    proto = _write(tmp_path, "h5.prototxt", f"""
        layer {{ name: 'd' type: 'HDF5Data' top: 'data' top: 'label'
                 hdf5_data_param {{ source: '{tmp_path / "list.txt"}' batch_size: 4 }} }}""")
    net = caffe.Net(proto, caffe.TRAIN)
    assert net.blobs["data"].shape == (4, 2, 2) and net.blobs["label"].shape == (4,)
    all_x = np.concatenate(xs)
    net.forward()
    _close(net.blobs["data"].data, all_x[:4], 0, "rows 0-2 of file 0, row 0 of file 1")
    _close(net.blobs["label"].data, [0, 1, 2, 10], 0, "labels across the file boundary")
    net.forward()
    _close(net.blobs["label"].data, [11, 0, 1, 2], 0, "labels after wrapping to the first file")


def test_memory_data_layer_and_set_input_arrays(tmp_path):
    proto = _write(tmp_path, "mem.prototxt", """
        layer { name: 'd' type: 'MemoryData' top: 'data' top: 'label'
                memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }
        layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip' inner_product_param { num_output: 1 } }""")
    net = caffe.Net(proto, caffe.TEST)
    x = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(x, np.array([5.0, 6.0, 7.0, 8.0], np.float32))
    for want in (0, 2, 0):
        net.forward()
        _close(net.blobs["data"].data, x[want:want + 2], 0, f"batch starting at row {want}")
        _close(net.blobs["label"].data, [5 + want, 6 + want], 0, "labels")
    from minicaffe.errors import MinicaffeError
    with pytest.raises(MinicaffeError, match="multiple of batch_size"):
        net.set_input_arrays(x[:3], np.zeros(3, np.float32))


def test_dropout_train_phase_and_forward_backward_all(tmp_path):
    proto = _write(tmp_path, "drop.prototxt", """
        force_backward: true
        layer { name: 'data' type: 'Input' top: 'data' input_param { shape { dim: 4 dim: 50 } } }
        layer { name: 'drop' type: 'Dropout' bottom: 'data' top: 'data' dropout_param { dropout_ratio: 0.25 } }
        layer { name: 'ip' type: 'InnerProduct' bottom: 'data' top: 'ip'
                inner_product_param { num_output: 3 weight_filler { type: 'gaussian' } } }
    """)
    np.random.seed(11)
    x = np.random.default_rng(12).standard_normal((6, 50)).astype(np.float32)
    test = caffe.Net(proto, caffe.TEST)
    w = test.params["ip"][0].data
    _close(test.forward(data=x[:4])["ip"], x[:4] @ w.T, 1e-5, "TEST-phase dropout is the identity")
    train = caffe.Net(proto, caffe.TRAIN)
    train.share_with(test)
    out = train.forward(data=x[:4])
    kept = train.blobs["data"].data != 0  # the in-place top: x * mask / 0.75
    assert 0.5 < kept.mean() < 0.95, f"kept fraction {kept.mean():.2f} for ratio 0.25"
    _close(train.blobs["data"].data[kept], x[:4][kept] / 0.75, 1e-5, "kept units scaled by 1 / (1 - ratio)")
    _close(out["ip"], train.blobs["data"].data @ w.T, 1e-5, "ip sees the dropped-out input")
    g = np.ones((4, 3), np.float32)
    dx = train.backward(ip=g)["data"]
    _close(dx, (g @ w) * kept / 0.75, 1e-5, "dropout backward uses the forward's mask")
    outs, diffs = test.forward_backward_all(data=x, ip=np.ones((6, 3), np.float32))
    _close(outs["ip"], x @ w.T, 1e-5, "forward_backward_all outputs over 2 batches (padded)")
    _close(diffs["data"], np.ones((6, 3)) @ w, 1e-5, "forward_backward_all input diffs")
    test.blobs["data"].reshape(2, 50)
    test.reshape()
    assert test.blobs["ip"].shape == (2, 3)


def test_single_process_helpers():
    assert caffe.has_nccl() is False and caffe.solver_count() == 1 and caffe.solver_rank() == 0
    caffe.set_solver_count(1)
    with pytest.raises(ValueError, match="one solver"):
        caffe.set_solver_count(2)
    t = caffe.Timer()
    t.start()
    t.stop()
    assert t.ms >= 0
