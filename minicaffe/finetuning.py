"""Fine-tune a pretrained net on a new task: the library under ``python -m minicaffe.finetune``
(:mod:`minicaffe.tools.finetune`).

:func:`build_finetune_net` takes a base net (:func:`load_base`: a registered model or a deploy
prototxt + weights) and replaces its last classifier layer (an ``InnerProduct``, default the last
one) with one sized to the new task's classes (Gaussian std 0.01 weights, zero bias, as Caffe's
fine-tuning examples). Every layer before ``train_from`` is frozen: :func:`cached_cut_features`
runs the frozen layers once per image and keeps their output at the cut (the one blob
``train_from`` reads, :func:`cut_blob`), and :func:`train` runs SGD
(:class:`~minicaffe.solver.SGDSolver`, softmax loss) on the net from ``train_from`` on (start/end
of ``Net.forward``), so the cut must be a single blob that no later layer bypasses. Dropout above
the cut runs in Caffe's TRAIN mode. :func:`predict` scores cached features in the TEST phase. It
does not augment data (the cached features would have to be recomputed per epoch), trains on the
numpy/cpu backends only, parses no arguments and prints nothing (:func:`train` reports through
its ``log`` callback).
"""
from __future__ import annotations

import re

import numpy as np

from .errors import ModelError

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


# ------------------------------------------------------------------------------------- the base net and images

def load_base(model=None, prototxt=None, weights=None):
    """A registered ``model`` (its weights, or ``weights``) or ``prototxt`` + ``weights`` -> (prototxt text,
    {layer: [arrays]}, Preprocessing, description of the source)."""
    from .models import CAFFE_PREPROCESSING, get_model
    from .net import Net
    if model:
        spec = get_model(model)
        base = spec.load(backend="numpy", weights=weights)
        return base.prototxt_text, dict(base.params), spec.preprocessing, {
            "model": spec.name, "weights": base.weights_path, "weights_sha1": base.weights_sha1}
    if not (prototxt and weights):
        raise ModelError("give --model NAME, or --prototxt and --weights")
    base = Net(prototxt, weights, backend="numpy")
    H = base.input_shapes[base.input_names[0]][2]
    pre = CAFFE_PREPROCESSING if H == 227 else CAFFE_PREPROCESSING.__class__(
        resize=(H + H // 8, H + H // 8), crop=H, channel_order="BGR", mean_values=(104.0, 117.0, 123.0))
    return base.prototxt_text, dict(base.params), pre, {"prototxt": prototxt, "weights": weights,
                                                         "weights_sha1": base.weights_sha1}


def load_images(paths, spec, batch=16):
    """Image paths -> batches (n <= ``batch``, C, H, W) preprocessed with ``spec``, one at a time."""
    from .preprocess import preprocess_image
    for b0 in range(0, len(paths), batch):
        yield np.stack([preprocess_image(p, spec) for p in paths[b0:b0 + batch]])
