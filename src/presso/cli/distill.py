"""``presso distill``: train a small student from a teacher and write it like a compress result."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from presso.cli.common import (
    add_bench_options,
    add_common,
    add_data_options,
    add_run_options,
    console,
    make_progress,
    model_and_data,
    print_json,
    run_settings,
)

HELP = "distil a smaller student from a teacher (PyTorch, ONNX or a Python callable) and write it"


_EPILOG = """examples:
  presso distill --example digits --width 0.45
  presso distill --example minilm --depth 3 --width 1 --train-data more-sentences.txt
  presso distill model.py:build --weights model.pt --data rows.npz --student small.py:build
  presso distill teacher.onnx --data rows.csv --target label --student mlp --int8
  presso distill gbm.py:predict_proba --data rows.npz --student mlp      (a scikit-learn teacher)
  torchrun --nproc_per_node 2 -m presso distill --example digits         (data-parallel, gloo on CPU)

--data holds rows the teacher was not trained on: they are split (seeded) into rows the
student trains on (plus --train-data and mixup rows, all labelled by the teacher) and
held-out rows every reported figure uses. Like compress, presso writes nothing if the
student breaks --max-drop (exit code 1). Training saves a checkpoint every epoch
(OUT.checkpoint.pt); after an interruption, run the same command with --resume. A student
that breaks --max-drop keeps its checkpoint: --resume with a higher --max-drop uses it
without training again. A written student's training state stays in OUT.student.pt:
--start-from OUT.student.pt trains it further (more epochs, other text)."""


def register(sub) -> None:
    p = sub.add_parser(
        "distill",
        help=HELP,
        description=HELP + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    p.add_argument(
        "model",
        nargs="?",
        metavar="TEACHER",
        help="an .onnx file, a Hugging Face model folder, or a factory 'file.py:fn' returning an "
        "nn.Module or any callable (e.g. a fitted model's predict_proba)",
    )
    p.add_argument(
        "--example",
        metavar="NAME",
        help="a built-in example as the teacher: digits, tabular, forecast, anomaly, minilm",
    )
    add_data_options(p)
    _add_student_options(p.add_argument_group("student"))
    _add_training_options(p.add_argument_group("training"))
    p.add_argument("--int8", action="store_true", help="then quantize the student to int8 (accuracy-aware)")
    p.add_argument(
        "--int8-aware",
        action="store_true",
        help="train the student with its Linear layers computing as ONNX Runtime's dynamic int8 "
        "(rounded inputs and weights, straight-through gradients), so that int8 costs it less; "
        "implies --int8. E.g. a few epochs with --start-from a finished student",
    )
    p.add_argument("--out", metavar="DIR", help="artifact folder (default: ./presso-NAME-student)")
    add_run_options(p)
    add_bench_options(p)
    add_common(p)
    p.set_defaults(run=run)


def _add_student_options(group) -> None:
    """What the student is: derived from the teacher (auto), a plain MLP, or your own factory."""
    group.add_argument(
        "--student",
        default="auto",
        help="auto (derived from the teacher; default), mlp (plain MLP for "
        "flat rows), or a factory 'file.py:fn' returning your nn.Module",
    )
    group.add_argument("--student-weights", metavar="FILE", help="state dict for a factory student")
    group.add_argument(
        "--width",
        type=float,
        default=None,
        help="auto: fraction of channels / neurons / heads kept (default 0.45)",
    )
    group.add_argument(
        "--heads",
        type=float,
        default=None,
        help="auto: fraction of a transformer's attention heads kept (default: --width; 1 with "
        "--width < 1 narrows the feed-forward layers only)",
    )
    group.add_argument(
        "--depth",
        type=_depth,
        default=None,
        help="auto: blocks / transformer layers kept, or a fraction of them, e.g. 0.67 (default all)",
    )
    group.add_argument(
        "--layers",
        type=_layers,
        default=None,
        metavar="auto|even|I,J,..",
        help="auto: which layers --depth keeps: auto (measured: greedy removal on the calibration "
        "rows; the default for transformers), even (evenly spaced) or indices, e.g. 0,4,5",
    )
    group.add_argument(
        "--init",
        choices=["teacher", "random"],
        default="teacher",
        help="auto: start from the teacher's weights (default) or from scratch",
    )
    group.add_argument(
        "--hidden", type=int, nargs="+", default=None, metavar="N", help="mlp: hidden sizes (default 64 64)"
    )


def _depth(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value >= 1 and value.is_integer():
        return int(value)
    if 0 < value < 1:
        return value
    raise argparse.ArgumentTypeError(
        f"give a number of layers (an int >= 1) or a fraction of them in (0, 1), e.g. 4 or 0.67; got {text!r}"
    )


def _layers(text: str) -> str | list[int]:
    if text in ("auto", "even"):
        return text
    try:
        return [int(i) for i in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"give auto, even or layer indices like 0,4,5; got {text!r}"
        ) from None


def _add_training_options(group) -> None:
    """How the student learns from the teacher, on which rows, and for how long."""
    group.add_argument(
        "--loss",
        choices=["auto", "kl", "mse", "cosine"],
        default="auto",
        help="kl (soft targets; classification), mse, cosine (embeddings); auto picks by task",
    )
    group.add_argument(
        "--alpha",
        type=float,
        default=0.9,
        help="weight of the teacher's soft targets against the labels (default 0.9; 1 = teacher only)",
    )
    group.add_argument("--temperature", type=float, default=4.0, help="softmax temperature T (default 4)")
    group.add_argument(
        "--rank-weight",
        type=float,
        default=None,
        help="cosine: weight of the in-batch similarity-matrix (ranking) term (default 1 for embeddings)",
    )
    group.add_argument(
        "--hint-weight",
        type=float,
        default=None,
        help="a student with fewer transformer layers also learns each kept layer's output from the "
        "teacher layer it was copied from, at this weight (default 3; 0 = off)",
    )
    group.add_argument("--epochs", type=int, default=None, help="default 60 (transformers 3)")
    group.add_argument(
        "--lr",
        type=float,
        default=None,
        help="AdamW step size (default 1e-3; transformers 2e-4, warmed up over 5%% of the steps "
        "then decayed linearly to zero)",
    )
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="training forward passes: auto = bf16 for a transformer student on a CPU with native "
        "bfloat16 (AVX-512 BF16 / AMX: ~1.7x faster), else fp32",
    )
    group.add_argument(
        "--augment",
        type=int,
        default=8,
        help="mixup copies of the training rows labelled by the teacher (float inputs; default 8, 0 = none)",
    )
    group.add_argument(
        "--train-data",
        metavar="FILE",
        help="extra rows to distil on (labels not needed); rows that repeat held-out rows are dropped. "
        "A .txt for a text model is streamed (any size; teacher outputs cached); --example minilm "
        "brings its own corpus",
    )
    group.add_argument("--max-minutes", type=float, default=None, help="stop training after this long")
    group.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its checkpoint"
    )
    group.add_argument(
        "--start-from",
        metavar="CHECKPOINT",
        help="start the student from an earlier run's weights (its OUT.student.pt, or an "
        "OUT.checkpoint.pt it left; same --depth/--width/--layers) with a fresh schedule: train a "
        "finished student longer or on other text",
    )


def _options(args, checkpoint: Path) -> dict:
    options = {
        "student": args.student,
        "init": args.init,
        "loss": args.loss,
        "alpha": args.alpha,
        "temperature": args.temperature,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "augment": args.augment,
        "checkpoint": str(checkpoint),
    }
    if args.int8_aware:
        options["int8_aware"] = True
    for key in (
        "width",
        "heads",
        "depth",
        "layers",
        "rank_weight",
        "hint_weight",
        "epochs",
        "lr",
        "hidden",
        "max_minutes",
        "student_weights",
        "train_data",
        "start_from",
    ):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.student != "auto":
        options.pop("init")
    return options


def _checkpoints(checkpoint: Path) -> list[Path]:
    return [checkpoint, *checkpoint.parent.glob(f"{checkpoint.stem}-width*{checkpoint.suffix}")]


def run(args) -> int:
    from presso.files import output_lock
    from presso.progress import SILENT
    from presso.train import distributed

    distributed.init_from_env()
    main = distributed.is_main()
    progress = make_progress(args) if main else SILENT  # rank 0 alone reports
    model, data, task, name = model_and_data(args, progress, "TEACHER")
    out = Path(args.out or f"presso-{name}-student")
    with output_lock(out) if main else contextlib.nullcontext():  # a second run fails now
        return _run(args, model, data, task, out, progress, main)


def _run(args, model, data, task: str, out: Path, progress, main: bool) -> int:
    import presso
    from presso.errors import BudgetError, PressoError
    from presso.recipe.result import check_output_dir
    from presso.recipe.schema import Recipe, Stage
    from presso.report.terminal import print_summary
    from presso.train import distributed

    if main:
        check_output_dir(out)
    checkpoint = out.with_name(out.name + ".checkpoint.pt")
    if args.start_from and Path(args.start_from).resolve() in {p.resolve() for p in _checkpoints(checkpoint)}:
        raise PressoError(
            f"--start-from {args.start_from} is this run's own checkpoint, which it overwrites every "
            "epoch: copy it to another file first, or give another --out."
        )
    if main and not args.resume and any(p.exists() for p in _checkpoints(checkpoint)):
        raise PressoError(
            f"An interrupted run left a checkpoint at {checkpoint}: add --resume to continue it, or "
            "delete the file to start again."
        )
    stages = [Stage(technique="distill", options=_options(args, checkpoint))]
    if args.int8 or args.int8_aware:
        stages.append(Stage(technique="int8"))
    recipe = Recipe(name="student", description="knowledge distillation (presso distill)", stages=stages)
    try:
        result = presso.compress(
            model,
            recipe,
            data=data,
            settings=run_settings(args, task, args.weights),
            progress=progress,
        )
    except distributed.WorkerDone:
        return 0  # another rank writes the result
    except BudgetError as exc:
        kept = [str(path) for path in _checkpoints(checkpoint) if path.exists()]
        if not (main and kept):
            raise
        # Hours of training must not be lost to a budget missed by a hair: the checkpoint
        # holds the trained student, and --resume goes straight to its verification.
        raise BudgetError(
            f"{exc} The trained student is kept in {', '.join(kept)}: the same command with "
            "--resume and a higher --max-drop uses it without training again."
        ) from exc
    finally:
        distributed.shutdown()
    result.save(out)
    student = _keep_student(checkpoint, out, result.recipe.stages[0].options.get("width"))
    if args.json:
        print_json(result.report_json())
    print_summary(result.report, console(args), out_dir=str(out))
    if student is not None:
        progress.log(
            f"the student's float32 training state is kept in {student}: --start-from {student} trains it "
            "further (delete it when done)"
        )
    return 0


def _keep_student(checkpoint: Path, out: Path, width: float | None) -> Path | None:
    """Move the written student's checkpoint to ``OUT.student.pt`` (the others go): the artifact
    holds the exported, perhaps int8, model, and hours of training must stay resumable with
    --start-from. Not ``OUT.checkpoint.pt``, which would read as an interrupted run."""
    from presso.techniques.distill.stage import width_checkpoint

    chosen = width_checkpoint(checkpoint, width) if width else None
    source = chosen if chosen is not None and chosen.exists() else checkpoint
    kept = None
    if source.exists():
        kept = out.with_name(out.name + ".student.pt")
        source.replace(kept)  # the same folder: an atomic rename
    for path in _checkpoints(checkpoint):
        path.unlink(missing_ok=True)
    return kept
