"""The field names of Caffe's ``caffe.proto`` messages, to refuse misspelt prototxt fields as Caffe does.

The prototxt parser knows no schema, so without this check ``stride`` misspelt as ``strid: 2``
would silently run with stride 1; Caffe's protobuf parser refuses it, and so does
:func:`check_net` (a :class:`PrototxtError` naming the field, its message and line:col). The
names follow BVLC Caffe's ``src/caffe/proto/caffe.proto`` (master), plus this project's own
extensions: asymmetric ``pad_top/pad_bottom/pad_left/pad_right`` in ``convolution_param`` (written
by the EfficientNet converter). Only the messages of layers minicaffe runs are checked field by
field; a parameter message of a layer type minicaffe does not implement (``data_param``,
``python_param``, ...) is accepted by name and not looked into, since such a layer is refused
anyway when it is part of the net. Field *values* are checked by the layers themselves.
"""
from __future__ import annotations

from ..errors import PrototxtError
from .prototxt import Message

__all__ = ["SCHEMA", "check_net"]

_FILLER = "FillerParameter"
#: a field of a layer type minicaffe does not run: accepted by name, not looked into
_ANY = "*"

#: message -> {field name: sub-message type, None for a scalar, or _ANY}
SCHEMA: dict[str, dict[str, str | None]] = {
    "NetParameter": {
        "name": None, "input": None, "input_shape": "BlobShape", "input_dim": None,
        "force_backward": None, "state": "NetState", "debug_info": None,
        "layer": "LayerParameter", "layers": "V1LayerParameter",
    },
    "BlobShape": {"dim": None},
    "BlobProto": {
        "shape": "BlobShape", "data": None, "diff": None, "double_data": None, "double_diff": None,
        "num": None, "channels": None, "height": None, "width": None,
    },
    "NetState": {"phase": None, "level": None, "stage": None},
    "NetStateRule": {"phase": None, "min_level": None, "max_level": None, "stage": None, "not_stage": None},
    "ParamSpec": {"name": None, "share_mode": None, "lr_mult": None, "decay_mult": None},
    _FILLER: {
        "type": None, "value": None, "min": None, "max": None, "mean": None, "std": None,
        "sparse": None, "variance_norm": None,
    },
    "LayerParameter": {
        "name": None, "type": None, "bottom": None, "top": None, "phase": None, "loss_weight": None,
        "param": "ParamSpec", "blobs": "BlobProto", "propagate_down": None,
        "include": "NetStateRule", "exclude": "NetStateRule",
        "transform_param": "TransformationParameter", "loss_param": "LossParameter",
        # layer-specific parameters: checked where minicaffe runs the layer, else accepted by name
        "accuracy_param": _ANY, "argmax_param": _ANY, "batch_norm_param": "BatchNormParameter",
        "bias_param": _ANY, "clip_param": "ClipParameter", "concat_param": "ConcatParameter",
        "contrastive_loss_param": _ANY, "convolution_param": "ConvolutionParameter", "crop_param": _ANY,
        "data_param": _ANY, "dropout_param": "DropoutParameter", "dummy_data_param": _ANY,
        "eltwise_param": "EltwiseParameter", "elu_param": _ANY, "embed_param": _ANY, "exp_param": _ANY,
        "flatten_param": "FlattenParameter", "hdf5_data_param": _ANY, "hdf5_output_param": _ANY,
        "hinge_loss_param": _ANY, "image_data_param": _ANY, "infogain_loss_param": _ANY,
        "inner_product_param": "InnerProductParameter", "input_param": "InputParameter",
        "log_param": _ANY, "lrn_param": "LRNParameter", "memory_data_param": _ANY, "mvn_param": _ANY,
        "parameter_param": _ANY, "pooling_param": "PoolingParameter", "power_param": _ANY,
        "prelu_param": _ANY, "python_param": _ANY, "recurrent_param": _ANY, "reduction_param": _ANY,
        "relu_param": "ReLUParameter", "reshape_param": _ANY, "scale_param": "ScaleParameter",
        "sigmoid_param": _ANY, "softmax_param": "SoftmaxParameter", "spp_param": _ANY,
        "slice_param": _ANY, "swish_param": _ANY, "tanh_param": _ANY, "threshold_param": _ANY,
        "tile_param": _ANY, "window_data_param": _ANY,
    },
    "V1LayerParameter": {
        "bottom": None, "top": None, "name": None, "include": "NetStateRule", "exclude": "NetStateRule",
        "type": None, "blobs": "BlobProto", "param": None, "blob_share_mode": None, "blobs_lr": None,
        "weight_decay": None, "loss_weight": None,
        "accuracy_param": _ANY, "argmax_param": _ANY, "concat_param": "ConcatParameter",
        "contrastive_loss_param": _ANY, "convolution_param": "ConvolutionParameter", "data_param": _ANY,
        "dropout_param": "DropoutParameter", "dummy_data_param": _ANY, "eltwise_param": "EltwiseParameter",
        "exp_param": _ANY, "hdf5_data_param": _ANY, "hdf5_output_param": _ANY, "hinge_loss_param": _ANY,
        "image_data_param": _ANY, "infogain_loss_param": _ANY,
        "inner_product_param": "InnerProductParameter", "lrn_param": "LRNParameter",
        "memory_data_param": _ANY, "mvn_param": _ANY, "pooling_param": "PoolingParameter",
        "power_param": _ANY, "relu_param": "ReLUParameter", "sigmoid_param": _ANY,
        "softmax_param": "SoftmaxParameter", "slice_param": _ANY, "tanh_param": _ANY,
        "threshold_param": _ANY, "window_data_param": _ANY,
        "transform_param": "TransformationParameter", "loss_param": "LossParameter", "layer": _ANY,
    },
    "TransformationParameter": {
        "scale": None, "mirror": None, "crop_size": None, "mean_file": None, "mean_value": None,
        "force_color": None, "force_gray": None,
    },
    "LossParameter": {"ignore_label": None, "normalization": None, "normalize": None},
    "ConvolutionParameter": {
        "num_output": None, "bias_term": None, "pad": None, "kernel_size": None, "stride": None,
        "dilation": None, "pad_h": None, "pad_w": None, "kernel_h": None, "kernel_w": None,
        "stride_h": None, "stride_w": None, "group": None, "weight_filler": _FILLER,
        "bias_filler": _FILLER, "engine": None, "axis": None, "force_nd_im2col": None,
        # minicaffe extension: asymmetric ("SAME") padding of converted TensorFlow nets
        "pad_top": None, "pad_bottom": None, "pad_left": None, "pad_right": None,
    },
    "PoolingParameter": {
        "pool": None, "pad": None, "pad_h": None, "pad_w": None, "kernel_size": None, "kernel_h": None,
        "kernel_w": None, "stride": None, "stride_h": None, "stride_w": None, "engine": None,
        "global_pooling": None, "round_mode": None,
    },
    "LRNParameter": {"local_size": None, "alpha": None, "beta": None, "norm_region": None, "k": None,
                     "engine": None},
    "InnerProductParameter": {"num_output": None, "bias_term": None, "weight_filler": _FILLER,
                              "bias_filler": _FILLER, "axis": None, "transpose": None},
    "InputParameter": {"shape": "BlobShape"},
    "DropoutParameter": {"dropout_ratio": None},
    "ReLUParameter": {"negative_slope": None, "engine": None},
    "ClipParameter": {"min": None, "max": None},
    "ConcatParameter": {"axis": None, "concat_dim": None},
    "EltwiseParameter": {"operation": None, "coeff": None, "stable_prod_grad": None},
    "BatchNormParameter": {"use_global_stats": None, "moving_average_fraction": None, "eps": None},
    "ScaleParameter": {"axis": None, "num_axes": None, "filler": _FILLER, "bias_term": None,
                       "bias_filler": _FILLER},
    "SoftmaxParameter": {"engine": None, "axis": None},
    "FlattenParameter": {"axis": None, "end_axis": None},
}

