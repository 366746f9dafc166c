"""The explicit table of techniques a recipe stage may name."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from presso.errors import PressoError
from presso.techniques.distill.config import DistillConfig
from presso.techniques.lowrank.config import FactorizeConfig
from presso.techniques.pruning.config import PruneConfig, SlimConfig
from presso.techniques.quantization.config import Int4Config, Int8Config, KMeansConfig, WeightOnlyConfig
from presso.techniques.quantization.hashing_config import HashedConfig
from presso.techniques.quantization.qat_config import QATConfig


class PackConfig(BaseModel):
    """The packed storage file: no options; every tensor gets the smallest lossless codec."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[BaseModel]
    # "onnx": transforms an ONNX graph; "torch": transforms an nn.Module; "storage": how the
    # final model's weights are stored (runs last, leaves the runnable model as it is)
    domain: str
    summary: str
    apply_path: str  # "module:function", imported only when a stage runs (keeps import light)
    sparse: bool = False  # leaves zero weights: the run stores them as a bitmask + values at the end

    def apply(self, *args, **kwargs):
        module, _, fn = self.apply_path.partition(":")
        return getattr(importlib.import_module(module), fn)(*args, **kwargs)


TECHNIQUES: dict[str, Technique] = {
    "int8": Technique(
        "int8",
        Int8Config,
        "onnx",
        "int8 post-training quantization on ONNX Runtime integer kernels, accuracy-aware",
        "presso.techniques.quantization.int8:quantize_int8",
    ),
    "int4": Technique(
        "int4",
        Int4Config,
        "onnx",
        "4-bit weight-only quantization, packed two values a byte (per group / per channel)",
        "presso.techniques.quantization.weight_only:quantize_int4",
    ),
    "weight-only": Technique(
        "weight-only",
        WeightOnlyConfig,
        "onnx",
        "weight-only quantization: int 2-8 bits, power-of-two scales, binary, float16/bfloat16; "
        "optional AdaRound rounding and bias correction from the calibration rows",
        "presso.techniques.quantization.weight_only:quantize_weight_only",
    ),
    "kmeans": Technique(
        "kmeans",
        KMeansConfig,
        "onnx",
        "k-means weight clustering: a codebook of 2^bits values per layer plus packed indices",
        "presso.techniques.quantization.clustering:cluster_weights",
    ),
    "qat": Technique(
        "qat",
        QATConfig,
        "torch",
        "quantization-aware fine-tuning (STE / learned step size), stored as packed 2-8-bit weights",
        "presso.techniques.quantization.qat_stage:quantize_aware",
    ),
    "hashed": Technique(
        "hashed",
        HashedConfig,
        "torch",
        "hashed weight sharing (HashedNets): a hash of each weight's position picks one of K shared "
        "values per layer, fine-tuned to the original model; stores K values + the hash seed",
        "presso.techniques.quantization.hashing:hash_weights",
    ),
    "prune": Technique(
        "prune",
        PruneConfig,
        "torch",
        "weight pruning: unstructured (magnitude / Taylor / random, global, per layer or from sensitivity "
        "curves) or N:M masks on a one-shot, iterative or gradual schedule with fine-tuning; zeros stored as "
        "a bitmask + surviving values",
        "presso.techniques.pruning.prune_stage:prune_weights",
        sparse=True,
    ),
    "slim": Technique(
        "slim",
        SlimConfig,
        "torch",
        "structured pruning: physically removes channels / neurons (or attention heads and feed-forward "
        "neurons), rewiring residual and concatenated layers, then fine-tunes: a smaller, faster model",
        "presso.techniques.pruning.slim_stage:slim",
    ),
    "factorize": Technique(
        "factorize",
        FactorizeConfig,
        "torch",
        "low-rank factorization: Linear layers by truncated SVD (two thin layers), convolutions by Tucker-2 "
        "(1x1 -> core -> 1x1); rank by fixed rank, ratio, kept energy, max error or measured speed; "
        "fine-tuned to the original model",
        "presso.techniques.lowrank.stage:factorize_stage",
    ),
    "distill": Technique(
        "distill",
        DistillConfig,
        "torch",
        "knowledge distillation: a smaller student (derived from the teacher: narrower / fewer layers; a plain "
        "MLP; or your own) fitted to the teacher's outputs (soft targets with temperature, MSE or cosine, "
        "optional hints); the teacher may be PyTorch, ONNX or any Python callable",
        "presso.techniques.distill.stage:distill_stage",
    ),
    "pack": Technique(
        "pack",
        PackConfig,
        "storage",
        "packed storage: besides model.onnx, model.packed holds the weights losslessly entropy-coded "
        "(sparse bitmasks, codebooks, 4-bit nibbles, LZMA), with its own loader (presso.unpack)",
        "presso.export.packed:pack",
    ),
}


def get_technique(name: str) -> Technique:
    try:
        return TECHNIQUES[name]
    except KeyError:
        raise PressoError(f"Unknown technique '{name}'. Available: {', '.join(TECHNIQUES)}.") from None
