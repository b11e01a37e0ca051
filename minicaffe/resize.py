"""Bilinear resize of RGB images, bit-for-bit equal to Pillow 13's ``Image.resize(size, BILINEAR)``.

Pillow's resampling (``libImaging/Resample.c``) is a two-pass, fixed-point, antialiased filter:
per output column (then row) it weights the input pixels under a triangle stretched by the
downscale factor, rounds the weights to 22-bit integers, accumulates ``pixel * weight`` in 32-bit
integers and rounds each pass back to uint8. Pillow runs these loops one pixel at a time; they
were 40% of a decoder's CPU per JPEG in ``python -m minicaffe.extract`` (resize 1.8-1.9 ms of
4.4 ms for a ~400x566 photo). This module does the same integer arithmetic in the same order,
so the output is identical, but in loops the compiler vectorises: pixels travel packed as one
uint32 (``R | G << 8 | B << 16``, Pillow's own RGBX memory layout read as little-endian words),
the horizontal pass first copies each output's taps into contiguous rows and then multiplies
whole rows, and the vertical pass works on whole rows. :func:`resize_bilinear_reference` is the
plain NumPy statement of the algorithm; :func:`resize_bilinear_cpu` the Numba kernels; the tests
compare both with Pillow. Pillow 13 runs the vertical pass first when the height shrinks more
than twice as much as the width (portrait photos to 256x256 do); Pillow 10-12 always ran the
horizontal pass first, so their output differs for those images. Both functions follow Pillow
13 whatever Pillow is installed (``vertical_first=`` chooses), so features do not depend on it.
"""
from __future__ import annotations

import ctypes
import sys

import numpy as np
from numba import njit

#: Pillow's fixed-point weight precision (``32 - 8 - 2``): weights are ints of 22 fraction bits
PRECISION_BITS = 22
_HALF = 1 << (PRECISION_BITS - 1)
#: the packed-pixel kernels read RGBX bytes as native uint32 words; R is the low byte only on
#: little-endian machines (everything Numba targets today); elsewhere callers use Pillow itself
PACKED_LITTLE_ENDIAN = sys.byteorder == "little"


def pillow_vertical_first(h, w, H, W):
    """Pillow 13's order rule: the vertical pass goes first when the height shrinks more than
    twice as much (in pixels) as the width."""
    return (h - H) > 0 and (h - H) > (w - W) * 2


# ---------------------------------------------------------------------------------- reference
def bilinear_coeffs_reference(in_size, out_size):
    """in_size, out_size -> (bounds (out_size, 2) int32 [first tap, n taps], weights (out_size, ksize) int32).

    Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the bilinear (triangle)
    filter with the box (0, in_size), in Python floats (IEEE doubles, the same operations in the
    same order as the C code, so the same roundings)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    inv = 1.0 / filterscale
    bounds = np.zeros((out_size, 2), np.int32)
    kk = np.zeros((out_size, ksize), np.int32)
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)          # int() truncates toward zero, as C's cast
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * inv)) for x in range(xmax)]
        ww = 0.0
        for v in w:
            ww += v
        if ww != 0.0:
            w = [v / ww for v in w]
        for x, v in enumerate(w):
            kk[xx, x] = int(-0.5 + v * (1 << PRECISION_BITS)) if v < 0 else int(0.5 + v * (1 << PRECISION_BITS))
        bounds[xx] = xmin, xmax
    return bounds, kk


def _pass_reference(a, bounds, kk, axis):
    """a: (h, w, 3) uint8; resample along ``axis`` (0 rows, 1 columns) with Pillow's integer sums."""
    a = np.moveaxis(a.astype(np.int64), axis, 0)
    out = np.empty((len(bounds),) + a.shape[1:], np.uint8)
    for o, ((lo, n), k) in enumerate(zip(bounds, kk)):
        acc = _HALF + np.tensordot(k[:n].astype(np.int64), a[lo:lo + n], axes=(0, 0))
        out[o] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return np.moveaxis(out, 0, axis)


