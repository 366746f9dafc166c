"""The report written next to every artifact (report.json), as a typed schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Latency(_Strict):
    p50: float
    p95: float
    batch: int


class ModelFigures(_Strict):
    runtime: str
    size_bytes: int | None
    parameters: int | None  # None for a Python callable teacher
    latency_ms: Latency
    throughput_per_s: float
    throughput_batch: int
    peak_memory_mb: float | None
    metrics: dict[str, float]


class Budget(_Strict):
    primary_metric: str
    max_drop: float
    baseline: float
    compressed: float
    drop: float
    passed: bool
    meaning: str = "absolute drop of the primary metric on held-out rows, baseline minus compressed"


class InputSpec(_Strict):
    name: str
    dtype: str
    shape: list[int | str]


class StageReport(_Strict):
    technique: str
    chosen: str | None
    variants: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    layers: list[dict[str, Any]] = Field(default_factory=list)


class Report(_Strict):
    presso_version: str
    created: str
    task: str
    recipe: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]
    inputs: list[InputSpec]
    budget: Budget
    baseline: ModelFigures
    compressed: ModelFigures
    ratios: dict[str, float | None]  # size is None for a callable teacher of unknown size
    reference: dict[str, Any]
    machine: dict[str, Any]
    stages: list[StageReport]
    notes: list[str]
