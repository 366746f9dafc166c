"""all-MiniLM-L6-v2 students: which layers to keep, how wide, and the objective, measured on
the example's 560 held-out sentences, fp32 and after presso's int8, with the speed ratio.

Each candidate is derived from the teacher (``derive_student``: ``layers`` auto = greedy
removal measured on the calibration sentences, or even spacing; ``width`` < 1 removes FFN
neurons and heads) and trained by this script's own loop on *real-length* batches: the
training sentences are sorted by token length within chunks, each batch is padded to its
longest sentence only (about 25 tokens instead of 128: several times less work per step).
The loss is ``cosine_loss`` + ``rank`` x ``similarity_loss`` (presso.train.losses) to the
teacher's embeddings, taken once and cached under ``--cache``.

Training text: stdlib docstring sentences (none of the example's 800) plus docstring
sentences of installed packages read with ``ast`` (same prose filter), deduplicated.

Speed: every ONNX model (the full model and each student, fp32 and int8) is timed in
interleaved rounds at batch 1 on a typical ~20-token sentence and at batch 32 real length
(padded to the batch's longest), ``--threads`` threads.

``--hints W`` adds W x each student layer's relative MSE to the teacher layer it was copied
from (``--hint-map next-input``: to the teacher layer before the next kept one), the teacher
run beside the student; ``--bf16`` runs the forward passes under bfloat16 autocast.

    python benchmarks/encoder_students.py --candidates 3:auto 3:even 4:auto 4:auto:0.5 5:auto:0.5:1 \\
        [--sentences 20000] [--epochs 2] [--lr 1e-4] [--rank 1.0] [--minutes 12] [--hints 3] [--bf16]
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _minilm import FP32, setup

import presso
from presso.examples.minilm import SENTENCES
from presso.examples.texts import _CODE_LIKE, _SENTENCE_END, all_stdlib_modules, stdlib_sentences
from presso.export.onnx_export import export_onnx
from presso.measure.bench import BenchSettings, bench_onnx
from presso.measure.metrics import evaluate
from presso.measure.size import parameter_count
from presso.runtime.session import make_session, run_session
from presso.techniques.distill.students import StudentPlan, derive_student
from presso.techniques.pruning.transformer import attention_shape
from presso.train.losses import cosine_loss, similarity_loss

PACKAGES = (
    "numpy",
    "scipy",
    "sklearn",
    "pandas",
    "torch",
    "transformers",
    "networkx",
    "sympy",
    "jinja2",
    "click",
    "onnx",
    "huggingface_hub",
    "pydantic",
    "mypy",
    "joblib",
    "httpx2",
    "alembic",
    "mako",
    "markdown_it",
    "setuptools",
    "pip",
    "_pytest",
    "rich",
    "yaml",
    "optuna",
    "sqlalchemy",
    "tokenizers",
    "fsspec",
    "formulaic",
    "narwhals",
)


def prose(doc: str, seen: set[str], out: list[str]) -> None:
    """The sentences of ``doc`` that stdlib_sentences' filter would keep."""
    for para in doc.split("\n\n"):
        text = " ".join(para.split())
        for sent in _SENTENCE_END.split(text):
            words = sent.split()
            if (
                6 <= len(words) <= 40
                and sent[0].isupper()
                and sent.endswith(".")
                and not _CODE_LIKE.search(sent)
                and sent.lower() not in seen
            ):
                seen.add(sent.lower())
                out.append(sent)


def package_sentences(seen: set[str]) -> list[str]:
    """Docstring sentences of the installed packages in PACKAGES, read with ast (not imported)."""
    site = Path(np.__file__).parents[1]
    out: list[str] = []
    for name in PACKAGES:
        root = site / name
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.py")):
            if "/tests/" in str(path) or "/test/" in str(path):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        prose(doc, seen, out)
    return out


def training_texts(limit: int, held_out: list[str], cache: Path) -> list[str]:
    """Up to ``limit`` sentences, none of the example's; the pool is cached (reading every
    package's sources takes minutes)."""
    path = cache / f"sentences-py{sys.version_info.major}{sys.version_info.minor}.json"
    if path.exists():
        pool = json.loads(path.read_text())
    else:
        pool = sentence_pool(held_out)
        cache.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(pool))
    banned = {s.lower() for s in held_out}
    return [s for s in pool if s.lower() not in banned][:limit]


