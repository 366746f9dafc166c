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
runs 5.x, and sentence-transformers 6 needs 5.x), so they run with sentence-transformers 5.7
in a separate venv built once under the presso cache folder (``bench-venvs/``, 2 GB; 4.5
min here on first use, 1.3 min from pip's cache), with ST's exports in a copy of the model
beside it (1.5 min); the reference runs presso's own sentence-transformers. With no
``--artifact``, the minilm example's int8 artifact is built once (``presso compress
--example minilm --recipe int8``, 7.5 min here under load) and cached too.

    python benchmarks/text_pipelines.py [--rounds 5] [--threads N] [--artifact DIR ...]
        [--texts FILE] [--limit N] [--json results.json]

Run it on a quiet machine: with more runnable threads than cores, PyTorch's OpenMP threads
wait on each other (ST PyTorch at 2 threads on a 2-core machine at load 8: 100-250 ms per
short sentence, 27 ms at 1 thread), and the table measures the load, not the pipelines.
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

import _text_peers as peers
import numpy as np

import presso
from presso.cache import cache_root
from presso.measure.metrics import evaluate

WORKER = Path(peers.__file__).resolve()
BATCH = 32
# What ST's ONNX backend resolves to with torch 2.13: sentence-transformers 6 needs
# transformers 5, which no optimum-onnx release allows yet. OpenVINO is installed second,
# on top, so a platform without its wheels still gets the ONNX pipelines.
ONNX_PEERS = (
    "sentence-transformers[onnx]==5.7.0",
    "transformers==4.57.6",
    "optimum-onnx[onnxruntime]==0.1.0",
    "onnxruntime==1.32.0",
)
OPENVINO_PEERS = ("optimum-intel[openvino]==1.27.0", "openvino==2026.4.1")
ST_NAMES = {
    "st-torch": "ST PyTorch (the original)",
    "st-onnx": "ST onnx",
    "st-int8": "ST onnx int8 ({preset})",
    "st-openvino": "ST openvino",
}


def log(message: str) -> None:
    print(f"[text_pipelines] {message}", file=sys.stderr, flush=True)


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


def peer_python() -> Path:
    """The peers' interpreter: a venv keyed by its requirements, built on first use."""
    key = hashlib.sha256(" ".join(ONNX_PEERS + OPENVINO_PEERS).encode()).hexdigest()[:10]
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
    subprocess.run([*pip, *ONNX_PEERS], check=True)
    # ONNX_PEERS again, so that pip keeps their versions rather than resolving anew
    openvino = subprocess.run([*pip, *ONNX_PEERS, *OPENVINO_PEERS]).returncode == 0
    if not openvino:
        log("OpenVINO could not be installed (pip's message above): ST openvino will be left out")
    seconds = time.perf_counter() - start
    (venv / "ready").write_text(json.dumps({"requirements": ONNX_PEERS + OPENVINO_PEERS, "seconds": seconds}))
    log(f"peers' venv ready in {seconds:.0f} s")
    return python


def prepare_peer_models(python: Path, preset: str) -> Path:
    """A copy of all-MiniLM-L6-v2 beside the peers' venv with ST's own ONNX, int8 and
    OpenVINO exports in it (the package's folder itself stays untouched)."""
    from presso.examples.minilm import model_folder

    folder = python.parent.parent / "models" / "all-MiniLM-L6-v2"
    if not folder.is_dir():
        shutil.copytree(model_folder(), folder)
    if (folder / peers.int8_file(preset)).is_file() and (folder / peers.PREPARED).is_file():
        return folder
    log(f"exporting with ST's own tools into {folder}")
    done = subprocess.run(
        [str(python), str(WORKER), "prepare", str(folder), preset], env=worker_env(1, peer=True)
    )
    if done.returncode:
        raise presso.PressoError(
            f"ST's ONNX export failed (its message is above); delete {folder} and rerun."
        )
    return folder


def default_artifact() -> Path:
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
    log_file: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def start(self, threads: int, preset: str, texts: list[str], log_dir: Path) -> None:
        stderr = (log_dir / f"{self.name.split()[0]}-{self.kind}-{self.path.name}.log").open("w")
        self.process = subprocess.Popen(
            [str(self.python), str(WORKER), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=worker_env(threads, peer=self.kind not in ("presso", "presso-by-hand", "st-torch")),
        )
        stderr.close()  # the worker holds its own copy
        self.log_file = Path(stderr.name)
        load = {"op": "load", "kind": self.kind, "path": str(self.path), "threads": threads, "preset": preset}
        loaded = self.ask(load)
        self.load_s, self.versions = loaded.get("load_s", 0.0), loaded.get("versions", {})
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
            self.error = f"{answer['error']} (log: {self.log_file})"
            print(f"  {self.name}: {self.error}", file=sys.stderr)
        return answer

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            assert self.process.stdin
            try:
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()  # a worker that missed "quit" ends at end of input
            except BrokenPipeError:
                pass
            self.process.wait(timeout=30)


def run_rounds(pipelines: list[Pipeline], rounds: int, work: Path) -> None:
    """Warm every pipeline up, then round r: the batch-1 pass of every pipeline, then the
    batch-32 pass of every pipeline, both in an order rotated by r. Round 0's outputs are kept."""
    for p in pipelines:  # warm-up: allocators, kernels, caches, at both batch sizes
        p.ask({"op": "embed", "batch": 1, "count": 8, "out": None})
        p.ask({"op": "embed", "batch": BATCH, "out": None})
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
                "versions": p.versions,
            }
        )
    st = [r for r in rows if r["kind"].startswith("st-")]
    best1 = min(r["batch1_ms"]["p50"] for r in st)
    best32 = max(r["batch32_texts_per_s"]["median"] for r in st)
    for r in rows:
        r["vs_fastest_st"] = {
            "batch1": best1 / r["batch1_ms"]["p50"],
            "batch32": r["batch32_texts_per_s"]["median"] / best32,
        }
    return rows


