"""ONNX files of any size: saved with their weights beside them (external data) once they
pass protobuf's 2 GB limit on one message, and copied with those weight files.

An ONNX file is one protobuf message, which cannot exceed 2 GiB; a larger model keeps its
tensors in a second file the graph names by a relative path (``model.onnx.data``). Every
place presso writes or copies a model goes through here, so that a 2.5 GB model survives
each stage instead of only the first.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Tensors above this many bytes go to a data file: under 2 GiB, with room for the graph.
EXTERNAL_ABOVE = 1_800_000_000


def external_files(proto: Any) -> list[str]:
    """The data files (relative paths) the tensors of ``proto`` name, in order."""
    locations: dict[str, None] = {}
    for tensor in _tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                locations[entry.value] = None
    return list(locations)


def model_bytes(path: str | Path) -> int:
    """Bytes of the ONNX file at ``path`` plus the data files it names."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    return path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in external_files(proto))


def too_large_for_one_file(path: str | Path) -> bool:
    """Whether a model like the one at ``path`` must keep its weights in a data file
    (what ONNX Runtime's quantizers call ``use_external_data_format``)."""
    return model_bytes(path) > EXTERNAL_ABOVE


def _tensors(proto: Any) -> list:
    """Every tensor of the model: initializers and node attributes, subgraphs included."""

    def of(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    yield from of(a.g)
                for sub in a.graphs:
                    yield from of(sub)

    return list(of(proto.graph))


def save_onnx(proto: Any, path: str | Path) -> None:
    """Write ``proto`` to ``path`` (atomically, the graph file last); its tensors go to
    ``<name>.data`` beside it when they are too large for one file. A proto read without
    its external data keeps pointing at the files it names (they must stay beside it)."""
    import onnx

    from presso.files import atomic_path

    path = Path(path)
    data = path.with_name(path.name + ".data")
    with atomic_path(path) as tmp:
        if external_files(proto) or sum(t.ByteSize() for t in _tensors(proto)) <= EXTERNAL_ABOVE:
            onnx.save(proto, str(tmp))
            return
        # onnx appends to an existing data file: a model saved again in place would keep
        # its old tensors too (its proto holds them in memory by now).
        data.unlink(missing_ok=True)
        onnx.save(
            proto,
            str(tmp),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )


def copy_onnx(src: str | Path, dst: str | Path) -> Path:
    """Copy the ONNX file ``src`` to ``dst`` with the data files it names; they are renamed
    after ``dst`` (``dst.data``, ``dst.data.1``...) and the copy's graph points at them."""
    import onnx

    src, dst = Path(src), Path(dst)
    proto = onnx.load(str(src), load_external_data=False)
    locations = external_files(proto)
    if not locations:
        shutil.copyfile(src, dst)
        return dst
    renamed = {loc: dst.name + ".data" + (f".{i}" if i else "") for i, loc in enumerate(locations)}
    for loc, name in renamed.items():
        shutil.copyfile(src.parent / loc, dst.parent / name)
    for tensor in _tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = renamed[entry.value]
    save_onnx(proto, dst)
    return dst
