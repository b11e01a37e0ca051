"""The model registry: what ``--model NAME`` means everywhere (extract, profile, classify, transfer).

Each :class:`ModelSpec` bundles a prototxt, where its converted weights live, the exact
preprocessing the network was trained with (:class:`Preprocessing`), the DeCAF layer aliases and
the class names. Weights are looked up in the weights directory (``$MINICAFFE_HOME`` or
``~/.cache/minicaffe``, then the repository's ``weights/``). This module does not download or
convert anything itself; ``minicaffe.weights`` does.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

from .errors import ModelError

DATA = pathlib.Path(__file__).resolve().parent / "data"
MODELS_DIR = DATA / "models"
REPO_WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a network input. Applied in this order by ``minicaffe.preprocess``:

    decode -> RGB float in [0, 255] -> resize (``resize``: (H, W) warps to that size, as
    Caffe/DeCAF; an int resizes the short side keeping the aspect ratio) with ``interpolation``
    -> channel order (``"BGR"`` for Caffe models: RGB->BGR swap) -> subtract ``mean_image``
    (a (3, H, W) .npy in the model's channel order, at the resize size) or ``mean_values`` ->
    divide by ``std_values`` -> multiply by ``input_scale`` -> crop ``crop`` x ``crop`` (center,
    or Caffe's 10-crop oversample) -> (3, crop, crop) CHW float32.
    """
    resize: object = (256, 256)
    crop: int = 227
    channel_order: str = "BGR"
    mean_image: str | None = None
    mean_values: tuple | None = None
    std_values: tuple | None = None
    input_scale: float = 1.0
    interpolation: str = "bilinear"

    def describe(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


CAFFE_PREPROCESSING = Preprocessing(resize=(256, 256), crop=227, channel_order="BGR",
                                    mean_image=str(MODELS_DIR / "ilsvrc_2012_mean.npy"))


@dataclass
class ModelSpec:
    name: str
    prototxt: str
    weights_name: str                       # file name of the converted .h5 in the weights dir
    preprocessing: Preprocessing
    aliases: dict = field(default_factory=dict)  # e.g. decaf6 -> fc6
    source: dict = field(default_factory=dict)   # url, sha1, size of the official file
    description: str = ""

    def weights_path(self):
        """The converted weights if present, else None."""
        for d in weights_dirs():
            p = d / self.weights_name
            if p.is_file():
                return p
        return None

    def load(self, backend="cpu", weights=None):
        from .net import Net
        w = weights or self.weights_path()
        if w is None:
            raise ModelError(f"model {self.name!r}: no weights found (looked for {self.weights_name} in "
                             f"{', '.join(str(d) for d in weights_dirs())}); see `python -m minicaffe.weights "
                             f"fetch {self.name}` or weights/README.md")
        return Net(self.prototxt, str(w), backend=backend)


def weights_dirs():
    dirs = []
    if os.environ.get("MINICAFFE_HOME"):
        dirs.append(pathlib.Path(os.environ["MINICAFFE_HOME"]))
    dirs.append(pathlib.Path.home() / ".cache" / "minicaffe")
    dirs.append(REPO_WEIGHTS)
    return dirs


DECAF_ALIASES = {"decaf5": "pool5", "decaf6": "fc6", "decaf7": "fc7"}

MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec):
    MODELS[spec.name] = spec
    return spec


register_model(ModelSpec(
    "caffenet", str(MODELS_DIR / "bvlc_reference_caffenet.deploy.prototxt"), "caffenet.h5",
    CAFFE_PREPROCESSING, dict(DECAF_ALIASES),
    {"url": "http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel",
     "sha1": "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46", "size": 243862418},
    "BVLC reference CaffeNet (the DeCAF network)"))
register_model(ModelSpec(
    "alexnet", str(MODELS_DIR / "bvlc_alexnet.deploy.prototxt"), "alexnet.h5",
    CAFFE_PREPROCESSING, dict(DECAF_ALIASES),
    {"url": "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel",
     "sha1": "9116a64c0fbe4459d18f4bb6b56d647b63920377"},
    "BVLC AlexNet (conv-relu-norm-pool order)"))
register_model(ModelSpec(
    "googlenet", str(MODELS_DIR / "bvlc_googlenet.deploy.prototxt"), "googlenet.h5",
    Preprocessing(resize=(256, 256), crop=224, channel_order="BGR", mean_values=(104.0, 117.0, 123.0)),
    {"pool5": "pool5/7x7_s1"},
    {"url": "http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel",
     "sha1": "405fc5acd08a3bb12de8ee5e23a96bec22f08204"},
    "BVLC GoogLeNet"))


def get_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]
