"""What a technique sees and returns; kept free of measuring and printing.

Techniques never measure on their own: accuracy-aware ones ask the pipeline, through
:class:`StageContext`, to score or time a candidate, so the baseline and every variant
are measured by the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from presso.data.dataset import Dataset
from presso.progress import SILENT, Progress

if TYPE_CHECKING:  # a type only: techniques do not measure (see above)
    from presso.measure.bench import Timing


@dataclass
class Score:
    """Quality of a candidate on the calibration rows, against the budget."""

    primary: str
    value: float
    drop: float  # how much worse than the baseline, in the budget's terms (presso.tasks.drop)
    passed: bool
    metrics: dict[str, float]


@dataclass
class StageContext:
    workdir: Path
    calibration: Dataset
    score: Callable[[Path], Score]
    time_models: Callable[[dict[str, Path]], dict[str, Timing]]  # name -> batch-1 latency, interleaved
    transformer: dict | None  # heads / hidden size of a transformer encoder, else None (a copy)
    log: Callable[[str], None] = lambda _msg: None
    # Scores outputs computed elsewhere (e.g. by a PyTorch model) on the calibration rows,
    # in the same terms as ``score``; used by sensitivity analysis, which cannot export per probe.
    score_outputs: Callable[[Any], Score] | None = None
    # For stages that train the PyTorch model ("torch" domain); None for ONNX stages.
    module: Any = None  # the current nn.Module, a copy the stage may change
    task: str = ""
    teacher: Any = None  # the original model's outputs on the calibration rows (np.ndarray)
    labels: Any = None  # the data's targets on the calibration rows, if it has them (np.ndarray)
    max_drop: float = 0.0  # the run's quality budget (pruning sensitivity uses it)
    input_names: list[str] = field(default_factory=list)
    export: Callable[[Any, Path], Path] | None = None  # nn.Module -> ONNX file, checked
    seed: int = 0
    # The original model run on any rows (dict of name -> array -> outputs), whatever it is:
    # PyTorch, ONNX Runtime or a Python callable. Distillation labels extra rows with it.
    teacher_fn: Callable[[dict], Any] | None = None
    evaluation_inputs: dict | None = None  # the held-out rows: extra training rows must not repeat them
    read_data: Callable[[str], Dataset] | None = None  # a data file -> rows in the model's inputs
    progress: Progress = SILENT  # where long training shows its epochs
    # Text models: their tokenizer and truncation length (training text is tokenized lazily),
    # and a file of further training texts the data came with (Dataset.train_texts).
    tokenizer: Any = None
    seq_len: int = 128
    train_texts: Callable[[], Path] | None = None


@dataclass
class Candidate:
    name: str
    path: Path | None
    score: Score | None = None
    latency_ms: float | None = None
    timing: Timing | None = None  # what latency_ms (its p50) came from: per-round medians too
    heldout_drop: float | None = None  # set when it passed calibration but failed held-out rows
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)  # pins this variant in recipe.yaml
    module: Any = None  # torch stages: the trained nn.Module the ONNX file was exported from
    # Per-layer rows and notes of this candidate, when they differ between candidates
    # (the pipeline reports those of the one it verifies); else StageResult's are used.
    layers: list[dict] | None = None
    notes: list[str] = field(default_factory=list)
    # Stages that change a transformer's heads / widths (slim, distill): its shape after this
    # candidate, which later stages see as ``StageContext.transformer`` (the context's own
    # dict is a copy: a stage never changes it).
    transformer: dict | None = None

    def timed(self, timing: Timing) -> None:
        self.timing, self.latency_ms = timing, timing.p50_ms

    def describe(self) -> dict:
        return {
            "variant": self.name,
            "calibration_" + (self.score.primary if self.score else "quality"): None
            if self.score is None
            else round(self.score.value, 6),
            "calibration_drop": None if self.score is None else round(self.score.drop, 6),
            "passed_on_calibration": None if self.score is None else self.score.passed,
            "latency_p50_ms": None if self.latency_ms is None else round(self.latency_ms, 4),
            "note": self.note,
        }


@dataclass
class StageResult:
    """Passing candidates, best first (the pipeline verifies them on held-out rows in
    this order), and every variant tried, for the report.

    ``ranked`` may be a lazy iterable that builds the next (milder, costlier to train)
    candidate only when the previous one failed on the held-out rows; it then appends
    each candidate it builds to ``tried`` as it goes."""

    ranked: Iterable[Candidate]
    tried: list[Candidate]
    notes: list[str] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)
