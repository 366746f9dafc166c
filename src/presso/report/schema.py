"""The report written next to every artifact (report.json), as a typed schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Latency(_Strict):
    p50: float
    p95: float
    batch: int
    # Batch-1 call times in ms (at most 200, evenly subsampled in call order): the
    # distribution the report plots. Empty in reports written before it was recorded.
    samples: list[float] = Field(default_factory=list)
    # Text models: the tokens of the text each sample ran (same order as ``samples``).
    sample_tokens: list[int] = Field(default_factory=list)
    # What the calls ran on. "real length": text models, one held-out text per call as long
    # as it is (``tokens``: their median); "fixed length": text rows padded to ``tokens``.
    # None: rows as stored (not text; also text reports written before this was recorded).
    basis: Literal["real length", "fixed length"] | None = None
    tokens: float | None = None


class FixedLength(_Strict):
    """A text model timed on rows padded to the run's token limit, in the same rounds as its
    real-length headline figures: what a deployment with a fixed input shape pays."""

    tokens: int
    latency_ms: Latency
    throughput_per_s: float
    throughput_batch: int


class ModelFigures(_Strict):
    runtime: str
    size_bytes: int | None
    parameters: int | None  # None for a Python callable teacher
    latency_ms: Latency
    throughput_per_s: float
    throughput_batch: int
    peak_memory_mb: float | None
    metrics: dict[str, float]
    # Bytes of the packed storage file (sparse + low-bit + entropy-coded weights, see
    # presso.export.packed) when the run wrote one; the runnable size is size_bytes.
    stored_bytes: int | None = None
    # Text models timed at their real length (latency_ms.basis): the same at the padded length.
    fixed_length: FixedLength | None = None


class Budget(_Strict):
    primary_metric: str
    max_drop: float
    baseline: float
    compressed: float
    drop: float  # in the budget's terms (``kind``): positive is worse
    passed: bool
    meaning: str = "absolute drop of the primary metric on held-out rows, baseline minus compressed"
    # "absolute": a score's drop (baseline - compressed); "relative": an error's increase
    # over the baseline ((compressed - baseline) / baseline). See presso.tasks.
    kind: str = "absolute"
    higher_is_better: bool = True
    limit: float | None = None  # the worst value of the metric the budget allows
    # For metrics that count rows (accuracy, agreement): the drop one changed row makes on the
    # held-out rows and on the calibration rows (which screen the variants). Where it exceeds
    # max_drop the budget allows no changed row there, and the report says so.
    one_row_drop: dict[str, float] | None = None


class RunMemory(_Strict):
    """Peak memory of the compress run itself (not of the model at inference: that is
    ``peak_memory_mb`` of each model), next to the fp32 model's file size."""

    # This process's high-water mark when the report was built. Child processes (the memory
    # probes) are left out: on Linux a child's ru_maxrss starts from its parent's at fork.
    peak_rss_mb: float
    fp32_model_mb: float | None = None  # the baseline ONNX file (None: a callable teacher)


class MetricChange(_Strict):
    """One metric's change, compressed against baseline, on the held-out rows."""

    absolute: float  # compressed - baseline
    relative: float | None  # absolute / |baseline|; None where the baseline is 0
    higher_is_better: bool


class InputSpec(_Strict):
    name: str
    dtype: str
    shape: list[int | str]


class StageReport(_Strict):
    technique: str
    chosen: str | None
    skipped: bool = False  # an optional stage with no variant within budget (or not paying off)
    resumed: bool = False  # restored from the run's checkpoint instead of run again
    variants: list[dict[str, Any]] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    layers: list[dict[str, Any]] = Field(default_factory=list)


class Step(_Strict):
    """One point of the per-stage waterfall: the model after each stage (and the baseline),
    on the held-out rows, with every step timed in one interleaved run."""

    name: str  # "baseline", "1 prune", "2 kmeans", ...
    technique: str | None  # None for the baseline
    quality: float  # the budget's primary metric on the held-out rows
    size_bytes: int | None  # the runnable file (None: a callable teacher of unknown size)
    latency_ms: float | None  # batch-1 p50 (quick rounds); None where it could not be timed
    stored_bytes: int | None = None  # the packed storage file, where one was written
    skipped: bool = False


class LayerSize(_Strict):
    node: str
    op: str
    bytes: int  # stored weights, biases, scales and codebooks of this layer


class Stored(_Strict):
    """The packed storage file (``model.packed``) next to the runnable ``model.onnx``."""

    file: str
    bytes: int  # the whole file: graph + every tensor
    weights_bytes: int  # the tensors' payloads (weights, codebooks, scales), entropy-coded
    graph_bytes: int  # the graph without its tensors, compressed
    fp32_weights_bytes: int  # the baseline's float32 weights (parameters x 4)
    weights_ratio: float  # fp32_weights_bytes / weights_bytes
    codecs: dict[str, int]  # codec -> number of tensors stored with it


class SearchTrial(_Strict):
    """One trial of an automatic search, as the report lists it."""

    number: int
    state: str  # complete, pruned (broke the budget or could not run), failed
    summary: str  # the recipe in a line: "slim ratio 0.7 -> int8 dynamic"
    drop: float | None = None
    latency_ms: float | None = None  # batch-1 p50 on ONNX Runtime, timed with the baseline
    size_bytes: int | None = None
    feasible: bool = False  # meets --max-drop and the latency / size constraints
    on_front: bool = False
    retimed_ms: float | None = None  # the front re-timed together in one interleaved run
    reason: str | None = None  # why it was pruned or failed
    recipe_file: str | None = None  # trials/NNNN.yaml: re-run with presso compress --recipe
    worker: str | None = None  # host:pid of the worker that ran it


class Search(_Strict):
    """How the compressed model was found: the study, its trials and their Pareto front."""

    study: str
    storage: str  # without a password
    sampler: str
    pick: str
    picked: int  # the trial whose recipe made this artifact
    objectives: list[str]
    constraints: dict[str, float | None]
    space: dict[str, list[Any]]  # choice -> values
    trials: list[SearchTrial]
    seconds: float
    # Trial latencies are on the scale of the baseline's time at the start of the search;
    # retimed_ms * retime_scale is on it too. The front is decided on that scale.
    retime_scale: float = 1.0


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
    # Every metric's change against the original, absolute and relative (held-out rows).
    changes: dict[str, MetricChange] = Field(default_factory=dict)
    steps: list[Step] = Field(default_factory=list)
    layer_sizes: dict[str, list[LayerSize]] = Field(default_factory=dict)  # "baseline" / "compressed"
    stored: Stored | None = None
    search: Search | None = None  # present when an automatic search chose the recipe
    run_memory: RunMemory | None = None  # absent in reports written before it was recorded
    # The process's command line (a CLI run: "presso compress ..."), for provenance; kept out
    # of ``machine``, which compare reads as "measured where".
    command: str | None = None
