"""``python -m minicaffe.report OUT.html --image PNG ...``: one self-contained HTML page from existing pictures.

The command: it parses the arguments, checks that every ``--image`` exists and ``OUT.html`` can be
written, lays the pictures and paragraphs out with :mod:`minicaffe.html_report` and, with
``--check``, opens the page in headless Chromium and fails unless every image loaded. Exit status 0,
or 2 with one error line.
"""
from __future__ import annotations

import argparse
import os

from ..cli import check_writable
from ..errors import UsageError
from ..html_report import Figure, Text, browser_check, find_browser, write_html
from ..runtime import auto_tune


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minicaffe.report",
        description="One self-contained HTML page from existing charts and pictures (a profile chart, "
                    "a t-SNE from python -m minicaffe.transfer --tsne, explain's PNGs ...): every image "
                    "embedded, no server, no network.",
        epilog="example: python -m minicaffe.report page.html --title 'Fashion-MNIST' "
               "--image fashion_tsne.png='t-SNE of the deep features' --image profile.png")
    p.add_argument("output", metavar="OUT.html")
    p.add_argument("--title", default="minicaffe report")
    p.add_argument("--image", action="append", default=[], metavar="PNG[=CAPTION]",
                   help="a picture to embed at its own size, with an optional caption (repeatable, in order)")
    p.add_argument("--text", action="append", default=[], help="a paragraph before the pictures (repeatable)")
    p.add_argument("--check", action="store_true",
                   help="open the page in headless Chromium and fail unless every image loaded")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    auto_tune()
    if not args.image and not args.text:
        raise UsageError("nothing to show: give --image PNG (and/or --text)")
    check_writable(args.output, "OUT.html")
    sections = [Text(t) for t in args.text]
    for spec in args.image:
        path, _, caption = spec.partition("=")
        if not os.path.isfile(path):
            raise UsageError(f"--image {path}: no such file")
        sections.append(Figure(path, caption=caption, title=os.path.basename(path)))
    write_html(args.output, args.title, sections)
    print(f"wrote {args.output}")
    if args.check:
        try:
            res = browser_check(args.output)
        except FileNotFoundError as e:
            raise UsageError(f"--check: {e}") from None
        if res["state"] != "ok":
            raise UsageError(f"--check: {args.output}: {res['loaded']} of {res['total']} images loaded "
                             f"(state {res['state']})")
        print(f"checked in {find_browser()}: {res['loaded']} of {res['total']} images loaded")
    return 0
