"""Dropout (Caffe type ``Dropout``): the identity at test time.

Caffe scales by 1/(1-ratio) while *training* (inverted dropout), so the TEST-phase forward is
the identity on every backend: the output is the input array itself (in place, as in the stock
prototxts). The training-phase mask is not part of the inference engine.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..backend import copy_array
from .base import Layer, register


def dropout_reference(x):
    """x: any shape -> x (test phase)."""
    return x


dropout_cpu = dropout_cuda = dropout_reference  # the identity needs no kernel


@register("Dropout")
class Dropout(Layer):
    can_run_inplace = True
    #: set by Net.set_phase; "TRAIN" draws a mask, "TEST" is the identity
    phase = "TEST"

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        self.ratio = float(self.pget("dropout_param").get("dropout_ratio", 0.5))
        if not 0.0 <= self.ratio < 1.0:
            raise self.err("dropout_ratio must be in [0, 1)")

    def setup(self, shapes):
        return [tuple(shapes[0])]

    def forward(self, bottoms, params, backend, inplace=False):
        x = bottoms[0]
        if self.phase == "TRAIN":  # Caffe's TRAIN phase: a fresh mask (see dropout_train_forward)
            return [dropout_train_forward(self, x, backend)]
        return [x if inplace else copy_array(x)]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        return _dropout_layer_backward(self, top_diffs, bottoms, tops, params, backend)


# ---------------------------------------------------------------------------------------------
# training phase: forward with a mask, and backward


def dropout_mask(rng, shape, ratio):
    """-> bool mask of ``shape``, True with probability 1 - ratio (Caffe's Bernoulli(1 - ratio))."""
    return rng.random(shape) >= ratio


def dropout_train_reference(x, mask, ratio):
    """x: any shape, mask: bool, same shape -> x * mask / (1 - ratio) (Caffe's inverted dropout)."""
    return x * mask * (1.0 / (1.0 - ratio))


def dropout_backward_reference(dy, mask, ratio):
    """dy, mask: same shape -> dx = dy * mask / (1 - ratio)."""
    return dy * mask * (1.0 / (1.0 - ratio))


@njit(parallel=True, cache=True, nogil=True)
def _masked_scale(v, mask, scale, out):
    for i in prange(v.size):
        out[i] = v[i] * scale if mask[i] else np.float32(0.0)


def dropout_backward_cpu(dy, mask, ratio):
    """Same contract as :func:`dropout_backward_reference`, float32 (Numba)."""
    dy = np.ascontiguousarray(dy, dtype=np.float32)
    dx = np.empty_like(dy)
    _masked_scale(dy.reshape(-1), np.ascontiguousarray(mask).reshape(-1), np.float32(1.0 / (1.0 - ratio)),
                  dx.reshape(-1))
    return dx


dropout_train_cpu = dropout_backward_cpu  # the same masked scaling, applied to x


def dropout_train_forward(layer, x, backend):
    """TRAIN-phase forward: draw a mask from ``layer.rng`` (seeded by Net.set_phase), keep it on
    the layer (``layer.mask``, as Caffe keeps ``rand_vec_``) for the backward, return the output."""
    if getattr(layer, "rng", None) is None:
        layer.rng = np.random.default_rng(0)
    layer.mask = dropout_mask(layer.rng, x.shape, layer.ratio)
    if backend == "numpy":
        return dropout_train_reference(x, layer.mask, layer.ratio).astype(np.float32)
    if backend == "cpu":
        return dropout_train_cpu(x, layer.mask, layer.ratio)
    raise layer.err("the TRAIN phase (dropout masks) runs on the numpy and cpu backends only")


def _dropout_layer_backward(self, top_diffs, bottoms, tops, params, backend):
    if self.phase != "TRAIN":  # TEST phase: the identity
        return [top_diffs[0]], []
    f = self.backend_kernel(backend, "backward", numpy=dropout_backward_reference, cpu=dropout_backward_cpu)
    return [f(top_diffs[0], self.mask, self.ratio)], []


