"""Assemble the :class:`Report` from what a run measured."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from presso.data.dataset import Dataset
from presso.data.token_lengths import token_lengths
from presso.measure.bench import BenchSettings
from presso.measure.memory import process_peak_mb
from presso.measure.metrics import one_row_drop
from presso.model.loaded import LoadedModel
from presso.report.schema import (
    Budget,
    InputSpec,
    MetricChange,
    ModelFigures,
    Report,
    RunMemory,
    StageReport,
    Step,
    Stored,
)
from presso.runtime.cpu import cpu_features
from presso.runtime.lengths import MASK
from presso.tasks import change, drop, metric_spec
from presso.version import __version__

# user:password@ in a URL (a --storage database, a data URL): the password is not recorded.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s]*@")


def command_line() -> str:
    """This process's command line, shell-quoted, the program by its file name only:
    ``presso compress ...``, ``python3 -m presso.cli.main ...``, ``python3 train.py``;
    passwords in URLs shown as ``***``."""
    if sys.argv and os.path.basename(sys.argv[0]) == "presso":  # the console script
        argv = ["presso", *sys.argv[1:]]
    else:  # the interpreter's own arguments keep "-m module" and the script's name
        argv = list(getattr(sys, "orig_argv", None) or sys.argv) or ["python"]
        argv[0] = os.path.basename(argv[0])
    return shlex.join(_URL_PASSWORD.sub(r"\g<head>***@", a) for a in argv)


class RunRecord(Protocol):
    """What the report reads of a run (presso.recipe.run.Run); it never changes it."""

    model: LoadedModel
    task: str
    max_drop: float
    data: Dataset
    calibration: Dataset
    evaluation: Dataset
    split_info: dict
    bench: BenchSettings
    seq_len: int
    unresolved: list[str]
    export_max_abs_diff: float | None

    @property
    def primary(self) -> str: ...


@dataclass(frozen=True)
class Measured:
    """What the run measured: per model ("baseline", "compressed") its size, parameters,
    latency, throughput, memory and metrics, and what the stages reported."""

    figures: dict[str, dict[str, Any]]
    torch_latency: dict | None
    stages: list[StageReport]
    notes: list[str]
    steps: list[Step] = field(default_factory=list)
    layer_sizes: dict = field(default_factory=dict)
    stored: dict | None = None


def _runtime_label(stage_reports: list[StageReport]) -> str:
    ran = [s for s in stage_reports if not s.skipped and s.technique not in _STORAGE]
    if not ran:
        return "ONNX Runtime fp32"
    last = ran[-1]
    return f"ONNX Runtime {last.technique} ({last.chosen})"


_STORAGE = ("sparse-storage", "pack")  # how the weights are stored, not what runs


def timed_on(latency: dict) -> str:
    """'at batch 1' and, for text, on what lengths: the texts' real ones or the padded one."""
    if latency.get("basis") == "real length":
        return f"at batch 1 on the held-out texts at their real length (median {latency['tokens']:g} tokens)"
    if latency.get("basis") == "fixed length":
        return f"at batch 1 on texts padded to {latency['tokens']:g} tokens"
    return "at batch 1"


def speed_note(baseline: dict, compressed: dict, label: str = "ONNX Runtime fp32") -> str:
    b, c = baseline["latency_ms"]["p50"], compressed["latency_ms"]["p50"]
    tb, tc = baseline["throughput_per_s"], compressed["throughput_per_s"]
    at = timed_on(compressed["latency_ms"])
    if c < b:
        note = (
            f"The compressed model is {b / c:.2f}x faster than {label} {at}: "
            f"{c:.3f} ms vs {b:.3f} ms p50, and {tc / tb:.2f}x the throughput."
        )
    else:
        note = (
            f"The compressed model is NOT faster than {label} on this machine {at}: "
            f"{c:.3f} ms vs {b:.3f} ms p50 ({b / c:.2f}x); throughput {tc / tb:.2f}x. "
            "It is smaller; for speed, try --recipe slim (structured pruning) or a smaller student."
        )
    bf, cf = baseline.get("fixed_length"), compressed.get("fixed_length")
    if bf and cf:
        fb, fc = bf["latency_ms"]["p50"], cf["latency_ms"]["p50"]
        note += f" Padded to {cf['tokens']} tokens: {fc:.3f} ms vs {fb:.3f} ms p50 ({fb / fc:.2f}x)."
    return note


