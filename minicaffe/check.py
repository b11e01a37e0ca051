"""``python -m minicaffe.check``: compare every activation of minicaffe with a reference framework.

Runs minicaffe on an input (``--input X.npy``, ``--image IMG...`` or ``--random N``) and one or
more references (``--against``, repeatable): ``caffe-npz:BLOBS.npz`` (blobs saved from real
Caffe), ``opencv`` (OpenCV DNN's Caffe importer), ``torch`` (our prototxt -> torch.nn
translator) or ``pycaffe`` (Caffe itself). For every blob the reference has, it prints the
shape, max |ref|, max abs error, relative error (max |ours - ref| / max |ref|, the project-wide
measure), the index of the worst element and PASS/FAIL against ``--tol``, then a one-line
verdict naming the first blob (in net order) that diverges. Exit status: 0 when every compared
blob passes, 1 when any fails, 2 on a usage/file error (one line, no traceback) or when a
reference cannot run here (not installed, cannot read the net): the others still run and are
reported, then one ``error:`` line per reference that could not run. ``--json OUT``
writes the same rows for machines. With ``caffe-npz`` and no input option, the npz's own input
blob is used. It compares values only; it does not time anything, and it does not decide which
of two disagreeing frameworks is right.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np

from .cli import exit_with
from .errors import MinicaffeError
from .reference import KINDS, npz_key, reference_blobs

#: std of ``--random`` inputs: the spread of mean-subtracted 0..255 pixels
RANDOM_SCALE = 50.0


@dataclass
class Row:
    """One compared blob. ``rel`` = max |ours - ref| / max |ref|; ``worst`` indexes that element."""
    blob: str
    shape: list
    max_ref: float
    max_abs: float
    rel: float
    worst: list
    ours_at_worst: float
    ref_at_worst: float
    ok: bool
    note: str = ""


def compare_blob(name, ours, ref, tol):
    """ours, ref: arrays of one blob -> :class:`Row` (a shape mismatch or NaN is a failure)."""
    ref = np.asarray(ref)
    if ours is None:
        return Row(name, list(ref.shape), float(np.abs(ref).max()) if ref.size else 0.0, float("nan"),
                   float("nan"), [], float("nan"), float("nan"), False, "not produced by minicaffe")
    ours = np.asarray(ours)
    if ours.shape != ref.shape:
        return Row(name, list(ref.shape), float(np.abs(ref).max()) if ref.size else 0.0, float("nan"),
                   float("nan"), [], float("nan"), float("nan"), False,
                   f"shape mismatch: minicaffe {tuple(ours.shape)} vs reference {tuple(ref.shape)}")
    if ref.size == 0:
        return Row(name, list(ref.shape), 0.0, 0.0, 0.0, [], 0.0, 0.0, True)
    o64, r64 = ours.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(o64 - r64)
    bad = ~np.isfinite(diff)
    flat = int(np.argmax(bad)) if bad.any() else int(np.argmax(diff))
    idx = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    max_ref = float(np.abs(r64).max())
    max_abs = float("nan") if bad.any() else float(diff.max())
    if max_ref > 0:
        rel = max_abs / max_ref
    else:
        rel = 0.0 if max_abs == 0 else float("inf")
    ok = bool(rel <= tol)   # NaN compares False: a NaN anywhere fails
    note = "non-finite value" if bad.any() else ""
    return Row(name, list(ref.shape), max_ref, max_abs, rel, list(idx), float(o64[idx]), float(r64[idx]), ok, note)


def compare_blobs(ours, ref, tol, order=None):
    """ours: {blob: array} from minicaffe; ref: {blob or npz key: array} -> [Row] in net order.

    Every reference blob gets a row (also when minicaffe lacks it: a failure); minicaffe blobs the
    reference does not have are not compared. npz keys map back with '/' <-> '__'.
    """
    by_key = {npz_key(b): b for b in ours}
    pairs = []
    for key, r in ref.items():
        blob = key if key in ours else by_key.get(key, key)
        pairs.append((blob, r))
    if order is not None:
        rank = {b: i for i, b in enumerate(order)}
        pairs.sort(key=lambda p: rank.get(p[0], len(rank)))
    return [compare_blob(b, ours.get(b), r, tol) for b, r in pairs]


def verdict(rows, against, tol, input_name=None):
    """One line: PASS/FAIL, how many blobs, the worst or the first diverging blob."""
    if not rows:
        return f"FAIL: no blob in common with {against} (nothing was compared)"
    failed = [r for r in rows if not r.ok]
    if not failed:
        w = max(rows, key=lambda r: r.rel)
        return (f"PASS: all {len(rows)} blobs within {tol:g} relative error of {against} "
                f"(worst: {w.blob} {w.rel:.2e})")
    f = failed[0]
    what = f.note or f"rel err {f.rel:.2e} at {tuple(f.worst)}"
    hint = ""
    if f.blob == input_name:
        hint = " - the inputs differ: check preprocessing (channel order BGR/RGB, mean, scale, crop)"
    return (f"FAIL: {len(failed)} of {len(rows)} blobs exceed {tol:g} relative error vs {against}; "
            f"first divergence at blob {f.blob!r} ({what}){hint}")


def format_table(rows):
    head = ("blob", "shape", "max|ref|", "max abs err", "rel err", "worst index", "result")
    body = []
    for r in rows:
        body.append((r.blob, "x".join(str(d) for d in r.shape), f"{r.max_ref:.4g}", f"{r.max_abs:.3e}",
                     f"{r.rel:.3e}", str(tuple(r.worst)) if r.worst else "-",
                     ("PASS" if r.ok else "FAIL") + (f" ({r.note})" if r.note else "")))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.ljust(w) for c, w in zip(b, widths)))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- inputs
def _load_npy(path):
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MinicaffeError(f"{path}: cannot read the input array (.npy expected): {e}") from None
    if x.ndim == 3:
        x = x[None]          # (C, H, W) -> a batch of one
    if x.ndim != 4:
        raise MinicaffeError(f"{path}: input must be (N, C, H, W) or (C, H, W), got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def load_images(paths, crop, spec=None):
    """Images -> (N, 3, crop, crop) float32 via :func:`minicaffe.preprocess.preprocess_image`, with
    ``spec`` (a model's :class:`~minicaffe.models.Preprocessing`) or Caffe's ILSVRC recipe (resize
    256x256, RGB->BGR, subtract the mean image, center crop)."""
    import dataclasses

    from .models import CAFFE_PREPROCESSING
    from .preprocess import preprocess_image
    spec = dataclasses.replace(spec or CAFFE_PREPROCESSING, crop=crop)
    return np.stack([np.asarray(preprocess_image(p, spec), dtype=np.float32) for p in paths])


def make_input(args, net, refs):
    """Resolve --input / --image / --random (or the caffe-npz's own input blob) -> (x, description)."""
    name = net.input_names[0]
    shape = net.input_shapes[name]
    if args.input:
        return _load_npy(args.input), args.input
    if args.image:
        if len(shape) != 4 or shape[2] != shape[3]:
            raise MinicaffeError(f"--image needs a square 4-D input, the net's is {shape}")
        spec = args.model_spec.preprocessing if args.model_spec else None
        return load_images(args.image, shape[2], spec), f"{len(args.image)} image(s) " + ", ".join(args.image)
    if args.random:
        rng = np.random.default_rng(args.seed)
        x = (rng.standard_normal((args.random,) + tuple(shape[1:])) * RANDOM_SCALE).astype(np.float32)
        return x, f"random normal x{RANDOM_SCALE:g}, batch {args.random}, seed {args.seed}"
    for r in refs:
        if r.startswith("caffe-npz:"):
            blobs = reference_blobs(r, None, None, None)
            key = npz_key(name)
            if key in blobs:
                return np.ascontiguousarray(blobs[key], dtype=np.float32), f"{r.split(':', 1)[1]}[{key}]"
    raise MinicaffeError("no input: give --input X.npy, --image IMG... or --random N "
                         "(or a caffe-npz reference that stores the input blob)")


# ---------------------------------------------------------------------------------- main
def run_check(prototxt, weights, x, against, tol=1e-4, backend="cpu", net=None, errors=None):
    """Run minicaffe and each reference on x: (N, C, H, W). Returns (rows per reference, ours, net).

    ``against``: list of reference names (see :func:`minicaffe.reference.reference_blobs`);
    ``net``: an already built :class:`minicaffe.Net` of the same prototxt + weights (else built);
    ``errors``: a dict to collect reference name -> MinicaffeError of the references that cannot
    run (the others still run); without it the first such error is raised.
    """
    if net is None:
        from .net import Net
        net = Net(prototxt, weights, backend=backend)
    ours = net.forward(x)
    order = list(ours)
    out = OrderedDict()
    for kind in against:
        try:
            ref = reference_blobs(kind, prototxt, weights, x)
        except Exception as e:  # a reference's own failure (cv2.error, ...) is reported, not fatal
            if errors is None:
                raise
            errors[kind] = e if isinstance(e, MinicaffeError) else \
                MinicaffeError(f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}")
            continue
        out[kind] = compare_blobs(ours, ref, tol, order)
    return out, ours, net


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minicaffe.check",
        description="Compare every blob of minicaffe's forward pass with a reference framework.")
    p.add_argument("--model", help="a registered model name (caffenet, alexnet, googlenet, ...): its prototxt, "
                                   "converted weights and --image preprocessing become the defaults")
    p.add_argument("--prototxt", help="deploy prototxt (current or legacy V1 format)")
    p.add_argument("--weights", help=".caffemodel or converted .h5")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", help="(N, C, H, W) or (C, H, W) float32 .npy, already preprocessed")
    src.add_argument("--image", nargs="+", help="image file(s), Caffe ILSVRC preprocessing (BGR, mean image, crop)")
    src.add_argument("--random", type=int, metavar="N", help=f"N seeded random inputs (normal x{RANDOM_SCALE:g})")
    p.add_argument("--seed", type=int, default=0, help="seed of --random (default 0)")
    p.add_argument("--against", action="append", required=True, metavar="REF",
                   help="caffe-npz:BLOBS.npz | opencv | torch | pycaffe (repeat, or separate by commas, to "
                        "compare with several: --against torch,opencv)")
    p.add_argument("--tol", type=float, default=1e-4, help="max relative error per blob (default 1e-4)")
    p.add_argument("--backend", default="cpu", choices=("numpy", "cpu", "cuda"), help="minicaffe backend")
    p.add_argument("--json", metavar="OUT", help="also write the rows and verdicts as JSON ('-' = stdout)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from .runtime import auto_tune
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    args.model_spec = None
    if args.model:
        from .models import get_model
        args.model_spec = spec = get_model(args.model)
        args.prototxt = args.prototxt or spec.prototxt
        if args.weights is None:
            w = spec.weights_path()
            if w is None:
                raise MinicaffeError(f"model {args.model!r}: no converted weights ({spec.weights_name}) found; "
                                     "give --weights or convert them first (weights/README.md)")
            args.weights = str(w)
    if not args.prototxt or not args.weights:
        raise MinicaffeError("give --prototxt and --weights (or --model NAME)")
    args.against = split_against(args.against)
    if args.json and args.json != "-":
        from .cli import check_writable
        check_writable(args.json, "--json")
    for a in args.against:
        if a not in KINDS and not a.startswith("caffe-npz:"):
            raise MinicaffeError(f"--against {a!r}: choose caffe-npz:BLOBS.npz, opencv, torch or pycaffe")
    if args.random is not None and args.random < 1:
        raise MinicaffeError("--random N needs N >= 1")
    if args.tol <= 0:
        raise MinicaffeError("--tol must be > 0")
    for path in (args.prototxt, args.weights):
        if not os.path.isfile(path):
            raise MinicaffeError(f"{path}: no such file")
    from .net import Net
    net = Net(args.prototxt, args.weights, backend=args.backend)
    x, described = make_input(args, net, args.against)
    cannot = OrderedDict()
    results, ours, net = run_check(args.prototxt, args.weights, x, args.against, args.tol, args.backend, net,
                                   errors=cannot)
    if not results:          # nothing could run: the reason, on one line
        raise next(iter(cannot.values()))
    input_name = net.input_names[0]
    report = {"prototxt": args.prototxt, "weights": args.weights, "input": described,
              "input_shape": list(x.shape), "backend": args.backend, "tol": args.tol, "references": []}
    all_ok = True
    to_stdout_json = args.json == "-"
    out = sys.stderr if to_stdout_json else sys.stdout
    print(f"minicaffe ({args.backend}) vs reference on {args.prototxt} + {args.weights}, input {described} "
          f"{tuple(x.shape)}", file=out)
    for kind, rows in results.items():
        v = verdict(rows, kind, args.tol, input_name)
        unmatched = [b for b in ours if b not in {r.blob for r in rows}]
        all_ok &= v.startswith("PASS")
        print(f"\n== against {kind} ==", file=out)
        print(format_table(rows), file=out)
        if unmatched:
            print(f"(not in the reference, not compared: {', '.join(unmatched)})", file=out)
        print(v, file=out)
        report["references"].append({"against": kind, "pass": v.startswith("PASS"), "verdict": v,
                                     "not_compared": unmatched, "rows": [asdict(r) for r in rows]})
    for kind, e in cannot.items():
        print(f"\n== against {kind} ==\nnot run: {e}", file=out)
        report["references"].append({"against": kind, "pass": False, "verdict": f"not run: {e}", "not_compared": [],
                                     "rows": [], "error": str(e)})
    report["pass"] = all_ok and not cannot
    report["not_run"] = list(cannot)
    if args.json:
        text = json.dumps(report, indent=1, allow_nan=True)
        if to_stdout_json:
            print(text)
        else:
            try:
                with open(args.json, "w") as f:
                    f.write(text + "\n")
            except OSError as e:
                raise MinicaffeError(f"{args.json}: cannot write the JSON report: {e.strerror}") from None
    for kind, e in cannot.items():
        print(f"minicaffe: error: --against {kind} could not run: {e}", file=sys.stderr)
    if cannot:
        return 2
    return 0 if all_ok else 1


def split_against(values):
    """--against values, each possibly comma-separated -> references in order, each once.
    A caffe-npz path is taken whole (it may hold commas) up to the next ',opencv' / ',torch' / ..."""
    out = []
    for v in values:
        parts = v.split(",")
        k = 0
        while k < len(parts):
            item = parts[k]
            if item.startswith("caffe-npz:"):
                while k + 1 < len(parts) and parts[k + 1].strip() not in KINDS and \
                        not parts[k + 1].startswith("caffe-npz:"):
                    k += 1
                    item += "," + parts[k]
            item = item.strip() if not item.startswith("caffe-npz:") else item
            if item and item not in out:
                out.append(item)
            k += 1
    return out


if __name__ == "__main__":
    exit_with(main)
