"""Fine-tune a pretrained net on a new task: ``python -m minicaffe.finetune``.

Takes a registered model (``--model efficientnet-lite0``) or a deploy prototxt + weights, replaces
the last classifier layer (an ``InnerProduct``, default the last one) with one sized to the new
task's classes (Gaussian std 0.01 weights, zero bias, as Caffe's fine-tuning examples), freezes
every layer before ``--train-from`` and trains the rest with :class:`~minicaffe.solver.SGDSolver`
on an ImageFolder / list dataset read by :mod:`minicaffe.datasets` and preprocessed by
:mod:`minicaffe.preprocess` exactly as ``extract`` does. Frozen layers run once per image: their
output at the cut (the one blob ``--train-from`` reads) is cached and the training iterations run
the net from ``--train-from`` on (start/end of ``Net.forward``), so the cut must be a single blob
that no later layer bypasses. Dropout above the cut runs in Caffe's TRAIN mode. Writes the refined
weights as ``.h5`` (with the edited prototxt and provenance attributes), the edited prototxt next to
it (``OUT`` with ``.prototxt``: ``extract --prototxt`` takes it with the weights) and, with ``--test``,
reports held-out accuracy of the refined net and of frozen vs refined features + logistic
regression (the transfer protocol's classifier). It does not augment data (the cached features
would have to be recomputed per epoch) and trains on the numpy/cpu backends only.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time

import numpy as np

from .errors import MinicaffeError, ModelError

#: Caffe's fine-tuning examples initialise the new classifier with these
NEW_LAYER_STD = 0.01


# ------------------------------------------------------------------------------------- net surgery

def replace_num_output(text, layer_name, n):
    """Prototxt text -> the same text with ``num_output`` of layer ``layer_name`` set to ``n``."""
    m = re.search(r'name\s*:\s*"' + re.escape(layer_name) + r'"', text)
    if not m:
        raise ModelError(f"no layer named {layer_name!r} in the prototxt")
    nxt = re.search(r"\blayers?\s*\{", text[m.end():])
    stop = m.end() + (nxt.start() if nxt else len(text) - m.end())
    # the layer block may start before its name field: look from the enclosing 'layer {'
    start = text.rfind("layer", 0, m.start())
    k = re.compile(r"num_output\s*:\s*\d+")
    block = text[start:stop]
    if not k.search(block):
        raise ModelError(f"layer {layer_name!r} has no num_output to replace")
    return text[:start] + k.sub(f"num_output: {int(n)}", block, count=1) + text[stop:]


def build_finetune_net(prototxt_text, params, n_classes, replace=None, backend="cpu", seed=0):
    """-> (Net with ``replace`` (default: the last InnerProduct) resized to ``n_classes`` and
    freshly initialised, its other layers' weights from ``params``, the replaced layer's name)."""
    from .net import Net
    probe = Net(prototxt_text, weights=params, backend=backend)
    if replace is None:
        ips = [l.name for l in probe.layers if l.type == "InnerProduct"]
        if not ips:
            raise ModelError("the net has no InnerProduct layer to replace; name one with --replace")
        replace = ips[-1]
    layer = probe.layers[probe.layer_index(replace)]
    if layer.type not in ("InnerProduct", "Convolution"):
        raise ModelError(f"--replace {replace!r} is a {layer.type}; expected InnerProduct (or a 1x1 Convolution)")
    text = replace_num_output(prototxt_text, replace, n_classes)
    rng = np.random.default_rng(seed)
    new = dict(params)
    shapes = Net(text, backend="numpy").layers[probe.layer_index(replace)].param_shapes
    new[replace] = [(rng.standard_normal(shapes[0]) * NEW_LAYER_STD).astype(np.float32)] + \
        [np.zeros(s, np.float32) for s in shapes[1:]]
    net = Net(text, weights=new, backend=backend)
    return net, replace


def cut_blob(net, train_from):
    """The one blob layer ``train_from`` reads; error if a later layer reads an earlier blob."""
    i0 = net.layer_index(train_from)
    layer = net.layers[i0]
    if len(layer.bottoms) != 1:
        raise ModelError(f"--train-from {train_from!r} reads {len(layer.bottoms)} blobs; choose a layer with one input")
    cut = layer.bottoms[0]
    before = set(net.input_names)
    for l in net.layers[:i0]:
        before.update(l.tops)
    for l in net.layers[i0:]:
        for b in l.bottoms:
            if b in before and b != cut and b not in l.tops:
                raise ModelError(f"layer {l.name!r} reads {b!r}, computed before --train-from {train_from!r}; "
                                 "start training at a block boundary")
    return cut


# ------------------------------------------------------------------------------------- training

def cached_cut_features(net, x_batches, train_from):
    """Run the frozen layers (TEST phase) once: iterable of (N, C, H, W) -> (n, ...) cut blob."""
    i0 = net.layer_index(train_from)
    cut = cut_blob(net, train_from)
    out = []
    for x in x_batches:
        if i0 == 0 or (i0 == 1 and net.layers[0].type == "Input"):
            out.append(np.asarray(x, np.float32))
            continue
        end = net.layers[i0 - 1].name
        out.append(np.array(net.forward(x, end=end, fetch=[cut])[cut]))
    return np.concatenate(out)


def forward_from(net, feats, train_from, fetch):
    """feats: cached cut blob (N, ...) -> {blob: array} for ``fetch`` blobs (net phase as set)."""
    cut = cut_blob(net, train_from)
    from .train import forward as train_forward
    if net.phase == "TRAIN":
        blobs = train_forward(net, start=train_from, **{cut: feats})
    else:
        blobs = net.forward(start=train_from, **{cut: feats})
    return {k: blobs[k] for k in fetch}


def predict(net, feats, train_from, out_blob, batch=64, fetch=()):
    """Scores (and ``fetch`` blobs) of cached features, TEST phase."""
    phase = net.phase
    net.set_phase("TEST")
    res = {k: [] for k in (out_blob, *fetch)}
    for b0 in range(0, len(feats), batch):
        got = forward_from(net, feats[b0:b0 + batch], train_from, list(res))
        for k, parts in res.items():
            parts.append(np.array(got[k]).reshape(len(feats[b0:b0 + batch]), -1))
    net.set_phase(phase)
    return {k: np.concatenate(v) for k, v in res.items()}


def train(net, feats, labels, train_from, out_layer, iters=200, batch=32, base_lr=0.01, momentum=0.9,
          weight_decay=5e-4, lr_policy="step", gamma=0.1, stepsize=None, seed=0, log=None, lr_mult=None):
    """SGD on the layers from ``train_from`` on, with softmax loss on ``out_layer``'s top.

    feats: (N, ...) cached cut blob; labels: (N,) ints; lr_mult: {layer: multiplier} (e.g. 10 for
    the new classifier, as Caffe's fine-tuning examples). Returns the per-iteration losses.
    """
    from .layers.loss import softmax_loss_backward_cpu, softmax_loss_cpu
    from .solver import SGDSolver
    i0 = net.layer_index(train_from)
    frozen = [l.name for l in net.layers[:i0] if l.param_shapes]
    solver = SGDSolver(net, base_lr=base_lr, momentum=momentum, weight_decay=weight_decay, lr_policy=lr_policy,
                       gamma=gamma, stepsize=stepsize or max(1, int(iters * 0.75)), max_iter=iters, freeze=frozen,
                       lr_mult=lr_mult)
    out_blob = net.layers[net.layer_index(out_layer)].tops[0]
    net.set_phase("TRAIN", seed=seed)
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, np.int64)
    order, pos, losses = rng.permutation(len(feats)), 0, []
    for it in range(iters):
        if pos + batch > len(order):       # a new epoch: reshuffle (Caffe's shuffle: true)
            order, pos = rng.permutation(len(feats)), 0
        idx = order[pos:pos + batch]
        pos += batch
        scores = forward_from(net, feats[idx], train_from, [out_blob])[out_blob]
        s2 = scores.reshape(len(idx), -1)
        loss, prob = softmax_loss_cpu(s2, labels[idx])
        d = softmax_loss_backward_cpu(prob, labels[idx]).reshape(scores.shape)
        net.backward({out_blob: d}, end=train_from)
        solver.step()
        losses.append(loss)
        if log and (it % max(1, iters // 10) == 0 or it == iters - 1):
            log(f"iter {it:5d}  loss {loss:.4f}  lr {solver.lr(it):.2e}")
    net.set_phase("TEST")
    return np.array(losses)


# ------------------------------------------------------------------------------------- CLI

def load_base(args):
    """-> (prototxt text, {layer: [arrays]}, Preprocessing, description of the source)."""
    from .models import CAFFE_PREPROCESSING, get_model
    from .net import Net
    if args.model:
        spec = get_model(args.model)
        base = spec.load(backend="numpy", weights=args.weights)
        return base.prototxt_text, dict(base.params), spec.preprocessing, {
            "model": spec.name, "weights": base.weights_path, "weights_sha1": base.weights_sha1}
    if not (args.prototxt and args.weights):
        raise ModelError("give --model NAME, or --prototxt and --weights")
    base = Net(args.prototxt, args.weights, backend="numpy")
    H = base.input_shapes[base.input_names[0]][2]
    pre = CAFFE_PREPROCESSING if H == 227 else CAFFE_PREPROCESSING.__class__(
        resize=(H + H // 8, H + H // 8), crop=H, channel_order="BGR", mean_values=(104.0, 117.0, 123.0))
    return base.prototxt_text, dict(base.params), pre, {"prototxt": args.prototxt, "weights": args.weights,
                                                         "weights_sha1": base.weights_sha1}


def load_images(paths, spec, batch=16):
    from .preprocess import preprocess_image
    for b0 in range(0, len(paths), batch):
        yield np.stack([preprocess_image(p, spec) for p in paths[b0:b0 + batch]])


def build_parser():
    p = argparse.ArgumentParser(prog="python -m minicaffe.finetune", description=__doc__.split("\n\n")[0])
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
    import os

    from .datasets import list_inputs
    from .runtime import auto_tune
    auto_tune()     # process tuning for fast forwards: minicaffe/runtime.py
    args = build_parser().parse_args(argv)
    if os.path.splitext(args.out)[1].lower() not in (".h5", ".hdf5"):
        raise MinicaffeError(f"--out {args.out}: the refined weights are HDF5; give a .h5 (or .hdf5) name")
    proto_out = os.path.splitext(args.out)[0] + ".prototxt"
    from .cli import check_writable
    check_writable(args.out, "--out")          # before the training, not after it
    tr = list_inputs(args.train)
    if not tr.has_labels or any(l < 0 for l in tr.labels):
        raise MinicaffeError(f"{args.train}: every training image needs a label (ImageFolder layout or labelled list)")
    n_classes = int(max(tr.labels)) + 1
    text, params, pre, source = load_base(args)
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


if __name__ == "__main__":
    from .cli import exit_with
    exit_with(main)
