"""Convolution layer (Caffe type ``Convolution``) and the CPU dispatcher over its kernels.

Shapes: ``x: (N, C, H, W)``, weight ``(M, C/group, kh, kw)`` (Caffe's blob order, NCHW / OIHW),
bias ``(M,)``, output ``(N, M, Ho, Wo)`` with Caffe's *floor* rule (:func:`conv_out_size`).
Padding is kept as four numbers so TF-"SAME" asymmetric padding can be expressed (prototxt
extension fields ``pad_top/pad_bottom/pad_left/pad_right`` inside ``convolution_param``; plain
Caffe files use ``pad``/``pad_h``/``pad_w``). :func:`convolution_cpu` picks one kernel per layer
shape: depthwise, Winograd F(4x4, 3x3) (3x3 and, in 3x3 pieces, up to 6x6 kernels at stride 1,
batch >= 2), 1x1 GEMM, the direct register-blocked kernel (everything else with >= 6 output
pixels per row); the im2col + BLAS kernels ("wide" for stride 1, stride-phase for equal strides,
the per-pixel gather) remain for the tiny rest and for ``MINICAFFE_DIRECT=0``. It does not
implement Deconvolution or 3-D convolution.
"""
from __future__ import annotations

import os

import numpy as np

from ..base import Layer, as_bool, hw_param, int_value, is_channels_last, register
from .backward import convolution_backward_cpu
from .cuda import convolution_cuda
from .depthwise import convolution_depthwise_cpu
from .direct import convolution_direct_cpu, direct_applies
from .im2col import (
    convolution_1x1_cpu,
    convolution_gather_cpu,
    convolution_phase_cpu,
    convolution_wide_cpu,
)
from .nhwc import (
    block_applies,
    conv1x1_applies,
    convolution_1x1_nhwc_cpu,
    convolution_block_nhwc_cpu,
    convolution_depthwise_nhwc_cpu,
    convolution_taps_nhwc_cpu,
    depthwise_nhwc_applies,
    taps_applies,
)
from .reference import (
    conv_out_hw,
    convolution_backward_reference,
    convolution_reference,
)
from .winograd import convolution_winograd_cpu

#: use Winograd for eligible layers in :func:`convolution_cpu`
WINOGRAD = os.environ.get("MINICAFFE_WINOGRAD", "1") != "0"
#: use the direct (indirect micro-kernel) convolution where it applies; False: im2col + BLAS
DIRECT = os.environ.get("MINICAFFE_DIRECT", "1") != "0"
#: run 1x1 and depthwise layers channels last (:mod:`.nhwc`); False: every blob NCHW
NHWC = os.environ.get("MINICAFFE_NHWC", "1") != "0"


