"""``GET /``: what the served artifact is and what presso measured for it, from its
report.json (a bare .onnx file has none: then its inputs only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from presso.serving.settings import ServeSettings


def artifact_summary(artifact: Path, predictor: Any, settings: ServeSettings) -> dict[str, Any]:
    report = _report(artifact)
    inputs = [
        {"name": i.name, "type": i.type, "shape": [d if isinstance(d, int) else None for d in i.shape]}
        for i in predictor.session.get_inputs()
    ]
    out: dict[str, Any] = {
        "artifact": artifact.name,
        "model": (report.get("model") or {}).get("name"),
        "task": predictor.task,
        "text": predictor.tokenizer is not None,
        "inputs": inputs,
        "presso_version": report.get("presso_version"),
        "created": report.get("created"),
        "recipe": (report.get("recipe") or {}).get("name"),
        "serving": settings.model_dump(
            include={"max_batch", "max_wait_ms", "queue_limit", "max_rows", "workers"}
        ),
    }
    budget = report.get("budget") or {}
    if budget:
        out["quality"] = {
            k: budget.get(k)
            for k in ("primary_metric", "baseline", "compressed", "drop", "max_drop", "passed")
        }
    compressed, ratios = report.get("compressed") or {}, report.get("ratios") or {}
    if compressed:
        out["measured"] = {
            "latency_ms": _latency(compressed.get("latency_ms")),
            "throughput_per_s": compressed.get("throughput_per_s"),
            "throughput_batch": compressed.get("throughput_batch"),
            "size_bytes": compressed.get("size_bytes"),
            "speedup": ratios.get("latency_speedup"),
            "size_ratio": ratios.get("size"),
            "machine": (report.get("machine") or {}).get("cpu"),
        }
    return out


def _latency(value: Any) -> Any:
    """p50 / p95 and what they were measured on, without the samples."""
    if not isinstance(value, dict):
        return value
    return {k: value[k] for k in ("p50", "p95", "batch", "basis", "tokens") if k in value}


def _report(artifact: Path) -> dict[str, Any]:
    path = artifact / "report.json" if artifact.is_dir() else None
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
