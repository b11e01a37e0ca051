"""``python -m minicaffe.transfer``: one command per DeCAF protocol, writing a Markdown report.

Sub-commands ``caltech101``, ``sun397``, ``office``, ``cub200`` and ``folder`` (k-fold, fixed
train/test folders or N-per-class splits of any ``ROOT/<class>/`` dataset) read the user's copy of
the data (layouts in :mod:`minicaffe.transfer.protocols`); ``offline lfw|fashion`` runs the same
machinery on real images that ship with scikit-image / Debian. Each computes (or loads from the
feature cache) the requested feature sets (``--layers``: aliases or blob names, ``LAYER:gap`` /
``LAYER:gmp`` global-pools a blob, ``+`` concatenates, ``select:A|B`` chooses A or B per split by
CV on the training images, plus the baselines ``hog`` / ``raw``), fits every ``--classifiers``
entry with C chosen by CV on the training part, prints one table per protocol and optionally
writes ``--out report.md`` (tables next to the paper's numbers, and per-split paired differences
deep minus baseline), ``--json`` (every per-split number) and ``--tsne PNG``.
:func:`run_command` is shared with ``scripts/reproduce_decaf.py``. Bad arguments and missing data
folders end with one ``minicaffe: error:`` line (exit 2). This module does not download data.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from dataclasses import dataclass, field

import numpy as np

from ..cli import exit_with
from ..errors import UsageError
from . import experiments as ex
from . import protocols as P
from .baselines import BASELINES
from .features import parse_layer
from .report import PAPER_NOTES, markdown_table, paired_table, results_table, save_json

EXAMPLES = """examples:
  # offline, right after installation (EfficientNet-Lite0 features vs raw pixels and HOG)
  python -m minicaffe.transfer offline fashion --n-train 30 --splits 5 --out fashion.md --tsne fashion.png
  python -m minicaffe.transfer offline lfw --classifiers lr,svm,svm+dropout
  # multi-layer pooled descriptor (stage outputs of Lite0, global-average-pooled, + the global pool)
  python -m minicaffe.transfer offline fashion --layers block10/add:gap+block14/add:gap+block15/project:gap+features \
      --baselines raw,hog --classifiers lr --splits 20
  # the paper's protocols on your copy of the data, with the DeCAF network
  python -m minicaffe.transfer caltech101 ~/data/caltech101 --model caffenet --layers decaf5,decaf6,decaf7 \\
      --classifiers lr,svm,svm+dropout --curve 1,5,10,15,20 --out caltech.md
  python -m minicaffe.transfer sun397 ~/data/SUN397 --model caffenet --layers decaf6 --classifiers lr
  python -m minicaffe.transfer office ~/data/office31 --source amazon --target webcam --model caffenet \\
      --layers decaf6,decaf7 --baselines hog --classifiers svm
  python -m minicaffe.transfer cub200 ~/data/CUB_200_2011 --crop whole,bbox --model caffenet --layers decaf6
  python -m minicaffe.transfer folder ~/data/flowers --protocol kfold --k 5 --layers pool5+fc6 --model caffenet