def resize_bilinear_reference(img, H, W, vertical_first=None):
    """img: (h, w, 3) uint8 RGB -> (H, W, 3) uint8, as Pillow 13's ``resize((W, H), BILINEAR)``.

    ``vertical_first``: None follows Pillow 13 (:func:`pillow_vertical_first`); False is
    Pillow 10-12 (horizontal pass always first)."""
    img = np.asarray(img, np.uint8)
    h, w = img.shape[:2]
    if vertical_first is None:
        vertical_first = pillow_vertical_first(h, w, H, W)
    bv, kv = bilinear_coeffs_reference(h, H)
    bh, kh = bilinear_coeffs_reference(w, W)
    if vertical_first:
        a = _pass_reference(img, bv, kv, 0) if H != h else img
        return _pass_reference(a, bh, kh, 1) if W != w else np.ascontiguousarray(a)
    if W != w:
        # Pillow resamples only the rows the vertical pass will read
        y0, y1 = int(bv[0, 0]), int(bv[-1, 0] + bv[-1, 1])
        a = _pass_reference(img[y0:y1], bh, kh, 1)
        bv = bv.copy()
        bv[:, 0] -= y0
    else:
        a = img
    return _pass_reference(a, bv, kv, 0) if H != h else np.ascontiguousarray(a)


# ---------------------------------------------------------------------------------- Numba
PB = PRECISION_BITS


@njit(cache=True, nogil=True)
def _coeffs(in_size, out_size):
    # same double arithmetic as bilinear_coeffs_reference (no fastmath: no reassociation, no FMA)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    inv = 1.0 / filterscale
    bounds = np.zeros((out_size, 2), np.int32)
    kk = np.zeros((out_size, ksize), np.int32)
    w = np.empty(ksize, np.float64)
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = int(center - support + 0.5)
        xmin = max(xmin, 0)
        xmax = int(center + support + 0.5)
        xmax = min(xmax, in_size)
        xmax -= xmin
        ww = 0.0
        for x in range(xmax):
            t = (x + xmin - center + 0.5) * inv
            if t < 0.0:
                t = -t
            v = 1.0 - t if t < 1.0 else 0.0
            w[x] = v
            ww += v
        for x in range(xmax):
            v = w[x] / ww if ww != 0.0 else w[x]
            kk[xx, x] = int(-0.5 + v * (1 << PB)) if v < 0 else int(0.5 + v * (1 << PB))
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    return bounds, kk


@njit(cache=True, nogil=True)
def _tap_tables(bounds, kk, in_size):
    # (taps, out) source columns and weights, every output padded to the longest tap run
    # with zero weights (on a clamped, valid column): the sums are unchanged, the rows regular
    n_out = kk.shape[0]
    kmax = 1
    for xx in range(n_out):
        kmax = max(kmax, bounds[xx, 1])
    idx = np.empty((kmax, n_out), np.int32)
    coef = np.zeros((kmax, n_out), np.int32)
    for xx in range(n_out):
        for t in range(kmax):
            idx[t, xx] = min(bounds[xx, 0] + t, in_size - 1)
            if t < bounds[xx, 1]:
                coef[t, xx] = kk[xx, t]
    return idx, coef


@njit(cache=True, nogil=True, inline="always")
def _clip8(v):
    v >>= PB
    return 0 if v < 0 else min(v, 255)


@njit(cache=True, nogil=True)
def _hpass(src, y0, idx, coef, out):
    # src: (h, w) uint32 packed; out: (n, W) uint32 packed <- rows y0..y0+n of src
    kmax, n_out = idx.shape
    taps = np.empty((kmax, n_out), np.uint32)
    a0 = np.empty(n_out, np.int32)
    a1 = np.empty(n_out, np.int32)
    a2 = np.empty(n_out, np.int32)
    for yy in range(out.shape[0]):
        row = src[y0 + yy]
        for t in range(kmax):           # the gather, done once per pixel and tap (scalar)
            it = idx[t]
            tt = taps[t]
            for xx in range(n_out):
                tt[xx] = row[it[xx]]
        for xx in range(n_out):
            a0[xx] = _HALF
            a1[xx] = _HALF
            a2[xx] = _HALF
        for t in range(kmax):           # the arithmetic, on contiguous rows (vectorised)
            tt = taps[t]
            ct = coef[t]
            for xx in range(n_out):
                p = tt[xx]
                k = ct[xx]
                a0[xx] += np.int32(p & 255) * k
                a1[xx] += np.int32((p >> 8) & 255) * k
                a2[xx] += np.int32((p >> 16) & 255) * k
        o = out[yy]
        for xx in range(n_out):
            o[xx] = np.uint32(_clip8(a0[xx])) | (np.uint32(_clip8(a1[xx])) << 8) | (np.uint32(_clip8(a2[xx])) << 16)


