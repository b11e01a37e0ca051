"""``python -m minicaffe.extract``: DeCAF features of an image collection into one HDF5 (or .npz) file.

Lists INPUTs (:mod:`minicaffe.datasets`), decodes and resizes images in worker processes
(:mod:`minicaffe.preprocess`) while the main process normalises batches and runs the net up to the
last requested layer, and writes every batch's features as an atomic checkpoint file in
``OUT.parts/``. At the end the checkpoints are assembled, in input order, into ``OUT`` (written to
a temporary name and renamed), so ``OUT`` is either absent or complete, and a run killed at any
moment (even SIGKILL) continues with ``--resume`` to a file equal to an uninterrupted run's:
batches are fixed windows of the input list, so a resumed run forwards exactly the same batches.
Unusable images are listed in ``failed`` with a reason and one warning line; the exit status is 0
when any image succeeded, 1 when none did (then no OUT is written), 2 on a usage error, 130 on
Ctrl-C (whose line says to continue with ``--resume``). One run at a time writes an OUT: a second
gets a one-line error (``fcntl.flock`` on ``OUT.lock``, removed at the end). ``--resume`` checks a
digest of everything that determines the features (net text, weights content, preprocessing with
the mean image's content, layers, crop, backend) and names what differs. Damaged checkpoints are
set aside and their images extracted again. It does not train or fine-tune.

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

import argparse
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import sys
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from . import __version__
from .cli import Interrupted, exit_with, os_error_line, shown
from .datasets import InputError, list_inputs
from .errors import MinicaffeError, UsageError  # noqa: F401
from .images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE
from .models import CAFFE_PREPROCESSING, DECAF_ALIASES, MODELS, get_model
from .preprocess import (
    CROP_MODES,
    N_OVERSAMPLE,
    check_spec,
    normalize_batch,
    with_channel_means,
    worker_load,
    worker_load_many,
)

PRE_SUFFIX = ".pre"
PARTS_SUFFIX = ".parts"
LOCK_SUFFIX = ".lock"
#: output extensions (lower case) -> format
OUTPUT_FORMATS = {".h5": "h5", ".hdf5": "h5", ".hdf": "h5", ".npz": "npz"}



if TYPE_CHECKING:
    from .preprocess import Preprocessing

def default_model():
    """The embedded model with real weights (``models.DEFAULT_MODEL``) when registered, else CaffeNet."""
    from . import models
    name = getattr(models, "DEFAULT_MODEL", "efficientnet-lite0")
    return name if name in MODELS else "caffenet"


# ---------------------------------------------------------------------------------- layers
@dataclasses.dataclass
class LayerRequest:
    request: str      # what the user wrote (decaf6, fc6, fc6.pre)
    blob: str         # the net's blob name (fc6)
    pre: bool         # the value before in-place layers (ReLU) ran
    end_index: int    # last layer index that writes the blob

    @property
    def key(self):
        return self.blob + (PRE_SUFFIX if self.pre else "")

    @property
    def dataset(self):
        return self.key.replace("/", "__")


def resolve_layers(net, names, aliases=None, pre_relu=False):
    """Requested names -> [LayerRequest]; aliases map decaf6 -> fc6; ``x.pre`` or pre_relu -> pre-ReLU."""
    aliases = dict(aliases or {})
    out = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        pre = pre_relu
        if name.endswith(PRE_SUFFIX):
            name, pre = name[:-len(PRE_SUFFIX)], True
        blob = aliases.get(name, name)
        if blob not in net.blob_shapes:
            known = [b for b in net.blob_shapes if b not in net.input_names]
            raise UsageError(f"--layers: {raw!r} is not a blob of the net (blobs: {', '.join(known)}; "
                             f"aliases: {', '.join(f'{k}={v}' for k, v in aliases.items()) or 'none'})")
        writers = [i for i, l in enumerate(net.layers) if blob in l.tops]
        inplace = [i for i in writers if blob in net.layers[i].bottoms]
        if pre and not inplace:
            raise UsageError(f"--layers: {raw!r}: no in-place layer (ReLU) modifies blob {blob!r}, so it has no "
                             f"pre-activation value; ask for {blob!r}")
        req = LayerRequest(raw, blob, pre, max(writers))
        if req.key not in {r.key for r in out}:
            out.append(req)
    if not out:
        raise UsageError("--layers: no layer given")
    return out


def default_layers(aliases, net):
    # DeCAF6 for the Caffe models; "features" (the global pool) for the EfficientNets
    for cand in ("default", "decaf6", "features"):
        if cand in aliases and aliases[cand] in net.blob_shapes:
            return [cand]
    raise UsageError("this model has no default feature layer; choose one with --layers (blobs: "
                     + ", ".join(b for b in net.blob_shapes if b not in net.input_names) + ")")


class FeatureExtractor:
    """Net + preprocessing + requested layers: batches of resized RGB uint8 images -> features.

    Shared by the CLI and :class:`minicaffe.DeCAF`.
    """

    def __init__(self, net, spec, layers, crop="center", concat=False):
        if crop not in CROP_MODES:
            raise UsageError(f"--crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
        self.net, self.spec, self.layers, self.crop, self.concat = net, spec, layers, crop, concat
        inp = net.input_names[0]
        check_spec(spec, net.input_shapes[inp][2:])
        self.end = net.layers[max(r.end_index for r in layers)].name
        self.keep_pre = any(r.pre for r in layers)
        self.fetch = sorted({r.key for r in layers})

    def feature_dims(self):
        """dataset name -> (D, per-image blob shape)."""
        dims = {}
        for r in self.layers:
            shp = tuple(self.net.blob_shapes[r.blob][1:])
            dims[r.dataset] = (int(np.prod(shp)), shp)
        if self.concat:
            return {"concat": (sum(d for d, _ in dims.values()), (sum(d for d, _ in dims.values()),))}
        return dims

    def normalize(self, images):
        """list of (H, W, 3) uint8 RGB (resized) -> (N or 10N, 3, c, c) float32."""
        if len({im.shape for im in images}) == 1:
            return normalize_batch(images, self.spec, self.crop, self.net.backend)
        return np.concatenate([normalize_batch([im], self.spec, self.crop, self.net.backend) for im in images])

    def forward(self, x, n):
        """x: (n or 10n, 3, c, c) -> OrderedDict dataset name -> (n, D) float32."""
        blobs = self.net.forward(x, end=self.end, keep_pre_activation=self.keep_pre, fetch=self.fetch)
        out = collections.OrderedDict()
        for r in self.layers:
            f = np.asarray(blobs[r.key], np.float32).reshape(x.shape[0], -1)
            if self.crop == "oversample":
                # Caffe's Classifier: average the 10 crops' outputs per image (image-major order)
                f = f.reshape(n, N_OVERSAMPLE, -1).mean(axis=1)
            out[r.dataset] = np.ascontiguousarray(f, dtype=np.float32)
        if self.concat:
            return collections.OrderedDict(concat=np.concatenate(list(out.values()), axis=1))
        return out

    def features(self, images):
        return self.forward(self.normalize(images), len(images))


# ---------------------------------------------------------------------------------- decoding
DECODER_PRIORITIES = ("auto", "idle", "normal")


def decoder_priority(choice):
    """``--decoder-priority`` -> ``idle`` or ``normal``.

    Why idle: the forward pass keeps every core busy in parallel regions that wait for their
    slowest thread, so a decoder that preempts one compute thread stalls all of them; measured
    (2 cores, full CaffeNet, batch 64, 384 JPEGs, 5-10 paired runs) end-to-end / pure forward
    0.72 with one normal-priority decoder, 0.75-0.77 with two, 0.83-0.89 with two SCHED_IDLE
    decoders (which run while the main process waits or a core idles). Idle decoders starve
    when other CPU-bound jobs fill the machine, hence ``auto``'s look at the CPUs at start:
    normal when less than half a CPU is free.
    """
    if choice != "auto":
        return choice
    free = _free_cpus()
    return "normal" if free is not None and free < 0.5 else "idle"


def _cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]   # user nice system idle iowait irq softirq steal
    return sum(v), v[3] + v[4]


def _free_cpus(sample_s=0.1):
    """CPUs idle over a short sample (Linux /proc/stat; this process sleeps meanwhile), or None."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(sample_s)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (i1 - i0) / max(1, t1 - t0)


