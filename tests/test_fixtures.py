"""Whole-net checks against blobs computed by real BVLC Caffe (../shared/reference/caffe_fixtures).

Every stored blob must match within 1e-4 relative (max |ours - caffe| / max |caffe|) on the
numpy and cpu backends, for current and legacy-V1 caffemodels, the V1 prototxt, inputs at 227
and 224 (ceil-mode pooling), and GoogLeNet. Loading from the converted .h5 must give identical nets.
"""
import numpy as np
import pytest
from conftest import assert_close

import minicaffe
from minicaffe.convert import main as convert_main

CASES = [
    # (prototxt, caffemodel, input size, case)
    ("caffenet_small.prototxt", "caffenet_small.caffemodel", 227, "caffenet_small"),
    ("caffenet_small.prototxt", "caffenet_small.caffemodel", 224, "caffenet_small"),
    ("caffenet_small.prototxt", "caffenet_small_v1.caffemodel", 227, "caffenet_small"),
    ("caffenet_small_v1.prototxt", "caffenet_small_v1.caffemodel", 224, "caffenet_small"),
    ("caffenet_small_v1.prototxt", "caffenet_small.caffemodel", 227, "caffenet_small"),
    ("alexnet_small.prototxt", "alexnet_small.caffemodel", 227, "alexnet_small"),
    ("alexnet_small.prototxt", "alexnet_small_v1.caffemodel", 227, "alexnet_small"),
    ("googlenet/googlenet.prototxt", "googlenet/googlenet.caffemodel", 224, "googlenet/googlenet"),
]


def _check_all(out, blobs, what):
    worst = {}
    for key in blobs.files:
        name = key.replace("__", "/")
        assert name in out, f"{what}: blob {name!r} missing from forward output"
        worst[name] = assert_close(out[name], blobs[key], 1e-4, f"{what} blob {name}")
    return worst


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("proto,weights,size,case", CASES, ids=[f"{c[0]}|{c[1]}|{c[2]}" for c in CASES])
def test_matches_real_caffe(fixtures_dir, backend, proto, weights, size, case):
    net = minicaffe.Net(fixtures_dir / proto, fixtures_dir / weights, backend=backend)
    x = np.load(fixtures_dir / f"{case}_input_{size}.npy")
    out = net.forward(x)
    worst = _check_all(out, np.load(fixtures_dir / f"{case}_blobs_{size}.npz"), f"{backend} {proto} {weights} {size}")
    print(f"\n{backend} {proto} {weights} @{size}: " + ", ".join(f"{k}={v:.1e}" for k, v in worst.items()))


def test_h5_equals_caffemodel(fixtures_dir, tmp_path):
    proto = fixtures_dir / "caffenet_small.prototxt"
    out = tmp_path / "small.h5"
    assert convert_main([str(proto), str(fixtures_dir / "caffenet_small.caffemodel"), "-o", str(out)]) == 0
    a = minicaffe.Net(proto, fixtures_dir / "caffenet_small.caffemodel", backend="numpy")
    b = minicaffe.Net(proto, out, backend="numpy")
    assert list(a.params) == list(b.params)
    for k in a.params:
        for pa, pb in zip(a.params[k], b.params[k]):
            assert pa.shape == pb.shape and np.array_equal(pa, pb), k
    x = np.load(fixtures_dir / "caffenet_small_input_227.npy")
    oa, ob = a.forward(x), b.forward(x)
    for k in oa:
        assert np.array_equal(oa[k], ob[k]), k
    import h5py
    with h5py.File(out) as f:
        assert f.attrs["source"] == "caffenet_small.caffemodel"
        assert len(f.attrs["source_sha1"]) == 40 and len(f.attrs["source_sha256"]) == 64
        assert "conv1" in f.attrs["prototxt"]
        assert list(f["conv2"].keys()) == ["0", "1"] and f["conv2/0"].shape == (32, 8, 5, 5)


def test_v1_and_current_caffemodel_identical(fixtures_dir):
    from minicaffe.io.caffemodel import read_caffemodel
    _, cur = read_caffemodel(fixtures_dir / "caffenet_small.caffemodel")
    _, v1 = read_caffemodel(fixtures_dir / "caffenet_small_v1.caffemodel")
    assert v1["conv1"][0] == "Convolution" and v1["fc6"][0] == "InnerProduct"
    with_blobs = [n for n, (_, b) in cur.items() if b]
    assert with_blobs == [n for n, (_, b) in v1.items() if b]
    for name in with_blobs:
        blobs = cur[name][1]
        for a, b in zip(blobs, v1[name][1]):
            assert np.array_equal(a.reshape(-1), b.reshape(-1)), name
