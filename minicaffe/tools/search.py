"""``python -m minicaffe.search``: similar images and near-duplicates in a features file.

The command: it opens the features file, loads or builds (and saves) the approximate index with
``--ann``, searches the ``--row`` rows and ``--query`` images together in one pass over the file
and/or lists the ``--duplicates`` with :mod:`minicaffe.similarity`, prints the neighbours and the
pairs, and writes ``--json`` and a self-contained ``--html`` page (:mod:`minicaffe.html_report`).
Files of 100k rows or more get a progress bar on stderr (unless ``--quiet``). A query image that
cannot be read is one error line and exit status 1, the others are still searched; a usage error
is one line, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from .. import html_report as report
from ..errors import SearchError
from ..runtime import auto_tune
from ..similarity import (
    ANN_KINDS,
    ANNIndex,
    QueryEncoder,
    duplicate_groups,
    near_duplicates,
    open_features,
    resolve_image,
    search,
)

#: files with at least this many rows get a progress bar (unless --quiet)
PROGRESS_ROWS = 100_000


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minicaffe.search", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find similar images (cosine on L2-normalised features) or near-duplicates in a features "
                    "file written by python -m minicaffe.extract.",
        epilog="examples:\n"
               "  python -m minicaffe.search features.h5 --query cat.jpg -k 5 --html cat.html\n"
               "  python -m minicaffe.search features.h5 --row 0 --row photos/dog.jpg\n"
               "  python -m minicaffe.search features.h5 --duplicates --threshold 0.9 --html dups.html\n"
               "  python -m minicaffe.search big.h5 --query cat.jpg --ann faiss-ivf --index big.ivf\n")
    p.add_argument("features", help="features file (.h5 or .npz) from python -m minicaffe.extract")
    what = p.add_argument_group("what to search for (one or more)")
    what.add_argument("-q", "--query", nargs="+", default=[], metavar="IMAGE",
                      help="image files; their features are computed with the file's model, weights and layer")
    what.add_argument("--row", action="append", default=[], metavar="ROW",
                      help="a row of the file (number, or a path stored in it); repeatable; the row itself is "
                           "left out of its neighbours")
    what.add_argument("--duplicates", action="store_true",
                      help="list every pair of rows with cosine >= --threshold, joined into groups")
    p.add_argument("-k", "--top", type=int, default=5, help="neighbours per query (default 5)")
    p.add_argument("--threshold", type=float, default=0.9, help="cosine for --duplicates (default 0.9)")
    p.add_argument("--layer", help="which stored layer (dataset, blob or alias; default: the only one)")
    p.add_argument("--chunk-rows", type=int, help="rows read from the file at once (default: ~64 MiB worth)")
    a = p.add_argument_group("approximate search (large collections; needs the 'search' extra)")
    a.add_argument("--ann", choices=ANN_KINDS, help="use an approximate index of this kind (default: exact)")
    a.add_argument("--index", help="index file: loaded if it exists, else built and saved there "
                                   "(default: FEATURES.<kind>)")
    a.add_argument("--breadth", type=int, help="nprobe (faiss-ivf) or ef (HNSW) at query time")
    m = p.add_argument_group("query images")
    m.add_argument("--backend", default="cpu", choices=("numpy", "cpu", "cuda"))
    m.add_argument("--weights", help="the weights the file was made with, if they moved (checked by SHA-1)")
    m.add_argument("--batch", type=int, default=8, help="query images per forward pass (default 8)")
    o = p.add_argument_group("output")
    o.add_argument("--html", metavar="OUT.html", help="write a self-contained HTML page with thumbnails")
    o.add_argument("--json", metavar="OUT.json", help="write the results as JSON")
    o.add_argument("--thumb", type=int, default=160, help="thumbnail side in the HTML, pixels (default 160)")
    o.add_argument("--quiet", action="store_true", help="no progress bar (shown for files of 100k rows or more)")
    return p


def _get_index(args, ff):
    if not args.ann:
        return None
    path = args.index or f"{ff.path}.{args.ann}"
    if os.path.exists(path):
        idx = ANNIndex.load(path, ff)
        if idx.kind != args.ann:
            raise SearchError(f"{path}: is a {idx.kind} index, not {args.ann}")
        print(f"minicaffe: loaded {idx.kind} index {path}", file=sys.stderr)
    else:
        t0 = time.perf_counter()
        idx = ANNIndex.build(ff, args.ann, args.chunk_rows)
        idx.save(path, ff)
        print(f"minicaffe: built {idx.kind} index of {len(ff)} rows in {time.perf_counter() - t0:.1f}s: {path}",
              file=sys.stderr)
    if args.breadth:
        idx.set_search_breadth(args.breadth)
    return idx


class _progress:
    """A tqdm bar over the file's rows on stderr for large files (a callable: rows done so far)."""

    def __init__(self, args, total, what):
        self.bar = None
        if not args.quiet and total >= PROGRESS_ROWS:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="row", desc=what, file=sys.stderr, dynamic_ncols=True)

    def __call__(self, done):
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def main(argv=None):
    args = build_parser().parse_args(argv)
    auto_tune()
    if not (args.query or args.row or args.duplicates):
        raise SearchError("nothing to search for: give --query IMAGE..., --row ROW or --duplicates")
    if args.top < 1 or args.batch < 1 or (args.chunk_rows is not None and args.chunk_rows < 1):
        raise SearchError("-k, --batch and --chunk-rows must be >= 1")
    if not -1.0 <= args.threshold <= 1.0:
        raise SearchError(f"--threshold is a cosine, between -1 and 1; got {args.threshold}")
    failed = []
    with open_features(args.features, args.layer) as ff:
        if len(ff) == 0:
            raise SearchError(f"{ff.path}: features/{ff.dataset} has no rows")
        index = _get_index(args, ff)
        # rows and query images are searched together: one pass over the file
        labels, qs, excl = [], [], []   # labels: (label, image path or None, row or None)
        rows = [ff.row_of(r) for r in args.row]
        if rows:
            labels += [(ff.paths[r], resolve_image(ff.paths[r], ff.path), r) for r in rows]
            qs.append(ff.take(rows))
            excl += rows
        if args.query:
            def on_error(img, e):
                failed.append(img)
                print(f"minicaffe: error: {e}", file=sys.stderr)
            q, ok = QueryEncoder(ff, args.backend, args.weights).encode(args.query, args.batch, on_error)
            labels += [(args.query[i], args.query[i], None) for i in ok]
            qs.append(q)
            excl += [-1] * len(ok)
        results = []    # (label, image, row, scores, neighbour rows)
        if labels:
            q, excl = np.concatenate(qs), np.asarray(excl, np.int64)
            if index is not None:
                s, j = index.search_rescored(ff, q, args.top, exclude=excl)
            else:
                with _progress(args, len(ff), "search") as bar:
                    s, j = search(ff, q, args.top, args.chunk_rows, exclude=excl, progress=bar)
            results = [(*lab, s[n], j[n]) for n, lab in enumerate(labels)]
        for label, _, r, s, j in results:
            print(f"{label}" + (f"  (row {r})" if r is not None else ""))
            for rank, (sc, jj) in enumerate(zip(s, j), 1):
                if jj >= 0:
                    print(f"  {rank:3d}  {sc:.4f}  {ff.paths[jj]}  (row {jj})")
        pairs = scores = groups = None
        if args.duplicates:
            with _progress(args, len(ff), "duplicates") as bar:
                pairs, scores = near_duplicates(ff, args.threshold, args.chunk_rows, index, k=max(args.top, 10),
                                                progress=bar)
            groups = duplicate_groups(pairs)
            how = "exact" if index is None else f"{index.kind}, among each row's {max(args.top, 10)} nearest"
            print(f"near-duplicates (cosine >= {args.threshold:g}, {how}): {len(pairs)} pair(s) in "
                  f"{len(groups)} group(s)")
            for (a, b), sc in zip(pairs, scores):
                print(f"  {sc:.4f}  {ff.paths[a]}  {ff.paths[b]}")
        if args.json:
            _write_json(args, ff, results, pairs, scores, groups, index)
        if args.html:
            _write_html(args, ff, results, pairs, scores, groups, index)
            print(f"minicaffe: wrote {args.html}", file=sys.stderr)
    return 1 if failed else 0