class DecodePool:
    """Worker processes that decode + resize images, surviving a worker that dies.

    A decoder that crashes its process (a segfault in a codec, the OOM killer) breaks a
    ``ProcessPoolExecutor`` and every pending task with it. :func:`iter_decoded` then restarts the
    pool, runs the task at the head of the queue alone in a fresh one-worker pool to find out
    whether it is the culprit (it becomes a failed row: "decoder process died"), and resubmits
    the rest. Processes start by forkserver (or spawn), never fork: the parent runs Numba threads.
    """

    #: images to decode from which the decoders use Numba's resize: it saves ~0.9 ms of CPU per
    #: ~400x566 JPEG, but loading Numba (in the fork server, once) delays the first batch by ~0.5-0.8 s
    NUMBA_RESIZE_FROM = 1000
    #: whether this process's fork server preloads Numba (fixed by the first pool: later ones get it free)
    _server_numba = None

    def __init__(self, workers, priority="normal", n_images=None):
        # with the work spread over `workers` decoders the start-up pays for itself later
        self.numba = (n_images is None or n_images >= self.NUMBA_RESIZE_FROM * max(1, workers) / 2
                      or bool(DecodePool._server_numba))
        if DecodePool._server_numba is None:
            DecodePool._server_numba = self.numba
        self.workers, self.priority = workers, priority
        self.ex = self._new(workers, priority, self.numba)

    @staticmethod
    def start_method(numba=True):
        """``forkserver`` where it exists, after asking it to preload :mod:`minicaffe.decoder_preload`
        (NumPy, Pillow and, with ``numba``, Numba's resize kernels: ~0.8 s once instead of per
        decoder). The preload list counts only if this process has not started its fork server yet."""
        import multiprocessing as mp
        if "forkserver" not in mp.get_all_start_methods():
            return "spawn"
        mp.get_context("forkserver").set_forkserver_preload(
            ["minicaffe.decoder_preload" if numba else "minicaffe.preprocess"])
        return "forkserver"

    @classmethod
    def _new(cls, n, priority="normal", numba=True):
        import concurrent.futures as cf
        import multiprocessing as mp
        return cf.ProcessPoolExecutor(n, mp_context=mp.get_context(cls.start_method(numba)), initializer=_decoder_init,
                                      initargs=(os.getpid(), priority, numba))

    def submit(self, tasks):
        """tasks: a list of worker_load tuples -> future of the list of their results."""
        return self.ex.submit(worker_load_many, tasks)

    def restart(self):
        self.ex.shutdown(wait=False, cancel_futures=True)
        self.ex = self._new(self.workers, self.priority, self.numba)

    def run_isolated(self, task):
        from concurrent.futures.process import BrokenProcessPool
        ex = self._new(1, self.priority, self.numba)
        try:
            return ex.submit(worker_load_many, [task]).result()[0]
        except BrokenProcessPool:
            return task[0], None, "decoder process died while reading this file (crash or out of memory)"
        finally:
            ex.shutdown(wait=False, cancel_futures=True)

    def close(self, wait=True):
        """wait=False (Ctrl-C): drop the queued chunks; decoders finish their current one and exit."""
        self.ex.shutdown(wait=wait, cancel_futures=True)


