"""``presso eval``: task metrics of an artifact on data (optionally its fidelity to another model)."""

from __future__ import annotations

import json

from presso.cli.common import add_common, add_data_memory_option, console, print_json

HELP = "measure an artifact's quality on data, optionally against a reference model (--vs)"


def register(sub) -> None:
    p = sub.add_parser("eval", help=HELP, description=HELP + ".")
    p.add_argument("artifact", help="artifact folder or .onnx file")
    p.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help=".npz (X, optional y), .csv/.parquet (with --target) or .txt",
    )
    p.add_argument("--target", metavar="COLUMN", help="label column of a .csv/.parquet file")
    p.add_argument("--group", metavar="COLUMN", help="query id column of a .csv/.parquet file (ranking)")
    p.add_argument(
        "--task",
        choices=["classification", "regression", "forecast", "anomaly", "embedding", "ranking"],
        help="defaults to the task in the artifact's report.json",
    )
    p.add_argument(
        "--vs",
        metavar="REFERENCE",
        help="artifact or .onnx whose outputs are the reference "
        "for fidelity metrics (agreement, cosine); default: the artifact itself",
    )
    p.add_argument("--seq-len", type=int, default=128, help="token length for text data (default 128)")
    add_data_memory_option(p)
    add_common(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from rich.table import Table

    from presso.data.resolve import load_data
    from presso.data.sample import DEFAULT_MEMORY_BUDGET
    from presso.errors import PressoError
    from presso.export.predictor import load
    from presso.measure.metrics import check_target, evaluate
    from presso.report.terminal import shown
    from presso.tasks import get_task, primary_metric

    model = load(args.artifact)
    task = args.task or model.task
    if task is None:
        raise PressoError("This model has no report.json naming its task: pass --task.")
    get_task(task)
    data = load_data(
        args.data,
        model.input_names,
        target=args.target,
        tokenizer=model.tokenizer,
        seq_len=args.seq_len,
        group=args.group,
        memory_budget=args.data_memory or DEFAULT_MEMORY_BUDGET,
    )
    if data.sample is not None:
        said = data.sample.said(args.data, len(data), doing="evaluating")
        console(args).print(f"[dim]· {shown(said)}[/dim]", soft_wrap=True)
    outputs = model.predict(data.inputs)
    reference = load(args.vs).predict(data.inputs) if args.vs else outputs
    if reference.shape != outputs.shape:
        raise PressoError(f"--vs model outputs shape {reference.shape}, the artifact {outputs.shape}.")
    target = None if data.target is None else check_target(task, outputs, data.target)
    metrics = evaluate(task, outputs, reference, target, data.inputs, data.groups)
    result = {
        "task": task,
        "rows": len(data),
        "data": str(args.data),
        **({"sample": data.sample.describe()} if data.sample is not None else {}),
        "primary_metric": primary_metric(
            task,
            target is not None,
            labels=None if target is None or task != "classification" else target.tolist(),
            n_classes=outputs.shape[1] if outputs.ndim == 2 else None,
        ),
        "metrics": metrics,
        "reference": args.vs or "the artifact itself (fidelity metrics are trivially 1)",
    }
    if args.json:
        print_json(json.dumps(result, indent=2))
    table = Table(title=f"presso eval · {task} · {len(data)} rows")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(shown(k + (" (primary)" if k == result["primary_metric"] else "")), f"{v:.4f}")
    console(args).print(table)
    return 0
