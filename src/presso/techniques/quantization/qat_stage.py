"""The ``qat`` recipe stage: fine-tune with fake-quantized weights, export, store in 2-8 bits.

1. Fake-quantize the weights of the PyTorch model's Linear / Conv layers (``qat.py``).
2. Fine-tune to the original model's outputs on the calibration rows (a seeded part of
   them held back for early stopping), optionally quantizing the layers progressively.
3. Bake the trained weights onto their grids, export to ONNX and store each weight with
   exactly its trained integers and scales (``write_int4``'s ``grids``), then score the
   result against the budget like any weight-only model; sensitive layers fall back to
   8 bits or fp32 if the budget still breaks.
"""

from __future__ import annotations

from pathlib import Path

from presso.errors import PressoError
from presso.techniques.base import StageContext, StageResult
from presso.techniques.contract import technique
from presso.techniques.quantization.qat_config import QATConfig
from presso.techniques.recovery import fit_to_teacher, teacher_split, weights_by_value


def grids_by_initializer(onnx_path: Path, module, qparams: dict) -> dict:
    """ONNX weight initializer -> the QuantParams its values were trained on.

    Matched by value (the exporter renames and transposes weights, but their values are
    the trained ones bit for bit). A weight the exporter changed (e.g. a BatchNorm folded
    into a convolution) finds no match and is stored with min-max scales instead.
    """
    layers = dict(module.named_modules())
    weights = {name: layers[name].weight.detach().numpy() for name in qparams}
    return {weight: qparams[name] for name, _, weight, _ in weights_by_value(onnx_path, weights)}


@technique(
    "qat",
    config=QATConfig,
    domain="torch",
    summary=("quantization-aware fine-tuning (STE / learned step size), stored as packed 2-8-bit weights"),
)
def quantize_aware(onnx_path: Path, cfg: QATConfig, ctx: StageContext) -> StageResult:
    from presso.techniques.quantization.accuracy_aware import each
    from presso.techniques.quantization.qat import (
        convert,
        prepare_qat,
        progressive_hook,
        progressive_schedule,
    )
    from presso.techniques.quantization.weight_only import accuracy_aware, write_weight_only

    if ctx.module is None or ctx.export is None:
        raise PressoError(
            "The 'qat' stage fine-tunes the PyTorch model; give presso a PyTorch model "
            "or Hugging Face folder, and put 'qat' before ONNX stages."
        )
    module = ctx.module
    names = prepare_qat(
        module,
        bits=cfg.bits,
        group_size=cfg.group_size,
        symmetric=cfg.symmetric,
        learned_scale=cfg.learned_scale,
    )
    if not names:
        raise PressoError("The 'qat' stage found no Linear or Conv layer to quantize in this model.")

    # Early stopping needs rows the fine-tuning does not see: a seeded part of calibration.
    train, val = teacher_split(ctx, cfg.validation_fraction, "qat")
    n_train, n_val = len(train[1]), 0 if val is None else len(val[1])

    progressive = cfg.progressive_stages > 1
    schedule = progressive_schedule(names, cfg.progressive_stages, cfg.epochs) if progressive else {}
    ctx.log(f"qat: fine-tuning {len(names)} layers with {cfg.bits}-bit weights on {n_train} rows")
    report = fit_to_teacher(
        module,
        train,
        val,
        ctx,
        "qat",
        cfg,
        # Early stopping could end before the last group of layers starts quantizing.
        patience=None if progressive else cfg.patience,
        before_epoch=progressive_hook(module, schedule) if progressive else None,
    )
    qparams = convert(module.eval())
    exported = ctx.export(module, ctx.workdir / "qat-float.onnx")
    grids = grids_by_initializer(exported, module, qparams)
    storage = cfg.weight_only()

    def writer(src, dst, _cfg, precision, grids_=grids):
        return write_weight_only(src, dst, storage, precision, grids_)

    result = accuracy_aware(
        exported, cfg, ctx, "qat", writer, fallbacks=("int8", "fp32") if cfg.bits < 8 else ("fp32",)
    )
    result.ranked = each(result.ranked, lambda c: setattr(c, "module", module))  # mixes come lazily
    result.notes.insert(
        0,
        (
            f"qat: fine-tuned {len(names)} layers for {report.epochs_run} epochs on {n_train} "
            f"calibration rows (best epoch {report.best_epoch}, validation loss {-report.best_score:.4g} "
            f"on {n_val} rows, stopped: {report.stopped}); {len(grids)} of {len(qparams)} layers stored "
            "with their trained scales"
            + (
                ""
                if len(grids) == len(qparams)
                else ", the rest re-quantized min-max (changed by the export)"
            )
        ),
    )
    return result
