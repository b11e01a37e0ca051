"""Layer types, one module each, registered by their Caffe type string in :data:`REGISTRY`."""
from . import (  # noqa: F401  # noqa: F401,E402  (BatchNorm/Scale for converted PyTorch/TF nets)
               accuracy,
               batchnorm,
               concat,
               convolution,
               data,
               dropout,
               dummy_data,
               eltwise,
               flatten,
               hdf5_data,
               inner_product,
               loss,
               lrn,
               memory_data,
               pooling,
               python_layer,
               relu,
               scale,
               softmax,
               split,
)
from .base import REGISTRY, Layer, register  # noqa: F401
