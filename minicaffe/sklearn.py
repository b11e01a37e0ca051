"""``minicaffe.DeCAF``: DeCAF features as a scikit-learn transformer.

``make_pipeline(DeCAF(layer="fc6"), LinearSVC())`` works on a list of image paths or on in-memory
images ((N, H, W, 3) RGB arrays, uint8 or float 0..255, or a list of (H, W[, 3]) arrays of any
sizes). ``fit`` loads the network (it learns nothing from the data); ``transform`` returns
(N, D) float32 with the same preprocessing, crops and layer semantics as
``python -m minicaffe.extract``. A file that cannot be used raises :class:`ImageError` naming
it, because a transformer cannot drop rows; use the command line to skip bad files. The loaded
net is not pickled with the estimator: it is reloaded on the next ``fit``/``transform``.
"""
from __future__ import annotations

import os

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from .errors import ImageError
from .images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE


class DeCAF(TransformerMixin, BaseEstimator):
    """DeCAF feature transformer.

    Parameters
    ----------
    model : registered model name (default: ``efficientnet-lite0`` when registered, else ``caffenet``)
    layer : blob name or alias (``decaf6``), ``"fc6.pre"`` for pre-ReLU, or a list (concatenated);
        None: the model's default feature layer (DeCAF6 = fc6 for Caffe models, ``features`` = the
        global pool for EfficientNet)
    crop : ``"center"`` or ``"oversample"`` (10 crops, features averaged)
    prototxt, weights : a net of your own instead of ``model`` (weights also overrides a model's)
    preprocess : for ``prototxt``: ``"caffe"`` or a registered model's name
    mean : ``"model"`` or ``"channel"`` (per-channel means of the mean image)
    batch_size, backend : as the command line
    workers : decoding processes for path inputs (0: decode in this process)
    """

    def __init__(self, model: str | None = None, layer: str | None = None, crop: str = "center",
                 prototxt: str | None = None, weights: str | None = None, preprocess: str = "caffe",
                 mean: str = "model", batch_size: int = 32, backend: str = "cpu", workers: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, min_size: int = DEFAULT_MIN_SIZE) -> None:
        self.model = model
        self.layer = layer
        self.crop = crop
        self.prototxt = prototxt
        self.weights = weights
        self.preprocess = preprocess
        self.mean = mean
        self.batch_size = batch_size
        self.backend = backend
        self.workers = workers
        self.max_pixels = max_pixels
        self.min_size = min_size

    def _build(self):
        from .features import FeatureExtractor, default_layers, load_model, resolve_layers
        net, spec, aliases, desc = load_model(model=self.model, prototxt=self.prototxt, weights=self.weights,
                                              preprocess=self.preprocess, mean=self.mean, backend=self.backend)
        if self.layer is None:
            layers = default_layers(aliases, net)
        else:
            layers = [self.layer] if isinstance(self.layer, str) else list(self.layer)
        reqs = resolve_layers(net, layers, aliases)
        self.extractor_ = FeatureExtractor(net, spec, reqs, crop=self.crop, concat=len(reqs) > 1)
        self.model_info_ = desc
        self.n_features_out_ = sum(d for d, _ in self.extractor_.feature_dims().values())
        return self.extractor_

    def fit(self, X=None, y=None) -> DeCAF:
        """Load the network; nothing is learned from X."""
        self._build()
        return self

    def _resized(self, X):
        from .features import DecodePool, decoder_priority, iter_decoded
        from .preprocess import load_resized
        spec = self.extractor_.spec
        if isinstance(X, np.ndarray) and X.ndim in (3, 4) and X.dtype != object:
            if X.ndim == 3 and X.shape[-1] in (3, 4):
                raise ImageError(f"got one (H, W, {X.shape[-1]}) image; pass a batch (N, H, W, 3) or a list")
            items = list(X)   # (N, H, W, 3) RGB or (N, H, W) gray
            return [load_resized(a, spec, self.max_pixels, self.min_size) for a in items]
        items = list(X)
        if all(isinstance(x, (str, os.PathLike)) for x in items):
            pool = (DecodePool(self.workers, decoder_priority("auto"), n_images=len(items))
                    if self.workers > 0 else None)
            try:
                out = []
                for i, img, reason in iter_decoded(items, spec, self.workers, 2 * self.batch_size,
                                                   self.max_pixels, self.min_size, pool):
                    if img is None:
                        raise ImageError(f"{items[i]}: {reason}")
                    out.append(img)
                return out
            finally:
                if pool is not None:
                    pool.close()
        return [load_resized(x, spec, self.max_pixels, self.min_size) for x in items]

    def transform(self, X) -> np.ndarray:
        """X: paths or RGB images (see the class docstring) -> (N, D) float32."""
        if not hasattr(self, "extractor_"):
            self._build()
        imgs = self._resized(X)
        if not imgs:
            return np.empty((0, self.n_features_out_), np.float32)
        out = []
        for b in range(0, len(imgs), self.batch_size):
            feats = self.extractor_.features(imgs[b:b + self.batch_size])
            out.append(np.concatenate(list(feats.values()), axis=1))
        return np.concatenate(out)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("extractor_", None)   # the Net holds large arrays and compiled kernels
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags
