"""The backward pass of a :class:`~minicaffe.net.Net`, and its TRAIN phase.

``set_phase(net, "TRAIN")`` switches Dropout layers to Caffe's training behaviour (a fresh
Bernoulli(1 - ratio) mask per forward, scaled by 1/(1 - ratio)) and attaches a recording hook to
the net's ordinary forward loop: in TRAIN phase the forward keeps every layer's bottom (no layer
runs in place; pre-in-place values are the ``<blob>.pre`` blobs) and the hook records each
layer's tops. ``backward(net, top_diffs=None)`` then walks the recorded layers in reverse,
calling each layer's ``backward(top_diffs, bottoms, tops, params, backend)``; the seed is the
given ``{blob: diff}`` and/or the ``loss_weight`` of every loss layer (``SoftmaxWithLoss``).
Blob names reused by in-place layers are versioned while walking, so ``relu1``'s backward sees
the diff of its own top; afterwards ``net.diffs[blob]`` holds the gradient w.r.t. the *earliest*
value of that blob (Caffe's semantics: for ``conv1`` the pre-ReLU convolution output; for an input,
the input gradient) and ``net.param_diffs[layer] = [dW, db]`` (``None`` for blobs that are not
learned, BatchNorm statistics). Gradients of a blob read by several layers are summed (what
Caffe's implicit Split layer does). It runs on the numpy and cpu backends; it does not do weight
updates (:mod:`minicaffe.solver`), shared parameters, or CUDA backward kernels.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .errors import BackendError, ModelError

PHASES = ("TRAIN", "TEST")


def _record_before(net, i, layer):
    rec = net._train_record
    if rec["last"] is not None and i <= rec["last"]:  # a new forward pass started
        rec["tops"].clear()
    rec["last"] = i


def _record_after(net, i, layer, tops):
    net._train_record["tops"][i] = list(tops)


def set_phase(net, phase, seed=0):
    """``phase``: "TRAIN" (dropout masks drawn from a generator seeded by ``seed``, forward passes
    recorded for :func:`backward`) or "TEST" (inference, nothing recorded)."""
    if phase not in PHASES:
        raise ModelError(f"phase must be one of {PHASES}, got {phase!r}")
    if phase == "TRAIN" and net.backend not in ("numpy", "cpu"):
        raise BackendError(f"the TRAIN phase and backward run on the numpy and cpu backends, not {net.backend!r}")
    net.phase = phase
    root = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type == "Dropout":
            layer.phase = phase
            layer.rng = np.random.default_rng(root.integers(2 ** 63))
    handle = getattr(net, "_train_hook", None)
    if phase == "TRAIN" and handle is None:
        net._train_record = {"tops": {}, "last": None}
        net._train_hook = net.add_hook(before=_record_before, after=_record_after)
    elif phase == "TEST" and handle is not None:
        net.remove_hook(handle)
        net._train_hook = None


def forward(net, data=None, start=None, end=None, **inputs):
    """A TRAIN-phase forward of ``net`` (switching it to TRAIN if needed); arguments as
    :meth:`Net.forward`. With ``start``, the blobs read by layer ``start`` are given by name in
    ``inputs`` (e.g. cached features of frozen layers)."""
    if net.phase != "TRAIN":
        set_phase(net, "TRAIN")
    if start is not None:
        # a partial pass reuses net.blobs: drop stale pre-in-place copies of the previous pass
        for k in [k for k in net.blobs if k.endswith(".pre")]:
            del net.blobs[k]
    net._train_record["tops"].clear()
    net._train_record["last"] = None
    return net.forward(data, start=start, end=end, **inputs)


def _plan(net):
    """Replay the recorded pass: per layer (index, bottoms, bottom keys, tops, top keys), with
    keys (blob name, version) so in-place rewrites of one name stay distinct values."""
    rec = getattr(net, "_train_record", None)
    if net.phase != "TRAIN" or rec is None or not rec["tops"]:
        raise ModelError("backward needs a forward pass in the TRAIN phase first "
                         "(net.set_phase('TRAIN'); net.forward(x); net.backward(...))")
    order = sorted(rec["tops"])
    current = {}
    plan = []
    for i in order:
        layer = net.layers[i]
        bots, bkeys = [], []
        for b in layer.bottoms:
            if b not in current:
                # a blob from outside the recorded range (an input, or the start blob of a partial
                # pass): its value before any in-place layer of this pass is kept as <b>.pre
                arr = net.blobs.get(b + ".pre", net.blobs.get(b))
                if arr is None:
                    raise ModelError(f"layer {layer.name!r} reads {b!r}, which the recorded pass lacks")
                current[b] = (arr, (b, 0))
            arr, key = current[b]
            bots.append(arr)
            bkeys.append(key)
        tkeys = []
        for t, arr in zip(layer.tops, rec["tops"][i]):
            key = (t, current[t][1][1] + 1) if t in current else (t, 0)
            current[t] = (arr, key)
            tkeys.append(key)
        plan.append((i, bots, bkeys, rec["tops"][i], tkeys))
    return plan, current


def backward(net, top_diffs=None, end=None):
    """Backpropagate through the last TRAIN-phase forward of ``net``.

    top_diffs : {blob name: diff array shaped like the blob} seeding the gradient of the blob's
        final value (e.g. ``{"fc8": dL/dfc8}``); loss layers are seeded with their ``loss_weight``.
    end : a layer name: stop after that layer's backward (layers below it get no gradient;
        saves time when they are frozen).
    Returns ``net.diffs`` (blob -> gradient w.r.t. its earliest value); ``net.param_diffs`` is
    filled as well.
    """
    if net.backend not in ("numpy", "cpu"):
        raise BackendError(f"backward runs on the numpy and cpu backends, not {net.backend!r}")
    plan, current = _plan(net)
    diffs = {}
    for name, d in (top_diffs or {}).items():
        if name not in current:
            raise ModelError(f"top_diffs names {name!r}, which is not a blob of the recorded pass")
        arr, key = current[name]
        d = np.asarray(d, dtype=np.float32 if net.backend == "cpu" else np.asarray(d).dtype)
        if d.shape != tuple(arr.shape):
            raise ModelError(f"diff for {name!r} has shape {d.shape}, the blob is {tuple(arr.shape)}")
        diffs[key] = d
    for i, _, _, _tops, tkeys in plan:
        layer = net.layers[i]
        if getattr(layer, "is_loss", False) and tkeys[0] not in diffs:
            diffs[tkeys[0]] = np.asarray(layer.loss_weight, dtype=np.float32)
    if not diffs:
        raise ModelError("nothing to backpropagate: give top_diffs or end the net with a loss layer")
    i_end = None if end is None else net.layer_index(end)
    param_diffs = OrderedDict()
    for i, bots, bkeys, tops, tkeys in reversed(plan):
        layer = net.layers[i]
        tds = [diffs.get(k) for k in tkeys]
        if all(d is None for d in tds):
            continue  # nothing above depends on this layer
        tds = [np.zeros(t.shape, np.float32) if d is None else d for t, d in zip(tops, tds)]
        bds, pds = layer.backward(tds, bots, tops, net.params.get(layer.name, []), net.backend)
        for key, d in zip(bkeys, bds):
            if d is None:
                continue
            # never add in place: a diff may alias another (Flatten and TEST Dropout pass it through)
            diffs[key] = d if key not in diffs else diffs[key] + d
        if pds:
            param_diffs[layer.name] = list(pds)
        if i_end is not None and i == i_end:
            break
    earliest = OrderedDict()
    for key in sorted(diffs, key=lambda k: k[1]):
        earliest.setdefault(key[0], diffs[key])
    net.diffs = earliest
    net.param_diffs = param_diffs
    return earliest
