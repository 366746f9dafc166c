"""ONNX Runtime sessions and the artifact predictor."""

from presso.runtime.session import default_threads, make_session, run_session

__all__ = ["default_threads", "make_session", "run_session"]
