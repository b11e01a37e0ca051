"""minicaffe.resize: the Numba bilinear resize and its NumPy reference against Pillow, bit for bit.

Pillow 13's ``Image.resize((W, H), BILINEAR)`` on RGB images is the definition (the decoders of
``python -m minicaffe.extract`` used it until the Numba kernels replaced it), so every comparison
is exact: random sizes shrinking and growing, one-pixel sides, unchanged sides, portrait images
that Pillow 13 resizes vertical pass first, and real photos.
"""
import os

import numpy as np
import PIL
import pytest
from conftest import lazy_importorskip
from PIL import Image

from minicaffe.models import CAFFE_PREPROCESSING
from minicaffe.preprocess import load_resized
from minicaffe.resize import (
    bilinear_coeffs_reference,
    pillow_packed_pixels,
    pillow_vertical_first,
    resize_bilinear_cpu,
    resize_bilinear_reference,
    resize_pil_bilinear,
)

PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13
skdata = lazy_importorskip("skimage.data")


def pillow(a, H, W):
    return np.asarray(Image.fromarray(a).resize((W, H), Image.BILINEAR))   # Pillow sizes are (W, H)


def assert_same(ours, ref, what):
    assert ours.shape == ref.shape and ours.dtype == np.uint8, f"{what}: {ours.shape} {ours.dtype} vs {ref.shape}"
    d = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    assert d.max() == 0, (f"{what}: max abs err {d.max()} at {np.unravel_index(d.argmax(), d.shape)}, "
                          f"{int((d > 0).sum())} of {d.size} values differ")


