"""Typed options of the pruning techniques (pydantic only, no torch: recipes validate fast)."""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

from pydantic import Field, model_validator

from presso.techniques.recovery_options import RecoveryOptions


class PruneConfig(RecoveryOptions):
    """Unstructured or N:M pruning of Linear / Conv weights (masks), fine-tuned, stored sparse.

    ``pattern: unstructured`` zeroes the lowest-scoring ``sparsity`` of the weights, ranked
    by ``criterion`` over all layers (``scope: global``), per layer (``layer``), or with
    per-layer ratios from sensitivity curves under the run's ``--max-drop``
    (``sensitivity``). ``pattern: n:m`` keeps the ``n`` largest of every ``m`` consecutive
    input weights (2:4 by default; ``sparsity`` is then ``1 - n/m``). ``schedule``:
    ``one-shot`` prunes once then fine-tunes; ``iterative`` prunes in ``rounds`` steps,
    each removing the same fraction of the surviving weights, fine-tuning in between;
    ``gradual`` raises the sparsity every epoch along a cubic ramp over the first
    ``ramp`` fraction of the epochs (Zhu & Gupta 2017). Layers in ``skip`` (module names,
    e.g. ``classifier.3``) stay dense. Zeros are stored as a bitmask plus the surviving
    values at the end of the run, also after a quantization stage.
    """

    pattern: Literal["unstructured", "n:m"] = "unstructured"
    sparsity: float = Field(default=0.9, ge=0, lt=1)
    n: int = Field(default=2, ge=1, le=64)
    m: int = Field(default=4, ge=2, le=64)
    criterion: Literal["magnitude", "taylor", "random"] = "magnitude"
    scope: Literal["global", "layer", "sensitivity"] = "global"
    schedule: Literal["one-shot", "iterative", "gradual"] | None = None  # None: gradual; n:m one-shot
    rounds: int = Field(default=3, ge=1, le=100)
    ramp: float = Field(default=0.6, gt=0, le=1)
    skip: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_nm(self):
        if self.pattern == "n:m" and self.n >= self.m:
            raise ValueError(
                f"n:m pruning keeps n of every m weights, so n must be < m; got n={self.n}, "
                f"m={self.m} (e.g. n: 2, m: 4)"
            )
        if self.pattern == "n:m" and self.schedule not in (None, "one-shot"):
            raise ValueError(
                "an n:m pattern is applied once, then fine-tuned: use schedule one-shot (gradual and "
                "iterative schedules raise unstructured sparsity)"
            )
        if self.pattern == "n:m" and self.scope == "sensitivity":
            raise ValueError(
                "scope 'sensitivity' chooses per-layer sparsities; an n:m pattern fixes them at "
                "1 - n/m: use scope global or layer"
            )
        return self

    @property
    def ramp_schedule(self) -> str:
        return self.schedule or ("one-shot" if self.pattern == "n:m" else "gradual")

    @property
    def target(self) -> float:
        return 1.0 - self.n / self.m if self.pattern == "n:m" else self.sparsity


class SlimConfig(RecoveryOptions):
    """Structured pruning: physically remove channels / neurons (CNNs, MLPs) or attention
    heads and feed-forward neurons (transformer encoders), then fine-tune.

    ``ratio`` of the output channels of every Linear / Conv layer are removed (``scope:
    layer``) or as a global ranking decides (``global``), scored by ``importance``
    (``l1`` is for channels only);
    coupled layers (residual additions, concatenations, normalisation) are pruned together
    and the output layer keeps its size. For transformers ``heads`` and ``ffn`` are the
    fractions of attention heads and feed-forward neurons removed per layer. ``schedule:
    iterative`` reaches the ratio in ``rounds`` steps with fine-tuning in between;
    ``round_to`` keeps channel counts a multiple of it (vector-friendly GEMMs).
    """

    ratio: float = Field(default=0.65, ge=0, lt=1)
    heads: float = Field(default=0.25, ge=0, lt=1)
    ffn: float = Field(default=0.5, ge=0, lt=1)
    # Ratios tried in this order until one keeps the budget (instead of ratio and its milder
    # backoff retries): a recipe after speed starts bold and steps down finely. For
    # transformer encoders heads and ffn are scaled by ratio / ratios[0].
    ratios: list[float] | None = Field(default=None, min_length=1, max_length=12)
    # auto: l2 for channels; taylor for heads / neurons, which kept the most of MiniLM's
    # embedding (mean cosine 0.745 vs 0.54-0.70 for the others, heads 0.25 + ffn 0.5 unrecovered)
    importance: Literal["auto", "l2", "l1", "taylor", "activation", "random"] = "auto"
    scope: Literal["layer", "global"] = "layer"
    schedule: Literal["one-shot", "iterative"] = "one-shot"
    rounds: int = Field(default=3, ge=1, le=100)
    round_to: int | None = Field(default=None, ge=1, le=1024)
    skip: list[str] = Field(default_factory=list)  # module names (or re: patterns) kept whole

    @model_validator(mode="after")
    def _check_ratios(self):
        r = self.ratios
        if r is not None and (any(not 0 < x < 1 for x in r) or any(a <= b for a, b in pairwise(r))):
            raise ValueError(f"ratios must be fractions in (0, 1), boldest first (decreasing); got {r}")
        return self
