"""Damaged Hugging Face folders: a missing or garbled config, tokenizer or weights file, a
tokenizer from another model, a config that does not match the weights. ``presso compress``
refuses each in one line (exit 2, nothing written) before any work, never a traceback or
an index error deep inside the model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from fuzz_cases import refused_by_the_cli, tried
from hf_tiny import tiny_hf_folder

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _remove(*names: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        for name in names:
            (folder / name).unlink(missing_ok=True)

    return damage


def _write(name: str, content: bytes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / name).write_bytes(content)

    return damage


def _config(**changes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config))

    return damage


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])

    return damage


def _foreign_tokenizer(folder: Path) -> None:
    """all-MiniLM-L6-v2's tokenizer (30522 tokens) in a folder whose model embeds 600."""
    from presso.examples.minilm import model_folder

    for name in TOKENIZER_FILES:
        (folder / name).unlink(missing_ok=True)
    for name in TOKENIZER_FILES:
        if (model_folder() / name).is_file():
            shutil.copy(model_folder() / name, folder / name)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "no config.json": _remove("config.json"),
    "config.json not JSON": _write("config.json", b"{model_type: bert"),
    "config.json a list": _write("config.json", b"[1, 2]"),
    "unknown model_type": _config(model_type="no-such-architecture"),
    "hidden size unlike the weights": _config(hidden_size=48),
    "fewer layers than the weights": _config(num_hidden_layers=1),
    "more layers than the weights": _config(num_hidden_layers=3),
    "no weights file": _remove("model.safetensors"),
    "weights cut in half": _truncate("model.safetensors"),
    "weights file of zeros": _write("model.safetensors", bytes(4096)),
    "no tokenizer": _remove(*TOKENIZER_FILES),
    "tokenizer.json garbled": _write("tokenizer.json", b"\x00\xff garbage {"),
    "tokenizer from a larger vocabulary": _foreign_tokenizer,
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_hugging_face_folder_is_refused_in_one_line(case, tmp_path, capsys):
    folder = tiny_hf_folder("bert", False, tmp_path / "model")
    DAMAGE[case](folder)
    texts = tmp_path / "texts.txt"
    texts.write_text("".join(f"sentence number {i} about a damaged model folder\n" for i in range(40)))
    out = tmp_path / "out"
    argv = ["compress", str(folder), "--data", str(texts), "--recipe", "int8", "--out", str(out)]
    refused_by_the_cli([*argv, "--rounds", "2", "--quiet"], out, capsys)
    tried["models: damaged Hugging Face folders"] += 1
