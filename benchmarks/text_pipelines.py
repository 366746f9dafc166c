"""Text inference: presso artifacts against sentence-transformers' own CPU pipelines.

Every pipeline encodes the same texts in its own worker process (``_text_peers.py``), threads
pinned equally (torch, ONNX Runtime's intra-op threads, OpenVINO's inference threads, OMP),
in interleaved rounds: round r runs every pipeline in a rotated order, so all see the same
machine state. Pipelines: sentence-transformers (ST) with PyTorch (the original: fidelity is
measured against it), ST ``backend="onnx"``, ST's dynamic int8 export for this CPU
(``export_dynamic_quantized_onnx_model`` with the avx512_vnni / avx512 / avx2 / arm64 preset),
ST ``backend="openvino"``, and each presso artifact through ``presso.load(dir).predict``.

Measured per pipeline: mean cosine to ST-PyTorch and top-10 retrieval agreement (presso's
own metric functions), batch-1 ms per text (each text encoded alone; median and p95 over
texts and rounds), batch-32 throughput (the whole text set in one call at batch_size=32,
the pipeline sorting by length itself; median over rounds) and the weights' size on disk.

ST's ONNX and OpenVINO backends need optimum packages that pin transformers < 4.58 (presso
runs 5.x), so they run in a separate venv built once under the presso cache folder
(``bench-venvs/``, about 1.5 GB). With no ``--artifact``, the minilm example's int8 artifact
is built once (``presso compress --example minilm --recipe int8``) and cached as well.

    python benchmarks/text_pipelines.py [--rounds 3] [--threads N] [--artifact DIR ...]
        [--texts FILE] [--limit N] [--json results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import presso
from presso.cache import cache_root
from presso.measure.metrics import evaluate

sys.path.insert(0, str(Path(__file__).parent))
import _text_peers as peers  # noqa: E402

WORKER = Path(peers.__file__).resolve()
BATCH = 32
# What ST's ONNX/OpenVINO backends resolve to with torch 2.13 (sentence-transformers 6.x
# needs transformers 5, which no optimum-onnx release allows yet).
PEER_REQUIREMENTS = (
    "sentence-transformers[onnx,openvino]==5.7.0",
    "transformers==4.57.6",
    "optimum-onnx[onnxruntime]==0.1.0",
    "optimum-intel[openvino]==1.27.0",
    "openvino==2026.4.1",
    "onnxruntime==1.32.0",
)
ST_NAMES = {
    "st-torch": "ST PyTorch (the original)",
    "st-onnx": "ST onnx",
    "st-int8": "ST onnx int8 ({preset})",
    "st-openvino": "ST openvino",
}


def cpu_preset() -> str:
    """ST's quantization preset for this CPU, the one its docs tell users to pick."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def peer_python(log) -> Path:
    """The peers' interpreter: a venv keyed by its requirements, built on first use."""
    key = hashlib.sha256(" ".join(PEER_REQUIREMENTS).encode()).hexdigest()[:10]
    venv = cache_root() / "bench-venvs" / f"st-peers-{key}"
    python = venv / "bin" / "python"
    if (venv / "ready").is_file():
        return python
    shutil.rmtree(venv, ignore_errors=True)  # a half-built one from an interrupted run
    log(f"building the peers' venv in {venv} (once; a few minutes)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # first: the CPU wheel, not a CUDA build
    subprocess.run([*pip, *PEER_REQUIREMENTS], check=True)
    (venv / "ready").write_text(
        json.dumps({"requirements": PEER_REQUIREMENTS, "seconds": time.perf_counter() - start})
    )
    log(f"peers' venv ready in {time.perf_counter() - start:.0f} s")
    return python


def prepare_peer_models(python: Path, preset: str, log) -> Path:
    """A copy of all-MiniLM-L6-v2 beside the peers' venv with ST's own ONNX, int8 and
    OpenVINO exports in it (the package's folder itself stays untouched)."""
    from presso.examples.minilm import model_folder

    folder = python.parent.parent / "models" / "all-MiniLM-L6-v2"
    if not folder.is_dir():
        shutil.copytree(model_folder(), folder)
    if not (folder / peers.int8_file(preset)).is_file():
        log(f"exporting with ST's own tools into {folder}")
    subprocess.run(
        [str(python), str(WORKER), "prepare", str(folder), preset], check=True, env=worker_env(1, peer=True)
    )
    return folder


def default_artifact(log) -> Path:
    """The minilm example's int8 artifact, built once per presso version."""
    out = cache_root() / "bench-artifacts" / f"minilm-int8-{presso.__version__}"
    if not (out / "report.json").is_file():
        log(f"building the minilm int8 artifact in {out} (once)")
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "presso",
            "compress",
            "--example",
            "minilm",
            "--recipe",
            "int8",
            "--out",
            str(out),
        ]
        subprocess.run(cmd, check=True)
    return out


