"""Softmax + multinomial logistic loss (Caffe type ``SoftmaxWithLoss``), for training.

Shapes: scores ``x: (N, C)`` (or ``(N, C, H, W)``: one prediction per position), labels ``(N,)``
(or ``(N, H, W)``; integer-valued floats, as Caffe's label blobs) -> the loss, a 0-d blob:
``-mean log softmax(x)[label]`` over the counted positions. ``loss_param { ignore_label }`` skips a
label value; ``normalization`` VALID (Caffe's default: divide by the counted positions), BATCH_SIZE,
FULL or NONE. The gradient w.r.t. the scores is ``loss_weight * (p - onehot(label)) / norm``
(Caffe's softmax_loss_layer.cpp); labels get no gradient. Implementations:
``softmax_loss_reference`` / ``softmax_loss_backward_reference`` (NumPy) and ``*_cpu`` (Numba).
It does not implement the other Caffe losses (Euclidean, hinge, infogain) and has no CUDA kernel.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .base import Layer, int_value, register
from .softmax import _as3, softmax_cpu

NO_IGNORE = None


def _norm(valid, count, n, mode):
    if mode == "VALID":
        return max(float(valid), 1.0)
    if mode == "BATCH_SIZE":
        return float(n)
    if mode == "FULL":
        return float(count)
    return 1.0  # NONE


def softmax_loss_reference(x, labels, axis=1, ignore_label=NO_IGNORE, normalization="VALID"):
    """x: (N, C, ...) scores, labels: (N, ...) -> (loss: float, prob: like x)."""
    # log-softmax computed directly (not log(prob)) so a saturated prob gives a finite loss;
    # the input's dtype is kept (float64 in finite-difference checks)
    z = x - x.max(axis=axis, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
    prob = np.exp(logp)
    lab = np.asarray(labels).astype(np.int64)
    valid = np.ones(lab.shape, bool) if ignore_label is None else lab != ignore_label
    safe = np.where(valid, lab, 0)
    if safe.min() < 0 or safe.max() >= x.shape[axis]:
        raise ValueError(f"labels must lie in [0, {x.shape[axis]}), got {lab.min()}..{lab.max()}")
    picked = np.take_along_axis(logp, np.expand_dims(safe, axis), axis=axis).squeeze(axis)
    norm = _norm(valid.sum(), lab.size, x.shape[0], normalization)
    return float(-(picked * valid).sum() / norm), prob


def softmax_loss_backward_reference(prob, labels, axis=1, ignore_label=NO_IGNORE, normalization="VALID",
                                    loss_weight=1.0):
    """prob: (N, C, ...) softmax output, labels: (N, ...) -> dx = loss_weight * (prob - onehot) / norm."""
    lab = np.asarray(labels).astype(np.int64)
    valid = np.ones(lab.shape, bool) if ignore_label is None else lab != ignore_label
    safe = np.where(valid, lab, 0)
    onehot = np.zeros_like(prob)
    np.put_along_axis(onehot, np.expand_dims(safe, axis), 1.0, axis=axis)
    g = (prob - onehot) * np.expand_dims(valid, axis)
    return g * (loss_weight / _norm(valid.sum(), lab.size, prob.shape[0], normalization))


@njit(parallel=True, cache=True, nogil=True)
def _loss_grad3(prob, lab, ignore, has_ignore, scale, dx):
    # prob, dx: (outer, C, inner); lab: (outer, inner) int64
    O, C, I = prob.shape
    for t in prange(O * I):
        o = t // I
        i = t % I
        l = lab[o, i]
        if has_ignore and l == ignore:
            for c in range(C):
                dx[o, c, i] = 0.0
        else:
            for c in range(C):
                dx[o, c, i] = prob[o, c, i] * scale
            dx[o, l, i] -= scale


def softmax_loss_cpu(x, labels, axis=1, ignore_label=NO_IGNORE, normalization="VALID"):
    """Same contract as :func:`softmax_loss_reference`; the softmax is the Numba kernel."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    prob = softmax_cpu(x, axis)
    s3 = _as3(x.shape, axis)
    lab = np.asarray(labels).astype(np.int64).reshape(s3[0], s3[2])
    valid = np.ones(lab.shape, bool) if ignore_label is None else lab != ignore_label
    safe = np.where(valid, lab, 0)
    if safe.min() < 0 or safe.max() >= s3[1]:
        raise ValueError(f"labels must lie in [0, {s3[1]}), got {lab.min()}..{lab.max()}")
    p3 = prob.reshape(s3)
    picked = np.take_along_axis(p3, safe[:, None, :], axis=1)[:, 0, :].astype(np.float64)
    # Caffe clamps the probability at FLT_MIN before the log
    nll = -np.log(np.maximum(picked, np.finfo(np.float32).tiny))
    norm = _norm(valid.sum(), lab.size, x.shape[0], normalization)
    return float((nll * valid).sum() / norm), prob


