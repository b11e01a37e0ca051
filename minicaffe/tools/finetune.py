"""``python -m minicaffe.finetune``: fine-tune a pretrained net's top layers on a new task.

The command: it lists the training (and ``--test``) INPUTs with :mod:`minicaffe.datasets` (every
training image needs a label), loads the base net (``--model`` or ``--prototxt`` + ``--weights``),
resizes the classifier (``--replace``) and trains from ``--train-from`` on with
:mod:`minicaffe.finetuning`, printing progress on stderr. It writes the refined weights as ``.h5``
(with the edited prototxt and provenance attributes), the edited prototxt next to it (``OUT`` with
``.prototxt``: ``extract --prototxt`` takes it with the weights) and, as the last stdout line, a
JSON summary (with ``--test``: the refined net's held-out accuracy). Exit status 0, or 2 with one
error line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from ..cli import check_writable
from ..datasets import list_inputs
from ..errors import MinicaffeError
from ..finetuning import build_finetune_net, cached_cut_features, load_base, load_images, predict, train
from ..runtime import auto_tune

DESCRIPTION = "Fine-tune a pretrained net on a new task: ``python -m minicaffe.finetune``."


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minicaffe.finetune", description=DESCRIPTION)
    p.add_argument("train", nargs="+", help="training INPUTs: ImageFolder root(s) or labelled lists")
    p.add_argument("--test", nargs="*", default=[], help="held-out INPUTs (same class names)")
    p.add_argument("--model", help="registered model, e.g. efficientnet-lite0")
    p.add_argument("--prototxt")
    p.add_argument("--weights", help=".caffemodel / .h5 (with --prototxt, or instead of the model's own)")
    p.add_argument("--replace", help="classifier layer to resize (default: the last InnerProduct)")
    p.add_argument("--train-from", required=True, help="first trainable layer; layers before it are frozen")
    p.add_argument("--features", default=None, help="blob for the frozen/refined feature + LR comparison")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--backend", default="cpu", choices=("numpy", "cpu"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="refined weights (.h5)")
    return p


def main(argv=None):
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    args = build_parser().parse_args(argv)
    if os.path.splitext(args.out)[1].lower() not in (".h5", ".hdf5"):
        raise MinicaffeError(f"--out {args.out}: the refined weights are HDF5; give a .h5 (or .hdf5) name")
    proto_out = os.path.splitext(args.out)[0] + ".prototxt"
    check_writable(args.out, "--out")          # before the training, not after it
    tr = list_inputs(args.train)
    if not tr.has_labels or any(l < 0 for l in tr.labels):
        raise MinicaffeError(f"{args.train}: every training image needs a label (ImageFolder layout or labelled list)")
    n_classes = int(max(tr.labels)) + 1
    text, params, pre, source = load_base(args.model, args.prototxt, args.weights)
    net, replaced = build_finetune_net(text, params, n_classes, args.replace, args.backend, args.seed)
    t0 = time.time()
    ftr = cached_cut_features(net, load_images(tr.paths, pre), args.train_from)
    print(f"cached {ftr.shape} at the cut in {time.time() - t0:.1f}s", file=sys.stderr)
    losses = train(net, ftr, tr.labels, args.train_from, replaced, args.iters, args.batch, args.lr, args.momentum,
                   args.weight_decay, seed=args.seed, log=lambda s: print(s, file=sys.stderr))
    net.save_h5(args.out, base=json.dumps(source, default=str), classes=json.dumps(tr.class_names or []),
                train_from=args.train_from, replaced=replaced, iters=args.iters, base_lr=args.lr,
                train_inputs=json.dumps([str(t) for t in args.train]), final_loss=float(losses[-1]))
    # the refined net differs from the base model (the new classifier size): its own prototxt goes along
    tmp = f"{proto_out}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(net.prototxt_text)
    os.replace(tmp, proto_out)
    pre_name = args.model or "caffe"
    print(f"wrote {args.out} and {proto_out}; features of the refined net: python -m minicaffe.extract IMAGES "
          f"-o feats.h5 --prototxt {proto_out} --weights {args.out} --preprocess {pre_name}", file=sys.stderr)
    report = {"out": args.out, "classes": n_classes, "train_images": len(tr.paths),
              "loss_first": float(losses[0]), "loss_last": float(np.mean(losses[-10:]))}
    if args.test:
        te = list_inputs(args.test)
        if tr.class_names and te.class_names and te.class_names != tr.class_names:
            raise MinicaffeError(f"test classes {te.class_names} differ from training classes {tr.class_names}")
        fte = cached_cut_features(net, load_images(te.paths, pre), args.train_from)
        out_blob = net.layers[net.layer_index(replaced)].tops[0]
        scores = predict(net, fte, args.train_from, out_blob)[out_blob]
        report["test_accuracy"] = float((scores.argmax(1) == np.asarray(te.labels)).mean())
    print(json.dumps(report))
    return 0
