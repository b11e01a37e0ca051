"""Feature extraction on Dask workers: shards of the input list, each a part file, merged like checkpoints.

:func:`run_cluster` (called by the extract command with ``--cluster``, once it has listed the
inputs, loaded the net and read what an interrupted run left) splits the images still to do into
shards of ``shard_size`` inputs and submits one ``dask.distributed`` task per shard. A worker
process loads the net once (:func:`worker_extractor` keeps it in a module-level cache) and for its
shard decodes, preprocesses and forwards the images with the very functions of the single-machine
run (``preprocess.worker_load``, :class:`~minicaffe.features.FeatureExtractor`), then writes one
HDF5 part file ``OUT.parts/shard-<run id>-<seq>.h5`` under a temporary name and renames it, so a
part that exists is complete. The runner returns a :class:`ClusterReport` whose ``sources`` (every
finished part plus the checkpoints or finished output an earlier run left, each path once) the
caller merges with :func:`minicaffe.features.store.assemble`: the same layout, provenance
attributes and ``failed`` list as a single-machine run, rows in input order.

Fault tolerance is Dask's plus the part files: when a worker process dies mid-shard the scheduler
reruns the task on another worker (the rerun writes the same part name); when the driver dies,
a resumed run skips every path found in a finished part and gives the rest new shards under a new
run id, and a part written late by an orphaned task of the dead driver is dropped at merge time
(first finished part wins per path). Workers must see the output folder and the images at the same
absolute paths as the driver (a shared file system). This module prints nothing (progress goes to a
:class:`ClusterProgress`), and does not start remote machines, copy files between them, or balance
GPUs itself: start ``dask scheduler`` / ``dask worker`` (one worker process per GPU with
``--backend cuda``) as docs/distributed.md shows.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid

import numpy as np

from .. import __version__
from ..cli import shown
from ..errors import ClusterError, MinicaffeError, UsageError
from .extractor import FeatureExtractor, resolve_layers
from .model import load_model
from .store import Source

SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".h5"
DEFAULT_SHARD_SIZE = 256
#: how long the driver waits for a first worker on an existing scheduler
WORKER_WAIT_S = 60


# ---------------------------------------------------------------------------------- worker side
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What a worker needs to rebuild the driver's FeatureExtractor: paths and options, never arrays."""
    model: str | None
    prototxt: str | None
    weights: str | None
    preprocess: str
    mean: str
    crop_size: int | None
    backend: str
    layers: tuple
    pre_relu: bool
    concat: bool
    crop: str
    weights_sha1: str
    version: str

    @classmethod
    def build(cls, fx, *, model: str | None = None, prototxt: str | None = None, weights: str | None = None,
              preprocess: str = "caffe", mean: str = "model", crop_size: int | None = None, backend: str = "cpu",
              pre_relu: bool = False, weights_sha1: str = "") -> ModelConfig:
        """The driver's extractor ``fx`` and the :func:`~minicaffe.features.load_model` options it was built with."""
        def ab(p):      # workers may run in another folder
            return os.path.abspath(p) if p else p
        return cls(model, ab(prototxt), ab(weights), preprocess, mean, crop_size, backend,
                   tuple(r.request for r in fx.layers), bool(pre_relu), bool(fx.concat), fx.crop, weights_sha1,
                   __version__)


_CACHE: dict = {}                 # ModelConfig -> (FeatureExtractor, lock, seconds it took to load)
_CACHE_LOCK = threading.Lock()