#: the text name each message is reached by, for error messages ("convolution_param")
_SHOWN = {"NetParameter": "the net", "LayerParameter": "layer", "V1LayerParameter": "layers"}


def _check(msg, mtype, shown, path):
    """Iterative walk (depth is already bounded by the parser)."""
    todo = [(msg, mtype, shown)]
    while todo:
        m, t, name = todo.pop()
        known = SCHEMA[t]
        owner = f" of layer {str(m.get('name'))!r}" if t in ("LayerParameter", "V1LayerParameter") \
            and m.get("name") is not None else ""
        for i, (k, v) in enumerate(m.fields):
            if k not in known:
                line, col = m.where(i)
                raise PrototxtError(f"unknown field {k!r} in {name}", path, line, col)
            sub = known[k]
            if sub == _ANY:
                continue
            if sub is None:
                if isinstance(v, Message):
                    line, col = m.where(i)
                    raise PrototxtError(f"field {k!r} in {name} takes a value, not a message", path, line, col)
                continue
            if not isinstance(v, Message):
                line, col = m.where(i)
                raise PrototxtError(f"field {k!r} in {name} must be a message {{ ... }}", path, line, col)
            todo.append((v, sub, k + owner))


def check_net(proto, path=None):
    """Raise :class:`PrototxtError` at the first field name Caffe's schema does not know."""
    _check(proto, "NetParameter", _SHOWN["NetParameter"], path)