def print_versions(rows: list[dict]) -> None:
    """One line per distinct set of versions: the reference and the peers run different ones."""
    seen: dict[str, list[str]] = {}
    for r in rows:
        line = ", ".join(f"{k} {v}" for k, v in r["versions"].items())
        seen.setdefault(line, []).append(r["pipeline"])
    for line, names in seen.items():
        print(f"- {'; '.join(names)}: {line}")


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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--artifact", action="append", default=[], help="a presso artifact folder (repeatable)"
    )
    parser.add_argument(
        "--texts", help="a text file, one text a line (default: the minilm held-out sentences)"
    )
    parser.add_argument("--limit", type=int, default=None, help="use the first N texts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--no-openvino", action="store_true", help="leave ST's OpenVINO backend out")
    parser.add_argument(
        "--peers-python",
        help="an interpreter that has sentence-transformers[onnx,openvino] (default: the cached peers' venv)",
    )
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args()
    if args.texts and not Path(args.texts).is_file():
        raise presso.PressoError(f"--texts {args.texts}: no such file; give a text file, one text a line.")
    for a in args.artifact:
        if not any((Path(a) / name).is_file() for name in ("model.onnx", "model.packed")):
            raise presso.PressoError(
                f"--artifact {a} is not a presso artifact folder (no model.onnx or model.packed)."
            )
    return args


def make_pipelines(args: argparse.Namespace, preset: str) -> list[Pipeline]:
    """ST PyTorch first (the reference), ST's other backends, then each presso artifact."""
    from presso.examples.minilm import model_folder

    artifacts = [Path(a) for a in args.artifact] or [default_artifact()]
    python = Path(args.peers_python) if args.peers_python else peer_python()
    folder = prepare_peer_models(python, preset)
    pipelines = [Pipeline(ST_NAMES["st-torch"], "st-torch", model_folder(), Path(sys.executable))]
    for kind in ("st-onnx", "st-int8", "st-openvino"):
        if kind == "st-openvino" and (args.no_openvino or not (folder / peers.OPENVINO_XML).is_file()):
            why = (
                "--no-openvino"
                if args.no_openvino
                else f"no OpenVINO export in {folder} (see the export's messages)"
            )
            log(f"ST openvino left out: {why}")
            continue
        pipelines.append(Pipeline(ST_NAMES[kind].format(preset=preset), kind, folder, python))
    ours = [Pipeline(f"presso {a.name}", "presso", a, Path(sys.executable)) for a in artifacts]
    # The first artifact's model.onnx fed by hand too: what presso's predict must keep up with.
    by_hand = Pipeline(
        f"{artifacts[0].name} model.onnx by hand", "presso-by-hand", artifacts[0], Path(sys.executable)
    )
    return pipelines + ours + [by_hand]


def measure(pipelines: list[Pipeline], texts: list[str], args: argparse.Namespace, preset: str) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="presso-textbench-"))
    try:
        for p in pipelines:
            log(f"loading {p.name}")
            p.start(args.threads, preset, texts, work)
        if pipelines[0].error:
            raise presso.PressoError(f"The reference pipeline failed: {pipelines[0].error}")
        run_rounds(pipelines, args.rounds, work)
        if pipelines[0].error:
            raise presso.PressoError(f"The reference pipeline failed: {pipelines[0].error}")
        return summarise(pipelines, len(texts), work, preset)
    finally:
        for p in pipelines:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    args = parse_args()
    texts, source = load_texts(args.texts, args.limit)
    if len(texts) < 2:
        raise presso.PressoError(f"Benchmarking needs at least 2 texts; {source} gives {len(texts)}.")
    lengths = token_lengths(texts)
    preset = cpu_preset()
    pipelines = make_pipelines(args, preset)
    rows = measure(pipelines, texts, args, preset)
    header = (
        f"all-MiniLM-L6-v2 pipelines, {len(texts)} texts ({source}; tokens median "
        f"{np.median(lengths):.0f}, p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}), "
        f"{args.threads} thread(s), {args.rounds} interleaved round(s), {cpu_name()} "
        f"(ST int8 preset {preset})"
    )
    print_table(rows, header)
    print_versions(rows)
    failed = {p.name: p.error for p in pipelines if p.error}
    for name, error in failed.items():
        print(f"- {name} failed: {error}")
    if args.json:
        results = {
            "header": header,
            "texts": {"count": len(texts), "source": source, "token_lengths": lengths.tolist()},
            "threads": args.threads,
            "rounds": args.rounds,
            "preset": preset,
            "peer_requirements": ONNX_PEERS + OPENVINO_PEERS,
            "rows": rows,
            "failed": failed,
        }
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    try:
        main()
    except presso.PressoError as e:
        sys.exit(f"error: {e}")
