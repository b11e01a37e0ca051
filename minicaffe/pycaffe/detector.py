"""pycaffe's ``caffe.Detector``: R-CNN-style scoring of image windows with a TEST-phase Net.

``Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
channel_swap=None, context_pad=None)``; ``detect_windows([(image file, [(ymin, xmin, ymax,
xmax), ...]), ...])`` crops every window (with ``context_pad`` pixels of context, the out-of-image
part filled with the mean, as BVLC's detector.py), warps it to the input size, and returns one
``{'window', 'prediction', 'filename'}`` dict per window. ``detect_selective_search`` needs the
external ``selective_search_ijcv_with_python`` package, as in Caffe.
"""
from __future__ import annotations

import os

import numpy as np

from . import io as caffe_io
from .classifier import input_transformer
from .net import TEST, Net


class Detector(Net):
    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, pretrained_file, TEST)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        images_windows = list(images_windows)
        crops = []
        for fname, windows in images_windows:
            image = caffe_io.load_image(fname).astype(np.float32)
            for window in windows:
                crops.append(self.crop(image, window))
        in_ = self.inputs[0]
        net_in = np.zeros((len(crops), crops[0].shape[2]) + tuple(self.blobs[in_].data.shape[2:]), dtype=np.float32)
        for i, c in enumerate(crops):
            net_in[i] = self.transformer.preprocess(in_, c)
        preds = self.forward_all(**{in_: net_in})[self.outputs[0]]
        out, i = [], 0
        for fname, windows in images_windows:
            for window in windows:
                out.append({"window": window, "prediction": preds[i], "filename": fname})
                i += 1
        return out

    def detect_selective_search(self, image_fnames):
        import selective_search_ijcv_with_python as selective_search
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))

    def crop(self, im, window):
        """im: (H, W, K); window: (ymin, xmin, ymax, xmax) -> the crop (with context when set)."""
        window = np.asarray(window)
        crop = im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        if not self.context_pad:
            return crop
        size = self.blobs[self.inputs[0]].width  # square inputs, as Caffe assumes
        scale = size / (1.0 * size - self.context_pad * 2)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        center = np.array((window[0] + half_h, window[1] + half_w))
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = size / (box[2] - box[0] + 1)
        scale_w = size / (box[3] - box[1] + 1)
        pad_y = round(max(0, -box[0]) * scale_h)  # rows that fall outside the image
        pad_x = round(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        crop_h = round((box[2] - box[0] + 1) * scale_h)
        crop_w = round((box[3] - box[1] + 1) * scale_w)
        crop_h = min(crop_h, size - pad_y)
        crop_w = min(crop_w, size - pad_x)
        context = caffe_io.resize_image(im[int(box[0]):int(box[2]), int(box[1]):int(box[3])], (crop_h, crop_w))
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def configure_crop(self, context_pad):
        """Crop size from the input blob, and the mean image that fills context outside the image."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv = [tpose[t] for t in tpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(inv)  # CHW mean -> HWC like the crops
        order = self.transformer.channel_swap.get(in_)
        if order is not None:
            crop_mean = crop_mean[:, :, [list(order).index(i) for i in range(crop_mean.shape[2])]]
        raw = self.transformer.raw_scale.get(in_)
        if raw is not None:
            crop_mean = crop_mean / raw
        self.crop_mean = crop_mean