def cases(n, seed):
    """(h, w, H, W) with shrinking, growing, equal and one-pixel sides; a fifth of them portrait."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 500, 2))
        H, W = (int(v) for v in rng.integers(1, 320, 2))
        if i % 4 == 0:
            H, W = 256, 256
        if i % 5 == 1:
            h, w = int(rng.integers(300, 700)), int(rng.integers(100, 300))   # portrait, to 256x256
            H, W = 256, 256
        if i % 9 == 2:
            H = h
        if i % 11 == 3:
            W = w
        if i % 13 == 4:
            h, H = 1, int(rng.integers(1, 5))
        out.append((h, w, H, W))
    return out


def image(h, w, seed):
    """Noise smoothed a little: both sharp edges and slow gradients, so roundings land anywhere."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if seed % 2:
        a = ((a.astype(np.uint16) + np.roll(a, 1, axis=1) + np.roll(a, 1, axis=0)) // 3).astype(np.uint8)
    return a


@pytest.mark.parametrize("case", cases(120, 0), ids=lambda c: "{}x{}-{}x{}".format(*c))
def test_cpu_equals_pillow(case):
    h, w, H, W = case
    if pillow_vertical_first(h, w, H, W) and not PILLOW_13:
        pytest.skip("Pillow < 13 runs the horizontal pass first; the kernels follow Pillow 13")
    a = image(h, w, sum(case))
    ref = pillow(a, H, W)
    assert_same(resize_bilinear_cpu(a, H, W), ref, f"resize_bilinear_cpu {case}")
    assert_same(resize_pil_bilinear(Image.fromarray(a), H, W), ref, f"resize_pil_bilinear {case}")


@pytest.mark.parametrize("case", cases(24, 1), ids=lambda c: "{}x{}-{}x{}".format(*c))
def test_reference_equals_cpu_and_pillow(case):
    h, w, H, W = case
    a = image(h, w, sum(case) + 1)
    ref = resize_bilinear_reference(a, H, W)
    assert_same(resize_bilinear_cpu(a, H, W), ref, f"cpu vs reference {case}")
    if PILLOW_13 or not pillow_vertical_first(h, w, H, W):
        assert_same(ref, pillow(a, H, W), f"reference vs Pillow {case}")
    # Pillow 10-12's order, for every case
    assert_same(resize_bilinear_cpu(a, H, W, vertical_first=False),
                resize_bilinear_reference(a, H, W, vertical_first=False), f"horizontal first {case}")


def test_pass_order_matters_for_portrait_photos():
    """A portrait photo to 256x256 goes vertical pass first under Pillow 13; the 8-bit intermediate
    makes that a different image, so the rule has to be followed, not approximated."""
    a = np.asarray(Image.open(os.path.join(skdata.data_dir, "chelsea.png")).convert("RGB")).transpose(1, 0, 2)
    a = np.ascontiguousarray(a)                      # 451x300: portrait
    assert pillow_vertical_first(451, 300, 256, 256)
    vfirst = resize_bilinear_cpu(a, 256, 256)
    hfirst = resize_bilinear_cpu(a, 256, 256, vertical_first=False)
    assert (vfirst != hfirst).sum() > 100, "the two orders should differ on a real photo"
    assert_same(hfirst, resize_bilinear_reference(a, 256, 256, vertical_first=False), "horizontal first")
    if PILLOW_13:
        assert_same(vfirst, pillow(a, 256, 256), "portrait chelsea vs Pillow 13")


@pytest.mark.parametrize("name", ["chelsea.png", "rocket.jpg", "coffee.png"])
def test_decoder_path_equals_pillow_on_photos(name):
    """What extract's decoders run (load_resized: decode, then the kernel) equals Pillow's resize."""
    path = os.path.join(skdata.data_dir, name)
    ref = np.asarray(Image.open(path).convert("RGB").resize((256, 256), Image.BILINEAR))
    assert_same(load_resized(path, CAFFE_PREPROCESSING), ref, name)


@pytest.mark.parametrize("w, h", [(566, 400), (7, 3), (1, 1), (3000, 2000)])
def test_pillow_pixels_read_in_place_equal_tobytes(w, h):
    """The kernels read Pillow's RGBX memory through its Arrow export (no copy) where the rows lie in
    one block, else through ``tobytes``; both give the same words. 3000x2000 (24 MB) spans Pillow's
    16 MB blocks: the copy. A real JPEG goes the in-place way (a regression to the copy fails here)."""
    im = Image.effect_noise((w, h), 64).convert("RGB")
    packed, keep = pillow_packed_pixels(im)
    ref = np.frombuffer(im.tobytes("raw", "RGBX"), np.uint32).reshape(h, w)
    assert packed.shape == (h, w) and np.array_equal(packed, ref), f"{w}x{h}: {int((packed != ref).sum())} words differ"
    if w * h * 4 > 16 << 20:
        assert keep is None, "a multi-block image should take the tobytes copy"
    jpeg = Image.open(os.path.join(skdata.data_dir, "rocket.jpg"))
    jpeg.load()
    packed, keep = pillow_packed_pixels(jpeg)
    if hasattr(jpeg, "__arrow_c_array__"):
        assert keep is not None, "Pillow >= 11.2: a decoded JPEG's pixels should be read in place"
    assert np.array_equal(packed, np.frombuffer(jpeg.tobytes("raw", "RGBX"), np.uint32).reshape(packed.shape))


def test_coefficients_match_pillows_rules():
    """Weights of each output sum to 1.0 in 22-bit fixed point up to rounding, the taps stay inside
    the input, and an identity resize is the identity."""
    for n_in, n_out in [(451, 256), (256, 451), (7, 3), (1, 5), (256, 256)]:
        bounds, kk = bilinear_coeffs_reference(n_in, n_out)
        assert (bounds[:, 0] >= 0).all() and (bounds.sum(1) <= n_in).all()
        sums = kk.sum(1)
        assert (np.abs(sums - (1 << 22)) <= kk.shape[1]).all(), (n_in, n_out, sums.min(), sums.max())
    a = image(9, 7, 3)
    assert_same(resize_bilinear_cpu(a, 9, 7), a, "identity")


def test_bad_arguments():
    with pytest.raises(ValueError, match="expected"):
        resize_bilinear_cpu(np.zeros((4, 4), np.uint8), 2, 2)


PROBE = '''
import sys
from minicaffe.extract import DecodePool


def probe():
    from minicaffe import preprocess
    r = sys.modules.get("minicaffe.resize")
    return preprocess.BILINEAR_RESIZER, bool(r is not None and r._hpass.signatures), "numba" in sys.modules


if __name__ == "__main__":
    pool = DecodePool(2, "normal", n_images=int(sys.argv[1]))
    print(pool.numba, *pool.ex.submit(probe).result())
    pool.close()
'''


@pytest.mark.parametrize("n_images, want", [(5000, "True numba True True"), (10, "False pillow False False")])
def test_decoders_get_numba_preloaded_only_for_long_jobs(tmp_path, n_images, want):
    """A long job's decoders start with the resize kernels already loaded (the fork server
    imported minicaffe.decoder_preload); a short job's decoders never import Numba and resize with
    Pillow, which gives the same pixels (the tests above)."""
    import subprocess
    import sys
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    r = subprocess.run([sys.executable, str(script), str(n_images)], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == want.split(), (r.stdout, r.stderr[-2000:])


def test_big_images_and_the_pillow_setting_resize_with_pillow_to_the_same_pixels(monkeypatch):
    """Above NUMBA_RESIZE_MAX_PIXELS (memory) and with BILINEAR_RESIZER = "pillow" (decoders of
    short jobs) Pillow resizes; the pixels are the same either way."""
    import minicaffe.preprocess as pp
    import minicaffe.resize as rz
    path = os.path.join(skdata.data_dir, "chelsea.png")
    calls = []
    real = rz.resize_pil_bilinear
    monkeypatch.setattr(rz, "resize_pil_bilinear", lambda *a: calls.append(1) or real(*a))
    numba = load_resized(path, CAFFE_PREPROCESSING)
    assert calls == [1]
    monkeypatch.setattr(pp, "NUMBA_RESIZE_MAX_PIXELS", 1000)
    big = load_resized(path, CAFFE_PREPROCESSING)
    monkeypatch.setattr(pp, "NUMBA_RESIZE_MAX_PIXELS", 10**9)
    monkeypatch.setattr(pp, "BILINEAR_RESIZER", "pillow")
    short = load_resized(path, CAFFE_PREPROCESSING)
    assert calls == ([1] if PILLOW_13 else [1, 1, 1])
    assert_same(big, numba, "Pillow above the pixel limit")
    assert_same(short, numba, "Pillow for short jobs")
