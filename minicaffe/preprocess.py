"""Turn decoded images into network inputs exactly as a model's :class:`Preprocessing` says.

Two stages, so the expensive one can run in worker processes and the cheap one batched:

1. :func:`load_resized` (per image, in workers): decode with :func:`minicaffe.images.load_image`
   (RGB uint8) and resize with Pillow (``resize=(H, W)`` warps to that size as Caffe/DeCAF did;
   an int resizes the short side keeping the aspect ratio) -> (H, W, 3) uint8 RGB. The resize
   runs on 8-bit data and rounds to 8 bits, like Caffe's own uint8 pipeline (``convert_imageset``
   + data layer); pycaffe's float ``skimage`` resize differs from it by the resampling filter.
2. :func:`normalize_batch` (per batch): float32 0..255 -> channel order (RGB->BGR for Caffe
   models) -> HWC->CHW -> subtract the mean image / channel means -> divide by std -> times
   ``input_scale`` -> crop: ``center`` (offset ``(H - crop) // 2``, as Caffe's TEST-phase data
   layer and pycaffe's Classifier) or ``oversample`` (Caffe's ``caffe.io.oversample`` order: top-
   left, top-right, bottom-left, bottom-right, center, then the same five mirrored left-right).
   The mean is subtracted from the full resized image before cropping and mirroring, as DeCAF did.

:func:`preprocess_image` and :func:`oversample` run both stages for one image. Nothing here runs
a network or averages features (``minicaffe.extract`` averages the 10 crops' features).
"""
from __future__ import annotations

import functools
import os

import numpy as np

from .errors import ImageError, ModelError
from .images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, load_image
from .models import Preprocessing

CROP_MODES = ("center", "oversample")
#: test hook: a worker decoding a path containing this string kills itself (see tests/test_extract.py)
_CRASH_ENV = "MINICAFFE_TEST_CRASH_ON"
N_OVERSAMPLE = 10


def _pil_filter(name):
    from PIL import Image
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
               "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}
    if name not in filters:
        raise ModelError(f"unknown interpolation {name!r}; choose one of {', '.join(filters)}")
    return filters[name]


def resized_shape(h, w, resize):
    """Output (H, W) for an input of h x w: a pair warps, an int sets the short side."""
    if isinstance(resize, int):
        if h <= w:
            return resize, max(1, int(round(w * resize / h)))
        return max(1, int(round(h * resize / w))), resize
    rh, rw = resize
    return int(rh), int(rw)


def resize_rgb(img, spec: Preprocessing):
    """img: (h, w, 3) uint8 RGB -> (H, W, 3) uint8 RGB resized per ``spec.resize``."""
    from PIL import Image
    h, w = img.shape[:2]
    H, W = resized_shape(h, w, spec.resize)
    if (H, W) == (h, w):
        return np.ascontiguousarray(img)
    # Pillow sizes are (width, height); numpy shapes are (height, width)
    out = Image.fromarray(img, "RGB").resize((W, H), _pil_filter(spec.interpolation))
    return np.asarray(out, dtype=np.uint8)


