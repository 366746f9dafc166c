"""ONNX Runtime's transformer fusion, per encoder family, with a record of what it fused.

ORT's optimizer has one encoder model type, ``"bert"``: its fusions match BERT-style
graphs whatever the family is called (``onnxruntime.transformers.optimizer.MODEL_TYPES``
has no RoBERTa, DistilBERT, ALBERT, ELECTRA, MPNet or DeBERTa entry). Measured on tiny
exports of each family (2 layers, onnxruntime 1.32):

=========================  ==========  ==============  ==================  ==============
family                      Attention   SkipLayerNorm   Gelu fusion         EmbedLayerNorm
=========================  ==========  ==============  ==================  ==============
bert, distilbert, electra   2 of 2      4               BiasGelu 2          1
roberta, xlm-roberta        2 of 2      4               BiasGelu 2          0 (position ids)
albert                      1 of 2      4               FastGelu 2          0
mpnet                       0 of 2      5               BiasGelu 2          0
deberta-v2                  0 of 2      4               BiasGelu 2          0
=========================  ==========  ==============  ==================  ==============

Where Attention is not fused the stage notes say why (:data:`UNFUSED_ATTENTION`).
"""

from __future__ import annotations

from pathlib import Path

# Families whose attention ORT's "bert" fusion cannot match, and why.
UNFUSED_ATTENTION = {
    "mpnet": "ORT's Attention fusion does not match MPNet's relative position bias",
    "deberta-v2": "ORT has no fusion for DeBERTa's disentangled attention",
    "deberta": "ORT has no fusion for DeBERTa's disentangled attention",
    # Measured with shared and with unshared layers (num_hidden_groups 1 and 2) alike.
    "albert": "ORT's Attention fusion does not match ALBERT's first block",
}

# ORT's optimizer model type for each encoder family: "bert" is its only encoder type.
ORT_MODEL_TYPE = "bert"


def fuse_transformer(src: Path, dst: Path, shape: dict, log) -> tuple[Path, dict[str, int], str | None]:
    """Fuse ``src`` into ``dst``: the graph to quantize, the fused op counts and a note.

    The head count and width are passed explicitly: with auto-detection (0, 0) ORT fuses
    no Attention in a BERT export (measured on all-MiniLM-L6-v2: 0 vs 6 Attention).
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    family = str(shape.get("model_type") or "bert")
    try:
        softmaxes = _count(onnx.load(str(src), load_external_data=False), "Softmax")
        optimized = optimize_model(
            str(src),
            model_type=ORT_MODEL_TYPE,
            num_heads=int(shape.get("num_heads", 0) or 0),
            hidden_size=int(shape.get("hidden_size", 0) or 0),
            opt_level=0,
            use_gpu=False,
        )
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        left = _count(optimized.model, "Softmax")  # one per attention block ORT did not fuse
        optimized.save_model_to_file(str(dst))
    except Exception as exc:
        log(f"transformer fusion failed ({type(exc).__name__}); quantizing the unfused graph")
        return src, {}, f"transformer fusion ({family}): failed ({type(exc).__name__}), quantized unfused"
    return dst, stats, describe(family, stats, fused=softmaxes - left, blocks=softmaxes)


def describe(family: str, stats: dict[str, int], *, fused: int, blocks: int) -> str:
    """One line for the stage report: what ORT fused, and why attention was not."""
    ops = ", ".join(f"{v} {k}" for k, v in sorted(stats.items())) or "nothing"
    line = f"transformer fusion ({family}, ORT '{ORT_MODEL_TYPE}' fusions): {ops}"
    if blocks and fused < blocks:
        why = UNFUSED_ATTENTION.get(family, "ORT's Attention pattern did not match this graph")
        line += f"; Attention fused in {max(fused, 0)} of {blocks} blocks ({why})"
    return line


def _count(model, op_type: str) -> int:
    return sum(1 for node in model.graph.node if node.op_type == op_type)
