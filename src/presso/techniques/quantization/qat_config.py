"""Typed options of the qat technique (kept apart from config.py: pydantic only, no torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from presso.techniques.quantization.config import GroupSize, WeightOnlyConfig


class QATConfig(BaseModel):
    """Quantization-aware fine-tuning of the PyTorch model, stored like ``int4``.

    Weights of Linear / Conv layers are fake-quantized (straight-through estimator; with
    ``learned_scale`` the scales are trained too, LSQ) while the model is fine-tuned to
    the original model's outputs on the calibration rows; ``progressive_stages`` > 1
    quantizes the layers in that many groups, fine-tuning in between. The result is
    stored with exactly the trained integers and scales.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int = Field(default=4, ge=2, le=8)  # 2-3 bits are stored in 4-bit containers
    group_size: GroupSize = "auto"
    symmetric: bool = True
    learned_scale: bool = False  # LSQ; min-max scales with the STE were as accurate and steadier (digits)
    progressive_stages: int = Field(default=1, ge=1, le=64)
    epochs: int = Field(default=12, ge=1, le=1000)
    lr: float = Field(default=1e-4, gt=0, le=1.0)  # 1e-3 first undoes the trained weights (digits)
    batch_size: int = Field(default=32, ge=1, le=65536)
    patience: int | None = Field(default=4, ge=1)
    temperature: float = Field(default=2.0, gt=0, le=100)
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)
    max_minutes: float | None = Field(default=None, gt=0)
    keep_float: list[str] = Field(default_factory=list)  # ONNX node names left in fp32
    precision: dict[str, Literal["int8"]] = Field(default_factory=dict)  # mixed-precision pins

    def weight_only(self):
        """The storage options: the weight-only writer's config for these bits and grid."""
        return WeightOnlyConfig(
            scheme="int",
            bits=self.bits,
            symmetric=self.symmetric,
            group_size=self.group_size,
            keep_float=self.keep_float,
            # a copy typed as the writer's wider dict[str, WeightPrecision] (pydantic copies it anyway)
            precision=dict(self.precision),
        )
