"""Bad input gets one clear error naming the file and the problem (MinicaffeError subclasses),
and the command-line tools print one line, never a traceback."""
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

import minicaffe
from minicaffe.errors import ModelError, PrototxtError, WeightsError
from minicaffe.io.caffemodel import read_caffemodel, write_caffemodel


def test_truncated_caffemodel(fixtures_dir, tmp_path):
    data = (fixtures_dir / "caffenet_small.caffemodel").read_bytes()
    bad = tmp_path / "trunc.caffemodel"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"trunc\.caffemodel: corrupt or truncated caffemodel"):
        read_caffemodel(bad)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        minicaffe.Net(fixtures_dir / "caffenet_small.prototxt", empty)


def test_wrong_shape_and_missing_layer(fixtures_dir, tmp_path):
    _, layers = read_caffemodel(fixtures_dir / "caffenet_small.caffemodel")
    rows = [(n, t, b) for n, (t, b) in layers.items()]
    wrong = [(n, t, [b[0][:, :-1], b[1]] if n == "fc7" else b) for n, t, b in rows]
    p = tmp_path / "wrong.caffemodel"
    write_caffemodel(p, wrong)
    with pytest.raises(WeightsError, match=r"layer 'fc7' blob 0 has shape \(64, 63\), expected \(64, 64\)"):
        minicaffe.Net(fixtures_dir / "caffenet_small.prototxt", p)
    p2 = tmp_path / "missing.caffemodel"
    write_caffemodel(p2, [r for r in rows if r[0] != "conv3"])
    with pytest.raises(WeightsError, match=r"no weights for layer 'conv3'.*\(48, 32, 3, 3\)"):
        minicaffe.Net(fixtures_dir / "caffenet_small.prototxt", p2)


def test_wrong_input(fixtures_dir):
    net = minicaffe.Net(fixtures_dir / "caffenet_small.prototxt", None)
    with pytest.raises(ModelError, match="has 4 channels but the net expects 3"):
        net.forward(np.zeros((1, 4, 227, 227), np.float32))
    with pytest.raises(ModelError, match="must be 4-D"):
        net.forward(np.zeros((3, 227, 227), np.float32))
    with pytest.raises(ModelError, match="does not fit the net: layer 'fc6' would need parameter 0 of shape"):
        net.forward(np.zeros((1, 3, 300, 300), np.float32))
    with pytest.raises(ModelError, match="smaller than"):
        net.forward(np.zeros((1, 3, 8, 8), np.float32))
    # the net still works after the refused shapes
    assert net.forward(np.zeros((1, 3, 227, 227), np.float32))["prob"].shape == (1, 10)


def test_bad_layer_parameters():
    base = 'input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8\n'
    for body, msg in [
        ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { kernel_size: 3 } }',
         "num_output"),
        ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
         'convolution_param { num_output: 4 kernel_size: 3 group: 2 } }',
         "not divisible by group"),
        ('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 4 } }', "odd"),
        ('layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { alpha: "x" } }', "invalid parameter"),
        ('layer { name: "p" type: "Pooling" bottom: "nothere" top: "p" pooling_param { kernel_size: 2 } }',
         "which no earlier layer"),
    ]:
        with pytest.raises(ModelError, match=msg):
            minicaffe.Net(base + body)
    with pytest.raises(PrototxtError):
        minicaffe.Net(base + "layer { name: ")


def test_cli_prints_one_line(fixtures_dir, tmp_path):
    data = (fixtures_dir / "caffenet_small.caffemodel").read_bytes()
    bad = tmp_path / "trunc.caffemodel"
    bad.write_bytes(data[:1000])
    r = subprocess.run([sys.executable, "-m", "minicaffe.convert", str(fixtures_dir / "caffenet_small.prototxt"),
                        str(bad), "-o", str(tmp_path / "o.h5")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "trunc.caffemodel" in r.stderr and r.stderr.startswith("minicaffe: error:")
    assert not (tmp_path / "o.h5").exists()