def _lower_priority(priority):
    """In a decoder process: ``idle`` -> Linux SCHED_IDLE (nice 19 where that does not exist)."""
    if priority != "idle":
        return
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:
            pass


def _decoder_init(pid, priority="normal", numba=True):
    """Decoder-process initializer: set the scheduling priority and the resizer, then watch the parent.

    Ctrl-C reaches every process of the terminal's foreground group: decoders ignore it (no
    traceback from each of them), the extracting process stops and shuts the pool down."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from . import preprocess
    preprocess.BILINEAR_RESIZER = "numba" if numba else "pillow"
    _lower_priority(priority)
    from .runtime import auto_tune
    auto_tune()     # the allocator setting (the environment ones came with the parent's environment)
    _exit_with_parent(pid)


def _exit_with_parent(pid, period=0.5):
    """In a decoder process (from :func:`_decoder_init`): exit when the extracting process ``pid`` is gone.

    A worker blocks on its task queue forever if the driver is SIGKILLed (its parent is the
    forkserver, which lives on as long as any worker holds its pipe), so without this a killed
    extraction would leave idle decoders behind and the terminal's pipes open."""

    def alive():
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):   # PermissionError: pid reused by another user
            return False
        try:    # a killed driver stays a zombie until its parent reaps it: that is dead too
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
        except OSError:
            return True                 # no /proc (macOS): os.kill's answer stands

    def watch():
        while alive():
            time.sleep(period)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="minicaffe-parent-watch").start()


