"""minicaffe.preprocess against straightforward hand computations on real photos.

The center-crop path is recomputed by hand (Pillow decode + bilinear resize, then NumPy:
RGB->BGR, HWC->CHW, minus the ILSVRC mean image, crop [14:241]); Pillow's bilinear resize itself
is checked against a hand-written triangle filter; oversample's crop order and mirroring
against Caffe's ``caffe.io.oversample`` as written in its source (offsets spelled out here).
"""
import dataclasses
import os

import numpy as np
import pytest
from conftest import MODELS, assert_close, lazy_importorskip
from PIL import Image

from minicaffe.errors import ImageError, ModelError
from minicaffe.models import CAFFE_PREPROCESSING, Preprocessing
from minicaffe.preprocess import (
    check_spec,
    load_resized,
    normalize_batch,
    normalize_batch_cpu,
    normalize_batch_reference,
    oversample,
    preprocess_image,
    resized_shape,
    with_channel_means,
)

skdata = lazy_importorskip("skimage.data")
MEAN = np.load(MODELS / "ilsvrc_2012_mean.npy").astype(np.float64)


def photo(name="chelsea.png"):
    return os.path.join(skdata.data_dir, name)


def hand_caffe_center(path):
    """DeCAF/Caffe center crop written out step by step."""
    rgb = Image.open(path).convert("RGB").resize((256, 256), Image.BILINEAR)  # Pillow size is (W, H)
    x = np.asarray(rgb, np.float64)                  # (256, 256, 3) RGB, 0..255
    x = x[:, :, [2, 1, 0]]                           # RGB -> BGR
    x = x.transpose(2, 0, 1)                         # HWC -> CHW
    x = x - MEAN                                     # ILSVRC mean image, BGR, 256x256
    off = (256 - 227) // 2                           # = 14, Caffe's TEST-phase offset
    return x[:, off:off + 227, off:off + 227]


@pytest.mark.parametrize("name", ["chelsea.png", "rocket.jpg"])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_center_crop_equals_hand_computation(name, backend):
    """Both stage-2 implementations (the NumPy reference and the Numba pass extract uses on the
    cpu backend) against the hand computation."""
    ours = normalize_batch([load_resized(photo(name), CAFFE_PREPROCESSING)], CAFFE_PREPROCESSING,
                           "center", backend)[0]
    assert ours.shape == (3, 227, 227) and ours.dtype == np.float32
    ref = hand_caffe_center(photo(name))
    diff = np.abs(ours - ref)
    assert diff.max() <= 1e-4, f"max abs err {diff.max():.3g} at {np.unravel_index(diff.argmax(), diff.shape)}"


def triangle_resize_1d(a, out_size, axis):
    """Hand bilinear (triangle filter, widened by the scale when shrinking = antialiased), pixel centers aligned."""
    n = a.shape[axis]
    scale = n / out_size
    support = max(scale, 1.0)
    out = []
    for i in range(out_size):
        center = (i + 0.5) * scale
        j = np.arange(n)
        w = np.maximum(0.0, 1.0 - np.abs((j + 0.5 - center) / support))
        w /= w.sum()
        out.append(np.tensordot(w, a, axes=([0], [axis])))
    return np.moveaxis(np.stack(out), 0, axis)


def test_pillow_bilinear_is_a_triangle_filter():
    ours = load_resized(photo(), CAFFE_PREPROCESSING).astype(np.float64)  # 300x451 -> 256x256 (warp)
    src = np.asarray(Image.open(photo()).convert("RGB")).astype(np.float64)
    hand = triangle_resize_1d(triangle_resize_1d(src, 256, 1), 256, 0)
    diff = np.abs(ours - hand)
    # Pillow resamples in 8-bit fixed point with an 8-bit intermediate: allow 1.5 gray levels
    # (OpenCV INTER_LINEAR, no antialiasing, differs from the hand filter by up to 31, mean 1.06)
    assert diff.max() <= 1.5 and diff.mean() < 0.35, f"max {diff.max():.3f} mean {diff.mean():.3f}"


def test_oversample_order_and_mirrors():
    spec = CAFFE_PREPROCESSING
    crops = oversample(photo(), spec)
    assert crops.shape == (10, 3, 227, 227)
    rgb = np.asarray(Image.open(photo()).convert("RGB").resize((256, 256), Image.BILINEAR), np.float64)
    full = rgb[:, :, [2, 1, 0]].transpose(2, 0, 1) - MEAN
    # caffe.io.oversample: (0,0), (0,W-c), (H-c,0), (H-c,W-c), center; then the same mirrored
    offsets = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)]
    for k, (y, x) in enumerate(offsets):
        want = full[:, y:y + 227, x:x + 227]
        assert_close(crops[k], want, 1e-6, f"crop {k}")
        assert_close(crops[k + 5], want[:, :, ::-1], 1e-6, f"mirrored crop {k + 5}")
    assert_close(crops[4], preprocess_image(photo(), spec), 0, "oversample center == center crop")


