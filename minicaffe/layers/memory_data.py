"""Caffe's ``MemoryData`` layer: batches from arrays handed over by the caller.

``memory_data_param { batch_size channels height width }`` gives the tops ``data (batch, C, H,
W)`` and ``label (batch,)``. ``reset(data, labels)`` (pycaffe's ``net.set_input_arrays``) hands
over ``(N, C, H, W)`` float32 data and ``N`` labels, ``N`` a multiple of the batch size; each
forward then yields the next batch, wrapping around at the end (memory_data_layer.cpp). It
applies no ``transform_param`` and has no backward.
"""
from __future__ import annotations

import numpy as np

from .base import Layer, register


@register("MemoryData")
class MemoryData(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("memory_data_param")
        self.shape = tuple(int(p.get(k, 0)) for k in ("batch_size", "channels", "height", "width"))
        if min(self.shape) < 1:
            raise self.err("memory_data_param needs positive batch_size, channels, height and width")
        if not 1 <= len(self.tops) <= 2:
            raise self.err("has one or two tops (data, label)")
        self.data = self.labels = None
        self.pos = 0

    def reset(self, data, labels):
        """data: (N, C, H, W), labels: N values (any shape with N elements), N % batch_size == 0."""
        data = np.asarray(data)
        labels = np.asarray(labels).reshape(-1)
        if data.ndim != 4 or tuple(data.shape[1:]) != self.shape[1:]:
            raise self.err(f"input data must be (N, {', '.join(map(str, self.shape[1:]))}), got {data.shape}")
        if labels.shape[0] != data.shape[0]:
            raise self.err(f"{data.shape[0]} images but {labels.shape[0]} labels")
        if data.shape[0] % self.shape[0]:
            raise self.err(f"the number of images {data.shape[0]} must be a multiple of batch_size {self.shape[0]}")
        self.data = np.ascontiguousarray(data, np.float32)
        self.labels = labels.astype(np.float32)
        self.pos = 0

    def setup(self, shapes):
        return [self.shape] + ([(self.shape[0],)] if len(self.tops) == 2 else [])

    def forward(self, bottoms, params, backend, inplace=False):
        if self.data is None:
            raise self.err("no data yet: call net.set_input_arrays(data, labels) first")
        b = self.shape[0]
        out = [self.data[self.pos:self.pos + b].copy()]
        if len(self.tops) == 2:
            out.append(self.labels[self.pos:self.pos + b].copy())
        self.pos = (self.pos + b) % self.data.shape[0]
        return out