def winograd_applies(w, stride, dilation, group, x_shape):
    """Where :func:`convolution_cpu` uses Winograd F(4x4, 3x3): a square kernel of 2..6 (larger
    than 3 split into 3x3 pieces), stride 1, no dilation, not depthwise, enough channels for the
    GEMMs to dominate the transforms, and at least WINOGRAD_MIN_BATCH images (the transformed
    filters are 4x the weights per 3x3 piece: read once a forward, they cost less than the
    multiplications they save from batch 1 on; docs/benchmark.md)."""
    M, Cg, kh, kw = w.shape
    if not (kh == kw and 2 <= kh <= 6 and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and Cg >= 16 and M // group >= 16):
        return False
    return x_shape[0] >= WINOGRAD_MIN_BATCH


#: smallest batch routed to Winograd
WINOGRAD_MIN_BATCH = 1


def nhwc_applies(x_shape, w_shape, stride, pad, dilation, group):
    """True when a channels-last kernel (:mod:`.nhwc`) runs the layer: depthwise without channel
    multiplier or dilation, or 1x1 stride 1 unpadded ungrouped."""
    return (depthwise_nhwc_applies(x_shape, w_shape, dilation, group)
            or conv1x1_applies(x_shape, w_shape, stride, pad, dilation, group))


def nhwc_route(x_shape, x_channels_last, w, stride, pad, dilation, group, channels_last, program=False):
    """The channels-last kernel :func:`convolution_cpu` runs a layer with: "1x1", "depthwise",
    "taps" (few taps through the 1x1 GEMM) or None (an NCHW kernel). x_channels_last: the input's
    memory is channels last; channels_last: a channels-last output is asked for; program: for a
    whole-forward program (the taps route at any batch)."""
    if not NHWC:
        return None
    if (channels_last or x_channels_last) and nhwc_applies(x_shape, w.shape, stride, pad, dilation, group):
        return "1x1" if group == 1 else "depthwise"
    if channels_last and taps_applies(x_shape, w.shape, group, any_batch=program) \
            and direct_applies(x_shape, w, stride, pad, dilation, group):
        return "taps"
    return None


def convolution_cpu(x, w, b, stride=(1, 1), pad=(0, 0, 0, 0), dilation=(1, 1), group=1, relu=False, relu_cap=None,
                    channels_last=False):
    """x: (N, C, H, W) -> (N, M, Ho, Wo); same contract as :func:`convolution_reference`
    (``relu=True``: max(0, .) applied in the output pass, the fused in-place ReLU; ``relu_cap``: also
    min(., cap), a fused ReLU6 / Clip(0, cap)). A channels-last ``x`` (see
    :func:`~minicaffe.layers.base.is_channels_last`) is read in place by the layers :func:`nhwc_applies`
    to, whose output is then channels last too; ``channels_last=True`` asks for a channels-last
    output where a kernel writes one (those layers, and the direct kernel)."""
    route = nhwc_route(x.shape, is_channels_last(x), w, stride, pad, dilation, group, channels_last)
    if route == "1x1":
        return convolution_1x1_nhwc_cpu(x, w, b, relu, relu_cap)
    if route == "depthwise":
        return convolution_depthwise_nhwc_cpu(x, w, b, stride, pad, relu, relu_cap)
    if route == "taps":
        return convolution_taps_nhwc_cpu(x, w, b, stride, pad, dilation, relu, relu_cap)
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    if group == C and Cg == 1:
        return convolution_depthwise_cpu(x, w, b, stride, pad, dilation, group, relu, relu_cap)
    if WINOGRAD and winograd_applies(w, stride, dilation, group, x.shape):
        return convolution_winograd_cpu(x, w, b, pad, group, relu, relu_cap)
    if kh == kw == 1 and sh == sw == 1 and tuple(pad) == (0, 0, 0, 0) and group == 1:
        return convolution_1x1_cpu(x, w, b, relu, relu_cap)
    if DIRECT and direct_applies(x.shape, w, stride, pad, dilation, group):
        return convolution_direct_cpu(x, w, b, stride, pad, dilation, group, relu, relu_cap, channels_last and NHWC)
    if sh == sw == 1:
        return convolution_wide_cpu(x, w, b, pad, dilation, group, relu, relu_cap)
    if sh == sw and dh == dw == 1:
        return convolution_phase_cpu(x, w, b, stride, pad, group, relu, relu_cap)
    # unequal strides, or strided and dilated
    return convolution_gather_cpu(x, w, b, stride, pad, dilation, group, relu, relu_cap)


def conv_geometry(layer, p):
    """Parse kernel/stride/pad/dilation from a convolution_param (Caffe field conventions)."""
    kh, kw = hw_param(layer, p, "kernel", required=True)
    if kh < 1 or kw < 1:
        raise layer.err("kernel size must be >= 1")
    sh, sw = hw_param(layer, p, "stride", default=1)
    if sh < 1 or sw < 1:
        raise layer.err("stride must be >= 1")
    ph, pw = hw_param(layer, p, "pad", default=0)
    pad = (ph, ph, pw, pw)
    asym = [p.get(k) for k in ("pad_top", "pad_bottom", "pad_left", "pad_right")]
    if any(v is not None for v in asym):
        if p.has("pad") or p.has("pad_h"):
            raise layer.err("give either pad/pad_h/pad_w or pad_top/pad_bottom/pad_left/pad_right")
        pad = tuple(int_value(layer, k, v or 0, 0) for k, v in zip(("pad_top", "pad_bottom", "pad_left",
                                                                      "pad_right"), asym))
    dil = p.getall("dilation")
    if len(dil) == 0:
        dh = dw = 1
    elif len(dil) == 1:
        dh = dw = dil[0]
    elif len(dil) == 2:
        dh, dw = dil[0], dil[1]
    else:
        raise layer.err(f"dilation given {len(dil)} times; 2-D layers take 1 or 2 values")
    int_value(layer, "dilation", dh, 1)
    int_value(layer, "dilation", dw, 1)
    return (kh, kw), (sh, sw), pad, (dh, dw)


@register("Convolution")
class Convolution(Layer):
    def __init__(self, name, lp, bottoms, tops):
        super().__init__(name, lp, bottoms, tops)
        p = self.pget("convolution_param")
        self.num_output = p.get("num_output")
        if not isinstance(self.num_output, int) or self.num_output < 1:
            raise self.err("convolution_param.num_output must be a positive integer")
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, p)
        self.group = p.get("group", 1)
        if not isinstance(self.group, int) or self.group < 1 or self.num_output % self.group:
            raise self.err(f"group {self.group!r} must be >= 1 and divide num_output {self.num_output}")
        self.bias_term = as_bool(p.get("bias_term"), True)
        if p.get("axis", 1) != 1:
            raise self.err("only axis: 1 (NCHW) is supported")

    def setup(self, shapes):
        if len(shapes[0]) != 4:
            raise self.err(f"expects a 4-D (N, C, H, W) input, got shape {shapes[0]}")
        N, C, H, W = shapes[0]
        if C % self.group:
            raise self.err(f"input channels {C} not divisible by group {self.group}")
        kh, kw = self.kernel
        Ho, Wo = conv_out_hw(H, W, kh, kw, self.stride, self.pad, self.dilation)
        if Ho < 1 or Wo < 1:
            raise self.err(f"input {H}x{W} is smaller than the kernel {kh}x{kw} (with padding)")
        self.param_shapes = [(self.num_output, C // self.group, kh, kw)]
        if self.bias_term:
            self.param_shapes.append((self.num_output,))
        return [(N, self.num_output, Ho, Wo)]

    def flops(self, bshapes, tshapes):
        N, M, Ho, Wo = tshapes[0]
        _, Cg, kh, kw = self.param_shapes[0]
        return 2 * N * M * Ho * Wo * Cg * kh * kw

    #: the cpu kernels can apply a following in-place ReLU in their output pass (``relu=True``)
    fuses_relu = True
    writes_channels_last = True

    def reads_channels_last(self, bottom_shapes):
        N, C, H, W = bottom_shapes[0]
        wshape = (self.num_output, C // self.group) + tuple(self.kernel)
        return NHWC and nhwc_applies(bottom_shapes[0], wshape, self.stride, self.pad, self.dilation, self.group)

    def block_fuses(self, expand, project, x_shape, residual):
        """True when this depthwise layer can run the inverted-residual chain ``expand`` (a 1x1
        Convolution of an input of shape x_shape, or None) -> this layer -> ``project`` (a 1x1
        Convolution, or None) [+ the chain's input] in one kernel (:meth:`forward_block`)."""
        if not NHWC or self.group != self.num_output:
            return False
        for layer in (expand, project):
            if layer is not None and (layer.group != 1 or tuple(layer.kernel) != (1, 1)
                                      or tuple(layer.stride) != (1, 1) or tuple(layer.pad) != (0, 0, 0, 0)):
                return False
        C, Ce = x_shape[1], self.num_output
        return block_applies(x_shape, None if expand is None else (expand.num_output, C, 1, 1),
                             (Ce, 1) + tuple(self.kernel), None if project is None else (project.num_output, Ce, 1, 1),
                             self.stride, self.pad, self.dilation, residual)

    def forward_block(self, x, params, act, expand=None, expand_params=None, expand_act=None, project=None,
                      project_params=None, residual=False):
        """x: (N, C, H, W) -> [the chain's output] (see :meth:`block_fuses`): ``act``,
        ``expand_act``: the fused activations ({"relu", "relu_cap"}) of this layer and of the
        expansion; the projection has none; ``residual``: x is added to the projection."""
        e, d, p = self.block_stages(params, act, expand, expand_params, expand_act, project, project_params)
        return [convolution_block_nhwc_cpu(x, e, d, p, residual)]

    def block_stages(self, params, act, expand=None, expand_params=None, expand_act=None, project=None,
                     project_params=None):
        """The chain's (expand, dw, project) arguments of
        :func:`~minicaffe.layers.convolution.nhwc.convolution_block_nhwc_cpu` (arguments as
        :meth:`forward_block`'s)."""
        def bias(layer, ps):
            return ps[1] if layer.bias_term else None
        e = None if expand is None else (expand_params[0], bias(expand, expand_params), expand_act.get("relu", False),
                                         expand_act.get("relu_cap"))
        p = None if project is None else (project_params[0], bias(project, project_params))
        d = (params[0], bias(self, params), self.stride, self.pad, act.get("relu", False), act.get("relu_cap"))
        return e, d, p

    def forward(self, bottoms, params, backend, inplace=False, relu=False, relu_cap=None, channels_last=False):
        w = params[0]
        b = params[1] if self.bias_term else None
        if backend == "cpu":
            return [convolution_cpu(bottoms[0], w, b, self.stride, self.pad, self.dilation, self.group, relu,
                                    relu_cap, channels_last)]
        f = {"numpy": convolution_reference, "cuda": convolution_cuda}[backend]
        y = f(bottoms[0], w, b, self.stride, self.pad, self.dilation, self.group)
        if relu:
            raise ValueError(f"the {backend} backend does not fuse ReLU")
        return [y]

    def backward(self, top_diffs, bottoms, tops, params, backend):
        """-> ([dx], [dw, db]) for the layer's bottom and parameters (numpy/cpu backends)."""
        f = self.backend_kernel(backend, "backward", numpy=convolution_backward_reference,
                                cpu=convolution_backward_cpu)
        dx, dw, db = f(top_diffs[0], bottoms[0], params[0], self.stride, self.pad, self.dilation, self.group)
        return [dx], ([dw, db] if self.bias_term else [dw])
