"""``python -m minicaffe.check``: compare every activation of minicaffe with a reference framework.

The command: it resolves ``--model`` (prototxt, converted weights, the ``--image`` preprocessing),
the input (``--input X.npy``, ``--image IMG...``, ``--random N``, or the caffe-npz's own input
blob) and the references (``--against``, repeatable or comma-separated), runs
:func:`minicaffe.comparison.run_check`, and prints per reference the table of every blob (shape,
max |ref|, max abs error, relative error, worst index, PASS/FAIL against ``--tol``) and the
one-line verdict naming the first blob that diverges; ``--json OUT`` writes the same rows for
machines. Exit status: 0 when every compared blob passes, 1 when any fails, 2 on a usage/file error
(one line, no traceback) or when a reference cannot run here (not installed, cannot read the net):
the others still run and are reported, then one ``error:`` line per reference that could not run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import OrderedDict
from dataclasses import asdict

from ..cli import check_writable
from ..comparison import (
    RANDOM_SCALE,
    format_table,
    load_images,
    load_npy,
    random_input,
    run_check,
    stored_input,
    verdict,
)
from ..errors import MinicaffeError
from ..reference import KINDS
from ..runtime import auto_tune


def make_input(args, net, refs):
    """Resolve --input / --image / --random (or the caffe-npz's own input blob) -> (x, description)."""
    name = net.input_names[0]
    shape = net.input_shapes[name]
    if args.input:
        return load_npy(args.input), args.input
    if args.image:
        if len(shape) != 4 or shape[2] != shape[3]:
            raise MinicaffeError(f"--image needs a square 4-D input, the net's is {shape}")
        spec = args.model_spec.preprocessing if args.model_spec else None
        return load_images(args.image, shape[2], spec), f"{len(args.image)} image(s) " + ", ".join(args.image)
    if args.random:
        return (random_input(shape, args.random, args.seed),
                f"random normal x{RANDOM_SCALE:g}, batch {args.random}, seed {args.seed}")
    stored = stored_input(refs, name)
    if stored is not None:
        return stored
    raise MinicaffeError("no input: give --input X.npy, --image IMG... or --random N "
                         "(or a caffe-npz reference that stores the input blob)")


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
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    args.model_spec = None
    if args.model:
        from ..models import get_model
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
    from ..net import Net
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