def array_to_rgb(x, what="<array>"):
    """An in-memory image -> (H, W, 3) uint8 RGB.

    x: (H, W, 3) RGB or (H, W) gray; uint8, or float in 0..255 (rounded and clipped to uint8).
    A float image whose values all lie in [0, 1] is refused rather than silently scaled.
    """
    a = np.asarray(x)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ImageError(f"{what}: expected an (H, W, 3) RGB or (H, W) gray array, got shape {a.shape}")
    a = a[:, :, :3]  # RGBA arrays: drop alpha, as for files
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind not in "fiu":
        raise ImageError(f"{what}: unsupported array dtype {a.dtype}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ImageError(f"{what}: array contains NaN or infinity")
        if a.size and a.max() <= 1.0 and a.max() > 0:
            raise ImageError(f"{what}: float image with values in [0, 1]; minicaffe expects 0..255 RGB "
                             "(multiply by 255)")
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def load_resized(source, spec: Preprocessing, max_pixels=DEFAULT_MAX_PIXELS, min_size=DEFAULT_MIN_SIZE):
    """Path or array -> (H, W, 3) uint8 RGB at the model's resize size (stage 1)."""
    if isinstance(source, (str, os.PathLike)):
        img = load_image(source, max_pixels=max_pixels, min_size=min_size)
    else:
        img = array_to_rgb(source)
        if min(img.shape[:2]) < min_size:
            raise ImageError(f"<array>: image too small: {img.shape[1]}x{img.shape[0]} px, "
                             f"a side is below min_size {min_size}")
    return resize_rgb(img, spec)


def worker_load(args):
    """Process-pool entry: (index, path, spec, max_pixels, min_size) -> (index, array | None, reason)."""
    i, path, spec, max_pixels, min_size = args
    crash_on = os.environ.get(_CRASH_ENV)
    if crash_on and crash_on in os.fspath(path):
        import signal
        os.kill(os.getpid(), signal.SIGKILL)   # test hook: a decoder killed like the OOM killer would
    try:
        return i, load_resized(path, spec, max_pixels, min_size), None
    except ImageError as e:
        msg = str(e)
        prefix = f"{path}: "
        return i, None, msg.removeprefix(prefix)


@functools.lru_cache(maxsize=8)
def _load_mean(path):
    try:
        m = np.load(path).astype(np.float32)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load the mean image: {e}") from None
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 3 or m.shape[0] != 3:
        raise ModelError(f"{path}: mean image must be (3, H, W), got {m.shape}")
    m.setflags(write=False)
    return m


def mean_image(spec: Preprocessing):
    """(3, H, W) float32 mean in the model's channel order, or None."""
    return None if spec.mean_image is None else _load_mean(os.fspath(spec.mean_image))


def with_channel_means(spec: Preprocessing) -> Preprocessing:
    """The same preprocessing with the mean image replaced by its per-channel means."""
    import dataclasses
    if spec.mean_image is None:
        raise ModelError("this preprocessing has no mean image to reduce to channel means")
    m = mean_image(spec)
    return dataclasses.replace(spec, mean_image=None,
                               mean_values=tuple(float(v) for v in m.reshape(3, -1).mean(1)))


def check_spec(spec: Preprocessing, input_hw=None):
    """Raise ModelError if the preprocessing cannot produce what the net takes."""
    if spec.channel_order not in ("RGB", "BGR"):
        raise ModelError(f"channel_order must be 'RGB' or 'BGR', got {spec.channel_order!r}")
    _pil_filter(spec.interpolation)
    if spec.mean_image is not None:
        m = mean_image(spec)
        if isinstance(spec.resize, int) or tuple(m.shape[1:]) != tuple(spec.resize):
            raise ModelError(f"mean image {spec.mean_image} is {m.shape[1]}x{m.shape[2]} but images are resized "
                             f"to {spec.resize}; they must match (or use per-channel means)")
    if not isinstance(spec.resize, int) and min(spec.resize) < spec.crop:
        raise ModelError(f"crop {spec.crop} is larger than the resize size {spec.resize}")
    if isinstance(spec.resize, int) and spec.resize < spec.crop:
        raise ModelError(f"crop {spec.crop} is larger than the short side {spec.resize}")
    if input_hw is not None and tuple(input_hw) != (spec.crop, spec.crop):
        raise ModelError(f"preprocessing crops {spec.crop}x{spec.crop} but the net's input is "
                         f"{input_hw[0]}x{input_hw[1]} (set the crop size to match, e.g. --crop-size {input_hw[0]})")


def normalize_batch(images, spec: Preprocessing, crop="center"):
    """Stage 2. images: list of (H, W, 3) uint8 RGB, all the same size (or (N, H, W, 3)).

    Returns float32 (N, 3, c, c) for ``crop="center"`` or (N * 10, 3, c, c) for ``"oversample"``,
    image-major (the 10 crops of image 0 first), c = ``spec.crop``.
    """
    if crop not in CROP_MODES:
        raise ModelError(f"unknown crop mode {crop!r}; choose one of {', '.join(CROP_MODES)}")
    shapes = {tuple(np.shape(im)) for im in images}
    if len(shapes) != 1:
        raise ModelError(f"normalize_batch needs images of one size, got {sorted(shapes)} "
                         "(an int resize keeps aspect ratios: normalise those one at a time)")
    x = np.asarray(np.stack(list(images)) if not isinstance(images, np.ndarray) else images, np.float32)
    if spec.channel_order == "BGR":
        x = x[..., ::-1]                      # RGB -> BGR (Caffe models were trained on OpenCV's BGR)
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NHWC -> NCHW
    if spec.mean_image is not None:
        x -= mean_image(spec)[None]           # (3, H, W) already in the model's channel order
    elif spec.mean_values is not None:
        x -= np.asarray(spec.mean_values, np.float32).reshape(1, 3, 1, 1)
    if spec.std_values is not None:
        x /= np.asarray(spec.std_values, np.float32).reshape(1, 3, 1, 1)
    if spec.input_scale != 1.0:
        x *= np.float32(spec.input_scale)
    N, _, H, W = x.shape
    c = spec.crop
    if H < c or W < c:
        raise ModelError(f"resized image {H}x{W} is smaller than the crop {c}")
    if crop == "center":
        y0, x0 = (H - c) // 2, (W - c) // 2   # 256 -> 14, as Caffe: (256 - 227) // 2
        return np.ascontiguousarray(x[:, :, y0:y0 + c, x0:x0 + c])
    y0, x0 = (H - c) // 2, (W - c) // 2
    offsets = [(0, 0), (0, W - c), (H - c, 0), (H - c, W - c), (y0, x0)]
    out = np.empty((N, N_OVERSAMPLE, 3, c, c), np.float32)
    for k, (oy, ox) in enumerate(offsets):
        out[:, k] = x[:, :, oy:oy + c, ox:ox + c]
        out[:, k + 5] = x[:, :, oy:oy + c, ox:ox + c][..., ::-1]  # mirror: flip the width axis
    return out.reshape(N * N_OVERSAMPLE, 3, c, c)


def preprocess_image(source, spec: Preprocessing, max_pixels=DEFAULT_MAX_PIXELS, min_size=DEFAULT_MIN_SIZE):
    """Path or (H, W, 3) RGB array -> (3, crop, crop) float32 center crop, ready for the net."""
    return normalize_batch([load_resized(source, spec, max_pixels, min_size)], spec, "center")[0]


def oversample(source, spec: Preprocessing, max_pixels=DEFAULT_MAX_PIXELS, min_size=DEFAULT_MIN_SIZE):
    """Path or array -> (10, 3, crop, crop) float32: Caffe's 4 corners + center, then mirrored."""
    return normalize_batch([load_resized(source, spec, max_pixels, min_size)], spec, "oversample")