def worker_extractor(cfg: ModelConfig):
    """-> (FeatureExtractor, forward lock, load seconds): built on this process's first shard, then reused."""
    with _CACHE_LOCK:
        if cfg in _CACHE:
            return _CACHE[cfg]
        if cfg.version != __version__:
            raise ClusterError(f"worker {socket.gethostname()} runs minicaffe {__version__}, the driver "
                               f"{cfg.version}; install the same version everywhere")
        t0 = time.perf_counter()
        net, spec, aliases, desc = load_model(model=cfg.model, prototxt=cfg.prototxt, weights=cfg.weights,
                                              preprocess=cfg.preprocess, mean=cfg.mean, crop_size=cfg.crop_size,
                                              backend=cfg.backend)
        if desc["weights_sha1"] != cfg.weights_sha1:
            raise ClusterError(f"worker {socket.gethostname()}: weights {desc['weights'] or cfg.model} have sha1 "
                               f"{desc['weights_sha1']}, the driver's {cfg.weights_sha1}; every machine needs the "
                               "same weights file")
        layers = resolve_layers(net, cfg.layers, aliases, cfg.pre_relu)
        fx = FeatureExtractor(net, spec, layers, crop=cfg.crop, concat=cfg.concat)
        # one forward at a time per process: Net keeps its blobs between layers; decoding runs outside the lock
        _CACHE[cfg] = (fx, threading.Lock(), time.perf_counter() - t0)
        return _CACHE[cfg]


@dataclasses.dataclass
class ShardJob:
    """One task: ``paths`` as listed (written to the output) and ``files`` (absolute, opened by the worker)."""
    seq: int
    part: str                     # absolute final path of the part file
    paths: list
    files: list
    batch_size: int
    max_pixels: int
    min_size: int


def run_shard(cfg: ModelConfig, job: ShardJob):
    """Runs on a worker: the shard's images -> one part file. Returns timings and the failed rows."""
    from ..preprocess import worker_load
    t_start = time.time()
    was_cached = cfg in _CACHE
    fx, lock, load_s = worker_extractor(cfg)
    dims = fx.feature_dims()
    chunks = {k: [] for k in dims}
    ok_paths, failed = [], []
    decode_s = forward_s = 0.0
    for w0 in range(0, len(job.paths), job.batch_size):
        t0 = time.perf_counter()
        images = []
        for k in range(w0, min(w0 + job.batch_size, len(job.paths))):
            _, img, reason = worker_load((k, job.files[k], fx.spec, job.max_pixels, job.min_size))
            if img is None:
                failed.append((job.paths[k], reason))
            else:
                images.append(img)
                ok_paths.append(job.paths[k])
        t1 = time.perf_counter()
        decode_s += t1 - t0
        if images:
            x = fx.normalize(images)
            with lock:
                feats = fx.forward(x, len(images))
            for k, v in feats.items():
                chunks[k].append(v)
        forward_s += time.perf_counter() - t1
    t0 = time.perf_counter()
    feats = {k: np.concatenate(v) if v else np.empty((0, dims[k][0]), np.float32) for k, v in chunks.items()}
    nonfinite = sum(int(np.count_nonzero(~np.isfinite(v))) for v in feats.values())
    bad_rows = np.zeros(len(ok_paths), bool)
    for v in feats.values():
        bad_rows |= ~np.isfinite(v).all(axis=1)
    nonfinite_rows = int(bad_rows.sum())
    write_shard(job.part, ok_paths, failed, feats, seq=job.seq)
    write_s = time.perf_counter() - t0
    return {"seq": job.seq, "part": job.part, "n": len(job.paths), "n_ok": len(ok_paths), "failed": failed,
            "host": socket.gethostname(), "pid": os.getpid(), "net_load_s": 0.0 if was_cached else load_s,
            "decode_s": decode_s, "forward_s": forward_s, "write_s": write_s, "start": t_start, "end": time.time(),
            "threads": _threads(), "nonfinite": nonfinite, "nonfinite_rows": nonfinite_rows}


def _threads():
    try:
        import numba
        return int(numba.get_num_threads())
    except Exception:  # noqa: BLE001 - only informative
        return 0


def _probe(parts_dir, first_file):
    """Runs on every worker before submitting: can it see the shared folders?"""
    return {"host": socket.gethostname(), "pid": os.getpid(), "parts": os.path.isdir(parts_dir),
            "input": first_file is None or os.path.exists(first_file), "version": __version__}