def torch_note(torch_latency: dict | None, compressed: dict) -> str | None:
    if not torch_latency or torch_latency["p50"] >= compressed["latency_ms"]["p50"]:
        return None
    return (
        f"PyTorch fp32 eager ({torch_latency['p50']:.3f} ms p50) is faster than the compressed "
        f"ONNX model ({compressed['latency_ms']['p50']:.3f} ms) on this machine {timed_on(torch_latency)}."
    )


def size_note(baseline: dict, compressed: dict) -> str | None:
    if baseline["size_bytes"] is None or baseline["parameters"] is None:
        return None
    if compressed["size_bytes"] < baseline["size_bytes"]:
        return None
    return (
        f"The compressed file is NOT smaller ({compressed['size_bytes']:,} vs "
        f"{baseline['size_bytes']:,} bytes): with {baseline['parameters']:,} parameters the "
        "quantization nodes and scales outweigh the 4x smaller weights."
    )


def _one_row_drops(primary: str, run: RunRecord) -> dict[str, float] | None:
    """The drop one changed row makes on each part of the data (None: a continuous metric)."""
    steps = {
        part: one_row_drop(primary, len(rows), rows.target)
        for part, rows in (("held-out", run.evaluation), ("calibration", run.calibration))
    }
    return {k: round(v, 6) for k, v in steps.items() if v is not None} or None


def budget(metric: str, max_drop: float, baseline: float, compressed: float, run: RunRecord) -> Budget:
    """The budget's verdict: ``metric``'s drop in its own terms (presso.tasks.drop)."""
    spec = metric_spec(metric)
    d = drop(metric, baseline, compressed)
    allowed = max_drop * abs(baseline) if spec.relative else max_drop
    if spec.relative:
        meaning = (
            f"relative {'drop' if spec.higher_is_better else 'increase'} of {metric} on held-out rows: "
            f"(compressed - baseline) / baseline{' negated' if spec.higher_is_better else ''}"
        )
    else:
        meaning = (
            f"absolute drop of {metric} on held-out rows, baseline minus compressed"
            if spec.higher_is_better
            else f"absolute increase of {metric} on held-out rows, compressed minus baseline"
        )
    return Budget(
        primary_metric=metric,
        max_drop=max_drop,
        baseline=baseline,
        compressed=compressed,
        drop=d,
        passed=d <= max_drop + 1e-12,
        meaning=meaning,
        kind=spec.kind,
        higher_is_better=spec.higher_is_better,
        limit=baseline - allowed if spec.higher_is_better else baseline + allowed,
        one_row_drop=_one_row_drops(metric, run),
    )


def changes(baseline: dict[str, float], compressed: dict[str, float]) -> dict[str, MetricChange]:
    """Each metric both models report: compressed against baseline, absolute and relative."""
    out = {}
    for name, b in baseline.items():
        if name in compressed:
            absolute, relative = change(name, b, compressed[name])
            out[name] = MetricChange(
                absolute=absolute, relative=relative, higher_is_better=metric_spec(name).higher_is_better
            )
    return out


def _input_specs(run: RunRecord) -> list[InputSpec]:
    """Each model input's name, dtype and shape ("batch" first, a dynamic axis by its name)."""
    sample = run.evaluation.head(1).inputs
    return [
        InputSpec(
            name=n,
            dtype=str(sample[n].dtype),
            shape=[
                "batch",
                *(
                    run.model.dynamic_axes.get(n, {}).get(i + 1, int(d))
                    for i, d in enumerate(sample[n].shape[1:])
                ),
            ],
        )
        for n in run.model.input_names
    ]


