"""``python -m minicaffe.profile``: where the forward pass spends its time, layer by layer (DeCAF's figure).

The command: it parses the arguments (``--batch 1,10,64``, ``--threads``), resolves ``--model`` to
the registry's prototxt, checks that every named file exists, runs :func:`minicaffe.profiling.profile`
with a progress line per batch size on stderr (unless ``-q``), prints each batch's per-layer table
(or ``caffe time``'s format with ``--caffe-format``) and writes ``--json`` / ``--plot`` / ``--html``.
Exit status 0, or 2 with one error line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .. import profiling
from ..backend import BACKENDS
from ..errors import MinicaffeError
from ..runtime import auto_tune


def _batches(text):
    try:
        out = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        out = []
    if not out or any(b < 1 for b in out):
        raise MinicaffeError(f"--batch wants positive integers separated by commas (e.g. 1,10,64), got {text!r}")
    return out


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minicaffe.profile",
        description="Per-layer forward-time decomposition of a Caffe net (DeCAF's figure), optionally beside "
                    "real `caffe time` logs.",
        epilog="example: python -m minicaffe.profile --model caffenet --batch 1,10,64 --plot caffenet.png "
               "--caffe-log ../shared/reference/caffe_time_logs/*.log")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a registered model name (e.g. caffenet)")
    src.add_argument("--prototxt", help="a deploy prototxt")
    p.add_argument("--weights", help=".caffemodel or .h5 (default: seeded random weights; timings do not "
                                     "depend on values)")
    p.add_argument("--batch", default="1", help="batch sizes, comma separated (default 1)")
    p.add_argument("--backend", default="cpu", choices=BACKENDS)
    p.add_argument("--iterations", type=int, default=10, help="timed forwards per batch size (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed forwards first, >= 1 (default 2)")
    p.add_argument("--threads", type=int, help="Numba threads for the cpu backend (default: Numba's, "
                                               "NUMBA_NUM_THREADS or all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
    p.add_argument("--json", metavar="OUT", help="write the full report as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write the stacked-bar chart (matplotlib)")
    p.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML page: the chart and every "
                                                      "batch's per-layer table")
    p.add_argument("--caffe-log", nargs="+", default=[], metavar="FILE",
                   help="`caffe time` logs to compare with (batch size from the log or a _bN file name)")
    p.add_argument("--caffe-format", action="store_true", help="print our numbers as `caffe time` does")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    batches = _batches(args.batch)
    if args.threads is not None:
        import numba
        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            raise MinicaffeError(f"--threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} "
                                 f"(NUMBA_NUM_THREADS), got {args.threads}")
        numba.set_num_threads(args.threads)
    if args.model:
        from ..models import get_model
        prototxt = get_model(args.model).prototxt
    else:
        prototxt = args.prototxt
    for f in [prototxt] + ([args.weights] if args.weights else []) + list(args.caffe_log):
        if not os.path.isfile(f):
            raise MinicaffeError(f"{f}: no such file")
    progress = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    report = profiling.profile(prototxt, args.weights, batches, args.backend, args.iterations, args.warmup,
                               args.caffe_log, args.seed, model=args.model, progress=progress)
    for i, run in enumerate(report["runs"]):
        if i:
            print()
        print(profiling.format_caffe(run) if args.caffe_format else profiling.format_table(report, run))
    unmatched = [c for c in report["caffe_logs"] if c["batch"] not in batches]
    for c in unmatched:
        print(f"note: {c['path']} is for batch {c['batch']}, which was not profiled (--batch {args.batch})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        profiling.plot(report, args.plot)
        print(f"wrote {args.plot}")
    if args.html:
        profiling.write_html_report(report, args.html, args.plot)
        print(f"wrote {args.html}")
    return 0