# ---------------------------------------------------------------------------------- part files
def write_shard(path, paths, failed, feats, seq=-1):
    """One shard -> HDF5 ``path`` (temp name + fsync + rename: the final name only ever holds a whole file).

    paths: (n,) written rows; failed: [(path, reason)]; feats: dataset name -> (n, D) float32.
    Paths and reasons are stored as their exact file-system bytes (a file name may be any bytes).
    """
    import h5py
    raw = h5py.string_dtype("ascii")      # h5py's type for arbitrary bytes
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("paths", data=np.asarray([os.fsencode(p) for p in paths], dtype=object).reshape(-1),
                         dtype=raw)
        f.create_dataset("failed", data=np.asarray([[os.fsencode(p), os.fsencode(r)] for p, r in failed],
                                                   dtype=object).reshape(-1, 2), dtype=raw)
        g = f.create_group("features")
        for k, v in feats.items():
            g.create_dataset(k, data=np.asarray(v, np.float32))
        f.attrs.update(seq=seq, host=socket.gethostname(), pid=os.getpid(), created=time.time())
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_shards(parts_dir, warn=None):
    """-> [Source] of every finished part in ``parts_dir``, oldest run first; temp files ignored.

    An unreadable part is skipped (its images are extracted again) with ``warn(message)``."""
    import h5py
    out = []
    if not os.path.isdir(parts_dir):
        return out
    for fn in sorted(os.listdir(parts_dir)):
        if not (fn.startswith(SHARD_PREFIX) and fn.endswith(SHARD_SUFFIX)):
            continue
        path = os.path.join(parts_dir, fn)
        try:
            with h5py.File(path, "r") as f:
                # bytes either way: utf-8 strings (older parts) or raw file-name bytes decode the same
                paths = [os.fsdecode(b) for b in f["paths"][()].reshape(-1)]
                failed = [(os.fsdecode(a), os.fsdecode(b)) for a, b in f["failed"][()].reshape(-1, 2)]
                seq = int(f.attrs.get("seq", -1))
                widths = {}
                for k, ds in f["features"].items():
                    if ds.ndim != 2 or ds.shape[0] != len(paths) or ds.dtype != np.float32:
                        raise ValueError(f"features {k!r} are {ds.dtype} {ds.shape}, expected float32 "
                                         f"({len(paths)}, D)")
                    widths[k] = ds.shape[1]
        except Exception as e:  # noqa: BLE001 - a damaged part is redone, never trusted
            if warn:
                warn(f"{shown(path)}: unreadable part ({type(e).__name__}: {e}); its images will be extracted again")
            continue

        def load(path=path):
            with h5py.File(path, "r") as f:
                return {k: f["features"][k][()] for k in f["features"]}
        out.append(Source(paths, failed, load, seq, widths, path))
    return out


def dedupe(sources):
    """Keep each path's first occurrence over ``sources`` (in order) -> (sources, number of rows dropped).

    A path is in two parts only when an orphaned task of a killed driver finished after the resumed
    driver had listed the parts; both rows come from the same net and image, so either is right.
    """
    seen, out, dropped = set(), [], 0
    for s in sources:
        keep = [j for j, p in enumerate(s.paths) if p not in seen]
        fail = [r for r in s.failed if r[0] not in seen]
        seen.update(s.paths[j] for j in keep)
        seen.update(p for p, _ in fail)
        if len(keep) == len(s.paths) and len(fail) == len(s.failed):
            out.append(s)
            continue
        dropped += len(s.paths) - len(keep) + len(s.failed) - len(fail)
        if keep or fail:
            idx = np.asarray(keep, np.int64)
            out.append(Source([s.paths[j] for j in keep], fail,
                              lambda s=s, idx=idx: {k: v[idx] for k, v in s.feats().items()}, s.seq))
    return out, dropped


