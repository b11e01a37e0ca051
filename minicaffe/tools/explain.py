"""``python -m minicaffe.explain``: what a prediction or a feature unit responds to, as PNGs.

The command, with five subcommands over :mod:`minicaffe.explanation`: ``saliency`` and
``occlusion`` of a class or a unit, ``grid`` (the activation maps of a conv layer's channels) and
``check`` (salient vs random occlusion) for image files and/or ``--samples`` (the real photos
shipped with scikit-image / scikit-learn); ``units`` (per-unit statistics as CSV and PNG, and the
top-activating images of chosen units) for a features file. It loads the net (``--model`` or
``--prototxt`` + ``--weights``), names the output files, prints one line per PNG written on stderr
(``check``: a Markdown table on stdout), appends every PNG to ``OUTDIR/manifest.json`` and, with
``--html``, lays the manifest out as one page. An image that cannot be read is one error line and
exit status 1, the others are still explained; a usage error is one line, exit status 2.
"""
from __future__ import annotations

import argparse
import csv
import os
import pathlib
import sys

import numpy as np

from ..errors import MinicaffeError, UsageError
from ..explanation import (
    Manifest,
    Target,
    classes_for,
    load_inputs,
    logits_blob,
    manifest_report,
    occlusion_map,
    open_features,
    parse_unit,
    resolve_blob,
    saliency,
    salient_vs_random,
    sample_photos,
    save_grid,
    save_overlay,
    save_stats_plot,
    save_top_images,
    unit_statistics,
    unit_values,
)
from ..runtime import auto_tune


def _stem(source, i):
    if isinstance(source, str):
        return pathlib.Path(source).stem
    return f"image{i}"


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))