def softmax_loss_backward_cpu(prob, labels, axis=1, ignore_label=NO_IGNORE, normalization="VALID",
                              loss_weight=1.0):
    prob = np.ascontiguousarray(prob, dtype=np.float32)
    s3 = _as3(prob.shape, axis)
    lab = np.ascontiguousarray(np.asarray(labels).astype(np.int64).reshape(s3[0], s3[2]))
    valid = np.ones(lab.shape, bool) if ignore_label is None else lab != ignore_label
    scale = loss_weight / _norm(valid.sum(), lab.size, prob.shape[0], normalization)
    dx = np.empty_like(prob)
    _loss_grad3(prob.reshape(s3), lab, -1 if ignore_label is None else int(ignore_label),
                ignore_label is not None, np.float32(scale), dx.reshape(s3))
    return dx


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    """bottoms: [scores, label] -> top: the 0-d loss. ``self.prob`` keeps the softmax for backward."""

    is_loss = True

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        if len(self.bottoms) != 2:
            raise self.err("needs two bottoms: scores and labels")
        self.axis = int_value(self, "softmax_param.axis", self.pget("softmax_param").get("axis", 1))
        lossp = self.pget("loss_param")
        self.ignore_label = lossp.get("ignore_label")
        norm = lossp.get("normalization")
        if norm is None:  # legacy `normalize: false` means BATCH_SIZE
            norm = "VALID" if lossp.get("normalize") in (None, True, "true") else "BATCH_SIZE"
        self.normalization = str(norm)
        if self.normalization not in ("VALID", "BATCH_SIZE", "FULL", "NONE"):
            raise self.err(f"unknown loss_param.normalization {self.normalization}")
        lw = self.lp.getall("loss_weight")
        self.loss_weight = float(lw[0]) if lw else 1.0

    def setup(self, shapes):
        n = len(shapes[0])
        ax = self.axis if self.axis >= 0 else n + self.axis
        want = tuple(shapes[0][:ax]) + tuple(shapes[0][ax + 1:])
        if int(np.prod(shapes[1])) != int(np.prod(want)):
            raise self.err(f"label shape {shapes[1]} does not match the scores {shapes[0]} "
                           f"(one label per position: {want})")
        self._ax = ax
        return [()]

    def forward(self, bottoms, params, backend, inplace=False):
        if backend == "cuda":
            raise self.err("runs on the numpy and cpu backends only")
        x, lab = bottoms
        f = softmax_loss_reference if backend == "numpy" else softmax_loss_cpu
        lab = np.asarray(lab).reshape(tuple(x.shape[:self._ax]) + tuple(x.shape[self._ax + 1:]))
        loss, self.prob = f(x, lab, self._ax, self.ignore_label, self.normalization)
        return [np.asarray(loss, dtype=np.float32)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        x, lab = bottoms
        lab = np.asarray(lab).reshape(tuple(x.shape[:self._ax]) + tuple(x.shape[self._ax + 1:]))
        # the loss blob's diff is its weight (1 by default): Caffe seeds loss tops with loss_weight
        w = float(np.asarray(top_diffs[0]).reshape(-1)[0]) if top_diffs[0] is not None else self.loss_weight
        f = softmax_loss_backward_reference if backend == "numpy" else softmax_loss_backward_cpu
        return [f(self.prob, lab, self._ax, self.ignore_label, self.normalization, w), None], []