# ---------------------------------------------------------------------------------- cluster
def parse_cluster(spec):
    """``local``, ``local:N`` or a scheduler address -> ("local", N) or ("address", str)."""
    s = (spec or "").strip()
    if s == "local" or s.startswith("local:"):
        n = s[6:] if s != "local" else str(max(1, os.cpu_count() or 1))
        if not n.isdigit() or int(n) < 1:
            raise UsageError(f"--cluster {spec!r}: local:N needs a number of worker processes >= 1, e.g. local:2")
        return "local", int(n)
    if "://" in s and s.split("://", 1)[1]:
        return "address", s
    raise UsageError(f"--cluster {spec!r}: expected local, local:N or a scheduler address such as tcp://10.0.0.5:8786")


def _threads_env(n, threads=None):
    # dask's nanny pins OMP/MKL/OpenBLAS to 1 thread per worker process; a local cluster of N
    # processes on C cores gets C // N BLAS and Numba threads each instead, so 1 worker uses every core
    t = str(threads or max(1, (os.cpu_count() or 1) // n))
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "NUMBA_NUM_THREADS": t,
            "MALLOC_TRIM_THRESHOLD_": "65536"}


def connect(spec, threads=None):
    """-> (Client, LocalCluster or None). A local cluster listens on 127.0.0.1 only.

    threads: BLAS/Numba threads per local worker process (default: cores // N).
    """
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("--cluster needs Dask: pip install 'dask[distributed]' (or minicaffe[dask])") from None
    kind, val = parse_cluster(spec)
    if kind == "local":
        env = _threads_env(val, threads)
        # the nanny takes these from os.environ over its config, and copies its config into os.environ:
        # set them here for the spawn, pass them to the worker too, and restore ours afterwards
        saved = {k: os.environ.get(k) for k in env}
        # Ctrl-C reaches every process of the terminal's group: worker processes started with SIGINT
        # ignored (kept across exec; Python then installs no handler) leave it to this process,
        # which cancels the shards and closes the cluster, instead of each printing a traceback
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is \
            threading.main_thread() else None
        try:
            os.environ.update(env)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": env}):
                cluster = LocalCluster(n_workers=val, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR, env=env)
        finally:
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return Client(cluster), cluster
    try:
        client = Client(val, timeout="20s")
    except (OSError, TimeoutError) as e:
        raise ClusterError(f"--cluster {val}: cannot reach the Dask scheduler ({e}); start it with "
                           "`dask scheduler` and give its tcp://HOST:PORT") from None
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT_S)
    except (TimeoutError, OSError):
        client.close()
        raise ClusterError(f"--cluster {val}: no worker joined within {WORKER_WAIT_S} s; start some with "
                           f"`dask worker {val} --nthreads 1`") from None
    return client, None


def dashboard(client):
    """The dashboard's URL, or None: without bokeh the scheduler's HTTP port serves no dashboard pages."""
    try:
        if not client.run_on_scheduler(_has_bokeh):
            return None
        if "dashboard" in client.scheduler_info().get("services", {}):
            return client.dashboard_link
    except Exception:  # noqa: BLE001 - only informative
        pass
    return None


def _has_bokeh():
    import importlib.util
    return importlib.util.find_spec("bokeh") is not None


# ---------------------------------------------------------------------------------- driver
@dataclasses.dataclass
class ClusterReport:
    """What one :func:`run_cluster` did.

    results: one dict per shard finished in this run (seq, part, n, n_ok, failed, host, pid,
    net_load_s, decode_s, forward_s, write_s, start, end, threads, nonfinite, nonfinite_rows);
    sources: everything to merge into the output (earlier runs' rows included), each path once.
    """
    results: list
    elapsed: float              # seconds from the first submission to the last shard
    workers: int                # worker processes that took shards (or answered the probe)
    shards: int                 # shards submitted in this run
    images: int                 # inputs those shards covered (failed ones included)
    resumed: int                # inputs an earlier run had already done
    dropped_duplicates: int     # rows of late orphaned parts dropped at the merge
    run_id: str
    sources: list = dataclasses.field(default_factory=list, repr=False)
    merge_s: float = 0.0        # set by the caller that merges the sources

    @property
    def nonfinite(self) -> tuple[int, int]:
        """(NaN/inf feature values, rows holding any) over this run's shards."""
        return (sum(r.get("nonfinite", 0) for r in self.results),
                sum(r.get("nonfinite_rows", 0) for r in self.results))


