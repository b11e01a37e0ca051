"""Exporters that write a minicaffe net (prototxt + weights) in another framework's format.

Only :mod:`.onnx_export` exists: an ONNX graph built node by node with ``onnx.helper`` so that
ONNX Runtime and OpenVINO can run the very same weights as minicaffe in the benchmark. Nothing
here computes; ``onnx`` is an optional dependency imported only when an export is asked for.
"""
from .onnx_export import export_onnx, onnx_model

__all__ = ["export_onnx", "onnx_model"]
