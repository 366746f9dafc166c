"""One text-embedding pipeline in its own process, for benchmarks/text_pipelines.py.

It imports only the standard library and numpy at the top, because it runs under two
interpreters: presso's venv (presso's predictor, sentence-transformers with PyTorch) and
the peers' venv (sentence-transformers' ONNX, int8 and OpenVINO backends, whose optimum
packages pin an older transformers than presso's), which has no presso.

    python _text_peers.py serve      # requests on stdin, one JSON object a line:
        {"op": "load", "kind": KIND, "path": FOLDER, "threads": N, "preset": P}
        {"op": "texts", "texts": [...]}
        {"op": "embed", "batch": 1 | 32, "count": N | null, "out": "file.npy" | null}
            -> {"seconds": [...]}   (the first N texts, or all; embeddings saved to "out")
        {"op": "quit"}
    python _text_peers.py prepare FOLDER PRESET   # ST's own ONNX, int8 and OpenVINO exports

Each request is answered with one JSON line on stdout ({"ok": false, "error": ...} when it
failed); everything the libraries print goes to stderr, so it never breaks a reply.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

KINDS = ("st-torch", "st-onnx", "st-int8", "st-openvino", "presso", "presso-by-hand")
OPENVINO_XML = "openvino/openvino_model.xml"
PREPARED = "prepared"  # written when every export was made (or OpenVINO found missing)


def int8_file(preset: str) -> str:
    """The file ST's ``export_dynamic_quantized_onnx_model`` writes for a preset (weights qint8)."""
    return f"onnx/model_qint8_{preset}.onnx"


def model_files(kind: str, path: Path, preset: str) -> list[Path]:
    """The files a pipeline's weights live in, for its size on disk."""
    if kind == "st-torch":
        return [path / "model.safetensors"]
    if kind == "st-onnx":
        return [path / "onnx" / "model.onnx"]
    if kind == "st-int8":
        return [path / int8_file(preset)]
    if kind == "st-openvino":
        return [path / OPENVINO_XML, path / OPENVINO_XML.replace(".xml", ".bin")]
    packed = path / "model.packed"
    return [packed if packed.is_file() and not (path / "model.onnx").is_file() else path / "model.onnx"]


def _sentence_transformer(kind: str, path: Path, threads: int, preset: str):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)  # ST pools and normalises in torch with every backend
    if kind == "st-torch":
        return SentenceTransformer(str(path), device="cpu")
    if kind in ("st-onnx", "st-int8"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        name = "model.onnx" if kind == "st-onnx" else Path(int8_file(preset)).name
        kwargs = {"file_name": name, "provider": "CPUExecutionProvider", "session_options": options}
        return SentenceTransformer(str(path), device="cpu", backend="onnx", model_kwargs=kwargs)
    config = {"INFERENCE_NUM_THREADS": str(threads)}
    return SentenceTransformer(
        str(path),
        device="cpu",
        backend="openvino",
        model_kwargs={"file_name": "openvino_model.xml", "ov_config": config},
    )


PACKAGES = (
    "presso",
    "sentence-transformers",
    "transformers",
    "torch",
    "onnxruntime",
    "openvino",
    "optimum-onnx",
)


def versions() -> dict[str, str]:
    """The installed versions of what a pipeline runs on (the two venvs differ)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def load(kind: str, path: Path, threads: int, preset: str):
    """A function texts, batch size -> (n, d) float32 embeddings, as the pipeline's user calls it."""
    if kind == "presso":
        import presso

        predictor = presso.load(path, threads=threads)
        return lambda texts, batch: np.asarray(predictor.predict(texts, batch_size=batch), dtype=np.float32)
    if kind == "presso-by-hand":
        return _by_hand(path, threads)
    model = _sentence_transformer(kind, path, threads, preset)
    return lambda texts, batch: np.asarray(
        model.encode(texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False),
        dtype=np.float32,
    )


def _by_hand(path: Path, threads: int):
    """The artifact's model.onnx in a plain ONNX Runtime session, fed the tokenizer's
    real-length ids as a user would by hand: one text unpadded, a list sorted by length
    and padded per batch of its own longest text (what ST's encode does)."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    tokenizer = AutoTokenizer.from_pretrained(str(path / "tokenizer"))

    def run(texts: list[str]) -> np.ndarray:
        enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
        return session.run(None, {n: enc[n] for n in names})[0]

    def encode(texts: list[str], batch: int) -> np.ndarray:
        if len(texts) == 1:
            return run(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), session.get_outputs()[0].shape[-1]), np.float32)
        for start in range(0, len(texts), batch):
            rows = order[start : start + batch]
            out[rows] = run([texts[i] for i in rows])
        return out

    return encode


def embed(encode, texts: list[str], batch: int) -> tuple[np.ndarray, list[float]]:
    """Batch 1: each text alone, one time per text. Otherwise: the whole list in one call
    at that batch size (the pipeline batches and sorts by length itself), one time."""
    if batch == 1:
        rows, seconds = [], []
        for text in texts:
            start = time.perf_counter()
            rows.append(encode([text], 1))
            seconds.append(time.perf_counter() - start)
        return np.concatenate(rows), seconds
    start = time.perf_counter()
    out = encode(texts, batch)
    return out, [time.perf_counter() - start]


def serve() -> None:
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints lands on stderr, not in a reply
    sys.stdout = sys.stderr
    encode, texts = None, []
    for line in sys.stdin:
        request = json.loads(line)
        try:
            op = request["op"]
            if op == "quit":
                break
            answer: dict = {"ok": True}
            if op == "load":
                start = time.perf_counter()
                encode = load(
                    request["kind"], Path(request["path"]), request["threads"], request.get("preset", "")
                )
                answer["load_s"] = time.perf_counter() - start
                answer["versions"] = versions()
            elif op == "texts":
                texts = request["texts"]
            elif op == "embed":
                out, seconds = embed(encode, texts[: request.get("count")], request["batch"])
                if request.get("out"):
                    np.save(request["out"], out)
                answer["seconds"] = seconds
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as e:  # the driver reports it and goes on without this pipeline
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        reply.write(json.dumps(answer) + "\n")


def prepare(folder: Path, preset: str) -> None:
    """ST's own exports into ``folder`` (a copy of the model), each once: ONNX through
    optimum, its dynamic int8 for ``preset``, and OpenVINO when openvino is installed."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    if not (folder / "onnx" / "model.onnx").is_file():
        SentenceTransformer(str(folder), device="cpu", backend="onnx").save_pretrained(str(folder))
    if not (folder / int8_file(preset)).is_file():
        onnx = SentenceTransformer(
            str(folder), device="cpu", backend="onnx", model_kwargs={"file_name": "model.onnx"}
        )
        export_dynamic_quantized_onnx_model(onnx, preset, str(folder))
    try:
        import optimum.intel  # noqa: F401
    except ImportError:
        print("optimum-intel / openvino are not installed: no OpenVINO export", file=sys.stderr)
    else:
        if not (folder / OPENVINO_XML).is_file():
            try:
                SentenceTransformer(str(folder), device="cpu", backend="openvino").save_pretrained(
                    str(folder)
                )
            except Exception:  # the ONNX pipelines are still worth measuring without it
                traceback.print_exc()
                print("the OpenVINO export failed: ST openvino will be left out", file=sys.stderr)
    (folder / PREPARED).write_text(preset)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve()
    elif sys.argv[1:2] == ["prepare"] and len(sys.argv) == 4:
        prepare(Path(sys.argv[2]), sys.argv[3])
    else:
        sys.exit(__doc__)