class ClusterProgress:
    """What :func:`run_cluster` reports while it runs; this base reports nothing (the extract
    command's subclass prints the lines and the progress bar)."""

    def warning(self, message: str) -> None:
        """A damaged part was set aside (its images are extracted again)."""

    def resuming(self, done: int, todo: int) -> None:
        """``done`` inputs were found finished, ``todo`` go to the workers."""

    def started(self, shards: int, shard_images: int, workers: int, scheduler: str, dashboard: str | None,
                images: int) -> None:
        """The shards are about to be submitted."""

    def shard_done(self, result: dict, shards_done: int, images_done: int, elapsed: float) -> None:
        """One shard finished (``result``: one entry of :attr:`ClusterReport.results`)."""

    def stopped(self) -> None:
        """The last shard finished, or the run stopped on an error."""


def run_cluster(cluster: str, listing, fx: FeatureExtractor, config: ModelConfig, sources: list, parts_dir: str, *,
                shard_size: int | None = None, batch_size: int = 64, max_pixels: int | None = None,
                min_size: int | None = None, progress: ClusterProgress | None = None) -> ClusterReport:
    """Extract every input of ``listing`` not in ``sources`` on the cluster -> :class:`ClusterReport`.

    cluster: ``local[:N]`` or a scheduler address (:func:`parse_cluster`); listing: the inputs
    (``paths``, in order); fx: the driver's extractor (its feature widths are checked against every
    part); config: what the workers rebuild it from (:meth:`ModelConfig.build`); sources: what an
    earlier run left (a finished output, single-machine checkpoints); finished shard parts in
    ``parts_dir`` are added here. Raises ClusterError when a shard fails for good or an input ends
    up in no part (rerunning resumes).
    """
    from ..images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE
    progress = progress or ClusterProgress()
    shard_size = shard_size if shard_size is not None else DEFAULT_SHARD_SIZE
    if shard_size < 1:
        raise UsageError("--shard-size must be at least 1")
    parse_cluster(cluster)                     # a bad spelling is a usage error before any work
    dims = fx.feature_dims()
    done_parts = read_shards(parts_dir, progress.warning)
    done = {p for s in [*sources, *done_parts] for p in [*s.paths, *(q for q, _ in s.failed)]}
    todo = [i for i, p in enumerate(listing.paths) if p not in done]
    if done:
        progress.resuming(len(done), len(todo))

    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]   # sorts oldest run first
    parts_abs = os.path.abspath(parts_dir)
    jobs = []
    for seq, s0 in enumerate(range(0, len(todo), shard_size)):
        idx = todo[s0:s0 + shard_size]
        paths = [listing.paths[i] for i in idx]
        jobs.append(ShardJob(seq, os.path.join(parts_abs, f"{SHARD_PREFIX}{run_id}-{seq:07d}{SHARD_SUFFIX}"),
                             paths, [os.path.abspath(p) for p in paths], batch_size,
                             DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
                             DEFAULT_MIN_SIZE if min_size is None else min_size))
    results, elapsed, n_workers = [], 0.0, 0
    if jobs:
        results, elapsed, n_workers = _submit(cluster, config, jobs, parts_abs, progress)

    # the part files on disk are the truth: rows of a shard the driver saw finish, and any late ones
    merged, dropped = dedupe([*sources, *read_shards(parts_dir, progress.warning)])
    missing = set(listing.paths) - {p for s in merged for p in [*s.paths, *(q for q, _ in s.failed)]}
    if missing:
        raise ClusterError(f"{len(missing)} image(s) (e.g. {shown(min(missing))}) are in no finished part; "
                           "rerun with --resume")
    want = {k: d for k, (d, _) in dims.items()}
    for s in merged:
        if s.widths is not None and s.widths != want:
            raise ClusterError(f"{s.where}: holds features {s.widths}, this run makes {want}; it is not from this "
                               "run: start over with --force")
    return ClusterReport(results=results, elapsed=elapsed, workers=n_workers, shards=len(jobs),
                         images=sum(r["n"] for r in results), resumed=len(done), dropped_duplicates=dropped,
                         run_id=run_id, sources=merged)


