"""Typed options of the ``factorize`` technique (pydantic only, no torch: recipes validate fast)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from presso.techniques.recovery_options import RecoveryOptions


class FactorizeConfig(RecoveryOptions):
    """Low-rank factorization: Linear layers by truncated SVD (two thin Linears), convolutions
    by Tucker-2 (1x1 -> core -> 1x1), then fine-tuning to the original model's outputs.

    Rank selectors (give at most one; none means ``rank: auto``):

    - ``rank: auto``: every layer keeps ``keep`` of its parameters (0.25: a quarter);
      if the budget breaks, milder retries keep more (0.5, then 0.75).
    - ``rank: N``: a fixed rank (for a convolution it caps both channel modes);
      ``ranks: {layer: N or [R_out, R_in]}`` fixes it per layer.
    - ``ratio``: a fraction of each layer's full rank min(m, n).
    - ``energy``: the fraction of the spectral energy (sum of squared singular values) kept.
    - ``max_error``: the largest relative Frobenius reconstruction error per layer.
    - ``rank: speed``: per layer, the largest rank whose factors run measurably faster
      than the dense layer on ONNX Runtime at batch 1 (timed on this machine).

    ``layers``: ``auto`` = the feed-forward layers of a transformer encoder, otherwise every
    Linear / Conv layer but the last one run (the output layer, where a low rank costs the
    most quality); ``all``; or a list of module names. A layer is left whole when its
    factors would not save parameters (``pays: size``) or, with ``pays: speed``, would not
    run measurably faster; the report says which and why. ``weighting: activations`` fits
    each Linear layer's factors to its inputs on the calibration rows (activation-aware
    SVD), which keeps far more of the model before fine-tuning than plain SVD (``none``).
    """

    rank: int | Literal["auto", "speed"] = "auto"
    ratio: float | None = Field(default=None, gt=0, le=1)
    energy: float | None = Field(default=None, gt=0, le=1)
    max_error: float | None = Field(default=None, ge=0, lt=1)
    keep: float = Field(default=0.25, gt=0, lt=1)
    ranks: dict[str, int | list[int]] = Field(default_factory=dict)
    layers: Literal["auto", "all"] | list[str] = "auto"
    pays: Literal["size", "speed"] = "size"
    # none: plain truncated SVD of the weight; activations: Linear factors minimise the
    # output error on the calibration rows' inputs (activation-aware SVD). Before fine-tuning
    # activations keeps far more (1024-wide digits MLP, keep 25%: drop 0.6 vs 3.0 points);
    # after it, the small examples came out 1-2 held-out rows worse (digits 0.0119 vs 0.0080),
    # so plain SVD stays the default until a wider comparison decides.
    weighting: Literal["activations", "none"] = "none"

    @model_validator(mode="after")
    def _check(self):
        chosen = [k for k in ("ratio", "energy", "max_error") if getattr(self, k) is not None]
        if isinstance(self.rank, int):
            if self.rank < 1:
                raise ValueError(f"rank must be >= 1 (a rank of 0 would remove the layer); got {self.rank}")
            chosen.append("rank")
        elif self.rank == "speed":
            chosen.append("rank: speed")
        if len(chosen) > 1:
            raise ValueError(f"give one rank selector, not {' and '.join(chosen)}")
        for name, r in self.ranks.items():
            values = [r] if isinstance(r, int) else r
            if not 1 <= len(values) <= 2 or any(v < 1 for v in values):
                raise ValueError(
                    f"ranks['{name}'] must be a rank >= 1, or [R_out, R_in] for a convolution; got {r}"
                )
        return self

    @property
    def automatic(self) -> bool:
        return self.rank == "auto" and self.ratio is None and self.energy is None and self.max_error is None
