"""Layer types, one module each, registered by their Caffe type string in :data:`REGISTRY`."""
from .base import REGISTRY, Layer, register  # noqa: F401
from . import (concat, convolution, dropout, eltwise, flatten, inner_product, lrn,  # noqa: F401
               pooling, relu, softmax)
from . import batchnorm, scale  # noqa: F401,E402  (BatchNorm/Scale for converted PyTorch/TF nets)
from . import loss  # noqa: F401,E402  (SoftmaxWithLoss, for training)
