"""Our converted-weights format: HDF5 with one group per layer holding ordered blobs.

Layout (mirrors Caffe's ``layer.blobs_`` and pycaffe's ``net.params``)::

    /<layer name>/0   weight  (e.g. conv: (M, C/group, kh, kw) OIHW; fc: (M, K) row-major)
    /<layer name>/1   bias    (M,)
    attrs on the file: format="minicaffe-weights", version, source, source_sha1, source_sha256,
                       prototxt (the full text), converted_at, plus any caller extras
    attrs on each group: type (the Caffe layer type), order (position in the net)

Layer names containing ``/`` (GoogLeNet's ``inception_3a/1x1``) are stored with ``/`` replaced by
``__`` and the true name kept in the group's ``name`` attribute. Reading checks each dataset's
declared shape and dtype before loading it (against the file size, the stored bytes of a
compressed dataset, and, when the net passes them, the parameter shapes it expects), follows
only hard links, and reads attributes defensively; errors are :class:`WeightsError` naming the file.
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ..errors import WeightsError

FORMAT = "minicaffe-weights"


def _key(name):
    return name.replace("/", "__")


def save_h5(path: str | os.PathLike, params: Mapping, prototxt: str = "", types: Mapping | None = None,
            **attrs) -> None:
    """params: mapping layer name -> [arrays]. Written atomically (temp file, then rename)."""
    import h5py
    tmp = f"{path}.tmp{os.getpid()}"
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["version"] = 1
        f.attrs["prototxt"] = prototxt
        f.attrs["converted_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        for k, v in attrs.items():
            f.attrs[k] = "" if v is None else v
        for order, (name, blobs) in enumerate(params.items()):
            g = f.create_group(_key(name))
            g.attrs["name"] = name
            g.attrs["order"] = order
            if types and name in types:
                g.attrs["type"] = types[name]
            for i, a in enumerate(blobs):
                g.create_dataset(str(i), data=np.asarray(a, dtype=np.float32))
    os.replace(tmp, path)


#: most axes of one stored blob (as in Caffe)
MAX_DIMS = 32
#: a compressed dataset may declare at most this many times its stored bytes (+1 MiB)
MAX_INFLATE_RATIO = 64


def _fail(path, msg):
    raise WeightsError(f"{path}: {msg}")


def _attr(path, obj, key, kind, default, what):
    """One scalar attribute as ``kind`` (str or int); anything odd is a WeightsError, not a crash."""
    try:
        v = obj.attrs.get(key, None)
    except (OSError, TypeError, ValueError, KeyError, RuntimeError) as e:
        _fail(path, f"{what}: attribute {key!r} is unreadable ({e})")
    if v is None:
        return default
    if isinstance(v, np.ndarray):
        if v.shape not in ((), (1,)):
            _fail(path, f"{what}: attribute {key!r} must be a scalar, found an array of shape {v.shape}")
        v = v.reshape(-1)[0]
    if isinstance(v, (bytes, np.bytes_)):
        try:
            v = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            _fail(path, f"{what}: attribute {key!r} is not UTF-8 text")
    if kind is str:
        if not isinstance(v, str):
            _fail(path, f"{what}: attribute {key!r} must be text, found {type(v).__name__}")
        return v
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        _fail(path, f"{what}: attribute {key!r} must be an integer, found {v!r:.40}")
    return int(v)


def _child(path, h5py, group, key, what):
    """group[key] only through a hard link (soft/external links could loop or open other files)."""
    try:
        link = group.get(key, getlink=True)
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        _fail(path, f"{what} is unreadable ({e})")
    if not isinstance(link, h5py.HardLink):
        _fail(path, f"{what} is a {type(link).__name__} (only plain groups and datasets are allowed)")
    try:
        return group[key]
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        _fail(path, f"{what} is unreadable ({e})")


def load_h5(path: str | os.PathLike, with_attrs: bool = False, expected: Mapping | None = None):
    """-> OrderedDict layer name -> [arrays] (and the file attrs if ``with_attrs``).

    ``expected``: optional mapping layer name -> list of parameter shapes (what the net needs).
    With it, only those layers are read, and a blob declaring more elements than its expected
    shape is refused before it is read; without it, every blob's declared size is bounded by the
    file size (by :data:`MAX_INFLATE_RATIO` times its stored bytes when compressed). Odd
    attributes, links, a group where a dataset belongs and non-float data are all refused with
    a :class:`WeightsError` naming the file.
    """
    import h5py
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: cannot open as HDF5 weights: {e}") from None
    try:
        with f:
            return _read(path, f, h5py, with_attrs, expected)
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, OverflowError) as e:
        raise WeightsError(f"{path}: unreadable HDF5 weights ({type(e).__name__}: {str(e)[:200]})") from None


def _read(path, f, h5py, with_attrs, expected):
    fmt = _attr(path, f, "format", str, FORMAT, "the file")
    if fmt != FORMAT:
        _fail(path, f"not a minicaffe weights file (format={fmt!r})")
    size = os.path.getsize(path)
    groups = []
    for key in f:
        g = _child(path, h5py, f, key, f"top-level entry {key!r}")
        if not isinstance(g, h5py.Group):
            _fail(path, f"unexpected dataset {key!r} at the top level")
        what = f"group {key!r}"
        order = _attr(path, g, "order", int, len(groups), what)
        name = _attr(path, g, "name", str, key, what)
        groups.append((order, name, g))
    groups.sort(key=lambda t: t[0])
    out = OrderedDict()
    for _, name, g in groups:
        if expected is not None and name not in expected:
            continue  # not used by the net: never read
        want = list(expected[name]) if expected is not None else None
        blobs = []
        keys = sorted(g.keys(), key=lambda s: int(s) if s.isdigit() else 1 << 30)
        for i, k in enumerate(keys):
            if k != str(i):
                _fail(path, f"layer {name!r} has blob {k!r}; expected 0, 1, ... in order")
            what = f"layer {name!r} blob {k}"
            ds = _child(path, h5py, g, k, what)
            if not isinstance(ds, h5py.Dataset):
                _fail(path, f"{what} is a {type(ds).__name__}, expected a dataset")
            blobs.append(_read_blob(path, ds, what, size, want[i] if want is not None and i < len(want) else None))
        out[name] = blobs
    if not with_attrs:
        return out
    attrs = {}
    for k in f.attrs:
        try:
            v = f.attrs[k]
        except (OSError, TypeError, ValueError, KeyError, RuntimeError):
            continue  # an unreadable extra attribute is not needed to use the weights
        attrs[k] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return out, attrs


def _read_blob(path, ds, what, file_size, want):
    """Check a dataset's declared shape, dtype and stored size, then read it as float32."""
    shape = ds.shape
    if shape is None:
        _fail(path, f"{what} has no shape (an empty dataspace)")
    if len(shape) > MAX_DIMS:
        _fail(path, f"{what} has {len(shape)} dims (at most {MAX_DIMS})")
    if ds.dtype.kind != "f":
        _fail(path, f"{what} holds {ds.dtype} data; weights must be floating point")
    count = 1
    for d in shape:
        count *= int(d)
    nbytes = count * ds.dtype.itemsize
    if want is not None:
        want_count = 1
        for d in want:
            want_count *= int(d)
        if count > want_count:
            _fail(path, f"{what} has shape {tuple(shape)}, expected {tuple(want)} (refused before reading)")
    if ds.compression is None and not ds.chunks:
        if nbytes > file_size + (1 << 20):
            _fail(path, f"{what} claims shape {tuple(shape)}, larger than the file")
    else:
        stored = ds.id.get_storage_size()
        if nbytes > MAX_INFLATE_RATIO * stored + (1 << 20):
            _fail(path, f"{what} declares shape {tuple(shape)} ({nbytes:,} bytes) from {stored:,} stored bytes "
                  "(a compression bomb? refused before reading)")
    try:
        return np.asarray(ds[()], dtype=np.float32)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        raise WeightsError(f"{path}: {what} is unreadable: {e}") from None
