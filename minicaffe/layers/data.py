"""Caffe's ``Data`` layer: batches of ``Datum`` records from an LMDB, with Caffe's DataTransformer.

``data_param { source batch_size backend: LMDB }`` opens the LMDB (through the optional ``lmdb``
package) and yields, on every forward, the next ``batch_size`` records in key order (wrapping to
the first), as top 0 ``(batch, C, H, W)`` (or ``crop_size`` square) and top 1 the labels
``(batch,)``. Datums are decoded without protobuf: raw uint8 ``data`` or ``float_data``, or an
``encoded`` image (decoded with Pillow, RGB -> BGR as Caffe's OpenCV decode gives BGR; grey
unless ``force_color``/colour). ``transform_param`` follows data_transformer.cpp: ``(x - mean) *
scale`` with ``mean_file`` (a BlobProto, cropped like the image) or ``mean_value`` (one, or one per
channel); ``crop_size`` takes a random window in TRAIN and the centre in TEST, ``mirror`` flips
with probability 1/2 in TRAIN (random draws from NumPy, not Caffe's generator). LevelDB sources
and ``rand_skip`` are not supported.
"""
from __future__ import annotations

import io
import os

import numpy as np

from ..errors import ModelError
from ..io.caffemodel import _blob, _Reader
from .base import Layer, register


def parse_datum(buf, where="datum"):
    """Serialized Datum bytes -> (array (C, H, W) uint8 or float32, or encoded image bytes; label;
    encoded flag)."""
    r = _Reader(memoryview(buf), where, "Datum")
    c = h = w = 0
    data, floats, label, encoded = None, [], 0, False
    for num, wt, val in r.fields():
        if num == 1 and wt == 0:
            c = val
        elif num == 2 and wt == 0:
            h = val
        elif num == 3 and wt == 0:
            w = val
        elif num == 4 and wt == 2:
            data = bytes(val)
        elif num == 5 and wt == 0:
            label = val - (1 << 64) if val >= 1 << 63 else val  # int32 negatives are 10-byte varints
        elif num == 6 and wt in (2, 5):
            floats.append(np.frombuffer(val, dtype="<f4"))
        elif num == 7 and wt == 0:
            encoded = bool(val)
    if encoded:
        return data, label, True
    if data:
        if len(data) != c * h * w:
            raise ModelError(f"{where}: Datum holds {len(data)} bytes for a {c}x{h}x{w} image")
        return np.frombuffer(data, np.uint8).reshape(c, h, w), label, False
    arr = np.concatenate(floats) if floats else np.zeros(0, np.float32)
    if arr.size != c * h * w:
        raise ModelError(f"{where}: Datum holds {arr.size} floats for a {c}x{h}x{w} array")
    return arr.reshape(c, h, w).astype(np.float32), label, False


def decode_image(data, color=None):
    """Encoded image bytes -> (C, H, W) uint8, BGR (Caffe decodes with OpenCV). ``color``: True
    (3 channels), False (grey) or None (as stored: grey images stay grey)."""
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        if color is None:
            color = im.mode not in ("L", "I", "I;16", "1")
        im = im.convert("RGB" if color else "L")
        a = np.asarray(im, dtype=np.uint8)
    if a.ndim == 2:
        return a[None]
    return np.ascontiguousarray(a[:, :, ::-1].transpose(2, 0, 1))  # HWC RGB -> CHW BGR


