"""Reproduce DeCAF's transfer experiments on whatever of the paper's datasets you have, in one command.

For every protocol whose data is found (``--data DIR`` is searched for the usual archive folder
names: ``101_ObjectCategories`` / ``caltech101``, ``SUN397``, ``office31`` / ``Office31`` /
``office``, ``CUB_200_2011``; or give each root explicitly), it extracts features once (cached),
runs the protocol with ``python -m minicaffe.transfer``'s machinery and writes one Markdown report
with the results next to the numbers the paper published (Caltech-101 DeCAF6 SVM+dropout
86.91 ± 0.7, LR 84.30 ± 1.6; SUN-397 DeCAF6 LR 40.94 ± 0.3; Office A→W DeCAF6 SVM source 52.22,
source+target 80.66, Daumé 82.14; CUB-200 DeCAF6 LR 58.75), plus plots (the Caltech curve, a
t-SNE per protocol). ``--offline`` adds the offline demo (lfw_subset, Fashion-MNIST) with the
embedded EfficientNet-Lite0. Protocols whose data is absent are listed as skipped. This script
does not download datasets or weights.

    python scripts/reproduce_decaf.py --data ~/datasets --model caffenet --out decaf_report.md
    python scripts/reproduce_decaf.py --offline --out offline_report.md        # works right after install
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from minicaffe.cli import exit_with
from minicaffe.errors import MinicaffeError
from minicaffe.transfer.cli import build_parser, render_report, run_command, tsne_png
from minicaffe.transfer.report import PAPER, markdown_table

CANDIDATES = {
    "caltech101": ("101_ObjectCategories", "caltech101", "Caltech101", "caltech-101"),
    "sun397": ("SUN397", "sun397"),
    "office": ("office31", "Office31", "office", "OFFICE31"),
    "cub200": ("CUB_200_2011", "cub200", "CUB200"),
}


def find_roots(data_dir, explicit):
    roots = {}
    for proto, names in CANDIDATES.items():
        if explicit.get(proto):
            roots[proto] = explicit[proto]
            continue
        if data_dir:
            for n in names:
                if (pathlib.Path(data_dir) / n).is_dir():
                    roots[proto] = str(pathlib.Path(data_dir) / n)
                    break
    return roots


def plot_curve(curve, path, label):
    """[(N, Result)] -> PNG of accuracy vs training images per class (with ± std bars)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    ns = [n for n, _ in curve]
    ax.errorbar(ns, [100 * r.mean for _, r in curve], yerr=[100 * r.std for _, r in curve], marker="o", capsize=3,
                label=label)
    ax.set_xlabel("training images per class")
    ax.set_ylabel("mean per-class accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n\n")[-1:]))
    p.add_argument("--data", help="folder holding the datasets' archive folders")
    for proto in CANDIDATES:
        p.add_argument(f"--{proto}", metavar="ROOT", help=f"{proto} root (overrides --data)")
    p.add_argument("--model", default="caffenet", help="model for the paper's protocols (default caffenet)")
    p.add_argument("--layers", default=None, help="feature specs (default decaf5,decaf6,decaf7 for Caltech, decaf6 "
                                                  "elsewhere; features for EfficientNet-Lite)")
    p.add_argument("--offline", action="store_true", help="also run lfw_subset and Fashion-MNIST (EfficientNet-Lite0)")
    p.add_argument("--offline-model", default="efficientnet-lite0")
    p.add_argument("--splits", type=int, default=5)
    p.add_argument("--n-train", type=int, default=30, help="Caltech-101 training images per class (default 30)")
    p.add_argument("--curve", default="1,5,10,15,20", help="Caltech-101 curve points (default 1,5,10,15,20)")
    p.add_argument("--cache", default=None, help="feature cache folder")
    p.add_argument("--backend", default="cpu", choices=("numpy", "cpu", "cuda"))
    p.add_argument("--out", default="decaf_report.md", help="report path; plots go next to it")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)

    roots = find_roots(a.data, {k: getattr(a, k) for k in CANDIDATES})
    if not roots and not a.offline:
        raise MinicaffeError(f"no dataset found under {a.data or '(no --data)'} (looked for "
                             f"{', '.join(n for ns in CANDIDATES.values() for n in ns)}); pass --offline for the "
                             "offline demo")
    out = pathlib.Path(a.out)
    plots = out.with_suffix("")
    common = ["--splits", str(a.splits), "--backend", a.backend] + (["--cache", a.cache] if a.cache else []) + \
        (["-q"] if a.quiet else [])
    deep = a.model in ("caffenet", "alexnet", "alexnet-torchvision")
    runs = []   # (label, argv)
    if "caltech101" in roots:
        runs.append(("caltech101", ["caltech101", roots["caltech101"], "--model", a.model,
                                    "--layers", a.layers or ("decaf5,decaf6,decaf7,pool5+fc6" if deep else "features"),
                                    "--baselines", "hog", "--classifiers", "lr,svm,svm+dropout",
                                    "--n-train", str(a.n_train), "--curve", a.curve]))
    if "sun397" in roots:
        runs.append(("sun397", ["sun397", roots["sun397"], "--model", a.model, "--layers",
                                a.layers or ("decaf6" if deep else "features"), "--classifiers", "lr"]))
    if "office" in roots:
        runs.append(("office", ["office", roots["office"], "--source", "amazon", "--target", "webcam",
                                "--model", a.model, "--layers", a.layers or ("decaf6,decaf7" if deep else "features"),
                                "--baselines", "hog", "--classifiers", "svm"]))
    if "cub200" in roots:
        runs.append(("cub200", ["cub200", roots["cub200"], "--crop", "whole,bbox", "--model", a.model,
                                "--layers", a.layers or ("decaf6" if deep else "features"), "--classifiers", "lr"]))
    if a.offline:
        for ds in ("lfw", "fashion"):
            runs.append((f"offline-{ds}", ["offline", ds, "--model", a.offline_model, "--layers", "features",
                                           "--baselines", "raw,hog", "--classifiers", "lr,svm,svm+dropout"]))
    skipped = [k for k in CANDIDATES if k not in roots]
    sections, figures = [], []
    parser = build_parser()
    for label, argv_ in runs:
        t0 = time.time()
        print(f"== {label}: python -m minicaffe.transfer {' '.join(argv_)}", file=sys.stderr)
        args = parser.parse_args(argv_ + common)
        try:
            secs, vis = run_command(args)
        except MinicaffeError as e:
            if label.startswith("offline-fashion") and "Fashion-MNIST not found" in str(e):
                skipped.append(f"offline-fashion ({e})")
                continue
            raise
        for s in secs:
            s.notes.append(f"command: `python -m minicaffe.transfer {' '.join(argv_)}` ({time.time() - t0:.0f} s)")
        sections += secs
        plots.mkdir(parents=True, exist_ok=True)
        png = plots / f"tsne_{label}.png"
        tsne_png(str(png), vis, 1000, 0)
        figures.append((f"t-SNE, {label}", png))
        for s in secs:
            if getattr(s, "curve", None):
                cp = plots / "caltech101_curve.png"
                plot_curve(s.curve, cp, f"{s.results[0].features} {s.results[0].classifier}")
                figures.append(("Caltech-101: accuracy vs training images per class", cp))

    paper = markdown_table(["protocol", "features", "classifier", "paper (%)"],
                           [[k[0], k[1], k[2], v] for k, v in PAPER.items()])
    header = ("Mean per-class accuracy (%), mean ± std over splits; C chosen by cross-validation on each "
              "training split. The paper's figures (Donahue et al. 2014, CaffeNet) for reference:\n\n" + paper)
    if skipped:
        header += "\n\nSkipped (data not found): " + ", ".join(skipped)
    text = render_report(sections, header=header)
    if figures:
        text += "\n## Plots\n\n" + "\n\n".join(f"![{t}]({os.path.relpath(f, out.parent)})" for t, f in figures) + "\n"
    out.write_text(text + "\n")
    print(text)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from minicaffe import runtime
    runtime.tune()      # what the tools do at start (minicaffe/runtime.py), before any timed work
    exit_with(main)
