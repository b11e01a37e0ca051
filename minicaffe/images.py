"""Decode one image file into an RGB uint8 array, or explain in one line why it cannot be used.

:func:`load_image` is the only place minicaffe opens image files. It uses Pillow, applies the
EXIF orientation tag, takes the first frame of animated or multi-page files (GIF, APNG, TIFF),
converts every Pillow mode to 8-bit RGB (16-bit and 32-bit integer modes are rescaled, not
clipped; alpha is dropped as Caffe's loaders did; CMYK goes through Pillow's conversion) and
refuses files that would be unsafe or meaningless to feed a network: zero-byte, truncated,
unrecognised formats, decompression bombs (more than ``max_pixels`` pixels, checked from the
header before any pixel is decoded) and images with a side shorter than ``min_size`` (1x1
tracking pixels in scraped collections; ``min_size=1`` accepts everything). Every refusal is an
:class:`~minicaffe.errors.ImageError` whose message is ``<path>: <reason>``. This module does not
resize, crop or normalise; :mod:`minicaffe.preprocess` does.
"""
from __future__ import annotations

import errno
import os
import warnings

import numpy as np

from .errors import ImageError

#: Pillow's own default limit (about 89.5 megapixels, a 1024x1024x24-bit bomb times 85)
DEFAULT_MAX_PIXELS = 89_478_485
#: images with a side shorter than this are refused by default (see the module docstring)
DEFAULT_MIN_SIZE = 8

#: modes whose conversion to 8-bit RGB is Pillow's own ``convert("RGB")``
_PIL_TO_RGB = ("RGBA", "RGBX", "RGBa", "LA", "La", "PA", "P", "L", "1", "CMYK", "YCbCr", "LAB", "HSV")
#: 16-bit integer modes Pillow reports for 16-bit PNG/TIFF grayscale
_MODES_16 = ("I;16", "I;16B", "I;16L", "I;16N")


def _fail(path, reason):
    from .cli import shown  # any bytes in a file name, shown on one line
    return ImageError(f"{shown(path)}: {reason}")