class Transformer:
    """Caffe's DataTransformer for one (C, H, W) array -> float32 (C, crop, crop)."""

    def __init__(self, tp, phase, rng, where):
        self.scale = float(tp.get("scale", 1.0)) if tp is not None else 1.0
        self.crop = int(tp.get("crop_size", 0)) if tp is not None else 0
        self.mirror = tp is not None and str(tp.get("mirror", "false")).lower() in ("true", "1")
        self.mean_values = [float(v) for v in tp.getall("mean_value")] if tp is not None else []
        self.mean = None
        mf = tp.get("mean_file") if tp is not None else None
        if mf is not None:
            if self.mean_values:
                raise ModelError(f"{where}: give mean_file or mean_value, not both")
            with open(str(mf), "rb") as f:
                m = _blob(memoryview(f.read()), str(mf), "mean BlobProto")
            self.mean = m.reshape(m.shape[-3:]) if m.ndim >= 3 else m
        self.phase, self.rng = phase, rng

    def __call__(self, x):
        c, h, w = x.shape
        if self.crop:
            if self.crop > h or self.crop > w:
                raise ModelError(f"crop_size {self.crop} is larger than the {h}x{w} image")
            if self.phase == "TRAIN":
                y0, x0 = int(self.rng.integers(h - self.crop + 1)), int(self.rng.integers(w - self.crop + 1))
            else:
                y0, x0 = (h - self.crop) // 2, (w - self.crop) // 2
            y1, x1 = y0 + self.crop, x0 + self.crop
        else:
            y0, x0, y1, x1 = 0, 0, h, w
        out = x[:, y0:y1, x0:x1].astype(np.float32)
        if self.mean is not None:
            if self.mean.shape != (c, h, w):
                raise ModelError(f"mean_file shape {self.mean.shape} does not match the data ({c}, {h}, {w})")
            out -= self.mean[:, y0:y1, x0:x1]
        elif self.mean_values:
            mv = self.mean_values * c if len(self.mean_values) == 1 else self.mean_values
            if len(mv) != c:
                raise ModelError(f"{len(self.mean_values)} mean_value entries for {c} channels")
            out -= np.asarray(mv, np.float32)[:, None, None]
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        if self.mirror and self.phase == "TRAIN" and self.rng.integers(2):
            out = out[:, :, ::-1]  # flip W of (C, H, W)
        return np.ascontiguousarray(out)


@register("Data")
class Data(Layer):
    """no bottoms -> [data (batch, C, H, W)] (+ [label (batch,)])."""

    #: set by the pycaffe net ("TRAIN" enables random crops and mirrors)
    phase = "TEST"

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("data_param")
        self.source = p.get("source")
        self.batch = int(p.get("batch_size", 0))
        if self.source is None or self.batch < 1:
            raise self.err("data_param needs a source and a positive batch_size")
        backend = str(p.get("backend", "LEVELDB"))
        if backend not in ("LMDB", "1"):
            raise self.err(f"reads LMDB only (data_param.backend: LMDB), not {backend}")
        if not 1 <= len(self.tops) <= 2:
            raise self.err("has one or two tops (data, label)")
        try:
            import lmdb
        except ImportError:
            raise self.err("reading LMDB needs the lmdb package: pip install lmdb") from None
        if not os.path.isdir(str(self.source)):
            raise self.err(f"{self.source}: no such LMDB folder")
        self.env = lmdb.open(str(self.source), readonly=True, lock=False, readahead=False, subdir=True)
        self.txn = self.env.begin()
        self.cursor = self.txn.cursor()
        if not self.cursor.first():
            raise self.err(f"{self.source}: the LMDB is empty")
        tp = self.lp.get("transform_param")
        def flag(k):
            return tp is not None and str(tp.get(k, "false")).lower() in ("true", "1")
        self.color = True if flag("force_color") else (False if flag("force_gray") else None)
        self.rng = np.random.default_rng(0)
        self.transform = Transformer(tp, self.phase, self.rng, f"layer {name!r}")
        first = self._decode(self.cursor.value())[0]
        c, h, w = first.shape
        crop = self.transform.crop
        self.shape = (self.batch, c, crop or h, crop or w)

    def _decode(self, value):
        x, label, encoded = parse_datum(value, str(self.source))
        if encoded:
            x = decode_image(x, self.color)
        return x, label

    def setup(self, shapes):
        return [self.shape] + ([(self.batch,)] if len(self.tops) == 2 else [])

    def forward(self, bottoms, params, backend, inplace=False):
        self.transform.phase, self.transform.rng = self.phase, self.rng
        data = np.empty(self.shape, np.float32)
        labels = np.empty(self.batch, np.float32)
        for i in range(self.batch):
            x, labels[i] = self._decode(self.cursor.value())
            data[i] = self.transform(x)
            if not self.cursor.next():
                self.cursor.first()
        return [data] + ([labels] if len(self.tops) == 2 else [])