feature specs (--layers): decaf5 / decaf6 / decaf7 (CaffeNet pool5 / fc6 / fc7), any blob name
(features / pool for EfficientNet-Lite), BLOB:gap / BLOB:gmp = the blob averaged / max-ed over its
spatial positions (N, C, H, W) -> (N, C), A+B concatenates (pool5+fc6); --baselines hog,raw.
select:A|B|C = layer choice: on each split, the candidate spec (A, B or C) with the best CV mean
per-class accuracy on that split's training images (same 3-fold CV that picks C; ties -> first
listed) is refit on the training split and tested; the report says which was chosen how often,
e.g. --layers 'select:features|block15/project|block10/add:gap+block14/add:gap+block15/project:gap+features'
(quote it: | is a shell pipe).
classifiers: lr, svm, lr+dropout, svm+dropout (DeCAF dropout variant, rate 0.5; see docs/transfer.md).
features are cached under ~/.cache/minicaffe/features ($MINICAFFE_HOME) or --cache DIR.
"""


@dataclass
class Section:
    """One protocol's results: ``protocol`` keys the paper's numbers (report.PAPER)."""
    title: str
    protocol: str
    results: list
    notes: list = field(default_factory=list)
    extra_md: str = ""


def _csv(s):
    return [x.strip() for x in s.split(",") if x.strip()] if s else []


def _ints(opt, s):
    try:
        return [int(x) for x in _csv(s)]
    except ValueError:
        raise UsageError(f"{opt}: expected comma-separated integers, got {s!r}") from None


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m minicaffe.transfer", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="DeCAF transfer experiments: simple classifiers on frozen deep features, the paper's protocols.",
        epilog=EXAMPLES)
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("features and classifiers")
    g.add_argument("--model", default=None,
                   help="registered model (default efficientnet-lite0, works offline; caffenet = the DeCAF net)")
    g.add_argument("--layers", default=None,
                   help="comma-separated feature specs, + concatenates (default decaf6 for CaffeNet/AlexNet, "
                        "features for EfficientNet-Lite). e.g. decaf5,decaf6,decaf7,pool5+fc6")
    g.add_argument("--baselines", default="", help="hand-crafted features to compare: hog,raw (default none)")
    g.add_argument("--classifiers", default=None, help="lr,svm,lr+dropout,svm+dropout (default per protocol)")
    g.add_argument("--scale", choices=("l2", "standardize", "none"), default="l2",
                   help="feature scaling: l2 = each row to unit norm (default; best or tied for deep features with "
                        "few labels), standardize = per-dimension z-score fitted on the training split, none")
    g.add_argument("--splits", type=int, default=5, help="random splits / partitions (default 5)")
    g.add_argument("--seed", type=int, default=0, help="split seed: split s uses default_rng([seed, s])")
    r = common.add_argument_group("run and output")
    r.add_argument("--cache", default=None, help="feature cache folder (default ~/.cache/minicaffe/features)")
    r.add_argument("--no-cache", action="store_true", help="do not read or write the feature cache")
    r.add_argument("--backend", choices=("numpy", "cpu", "cuda"), default="cpu")
    r.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    r.add_argument("--out", metavar="REPORT.md", help="write the Markdown report here")
    r.add_argument("--json", metavar="OUT.json", help="write every per-split number here")
    r.add_argument("--tsne", metavar="PNG", help="t-SNE of the first deep feature set vs the baselines (or raw pixels)")
    r.add_argument("--tsne-max", type=int, default=1000, help="at most this many points in the t-SNE (default 1000)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    sub = p.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    c = sub.add_parser("caltech101", parents=[common], help="Caltech-101: N train per class, rest tested",
                       description="Caltech-101 (ROOT/101_ObjectCategories/<class>/*.jpg).")
    c.add_argument("root")
    c.add_argument("--n-train", type=int, default=30, help="training images per class (default 30)")
    c.add_argument("--max-test", type=int, default=None, help="cap on test images per class (default: all the rest)")
    c.add_argument("--curve", default="", help="also the first classifier at these N, e.g. 1,5,10,15,20")
    c.add_argument("--background", choices=("exclude", "include"), default="exclude",
                   help="BACKGROUND_Google: excluded (101 classes, default) or a 102nd class")
    s = sub.add_parser("sun397", parents=[common], help="SUN-397: 50 train / 50 test per class",
                       description="SUN-397 (ROOT/<letter>/<class>/sun_*.jpg, official Partitions/ if present).")
    s.add_argument("root")
    o = sub.add_parser("office", parents=[common], help="Office: source / target / source+target / Daume III",
                       description="Office-31 (ROOT/<domain>/images/<class>/*.jpg).")
    o.add_argument("root")
    o.add_argument("--source", choices=P.OFFICE_DOMAINS, default="amazon")
    o.add_argument("--target", choices=P.OFFICE_DOMAINS, default="webcam")
    o.add_argument("--settings", default=",".join(P.OFFICE_SETTINGS), help="subset of " + ",".join(P.OFFICE_SETTINGS))
    u = sub.add_parser("cub200", parents=[common], help="CUB-200-2011: whole image vs 1.5x bounding box",
                       description="CUB-200-2011 (ROOT with images.txt, bounding_boxes.txt, ..., images/).")
    u.add_argument("root")
    u.add_argument("--crop", default="whole,bbox", help="whole, bbox or both (default whole,bbox)")
    u.add_argument("--bbox-factor", type=float, default=1.5, help="box enlargement about its centre (default 1.5)")
    f = sub.add_parser("folder", parents=[common], help="any ROOT/<class>/ dataset: k-fold, fixed or N-per-class",
                       description="Generic folder dataset: ROOT/<class>/*.jpg, or ROOT/train|test/<class>/ "
                                   "for --protocol fixed.")
    f.add_argument("root")
    f.add_argument("--protocol", dest="split_protocol", choices=("kfold", "fixed", "per-class"), default="kfold")
    f.add_argument("--k", type=int, default=5, help="folds for kfold (default 5)")
    f.add_argument("--n-train", type=int, default=30, help="per-class: training images per class (default 30)")
    f.add_argument("--max-test", type=int, default=None, help="per-class: cap on test images per class")
    d = sub.add_parser("offline", parents=[common], help="offline demo on real images: lfw (faces) or fashion",
                       description="Real data that ships offline: scikit-image lfw_subset (200 faces / non-faces) "
                                   "or Fashion-MNIST from the Debian package dataset-fashion-mnist.")
    d.add_argument("dataset", choices=("lfw", "fashion"))
    d.add_argument("--n-train", type=int, default=30, help="training images per class (default 30)")
    d.add_argument("--max-test", type=int, default=30, help="cap on test images per class (default 30)")
    d.add_argument("--per-class", type=int, default=60,
                   help="fashion: images per class drawn from --fashion-split (default 60)")
    d.add_argument("--fashion-split", choices=("t10k", "train"), default="t10k",
                   help="fashion: the IDX file to draw from: t10k = the 10k test file (reported numbers, "
                        "default), train = the 60k training file (a development set disjoint from t10k)")
    return p


def _default_layers(model):
    from .. import models as registry
    from .features import resolve_model
    if isinstance(model, str) and model in registry.MODELS:
        aliases = registry.MODELS[model].aliases
    else:
        aliases = resolve_model(model).aliases
    return ["decaf6"] if "decaf6" in aliases else ["features"]


def _check_args(args):
    for opt in ("splits", "batch_size", "n_train", "k", "per_class", "tsne_max"):
        v = getattr(args, opt, None)
        if v is not None and v < 1:
            raise UsageError(f"--{opt.replace('_', '-')} must be at least 1, got {v}")
    if getattr(args, "max_test", None) is not None and args.max_test < 1:
        raise UsageError(f"--max-test must be at least 1, got {args.max_test}")
    for c in _csv(args.classifiers or ""):
        try:
            ex.parse_classifier(c)
        except ValueError as e:
            raise UsageError(f"--classifiers: {e}") from None
    for b in _csv(args.baselines):
        if b not in BASELINES:
            raise UsageError(f"--baselines: {b!r} is not one of {', '.join(BASELINES)}")
    for spec in _csv(args.layers or ""):
        try:
            cands = ex.parse_select(spec)
        except ValueError as e:
            raise UsageError(f"--layers: {e}") from None
        if cands and args.protocol == "office":
            raise UsageError(f"--layers: {spec!r}: select: is not supported by office")
        for cand in cands or [spec]:
            if cand in BASELINES:
                raise UsageError(f"--layers: {cand!r} is a baseline; pass it with --baselines")
            if any(not part for part in cand.split("+")):
                raise UsageError(f"--layers: {cand!r} has an empty part")
            for part in cand.split("+"):
                try:
                    parse_layer(part)
                except ValueError as e:
                    raise UsageError(f"--layers: {e}") from None
    if args.protocol == "office" and args.source == args.target:
        raise UsageError(f"--source and --target are both {args.source!r}; choose two domains")
    if args.protocol == "office":
        for s in _csv(args.settings):
            if s not in P.OFFICE_SETTINGS:
                raise UsageError(f"--settings: {s!r} is not one of {', '.join(P.OFFICE_SETTINGS)}")
    if args.protocol == "cub200":
        for c in _csv(args.crop):
            if c not in ("whole", "bbox"):
                raise UsageError(f"--crop: {c!r} is not whole or bbox")
    root = getattr(args, "root", None)
    if root is not None and not pathlib.Path(root).is_dir():
        raise UsageError(f"{root}: data folder not found (expected layout: python -m minicaffe.transfer "
                         f"{args.protocol} --help, or docs/transfer.md)")


def _check_layers(model, specs, backend):
    """Every deep part of ``specs`` must be a blob of the net (fail before extracting anything)."""
    from .features import resolve_model
    fm = resolve_model(model)
    parts = sorted({p for s in specs if s not in BASELINES for p in ex.spec_parts(s)})
    if not parts:
        return
    net = fm.net(backend)
    for part in parts:
        base, pool = parse_layer(part)
        blob = fm.blob_name(base)
        if blob in net.blob_shapes and pool is not None and len(net.blob_shapes[blob]) != 4:
            raise UsageError(f"--layers: {part!r}: :{pool} needs a spatial (N, C, H, W) blob; {blob} is "
                             f"{net.blob_shapes[blob]}")
        if blob not in net.blob_shapes:
            raise UsageError(f"--layers: {base!r} is not a blob of {fm.name} (aliases: "
                             f"{', '.join(f'{k}={v}' for k, v in fm.aliases.items()) or 'none'}; "
                             f"last blobs: {', '.join(list(net.blob_shapes)[-6:])})")


def feature_specs(args, model):
    layers = _csv(args.layers) or _default_layers(model)
    return layers + [b for b in _csv(args.baselines) if b not in layers]


def _fkw(args, extra_baseline_kw=None):
    from .features import FeatureCache
    cache = None if args.no_cache else FeatureCache(args.cache)
    return {"cache": cache, "backend": args.backend, "batch_size": args.batch_size, "progress": not args.quiet,
                "baseline_kw": extra_baseline_kw or {}}


def run_command(args):
    """Parsed args -> (list of Section, {"items", "labels", "classes", "sets"} for the t-SNE)."""
    _check_args(args)
    from ..models import DEFAULT_MODEL
    model = args.model or DEFAULT_MODEL
    specs = feature_specs(args, model)
    classifiers = _csv(args.classifiers)
    seed, n = args.seed, args.splits
    proto = args.protocol
    baseline_kw = {}

    # read the dataset first: a wrong folder should fail before the model is loaded
    if proto == "caltech101":
        ds = P.load_caltech101(args.root, background=args.background)
    elif proto == "sun397":
        ds = P.load_sun397(args.root)
    elif proto == "office":
        src, tgt = P.load_office(args.root, args.source), P.load_office(args.root, args.target)
    elif proto == "cub200":
        crops = _csv(args.crop)
        by_crop = {c: P.load_cub200(args.root, crop=c, factor=args.bbox_factor) for c in crops}
    elif proto == "folder":
        if args.split_protocol == "fixed":
            ds, fixed_splits = P.load_fixed_split(args.root)
        else:
            ds = P.load_folder(args.root)
    elif proto == "offline":
        from .offline import load_fashion_mnist, load_lfw_subset
        ds = load_lfw_subset() if args.dataset == "lfw" else \
            load_fashion_mnist(args.per_class, seed=seed, split=args.fashion_split)
        baseline_kw = {"raw": {"size": None}}     # raw pixels at the native 25x25 / 28x28
    _check_layers(model, specs, args.backend)
    fkw = _fkw(args, baseline_kw)
    sections, vis = [], None

    if proto == "caltech101":
        cl = classifiers or list(ex.DEFAULT_CLASSIFIERS)
        table, curve = ex.run_caltech101(ds, model, specs, n_train=args.n_train, max_test=args.max_test,
                                         n_splits=n, seed=seed, classifiers=cl, curve=_ints("--curve", args.curve),
                                         scale=args.scale, **fkw)
        extra = ""
        if curve:
            extra = "Training images per class vs accuracy (" + table[0].features + ", " + cl[0] + "):\n\n" + \
                markdown_table(["N / class", "mean per-class acc. (%)"],
                               [[k, f"{100 * r.mean:.2f} ± {100 * r.std:.2f}"] for k, r in curve])
        sec = Section(f"Caltech-101 ({len(ds.classes)} classes, {args.n_train} train / class)", "caltech101",
                      table, ["paper: " + PAPER_NOTES["caltech101"]], extra)
        sec.curve = curve
        sections.append(sec)
        vis = (ds, None)
    elif proto == "sun397":
        res = ex.run_sun397(ds, model, specs, n_splits=n, seed=seed, classifiers=classifiers or ["lr"],
                            scale=args.scale, **fkw)
        sections.append(Section(f"SUN-397 ({len(ds.classes)} classes)", "sun397", res,
                                ["paper: " + PAPER_NOTES["sun397"]]))
        vis = (ds, None)
    elif proto == "office":
        res = ex.run_office(src, tgt, model, specs, n_splits=n, seed=seed, classifiers=classifiers or ["svm"],
                            settings=_csv(args.settings), scale=args.scale, **fkw)
        key = f"office:{args.source}->{args.target}"
        sections.append(Section(f"Office {args.source} → {args.target}", key, res, ["paper: " + PAPER_NOTES["office"]]))
        vis = (tgt, None)
    elif proto == "cub200":
        out = ex.run_cub200(by_crop, model, specs, seed=seed, classifiers=classifiers or ["lr"], scale=args.scale,
                           **fkw)
        for crop, res in out.items():
            sections.append(Section(f"CUB-200-2011 ({crop})", f"cub200:{crop}", res,
                                    ["paper: " + PAPER_NOTES["cub200"]]))
        vis = (next(iter(by_crop.values())), None)
    elif proto == "folder":
        if args.split_protocol == "fixed":
            splits = fixed_splits
        elif args.split_protocol == "kfold":
            splits = P.kfold_splits(ds.labels, args.k, seed)
        else:
            splits = P.per_class_splits(ds.labels, args.n_train, args.max_test, n, seed)
        sets = ex.feature_sets(ds.items, model, specs, **fkw)
        res = ex.run_splits(sets, ds.labels, splits, classifiers or ["lr", "svm"], scale=args.scale, seed=seed)
        sections.append(Section(f"{pathlib.Path(args.root).name} ({args.split_protocol}, {len(ds.classes)} classes)",
                                "folder", res, extra_md=_paired_md(res, specs)))
        vis = (ds, sets)
    elif proto == "offline":
        splits = P.per_class_splits(ds.labels, args.n_train, args.max_test, n, seed)
        sets = ex.feature_sets(ds.items, model, specs, **fkw)
        res = ex.run_splits(sets, ds.labels, splits, classifiers or ["lr", "svm", "svm+dropout"], scale=args.scale,
                            seed=seed)
        name = "lfw_subset (faces vs non-faces)" if args.dataset == "lfw" else \
            f"Fashion-MNIST ({args.per_class}/class from {args.fashion_split})"
        sections.append(Section(f"{name}: {args.n_train} train / class, test ≤ {args.max_test} / class", "offline",
                                res, [f"model {model}; raw = native-resolution pixels; hog = HOG + RGB histogram"],
                                _paired_md(res, specs)))
        vis = (ds, sets)
    return sections, {"ds": vis[0], "sets": vis[1], "model": model, "specs": specs, "fkw": fkw}


def _paired_md(results, specs):
    """The paired-difference table (deep minus each baseline, same splits) with its heading, or ""."""
    t = paired_table(results, [s for s in specs if s in BASELINES])
    return ("Per-split paired differences (same splits for every feature set), deep minus baseline, "
            "in accuracy points:\n\n" + t) if t else ""


def _wrap_spec(title, width=40):
    """A long multi-layer spec as panel-title lines broken after its ``+`` (a panel is ~40 characters wide)."""
    lines = [""]
    for i, part in enumerate(title.split("+")):
        piece = part if i == 0 else "+" + part
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def tsne_png(path, vis, max_points=1000, seed=0):
    """t-SNE panels of the first deep spec and every baseline (raw pixels when none was asked)."""
    from .tsne import plot_tsne
    ds, sets = vis["ds"], vis["sets"]
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(ds))[:max_points])
    # a select: spec has no single feature set; its first candidate stands for it
    deep = [(ex.parse_select(s) or [s])[0] for s in vis["specs"] if s not in BASELINES][:1]
    base = [s for s in vis["specs"] if s in BASELINES] or ["raw"]
    items = [ds.items[i] for i in idx]
    if sets is None or any(s not in sets for s in deep + base):
        fkw = dict(vis["fkw"])
        sets = ex.feature_sets(items, vis["model"], deep + base, **fkw)
    else:
        sets = {s: sets[s][idx] for s in deep + base}
    labels = ds.labels[idx]
    ok = np.all([~np.isnan(sets[s]).any(1) for s in deep + base], axis=0)
    panels = {(_wrap_spec(f"{vis['model']} {s}") if s in deep else {"raw": "raw pixels", "hog": "HOG + colour"}[s]):
              sets[s][ok] for s in deep + base}
    return plot_tsne(panels, labels[ok], ds.classes, path, seed=seed)


def render_report(sections, title="DeCAF transfer experiments", header=""):
    """[Section] -> Markdown text."""
    out = [f"# {title}", ""]
    if header:
        out += [header, ""]
    for s in sections:
        out += [f"## {s.title}", "", results_table(s.results, protocol=s.protocol,
                                                    paper=s.protocol not in ("folder", "offline")), ""]
        out += [f"*{n}*" for n in s.notes] + ([""] if s.notes else [])
        if s.extra_md:
            out += [s.extra_md, ""]
    return "\n".join(out)


def main(argv=None):
    args = build_parser().parse_args(argv)
    from ..runtime import auto_tune
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    sections, vis = run_command(args)
    text = render_report(sections)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        save_json(args.json, {s.title: s.results for s in sections})
        print(f"wrote {args.json}", file=sys.stderr)
    if args.tsne:
        tsne_png(args.tsne, vis, args.tsne_max, args.seed)
        print(f"wrote {args.tsne}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    exit_with(main)
