"""The ``distill`` stage: build a student, fit it to the teacher, export it.

The teacher is the run's original model, whatever it is (``ctx.teacher_fn`` runs it);
its outputs on the calibration rows are the pipeline's reference outputs. A derived
student that breaks the budget is retried wider (``backoff``), like pruning's milder retries.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from presso.errors import NothingToDo, PressoError, reason
from presso.model.loaded import count_parameters, first_tensor
from presso.techniques.base import Candidate, StageContext, StageResult
from presso.techniques.contract import technique
from presso.techniques.distill.config import LAYER_HINT_WEIGHT, DistillConfig
from presso.techniques.distill.data import NO_LABEL, DistillData, distill_data, teacher_cache_dir
from presso.techniques.distill.int8_aware import int8_aware
from presso.techniques.distill.objective import Trainee, distill_loss, target_rows
from presso.techniques.distill.search import DISTILL
from presso.techniques.distill.textstream import text_batches
from presso.techniques.recovery import example_inputs, with_backoff

STAGE = "distill"


def wider(width: float, steps: int) -> list[float]:
    """``width`` then up to ``steps`` wider ones, each halfway to the full width."""
    out = [width]
    for _ in range(steps):
        if out[-1] >= 0.95:
            break
        out.append(round((1 + out[-1]) / 2, 4))
    return out


def _factory_student(spec: str, weights: str | None) -> nn.Module:
    from presso.model.sources import _import_factory, load_weights

    fn = _import_factory(spec)
    try:
        module = fn()
    except Exception as exc:
        raise PressoError(f"Student factory '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise PressoError(
            f"Student factory '{spec}' returned a {type(module).__name__}; it must return an nn.Module."
        )
    if weights is not None:
        load_weights(module, Path(weights))
    return module


def _layers(cfg: DistillConfig, ctx: StageContext) -> str | tuple[int, ...]:
    if isinstance(cfg.layers, list):
        return tuple(cfg.layers)
    if cfg.layers is None:  # measured for transformers (greedy removal beats even spacing on MiniLM)
        return "auto" if ctx.transformer is not None else "even"
    return cfg.layers


def calibration_inputs(ctx: StageContext, rows: int = 128) -> tuple[torch.Tensor, ...]:
    """Calibration rows ``layers: auto`` measures on; text is cut to its longest attended token
    (padding to 128 would make the layer search several times slower and change nothing)."""
    head = ctx.calibration.head(rows).inputs
    arrays = [np.ascontiguousarray(head[n]) for n in ctx.input_names]
    mask = head.get("attention_mask")
    if mask is not None and mask.ndim == 2 and mask.any():
        length = int(np.flatnonzero(mask.any(axis=0)).max()) + 1
        arrays = [
            np.ascontiguousarray(a[:, :length]) if a.ndim == 2 and a.shape == mask.shape else a
            for a in arrays
        ]
    return tuple(torch.from_numpy(a) for a in arrays)


def build_student(
    cfg: DistillConfig, ctx: StageContext, width: float, rows: dict[str, np.ndarray], n_out: int
) -> tuple[nn.Module, list[str]]:
    """The student and lines saying what it is."""
    example = example_inputs(ctx)
    if cfg.student == "auto":
        if ctx.module is None:
            raise PressoError(
                "student: auto derives the student from the teacher's PyTorch architecture; this "
                "teacher is an ONNX file or a callable. Use student: mlp or a factory file.py:fn."
            )
        from presso.techniques.distill.students import StudentPlan, derive_student

        plan = StudentPlan(
            width=width,
            heads=cfg.heads,
            depth=cfg.depth,
            init=cfg.init,
            blocks=cfg.blocks,
            layers=_layers(cfg, ctx),
        )
        student, notes = derive_student(
            ctx.module,
            example,
            plan,
            transformer=ctx.transformer,
            seed=ctx.seed,
            calibration=calibration_inputs(ctx),
        )
    elif cfg.student == "mlp":
        name = ctx.input_names[0]
        x = rows[name]
        if len(ctx.input_names) != 1 or x.ndim != 2 or x.dtype.kind != "f":
            raise PressoError(
                "student: mlp takes one input of flat float rows (N, features); this model takes "
                f"{ctx.input_names} with shape {tuple(x.shape[1:])}. Give a student factory file.py:fn."
            )
        from presso.techniques.distill.students import mlp_student

        student = mlp_student(x.shape[1], n_out, tuple(cfg.hidden), seed=ctx.seed, inputs=x)
        notes = [f"student: MLP {x.shape[1]}-{'-'.join(map(str, cfg.hidden))}-{n_out} (inputs standardised)"]
    else:
        student = _factory_student(cfg.student, cfg.student_weights)
        notes = [f"student: {type(student).__name__} from {cfg.student}"]
    student.eval()
    try:
        with torch.no_grad():
            out = first_tensor(student(*example))
    except Exception as exc:
        raise PressoError(
            f"The student does not run on the model's inputs {ctx.input_names}: "
            f"{type(exc).__name__}: {reason(exc, 200)}"
        ) from exc
    if out[0].numel() != n_out:
        raise PressoError(
            f"The student gives {out[0].numel()} values per row, the teacher {n_out}; "
            "give a student whose output has the teacher's shape."
        )
    return student, notes


def _student_shape(cfg: DistillConfig, ctx: StageContext, student: nn.Module, width: float) -> dict | None:
    """The transformer shape of a derived student: ONNX Runtime's attention fusion needs the
    student's head count, not the teacher's (None: the teacher's shape holds)."""
    if cfg.student != "auto" or ctx.transformer is None or min(width, cfg.heads or width) >= 1:
        return None
    from presso.techniques.pruning.transformer import attention_shape

    return {**ctx.transformer, **attention_shape(student)}


def settle_encoder(student: nn.Module) -> str:
    """A derived encoder student trains without dropout (it should reproduce the teacher,
    not regularise) and keeps the teacher's token embeddings frozen: they are about half
    an encoder's weights and a third of a training step's time on all-MiniLM-L6-v2
    (benchmarks/encoder_students.py trains the same way)."""
    frozen = 0
    for name, p in student.named_parameters():
        if "word_embeddings" in name:
            p.requires_grad_(False)
            frozen += p.numel()
    for m in student.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return f"dropout off, token embeddings frozen ({frozen:,} parameters)" if frozen else "dropout off"


def _settings(cfg: DistillConfig, ctx: StageContext) -> DistillConfig:
    big = ctx.transformer is not None
    return cfg.model_copy(
        update={
            "epochs": cfg.epochs if cfg.epochs is not None else (3 if big else 60),
            # 2e-4 with a linear schedule: on all-MiniLM-L6-v2's 4-layer student it beat 1e-4
            # constant (benchmarks/encoder_students.py trains the same way)
            "lr": cfg.lr if cfg.lr is not None else (2e-4 if big else 1e-3),
            "schedule": cfg.schedule if cfg.schedule != "auto" else ("linear" if big else "constant"),
            "precision": cfg.precision if cfg.precision != "auto" else _precision(big),
        }
    )


def _precision(transformer: bool) -> str:
    """bf16 for a transformer student where the CPU computes in bfloat16 natively (1.7x the
    steps per second of all-MiniLM-L6-v2's 4-layer student, the same held-out cosine after
    the same steps); fp32 elsewhere: emulated bf16 is slower, and small students gain nothing."""
    from presso.runtime.cpu import cpu_features

    return "bf16" if transformer and cpu_features().bf16 else "fp32"


def _extra_rows(cfg: DistillConfig, ctx: StageContext):
    if cfg.train_data is None:
        return None
    if ctx.read_data is None:
        raise PressoError(
            "train_data needs the pipeline's data reader; run the distill stage through compress."
        )
    ds = ctx.read_data(cfg.train_data)
    return ds.inputs, None if ds.target is None else np.asarray(ds.target)


def rank_weight_for(cfg: DistillConfig, kind: str) -> float:
    """The ranking term's weight: 1 for embeddings (cosine) unless set; it compares similarity
    matrices of embeddings, so another loss refuses it."""
    if cfg.rank_weight is None:
        return 1.0 if kind == "cosine" else 0.0
    if cfg.rank_weight > 0 and kind != "cosine":
        raise PressoError(
            f"rank_weight keeps an embedding model's neighbourhoods (loss: cosine); this run's loss is "
            f"{kind}. Drop rank_weight or set loss: cosine."
        )
    return cfg.rank_weight


def _text_file(cfg: DistillConfig, ctx: StageContext) -> Path | None:
    """The text file a text model's student streams: ``train_data`` when it is a ``.txt``,
    else the file of training texts the data came with (the minilm example's corpus)."""
    if ctx.tokenizer is None:
        return None
    if cfg.train_data is not None:
        path = Path(cfg.train_data)
        return path if path.suffix.lower() == ".txt" else None
    return None if ctx.train_texts is None else ctx.train_texts()


def width_checkpoint(path: Path, width: float) -> Path:
    """The checkpoint of a wider retry (``backoff``) beside the run's own ``path``."""
    return path.with_name(f"{path.stem}-width{width:g}{path.suffix}")


def _checkpoint(cfg: DistillConfig, width: float, first: bool) -> Path | None:
    if cfg.checkpoint is None:
        return None
    path = Path(cfg.checkpoint)
    return path if first else width_checkpoint(path, width)


def hint_pairs(cfg: DistillConfig, ctx: StageContext, student: nn.Module) -> tuple[list, float]:
    """The (student layer, teacher layer) pairs the student is also fitted on, and their weight:
    those listed, or with ``hints: auto`` each layer of a shallower transformer student
    against the teacher layer it was copied from (none without a PyTorch teacher)."""
    if isinstance(cfg.hints, list):
        return cfg.hints, 1.0 if cfg.hint_weight is None else cfg.hint_weight
    if cfg.hints == "none" or cfg.hint_weight == 0 or ctx.module is None:
        return [], 0.0  # weight 0: no need to run the teacher beside the student
    from presso.techniques.distill.students import copied_layers

    pairs = copied_layers(student)
    weight = LAYER_HINT_WEIGHT if cfg.hint_weight is None else cfg.hint_weight
    return pairs, weight if pairs else 0.0


def warm_start(trainee: Trainee, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load an earlier run's weights (``start_from``) into ``trainee``: every student weight
    must be there with this student's shape; hint projections are taken where they match."""
    own = trainee.state_dict()
    student = {k for k in own if k.startswith("student.")}
    missing = sorted(student - set(state))
    wrong = sorted(k for k in student & set(state) if state[k].shape != own[k].shape)
    extra = sorted(k for k in state if k.startswith("student.") and k not in student)
    if missing or wrong or extra:
        first = (missing or wrong or extra)[0].removeprefix("student.")
        raise PressoError(
            f"The student in {path} has another shape than this run's ({len(missing)} weights missing, "
            f"{len(wrong)} of another shape, {len(extra)} unknown; first: {first}). Give the "
            "same depth, width, heads and layers as the earlier run."
        )
    trainee.load_state_dict(
        {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}, strict=False
    )


def train_student(
    student: nn.Module,
    data: DistillData,
    cfg: DistillConfig,
    ctx: StageContext,
    checkpoint: Path | None,
    start: dict[str, torch.Tensor] | None = None,
):
    """Fit ``student`` (in place) to the teacher, from the weights ``start`` (``start_from``'s)
    when given; returns the :class:`presso.train.FitReport`."""
    from presso.train import FitSettings, fit
    from presso.train.batches import BatchSource
    from presso.train.losses import looks_like_probabilities, loss_kind, teacher_logits_from

    kind = loss_kind(ctx.task) if cfg.loss == "auto" else cfg.loss
    teacher, val_teacher = data.teacher, data.val_teacher
    if kind == "kl":  # a probability teacher (predict_proba) gives its log-probabilities
        teacher = teacher_logits_from(teacher).numpy()
        val_teacher = None if val_teacher is None else teacher_logits_from(val_teacher).numpy()
    n_out = int(np.prod(teacher.shape[1:]))
    has_labels = kind == "kl" and data.labels is not None
    train: tuple | BatchSource = (data.train, target_rows(teacher, data.labels if has_labels else None))
    if data.stream is not None:
        # Decided once, on the calibration rows: a batch alone could look otherwise.
        probabilities = kind == "kl" and looks_like_probabilities(data.teacher)

        def targets(outputs: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
            if probabilities:
                outputs = teacher_logits_from(outputs).numpy()
            return target_rows(outputs, labels if has_labels else None)

        train = text_batches(
            data.stream,
            data.train,
            data.teacher,
            data.labels,
            ctx.tokenizer,
            ctx.seq_len,
            cfg.batch_size,
            targets,
            NO_LABEL,
        )
    val = None
    if data.val is not None:
        assert val_teacher is not None  # distill_data gives validation rows with their outputs
        val = (data.val, target_rows(val_teacher, data.val_labels if has_labels else None))
    pairs, weight = hint_pairs(cfg, ctx, student)
    trainee = Trainee(
        student, ctx.module if pairs else None, pairs, example_inputs(ctx), normalize=cfg.hints == "auto"
    )
    if start is not None:
        assert cfg.start_from is not None
        warm_start(trainee, start, Path(cfg.start_from))
    rank_weight = rank_weight_for(cfg, kind)
    loss = distill_loss(
        kind,
        n_out,
        alpha=cfg.alpha,
        temperature=cfg.temperature,
        has_labels=has_labels,
        trainee=trainee,
        hint_weight=weight,
        rank_weight=rank_weight,
        rank_loss=cfg.rank_loss,
        rank_temperature=cfg.rank_temperature,
    )
    assert cfg.epochs is not None and cfg.lr is not None  # resolved by _settings
    settings = FitSettings(
        epochs=cfg.epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
        patience=cfg.patience,
        max_seconds=None if cfg.max_minutes is None else cfg.max_minutes * 60,
        schedule=cfg.schedule,
        warmup=0.05 if cfg.schedule == "linear" else 0.0,
        precision=cfg.precision,
    )
    with ctx.progress.task(f"{STAGE}: training the student", total=cfg.epochs) as advance:

        def on_epoch(row: dict) -> None:
            score = row.get("val_score")
            line = f"{STAGE}: epoch {row['epoch']}/{cfg.epochs}, loss {row['train_loss']:.4g}" + (
                "" if score is None else f", validation loss {-score:.4g}"
            )
            advance(1, description=line)
            ctx.log(line)

        def on_rows(epoch: int, rows: int, total: int) -> None:
            advance(0, description=f"{STAGE}: epoch {epoch}/{cfg.epochs}, {rows:,} of {total:,} rows")

        with int8_aware(student) if cfg.int8_aware else contextlib.nullcontext():
            report = fit(
                trainee,
                train,
                val,
                loss,
                None,
                settings,
                input_names=ctx.input_names,
                on_epoch=on_epoch,
                checkpoint=checkpoint,
                on_rows=on_rows,
            )
    return report, kind


@technique(
    "distill",
    config=DistillConfig,
    domain="torch",
    summary=(
        "knowledge distillation: a smaller student (derived from the teacher: narrower / fewer "
        "layers; a plain MLP; or your own) fitted to the teacher's outputs (soft targets with "
        "temperature, MSE or cosine, optional hints); the teacher may be PyTorch, ONNX or any "
        "Python callable"
    ),
    search=DISTILL,
)
def distill_stage(onnx_path: Path | None, cfg: DistillConfig, ctx: StageContext) -> StageResult:
    from presso.train import distributed

    if ctx.export is None or ctx.teacher_fn is None:
        raise PressoError(
            "The distill stage trains a PyTorch student; put it first in the recipe, before ONNX stages."
        )
    if cfg.applies_to == "encoders" and ctx.transformer is None:
        raise NothingToDo(
            f"{STAGE}: applies_to: encoders, and this model is not a transformer encoder (nothing to distil)"
        )
    cfg = _settings(cfg, ctx)
    start, started = None, ""
    if cfg.start_from is not None:  # read before minutes of labelling: a wrong file fails now
        from presso.train.checkpoint import trained_weights

        start, epochs = trained_weights(Path(cfg.start_from))
        started = f", started from {Path(cfg.start_from).name} (after its {epochs} epochs)"
    text = _text_file(cfg, ctx)
    data = distill_data(
        ctx,
        validation_fraction=cfg.validation_fraction,
        augment=cfg.augment,
        extra=None if text is not None else _extra_rows(cfg, ctx),
        cache=teacher_cache_dir(),
        text=text,
    )
    n_out = int(np.prod(data.teacher.shape[1:]))
    teacher_params = None if ctx.module is None else count_parameters(ctx.module)
    # A wider retry could not start from start_from's weights: they fit this width only.
    backoff = cfg.backoff if start is None else 0
    widths = wider(cfg.student_width, backoff) if cfg.student == "auto" else [1.0]

    def attempt(width: float) -> Candidate:
        student, notes = build_student(cfg, ctx, width, data.train, n_out)
        params = count_parameters(student)
        if ctx.transformer is not None and cfg.student == "auto":
            notes.append(f"{STAGE}: {settle_encoder(student)}")
        report, kind = train_student(
            student, data, cfg, ctx, _checkpoint(cfg, width, width == widths[0]), start
        )
        if distributed.world_size() > 1 and not distributed.is_main():
            raise distributed.WorkerDone()  # rank 0 exports, verifies and writes; the others are done
        name = f"student width {width:g}" if cfg.student == "auto" else "student"
        assert ctx.export is not None  # distill_stage refused a context without one
        path = ctx.export(student.eval(), ctx.workdir / f"student-{width:g}.onnx")
        score = ctx.score(path)
        size = (
            f"{teacher_params:,} -> {params:,} parameters ({params / teacher_params:.1%} of the teacher)"
            if teacher_params
            else f"{params:,} parameters"
        )
        loss_words = {
            "kl": f"soft targets T={cfg.temperature:g}, alpha {cfg.alpha:g}"
            + (" with labels" if data.labels is not None and cfg.alpha < 1 else ""),
            "mse": "mean squared error to the teacher",
            "cosine": "cosine to the teacher"
            + (
                f" + {rank_weight_for(cfg, kind):g} x batch similarity {cfg.rank_loss}"
                + (f" T={cfg.rank_temperature:g}" if cfg.rank_loss == "kl" else "")
                if rank_weight_for(cfg, kind) > 0
                else ""
            ),
        }[kind]
        pairs, weight = hint_pairs(cfg, ctx, student)
        hints = ""
        if pairs and cfg.hints == "auto":
            hints = f", + {weight:g} x each layer's output against the teacher layer it was copied from"
        elif pairs:
            hints = f", hints on {len(pairs)} layer pair(s)"
        arithmetic = ", bfloat16 forward passes" if cfg.precision == "bf16" else ""
        if cfg.int8_aware:
            arithmetic += ", its Linear layers computing as ONNX Runtime's dynamic int8"
        note = (
            f"{size}; distilled ({loss_words}{hints}{arithmetic}) for {report.epochs_run} epochs on {data.describe()} "
            f"(best epoch {report.best_epoch}, stopped: {report.stopped}"
            + (f", resumed after epoch {report.resumed_from}" if getattr(report, "resumed_from", 0) else "")
            + f"{started})"
        )
        # The checkpoint belongs to this run only; the pinned recipe starts afresh.
        # start_from stays in the pinned recipe: without it the recipe trains another student.
        options = {"width": width, "checkpoint": None} if cfg.student == "auto" else {"checkpoint": None}
        return Candidate(
            name=name,
            path=path,
            score=score,
            note=note,
            options=options,
            module=student,
            notes=[*notes, f"{STAGE}: {note}"],
            transformer=_student_shape(cfg, ctx, student, width),
        )

    return with_backoff(widths, attempt, ctx, STAGE, what="with a wider student, width")
