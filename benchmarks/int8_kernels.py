"""all-MiniLM-L6-v2: ONNX Runtime's real int8 error on both of its x86 kernels, per variant.

ORT's u8 x s8 GEMM sums products exactly with VNNI and saturates pairs of them at int16
without it (presso.runtime.cpu). This script builds each dynamic int8 variant once, then
measures its fidelity (cosine of mean-pooled embeddings to the PyTorch fp32 original, at
batch 1 x 128 tokens, as presso scores it) on ORT as this CPU runs it and, where
qemu-x86_64 is installed, on ORT as a CPU without VNNI runs it: the same script in a child
process under ``qemu-x86_64 -cpu Haswell`` (AVX2, FMA, no AVX-512, no VNNI), whose ORT
dispatches to the saturating kernel (checked by presso's probe in the child). Emulated
timings mean nothing, so this table has none; ``int8_minilm.py`` times the variants.

    python benchmarks/int8_kernels.py [--sentences 120] [--no-emulation]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

QEMU_CPU = "Haswell-noTSX,-pcid,-x2apic,-tsc-deadline,-invpcid"  # flags TCG lacks: no warnings


def _quantize(src: Path, dst: Path, reduce_range: bool = False, per_channel: bool = True) -> Path:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return dst


def build(work: Path, sentences: int) -> tuple[dict[str, Path], np.ndarray]:
    """The variants' files and the PyTorch fp32 embeddings of the held-out sentences."""
    import presso
    from presso.data.dataset import split
    from presso.export.onnx_export import export_onnx
    from presso.techniques.quantization.int8 import _fuse_transformer, _preprocess
    from presso.techniques.quantization.smooth import smooth_matmuls
    from presso.techniques.quantization.weight_range import choose_weight_ranges, splice

    ex = presso.load_example("minilm")
    parts = split(ex.data, 0.3, 0)  # the split compress makes with its defaults (seed 0)
    ev = parts.evaluation.head(sentences)
    reference = ex.model.run_torch(ev.inputs)  # before any export
    np.savez(work / "inputs.npz", **ev.inputs)
    fp32 = export_onnx(ex.model, parts.calibration.head(2).inputs, work / "fp32.onnx")
    fused, _ = _fuse_transformer(fp32, work / "fused.onnx", ex.model.transformer, print)
    src = _preprocess(fused, work / "pre.onnx", print)
    feeds = list(parts.calibration.batches(1))

    def smoothed(name: str, saturating: bool, reduce_range: bool = False) -> Path:
        dst = work / f"{name}.onnx"
        rows = smooth_matmuls(src, dst, feeds, saturating=saturating, reduce_range=reduce_range)
        print(f"{name}: " + ", ".join(r["smoothing"] for r in rows))
        return dst

    def ranged(smoothed_src: Path) -> Path:
        rows = choose_weight_ranges(smoothed_src, feeds, saturating=True)
        seven = [r["weight"] for r in rows if r["weights"] == "7-bit"]
        print(f"7-bit weights where pairs saturate: {len(seven)} of {len(rows)} layers")
        full = _quantize(smoothed_src, work / "ranged-full.onnx")
        reduced = _quantize(smoothed_src, work / "ranged-reduced.onnx", reduce_range=True)
        splice(full, reduced, seven, work / "ranged.onnx")
        return work / "ranged.onnx"

    smooth_sat = smoothed("smooth-sat", True)
    paths = {
        "ONNX Runtime fp32": fp32,
        "ORT quantize_dynamic defaults (per tensor)": _quantize(
            fp32, work / "ort-default.onnx", per_channel=False
        ),
        "dynamic (per channel)": _quantize(src, work / "dynamic.onnx"),
        "dynamic-reduce-range (7-bit weights)": _quantize(src, work / "reduce.onnx", reduce_range=True),
        "dynamic-smooth, scales for exact sums": _quantize(smoothed("smooth-exact", False), work / "se.onnx"),
        "dynamic-smooth, scales for saturating pairs": _quantize(smooth_sat, work / "ss.onnx"),
        "dynamic-smooth + 7-bit weights where pairs saturate": ranged(smooth_sat),
        "dynamic-smooth-reduce-range": _quantize(
            smoothed("smooth-rr", False, True), work / "srr.onnx", reduce_range=True
        ),
    }
    return paths, reference


def embed(paths: dict[str, str], inputs: Path, out: Path) -> None:
    """Every model's outputs on the saved inputs, at batch 1, and which kernel ORT ran."""
    from presso.runtime.cpu import cpu_features
    from presso.runtime.session import make_session, run_session

    feed = dict(np.load(inputs))
    outs = {name: run_session(make_session(path), feed, batch_size=1) for name, path in paths.items()}
    np.savez(out, **{f"out{i}": v for i, v in enumerate(outs.values())})
    Path(str(out) + ".json").write_text(json.dumps({"names": list(outs), **cpu_features().describe()}))


def _measure(paths: dict[str, Path], work: Path, tag: str, emulate: bool) -> tuple[dict, dict]:
    out = work / f"{tag}.npz"
    args = ["--embed", json.dumps({k: str(v) for k, v in paths.items()}), str(work / "inputs.npz"), str(out)]
    if emulate:
        cmd = [
            "qemu-x86_64",
            "-cpu",
            QEMU_CPU,
            "-0",
            sys.executable,
            os.path.realpath(sys.executable),
            __file__,
            *args,
        ]
    else:
        cmd = [sys.executable, __file__, *args]
    subprocess.run(cmd, check=True)
    info = json.loads(Path(str(out) + ".json").read_text())
    arrays = np.load(out)
    return {name: arrays[f"out{i}"] for i, name in enumerate(info["names"])}, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sentences", type=int, default=120, help="held-out sentences (emulated: ~2 s each per variant)"
    )
    parser.add_argument("--no-emulation", action="store_true", help="only the kernel of this CPU")
    args = parser.parse_args()
    from presso.measure.metrics import evaluate

    work = Path(tempfile.mkdtemp(prefix="presso-bench-"))
    try:
        paths, reference = build(work, args.sentences)
        runs = {"this CPU": _measure(paths, work, "native", emulate=False)}
        if not args.no_emulation and shutil.which("qemu-x86_64"):
            runs["emulated Haswell"] = _measure(paths, work, "emulated", emulate=True)
        print(
            f"\nall-MiniLM-L6-v2, {args.sentences} held-out sentences, batch 1 x 128 tokens; fidelity to "
            "the PyTorch fp32 original (mean cosine / min cosine / top-10 agreement)\n"
        )
        for label, (_, info) in runs.items():
            print(f"- {label}: {info['cpu']} as ORT sees it: {info['int8_kernel']}")
        print("\n| variant | " + " | ".join(runs) + " |")
        print("|---|" + "---:|" * len(runs))
        for name in paths:
            cells = []
            for outs, _ in runs.values():
                m = evaluate("embedding", outs[name], reference)
                cells.append(f"{m['mean_cosine']:.4f} / {m['min_cosine']:.4f} / {m['top10_agreement']:.3f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--embed":
        embed(json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        np.seterr(all="ignore")
        main()