def sentence_pool(held_out: list[str]) -> list[str]:
    example = {s.lower() for s in stdlib_sentences(SENTENCES)}
    seen = set(example) | {s.lower() for s in held_out}
    pool = [
        s for s in stdlib_sentences(100_000, seed=1, modules=all_stdlib_modules()) if s.lower() not in seen
    ]
    seen |= {s.lower() for s in pool}
    extra = package_sentences(seen)
    random.Random(1).shuffle(extra)
    print(f"training text: {len(pool)} stdlib + {len(extra)} package docstring sentences available")
    return pool + extra


# ---------------------------------------------------------------- batches of real length


def tokenize(tokenizer, texts: list[str]) -> list[dict[str, list[int]]]:
    enc = tokenizer(texts, truncation=True, max_length=128)
    return [{k: enc[k][i] for k in enc} for i in range(len(texts))]


def pad(rows: list[dict[str, list[int]]], names: list[str]) -> tuple[torch.Tensor, ...]:
    n = max(len(r["input_ids"]) for r in rows)
    out = []
    for name in names:
        a = np.zeros((len(rows), n), np.int64)
        for i, r in enumerate(rows):
            a[i, : len(r[name])] = r[name]
        out.append(torch.from_numpy(a))
    return tuple(out)


def length_batches(lengths: np.ndarray, size: int, seed: int, chunk: int = 50) -> list[np.ndarray]:
    """Shuffled rows, sorted by length within chunks of ``chunk`` batches, batches shuffled."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    batches = []
    for start in range(0, len(order), size * chunk):
        part = order[start : start + size * chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + size] for i in range(0, len(part), size)]
    rng.shuffle(batches)
    return batches


def embed(module, rows, names, batch: int = 64) -> np.ndarray:
    lengths = np.array([len(r["input_ids"]) for r in rows])
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(rows), 384), np.float32)
    with torch.no_grad():
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            out[idx] = module(*pad([rows[j] for j in idx], names)).numpy()
    return out


def teacher_embeddings(module, rows, names, texts: list[str], cache: Path) -> np.ndarray:
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"minilm-teacher-{len(texts)}-{key}.npy"
    if path.exists():
        return np.load(path)
    t0 = time.time()
    out = embed(module, rows, names)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    print(f"teacher embeddings of {len(texts)} sentences: {time.time() - t0:.0f} s")
    return out


# ---------------------------------------------------------------- training


def kept_layers(student, teacher) -> list[int]:
    """The teacher layer each student layer was copied from (equal query weights at derivation)."""
    t_layers, s_layers = teacher.encoder.encoder.layer, student.encoder.encoder.layer
    out = []
    for s in s_layers:
        q = s.attention.self.query.weight
        out.append(
            next(
                i
                for i, t in enumerate(t_layers)
                if t.attention.self.query.weight.shape == q.shape
                and torch.equal(t.attention.self.query.weight, q)
            )
        )
    return out


class LayerHints:
    """Each student layer's output against the output of the teacher layer it was copied
    from: MSE over real tokens, divided by the teacher's mean square (scale-free)."""

    def __init__(self, student, teacher, mapping: str = "copied"):
        self.teacher = teacher
        kept = kept_layers(student, teacher)
        if mapping == "next-input":  # the output the next kept layer took as input in the teacher
            count = len(teacher.encoder.encoder.layer)
            kept = [k - 1 for k in kept[1:]] + [count - 1]
        self.pairs = list(enumerate(kept))
        self.s_out: dict[int, torch.Tensor] = {}
        self.t_out: dict[int, torch.Tensor] = {}
        for j, i in self.pairs:
            student.encoder.encoder.layer[j].register_forward_hook(self._keep(self.s_out, j))
            teacher.encoder.encoder.layer[i].register_forward_hook(self._keep(self.t_out, i))

    @staticmethod
    def _keep(store, key):
        def hook(_module, _inputs, output):
            store[key] = output[0] if isinstance(output, tuple) else output

        return hook

    def loss(self, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            self.teacher(*xs)
        mask = xs[1].unsqueeze(-1).float()
        total = 0.0
        for j, i in self.pairs:
            t = self.t_out[i]
            scale = ((t**2) * mask).sum() / mask.sum() / t.shape[-1]
            total = total + (((self.s_out[j] - t) ** 2) * mask).sum() / mask.sum() / t.shape[-1] / scale
        return total / len(self.pairs)


def train(student, rows, targets, names, args, rank: float, teacher=None) -> dict:
    """AdamW, linear warm-up (5%) and decay, dropout off (the student should reproduce the
    teacher exactly, not regularise); stops at --minutes. ``--hints W`` adds W x the
    layer-by-layer hidden-state loss (:class:`LayerHints`), running the teacher each step."""
    hints = LayerHints(student, teacher, args.hint_map) if args.hints > 0 else None
    lengths = np.array([len(r["input_ids"]) for r in rows])
    steps_per_epoch = -(-len(rows) // args.batch_size)
    total = args.epochs * steps_per_epoch
    if (
        not args.train_embeddings
    ):  # the teacher's token embeddings: half the weights, a third of a step's time
        for name, p in student.named_parameters():
            if "word_embeddings" in name:
                p.requires_grad_(False)
    trained = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.01)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    student.eval()
    t_all = torch.from_numpy(targets)
    t0, step, losses = time.time(), 0, []
    for epoch in range(args.epochs):
        for idx in length_batches(lengths, args.batch_size, seed=epoch):
            xs = pad([rows[j] for j in idx], names)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                out = student(*xs)
                hint = args.hints * hints.loss(xs) if hints is not None else 0.0
            out = out.float()
            t = t_all[idx]
            loss = cosine_loss(out, t)
            if rank > 0:
                loss = loss + rank * similarity_loss(out, t, args.rank_temperature, args.rank_kind)
            loss = loss + hint
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0:
                print(
                    f"    step {step}/{total}: loss {np.mean(losses[-100:]):.4f}, {time.time() - t0:.0f} s",
                    flush=True,
                )
            if time.time() - t0 > args.minutes * 60:
                return {"steps": step, "epochs": step / steps_per_epoch, "minutes": (time.time() - t0) / 60}
    return {"steps": step, "epochs": step / steps_per_epoch, "minutes": (time.time() - t0) / 60}


# ---------------------------------------------------------------- measuring


def held_out_fidelity(path: Path, ev, reference, threads: int | None) -> dict:
    out = run_session(make_session(path, threads=threads), ev.inputs, batch_size=1)
    return evaluate("embedding", out, reference)


def timing_inputs(tokenizer, names, texts: list[str]):
    """A typical ~20-token sentence (batch 1) and 32 sentences padded to their longest."""
    rows = tokenize(tokenizer, texts)
    lengths = np.array([len(r["input_ids"]) for r in rows])
    one = rows[int(np.argmin(np.abs(lengths - 20)))]
    batch = [rows[i] for i in range(32)]
    as_np = lambda rs: {n: t.numpy() for n, t in zip(names, pad(rs, names), strict=True)}  # noqa: E731
    return as_np([one]), as_np(batch), len(one["input_ids"]), int(lengths[:32].max())


def parse_candidate(spec: str) -> StudentPlan:
    """``depth:layers[:width[:heads]]``, e.g. ``3:auto``, ``4:even``, ``4:auto:0.5`` (heads and
    FFN neurons), ``6:auto:0.5:1`` (FFN neurons only)."""
    parts = spec.split(":")
    width = float(parts[2]) if len(parts) > 2 else 1.0
    heads = float(parts[3]) if len(parts) > 3 else None
    return StudentPlan(depth=int(parts[0]), layers=parts[1], width=width, heads=heads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", nargs="+", default=["3:auto", "3:even", "4:auto", "4:auto:0.5"])
    p.add_argument("--sentences", type=int, default=20_000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rank", type=float, default=1.0, help="weight of the similarity-matrix term")
    p.add_argument("--rank-kind", choices=["kl", "mse"], default="kl")
    p.add_argument("--rank-temperature", type=float, default=0.05)
    p.add_argument("--minutes", type=float, default=12.0, help="training budget per candidate")
    p.add_argument("--hints", type=float, default=0.0, help="weight of the layer-by-layer hidden-state loss")
    p.add_argument("--bf16", action="store_true", help="forward passes under bfloat16 autocast")
    p.add_argument("--hint-map", choices=["copied", "next-input"], default="copied")
    p.add_argument("--train-embeddings", action="store_true", help="train the token embeddings too")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--speed-only", action="store_true", help="untrained students: the speed columns only")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "presso-bench")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ex, ev, reference, fp32 = setup()
    model = ex.model
    names = model.input_names
    texts = stdlib_sentences(SENTENCES)
    from presso.data.dataset import split

    parts = split(ex.data, 0.3, 0)
    cal_texts = [texts[i] for i in parts.calibration_index]
    ev_texts = [texts[i] for i in parts.evaluation_index]
    rows, targets = [], np.zeros((0, 384), np.float32)
    if not args.speed_only:  # speed depends on the architecture only: no training needed to time it
        train_texts = cal_texts + training_texts(args.sentences - len(cal_texts), ev_texts, args.cache)
        rows = tokenize(model.tokenizer, train_texts)
        lengths = [len(r["input_ids"]) for r in rows]
        print(
            f"{len(rows)} training sentences (the example's {len(cal_texts)} calibration ones first), "
            f"tokens: median {np.median(lengths):.0f}, mean {np.mean(lengths):.1f}, max {max(lengths)}"
        )
        targets = teacher_embeddings(model.module, rows, names, train_texts, args.cache)
    calibration = pad(tokenize(model.tokenizer, cal_texts[:128]), names)
    quick = BenchSettings(rounds=1, round_seconds=0.1, throughput_batch=2, threads=args.threads)
    keep: list = []  # compress results own their files
    paths = {FP32: fp32}
    int8_full = presso.compress(model, "int8", data=ex.data, task="embedding", bench=quick)
    keep.append(int8_full)
    paths["full int8"] = int8_full.model_path
    table = {}
    work = Path(tempfile.mkdtemp(prefix="presso-students-"))
    for spec in args.candidates:
        plan = parse_candidate(spec)
        print(f"\n== {spec}", flush=True)
        t0 = time.time()
        student, notes = derive_student(
            model.module,
            tuple(t[:2] for t in calibration),
            plan,
            transformer=model.transformer,
            calibration=calibration,
        )
        print(f"  derived in {time.time() - t0:.0f} s: {notes}")
        fit = None if args.speed_only else train(student, rows, targets, names, args, args.rank, model.module)
        student.eval()
        shape = {**model.transformer, **attention_shape(student)} if plan.narrower else model.transformer
        loaded = dataclasses.replace(
            model, module=student, transformer=shape, name=f"student {spec}", notes=[]
        )
        path = export_onnx(loaded, parts.calibration.head(2).inputs, work / f"{spec.replace(':', '-')}.onnx")
        paths[f"{spec} fp32"] = path
        entry = {"notes": notes, "fit": fit, "fp32": held_out_fidelity(path, ev, reference, args.threads)}
        if not args.no_int8:
            q = presso.compress(loaded, "int8", data=ex.data, task="embedding", bench=quick, max_drop=1.0)
            keep.append(q)
            paths[f"{spec} int8"] = q.model_path
            entry["int8"] = held_out_fidelity(q.model_path, ev, reference, args.threads)
        table[spec] = entry
        print(f"  {fit} -> fp32 {entry['fp32']}" + (f", int8 {entry.get('int8')}" if "int8" in entry else ""))

    one, batch, n1, n32 = timing_inputs(model.tokenizer, names, ev_texts)
    settings = BenchSettings(rounds=args.rounds, round_seconds=0.5, throughput_batch=32, threads=args.threads)
    load = open("/proc/loadavg").read().split()[:3]
    timing = bench_onnx(paths, one, batch, settings)
    base1 = timing["full int8"]["latency_ms"]["p50"]
    base32 = 1 / timing["full int8"]["throughput_per_s"]
    print(
        f"\nheld-out: {len(ev)} sentences (batch 1, padded to 128 as the example), against the PyTorch "
        f"fp32 teacher; speed: batch 1 x {n1} tokens and batch 32 x {n32} tokens (real length), "
        f"{args.threads} threads, {args.rounds} interleaved rounds, load average {' '.join(load)} before timing\n"
    )
    print(
        "| model | parameters | mean cos | top-10 | p50 ms b1 | vs full int8 b1 | ms/row b32 | vs full int8 b32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, path in paths.items():
        spec, _, kind = name.rpartition(" ")
        m = table[spec][kind] if spec in table else held_out_fidelity(path, ev, reference, args.threads)
        lat = timing[name]["latency_ms"]["p50"]
        per_row = 1 / timing[name]["throughput_per_s"]
        print(
            f"| {name} | {parameter_count(path):,} | {m['mean_cosine']:.4f} | {m['top10_agreement']:.3f} | "
            f"{lat:.2f} | {base1 / lat:.2f}x | {per_row * 1000:.3f} | {base32 / per_row:.2f}x |"
        )
    for spec, entry in table.items():
        print(f"\n{spec}: {entry['fit']}; {entry['notes']}")
    print(f"\nsettings: {vars(args)}", file=sys.stderr)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