@njit(cache=True, nogil=True)
def _vpass(src, bounds, kk, out, rgb):
    # src: (h, n) uint32 packed; out: (H, n) uint32 packed or, for the last pass, (H, n, 3) uint8
    n = src.shape[1]
    a0 = np.empty(n, np.int32)
    a1 = np.empty(n, np.int32)
    a2 = np.empty(n, np.int32)
    o32 = out.reshape(out.shape[0], -1)
    for yy in range(out.shape[0]):
        lo = bounds[yy, 0]
        for j in range(n):
            a0[j] = _HALF
            a1[j] = _HALF
            a2[j] = _HALF
        for y in range(bounds[yy, 1]):
            k = kk[yy, y]
            r = src[lo + y]
            for j in range(n):
                p = r[j]
                a0[j] += np.int32(p & 255) * k
                a1[j] += np.int32((p >> 8) & 255) * k
                a2[j] += np.int32((p >> 16) & 255) * k
        o = o32[yy]
        if rgb:
            for j in range(n):
                o[3 * j] = _clip8(a0[j])
                o[3 * j + 1] = _clip8(a1[j])
                o[3 * j + 2] = _clip8(a2[j])
        else:
            for j in range(n):
                o[j] = np.uint32(_clip8(a0[j])) | (np.uint32(_clip8(a1[j])) << 8) | (np.uint32(_clip8(a2[j])) << 16)


@njit(cache=True, nogil=True)
def _pack(img, out):
    # (h, w, 3) uint8 RGB -> (h, w) uint32 R | G << 8 | B << 16
    for y in range(img.shape[0]):
        for x in range(img.shape[1]):
            out[y, x] = np.uint32(img[y, x, 0]) | (np.uint32(img[y, x, 1]) << 8) | (np.uint32(img[y, x, 2]) << 16)


@njit(cache=True, nogil=True)
def _unpack(src, out):
    # (h, w) uint32 R | G << 8 | B << 16 -> (h, w, 3) uint8 RGB
    for y in range(src.shape[0]):
        for x in range(src.shape[1]):
            p = src[y, x]
            out[y, x, 0] = p & 255
            out[y, x, 1] = (p >> 8) & 255
            out[y, x, 2] = (p >> 16) & 255


def resize_bilinear_cpu(img, H, W, vertical_first=None):
    """img: (h, w, 3) uint8 RGB, or (h, w) uint32 packed RGBX (little-endian ``R | G << 8 | B << 16``,
    as ``np.frombuffer(im.tobytes("raw", "RGBX"), np.uint32)``) -> (H, W, 3) uint8.

    Equal to :func:`resize_bilinear_reference` (and so to Pillow 13) bit for bit; single-threaded
    and GIL-free, for decoder processes."""
    if not PACKED_LITTLE_ENDIAN:
        raise RuntimeError("resize_bilinear_cpu reads packed pixels as little-endian words; "
                           "use resize_bilinear_reference or Pillow on this machine")
    img = np.ascontiguousarray(img)
    h, w = img.shape[:2]
    if img.ndim == 3:
        packed = np.empty((h, w), np.uint32)
        _pack(img, packed)
    elif img.dtype == np.uint32 and img.ndim == 2:
        packed = img
    else:
        raise ValueError(f"expected (h, w, 3) uint8 or (h, w) uint32 packed pixels, got {img.shape} {img.dtype}")
    if vertical_first is None:
        vertical_first = pillow_vertical_first(h, w, H, W)
    out = np.empty((H, W, 3), np.uint8)
    need_h, need_v = W != w, H != h
    if need_h:
        idx, coef = _tap_tables(*_coeffs(w, W), w)
    if need_v:
        bv, kv = _coeffs(h, H)
    h_first = need_h and not vertical_first
    cur = packed
    if h_first:
        # Pillow resamples only the rows the vertical pass reads, and shifts its bounds
        y0, y1 = (int(bv[0, 0]), int(bv[-1, 0] + bv[-1, 1])) if need_v else (0, h)
        cur = np.empty((y1 - y0, W), np.uint32)
        _hpass(packed, y0, idx, coef, cur)
        if need_v:
            bv[:, 0] -= y0
    if need_v:
        if h_first or not need_h:           # the last pass: write RGB bytes directly
            _vpass(cur, bv, kv, out, True)
            return out
        tmp = np.empty((H, w), np.uint32)
        _vpass(cur, bv, kv, tmp, False)
        cur = tmp
    if need_h and not h_first:
        res = np.empty((H, W), np.uint32)
        _hpass(cur, 0, idx, coef, res)
        cur = res
    _unpack(cur, out)
    return out


