"""pycaffe's ``caffe.Classifier``: a TEST-phase Net that predicts class scores for images.

``Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
raw_scale=None, channel_swap=None)`` configures a :class:`~minicaffe.pycaffe.io.Transformer` for
the first input (HWC -> CHW, then the given scale / mean / channel order). ``predict(images,
oversample=True)`` resizes each (H, W, K) image to ``image_dims``, takes Caffe's 10 crops (or the
centre crop), runs them in batches through ``forward_all`` and returns the first output per image
(the 10 crops averaged). It follows BVLC's classifier.py; it does no image decoding of its own.
"""
from __future__ import annotations

import numpy as np

from . import io as caffe_io
from .net import TEST, Net


def input_transformer(net, mean, input_scale, raw_scale, channel_swap):
    """The caffe.io.Transformer of ``net``'s first input that Classifier and Detector set up: HWC
    images -> CHW, then the given mean / scales / channel order (None: left as is)."""
    in_ = net.inputs[0]
    t = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    t.set_transpose(in_, (2, 0, 1))  # HWC image -> CHW input
    if mean is not None:
        t.set_mean(in_, mean)
    if input_scale is not None:
        t.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        t.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        t.set_channel_swap(in_, channel_swap)
    return t


class Classifier(Net):
    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = self.crop_dims if not image_dims else image_dims

    def predict(self, inputs, oversample=True):
        """inputs: iterable of (H, W, K) images -> (N, classes) scores of the first output."""
        inputs = list(inputs)
        h, w = int(self.image_dims[0]), int(self.image_dims[1])
        batch = np.zeros((len(inputs), h, w, inputs[0].shape[2]), dtype=np.float32)
        for i, im in enumerate(inputs):
            batch[i] = caffe_io.resize_image(im, (h, w))
        if oversample:
            batch = caffe_io.oversample(batch, self.crop_dims)
        else:
            ch, cw = (int(d) for d in self.crop_dims)
            y0, x0 = int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)  # truncation, as pycaffe
            batch = batch[:, y0:int(h / 2.0 + ch / 2.0), x0:int(w / 2.0 + cw / 2.0), :]
        in_ = self.inputs[0]
        # (N, H, W, K) crops -> (N, K, H, W) net input, one preprocess per crop
        net_in = np.zeros((batch.shape[0], batch.shape[3], batch.shape[1], batch.shape[2]), dtype=np.float32)
        for i, crop in enumerate(batch):
            net_in[i] = self.transformer.preprocess(in_, crop)
        scores = self.forward_all(**{in_: net_in})[self.outputs[0]]
        if oversample:
            scores = scores.reshape((len(scores) // 10, 10, -1)).mean(1)
        return scores
