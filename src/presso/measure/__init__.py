"""Measuring: task metrics, fidelity, latency/throughput, size and memory."""

from presso.measure.bench import BenchSettings, bench_onnx, bench_torch
from presso.measure.metrics import evaluate
from presso.measure.size import file_size, parameter_count

__all__ = ["BenchSettings", "bench_onnx", "bench_torch", "evaluate", "file_size", "parameter_count"]
