"""VGG-16 and ResNet-50 against real Caffe: every blob of reduced-width versions of the official
topologies (tests/fixtures/caffe, written by scripts/make_vgg_resnet_fixtures.py with BVLC Caffe),
and the full official prototxts build with the right shapes.

The ResNet fixture exercises Caffe's BatchNorm semantics (use_global_stats, statistics stored
times a moving-average factor, a factor of 0 meaning zero statistics), Scale with bias_term,
Eltwise SUM of projection and identity shortcuts, and convolutions without bias; the VGG fixture
is in the gist's legacy V1 text format, at an input size where Caffe's ceil-mode pooling differs
from floor mode.
"""
import json
import pathlib

import numpy as np
import pytest
from conftest import MODELS, rel_err

from minicaffe import Net
from minicaffe.layers import REGISTRY
from minicaffe.models import get_model

FIX = pathlib.Path(__file__).resolve().parent / "fixtures" / "caffe"
CASES = ("vgg16_small", "resnet50_small")
TOL = 1e-4


def _load(case):
    ref = np.load(FIX / f"{case}_blobs.npz")
    return {k: ref[k] for k in ref.files}, np.load(FIX / f"{case}_input.npy")


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("case", CASES)
def test_every_blob_matches_caffe(case, backend):
    ref, x = _load(case)
    net = Net(FIX / f"{case}.prototxt", FIX / f"{case}.caffemodel", backend=backend)
    out = net.forward(x)
    missing = sorted(set(ref) - set(out))
    assert not missing, f"{case}: blobs Caffe has and minicaffe does not: {missing}"
    errs = {}
    for k, r in ref.items():
        assert out[k].shape == r.shape, f"{case} {k}: shape {out[k].shape} != Caffe's {r.shape}"
        errs[k] = rel_err(out[k], r)
    worst = max(errs, key=errs.get)
    d = np.abs(out[worst].astype(np.float64) - ref[worst])
    where = np.unravel_index(int(d.argmax()), d.shape)
    print(f"{case} [{backend}]: {len(errs)} blobs, worst {worst} rel {errs[worst]:.2e} "
          f"(max abs {d.max():.3e} at {where})")
    bad = {k: f"{e:.2e}" for k, e in errs.items() if e > TOL}
    assert not bad, f"{case} [{backend}]: blobs over {TOL:g} relative: {bad}; worst {worst} at {where}"


def test_fixture_exercises_caffe_batchnorm_semantics():
    """The fixture's BatchNorm factors are nontrivial and include 0; the Scale layers carry a bias."""
    meta = json.loads((FIX / "resnet50_small.json").read_text())
    f = meta["batchnorm_moving_average_factor"]
    assert 0.0 in f.values() and sum(1 for v in f.values() if v not in (0.0, 1.0)) >= 20, f
    net = Net(FIX / "resnet50_small.prototxt", FIX / "resnet50_small.caffemodel", backend="numpy")
    types = {l.type for l in net.layers}
    assert {"BatchNorm", "Scale", "Eltwise", "ReLU", "Pooling", "Convolution", "InnerProduct"} <= types
    for l in net.layers:
        if l.type == "BatchNorm":
            assert net.params[l.name][2][0] == np.float32(f[l.name]), l.name
        if l.type == "Scale":
            assert l.bias_term, l.name
    # both block kinds of every stage: projection ("a", with branch1) and identity ("b")
    for s in "2345":
        assert f"res{s}a_branch1" in net.params and f"res{s}b_branch2a" in net.params
    # the Eltwise of the identity block adds its input back: removing that input must change res2b
    _, x = _load("resnet50_small")
    out = net.forward(x)
    assert not np.allclose(out["res2b"], np.maximum(out["res2b_branch2c"], 0), atol=1e-3)


