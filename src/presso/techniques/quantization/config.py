"""Typed options of the int8 technique."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


def _group_in_range(v):
    if v != "auto" and not 2 <= v <= 4096:
        raise ValueError("group_size must be 'auto' or an int in [2, 4096]")
    return v


# Weights per scale along a layer's input features; "auto": 32 where it divides.
GroupSize = Annotated[Literal["auto"] | int, AfterValidator(_group_in_range)]

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

    group_size: GroupSize = "auto"
    symmetric: bool = True
    keep_float: list[str] = Field(default_factory=list)  # ONNX node names left in fp32
    # ONNX node name -> "int8": 8-bit weights for that layer (mixed precision; presso
    # fills it in the resolved recipe when sensitive layers fall back)
    precision: dict[str, Literal["int8"]] = Field(default_factory=dict)


Scheme = Literal["int", "power-of-two", "binary", "float16", "bfloat16"]
INT_SCHEMES = ("int", "power-of-two")
# Per-layer precisions a weight-only stage may store (mixed precision overrides)
WeightPrecision = Literal[
    "int2", "int3", "int4", "int5", "int6", "int7", "int8", "binary", "float16", "bfloat16"
]


class WeightOnlyConfig(BaseModel):
    """Weight-only quantization: weights stored small, activations stay float.

    ``scheme``: ``"int"`` (linear, ``bits`` 2-8), ``"power-of-two"`` (linear with every
    scale rounded up to ``2**-p``, for shift-only hardware), ``"binary"`` (1 bit:
    ``sign(w)`` times the mean ``|w|`` of each output channel), ``"float16"`` or
    ``"bfloat16"`` (half-precision copies). Integer weights use groups of ``group_size``
    input features (``"auto"``: 32 where it divides, else per output channel; convolutions
    per output channel); ``bits <= 4`` are packed two a byte, 5-8 bits take a byte each.
    ``rounding="adaround"`` learns each weight's rounding from the calibration rows
    (AdaRound) instead of rounding to nearest; ``bias_correction`` removes the mean output
    shift that quantization causes, through the layer's bias.

    Examples
    --------
    >>> WeightOnlyConfig(bits=3, rounding="adaround", bias_correction=True).bits
    3
    >>> WeightOnlyConfig(scheme="binary").bits is None
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: Scheme = "int"
    bits: int | None = None  # 4 for the integer schemes when not given
    symmetric: bool = True
    group_size: GroupSize = "auto"
    keep_float: list[str] = Field(default_factory=list)  # ONNX node names left in fp32
    # ONNX node name -> precision of that layer (mixed precision; presso fills it in the
    # resolved recipe when sensitive layers fall back, e.g. to "int8")
    precision: dict[str, WeightPrecision] = Field(default_factory=dict)
    rounding: Literal["nearest", "adaround"] = "nearest"
    bias_correction: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_bits(cls, data):
        if isinstance(data, dict) and data.get("bits") is None and data.get("scheme", "int") in INT_SCHEMES:
            data = {**data, "bits": 4}
        return data

    @field_validator("bits", mode="before")
    @classmethod
    def _check_bits(cls, v, info: ValidationInfo):
        scheme = info.data.get("scheme", "int")
        if scheme not in INT_SCHEMES:
            if v is not None:
                raise ValueError(f"scheme '{scheme}' has a fixed width: leave 'bits' out")
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
            hint = "; for 1-bit weights use scheme: binary" if v == 1 and not isinstance(v, bool) else ""
            raise ValueError(f"bits must be an int in [2, 8] for scheme '{scheme}'{hint}")
        return v

    @field_validator("symmetric")
    @classmethod
    def _check_symmetric(cls, v, info: ValidationInfo):
        scheme = info.data.get("scheme", "int")
        if not v and scheme not in INT_SCHEMES:
            raise ValueError(f"symmetric applies to the integer schemes, not '{scheme}'")
        return v

    @field_validator("group_size")
    @classmethod
    def _check_group(cls, v, info: ValidationInfo):
        scheme = info.data.get("scheme", "int")
        if v != "auto" and scheme not in INT_SCHEMES:
            raise ValueError(
                f"group_size applies to the integer schemes, not '{scheme}' "
                "(binary scales are per output channel; half floats have none)"
            )
        return v

    @field_validator("rounding")
    @classmethod
    def _check_rounding(cls, v, info: ValidationInfo):
        scheme = info.data.get("scheme", "int")
        if v == "adaround" and scheme not in INT_SCHEMES:
            raise ValueError(f"rounding 'adaround' applies to the integer schemes, not '{scheme}'")
        return v


KMeansBits = Literal["1-bit", "2-bit", "3-bit", "4-bit", "5-bit", "6-bit", "7-bit", "8-bit"]


class KMeansConfig(BaseModel):
    """k-means weight clustering: 2^bits shared values per layer, stored as a codebook and
    packed indices (two a byte for bits <= 4)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int = Field(default=4, ge=1, le=8)
    per_channel: bool = False  # a codebook per output channel (2^bits values each)
    # Pruned weights stay exactly zero: one codebook entry is 0.0 and the others are fitted
    # to the surviving weights (Deep Compression); only where zeros are at least 1 / 2^bits
    # of a layer's (or channel's) weights, so dense layers are clustered as before.
    keep_zeros: bool = True
    seed: int = 0
    keep_float: list[str] = Field(default_factory=list)  # ONNX node names left in fp32
    # ONNX node name -> "N-bit": 2^N values for that layer (mixed precision; presso fills it
    # in the resolved recipe when sensitive layers fall back to more values)
    precision: dict[str, KMeansBits] = Field(default_factory=dict)