class _ArrowArray(ctypes.Structure):
    """The Arrow C Data Interface's ``struct ArrowArray``
    (a stable ABI, arrow.apache.org/docs/format/CDataInterface)."""


_ArrowArray._fields_ = [
    ("length", ctypes.c_int64), ("null_count", ctypes.c_int64), ("offset", ctypes.c_int64),
    ("n_buffers", ctypes.c_int64), ("n_children", ctypes.c_int64),
    ("buffers", ctypes.POINTER(ctypes.c_void_p)), ("children", ctypes.POINTER(ctypes.POINTER(_ArrowArray))),
    ("dictionary", ctypes.POINTER(_ArrowArray)), ("release", ctypes.c_void_p), ("private_data", ctypes.c_void_p)]
_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def pillow_packed_pixels(im):
    """im: PIL image in mode RGB -> ((h, w) uint32 packed RGBX pixels, an object to keep alive while
    they are read).

    Pillow stores an RGB image as 4 bytes per pixel (R, G, B, 255). Where the rows lie in one block
    (images up to 16 MB, Pillow's block size), Pillow's public Arrow export (Pillow 11.2+, a
    fixed-size list of 4 uint8 per pixel) gives that memory without a copy: 0.02 ms per ~400x566
    photo against 0.25-0.31 ms for ``tobytes("raw", "RGBX")``, which encodes it in 64 KB pieces
    and joins them. Larger images, older Pillow or an unexpected layout take the ``tobytes`` copy."""
    w, h = im.size                      # Pillow sizes are (width, height); numpy shapes (height, width)
    try:
        schema, arr = im.__arrow_c_array__()
        a = _ArrowArray.from_address(_capsule_pointer(arr, b"arrow_array"))
        c = a.children[0].contents if a.n_children == 1 else None
        if c is not None and a.length == w * h and c.n_buffers == 2 and c.length >= 4 * (a.offset + w * h):
            ptr = c.buffers[1] + 4 * (c.offset + a.offset)
            view = np.frombuffer((ctypes.c_uint32 * (w * h)).from_address(ptr), np.uint32).reshape(h, w)
            return view, (schema, arr, im)      # the capsules' release keeps Pillow's memory alive until then
    except (AttributeError, ValueError):        # Pillow < 11.2; "Image rows are not contiguous in memory"
        pass
    return np.frombuffer(im.tobytes("raw", "RGBX"), np.uint32).reshape(h, w), None


def resize_pil_bilinear(im, H, W):
    """im: PIL image in mode RGB -> (H, W, 3) uint8, equal to ``np.asarray(im.resize((W, H), BILINEAR))``
    under Pillow 13. Reads Pillow's pixel memory in place, in its RGBX layout (:func:`pillow_packed_pixels`)."""
    packed, keep = pillow_packed_pixels(im)
    out = resize_bilinear_cpu(packed, H, W)
    del keep
    return out


def warm():
    """Load (or compile) every kernel specialisation :func:`resize_pil_bilinear` uses, on tiny
    images: the extract decoders' fork server calls it once so each decoder starts with them."""
    from PIL import Image
    for (h, w), (H, W) in (((12, 9), (5, 4)), ((9, 12), (9, 5)), ((30, 9), (5, 8)), ((9, 12), (5, 12))):
        resize_pil_bilinear(Image.new("RGB", (w, h)), H, W)
