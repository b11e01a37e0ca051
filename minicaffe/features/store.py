"""The part/merge store: checkpoint parts of a feature run, their merge into one file, and resuming.

A run writes every batch's features as one atomic checkpoint part (:func:`write_part`,
``OUT.parts/part-NNNNNNN.npz``: temporary name, fsync, rename), so a run killed at any moment
leaves only whole parts. :func:`read_parts` and :func:`read_output` turn what an earlier run left
(parts, a finished output) into :class:`Source` rows whose features load only when needed;
:func:`assemble` merges sources, rows in input order, into one HDF5 (or .npz) file through a
temporary name and a rename, so ``OUT`` is either absent or complete. :func:`feature_determinants`
and :func:`check_resumable` decide, by content, whether a run may continue another one's work;
:class:`OutputLock` keeps a second run off the same output. It does not decode, forward or print.

Output layout (HDF5; the .npz has the same keys)::

    features/<blob>   (N, D) float32, the blob flattened in C order (pool5: D = 256*6*6, CHW)
                      (blob names with '/' are stored with '__'; attrs: blob, pre_relu, shape)
    features/concat   with --concat: the layers side by side (attrs: layers, dims)
    paths             (N,) utf-8, in input order     labels (N,) int64 (-1 = none), if any
    class_names       (K,) utf-8, if labels are class names
    failed            (M, 2) utf-8 rows (path, reason)
    path_bytes, failed_path_bytes   (N,), (M,) the exact file-name bytes, only when a name is not
                      UTF-8 (``paths`` then shows those bytes as \\xNN; HDF5 only, .npz keeps them)
    attrs: model, prototxt, weights, weights_sha1, preprocessing (JSON), crop, layers,
           minicaffe_version, backend, created, determinants (JSON), features_digest
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings

import numpy as np

from ..cli import os_error_line, shown
from ..errors import MinicaffeError, MinicaffeWarning, UsageError

PARTS_SUFFIX = ".parts"
LOCK_SUFFIX = ".lock"
#: output extensions (lower case) -> format
OUTPUT_FORMATS = {".h5": "h5", ".hdf5": "h5", ".hdf": "h5", ".npz": "npz"}


def output_format(out, fmt=None):
    """-o OUT [--format] -> 'h5' or 'npz'; an unknown extension is a usage error unless --format says."""
    ext = os.path.splitext(out)[1].lower()
    if fmt:
        return fmt
    if ext not in OUTPUT_FORMATS:
        raise UsageError(f"-o {shown(out)}: unknown output extension {ext or '(none)'!r}; use one of "
                         f"{', '.join(OUTPUT_FORMATS)} (or force one with --format h5|npz)")
    return OUTPUT_FORMATS[ext]


class OutputLock:
    """Exclusive lock of one output and its checkpoint folder for the whole run.

    ``fcntl.flock`` on ``OUT.lock`` (never blocking: a second writer gets a one-line error naming the
    holder's pid). The kernel drops the lock when its holder dies, even by SIGKILL, so a stale file
    never blocks; a finished run removes the file. A run that opened the file just before the
    holder removed it finds a different file at the path after locking, and tries again."""

    def __init__(self, out):
        self.out, self.path, self.fd = out, out + LOCK_SUFFIX, None

    def __enter__(self):
        import fcntl
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise UsageError(f"{shown(self.out)}: cannot write there ({os_error_line(e)}); choose another -o") \
                    from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_small(fd)
                os.close(fd)
                raise UsageError(f"{shown(self.out)}: another extract run{f' (pid {holder})' if holder else ''} is "
                                 "writing this output; wait for it to finish or choose another -o") from None
            except OSError as e:
                os.close(fd)
                raise UsageError(f"{shown(self.out)}: cannot lock {shown(self.path)} ({e.strerror}); "
                                 "choose another -o") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return self
            os.close(fd)
        raise UsageError(f"{shown(self.out)}: cannot lock {shown(self.path)} (it keeps being replaced)")

    def __exit__(self, *exc):
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        return False


def _read_small(fd):
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


def atomic_write(path, writer):
    """Write ``path`` through ``writer(file)`` under a temporary name, fsync, rename: never half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        writer(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_part(parts_dir, seq, index, paths, feats, failed):
    """One batch -> ``parts_dir/part-<seq>.npz`` (atomic) -> its path.

    index: positions of the batch's inputs in the listing; paths: (n,) rows written; feats: dataset
    name -> (n, D) float32; failed: [(path, reason)]."""
    arrays = {"index": np.asarray(index, np.int64), "paths": np.asarray(paths, dtype=str).reshape(-1),
              "failed": np.asarray(failed, dtype=str).reshape(-1, 2)}
    for k, v in feats.items():
        arrays["f:" + k] = v
    path = os.path.join(parts_dir, f"part-{seq:07d}.npz")
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


class Source:
    """Rows already done: a checkpoint file or a finished output. Features load only when assembling.

    ``widths``: dataset name -> feature width D, when known without loading (checkpoints), so a
    checkpoint of other layers is refused before any work; ``where``: the file, for errors."""

    def __init__(self, paths, failed, load, seq=-1, widths=None, where=None):
        self.paths, self.failed, self._load, self.seq = paths, failed, load, seq
        self.widths, self.where = widths, where

    def feats(self):
        try:
            return self._load()
        except MinicaffeError:
            raise
        except Exception as e:  # noqa: BLE001 - a checkpoint damaged after it was listed (bad CRC, I/O error)
            raise UsageError(f"{shown(self.where or '<checkpoint>')}: damaged checkpoint ({type(e).__name__}: {e}); "
                             "delete it and run again with --resume to extract its images again") from None


def part_features(path):
    """A checkpoint part -> dataset name -> (n, D) float32."""
    with np.load(path) as z:
        return {k[2:]: z[k] for k in z.files if k.startswith("f:")}


def _npy_header(zf, name):
    """(shape, dtype) of member ``name`` of an .npz (a zipfile.ZipFile) from its header alone."""
    with zf.open(name) as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _fortran, dtype = read(fh)
    return tuple(shape), dtype


def _read_part(path):
    """One checkpoint -> (paths, failed, widths); ValueError naming what is wrong when it is damaged."""
    import zipfile
    with np.load(path, allow_pickle=False) as z:
        need = {"index", "paths", "failed"}
        if not need <= set(z.files):
            raise ValueError(f"missing {', '.join(sorted(need - set(z.files)))}")
        paths = z["paths"]
        failed = z["failed"]
        index = z["index"]
        if paths.ndim != 1 or paths.dtype.kind != "U" or failed.ndim != 2 or failed.shape[1] != 2 \
                or failed.dtype.kind != "U" or index.shape != (len(paths) + len(failed),):
            raise ValueError(f"inconsistent rows (paths {paths.shape}, failed {failed.shape}, index {index.shape})")
        widths = {}
        with zipfile.ZipFile(path) as zf:
            for k in z.files:
                if k.startswith("f:"):
                    shape, dtype = _npy_header(zf, k + ".npy")
                    if len(shape) != 2 or shape[0] != len(paths) or dtype != np.float32:
                        raise ValueError(f"features {k[2:]!r} are {dtype} {shape}, expected float32 "
                                         f"({len(paths)}, D)")
                    widths[k[2:]] = shape[1]
        return [str(p) for p in paths], [tuple(map(str, r)) for r in failed], widths


def read_parts(parts_dir, warn=None):
    """-> [Source] in checkpoint order (``*.tmp<pid>`` leftovers of a killed write are ignored).

    A damaged checkpoint (truncated, not an .npz, rows that do not add up) is renamed
    ``*.damaged`` with one warning (``warn(message)``, default :func:`warnings.warn`); its images
    are extracted again."""
    out = []
    for fn in sorted(os.listdir(parts_dir)):
        if not (fn.startswith("part-") and fn.endswith(".npz")):
            continue
        path = os.path.join(parts_dir, fn)
        try:
            seq = int(fn[5:-4])
            paths, failed, widths = _read_part(path)
        except Exception as e:  # noqa: BLE001 - whatever np.load / zipfile raise on a damaged file
            _warn(warn, f"{shown(path)}: damaged checkpoint ({type(e).__name__}: {e}); its images will be "
                        "extracted again")
            try:
                os.replace(path, path + ".damaged")
            except OSError:
                pass
            continue
        out.append(Source(paths, failed, lambda path=path: part_features(path), seq, widths, path))
    return out


def _warn(warn, message):
    if warn is not None:
        warn(message)
    else:
        warnings.warn(message, MinicaffeWarning, stacklevel=3)


def has_checkpoints(parts_dir):
    """Whether ``parts_dir`` holds finished work (checkpoints or shard parts), not just run.json."""
    try:
        names = os.listdir(parts_dir)
    except OSError:
        return False
    return any((n.startswith("part-") and n.endswith(".npz")) or (n.startswith("shard-") and n.endswith(".h5"))
               for n in names)


def drop_if_empty(parts_dir):
    """Remove a checkpoint folder that holds no finished work (a run that failed or was stopped
    before its first checkpoint), so it does not ask the next run for --resume."""
    if os.path.isdir(parts_dir) and not has_checkpoints(parts_dir):
        shutil.rmtree(parts_dir, ignore_errors=True)


def read_output(path, fmt):
    """A finished output -> (its run metadata, Source) for --resume on a complete file."""
    if fmt == "npz":
        import zipfile
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            paths = [str(p) for p in z["paths"]]
            failed = [tuple(map(str, r)) for r in z["failed"].reshape(-1, 2)]
            with zipfile.ZipFile(path) as zf:
                shapes = {k.split("/", 1)[1]: _npy_header(zf, k + ".npy")[0] for k in z.files
                          if k.startswith("features/")}

        def load():
            with np.load(path) as z:
                return {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("features/")}
        return meta, Source(paths, failed, load, widths=_widths(shapes, len(paths), path), where=path)
    import h5py
    with h5py.File(path, "r") as f:
        meta = json.loads(f.attrs["run"])
        paths = list(f["paths"].asstr()[()])
        failed = [tuple(r) for r in f["failed"].asstr()[()].reshape(-1, 2)]
        if "path_bytes" in f:          # names that are not UTF-8: the exact bytes
            paths = [os.fsdecode(b) for b in f["path_bytes"][()]]
            failed = [(os.fsdecode(b), r) for b, (_, r) in zip(f["failed_path_bytes"][()], failed)]
        shapes = {k: f["features"][k].shape for k in f["features"]}

    def load():
        with h5py.File(path, "r") as f:
            return {k: f["features"][k][()] for k in f["features"]}
    return meta, Source(paths, failed, load, widths=_widths(shapes, len(paths), path), where=path)


def _widths(shapes, n, path):
    """{dataset: shape} of an output's features -> {dataset: D}; ValueError unless every one is (n, D)."""
    for k, shp in shapes.items():
        if len(shp) != 2 or shp[0] != n:
            raise ValueError(f"features/{k} has shape {tuple(shp)} for {n} path(s)")
    return {k: int(shp[1]) for k, shp in shapes.items()}


def read_run_json(meta_path):
    """A checkpoint folder's ``run.json`` -> the run's metadata; a damaged one is a UsageError."""
    try:
        with open(meta_path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{shown(meta_path)}: damaged run description ({type(e).__name__}: {e}); "
                         "start over with --force") from None


def utf8_text(s):
    """str -> the same str when it is valid UTF-8 text, else its bytes with the non-UTF-8 ones as \\xNN
    (file names are any bytes on Linux; Python holds the others as surrogate escapes, which HDF5's
    UTF-8 strings cannot store)."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        try:
            return os.fsencode(s).decode("utf-8", "backslashreplace")
        except UnicodeError:
            return s.encode("utf-8", "backslashreplace").decode("utf-8")


def count_rows(sources):
    """Image rows (not failed ones) over sources."""
    return sum(len(s.paths) for s in sources)


def assemble(out, fmt, listing, sources, meta, dims):
    """Write the final file from checkpoint sources, rows in input-listing order (temp + rename;
    the temporary file is removed when anything stops the writing)."""
    try:
        return _assemble(out, fmt, listing, sources, meta, dims)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(f"{out}.tmp{os.getpid()}")
        raise


def _assemble(out, fmt, listing, sources, meta, dims):
    pos = {p: i for i, p in enumerate(listing.paths)}
    ok_rows, failed_rows = [], []     # (position, source index, row in source)
    for si, src in enumerate(sources):
        for j, p in enumerate(src.paths):
            if p not in pos:
                raise UsageError(f"{p}: in the interrupted run's checkpoints but not in the current inputs; "
                                 "resume with the same INPUTs or start over with --force")
            ok_rows.append((pos[p], si, j))
        for p, reason in src.failed:
            if p not in pos:
                raise UsageError(f"{p}: in the interrupted run's checkpoints but not in the current inputs; "
                                 "resume with the same INPUTs or start over with --force")
            failed_rows.append((pos[p], p, reason))
    ok_rows.sort()
    failed_rows.sort()
    n = len(ok_rows)
    paths = [listing.paths[i] for i, _, _ in ok_rows]
    labels = np.asarray([listing.labels[i] for i, _, _ in ok_rows], np.int64)
    failed = np.asarray([[p, r] for _, p, r in failed_rows], dtype=object).reshape(-1, 2)
    dest_row = {(si, j): k for k, (_, si, j) in enumerate(ok_rows)}
    tmp = f"{out}.tmp{os.getpid()}"
    def placements():
        """(source features, sorted destination rows, order) per non-empty source, loading one at a time."""
        for si, src in enumerate(sources):
            if not src.paths:
                continue
            rows = np.asarray([dest_row[(si, j)] for j in range(len(src.paths))])
            order = np.argsort(rows)
            yield src.feats(), rows[order], order

    if fmt == "npz":
        arrays = {"features/" + name: np.empty((n, d), np.float32) for name, (d, _) in dims.items()}
        for feats, rows, order in placements():
            for name in dims:
                arrays["features/" + name][rows] = feats[name][order]
        arrays["paths"] = np.asarray(paths, dtype=str)
        if listing.has_labels:
            arrays["labels"] = labels
        if listing.class_names:
            arrays["class_names"] = np.asarray(listing.class_names, dtype=str)
        arrays["failed"] = np.asarray(failed.astype(str) if len(failed) else np.empty((0, 2), str))
        arrays["meta"] = np.asarray(json.dumps(meta))
        atomic_write(out, lambda f: np.savez(f, **arrays))
        return n, len(failed_rows)
    import h5py
    strs = h5py.string_dtype("utf-8")
    shown_paths = [utf8_text(p) for p in paths]
    raw = shown_paths != paths or any(utf8_text(p) != p for _, p, _ in failed_rows)
    if len(failed):
        failed = np.asarray([[utf8_text(p), utf8_text(r)] for p, r in failed], dtype=object).reshape(-1, 2)
    with h5py.File(tmp, "w") as f:
        g = f.create_group("features")
        dsets = {}
        for name, (d, shp) in dims.items():
            rows_per_chunk = max(1, min(max(n, 1), (1 << 20) // (4 * d)))   # ~1 MiB chunks of whole rows
            ds = g.create_dataset(name, shape=(n, d), maxshape=(None, d), dtype=np.float32,
                                  chunks=(rows_per_chunk, d))
            ds.attrs["shape"] = list(shp)
            for k, v in meta["layer_info"].get(name, {}).items():
                ds.attrs[k] = json.dumps(v) if isinstance(v, list) else v
            dsets[name] = ds
        for feats, rows, order in placements():
            for name, ds in dsets.items():
                data = feats[name][order]
                if rows[-1] - rows[0] + 1 == len(rows):       # contiguous: one slice write
                    ds[rows[0]:rows[-1] + 1] = data
                else:
                    ds[rows] = data
        f.create_dataset("paths", data=np.asarray(shown_paths, dtype=object), dtype=strs, maxshape=(None,),
                         chunks=True)
        if raw:
            bytes_t = h5py.string_dtype("ascii")      # h5py's type for arbitrary bytes
            f.create_dataset("path_bytes", data=np.asarray([os.fsencode(p) for p in paths], dtype=object),
                             dtype=bytes_t, shape=(n,))
            f.create_dataset("failed_path_bytes", dtype=bytes_t, shape=(len(failed_rows),),
                             data=np.asarray([os.fsencode(p) for _, p, _ in failed_rows], dtype=object))
        if listing.has_labels:
            f.create_dataset("labels", data=labels, maxshape=(None,), chunks=True)
        if listing.class_names:
            f.create_dataset("class_names", data=np.asarray([utf8_text(c) for c in listing.class_names], dtype=object),
                             dtype=strs)
        fd = f.create_dataset("failed", data=failed if len(failed) else np.empty((0, 2), object),
                              dtype=strs, maxshape=(None, 2), chunks=True)
        fd.attrs["columns"] = ["path", "reason"]
        for k, v in meta.items():
            if k != "layer_info":
                f.attrs[k] = v if isinstance(v, (str, int, float)) and v is not None else json.dumps(v)
        f.attrs["run"] = json.dumps(meta)
    os.replace(tmp, out)
    return n, len(failed_rows)


# ---------------------------------------------------------------------------------- resuming
def feature_determinants(net, spec, layers, *, concat: bool, crop: str, backend: str) -> dict:
    """Everything that decides the feature values, by content (never by file name) -> dict."""
    import hashlib

    from ..io import file_digest
    pre = spec.describe()
    if spec.mean_image is not None:
        pre["mean_image"] = "sha1:" + file_digest(spec.mean_image)
    return {"net": "sha1:" + hashlib.sha1((net.prototxt_text or "").encode("utf-8", "surrogateescape")).hexdigest(),
            "weights": "sha1:" + (net.weights_sha1 or ""), "preprocessing": pre,
            "layers": [r.key for r in layers], "concat": bool(concat), "crop": crop,
            "backend": backend}


def determinants_digest(det):
    """A determinants dict -> its SHA-1 (the ``features_digest`` attribute)."""
    import hashlib
    return hashlib.sha1(json.dumps(det, sort_keys=True).encode()).hexdigest()


#: settings compared on resume for outputs made before the features digest existed
_LEGACY_SAME_RUN = ("model", "weights_sha1", "preprocessing", "crop", "layers", "concat", "batch_size")


def check_resumable(old, new, where):
    """UsageError naming what differs when ``old`` (a run's metadata) cannot be continued by ``new``."""
    if not isinstance(old, dict):
        raise UsageError(f"{shown(where)}: its run description is damaged; start over with --force")
    if "features_digest" not in old:
        _check_same(old, new, _LEGACY_SAME_RUN, where)
        return
    if old["features_digest"] != new["features_digest"]:
        od, nd = old.get("determinants") or {}, new["determinants"]
        def same(k):
            return json.dumps(od.get(k), sort_keys=True) == json.dumps(nd.get(k), sort_keys=True)
        diff = [k for k in nd if not same(k)] or ["setup"]
        detail = "; ".join(f"{k}: was {_short(od.get(k))}, now {_short(nd.get(k))}" for k in diff[:3])
        raise UsageError(f"{shown(where)}: was made with a different {', '.join(diff)} ({detail}); resume with the "
                         "same net, weights and options, or start over with --force")
    # batches are fixed windows of the input list: the same windows make a resumed file equal to a whole run's
    _check_same(old, new, ("batch_size",), where)


def _short(v):
    t = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return t if len(t) <= 60 else t[:57] + "..."


def _check_same(old, new, keys, where):
    for k in keys:
        if str(old.get(k)) != str(new.get(k)):
            raise UsageError(f"{shown(where)}: was made with {k}={old.get(k)!r}, this run has {new.get(k)!r}; "
                             "use the same options to resume, or --force to start over")