def test_full_resnet50_builds_and_runs():
    net = Net(MODELS / "resnet50.deploy.prototxt", None, backend="cpu", seed=0)
    assert net.input_shapes["data"] == (1, 3, 224, 224)
    assert net.blob_shapes["pool1"] == (1, 64, 56, 56)            # ceil-mode 3x3/2 pooling of 112
    assert net.blob_shapes["res5c"] == (1, 2048, 7, 7)
    assert net.blob_shapes["pool5"] == (1, 2048, 1, 1)
    assert net.blob_shapes["prob"] == (1, 1000)
    learned = sum(a.size for l in net.layers if l.type != "BatchNorm" for a in net.params.get(l.name, []))
    # ResNet-50's usual count (25,557,032, torchvision's) plus the 64 biases of this release's conv1
    assert learned == 25_557_032 + 64, learned
    bn = [l for l in net.layers if l.type == "BatchNorm"]
    assert len(bn) == 53 and all(l.eps == 1e-5 for l in bn)
    prob = net.forward(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32),
                       fetch=["prob"])["prob"]
    assert prob.shape == (1, 1000) and abs(float(prob.sum()) - 1) < 1e-4


def test_full_vgg16_shapes(monkeypatch):
    """The gist's V1 prototxt: 13 3x3 convolutions, 5 pools, fc6 reads 512x7x7. Parameters are
    lazily allocated zeros here (drawing 138M seeded values takes seconds); the seeded build is
    test_full_vgg16_seeded (slow)."""
    for layer_type in ("Convolution", "InnerProduct"):
        monkeypatch.setattr(REGISTRY[layer_type], "init_params",
                            lambda self, rng: [np.zeros(s, np.float32) for s in self.param_shapes])
    net = Net(MODELS / "vgg16.deploy.prototxt", None, backend="numpy")
    assert net.input_shapes["data"] == (10, 3, 224, 224)
    assert net.blob_shapes["pool5"] == (10, 512, 7, 7)
    assert net.params["fc6"][0].shape == (4096, 512 * 7 * 7)
    assert net.blob_shapes["prob"] == (10, 1000)
    convs = [l for l in net.layers if l.type == "Convolution"]
    assert len(convs) == 13 and all(l.param_shapes[0][2:] == (3, 3) for l in convs)
    assert sum(a.size for v in net.params.values() for a in v) == 138_357_544   # VGG-16's published count
    assert [l.type for l in net.layers].count("Pooling") == 5


@pytest.mark.slow
def test_full_vgg16_seeded():
    net = Net(MODELS / "vgg16.deploy.prototxt", None, backend="numpy", seed=0)
    assert net.blob_shapes["pool5"] == (10, 512, 7, 7)
    assert net.params["fc6"][0].shape == (4096, 25088)


@pytest.mark.parametrize("name,prototxt",
                         [("vgg16", "vgg16.deploy.prototxt"), ("resnet50", "resnet50.deploy.prototxt")])
def test_registry_entries(name, prototxt):
    spec = get_model(name)
    assert pathlib.Path(spec.prototxt) == MODELS / prototxt
    assert spec.source["url"].startswith(("http://", "https://")) and len(spec.source["sha1"]) == 40
    assert spec.preprocessing.crop == 224 and spec.preprocessing.channel_order == "BGR"
    assert spec.converter is None                    # an official Caffe binary, converted like CaffeNet


@pytest.mark.parametrize("case", CASES)
def test_fetch_conversion_path(case, tmp_path):
    """What `weights fetch vgg16|resnet50` does after the download: caffemodel -> .h5 against the
    prototxt (VGG's in legacy V1 text); the converted net gives Caffe's output."""
    from minicaffe.convert import convert_caffemodel
    ref, x = _load(case)
    out = tmp_path / "w.h5"
    convert_caffemodel(str(FIX / f"{case}.prototxt"), str(FIX / f"{case}.caffemodel"), str(out))
    prob = Net(FIX / f"{case}.prototxt", out, backend="cpu").forward(x, fetch=["prob"])["prob"]
    assert rel_err(prob, ref["prob"]) < TOL