def _open_checked(path):
    """Filesystem checks that give better reasons than Pillow's messages."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise _fail(p, "no such file") from None
    except PermissionError:
        raise _fail(p, "permission denied (cannot stat)") from None
    except OSError as e:
        raise _fail(p, f"cannot stat: {e.strerror or e}") from None
    if os.path.isdir(p):
        raise _fail(p, "is a directory, not an image file")
    if st.st_size == 0:
        raise _fail(p, "empty file (0 bytes)")
    try:
        return open(p, "rb")
    except PermissionError:
        raise _fail(p, "permission denied (cannot read)") from None
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise _fail(p, "is a directory, not an image file") from None
        raise _fail(p, f"cannot open: {e.strerror or e}") from None


def to_rgb_array(im, path="<image>"):
    """PIL image of any mode -> (H, W, 3) uint8 RGB.

    16-bit integer modes (``I;16*``) map 0..65535 to 0..255 (divide by 257, round). Mode ``I``
    (32-bit int) is scaled the same way only when the file declares 16 bits per sample (TIFF
    tag 258); otherwise it, like mode ``F``, is clipped to 0..255. The range is never guessed
    from the pixel values. Alpha (RGBA, LA, PA, palette transparency) is dropped, not composited, as in
    Caffe's ``cv2.imread(IMREAD_COLOR)`` and pycaffe's ``load_image``.
    """
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8)
    if mode in _MODES_16 or (mode == "I" and _declared_16bit(im)):
        a = np.asarray(im).astype(np.float32)
        a = np.clip(a, 0, 65535)
        g = np.rint(a / 257.0).astype(np.uint8)  # 65535 / 257 == 255 exactly
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode in ("I", "F"):
        a = np.clip(np.asarray(im).astype(np.float32), 0, 255)
        g = np.rint(a).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode in _PIL_TO_RGB:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    try:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # Pillow has no conversion for some rare modes
        raise _fail(path, f"unsupported image mode {mode!r} ({type(e).__name__}: {e})") from None


def _declared_16bit(im):
    # PNG sets info["bits"]? Not reliably; TIFF sets tag 258 BitsPerSample.
    bits = getattr(im, "bits", None) or (im.info or {}).get("bits")
    tag = getattr(im, "tag_v2", None)
    if tag is not None and 258 in tag:
        v = tag[258]
        bits = v[0] if isinstance(v, tuple) else v
    return bits == 16


def load_image(path, max_pixels=DEFAULT_MAX_PIXELS, min_size=DEFAULT_MIN_SIZE):
    """path -> (H, W, 3) uint8 RGB after EXIF orientation (first frame of animations).

    Raises ImageError("<path>: <reason>") for every file that cannot be used; never returns a
    partial or placeholder image.
    """
    return to_rgb_array(_decode(path, max_pixels, min_size), os.fspath(path))


def load_image_pil(path, max_pixels=DEFAULT_MAX_PIXELS, min_size=DEFAULT_MIN_SIZE):
    """path -> PIL image in mode RGB with the same pixels as :func:`load_image`.

    For the decoders that resize next: an 8-bit RGB (or Pillow-convertible) file stays a Pillow
    image, skipping the two full-size copies a round trip through NumPy costs (about a third of
    the decode time of a typical JPEG); the modes :func:`to_rgb_array` rescales go through it.
    """
    from PIL import Image
    p = os.fspath(path)
    im = _decode(p, max_pixels, min_size)
    if im.mode == "RGB":
        return im
    if im.mode in _PIL_TO_RGB:
        return im.convert("RGB")
    return Image.fromarray(to_rgb_array(im, p), "RGB")


def _decode(path, max_pixels, min_size):
    """path -> decoded PIL image (any mode), EXIF-oriented; ImageError on every failure."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = os.fspath(path)
    f = _open_checked(p)
    with f, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        pil_limit = Image.MAX_IMAGE_PIXELS
        try:
            # Pillow's check would refuse in Image.open without naming the size; ours (below, after
            # the header is read and before any pixel is decoded) names both and the flag to change.
            Image.MAX_IMAGE_PIXELS = None
            im = Image.open(f)
        except UnidentifiedImageError:
            head = f"{os.path.getsize(p)} bytes"
            raise _fail(p, f"not a recognised image format ({head}; the extension does not make it an image)") from None
        except Image.DecompressionBombError as e:
            raise _fail(p, f"decompression bomb refused: {e}") from None
        except Exception as e:  # Pillow raises many types (SyntaxError, struct.error, ...) on corrupt headers
            raise _fail(p, f"corrupt image header ({type(e).__name__}: {e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit
        w, h = im.size
        if w * h > max_pixels:
            raise _fail(p, f"decompression bomb refused: {w}x{h} = {w * h} pixels > limit {max_pixels} "
                           "(raise --max-pixels if the image is genuine)")
        if min(w, h) < min_size:
            raise _fail(p, f"image too small: {w}x{h} px, a side is below the minimum of {min_size} px (--min-size)")
        fmt = im.format
        try:
            # Animated GIF/APNG/multi-page TIFF: Image.open leaves frame 0 selected; loading it
            # decodes that frame only. Documented: the first frame is the image.
            im.load()
            ImageOps.exif_transpose(im, in_place=True)   # in place: no copy when nothing turns
        except OSError as e:
            msg = str(e)
            if "truncated" in msg or "broken data stream" in msg or "premature end" in msg.lower():
                raise _fail(p, f"truncated image data ({fmt}: {msg})") from None
            raise _fail(p, f"cannot decode {fmt} data ({msg})") from None
        except Exception as e:
            raise _fail(p, f"cannot decode {fmt} data ({type(e).__name__}: {e})") from None
        return im