def load_texts(path: str | None, limit: int | None) -> tuple[list[str], str]:
    """The texts and where they come from: a file, one a line, or the minilm example's
    held-out sentences (its split, as ``presso compress --example minilm`` makes it)."""
    if path:
        texts = [t.strip() for t in Path(path).read_text(encoding="utf-8").splitlines() if t.strip()]
        source = path
    else:
        from presso.data.dataset import Dataset, split
        from presso.examples.minilm import SENTENCES
        from presso.examples.texts import stdlib_sentences

        sentences = stdlib_sentences(SENTENCES)
        rows = Dataset(inputs={"row": np.arange(len(sentences))}, texts=sentences)
        texts = split(rows, 0.3, 0).evaluation.texts or []
        source = "the minilm example's held-out stdlib sentences"
    return texts[:limit] if limit else texts, source


def token_lengths(texts: list[str]) -> np.ndarray:
    from transformers import AutoTokenizer

    from presso.examples.minilm import model_folder

    tokenizer = AutoTokenizer.from_pretrained(str(model_folder()))
    return np.array([len(ids) for ids in tokenizer(texts)["input_ids"]])


def worker_env(threads: int, peer: bool) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[name] = str(threads)
    env["HF_HUB_OFFLINE"] = "1"  # nothing from a hub: every model is a local folder
    if peer:
        env.pop("PYTHONPATH", None)  # the peers' venv must not see presso's packages
    return env


