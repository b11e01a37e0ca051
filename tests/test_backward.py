"""Backward pass: every layer against finite differences (float64), the Numba CPU kernels against
the NumPy references, net-level bookkeeping (in-place versions, fan-out, TRAIN-phase dropout,
partial backward), and the whole small CaffeNet fixture against PyTorch autograd.

Finite differences run each layer's *own* NumPy reference forward in float64: while they run,
the layer modules see a ``numpy`` whose ``float32`` is ``float64`` (:class:`_F64Numpy`), so the
derivative checked is that of the engine's forward (Caffe's ceil-mode pooling, LRN's alpha/n,
BatchNorm's scale factor...), not of a re-implementation written for the test.
"""
import contextlib
import importlib

import numpy as np
import pytest
from conftest import FIXTURES, assert_close

from minicaffe import Net
from minicaffe.errors import ModelError

LAYER_MODULES = ["batchnorm", "concat", "convolution.reference", "dropout", "eltwise", "flatten", "inner_product",
                 "loss", "lrn", "pooling", "relu", "scale", "softmax"]

#: finite differences in float64 (central, step 1e-6) agree with an exact gradient to ~1e-9
FD_TOL = 1e-6
#: float32 Numba kernels vs the float64 reference gradient
CPU_TOL = 2e-5


class _F64Numpy:
    """``numpy``, except that ``float32`` is ``float64`` (see the module docstring)."""

    def __getattr__(self, k):
        return np.float64 if k == "float32" else getattr(np, k)


@contextlib.contextmanager
def float64_layers():
    # the net too: it copies its inputs to float32
    mods = [importlib.import_module(f"minicaffe.layers.{m}") for m in LAYER_MODULES]
    mods.append(importlib.import_module("minicaffe.net"))
    old = [m.np for m in mods]
    try:
        for m in mods:
            m.np = _F64Numpy()
        yield
    finally:
        for m, o in zip(mods, old):
            m.np = o


def one_layer_net(body, shapes, label_classes=None):
    """A net of Input layers b0, b1, ... with ``shapes`` feeding one layer ``body`` (top "y")."""
    text = ""
    for i, s in enumerate(shapes):
        dims = " ".join(f"dim: {d}" for d in s)
        text += f'layer {{ name: "in{i}" type: "Input" top: "b{i}" input_param {{ shape {{ {dims} }} }} }}\n'
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    text += f'layer {{ name: "L" {bottoms} top: "y" {body} }}\n'
    return Net(text, backend="numpy", seed=3)


# (id, layer body, bottom shapes, extra): extra "labels": bottom 1 holds class labels (no grad);
# "avoid": keep |x - v| > 0.05 for v in the list (kinks of ReLU/Clip)
CASES = [
    ("conv_group_stride_asympad_dil",
     ('type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 group: 2 stride_h: 2 stride_w: 1 '
      'pad_top: 1 pad_bottom: 0 pad_left: 1 pad_right: 2 dilation: 1 dilation: 2 }'), [(2, 4, 7, 6)], {}),
    ("conv_depthwise",
     'type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 group: 3 stride: 2 pad: 1 }',
     [(2, 3, 5, 5)], {}),
    ("conv_1x1_nobias", 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 1 bias_term: false }',
     [(2, 3, 3, 4)], {}),
    ("inner_product", 'type: "InnerProduct" inner_product_param { num_output: 5 }', [(3, 2, 2, 2)], {}),
    ("inner_product_T", 'type: "InnerProduct" inner_product_param { num_output: 4 transpose: true }', [(3, 6)], {}),
    ("relu_leaky", 'type: "ReLU" relu_param { negative_slope: 0.1 }', [(2, 3, 4, 4)], {"avoid": [0.0]}),
    ("clip", 'type: "Clip" clip_param { min: -0.5 max: 0.7 }', [(2, 3, 4, 4)], {"avoid": [-0.5, 0.7]}),
    ("pool_max_ceil", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }', [(2, 3, 6, 6)], {}),
    ("pool_max_pad", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', [(2, 2, 6, 7)], {}),
    ("pool_ave_pad_ceil", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
     [(2, 3, 6, 6)], {}),
    ("pool_ave_global", 'type: "Pooling" pooling_param { pool: AVE global_pooling: true }', [(2, 3, 3, 5)], {}),
    ("lrn_across", 'type: "LRN" lrn_param { local_size: 5 alpha: 0.9 beta: 0.75 k: 2 }', [(2, 7, 3, 3)], {}),
    ("lrn_within", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.9 beta: 0.75 norm_region: WITHIN_CHANNEL }',
     [(2, 2, 5, 4)], {}),
    ("softmax", 'type: "Softmax"', [(2, 4, 3, 3)], {}),
    ("concat", 'type: "Concat"', [(2, 2, 3, 3), (2, 3, 3, 3)], {}),
    ("eltwise_sum_coeff", 'type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }',
     [(2, 3, 3, 3), (2, 3, 3, 3)], {}),
    ("eltwise_prod", 'type: "Eltwise" eltwise_param { operation: PROD }', [(2, 3, 3, 3)] * 3, {}),
    ("eltwise_max", 'type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3, 3, 3)] * 3, {}),
    ("flatten", 'type: "Flatten"', [(2, 3, 2, 2)], {}),
    ("batchnorm", 'type: "BatchNorm" batch_norm_param { eps: 0.001 }', [(2, 3, 4, 4)], {}),
    ("scale_bias", 'type: "Scale" scale_param { bias_term: true }', [(2, 3, 4, 4)], {}),
    ("softmax_loss", 'type: "SoftmaxWithLoss"', [(4, 5), (4,)], {"labels": 5}),
    ("softmax_loss_ignore", 'type: "SoftmaxWithLoss" loss_param { ignore_label: 2 }', [(6, 3), (6,)], {"labels": 3}),
    ("dropout_train", 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [(2, 3, 4, 4)], {"train": True}),
]


