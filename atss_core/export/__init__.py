"""Export of the whole detector (one ONNX graph, or a ``torch.export`` program):
see :mod:`atss_core.export.onnx_model` and docs/DEPLOY.md."""
from .onnx_model import (
    DCN_MIN_OPSET,
    DEFAULT_OPSET,
    ExportableATSS,
    ExportError,
    has_deformable_conv,
    min_opset,
)

__all__ = ["DCN_MIN_OPSET", "DEFAULT_OPSET", "ExportError", "ExportableATSS", "has_deformable_conv", "min_opset"]
