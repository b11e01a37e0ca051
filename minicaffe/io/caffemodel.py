"""Read and write binary ``.caffemodel`` files (protobuf wire format) without a protobuf dependency.

Only the fields needed for weights are decoded: ``NetParameter.name`` (1), ``NetParameter.layer``
(100, current ``LayerParameter``: name 1, type 2, blobs 7) and ``NetParameter.layers`` (2, the
legacy ``V1LayerParameter``: name 4, type 5 as an enum, blobs 6). ``BlobProto`` gives ``shape``
(7, ``BlobShape.dim`` 1) or the legacy ``num/channels/height/width`` (1-4), and ``data`` (5,
packed or not) or ``double_data`` (8). Every length read from the file is checked against the
bytes that remain, and every blob's declared shape (at most 32 dims, at most 2**31-1 elements,
as in Caffe) against the values actually present before anything is allocated, so corrupt or
truncated input raises :class:`WeightsError`, never an IndexError or a huge allocation; the
message nesting is fixed (net, layer, blob, shape), so there is no recursion, and memory stays
proportional to the file size. The writer emits the current format (used to turn seeded
weights into a real caffemodel that Caffe, OpenCV and this reader load alike).
"""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np

from ..errors import WeightsError

__all__ = ["V1_LAYER_TYPES", "read_caffemodel", "write_caffemodel"]

# V1LayerParameter.LayerType enum values (caffe.proto) -> current type strings.
V1_LAYER_TYPES = {
    0: "None", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data",
    6: "Dropout", 7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output",
    11: "Im2col", 12: "ImageData", 13: "InfogainLoss", 14: "InnerProduct", 15: "LRN",
    16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid", 20: "Softmax",
    21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData", 25: "Eltwise",
    26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss", 29: "MemoryData",
    30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN",
    35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}


class _Reader:
    """Bounded protobuf wire reader over a memoryview."""

    def __init__(self, buf, path, what):
        self.buf, self.pos, self.end = buf, 0, len(buf)
        self.path, self.what = path, what

    def fail(self, msg):
        raise WeightsError(f"{self.path}: corrupt or truncated caffemodel ({msg} in {self.what})")

    def varint(self):
        result, shift = 0, 0
        while True:
            if self.pos >= self.end:
                self.fail("varint runs past the end")
            b = self.buf[self.pos]
            self.pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
            if shift > 63:
                self.fail("varint longer than 10 bytes")

    def fields(self):
        """Yield (field_number, wire_type, value) where value is int or a memoryview."""
        while self.pos < self.end:
            key = self.varint()
            num, wt = key >> 3, key & 7
            if num == 0:
                self.fail("field number 0")
            if wt == 0:
                yield num, wt, self.varint()
            elif wt == 1:
                if self.pos + 8 > self.end:
                    self.fail("fixed64 runs past the end")
                yield num, wt, self.buf[self.pos:self.pos + 8]
                self.pos += 8
            elif wt == 2:
                n = self.varint()
                if n > self.end - self.pos:
                    self.fail(f"field {num} claims {n} bytes but only {self.end - self.pos} remain")
                yield num, wt, self.buf[self.pos:self.pos + n]
                self.pos += n
            elif wt == 5:
                if self.pos + 4 > self.end:
                    self.fail("fixed32 runs past the end")
                yield num, wt, self.buf[self.pos:self.pos + 4]
                self.pos += 4
            else:
                self.fail(f"unsupported wire type {wt} for field {num}")


def _string(view, r):
    try:
        return bytes(view).decode("utf-8")
    except UnicodeDecodeError:
        r.fail("a name is not UTF-8")


#: most axes of one blob (Caffe's kMaxBlobAxes)
MAX_BLOB_AXES = 32
#: largest element count of one blob (Caffe refuses blobs whose count exceeds INT_MAX)
MAX_BLOB_COUNT = 2**31 - 1


def _packed_varints(view, path, what):
    r = _Reader(view, path, what)
    out = []
    while r.pos < r.end:
        if len(out) >= MAX_BLOB_AXES:
            r.fail(f"a blob shape has more than {MAX_BLOB_AXES} dims")
        out.append(r.varint())
    return out


def _append_scalar(chunks, val):
    """Unpacked values (one field each) gather into one bytearray: no Python object per element."""
    if not chunks or not isinstance(chunks[-1], bytearray):
        chunks.append(bytearray())
    chunks[-1] += val