def test_channel_means_match_published_values():
    spec = with_channel_means(CAFFE_PREPROCESSING)
    assert spec.mean_image is None
    # shared/README.md: channel means 104.0/116.7/122.7 (BGR)
    assert np.allclose(spec.mean_values, (104.0, 116.7, 122.7), atol=0.05), spec.mean_values
    ours = preprocess_image(photo(), spec)
    rgb = np.asarray(Image.open(photo()).convert("RGB").resize((256, 256), Image.BILINEAR), np.float64)
    ref = rgb[14:241, 14:241, ::-1].transpose(2, 0, 1) - np.asarray(spec.mean_values).reshape(3, 1, 1)
    assert_close(ours, ref, 1e-6, "channel-mean center crop")


def test_short_side_resize_rgb_std_spec():
    """An EfficientNet-style spec: short side 256 bicubic, center 224, RGB, (x - 127) / 128."""
    spec = Preprocessing(resize=256, crop=224, channel_order="RGB", mean_values=(127.0,) * 3,
                         std_values=(128.0,) * 3, interpolation="bicubic")
    src = Image.open(photo()).convert("RGB")                      # 451 x 300 (W x H)
    assert resized_shape(300, 451, 256) == (256, 385)
    r = np.asarray(src.resize((385, 256), Image.BICUBIC), np.float64)
    y0, x0 = (256 - 224) // 2, (385 - 224) // 2
    ref = ((r - 127.0) / 128.0)[y0:y0 + 224, x0:x0 + 224].transpose(2, 0, 1)
    assert_close(preprocess_image(photo(), spec), ref, 1e-6, "short-side spec")


def test_array_input_equals_file_input():
    arr = np.asarray(Image.open(photo()).convert("RGB"))
    assert_close(preprocess_image(arr, CAFFE_PREPROCESSING), preprocess_image(photo(), CAFFE_PREPROCESSING), 0,
                 "array vs PNG file")
    assert_close(preprocess_image(arr.astype(np.float32), CAFFE_PREPROCESSING),
                 preprocess_image(arr, CAFFE_PREPROCESSING), 0, "float 0..255 array")
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        preprocess_image(arr / 255.0, CAFFE_PREPROCESSING)
    gray = arr[..., 0]
    g = preprocess_image(gray, CAFFE_PREPROCESSING)
    assert g.shape == (3, 227, 227)


def test_batch_equals_single():
    imgs = [load_resized(photo(n), CAFFE_PREPROCESSING) for n in ("chelsea.png", "coffee.png", "rocket.jpg")]
    batch = normalize_batch(imgs, CAFFE_PREPROCESSING, "center")
    for k, n in enumerate(("chelsea.png", "coffee.png", "rocket.jpg")):
        assert_close(batch[k], preprocess_image(photo(n), CAFFE_PREPROCESSING), 0, n)


NORMALIZE_SPECS = {
    "caffe mean image BGR": CAFFE_PREPROCESSING,
    "channel means": with_channel_means(CAFFE_PREPROCESSING),
    "RGB std scale, non-square": Preprocessing(resize=256, crop=224, channel_order="RGB",
                                               mean_values=(123.7, 116.3, 103.5), std_values=(58.4, 57.1, 57.4),
                                               input_scale=0.7),
    "no mean": Preprocessing(resize=(40, 52), crop=31, channel_order="BGR"),
}


@pytest.mark.parametrize("crop", ["center", "oversample"])
@pytest.mark.parametrize("spec_name", sorted(NORMALIZE_SPECS))
def test_normalize_cpu_is_bit_identical_to_reference(spec_name, crop):
    spec = NORMALIZE_SPECS[spec_name]
    imgs = [load_resized(photo(n), spec) for n in ("chelsea.png", "coffee.png", "rocket.jpg")]
    if len({im.shape for im in imgs}) > 1:     # a short-side resize keeps aspect ratios: one size per batch
        imgs = [np.ascontiguousarray(np.resize(im, imgs[0].shape)) for im in imgs]
    ref = normalize_batch_reference(imgs, spec, crop)
    got = normalize_batch_cpu(imgs, spec, crop)
    assert got.shape == ref.shape == (len(imgs) * (10 if crop == "oversample" else 1), 3, spec.crop, spec.crop)
    assert_close(got, ref, 0, f"{spec_name} {crop}")
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), "not bit-identical"


def test_spec_checks():
    with pytest.raises(ModelError, match="net's input is 224x224"):
        check_spec(CAFFE_PREPROCESSING, (224, 224))
    with pytest.raises(ModelError, match="mean image"):
        check_spec(dataclasses.replace(CAFFE_PREPROCESSING, resize=(240, 240)))
    with pytest.raises(ModelError, match="interpolation"):
        check_spec(dataclasses.replace(CAFFE_PREPROCESSING, interpolation="cubic-ish"))
    check_spec(CAFFE_PREPROCESSING, (227, 227))
