"""How the final model's weights are stored: the storage hooks the run calls after its
model-changing stages.

- **Sparse storage** runs by itself after any stage that leaves zero weights (``sparse``
  techniques): mostly-zero weights become a bitmask plus their non-zero values, in the
  runnable ONNX graph itself, when that makes the file smaller.
- **pack** (a recipe stage, or ``--packed``) writes ``model.packed`` beside ``model.onnx``:
  every tensor losslessly entropy-coded, with its own loader (``presso.unpack``).

Both are lossless, and both are checked: the stored model's outputs are compared with the
model's on calibration rows before a figure is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from presso.export.onnx_export import check_parity
from presso.measure.size import file_size, parameter_count
from presso.progress import SILENT, Progress
from presso.runtime.session import make_session, run_session
from presso.techniques.contract import technique
from presso.techniques.storage_config import PackConfig

# Models above this are packed once (the result), not at every step: LZMA takes about a
# second per few MB on these machines.
PACK_EVERY_STEP_BYTES = 20_000_000


@dataclass(frozen=True)
class StorageContext:
    workdir: Path
    sample: dict[str, np.ndarray]  # calibration rows the stored model is checked on
    progress: Progress = SILENT
    # Models to size the same way, by name (the baseline and the model after each stage);
    # the model before its bitmask storage is named "before sparse storage".
    models: dict[str, Path] = field(default_factory=dict)
    batch: int = 1


@dataclass
class Storage:
    """What a storage hook did: the runnable model (sparse storage may replace it), the
    stage's report entry and, for pack, the packed file and its figures."""

    model: Path
    report: dict[str, Any]  # the stage's entry in report.stages (presso.report.schema.StageReport)
    notes: list[str]
    packed: Path | None = None
    stored: dict[str, Any] | None = None  # report.Stored fields
    stored_bytes: dict[str, int] = field(default_factory=dict)  # ctx.models name -> packed bytes


def _outputs(model: Path | bytes, ctx: StorageContext) -> np.ndarray:
    return run_session(make_session(model), ctx.sample, ctx.batch)


def store_sparse(model: Path, ctx: StorageContext) -> Storage | None:
    """Store weights that are mostly zeros (pruned, also after quantization) as a bitmask
    plus the non-zero values, when that makes the file smaller (None: it would not).
    ONNX Runtime rebuilds the same weights once at load, checked on calibration rows."""
    from presso.techniques.pruning.sparse_storage import write_sparse

    dst = model.with_name("sparse.onnx")
    rows = write_sparse(model, dst)
    sparse = [r for r in rows if r["storage"] == "bitmask"]
    before, after = file_size(model), file_size(dst)
    if not sparse or after >= before:
        dst.unlink(missing_ok=True)
        return None
    diff = check_parity(_outputs(model, ctx), _outputs(dst, ctx), "sparse storage")
    note = (
        f"sparse storage: {len(sparse)} of {len(rows)} weight tensors stored as a bitmask + their non-zero "
        f"values ({before:,} -> {after:,} bytes); ONNX Runtime rebuilds them once at load "
        f"(outputs identical, max difference {diff:.2g})"
    )
    report = {
        "technique": "sparse-storage",
        "chosen": "bitmask",
        "variants": [],
        "notes": [note],
        "layers": rows,
    }
    return Storage(dst, report, [note])


@technique(
    "pack",
    config=PackConfig,
    domain="storage",
    summary=(
        "packed storage: besides model.onnx, model.packed holds the weights losslessly entropy-coded "
        "(sparse bitmasks, codebooks, 4-bit nibbles, LZMA), with its own loader (presso.unpack)"
    ),
)
def pack_model(model: Path, cfg: PackConfig, ctx: StorageContext) -> Storage:
    """Write the packed storage file of ``model``, check that its loader gives back a model
    with the very same outputs, and size each of ``ctx.models`` the same way (where small
    enough).

    A model whose zeros were moved into bitmask storage is packed both ways and the
    smaller file kept: the packer's own sparse codec often beats the bitmask + values
    graph (whose bitmask is re-coded as opaque bytes)."""
    from presso.export.packed import pack, unpack

    sources = {"model.onnx": model}
    if "before sparse storage" in ctx.models:
        sources["the model before its bitmask storage"] = ctx.models["before sparse storage"]
    with ctx.progress.task("packing the weights (sparse + low-bit + entropy-coded)"):
        packed = {
            name: pack(path, ctx.workdir / f"model{i}.packed")
            for i, (name, path) in enumerate(sources.items())
        }
        source = min(packed, key=lambda name: packed[name].bytes)
        stats, dst = packed[source], ctx.workdir / f"model{list(sources).index(source)}.packed"
        diff = check_parity(
            _outputs(model, ctx), _outputs(unpack(dst).SerializeToString(), ctx), "packed storage"
        )
        step_bytes = _step_bytes(ctx, {path: packed[name].bytes for name, path in sources.items()})
    params = parameter_count(ctx.models["baseline"]) if "baseline" in ctx.models else parameter_count(model)
    stored = {
        "file": "model.packed",
        "bytes": stats.bytes,
        "weights_bytes": stats.weights_bytes,
        "graph_bytes": stats.graph_bytes,
        "fp32_weights_bytes": 4 * params,
        "weights_ratio": round(4 * params / max(stats.weights_bytes, 1), 3),
        "codecs": stats.codecs,
    }
    note = (
        f"packed storage: model.packed is {stats.bytes:,} bytes ({stats.weights_bytes:,} of weights, "
        f"{stats.graph_bytes:,} of graph) against {file_size(model):,} for the runnable "
        f"model.onnx; the weights are {stored['weights_ratio']:.1f}x smaller than {params:,} float32 values. "
        f"Lossless: presso.unpack gives back {source} (outputs identical to model.onnx, max difference "
        f"{diff:.2g})"
    )
    report = {"technique": "pack", "chosen": "lzma", "variants": [], "notes": [note], "layers": stats.tensors}
    return Storage(model, report, [note], packed=dst, stored=stored, stored_bytes=step_bytes)


def _step_bytes(ctx: StorageContext, done: dict[Path, int]) -> dict[str, int]:
    """The packed size of each model in ``ctx.models`` (those not too big to pack)."""
    from presso.export.packed import pack

    out: dict[str, int] = {}
    for name, path in ctx.models.items():
        if path not in done and file_size(path) <= PACK_EVERY_STEP_BYTES:
            done[path] = pack(path, ctx.workdir / "step.packed").bytes
        if path in done:
            out[name] = done[path]
    return out
