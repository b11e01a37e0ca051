"""Convolution (Caffe type ``Convolution``): the layer and shape rule (:mod:`.layer`), the NumPy
reference (:mod:`.reference`), and the kernels — direct register-blocked (:mod:`.direct`),
Winograd (:mod:`.winograd`), im2col + BLAS (:mod:`.im2col`), depthwise (:mod:`.depthwise`), channels-last
1x1 and depthwise (:mod:`.nhwc`), CUDA
(:mod:`.cuda`) and the CPU backward (:mod:`.backward`); transformed weights are cached by
:mod:`.cache`. Every fast forward variant has the reference's signature
``f(x, w, b, stride, pad, dilation, group)`` or a documented subset of it.
"""
from .backward import convolution_backward_cpu
from .cuda import convolution_cuda
from .depthwise import convolution_depthwise_cpu
from .direct import convolution_direct_cpu, direct_applies
from .im2col import (
                     IM2COL_BUDGET,
                     convolution_1x1_cpu,
                     convolution_gather_cpu,
                     convolution_phase_cpu,
                     convolution_wide_cpu,
)
from .layer import (
                     NHWC,
                     WINOGRAD,
                     WINOGRAD_MIN_BATCH,
                     Convolution,
                     conv_geometry,
                     convolution_cpu,
                     nhwc_applies,
                     winograd_applies,
)
from .nhwc import (
                     conv1x1_applies,
                     convolution_1x1_nhwc_cpu,
                     convolution_depthwise_nhwc_cpu,
                     convolution_taps_nhwc_cpu,
                     depthwise_nhwc_applies,
                     taps_applies,
)
from .reference import (
                     conv_out_size,
                     convolution_backward_reference,
                     convolution_reference,
)
from .winograd import WINOGRAD_BUDGET, convolution_winograd_cpu, winograd_filters

__all__ = [
    "DIRECT", "IM2COL_BUDGET", "NHWC", "WINOGRAD", "WINOGRAD_BUDGET", "WINOGRAD_MIN_BATCH", "Convolution",
    "conv_geometry",
    "conv_out_size", "convolution_1x1_cpu", "convolution_backward_cpu", "convolution_backward_reference",
    "convolution_cpu", "convolution_cuda", "convolution_depthwise_cpu", "convolution_direct_cpu",
    "convolution_gather_cpu", "direct_applies", "conv1x1_applies", "convolution_1x1_nhwc_cpu",
    "convolution_depthwise_nhwc_cpu", "depthwise_nhwc_applies", "nhwc_applies", "convolution_taps_nhwc_cpu",
    "taps_applies",
    "convolution_phase_cpu", "convolution_reference", "convolution_wide_cpu",
    "convolution_winograd_cpu", "winograd_applies", "winograd_filters",
]
