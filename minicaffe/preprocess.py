"""Turn decoded images into network inputs exactly as a model's :class:`Preprocessing` says.

Two stages, so the expensive one can run in worker processes and the cheap one batched:

1. :func:`load_resized` (per image, in workers): decode with :func:`minicaffe.images.load_image_pil`
   (RGB uint8) and resize with Pillow (``resize=(H, W)`` warps to that size as Caffe/DeCAF did;
   an int resizes the short side keeping the aspect ratio) -> (H, W, 3) uint8 RGB. The resize
   runs on 8-bit data and rounds to 8 bits, like Caffe's own uint8 pipeline (``convert_imageset``
   + data layer); pycaffe's float ``skimage`` resize differs from it by the resampling filter.
   An image whose resized size would exceed ``MAX_RESIZED_PIXELS`` (an extreme aspect ratio under a
   short-side resize) is refused with an ImageError before any resizing.
2. :func:`normalize_batch` (per batch): float32 0..255 -> channel order (RGB->BGR for Caffe
   models) -> HWC->CHW -> subtract the mean image / channel means -> divide by std -> times
   ``input_scale`` -> crop: ``center`` (offset ``(H - crop) // 2``, as Caffe's TEST-phase data
   layer and pycaffe's Classifier) or ``oversample`` (Caffe's ``caffe.io.oversample`` order: top-
   left, top-right, bottom-left, bottom-right, center, then the same five mirrored left-right).
   The mean is subtracted from the full resized image before cropping and mirroring, as DeCAF did.
   ``normalize_batch_reference`` is that sequence in NumPy; ``normalize_batch_cpu`` is one Numba
   pass over the cropped pixels only (bit-identical; the cpu/cuda backends use it because the
   reference's full-image passes cost about as much per image as the JPEG decode).

:func:`preprocess_image` and :func:`oversample` run both stages for one image. Nothing here runs
a network or averages features (``minicaffe.extract`` averages the 10 crops' features).
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

import numpy as np

from .errors import ImageError, ModelError
from .images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, load_image_pil


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a network input. Applied in this order by ``minicaffe.preprocess``:

    decode -> RGB float in [0, 255] -> resize (``resize``: (H, W) warps to that size, as
    Caffe/DeCAF; an int resizes the short side keeping the aspect ratio) with ``interpolation``
    -> channel order (``"BGR"`` for Caffe models: RGB->BGR swap) -> subtract ``mean_image``
    (a (3, H, W) .npy in the model's channel order, at the resize size) or ``mean_values`` ->
    divide by ``std_values`` -> multiply by ``input_scale`` -> crop ``crop`` x ``crop`` (center,
    or Caffe's 10-crop oversample) -> (3, crop, crop) CHW float32.
    """
    resize: object = (256, 256)
    crop: int = 227
    channel_order: str = "BGR"
    mean_image: str | None = None
    mean_values: tuple | None = None
    std_values: tuple | None = None
    input_scale: float = 1.0
    interpolation: str = "bilinear"

    def describe(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


CROP_MODES = ("center", "oversample")
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


def check_resized(h, w, resize, what="<image>"):
    """-> (H, W) of an h x w image resized per ``resize``; ImageError if that exceeds MAX_RESIZED_PIXELS."""
    H, W = resized_shape(h, w, resize)
    if H * W > MAX_RESIZED_PIXELS:
        from .cli import shown
        raise ImageError(f"{shown(what)}: extreme aspect ratio: {w}x{h} px would be resized to "
                         f"{W}x{H} = {H * W} pixels "
                         f"(limit {MAX_RESIZED_PIXELS}); crop it to a less elongated shape first")
    return H, W


def resize_rgb(img, spec: Preprocessing, what="<array>"):
    """img: (h, w, 3) uint8 RGB -> (H, W, 3) uint8 RGB resized per ``spec.resize``."""
    from PIL import Image
    h, w = img.shape[:2]
    if check_resized(h, w, spec.resize, what) == (h, w):
        return np.ascontiguousarray(img)
    return resize_pil(Image.fromarray(img, "RGB"), spec, what)


#: who resizes RGB images bilinearly: "numba" (:mod:`minicaffe.resize`) or "pillow". Both give the
#: same pixels (Pillow 13's); "pillow" exists for processes that should not load Numba (extract's
#: decoders on short jobs, see ``DecodePool``) and is used only where the installed Pillow is 13+.
BILINEAR_RESIZER = "numba"
#: above this many pixels Pillow resizes even so: the kernels read Pillow's pixels in place only
#: where they lie in one 16 MB block (~4 MP, ``resize.pillow_packed_pixels``), larger images through a
#: copy, which would double a decoder's memory for a 50-megapixel photo (Pillow's resize copies no input)
NUMBA_RESIZE_MAX_PIXELS = 16_000_000
#: refuse an image whose resized size would exceed this many pixels (48 MiB as RGB uint8). Only a
#: short-side resize (``resize`` an int) can get there, from an extreme aspect ratio: an 8x20000
#: strip resized to a short side of 256 would be 256x640000; the net sees one crop of it anyway
MAX_RESIZED_PIXELS = 1 << 24


@functools.lru_cache(maxsize=1)
def _pillow_is_13():
    from PIL import __version__
    return int(__version__.split(".")[0]) >= 13


def resize_pil(im, spec: Preprocessing, what="<image>"):
    """im: PIL RGB image -> (H, W, 3) uint8 RGB resized per ``spec.resize``."""
    w, h = im.size                      # Pillow sizes are (width, height); numpy shapes (height, width)
    H, W = check_resized(h, w, spec.resize, what)
    if (H, W) != (h, w):
        numba = BILINEAR_RESIZER == "numba" and w * h <= NUMBA_RESIZE_MAX_PIXELS
        if spec.interpolation == "bilinear" and im.mode == "RGB" and sys.byteorder == "little" \
                and (numba or not _pillow_is_13()):
            from .resize import resize_pil_bilinear
            return resize_pil_bilinear(im, H, W)   # Pillow 13's pixels, ~2x faster (minicaffe.resize)
        im = im.resize((W, H), _pil_filter(spec.interpolation))
    return np.asarray(im, dtype=np.uint8)


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
        return resize_pil(load_image_pil(source, max_pixels=max_pixels, min_size=min_size), spec,
                          os.fspath(source))
    else:
        img = array_to_rgb(source)
        if min(img.shape[:2]) < min_size:
            raise ImageError(f"<array>: image too small: {img.shape[1]}x{img.shape[0]} px, "
                             f"a side is below min_size {min_size}")
    return resize_rgb(img, spec)


def worker_load(args):
    """Process-pool entry: (index, path, spec, max_pixels, min_size) -> (index, array | None, reason)."""
    i, path, spec, max_pixels, min_size = args
    try:
        return i, load_resized(path, spec, max_pixels, min_size), None
    except ImageError as e:
        from .cli import shown
        return i, None, str(e).removeprefix(f"{shown(path)}: ").removeprefix(f"{path}: ")
    except MemoryError:       # one image too large for the memory left: the others go on
        return i, None, "out of memory while decoding or resizing this image"


def worker_load_many(tasks):
    """Process-pool entry for a chunk: list of worker_load tuples -> list of their results."""
    return [worker_load(t) for t in tasks]


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


def _crop_offsets(H, W, c, crop):
    """-> int64 (K, 3) rows (y0, x0, mirror) of the K crops, in output order."""
    if crop not in CROP_MODES:
        raise ModelError(f"unknown crop mode {crop!r}; choose one of {', '.join(CROP_MODES)}")
    if H < c or W < c:
        raise ModelError(f"resized image {H}x{W} is smaller than the crop {c}")
    y0, x0 = (H - c) // 2, (W - c) // 2   # 256 -> 14, as Caffe: (256 - 227) // 2
    if crop == "center":
        return np.array([[y0, x0, 0]], np.int64)
    corners = [(0, 0), (0, W - c), (H - c, 0), (H - c, W - c), (y0, x0)]
    return np.array([(oy, ox, 0) for oy, ox in corners] + [(oy, ox, 1) for oy, ox in corners], np.int64)


def _stacked(images):
    if isinstance(images, np.ndarray):
        return images
    shapes = {tuple(np.shape(im)) for im in images}
    if len(shapes) != 1:
        raise ModelError(f"normalize_batch needs images of one size, got {sorted(shapes)} "
                         "(an int resize keeps aspect ratios: normalise those one at a time)")
    return np.stack(list(images))


def normalize_batch_reference(images, spec: Preprocessing, crop="center"):
    """Stage 2, plain NumPy. images: list of (H, W, 3) uint8 RGB, all the same size (or (N, H, W, 3)).

    Returns float32 (N, 3, c, c) for ``crop="center"`` or (N * 10, 3, c, c) for ``"oversample"``,
    image-major (the 10 crops of image 0 first), c = ``spec.crop``.
    """
    x = np.asarray(_stacked(images), np.float32)
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
    offsets = _crop_offsets(H, W, c, crop)
    out = np.empty((N, len(offsets), 3, c, c), np.float32)
    for k, (oy, ox, mirror) in enumerate(offsets):
        out[:, k] = x[:, :, oy:oy + c, ox:ox + c][..., ::-1] if mirror else x[:, :, oy:oy + c, ox:ox + c]
    return out.reshape(N * len(offsets), 3, c, c)


@functools.cache
def _normalize_kernel():
    # built on first use: decoder processes import this module and should not pay numba's import
    from numba import njit, prange

    @njit(parallel=True, cache=True, nogil=True)
    def kernel(imgs, src_channel, mean, std, scale, offsets, c, out):
        # imgs: (N, H, W, 3) uint8 NHWC; mean: (3, H, W) float32 in the model's channel order;
        # out: (N, K, 3, c, c) NCHW. The same float32 operations in the same order as the
        # reference (subtract, divide, multiply; identities where the spec has none), so the
        # result is bit-identical to it.
        N, K = out.shape[0], out.shape[1]
        for t in prange(N * K * 3):
            n, k, ch = t // (K * 3), (t // 3) % K, t % 3
            oy, ox, mirror = offsets[k, 0], offsets[k, 1], offsets[k, 2]
            sc, s, m = src_channel[ch], std[ch], scale
            for y in range(c):
                for x in range(c):
                    xx = ox + (c - 1 - x if mirror else x)   # mirror: flip the width axis after the mean
                    v = np.float32(imgs[n, oy + y, xx, sc]) - mean[ch, oy + y, xx]
                    out[n, k, ch, y, x] = (v / s) * m
    return kernel


def normalize_batch_cpu(images, spec: Preprocessing, crop="center"):
    """Stage 2 as one parallel Numba pass (same arguments and result as the reference).

    Reads only the cropped pixels and writes each output once, instead of the reference's
    float copy, channel flip, NCHW transpose, mean pass and crop copy of the whole image.
    """
    u8 = np.ascontiguousarray(_stacked(images), dtype=np.uint8)
    if u8.ndim != 4 or u8.shape[3] != 3:
        raise ModelError(f"normalize_batch needs (H, W, 3) images, got {u8.shape[1:]}")
    N, H, W, _ = u8.shape
    c = spec.crop
    offsets = _crop_offsets(H, W, c, crop)
    if spec.mean_image is not None:
        mean = mean_image(spec)
        if mean.shape != (3, H, W):
            raise ModelError(f"mean image {spec.mean_image} is {mean.shape[1]}x{mean.shape[2]}, images are {H}x{W}")
    else:
        vals = spec.mean_values if spec.mean_values is not None else (0.0, 0.0, 0.0)
        # subtracting a filled plane is the same float32 operation as the reference's broadcast
        mean = np.empty((3, H, W), np.float32)
        mean[:] = np.asarray(vals, np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std_values if spec.std_values is not None else (1.0, 1.0, 1.0), np.float32)
    # RGB -> BGR is the channel map 2, 1, 0 (Caffe models were trained on OpenCV's BGR)
    src = np.array([2, 1, 0] if spec.channel_order == "BGR" else [0, 1, 2], np.int64)
    out = np.empty((N, len(offsets), 3, c, c), np.float32)
    _normalize_kernel()(u8, src, mean, std, np.float32(spec.input_scale), offsets, c, out)
    return out.reshape(N * len(offsets), 3, c, c)


def normalize_batch(images, spec: Preprocessing, crop="center", backend="numpy"):
    """Stage 2: the NumPy reference, or the Numba pass for the ``cpu``/``cuda`` backends."""
    if backend == "numpy" or (isinstance(images, np.ndarray) and images.dtype != np.uint8):
        return normalize_batch_reference(images, spec, crop)
    return normalize_batch_cpu(images, spec, crop)


def preprocess_image(source, spec: Preprocessing, max_pixels=DEFAULT_MAX_PIXELS, min_size=DEFAULT_MIN_SIZE):
    """Path or (H, W, 3) RGB array -> (3, crop, crop) float32 center crop, ready for the net."""
    return normalize_batch([load_resized(source, spec, max_pixels, min_size)], spec, "center")[0]


def oversample(source, spec: Preprocessing, max_pixels=DEFAULT_MAX_PIXELS, min_size=DEFAULT_MIN_SIZE):
    """Path or array -> (10, 3, crop, crop) float32: Caffe's 4 corners + center, then mirrored."""
    return normalize_batch([load_resized(source, spec, max_pixels, min_size)], spec, "oversample")
