"""Loading models: nn.Module, Python factory, Hugging Face folder, ONNX file."""

from presso.model.loaded import LoadedModel
from presso.model.sources import load_model

__all__ = ["LoadedModel", "load_model"]
