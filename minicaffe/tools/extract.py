"""``python -m minicaffe.extract``: DeCAF features of an image collection into one HDF5 (or .npz) file.

The command: it parses the arguments, lists the INPUTs (:mod:`minicaffe.datasets`), and drives
the library in :mod:`minicaffe.features`: decoding starts in worker processes
(:mod:`~minicaffe.features.decode`) before the net loads (:func:`~minicaffe.features.load_model`),
then the main process normalises and forwards fixed windows of ``--batch-size`` inputs
(:class:`~minicaffe.features.FeatureExtractor`) and writes each as an atomic checkpoint part in
``OUT.parts/``; at the end the parts are assembled, in input order, into ``OUT``
(:mod:`~minicaffe.features.store`), so ``OUT`` is either absent or complete and a run killed at
any moment (even SIGKILL) continues with ``--resume`` to a file equal to an uninterrupted run's.
``--cluster`` runs the same work as Dask shards (:mod:`~minicaffe.features.cluster`). The output
layout is described in :mod:`minicaffe.features.store` and docs/extract.md.

What the user sees is decided here: unusable images are listed in ``failed`` with a reason and
one warning line; the exit status is 0 when any image succeeded, 1 when none did (then no OUT is
written), 2 on a usage error, 130 on Ctrl-C (whose line says to continue with ``--resume``). One
run at a time writes an OUT (a second gets a one-line error); ``--resume`` names what differs
when the net, weights, preprocessing, layers, crop or backend changed. It does not train or
fine-tune.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

from .. import __version__
from ..cli import Interrupted, exit_with, os_error_line, shown
from ..datasets import InputError, list_inputs
from ..errors import UsageError
from ..features.decode import DECODER_PRIORITIES, DecodePool, decoder_priority, iter_decoded
from ..features.extractor import FeatureExtractor, default_layers, resolve_layers
from ..features.model import default_model, load_model, preprocessing_for
from ..features.store import (
    PARTS_SUFFIX,
    OutputLock,
    Source,
    assemble,
    atomic_write,
    check_resumable,
    count_rows,
    determinants_digest,
    drop_if_empty,
    feature_determinants,
    has_checkpoints,
    output_format,
    part_features,
    read_output,
    read_parts,
    read_run_json,
    write_part,
)
from ..images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE
from ..models import MODELS
from ..preprocess import CROP_MODES

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


def model_options(args) -> dict:
    """The parsed ``--model/--prototxt/--weights/--preprocess/--mean/--crop-size`` -> keywords of
    :func:`~minicaffe.features.preprocessing_for` (and, with backend and strict, of load_model)."""
    return dict(model=args.model, prototxt=args.prototxt, weights=args.weights, preprocess=args.preprocess,
                mean=args.mean, crop_size=args.crop_size)


def warn(msg, bar=None):
    line = f"minicaffe: warning: {msg}"
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..runtime import auto_tune
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
    spec = preprocessing_for(**model_options(args))
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
    parts = read_parts(parts_dir, warn) if os.path.isdir(parts_dir) else []
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


def _run(args, out, fmt, parts_dir, listing, spec, sources, parts, old_meta, todo, todo_paths, decoded):
    """main() after the inputs are listed and decoding has started: load the net, check a resumed
    run's settings, extract window by window into checkpoints, assemble the output."""
    net, spec, aliases, desc = load_model(**model_options(args), backend=args.backend, strict=args.strict,
                                          preprocessing=spec)
    names = args.layers.split(",") if args.layers else default_layers(aliases, net)
    layers = resolve_layers(net, names, aliases, args.pre_relu)
    fx = FeatureExtractor(net, spec, layers, crop=args.crop, concat=args.concat)
    dims = fx.feature_dims()
    det = feature_determinants(net, spec, layers, concat=args.concat, crop=args.crop, backend=args.backend)
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
        check_resumable(read_run_json(meta_path), meta, parts_dir)
    else:
        atomic_write(meta_path, lambda fh: fh.write(json.dumps(meta).encode()))
    for s in sources:
        if s.widths is not None and s.widths != {k: d for k, (d, _) in dims.items()}:
            raise UsageError(f"{shown(s.where)}: holds features {s.widths}, this run makes "
                             f"{ {k: d for k, (d, _) in dims.items()} }; "
                             "it is not from this run: start over with --force")
    if args.cluster:   # shards on Dask workers, merged here like the checkpoints
        return _run_on_cluster(args, listing, fx, meta, sources, parts_dir, out, fmt)
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
        from ..runtime import notice_first_compile
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
            sources.append(Source(ok_paths, failed, lambda part=part: part_features(part), seq, where=part))
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


def _run_on_cluster(args, listing, fx, meta, sources, parts_dir, out, fmt):
    """--cluster: the shards on Dask workers (:func:`minicaffe.features.cluster.run_cluster`), then the
    same merge as the single-machine run -> exit status."""
    from ..features import cluster

    config = cluster.ModelConfig.build(fx, **model_options(args), backend=args.backend, pre_relu=args.pre_relu,
                                       weights_sha1=meta["weights_sha1"])
    report = cluster.run_cluster(args.cluster, listing, fx, config, sources, parts_dir, shard_size=args.shard_size,
                                 batch_size=args.batch_size, max_pixels=args.max_pixels, min_size=args.min_size,
                                 progress=_ClusterLines(args.quiet))
    nonfinite = NonFinite()
    nonfinite.values, nonfinite.rows = report.nonfinite
    nonfinite.report()
    rate = (f" in {report.elapsed:.1f}s ({report.images / report.elapsed:.1f} images/s on {report.workers} worker(s))"
            if report.images and report.elapsed else "")
    t_merge = time.perf_counter()
    # writes OUT and removes the parts (a late orphaned write may race with the removal: ignored)
    rc = finish(out, fmt, listing, report.sources, meta, fx.feature_dims(), parts_dir, True, rate)
    report.merge_s = time.perf_counter() - t_merge
    if rc == 0 and report.results and not args.quiet:
        print("minicaffe: " + cluster.summarize(report.results, report.elapsed), file=sys.stderr)
    return rc


class _ClusterLines:
    """A cluster run's progress on stderr: the resume and start lines, a bar, one line per failed image."""

    def __init__(self, quiet):
        self.quiet, self.bar, self.shards = quiet, None, 0

    def warning(self, message):
        warn(message)

    def resuming(self, done, todo):
        print(f"minicaffe: resuming: {done} image(s) already done, {todo} to go", file=sys.stderr)

    def started(self, shards, shard_images, workers, scheduler, dashboard, images):
        from tqdm import tqdm
        link = dashboard or "not available (pip install bokeh>=3.1 where the scheduler runs)"
        print(f"minicaffe: {shards} shard(s) of <= {shard_images} image(s) on {workers} Dask worker(s) at "
              f"{scheduler}; dashboard: {link}", file=sys.stderr)
        self.shards = shards
        self.bar = tqdm(total=images, unit="img", desc="extract", disable=self.quiet, file=sys.stderr,
                        dynamic_ncols=True)

    def shard_done(self, result, shards_done, images_done, elapsed):
        for p, reason in result["failed"]:
            warn(f"{shown(p)}: {reason}", self.bar)
        self.bar.update(result["n"])
        self.bar.set_postfix_str(f"shards {shards_done}/{self.shards}, {images_done / elapsed:.1f} images/s",
                                 refresh=False)

    def stopped(self):
        if self.bar is not None:
            self.bar.close()


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


if __name__ == "__main__":
    exit_with(main)