EXAMPLES = """examples:
  python -m minicaffe.explain saliency photo.jpg -o out/
  python -m minicaffe.explain saliency photo.jpg --unit pool:100 -o out/   # a unit instead of the class
  python -m minicaffe.explain occlusion --samples --patch 32 --stride 16 -o out/
  python -m minicaffe.explain grid photo.jpg --layer conv1 -o out/     # (EfficientNet: a blob such as stem)
  python -m minicaffe.explain units feats.h5 --layer fc7 --unit 12 -o out/
  python -m minicaffe.explain check --samples -o out/                  # salient vs random occlusion

every run writes PNGs and OUT/manifest.json (image, caption, numbers per PNG)
"""


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minicaffe.explain",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="What a prediction or a feature unit responds to, as PNGs.",
                                epilog=EXAMPLES)
    sub = p.add_subparsers(dest="cmd", required=True)

    def image_command(name, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("images", nargs="*", metavar="IMG", help="image files")
        s.add_argument("--samples", action="store_true",
                       help="add the real photos shipped with scikit-image / scikit-learn")
        s.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for PNGs and manifest.json")
        s.add_argument("--model", default=None, help="registered model (default: efficientnet-lite0)")
        s.add_argument("--prototxt", help="a deploy prototxt instead of --model (needs --weights)")
        s.add_argument("--weights", help="weights for --prototxt, or to override --model's")
        s.add_argument("--preprocess", default=None,
                       help="with --prototxt: 'caffe' or a model name whose preprocessing to use (default caffe)")
        s.add_argument("--backend", default="cpu", choices=("numpy", "cpu"))
        s.add_argument("--html", metavar="OUT.html", default=None,
                       help="also write a self-contained HTML page of everything in OUTDIR's manifest")
        return s

    for name, help_ in (("saliency", "input gradient of the class score or a unit"),
                        ("occlusion", "score drop under a sliding gray/zero patch")):
        s = image_command(name, help_)
        s.add_argument("--class", dest="cls", type=int, default=None,
                       help="class index to explain (default: each image's top-1)")
        s.add_argument("--unit", default=None, metavar="LAYER:CHANNEL",
                       help="explain a unit's spatial-mean activation instead of a class, e.g. fc7:12")
        s.add_argument("--score-blob", default=None, help="blob of class scores (default: the logits, before softmax)")
        if name == "saliency":
            _smooth_args(s)
        if name == "occlusion":
            s.add_argument("--patch", type=int, default=32, help="occluder side in input pixels (default 32)")
            s.add_argument("--stride", type=int, default=16, help="step between occluder positions (default 16)")
            s.add_argument("--fill", default="gray", choices=("gray", "zero"),
                           help="gray: pixel level 128; zero: 0 in input units (the mean) (default gray)")
            s.add_argument("--batch", type=int, default=16, help="occluded copies per forward (default 16)")
    g = image_command("grid", "activation maps of a conv layer's channels")
    g.add_argument("--layer", required=True, help="blob to show, e.g. conv1")
    g.add_argument("--max-channels", type=int, default=64, help="show at most this many channels (default 64)")
    g.add_argument("--order", default="index", choices=("index", "mean"),
                   help="which channels: the first ones, or the most active by mean (default index)")
    c = image_command("check", "does occluding the most salient region lower the score more than a random one?")
    c.add_argument("--patch", type=int, default=56, help="region side in input pixels (default 56: 1/16 of 224x224)")
    c.add_argument("--random", type=int, default=8, help="random regions per image (default 8)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random regions (default 0)")
    c.add_argument("--fill", default="gray", choices=("gray", "zero"))
    _smooth_args(c, seed=False)
    u = sub.add_parser("units", help="per-unit statistics and top-activating images from a features file")
    u.add_argument("features", metavar="FEATURES", help="HDF5 (or .npz) from python -m minicaffe.extract")
    u.add_argument("--layer", required=True, help="the stored layer, e.g. fc7")
    u.add_argument("--unit", default=None, help="unit(s) whose top images to show, comma-separated, e.g. 12,40")
    u.add_argument("-k", "--top", type=int, default=16, help="top images per unit (default 16)")
    u.add_argument("--reduce", default="max", choices=("max", "mean"),
                   help="a conv channel's value per image: spatial max or mean (default max)")
    u.add_argument("--root", default=None, help="folder the stored paths are relative to (default: as stored)")
    u.add_argument("-o", "--output", required=True, metavar="OUTDIR")
    u.add_argument("--html", metavar="OUT.html", default=None,
                   help="also write a self-contained HTML page of everything in OUTDIR's manifest")
    return p


def _smooth_args(s, seed=True):
    s.add_argument("--smooth", type=int, default=16,
                   help="SmoothGrad: average the gradient over this many noisy copies; 0 = the plain gradient "
                        "(default 16)")
    s.add_argument("--noise", type=float, default=0.15,
                   help="SmoothGrad noise, standard deviation as a fraction of the input's range (default 0.15)")
    if seed:
        s.add_argument("--seed", type=int, default=0, help="seed of the SmoothGrad noise (default 0)")


def _load_net(args):
    """-> (net, preprocessing, aliases, model name)."""
    from ..models import CAFFE_PREPROCESSING, DEFAULT_MODEL, MODELS, get_model
    from ..preprocess import check_spec
    if args.prototxt:
        if args.model:
            raise UsageError("give either --model or --prototxt, not both")
        if not args.weights:
            raise UsageError("--prototxt needs --weights (a .caffemodel or converted .h5)")
        from ..net import Net
        net = Net(args.prototxt, args.weights, backend=args.backend)
        pp = args.preprocess or "caffe"
        if pp != "caffe" and pp not in MODELS:
            raise UsageError(f"--preprocess must be 'caffe' or a model name ({', '.join(sorted(MODELS))})")
        prep = CAFFE_PREPROCESSING if pp == "caffe" else MODELS[pp].preprocessing
        aliases, name = {}, os.path.basename(args.prototxt)
    else:
        spec = get_model(args.model or DEFAULT_MODEL)
        net = spec.load(args.backend, weights=args.weights) if args.weights else spec.load(args.backend)
        prep, aliases, name = spec.preprocessing, dict(spec.aliases), spec.name
    check_spec(prep, net.input_shapes[net.input_names[0]][2:])
    return net, prep, aliases, name


def _class_names(args):
    from ..models import DEFAULT_MODEL, class_names, get_model
    if args.prototxt:
        return None
    try:
        return class_names(get_model(args.model or DEFAULT_MODEL).labels)
    except MinicaffeError:
        return None


def _target(args, net, aliases):
    if getattr(args, "unit", None):
        if args.cls is not None:
            raise UsageError("give either --class or --unit, not both")
        return parse_unit(args.unit, net, aliases)
    blob = (resolve_blob(net, args.score_blob, aliases) if getattr(args, "score_blob", None)
            else logits_blob(net, aliases))
    cls = getattr(args, "cls", None)
    if cls is not None and not 0 <= cls < net.blob_shapes[blob][1]:
        raise UsageError(f"--class {cls}: blob {blob!r} has {net.blob_shapes[blob][1]} classes")
    return Target(blob, cls, "class")


def _images(args):
    sources, names = list(args.images), [_stem(s, i) for i, s in enumerate(args.images)]
    if args.samples:
        n, ims = sample_photos()
        names += [pathlib.Path(x).stem for x in n]
        sources += ims
    if not sources:
        raise UsageError("no images: give IMG files or --samples")
    return sources, names


def main(argv=None):
    args = build_parser().parse_args(argv)
    auto_tune()
    if args.cmd == "units":
        return units_main(args)
    for opt in ("patch", "stride", "batch", "random", "max_channels"):
        if getattr(args, opt, 1) is not None and getattr(args, opt, 1) < 1:
            raise UsageError(f"--{opt.replace('_', '-')} must be >= 1")
    if getattr(args, "smooth", 0) < 0 or not getattr(args, "noise", 0.0) >= 0:
        raise UsageError("--smooth and --noise must be >= 0")
    sources, names = _images(args)
    net, prep, aliases, model = _load_net(args)
    failed = []

    def on_error(src, e):
        failed.append(src)
        print(f"minicaffe: error: {e}", file=sys.stderr)

    keep, x, shows = load_inputs(sources, prep, on_error)
    names = [names[i] for i in keep]
    srcs = [sources[i] if isinstance(sources[i], str) else names[k] for k, i in enumerate(keep)]
    man = Manifest(args.output)
    cls_names = _class_names(args)
    common = {"model": model}
    if args.cmd == "grid":
        grid_main(args, net, aliases, x, shows, names, srcs, man, common)
    elif args.cmd == "check":
        check_main(args, net, aliases, prep, x, shows, names, srcs, man, common, cls_names)
    else:
        target = _target(args, net, aliases)
        for i in range(len(x)):
            stem = _safe(names[i])
            if args.cmd == "saliency":
                score, cls, sal, _ = saliency(net, x[i], target, args.smooth, args.noise, args.seed)
                t = Target(target.blob, cls, target.kind)
                png = f"{stem}_saliency.png"
                how = f"SmoothGrad, {args.smooth} copies" if args.smooth > 0 else "plain gradient"
                cap = f"{names[i]}: saliency of {t.describe(cls_names)} (score {score:.3g}; {how})"
                save_overlay(man.outdir / png, shows[i], sal, cap, "|d score / d input| (max over RGB)")
                nums = {"class" if t.kind == "class" else "channel": t.index, "score": score,
                        "grad_max": float(sal.max()), "grad_mean": float(sal.mean()), "smooth": args.smooth}
            else:
                cls = classes_for(net.forward(x[i:i + 1], fetch=[target.blob])[target.blob], target)[0]
                t = Target(target.blob, int(cls), target.kind)
                base, heat, drops = occlusion_map(net, x[i], t, int(cls), prep, args.patch, args.stride,
                                                  args.fill, args.batch)
                png = f"{stem}_occlusion.png"
                cap = f"{names[i]}: occlusion ({args.patch}px {args.fill} patch) of {t.describe(cls_names)}"
                save_overlay(man.outdir / png, shows[i], heat, cap, "score drop when occluded", signed=True)
                k = int(np.argmax(drops))
                nums = {"class" if t.kind == "class" else "channel": t.index, "score": base,
                        "max_drop": float(drops.max()), "min_drop": float(drops.min()),
                        "mean_drop": float(drops.mean()), "argmax_patch": k}
            man.add(png, cap, nums, command=args.cmd, source=srcs[i], target=target.blob, **common)
            print(f"{man.outdir / png}: {cap}", file=sys.stderr)
    man.write()
    _maybe_html(args, man)
    return 1 if failed else 0


def _maybe_html(args, man):
    if getattr(args, "html", None):
        out = manifest_report(man.path, args.html)
        print(f"{out}: HTML report", file=sys.stderr)


def grid_main(args, net, aliases, x, shows, names, srcs, man, common):
    blob = resolve_blob(net, args.layer, aliases)
    shp = net.blob_shapes[blob]
    if len(shp) != 4:
        raise UsageError(f"--layer {args.layer!r}: blob {blob!r} has shape {shp}; a grid needs an (N, C, H, W) blob")
    end = [l.name for l in net.layers if blob in l.tops][-1]
    for i in range(len(x)):
        a = net.forward(x[i:i + 1], end=end, fetch=[blob])[blob][0]
        C = a.shape[0]
        if args.order == "mean":
            chans = np.argsort(-a.reshape(C, -1).mean(axis=1), kind="stable")[:args.max_channels]
        else:
            chans = np.arange(min(C, args.max_channels))
        png = f"{_safe(names[i])}_grid_{_safe(blob)}.png"
        cap = f"{names[i]}: {blob} activations, {len(chans)} of {C} channels ({args.order} order)"
        save_grid(man.outdir / png, shows[i], a[chans], chans, cap)
        man.add(png, cap, {"channels": C, "shown": len(chans), "height": a.shape[1], "width": a.shape[2],
                           "max": float(a.max()), "fraction_nonpositive": float((a <= 0).mean())},
                command="grid", source=srcs[i], target=blob, **common)
        print(f"{man.outdir / png}: {cap}", file=sys.stderr)


def check_main(args, net, aliases, prep, x, shows, names, srcs, man, common, cls_names):
    target = Target(logits_blob(net, aliases), None, "class")
    H, W = x.shape[2:]
    if args.patch > min(H, W):
        raise UsageError(f"--patch {args.patch} is larger than the input {H}x{W}")
    rows = salient_vs_random(net, x, target, prep, args.patch, args.random, args.seed, args.fill, args.smooth,
                             args.noise)
    print("| photo | class | score | drop, most salient region | mean drop, random regions | salient > random |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        mr = float(np.mean(r["random_drops"]))
        cname = cls_names[r["class"]].split(",")[0] if cls_names else str(r["class"])
        print(f"| {names[i]} | {cname} | {r['score']:.2f} | {r['salient_drop']:.2f} | {mr:.2f} | "
              f"{'yes' if r['salient_drop'] > mr else 'no'} |")
        png = f"{_safe(names[i])}_check.png"
        cap = (f"{names[i]}: {cname}; occluding the most salient {args.patch}px region drops the score by "
               f"{r['salient_drop']:.2f}, a random one by {mr:.2f} on average")
        save_overlay(man.outdir / png, shows[i], r["saliency"], cap, "saliency", box=r["salient_box"])
        man.add(png, cap, {"class": r["class"], "score": r["score"], "salient_drop": r["salient_drop"],
                           "random_drop_mean": mr, "salient_gt_random": r["salient_drop"] > mr},
                command="check", source=srcs[i], target=target.blob, **common)
    sal = np.array([r["salient_drop"] for r in rows])
    rnd = np.array([np.mean(r["random_drops"]) for r in rows])
    print(f"\nmean drop: most salient region {sal.mean():.3f}, random regions {rnd.mean():.3f}; "
          f"salient > random in {int((sal > rnd).sum())} of {len(rows)} photos "
          f"(patch {args.patch}px, {args.random} random regions per photo, seed {args.seed}, {args.fill} fill, "
          f"{'SmoothGrad ' + str(args.smooth) if args.smooth > 0 else 'plain gradient'})")
    return rows


def units_main(args):
    if args.top < 1:
        raise UsageError("--top must be >= 1")
    units = []
    if args.unit:
        try:
            units = [int(u) for u in args.unit.split(",") if u.strip()]
        except ValueError:
            raise UsageError(f"--unit must be comma-separated integers, got {args.unit!r}") from None
    X, shp, paths, close = open_features(args.features, args.layer)
    man = Manifest(args.output)
    layer = _safe(args.layer)
    try:
        for u in units:       # validate all before the (longer) statistics pass
            if not 0 <= u < shp[0]:
                raise UsageError(f"--unit {u}: layer {args.layer!r} has {shp[0]} units (0..{shp[0] - 1})")
        stats = unit_statistics(X, shp)
        csv_name = f"units_{layer}_stats.csv"
        with open(man.outdir / csv_name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["unit", "mean", "std", "sparsity", "max"])
            for c in range(shp[0]):
                w.writerow([c] + [f"{stats[k][c]:.6g}" for k in ("mean", "std", "sparsity", "max")])
        png = f"units_{layer}_stats.png"
        cap = f"{args.layer}: per-unit statistics over {X.shape[0]} images ({shp[0]} units, blob shape {shp})"
        save_stats_plot(man.outdir / png, stats, cap)
        man.add(png, cap, {"images": X.shape[0], "units": shp[0], "mean_sparsity": float(stats["sparsity"].mean()),
                           "dead_units": int((stats["max"] <= 0).sum()), "mean": float(stats["mean"].mean())},
                command="units", source=str(args.features), target=args.layer, tables=[csv_name])
        print(f"{man.outdir / csv_name}: {shp[0]} units of {args.layer}", file=sys.stderr)
        for u in units:
            v = unit_values(X, shp, u, args.reduce)
            order = np.argsort(-v, kind="stable")[:args.top]
            top_csv = f"units_{layer}_unit{u}_top.csv"
            with open(man.outdir / top_csv, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["rank", "row", "value", "path"])
                for r, j in enumerate(order):
                    w.writerow([r, int(j), f"{v[j]:.6g}", paths[j]])
            png = f"units_{layer}_unit{u}_top.png"
            how = f" ({args.reduce} over positions)" if int(np.prod(shp[1:])) > 1 else ""
            cap = f"{args.layer} unit {u}: the {len(order)} top-activating of {len(v)} images{how}"
            save_top_images(man.outdir / png, [paths[j] for j in order], v[order], cap, args.root)
            man.add(png, cap, {"unit": u, "top_value": float(v[order[0]]), "mean": float(v.mean()),
                               "std": float(v.std()), "sparsity": float((v <= 0).mean())},
                    command="units", source=str(args.features), target=args.layer, tables=[top_csv])
            print(f"{man.outdir / png}: {cap}", file=sys.stderr)
    finally:
        close()
    man.write()
    _maybe_html(args, man)
    return 0