def _inputs(shapes, extra, rng):
    xs = [rng.standard_normal(s) for s in shapes]
    if "labels" in extra:
        xs[1] = rng.integers(0, extra["labels"], shapes[1]).astype(np.float64)
    for v in extra.get("avoid", []):
        for x in xs:
            near = np.abs(x - v) < 0.05
            x[near] += 0.1 * np.sign(x[near] - v + 1e-12)
    return xs


def _run(layer, xs, ps, backend, train):
    if train:
        layer.phase = "TRAIN"
        layer.rng = np.random.default_rng(11)  # the same mask at every finite-difference step
    return layer.forward(list(xs), ps, backend)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_layer_backward_vs_finite_differences(case):
    name, body, shapes, extra = case
    net = one_layer_net(body, shapes)
    layer = net.layers[-1]
    rng = np.random.default_rng(0)
    xs = _inputs(shapes, extra, rng)
    ps = [p.astype(np.float64) for p in net.params.get("L", [])]
    train = extra.get("train", False)
    with float64_layers():
        tops = _run(layer, xs, ps, "numpy", train)
        assert tops[0].dtype == np.float64, f"{name}: the forward did not run in float64"
        R = rng.standard_normal(np.shape(tops[0]))
        dxs, dps = layer.backward([R], xs, tops, ps, "numpy")

        def loss():
            return float(np.sum(R * _run(layer, xs, ps, "numpy", train)[0]))

        def fd(arr):
            g = np.zeros_like(arr)
            flat, gf = arr.reshape(-1), g.reshape(-1)
            for i in range(flat.size):
                v = flat[i]
                flat[i] = v + 1e-6
                lp = loss()
                flat[i] = v - 1e-6
                lm = loss()
                flat[i] = v
                gf[i] = (lp - lm) / 2e-6
            return g

        checked, errs = 0, []
        for k, (x, dx) in enumerate(zip(xs, dxs)):
            if "labels" in extra and k == 1:
                assert dx is None, f"{name}: labels must get no gradient"
                continue
            errs = [assert_close(dx, fd(x), FD_TOL, f"{name}: d/d bottom {k}")]
            checked += 1
        for k, (p, dp) in enumerate(zip(ps, dps)):
            if dp is None:  # not learned (BatchNorm statistics): Caffe gives them lr_mult 0
                assert layer.type == "BatchNorm", f"{name}: parameter {k} has no gradient"
                continue
            errs.append(assert_close(dp, fd(p), FD_TOL, f"{name}: d/d param {k}"))
            checked += 1
        assert checked >= 1

    # the Numba CPU kernels (float32) against the float64 reference gradient
    xs32 = [x.astype(np.float32) for x in xs]
    ps32 = [p.astype(np.float32) for p in ps]
    tops32 = _run(layer, xs32, ps32, "cpu", train)
    dxs32, dps32 = layer.backward([R.astype(np.float32)], xs32, tops32, ps32, "cpu")
    cpu_errs = []
    for k, (a, b) in enumerate(zip(dxs32, dxs)):
        if b is not None:
            assert a.dtype == np.float32, f"{name}: cpu gradient of bottom {k} is {a.dtype}"
            cpu_errs.append(assert_close(a, b, CPU_TOL, f"{name}: cpu d/d bottom {k}"))
    for k, (a, b) in enumerate(zip(dps32, dps)):
        if b is not None:
            cpu_errs.append(assert_close(a, b, CPU_TOL, f"{name}: cpu d/d param {k}"))
    print(f"\nGRADERR | {name} | {max(errs):.1e} | {max(cpu_errs):.1e} |")