def _write_json(args, ff, results, pairs, scores, groups, index):
    out = {"features": ff.path, "layer": ff.dataset, "rows": len(ff), "dim": ff.dim,
           "method": "exact" if index is None else index.kind, "queries": []}
    for label, _, r, s, j in results:
        out["queries"].append({"query": label, "row": r, "neighbours": [
            {"row": int(jj), "path": ff.paths[jj], "score": float(sc)} for sc, jj in zip(s, j) if jj >= 0]})
    if pairs is not None:
        out["duplicates"] = {"threshold": args.threshold,
                             "pairs": [{"rows": [int(a), int(b)], "score": float(sc)}
                                       for (a, b), sc in zip(pairs, scores)],
                             "groups": groups}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)


def _write_html(args, ff, results, pairs, scores, groups, index):
    def img_of(row):
        return resolve_image(ff.paths[row], ff.path) or ff.paths[row]

    method = "exact (cosine, streamed)" if index is None else f"approximate ({index.kind})"
    sections = [report.Table(["features file", "layer", "rows", "dimensions", "search"],
                             [[ff.path, ff.dataset, len(ff), ff.dim, method]])]
    for label, img, r, s, j in results:
        query = report.Thumb(img if img is not None else label, caption=label if r is None else f"{label} (row {r})",
                             note="query")
        hits = [report.Thumb(img_of(jj), caption=ff.paths[jj], note=f"#{rank}  {sc:.4f}")
                for rank, (sc, jj) in enumerate(zip(s, j), 1) if jj >= 0]
        sections.append(report.Neighbours(query, hits, title=f"Nearest to {os.path.basename(label)}"))
    if pairs is not None:
        if not groups:
            sections.append(report.Text(f"No pair of rows has cosine >= {args.threshold:g}.",
                                        title="Near-duplicates"))
        best = {}
        for (a, b), sc in zip(pairs, scores):
            best[a] = max(best.get(a, -1.0), float(sc))
            best[b] = max(best.get(b, -1.0), float(sc))
        for n, g in enumerate(groups, 1):
            sections.append(report.Gallery(
                [report.Thumb(img_of(r), caption=ff.paths[r], note=f"best {best[r]:.4f}") for r in g],
                title=f"Near-duplicate group {n} ({len(g)} images, cosine >= {args.threshold:g})"))
    title = "Similar images" if results else "Near-duplicates"
    report.write_html(args.html, title, sections, thumb=args.thumb,
                      subtitle=f"{os.path.basename(ff.path)} - {ff.dataset} - {method}")
