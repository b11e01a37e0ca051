"""Layer types, one module each, registered by their Caffe type string in :data:`REGISTRY`."""
from . import (  # noqa: F401  # noqa: F401,E402  (BatchNorm/Scale for converted PyTorch/TF nets)
               batchnorm,
               concat,
               convolution,
               dropout,
               eltwise,
               flatten,
               inner_product,
               loss,
               lrn,
               pooling,
               relu,
               scale,
               softmax,
)
from .base import REGISTRY, Layer, register  # noqa: F401
