"""torch -> ONNX export and its parity check."""

from presso.export.onnx_export import check_parity, export_onnx

__all__ = ["check_parity", "export_onnx"]