@dataclass
class Pipeline:
    name: str
    kind: str
    path: Path
    python: Path
    batch1_s: list[float] = field(default_factory=list)
    batch32_s: list[float] = field(default_factory=list)
    load_s: float = 0.0
    error: str | None = None
    process: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, threads: int, preset: str, texts: list[str], log_dir: Path) -> None:
        stderr = (log_dir / f"{self.kind}-{abs(hash(self.name))}.log").open("w")
        self.process = subprocess.Popen(
            [str(self.python), str(WORKER), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=worker_env(threads, peer=self.kind != "presso" and self.kind != "st-torch"),
        )
        self.log = Path(stderr.name)
        load = {"op": "load", "kind": self.kind, "path": str(self.path), "threads": threads, "preset": preset}
        self.load_s = self.ask(load).get("load_s", 0.0)
        self.ask({"op": "texts", "texts": texts})

    def ask(self, request: dict) -> dict:
        if self.error:
            return {}
        assert self.process and self.process.stdin and self.process.stdout
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
            answer = json.loads(line) if line else {"ok": False, "error": "the worker exited"}
        except BrokenPipeError:
            answer = {"ok": False, "error": "the worker exited"}
        if not answer["ok"]:
            self.error = f"{answer['error']} (log: {self.log})"
            print(f"  {self.name}: {self.error}", file=sys.stderr)
        return answer

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            if not self.error:
                self.ask({"op": "quit"})
            self.process.wait(timeout=30)


def run_rounds(pipelines: list[Pipeline], rounds: int, work: Path, log) -> None:
    """Warm every pipeline up, then round r: the batch-1 pass of every pipeline, then the
    batch-32 pass of every pipeline, both in an order rotated by r. Round 0's outputs are kept."""
    for p in pipelines:
        p.ask({"op": "embed", "batch": BATCH, "out": None})  # warm-up: allocators, kernels, caches
    for r in range(rounds):
        start = time.perf_counter()
        order = pipelines[r % len(pipelines) :] + pipelines[: r % len(pipelines)]
        for batch, times in ((1, "batch1_s"), (BATCH, "batch32_s")):
            for p in order:
                out = str(work / f"{pipelines.index(p)}-b{batch}.npy") if r == 0 else None
                getattr(p, times).extend(
                    p.ask({"op": "embed", "batch": batch, "out": out}).get("seconds", [])
                )
        log(f"round {r + 1}/{rounds}: {time.perf_counter() - start:.0f} s")


def summarise(pipelines: list[Pipeline], n: int, work: Path, preset: str) -> list[dict]:
    ok = [(i, p) for i, p in enumerate(pipelines) if not p.error]
    reference = {b: np.load(work / f"0-b{b}.npy") for b in (1, BATCH)}  # pipelines[0] is ST PyTorch
    rows = []
    for i, p in ok:
        b1 = np.array(p.batch1_s) * 1e3
        fidelity = {
            f"batch{b}": evaluate("embedding", np.load(work / f"{i}-b{b}.npy"), reference[b])
            for b in (1, BATCH)
        }
        rows.append(
            {
                "pipeline": p.name,
                "kind": p.kind,
                "path": str(p.path),
                "fidelity": fidelity,
                "batch1_ms": {
                    "p50": float(np.median(b1)),
                    "p95": float(np.percentile(b1, 95)),
                    "calls": len(b1),
                },
                "batch32_texts_per_s": {
                    "median": float(np.median([n / s for s in p.batch32_s])),
                    "rounds": [n / s for s in p.batch32_s],
                },
                "size_mb": sum(f.stat().st_size for f in peers.model_files(p.kind, p.path, preset)) / 1e6,
                "load_s": p.load_s,
            }
        )
    st = [r for r in rows if r["kind"] != "presso"]
    best1 = min(r["batch1_ms"]["p50"] for r in st)
    best32 = max(r["batch32_texts_per_s"]["median"] for r in st)
    for r in rows:
        r["vs_fastest_st"] = {
            "batch1": best1 / r["batch1_ms"]["p50"],
            "batch32": r["batch32_texts_per_s"]["median"] / best32,
        }
    return rows


def print_table(rows: list[dict], header: str) -> None:
    print(f"\n{header}\n")
    print(
        "| pipeline | mean cos | top-10 | batch-1 ms/text p50 | p95 | batch-32 texts/s | size MB "
        "| vs fastest ST, batch 1 | batch 32 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        f, b1 = r["fidelity"]["batch1"], r["batch1_ms"]
        print(
            f"| {r['pipeline']} | {f['mean_cosine']:.5f} | {f['top10_agreement']:.3f} | {b1['p50']:.2f} | "
            f"{b1['p95']:.2f} | {r['batch32_texts_per_s']['median']:.0f} | {r['size_mb']:.1f} | "
            f"{r['vs_fastest_st']['batch1']:.2f}x | {r['vs_fastest_st']['batch32']:.2f}x |"
        )
    worst = min(rows, key=lambda r: r["fidelity"][f"batch{BATCH}"]["mean_cosine"])
    print(
        f"\nFidelity is of each text encoded alone; at batch {BATCH} (padding within a batch) the lowest "
        f"mean cos is {worst['fidelity'][f'batch{BATCH}']['mean_cosine']:.5f} ({worst['pipeline']})."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--artifact", action="append", default=[], help="a presso artifact folder (repeatable)"
    )
    parser.add_argument(
        "--texts", help="a text file, one text a line (default: the minilm held-out sentences)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use the first N texts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--no-openvino", action="store_true", help="leave ST's OpenVINO backend out")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()

    def log(message: str) -> None:
        print(f"[text_pipelines] {message}", file=sys.stderr, flush=True)

    texts, source = load_texts(args.texts, args.limit)
    if len(texts) < 2:
        raise presso.PressoError(f"Benchmarking needs at least 2 texts; {source} gives {len(texts)}.")
    lengths = token_lengths(texts)
    preset = cpu_preset()
    artifacts = [Path(a) for a in args.artifact] or [default_artifact(log)]
    python = peer_python(log)
    folder = prepare_peer_models(python, preset, log)

    from presso.examples.minilm import model_folder

    pipelines = [Pipeline(ST_NAMES["st-torch"], "st-torch", model_folder(), Path(sys.executable))]
    for kind in ("st-onnx", "st-int8", "st-openvino"):
        if kind == "st-openvino" and (args.no_openvino or not (folder / peers.OPENVINO_XML).is_file()):
            log(
                "ST openvino left out: "
                + ("--no-openvino" if args.no_openvino else "openvino is not in the peers' venv")
            )
            continue
        pipelines.append(Pipeline(ST_NAMES[kind].format(preset=preset), kind, folder, python))
    for a in artifacts:
        pipelines.append(Pipeline(f"presso {a.name}", "presso", a, Path(sys.executable)))

    work = Path(tempfile.mkdtemp(prefix="presso-textbench-"))
    try:
        for p in pipelines:
            log(f"loading {p.name}")
            p.start(args.threads, preset, texts, work)
        if pipelines[0].error:
            raise presso.PressoError(f"The reference pipeline failed: {pipelines[0].error}")
        run_rounds(pipelines, args.rounds, work, log)
        rows = summarise(pipelines, len(texts), work, preset)
    finally:
        for p in pipelines:
            p.stop()
    header = (
        f"all-MiniLM-L6-v2 pipelines, {len(texts)} texts ({source}; tokens median "
        f"{np.median(lengths):.0f}, p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}), "
        f"{args.threads} threads, {args.rounds} interleaved rounds, {cpu_name()} "
        f"(ST int8 preset {preset})"
    )
    print_table(rows, header)
    failed = [p for p in pipelines if p.error]
    for p in failed:
        print(f"- {p.name} failed: {p.error}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "header": header,
                    "texts": {"count": len(texts), "source": source, "token_lengths": lengths.tolist()},
                    "threads": args.threads,
                    "rounds": args.rounds,
                    "preset": preset,
                    "peer_requirements": PEER_REQUIREMENTS,
                    "rows": rows,
                    "failed": {p.name: p.error for p in failed},
                },
                indent=1,
            )
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