def _blob(view, path, where):
    """One BlobProto -> float32 array. The declared shape is checked against the bytes present
    before anything is allocated; the data is copied exactly once (memory ~ the blob's bytes)."""
    r = _Reader(view, path, where)
    shape, legacy = None, {}
    chunks, dchunks = [], []  # memoryviews into the file buffer (no copies yet)
    for num, wt, val in r.fields():
        if num == 7 and wt == 2:  # BlobShape
            sr = _Reader(val, path, where + " shape")
            dims = []
            for n2, w2, v2 in sr.fields():
                if n2 == 1:
                    dims.extend(_packed_varints(v2, path, where) if w2 == 2 else [v2])
                    if len(dims) > MAX_BLOB_AXES:
                        r.fail(f"a blob shape has more than {MAX_BLOB_AXES} dims")
            shape = dims
        elif num in (1, 2, 3, 4) and wt == 0:
            legacy[num] = val
        elif num == 5:  # float data, packed (wt 2) or one fixed32 per element (wt 5)
            if wt == 2:
                if len(val) % 4:
                    r.fail("float data length is not a multiple of 4")
                chunks.append(val)
            elif wt == 5:
                _append_scalar(chunks, val)
        elif num == 8:  # double data
            if wt == 2:
                if len(val) % 8:
                    r.fail("double data length is not a multiple of 8")
                dchunks.append(val)
            elif wt == 1:
                _append_scalar(dchunks, val)
    if chunks and dchunks:
        r.fail("a blob holds both float and double data")
    itemsize = 8 if dchunks else 4
    present = sum(len(c) for c in (dchunks or chunks)) // itemsize
    if shape is None:
        shape = [legacy.get(i, 1) for i in (1, 2, 3, 4)] if legacy else [present]
    # dims are int64 on the wire: a negative one arrives as a huge varint, refused with the rest
    for d in shape:
        if d > MAX_BLOB_COUNT:
            raise WeightsError(f"{path}: {where}: shape {tuple(shape)} has a dim larger than {MAX_BLOB_COUNT} "
                               "(negative or corrupt)")
    count = 1
    for d in shape:
        count *= d
    if count > MAX_BLOB_COUNT:
        raise WeightsError(f"{path}: {where}: shape {tuple(shape)} has {count} elements, more than Caffe's "
                           f"limit of {MAX_BLOB_COUNT}")
    if count != present:
        raise WeightsError(f"{path}: {where}: shape {tuple(shape)} needs {count} values but the file holds {present}")
    if not count:
        return np.zeros(shape, np.float32)
    parts = dchunks or chunks
    raw = parts[0] if len(parts) == 1 else b"".join(parts)
    if dchunks:
        return np.frombuffer(raw, dtype="<f8").astype(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)


def read_caffemodel(path: str | os.PathLike) -> tuple:
    """Read a caffemodel: returns (net_name, OrderedDict layer_name -> (type, [blobs])).

    Layers without blobs are kept (type known) so callers can report what the file contains.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read weights file: {e.strerror}") from None
    if not data:
        raise WeightsError(f"{path}: weights file is empty")
    r = _Reader(memoryview(data), path, "NetParameter")
    name, layers = "", OrderedDict()
    for num, wt, val in r.fields():
        if num == 1 and wt == 2:
            name = _string(val, r)
        elif num in (100, 2) and wt == 2:
            v1 = num == 2
            lr = _Reader(val, path, "layer")
            lname, ltype, blobs = None, None, []
            for n2, w2, v2 in lr.fields():
                if v1:
                    if n2 == 4 and w2 == 2:
                        lname = _string(v2, lr)
                    elif n2 == 5 and w2 == 0:
                        ltype = V1_LAYER_TYPES.get(v2, f"V1Type{v2}")
                    elif n2 == 6 and w2 == 2:
                        blobs.append(v2)
                else:
                    if n2 == 1 and w2 == 2:
                        lname = _string(v2, lr)
                    elif n2 == 2 and w2 == 2:
                        ltype = _string(v2, lr)
                    elif n2 == 7 and w2 == 2:
                        blobs.append(v2)
            if lname is None:
                r.fail("a layer has no name")
            arrays = [_blob(b, path, f"layer {lname!r} blob {i}") for i, b in enumerate(blobs)]
            layers[lname] = (ltype, arrays)
    if not layers:
        raise WeightsError(f"{path}: no layers found (not a caffemodel?)")
    return name, layers


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num, payload):
    return _varint((num << 3) | 2) + _varint(len(payload)) + payload


def write_caffemodel(path, layers, name="net"):
    """Write ``layers`` (iterable of (name, type, [arrays])) as a current-format caffemodel."""
    out = bytearray(_field(1, name.encode()))
    for lname, ltype, blobs in layers:
        lp = bytearray(_field(1, lname.encode()) + _field(2, ltype.encode()))
        for a in blobs:
            a = np.ascontiguousarray(a, dtype="<f4")
            dims = b"".join(_varint(int(d)) for d in a.shape)
            bp = _field(7, _field(1, dims)) + _field(5, a.tobytes())
            lp += _field(7, bp)
        out += _field(100, bytes(lp))
    with open(path, "wb") as f:
        f.write(out)