def iter_decoded(paths, spec, workers=0, prefetch=128, max_pixels=DEFAULT_MAX_PIXELS,
                 min_size=DEFAULT_MIN_SIZE, pool=None, chunk=8):
    """-> iterator of (i, uint8 image | None, reason) in order of ``paths``, up to ``prefetch``
    ahead in ``pool``. With a pool the first ``prefetch`` tasks are submitted on a thread started
    before this returns (a submission that starts a decoder waits for the fork server's preload),
    so decoding starts while the caller does other work (extract loads the weights meanwhile).

    A pool task is ``chunk`` images: one round trip through the executor's queues per 8 images
    instead of per image (measured: 64 JPEGs on 2 decoders 2.3-2.8 ms/image in chunks of 8,
    3.0-3.1 one by one)."""
    tasks = ((i, p, spec, max_pixels, min_size) for i, p in enumerate(paths))
    if pool is None:
        return (worker_load(t) for t in tasks)
    chunks = iter(lambda: list(itertools.islice(tasks, chunk)), [])
    ahead = max(1, prefetch // chunk)      # chunks in flight
    pending = collections.deque()          # (list of tasks, future), in input order
    first = list(itertools.islice(chunks, ahead))
    errors = []

    def submit_first():
        try:
            for c in first:
                pending.append((c, pool.submit(c)))
        except BaseException as e:  # noqa: BLE001 - re-raised by the iterator, on the caller's thread
            errors.append(e)

    starter = threading.Thread(target=submit_first, daemon=True, name="minicaffe-decoder-start")
    starter.start()
    return _drain_decoded(chunks, pending, pool, ahead, starter, errors)


def _drain_decoded(chunks, pending, pool, ahead, starter, errors):
    from concurrent.futures.process import BrokenProcessPool

    starter.join()
    if errors:
        raise errors[0]

    def head():
        c, fut = pending.popleft()
        try:
            return fut.result()
        except BrokenProcessPool:
            # a decoder died: find the culprit image by image, each alone in a fresh process
            pool.restart()
            results = [pool.run_isolated(t) for t in c]
            for k, (cc, _) in enumerate(pending):
                pending[k] = (cc, pool.submit(cc))
            return results

    for c in chunks:
        pending.append((c, pool.submit(c)))
        if len(pending) >= ahead:
            yield from head()
    while pending:
        yield from head()


# ---------------------------------------------------------------------------------- checkpoints
def _atomic_write(path, writer):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        writer(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_part(parts_dir, seq, index, paths, feats, failed):
    arrays = {"index": np.asarray(index, np.int64), "paths": np.asarray(paths, dtype=str).reshape(-1),
              "failed": np.asarray(failed, dtype=str).reshape(-1, 2)}
    for k, v in feats.items():
        arrays["f:" + k] = v
    path = os.path.join(parts_dir, f"part-{seq:07d}.npz")
    _atomic_write(path, lambda f: np.savez(f, **arrays))
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


def _load_part_feats(path):
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


def read_parts(parts_dir, bar=None):
    """-> [Source] in checkpoint order (``*.tmp<pid>`` leftovers of a killed write are ignored).

    A damaged checkpoint (truncated, not an .npz, rows that do not add up) is renamed
    ``*.damaged`` with one warning; its images are extracted again."""
    out = []
    for fn in sorted(os.listdir(parts_dir)):
        if not (fn.startswith("part-") and fn.endswith(".npz")):
            continue
        path = os.path.join(parts_dir, fn)
        try:
            seq = int(fn[5:-4])
            paths, failed, widths = _read_part(path)
        except Exception as e:  # noqa: BLE001 - whatever np.load / zipfile raise on a damaged file
            warn(f"{shown(path)}: damaged checkpoint ({type(e).__name__}: {e}); its images will be extracted again",
                 bar)
            try:
                os.replace(path, path + ".damaged")
            except OSError:
                pass
            continue
        out.append(Source(paths, failed, lambda path=path: _load_part_feats(path), seq, widths, path))
    return out


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


# ---------------------------------------------------------------------------------- output
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
        _atomic_write(out, lambda f: np.savez(f, **arrays))
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


# ---------------------------------------------------------------------------------- CLI
EXAMPLES = """examples:
  python -m minicaffe.extract photos/ -o feats.h5
  python -m minicaffe.extract train/ test/ -o caffenet.h5 --model caffenet --layers decaf6,decaf7 --crop oversample
  python -m minicaffe.extract list.txt -o f.h5 --prototxt deploy.prototxt --weights net.caffemodel \\
      --preprocess caffe --layers fc6.pre,fc7 --concat
  python -m minicaffe.extract photos/ -o feats.h5 --resume      # after an interruption

load:  import h5py; f = h5py.File("feats.h5"); X = f["features/fc6"][:]; paths = f["paths"].asstr()[:]
"""


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minicaffe.extract", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Extract DeCAF features of images into an HDF5 (or .npz) file.", epilog=EXAMPLES)
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image folders (recursive; root/class/*.jpg gives labels), image files, or text lists "
                        "(.txt/.lst: 'path [int label]' or 'path<TAB>class name' per line). e.g. photos/")
    p.add_argument("-o", "--output", required=True, help="output file, .h5 (default) or .npz. e.g. -o feats.h5")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None,
                   help=f"registered model: {', '.join(sorted(MODELS))} (default: {default_model()}). "
                        "e.g. --model caffenet")
    m.add_argument("--prototxt", help="a deploy prototxt instead of --model. e.g. --prototxt deploy.prototxt")
    m.add_argument("--weights", help="weights for --prototxt (.caffemodel or .h5), or to override --model's. "
                                     "e.g. --weights bvlc_reference_caffenet.caffemodel")
    m.add_argument("--preprocess", default="caffe",
                   help="preprocessing for --prototxt: 'caffe' (256x256 bilinear, BGR, ILSVRC mean image, crop 227) "
                        "or a registered model's name. e.g. --preprocess caffe")
    m.add_argument("--mean", choices=("model", "channel"), default="model",
                   help="'channel' subtracts the mean image's per-channel means (104.0/116.7/122.7 for ILSVRC) "
                        "instead of the mean image. e.g. --mean channel")
    m.add_argument("--crop-size", type=int, help="crop side (default: the preprocessing's). e.g. --crop-size 224")
    m.add_argument("--backend", default="cpu", choices=("numpy", "cpu", "cuda"), help="e.g. --backend cuda")
    m.add_argument("--strict", action="store_true",
                   help="refuse weights holding NaN/Inf (default: a warning naming each such layer)")
    f = p.add_argument_group("features")
    f.add_argument("--layers", help="comma-separated blob names or aliases (decaf5=pool5, decaf6=fc6, decaf7=fc7); "
                                    "'NAME.pre' is the value before the in-place ReLU (default: decaf6, or the model's "
                                    "'features' alias, e.g. EfficientNet's global pool). "
                                    "e.g. --layers pool5,fc6.pre,fc7")
    f.add_argument("--pre-relu", action="store_true", help="take every layer before its ReLU (same as NAME.pre)")
    f.add_argument("--concat", action="store_true",
                   help="store one features/concat (N, sum D) instead of one per layer")
    f.add_argument("--crop", choices=CROP_MODES, default="center",
                   help="center crop, or Caffe's 10-crop oversample (4 corners + center, mirrored; features averaged)")
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=64, help="images per forward (x10 crops with oversample). e.g. 64")
    r.add_argument("--workers", type=int, default=None,
                   help="decoding processes; 0 decodes in the main process (default: the CPU count)")
    r.add_argument("--decoder-priority", choices=DECODER_PRIORITIES, default="auto",
                   help="idle: decoders run only on CPU time the forward pass leaves (Linux SCHED_IDLE); normal: "
                        "they compete with it; auto (default): idle unless less than half a CPU is free when "
                        "the run starts. e.g. --decoder-priority normal on a box shared with CPU-bound jobs")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run or add new images to OUT")
    r.add_argument("--force", action="store_true", help="overwrite OUT and discard checkpoints of an interrupted run")
    r.add_argument("--format", choices=("h5", "npz"), help="output format (default: from the extension)")
    r.add_argument("--root", help="base folder for relative paths in text lists (default: the list's folder)")
    r.add_argument("--no-labels", action="store_true", help="ignore ImageFolder layouts and list labels")
    r.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"refuse larger images as decompression bombs (default {DEFAULT_MAX_PIXELS})")
    r.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                   help=f"refuse images with a side below this, e.g. 1x1 pixels "
                        f"(default {DEFAULT_MIN_SIZE}; 1 accepts all)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.add_argument("--cluster", help="run shards on Dask workers (docs/distributed.md): local[:N] for N worker "
                                     "processes here, or a scheduler address. e.g. --cluster tcp://10.0.0.5:8786")
    r.add_argument("--shard-size", type=int, help="images per Dask task and part file (default 256). e.g. 512")
    return p


def preprocessing_for(args):
    """The preprocessing the run will use, known from the arguments alone (no weights loaded)."""
    if args.prototxt:
        if args.model:
            raise UsageError("give either --model or --prototxt, not both")
        if not args.weights:
            raise UsageError("--prototxt needs --weights (a .caffemodel or converted .h5)")
        if args.preprocess == "caffe":
            spec = CAFFE_PREPROCESSING
        elif args.preprocess in MODELS:
            spec = MODELS[args.preprocess].preprocessing
        else:
            raise UsageError(f"--preprocess must be 'caffe' or a model name ({', '.join(sorted(MODELS))})")
    else:
        spec = get_model(args.model or default_model()).preprocessing
    if args.mean == "channel":
        spec = with_channel_means(spec)
    if args.crop_size:
        spec = dataclasses.replace(spec, crop=args.crop_size)
    return spec


def load_model(args: argparse.Namespace, spec: Preprocessing | None = None) -> tuple:
    """-> (net, preprocessing, aliases, description dict); ``spec``: preprocessing_for(args) when
    the caller already has it."""
    spec = spec if spec is not None else preprocessing_for(args)
    if args.prototxt:
        from .net import Net
        net = Net(args.prototxt, args.weights, backend=args.backend, strict=getattr(args, "strict", False))
        aliases = {k: v for k, v in DECAF_ALIASES.items() if v in net.blob_shapes}
        if args.preprocess in MODELS:    # a model's refined copy (finetune) keeps that model's aliases
            aliases.update({k: v for k, v in MODELS[args.preprocess].aliases.items() if v in net.blob_shapes})
        desc = {"model": os.path.basename(args.prototxt), "prototxt": os.path.abspath(args.prototxt)}
    else:
        spec_m = get_model(args.model or default_model())
        if args.weights:
            try:
                net = spec_m.load(args.backend, weights=args.weights, strict=getattr(args, "strict", False))
            except MinicaffeError as e:
                raise _weights_for_other_net(args.weights, spec_m.name, e) from None
        else:
            net = spec_m.load(args.backend, strict=getattr(args, "strict", False))
        aliases = dict(spec_m.aliases)
        desc = {"model": spec_m.name, "prototxt": spec_m.prototxt}
    desc["weights"] = os.path.abspath(net.weights_path) if net.weights_path else ""
    desc["weights_sha1"] = net.weights_sha1 or ""
    return net, spec, aliases, desc


def _weights_for_other_net(weights, model, err):
    """--model M --weights W that do not fit M: when W carries its own net (finetune's output, a
    converted file) the error says exactly which flags use it."""
    proto_attr = ""
    if str(weights).lower().endswith((".h5", ".hdf5")):
        try:
            import h5py
            with h5py.File(weights, "r") as f:
                proto_attr = str(f.attrs.get("prototxt", "") or "")
        except Exception:  # noqa: BLE001 - not readable as HDF5: the loader's own error stands
            proto_attr = ""
    if not proto_attr:
        return err
    side = os.path.splitext(weights)[0] + ".prototxt"
    how = (f"use --prototxt {side} --weights {weights} --preprocess {model}" if os.path.isfile(side) else
           f"write its net with python -c \"import h5py; open('{side}', 'w').write(h5py.File('{weights}')"
           f".attrs['prototxt'])\", then use --prototxt {side} --weights {weights} --preprocess {model}")
    return UsageError(f"{shown(weights)}: these weights are for another net than model {model} "
                      f"(e.g. refined by finetune with a new classifier size): {how}  [{err}]")


def feature_determinants(net, spec, layers, args):
    """Everything that decides the feature values, by content (never by file name) -> dict."""
    import hashlib

    from .io import file_digest
    pre = spec.describe()
    if spec.mean_image is not None:
        pre["mean_image"] = "sha1:" + file_digest(spec.mean_image)
    return {"net": "sha1:" + hashlib.sha1((net.prototxt_text or "").encode("utf-8", "surrogateescape")).hexdigest(),
            "weights": "sha1:" + (net.weights_sha1 or ""), "preprocessing": pre,
            "layers": [r.key for r in layers], "concat": bool(args.concat), "crop": args.crop,
            "backend": args.backend}


def determinants_digest(det):
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


def warn(msg, bar=None):
    line = f"minicaffe: warning: {msg}"
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


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


def output_format(out, fmt=None):
    """-o OUT [--format] -> 'h5' or 'npz'; an unknown extension is a usage error unless --format says."""
    ext = os.path.splitext(out)[1].lower()
    if fmt:
        return fmt
    if ext not in OUTPUT_FORMATS:
        raise UsageError(f"-o {shown(out)}: unknown output extension {ext or '(none)'!r}; use one of "
                         f"{', '.join(OUTPUT_FORMATS)} (or force one with --format h5|npz)")
    return OUTPUT_FORMATS[ext]


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .runtime import auto_tune
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    out = args.output
    fmt = output_format(out, args.format)
    parts_dir = out + PARTS_SUFFIX
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.resume and args.force:
        raise UsageError("--resume and --force contradict each other; choose one")
    if os.path.isdir(out):
        raise UsageError(f"{shown(out)} is a folder; -o needs a file name")
    if os.path.lexists(parts_dir) and not os.path.isdir(parts_dir):
        raise UsageError(f"{shown(parts_dir)} exists and is not a folder; extract keeps its checkpoints there: "
                         "move it away or choose another -o")
    with OutputLock(out):
        try:
            return _main_locked(args, out, fmt, parts_dir)
        except KeyboardInterrupt:
            if has_checkpoints(parts_dir):
                raise Interrupted(f"the finished batches are kept in {shown(parts_dir)}; run the same command "
                                  "with --resume to continue") from None
            drop_if_empty(parts_dir)
            raise Interrupted("nothing was written") from None
        except (OSError, MemoryError) as e:   # a full disk, a vanished folder, too little memory mid-run
            if has_checkpoints(parts_dir):
                what = os_error_line(e) if isinstance(e, OSError) else "out of memory"
                raise UsageError(f"{what}; the finished batches are kept in {shown(parts_dir)}: fix that and run "
                                 "the same command with --resume") from None
            drop_if_empty(parts_dir)
            raise
        except BaseException:
            drop_if_empty(parts_dir)    # e.g. --cluster with an unreachable scheduler: nothing to resume
            raise


def _main_locked(args, out, fmt, parts_dir):
    drop_if_empty(parts_dir)     # a run stopped before its first checkpoint left nothing to resume
    if not args.resume and not args.force:
        if os.path.exists(parts_dir):
            raise UsageError(f"{shown(parts_dir)} holds checkpoints of an interrupted run; continue it with "
                             "--resume or discard it with --force")
        if os.path.exists(out):
            raise UsageError(f"{shown(out)} exists; add --resume to extend it or --force to overwrite it")

    try:
        listing = list_inputs(args.inputs, root=args.root, labels=not args.no_labels)
    except InputError as e:
        raise UsageError(str(e)) from None
    if not listing.paths:
        raise UsageError(f"no images found in {' '.join(shown(i) for i in args.inputs)} "
                         "(folders are searched for image extensions; lists need one path per line)")
    if listing.duplicates:
        warn(f"{listing.duplicates} duplicate path(s) in the inputs were skipped")

    # ---- what is already done (--resume), known before any weight is loaded -----------------
    spec = preprocessing_for(args)
    if args.force and os.path.isdir(parts_dir):
        shutil.rmtree(parts_dir)
    sources, old_meta = [], None
    if args.resume and os.path.exists(out) and not os.path.isdir(parts_dir):
        try:
            old_meta, old = read_output(out, fmt)
        except Exception as e:  # noqa: BLE001 - any reader failure means the file is not ours
            raise UsageError(f"{shown(out)}: cannot read it to resume ({type(e).__name__}: {e}); use --force") \
                from None
        sources.append(old)
    parts = read_parts(parts_dir) if os.path.isdir(parts_dir) else []
    sources.extend(parts)
    done = {p for s in sources for p in s.paths} | {p for s in sources for p, _ in s.failed}
    todo = [i for i, p in enumerate(listing.paths) if p not in done]
    todo_paths = [listing.paths[i] for i in todo]

    # Decoding starts before the weights load: the decoder processes' start-up and the first
    # batch's JPEG decoding overlap the weight file's read instead of following it.
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    pool = (DecodePool(workers, decoder_priority(args.decoder_priority), n_images=len(todo))
            if workers > 0 and todo and not args.cluster else None)
    stopped = False
    try:
        decoded = iter_decoded(todo_paths, spec, workers, prefetch=2 * args.batch_size,
                               max_pixels=args.max_pixels, min_size=args.min_size, pool=pool)
        return _run(args, out, fmt, parts_dir, listing, spec, sources, parts, old_meta, todo, todo_paths, decoded)
    except KeyboardInterrupt:
        stopped = True
        raise
    finally:
        if pool is not None:
            pool.close(wait=not stopped)


def _read_run_json(meta_path):
    try:
        with open(meta_path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{shown(meta_path)}: damaged run description ({type(e).__name__}: {e}); "
                         "start over with --force") from None


def _run(args, out, fmt, parts_dir, listing, spec, sources, parts, old_meta, todo, todo_paths, decoded):
    """main() after the inputs are listed and decoding has started: load the net, check a resumed
    run's settings, extract window by window into checkpoints, assemble the output."""
    net, spec, aliases, desc = load_model(args, spec)
    names = args.layers.split(",") if args.layers else default_layers(aliases, net)
    layers = resolve_layers(net, names, aliases, args.pre_relu)
    fx = FeatureExtractor(net, spec, layers, crop=args.crop, concat=args.concat)
    dims = fx.feature_dims()
    det = feature_determinants(net, spec, layers, args)
    meta = dict(desc, preprocessing=json.dumps(spec.describe()), crop=args.crop,
                layers=json.dumps([r.key for r in layers]), concat=bool(args.concat),
                minicaffe_version=__version__, backend=args.backend, batch_size=args.batch_size,
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), determinants=det,
                features_digest=determinants_digest(det),
                layer_info={r.dataset: {"blob": r.blob, "pre_relu": r.pre, "requested": r.request} for r in layers})
    if args.concat:
        meta["layer_info"] = {"concat": {"layers": [r.key for r in layers],
                                         "dims": [int(np.prod(net.blob_shapes[r.blob][1:])) for r in layers]}}
    if old_meta is not None:
        check_resumable(old_meta, meta, out)
    os.makedirs(parts_dir, exist_ok=True)
    meta_path = os.path.join(parts_dir, "run.json")
    if os.path.exists(meta_path):
        check_resumable(_read_run_json(meta_path), meta, parts_dir)
    else:
        _atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta).encode()))
    for s in sources:
        if s.widths is not None and s.widths != {k: d for k, (d, _) in dims.items()}:
            raise UsageError(f"{shown(s.where)}: holds features {s.widths}, this run makes "
                             f"{ {k: d for k, (d, _) in dims.items()} }; "
                             "it is not from this run: start over with --force")
    if args.cluster:   # shards on Dask workers, merged here (issue 10: minicaffe/distributed.py)
        from .distributed import run as run_on_cluster
        return run_on_cluster(args, listing, fx, meta, sources, parts_dir, out, fmt)
    if len(todo) < len(listing.paths):
        print(f"minicaffe: resuming: {len(listing.paths) - len(todo)} image(s) already done, {len(todo)} to go",
              file=sys.stderr)

    # ---- the run: windows of `batch_size` inputs -> one checkpoint each ---------------------
    from tqdm import tqdm
    seq = max([s.seq for s in parts], default=-1) + 1
    n_ok = n_fail = 0
    nonfinite = NonFinite()
    bar = tqdm(total=len(todo), unit="img", desc="extract", disable=args.quiet or not todo, file=sys.stderr,
               dynamic_ncols=True)
    if not args.quiet:     # a cold Numba cache makes the first batch take seconds: say why, once
        from .runtime import notice_first_compile
        notice_first_compile(lambda m: bar.write(m, file=sys.stderr))
    t0 = time.perf_counter()
    try:
        for w0 in range(0, len(todo), args.batch_size):
            window = todo_paths[w0:w0 + args.batch_size]
            images, ok_paths, failed = [], [], []
            for _ in window:
                i, img, reason = next(decoded)
                p = todo_paths[i]
                if img is None:
                    failed.append((p, reason))
                    warn(f"{shown(p)}: {reason}", bar)
                else:
                    images.append(img)
                    ok_paths.append(p)
            feats = fx.features(images) if images else {k: np.empty((0, d), np.float32) for k, (d, _) in dims.items()}
            nonfinite.add(feats)
            part = write_part(parts_dir, seq, [todo[w0 + k] for k in range(len(window))], ok_paths, feats, failed)
            sources.append(Source(ok_paths, failed, lambda part=part: _load_part_feats(part), seq, where=part))
            seq += 1
            n_ok += len(ok_paths)
            n_fail += len(failed)
            bar.update(len(window))
            bar.set_postfix(ok=n_ok, failed=n_fail)
    finally:
        bar.close()
    elapsed = time.perf_counter() - t0
    nonfinite.report()
    return finish(out, fmt, listing, sources, meta, dims, parts_dir, args.quiet,
                  f" in {elapsed:.1f}s ({n_ok / elapsed:.1f} images/s)" if todo and elapsed > 0 else "")


class NonFinite:
    """Counts NaN/inf feature values over a run (broken weights or overflow), for one warning."""

    def __init__(self):
        self.values = self.rows = 0

    def add(self, feats):
        for v in feats.values():
            bad = ~np.isfinite(v)
            if bad.any():
                self.values += int(bad.sum())
                self.rows += int(bad.any(axis=1).sum())

    def report(self, bar=None):
        if self.values:
            warn(f"{self.values} non-finite feature value(s) (NaN or inf) in {self.rows} image row(s); the weights "
                 "may hold NaN/inf or overflow (check them with python -m minicaffe.check)", bar)


def finish(out, fmt, listing, sources, meta, dims, parts_dir, quiet, rate=""):
    """Assemble OUT from every source (unless no image succeeded), remove the checkpoints, report -> exit status."""
    n_rows = count_rows(sources)
    n_failed = sum(len(s.failed) for s in sources)
    if n_rows == 0:
        shutil.rmtree(parts_dir, ignore_errors=True)
        print(f"minicaffe: error: no image could be used ({n_failed} failed; see the warnings above); "
              f"{shown(out)} was not written", file=sys.stderr)
        return 1
    n, m = assemble(out, fmt, listing, sources, meta, dims)
    shutil.rmtree(parts_dir, ignore_errors=True)
    print(f"minicaffe: wrote {shown(out)}: {n} image(s) x {', '.join(f'{k} ({d})' for k, (d, _) in dims.items())}, "
          f"{m} failed{rate}", file=sys.stderr)
    if not quiet:
        first = next(iter(dims))
        path = os.path.abspath(out)
        how = (f"h5py.File({path!r})['features/{first}'][:]" if fmt == "h5"
               else f"numpy.load({path!r})['features/{first}']")
        print(f"minicaffe: load it with {how}  (rows follow 'paths'; see docs/extract.md)", file=sys.stderr)
    return 0


def _check_same(old, new, keys, where):
    for k in keys:
        if str(old.get(k)) != str(new.get(k)):
            raise UsageError(f"{shown(where)}: was made with {k}={old.get(k)!r}, this run has {new.get(k)!r}; "
                             "use the same options to resume, or --force to start over")


if __name__ == "__main__":
    exit_with(main)
