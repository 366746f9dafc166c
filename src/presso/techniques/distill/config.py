"""Typed options of the ``distill`` technique (pydantic only, no torch: recipes validate fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# hint_weight of the automatic layer hints (see DistillConfig): measured on all-MiniLM-L6-v2
LAYER_HINT_WEIGHT = 3.0


class DistillConfig(BaseModel):
    """Knowledge distillation: a smaller student learns to reproduce the teacher.

    The teacher is the model presso was given: a PyTorch module, an ONNX file run by ONNX
    Runtime, or any Python callable returning outputs (e.g. a scikit-learn model's
    ``predict_proba``).

    Student (``student``):

    - ``auto``: derived from a PyTorch teacher: ``width`` keeps that fraction of every
      layer's channels / neurons (attention heads and feed-forward neurons of a transformer),
      ``heads`` the fraction of attention heads (default: ``width``; ``heads: 1`` with
      ``width`` < 1 narrows the feed-forward layers only),
      ``depth`` keeps that many blocks / transformer layers, chosen by ``layers``: ``auto``
      (the default for transformers) drops, one at a time, the layer whose removal keeps the
      output on the calibration rows closest to the teacher's (mean cosine; the notes give each
      step's figure), ``even`` spaces them evenly (the default for other stacks), a list of
      indices keeps those (``depth`` may then be left out); ``init:
      teacher`` starts from the teacher's surviving weights, ``random`` from scratch.
      ``blocks: separable`` then makes every convolution with a kernel > 1 (groups 1, more
      than one input channel) a MobileNet depthwise-separable pair: a per-channel depthwise
      conv then a 1x1 pointwise conv, started from the best such approximation of the teacher's
      kernel (rank 1 per input channel); ``standard`` keeps the convolutions as they are.
    - ``mlp``: a plain MLP (``hidden`` sizes, inputs standardised) for flat float rows; for
      teachers without a PyTorch architecture (ONNX, scikit-learn).
    - ``file.py:fn`` / ``package.module:fn``: the user's own student (``student_weights``
      optional), an ``nn.Module`` taking the same inputs and giving outputs of the teacher's shape.

    Loss (``loss: auto`` picks by task): ``kl`` for classification, the Hinton soft-target
    loss ``(1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T))``
    (labels where the data has them; rows without use the KL term alone); ``mse`` (forecasters,
    autoencoders, regression); ``cosine`` (embeddings), plus ``rank_weight`` (default 1 for
    embeddings) x a ranking term that keeps the teacher's neighbourhoods: within each batch, the
    student's cosine-similarity matrix against the teacher's (``rank_loss: kl``, per row the KL
    between softmaxes at ``rank_temperature``, or ``mse``). ``hints: [[student_layer, teacher_layer],
    ...]`` adds ``hint_weight`` (default 1) x the mean over the pairs of the MSE between those
    layers' outputs (a learned projection when their widths differ; FitNets). ``hints: auto``
    (the default) does it for a student with fewer transformer layers than the teacher: each
    kept layer's output against the teacher layer it was copied from, token by token, each
    MSE relative to the teacher's mean square, at ``hint_weight`` 3 (all-MiniLM-L6-v2 at 4
    layers after 750 steps: mean cosine 0.9572 without, 0.9646 with; the teacher runs beside
    the student, a step takes ~30% longer); ``none`` turns it off.

    ``applies_to: encoders`` runs the stage on transformer encoders only (any other model skips
    it; the ``fast`` recipe's first stage).

    Data: the calibration rows (a seeded ``validation_fraction`` held back for early stopping)
    plus ``train_data`` (a file of extra rows, labels optional: the teacher labels them) plus
    ``augment`` copies of mixup rows labelled by the teacher. Rows equal to held-out evaluation
    rows are dropped from ``train_data``. For a text model a ``.txt`` ``train_data`` (one text
    per line, up to millions) is streamed: labelled once by the teacher in chunks (cached on
    disk), trained on in batches of similar length padded to their own longest text; without
    ``train_data`` the data's own training texts are streamed when it has some (the minilm
    example's docstring corpus). ``checkpoint`` (a file) saves every epoch and resumes
    an interrupted run from it. ``start_from`` (the checkpoint of an earlier run, finished or
    not, with a student of this run's shape) starts the student from its best weights, with a
    fresh optimizer and schedule: to train a finished student longer, or on other text.
    ``int8_aware`` trains the student with its Linear layers computing as ONNX Runtime's
    dynamic int8 will (inputs and weights rounded, straight-through gradients), for a student
    that an int8 stage after it costs less.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    student: str = "auto"
    student_weights: str | None = None
    # None: 0.45 for a derived student (DigitsCNN keeps 19.7% of its parameters; 0.5 would keep 25.6%)
    width: float | None = Field(default=None, gt=0, le=1)
    # None: as width; 1 with width < 1 narrows a transformer's feed-forward layers only
    heads: float | None = Field(default=None, gt=0, le=1)
    # layers kept, or a float in (0, 1): that fraction of the teacher's layers
    depth: int | float | None = None
    # None: auto for a transformer encoder (measured), even for other stacks of blocks
    layers: Literal["auto", "even"] | list[int] | None = None
    init: Literal["teacher", "random"] = "teacher"
    blocks: Literal["standard", "separable"] = "standard"
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    loss: Literal["auto", "kl", "mse", "cosine"] = "auto"
    alpha: float = Field(default=0.9, ge=0, le=1)
    temperature: float = Field(default=4.0, gt=0, le=100)
    # auto: layer hints for a student with fewer transformer layers (copied_layers), else none
    hints: Literal["auto", "none"] | list[list[str]] = "auto"
    # None: 1 for listed pairs, LAYER_HINT_WEIGHT for auto layer hints
    hint_weight: float | None = Field(default=None, ge=0, le=1000)
    # None: 1 with the cosine loss (embeddings), else 0
    rank_weight: float | None = Field(default=None, ge=0, le=1000)
    rank_loss: Literal["kl", "mse"] = "kl"
    rank_temperature: float = Field(default=0.05, gt=0, le=100)
    # None: 60 epochs at lr 1e-3, or for transformer encoders 3 epochs at 2e-4
    epochs: int | None = Field(default=None, ge=0, le=10000)
    lr: float | None = Field(default=None, gt=0, le=1.0)
    # auto: linear (5% warm-up, then decay to zero) for transformer encoders, else constant
    schedule: Literal["auto", "constant", "linear"] = "auto"
    # auto: bf16 for transformer students on a CPU with native bfloat16 (see FitSettings), else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # the student's Linear layers compute as ORT's dynamic int8 while it trains (int8_aware.py)
    int8_aware: bool = False
    batch_size: int = Field(default=32, ge=1, le=65536)
    patience: int | None = Field(default=10, ge=1)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    augment: int = Field(default=8, ge=0, le=64)
    train_data: str | None = None
    max_minutes: float | None = Field(default=None, gt=0)
    checkpoint: str | None = None
    start_from: str | None = None
    # encoders: a transformer encoder only; any other model skips the stage (NothingToDo), so
    # one recipe (fast) gives encoders a distilled shallower student and leaves the rest alone
    applies_to: Literal["any", "encoders"] = "any"
    backoff: int = Field(
        default=1, ge=0, le=4
    )  # wider retries (width -> (1 + width) / 2) if the budget breaks

    @field_validator("student")
    @classmethod
    def _student(cls, v: str) -> str:
        if v not in ("auto", "mlp") and ":" not in v:
            raise ValueError(
                f"student must be auto, mlp or a factory 'file.py:fn' / 'package.module:fn'; got {v!r}"
            )
        return v

    @field_validator("depth")
    @classmethod
    def _depth(cls, v: int | float | None) -> int | float | None:
        if isinstance(v, float) and not 0 < v < 1 or isinstance(v, int) and v < 1:
            raise ValueError(
                f"depth must be an int >= 1 (layers kept) or a float in (0, 1) (the fraction of the "
                f"teacher's layers kept); got {v}"
            )
        return v

    @field_validator("hidden")
    @classmethod
    def _hidden(cls, v: list[int]) -> list[int]:
        if not v or any(h < 1 for h in v):
            raise ValueError(f"hidden must list one or more layer sizes >= 1, e.g. [64, 64]; got {v}")
        return v

    @field_validator("hints")
    @classmethod
    def _hints(cls, v: str | list[list[str]]) -> str | list[list[str]]:
        if isinstance(v, list) and any(len(pair) != 2 for pair in v):
            raise ValueError(
                "hints must be pairs [student_layer, teacher_layer], e.g. [[features.2, features.2]]"
            )
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        if isinstance(v, list) and (not v or any(i < 0 for i in v) or len(set(v)) != len(v)):
            raise ValueError(
                f"layers must be auto, even or distinct layer indices >= 0, e.g. [0, 4, 5]; got {v}"
            )
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.student != "auto" and (
            self.width is not None
            or self.heads is not None
            or self.depth is not None
            or self.layers is not None
        ):
            raise ValueError(
                "width, heads, depth and layers derive a student from the teacher (student: auto); "
                f"they do not apply to student: {self.student}"
            )
        if isinstance(self.layers, list) and self.depth is not None and self.depth != len(self.layers):
            raise ValueError(
                f"depth {self.depth} differs from the {len(self.layers)} layers listed; give one of them"
            )
        if self.student != "auto" and self.blocks != "standard":
            raise ValueError(
                "blocks: separable rebuilds the convolutions of a student derived from the "
                f"teacher (student: auto); it does not apply to student: {self.student}"
            )
        if self.student_weights is not None and ":" not in self.student:
            raise ValueError(
                "student_weights loads a state dict into a factory student (student: file.py:fn)"
            )
        return self

    @property
    def student_width(self) -> float:
        return 0.45 if self.width is None else self.width

    @property
    def needs_teacher_module(self) -> bool:
        """Only a derived student needs the teacher's PyTorch architecture."""
        return self.student == "auto"
