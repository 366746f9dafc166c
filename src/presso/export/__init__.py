"""torch -> ONNX export and its parity check; the packed storage file (export.packed).

Nothing is imported here: ``presso.export.packed`` (onnx + lzma) must load without torch.
"""