def test_max_pool_gradient_goes_to_first_maximum():
    # ties: Caffe's forward keeps the first maximum in row-major scan order; so must backward
    from minicaffe.layers.pooling import (
        MAX,
        pooling_backward_cpu,
        pooling_backward_reference,
    )
    x = np.zeros((1, 1, 3, 3), np.float32)
    dy = np.ones((1, 1, 1, 1), np.float32)
    for f in (pooling_backward_reference, pooling_backward_cpu):
        dx = f(dy, x, MAX, (3, 3), (1, 1), (0, 0))
        assert dx[0, 0, 0, 0] == 1 and dx.sum() == 1, f"{f.__name__}: {dx[0, 0]}"


# ------------------------------------------------------------------------------ net level

NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 2 dim: 5 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 3 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "c1" bottom: "c2" top: "sum" }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "c1" top: "cat" }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 6 } }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.5 } }
layer { name: "out" type: "InnerProduct" bottom: "fc" top: "out" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "out" bottom: "label" top: "loss" }
"""


def _trained_net(backend, x, lab, params):
    net = Net(NET, weights=params, backend=backend)
    net.set_phase("TRAIN", seed=5)  # the same dropout masks at every call
    out = net.forward(x, label=lab)
    return net, float(out["loss"])


def test_net_backward_finite_differences_through_inplace_fanout_and_dropout():
    # c1 (post-ReLU, in place) feeds three layers; fc has in-place TRAIN dropout; the loss layer
    # seeds the gradient. Whole-net float64 forward through _F64Numpy.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 5, 5))
    lab = np.array([0.0, 2.0, 1.0])
    params = {k: [a.astype(np.float64) for a in v] for k, v in Net(NET, backend="numpy", seed=1).params.items()}
    with float64_layers():
        net, _ = _trained_net("numpy", x, lab, params)
        net.backward()
        assert net.diffs["data"].dtype == np.float64
        for arr, g, what in [(x, net.diffs["data"], "data")] + [
                (params[l][k], net.param_diffs[l][k], f"{l}[{k}]") for l in ("c1", "c2", "fc", "out") for k in (0, 1)]:
            num = np.full(arr.size, np.nan)
            flat = arr.reshape(-1)
            for i in range(0, flat.size, max(1, flat.size // 30)):  # a spread of ~30 coordinates each
                v = flat[i]
                flat[i] = v + 1e-6
                lp = _trained_net("numpy", x, lab, params)[1]
                flat[i] = v - 1e-6
                lm = _trained_net("numpy", x, lab, params)[1]
                flat[i] = v
                num[i] = (lp - lm) / 2e-6
            picked = ~np.isnan(num)
            assert_close(g.reshape(-1)[picked], num[picked], 1e-6, f"net d/d {what}")
    # the cpu backend (float32 kernels) gives the same gradients
    cnet, _ = _trained_net("cpu", x.astype(np.float32), lab, params)
    cnet.backward()
    for l in ("c1", "c2", "fc", "out"):
        for k in (0, 1):
            assert_close(cnet.param_diffs[l][k], net.param_diffs[l][k], CPU_TOL, f"cpu net d/d {l}[{k}]")
    assert_close(cnet.diffs["data"], net.diffs["data"], CPU_TOL, "cpu net d/d data")


def test_dropout_train_phase_masks_and_scales():
    net = Net('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 4 dim: 1000 } } }\n'
              'layer { name: "drop" type: "Dropout" bottom: "d" top: "d" dropout_param { dropout_ratio: 0.3 } }',
              backend="cpu")
    x = np.ones((4, 1000), np.float32)
    assert np.array_equal(net.forward(x)["d"], x), "TEST phase must be the identity"
    net.set_phase("TRAIN", seed=0)
    y1 = net.forward(x)["d"]
    kept = y1 != 0
    assert np.allclose(y1[kept], 1 / 0.7), "kept units are scaled by 1/(1-ratio)"
    assert abs(kept.mean() - 0.7) < 0.03, f"keep rate {kept.mean():.3f}, expected 0.7"
    dy = np.full_like(x, 2.0)
    g = net.backward({"d": dy})["d"]
    assert np.array_equal(g != 0, kept) and np.allclose(g[kept], 2 / 0.7)
    y2 = net.forward(x)["d"]
    assert not np.array_equal(y2 != 0, kept), "each TRAIN forward draws a new mask"
    net.set_phase("TEST")
    assert np.array_equal(net.forward(x)["d"], x)


def test_backward_errors():
    net = Net(NET, backend="cpu")
    x = np.zeros((3, 2, 5, 5), np.float32)
    with pytest.raises(ModelError, match="TRAIN"):
        net.backward()
    net.set_phase("TRAIN")
    net.forward(x, label=np.zeros(3))
    with pytest.raises(ModelError, match="shape"):
        net.backward({"out": np.zeros((2, 3))})
    with pytest.raises(ModelError, match="not a blob"):
        net.backward({"nope": np.zeros((2, 3))})


def test_partial_backward_stops_at_end_layer():
    net = Net(NET, backend="cpu")
    net.set_phase("TRAIN")
    net.forward(np.ones((3, 2, 5, 5), np.float32), label=np.zeros(3))
    net.backward(end="fc")
    assert set(net.param_diffs) == {"out", "fc"}
    assert "data" not in net.diffs


# ------------------------------------------------------------------------------ vs PyTorch


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_caffenet_small_gradients_vs_torch_autograd(backend):
    torch = pytest.importorskip("torch")
    if not FIXTURES.is_dir():
        pytest.skip("shared fixtures not found")
    from minicaffe.reference.torch_net import build_torch_net
    proto, weights = FIXTURES / "caffenet_small.prototxt", FIXTURES / "caffenet_small.caffemodel"
    x = np.load(FIXTURES / "caffenet_small_input_227.npy")
    net = Net(proto, weights, backend=backend)
    # TEST-phase dropout (the identity) on both sides; TRAIN only to record the forward
    net.set_phase("TRAIN")
    for layer in net.layers:
        if layer.type == "Dropout":
            layer.phase = "TEST"
    out = net.forward(x)
    R = np.random.default_rng(1).standard_normal(out["fc8"].shape).astype(np.float32)
    net.backward({"fc8": R})

    tnet = build_torch_net(proto, weights)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    (tnet(xt)["fc8"] * torch.from_numpy(R)).sum().backward()
    rows = [("data", assert_close(net.diffs["data"], xt.grad.numpy(), 1e-4, f"{backend} d/d data"))]
    modules = dict(tnet.named_modules())
    assert set(net.param_diffs) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
    for lname, (dw, db) in net.param_diffs.items():
        m = modules[f"layers.{lname}"]
        m = getattr(m, "linear", m)  # InnerProduct wraps an nn.Linear
        rows.append((lname + ".w", assert_close(dw, m.weight.grad.numpy(), 1e-4, f"{backend} d/d {lname}.weight")))
        rows.append((lname + ".b", assert_close(db, m.bias.grad.numpy(), 1e-4, f"{backend} d/d {lname}.bias")))
    print("\n".join(f"{backend} {k}: rel err {v:.2e}" for k, v in rows))


def test_backward_is_part_of_the_layer_contract():
    """Every layer type that trains defines backward in its class (no attribute attached from
    outside); the others inherit Layer.backward, which is a clear error; a backend a layer's
    backward lacks is a clear error too."""
    import inspect

    from minicaffe.errors import ModelError
    from minicaffe.layers import REGISTRY, Layer
    trained = {"Convolution", "InnerProduct", "Pooling", "LRN", "ReLU", "Clip", "BatchNorm", "Scale",
               "Eltwise", "Concat", "Softmax", "Dropout", "Flatten", "SoftmaxWithLoss"}
    for name, cls in REGISTRY.items():
        if cls.type in trained:
            assert "backward" in vars(cls), f"{name}: backward is not defined in the class"
            assert inspect.getsourcefile(cls.backward) == inspect.getsourcefile(cls), name
    from minicaffe import Net
    net = Net('input: "data" input_shape { dim: 1 dim: 2 dim: 3 dim: 3 }\n'
              'layer { name: "pool" type: "Pooling" bottom: "data" top: "p" pooling_param { kernel_size: 2 } }', None)
    pool = net.layers[-1]
    with pytest.raises(ModelError, match="has no backward on the cuda backend"):
        pool.backward([np.zeros((1, 2, 2, 2), np.float32)], [np.zeros((1, 2, 3, 3), np.float32)], [], [], "cuda")
    with pytest.raises(ModelError, match="has no backward pass"):
        Layer.backward(pool, [], [], [], [], "cpu")