def _submit(cluster, cfg, jobs, parts_abs, progress):
    """Submit every shard, follow them to the end -> (results, seconds, workers seen)."""
    from distributed import as_completed
    try:
        from distributed.client import FutureCancelledError
    except ImportError:  # pragma: no cover - older distributed: the plain CancelledError
        from concurrent.futures import CancelledError as FutureCancelledError
    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover - moved in some versions
        from distributed import KilledWorker

    client, local = connect(cluster)
    total = sum(len(j.paths) for j in jobs)
    try:
        # an input the driver sees, to check that the workers see it too (a missing one is just a failed row)
        seen = next((f for j in jobs for f in j.files[:1] if os.path.exists(f)), None)
        probes = client.run(_probe, parts_abs, seen)
        for addr, pr in probes.items():
            if not pr["parts"]:
                raise ClusterError(f"worker {addr} ({pr['host']}) cannot see {parts_abs}; the output folder must "
                                   "be on a file system every worker mounts at the same path")
            if not pr["input"]:
                raise ClusterError(f"worker {addr} ({pr['host']}) cannot see {seen}; the images must "
                                   "be on a file system every worker mounts at the same path")
        progress.started(len(jobs), len(jobs[0].paths), len(probes), client.scheduler.address, dashboard(client),
                         total)
        t0 = time.perf_counter()
        futures = [client.submit(run_shard, cfg, j, key=f"minicaffe-shard-{os.path.basename(j.part)[6:-3]}",
                                 pure=False) for j in jobs]
        results, n_img = [], 0
        try:
            for fut in as_completed(futures):
                try:
                    r = fut.result()
                except KilledWorker as e:
                    raise ClusterError(f"a shard was running on workers that died {_allowed_failures()} times "
                                       f"({e}); finished shards are kept: rerun with --resume") from None
                except FutureCancelledError:
                    raise ClusterError("the scheduler cancelled the shards (was it restarted?); finished shards "
                                       "are kept: rerun with --resume") from None
                except MinicaffeError as e:
                    raise ClusterError(f"on a worker: {e}") from None
                except Exception as e:  # noqa: BLE001 - e.g. the shared disk is full: one line, then --resume
                    raise ClusterError(f"a shard failed on a worker ({type(e).__name__}: {e}); finished shards "
                                       "are kept: rerun with --resume") from None
                results.append(r)
                n_img += r["n"]
                progress.shard_done(r, len(results), n_img, time.perf_counter() - t0)
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            progress.stopped()
        elapsed = time.perf_counter() - t0
        n_workers = len({(r["host"], r["pid"]) for r in results})
        return results, elapsed, max(n_workers, len(probes))
    finally:
        client.close()
        if local is not None:
            local.close()


def _allowed_failures():
    import dask
    return dask.config.get("distributed.scheduler.allowed-failures", 3) + 1


def summarize(results, elapsed):
    """Where the workers' time went: net loading, decode+resize, normalise+forward, part writing, the rest."""
    busy = sum(r["end"] - r["start"] for r in results)
    parts = {k: sum(r[k] for r in results) for k in ("net_load_s", "decode_s", "forward_s", "write_s")}
    other = busy - sum(parts.values())
    shares = ", ".join(f"{k[:-2].replace('_', ' ')} {v / busy:.0%}" for k, v in parts.items()) if busy else ""
    threads = sorted({r["threads"] for r in results})
    return (f"{len(results)} shard(s), worker busy time {busy:.1f}s over {elapsed:.1f}s wall: {shares}, "
            f"other {other / busy if busy else 0:.0%}; {json.dumps(threads)} Numba thread(s) per worker")