def _run_memory(baseline: dict) -> RunMemory:
    """Peak RSS of this run so far (the report is built after every model was measured)."""
    size = baseline["size_bytes"]
    return RunMemory(
        peak_rss_mb=round(process_peak_mb(), 1),
        fp32_model_mb=None if size is None else round(size / 2**20, 1),
    )


def _data(run: RunRecord) -> dict[str, Any]:
    """Where the rows came from and how they were split; for text, the token limit (what
    ``presso.load`` truncates at) and the held-out texts' token lengths."""
    data = {
        "source": run.data.source,
        "rows": len(run.data),
        "has_labels": run.data.has_labels,
        "split": run.split_info,
    }
    if run.data.sample is not None:
        data["sample"] = run.data.sample.describe()
    lengths = token_lengths(run.evaluation, run.model.tokenizer, run.seq_len)
    if lengths is not None:
        data["max_tokens"] = int(run.evaluation.inputs[MASK].shape[1])
        data["held_out_tokens"] = lengths
    return data


def _ratios(base: dict, comp: dict) -> dict[str, float | None]:
    """Compressed against baseline; a text model's also at the padded length."""
    out = {
        "size": None if base["size_bytes"] is None else round(base["size_bytes"] / comp["size_bytes"], 3),
        "latency_speedup": round(base["latency_ms"]["p50"] / comp["latency_ms"]["p50"], 3),
        "throughput": round(comp["throughput_per_s"] / base["throughput_per_s"], 3),
    }
    bf, cf = base.get("fixed_length"), comp.get("fixed_length")
    if bf and cf:
        out["latency_speedup_fixed_length"] = round(bf["latency_ms"]["p50"] / cf["latency_ms"]["p50"], 3)
        out["throughput_fixed_length"] = round(cf["throughput_per_s"] / bf["throughput_per_s"], 3)
    return out


def build_report(run: RunRecord, recipe: Any, measured: Measured) -> Report:
    """The report of a run from what it measured (``recipe``: the recipe as run)."""
    import onnx
    import onnxruntime
    import torch

    figures, torch_latency, stage_reports = measured.figures, measured.torch_latency, measured.stages
    base, comp = figures["baseline"], figures["compressed"]
    label = (
        "ONNX Runtime fp32"
        if run.model.kind != "callable"
        else f"the teacher's own {run.model.name} (Python)"
    )
    primary = run.primary
    return Report(
        presso_version=__version__,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        task=run.task,
        recipe=recipe.model_dump(mode="json", exclude_none=True),
        model={"name": run.model.name, "source": run.model.source, "kind": run.model.kind},
        data=_data(run),
        inputs=_input_specs(run),
        budget=budget(primary, run.max_drop, base["metrics"][primary], comp["metrics"][primary], run),
        changes=changes(base["metrics"], comp["metrics"]),
        baseline=ModelFigures(runtime=label, **base),
        compressed=ModelFigures(runtime=_runtime_label(stage_reports), **comp),
        ratios=_ratios(base, comp),
        reference={
            "pytorch_fp32_latency_ms": torch_latency,
            "export_max_abs_diff": run.export_max_abs_diff,
            "exporter": run.model.exporter,  # torchscript or dynamo; None for an ONNX file
            "outputs_compared_with": "the original model's outputs, taken before export",
        },
        machine={
            **cpu_features().describe(),
            "threads": run.bench.thread_count,
            "ort_thread_spinning": False,
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        stages=stage_reports,
        notes=[
            *(f"budget resolution: {line}" for line in run.unresolved),
            *measured.notes,
            speed_note(base, comp, label),
            *filter(None, [size_note(base, comp), torch_note(torch_latency, comp)]),
        ],
        steps=measured.steps,
        layer_sizes=measured.layer_sizes,
        stored=None if measured.stored is None else Stored(**measured.stored),
        run_memory=_run_memory(base),
        command=command_line(),
    )
