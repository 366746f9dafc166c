"""Typed options of the int8 technique."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Variant = Literal["dynamic", "dynamic-smooth", "dynamic-reduce-range", "static-s8s8", "static-u8s8"]


class Int8Config(BaseModel):
    """int8 post-training quantization.

    ``variants="auto"`` tries what fits the model (static QDQ and dynamic for most nets,
    dynamic on a fused graph for transformers), scores each on the calibration rows
    and keeps the fastest one within the quality budget.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    variants: Literal["auto"] | list[Variant] = "auto"
    per_channel: bool = True
    # Observer of the activation ranges (static variants): presso's streaming observers;
    # "auto" picks per tensor the one with the least int8 error on the observed histogram.
    calibration: Literal["minmax", "moving_average", "percentile", "mse", "entropy", "auto"] = "minmax"
    calibration_rows: int = Field(default=256, ge=1, le=100_000)
    fuse_transformer: bool = True
    keep_float: list[str] = Field(default_factory=list)  # ONNX node names left in fp32


AUTO_GROUP = 32


class Int4Config(BaseModel):
    """4-bit weight-only quantization: per group of input features for matrix weights,
    per output channel for convolutions.

    ``group_size="auto"`` uses groups of 32 where 32 divides a layer's input features and
    one scale per output channel elsewhere; an explicit size must divide every layer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_size: Literal["auto"] | int = "auto"
    symmetric: bool = True
    keep_float: list[str] = Field(default_factory=list)  # ONNX node names left in fp32
    # ONNX node name -> "int8": 8-bit weights for that layer (mixed precision; presso
    # fills it in the resolved recipe when sensitive layers fall back)
    precision: dict[str, Literal["int8"]] = Field(default_factory=dict)

    @field_validator("group_size")
    @classmethod
    def _check_group(cls, v):
        if v != "auto" and not 2 <= v <= 4096:
            raise ValueError("group_size must be 'auto' or an int in [2, 4096]")
        return v


class KMeansConfig(BaseModel):
    """k-means weight clustering: 2^bits shared values per layer, stored as a codebook and
    packed indices (two a byte for bits <= 4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int = Field(default=4, ge=1, le=8)
    per_channel: bool = False  # a codebook per output channel (2^bits values each)
    seed: int = 0
    keep_float: list[str] = Field(default_factory=list)  # ONNX node names left in fp32
