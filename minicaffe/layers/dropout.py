"""Dropout (Caffe type ``Dropout``): the identity at test time.

Caffe scales by 1/(1-ratio) while *training* (inverted dropout), so the TEST-phase forward is
the identity on every backend: the output is the input array itself (in place, as in the stock
prototxts). The training-phase mask is not part of the inference engine.
"""
from __future__ import annotations

from ..backend import copy_array
from .base import Layer, register


def dropout_reference(x):
    """x: any shape -> x (test phase)."""
    return x


dropout_cpu = dropout_cuda = dropout_reference  # the identity needs no kernel


@register("Dropout")
class Dropout(Layer):
    can_run_inplace = True

    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        self.ratio = float(self.pget("dropout_param").get("dropout_ratio", 0.5))
        if not 0.0 <= self.ratio < 1.0:
            raise self.err("dropout_ratio must be in [0, 1)")

    def setup(self, shapes):
        return [tuple(shapes[0])]

    def forward(self, bottoms, params, backend, inplace=False):
        x = bottoms[0]
        return [x if inplace else copy_array(x)]
