"""The outcome of :func:`presso.compress`, and writing it as an artifact folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from presso.errors import PressoError
from presso.files import replace_folder
from presso.recipe.schema import Recipe
from presso.report.schema import Report
from presso.runtime.onnx_files import copy_onnx


class CompressionResult:
    """A compressed model with its evidence; ``save(dir)`` writes the artifact."""

    def __init__(
        self,
        report: Report,
        model_path: Path,
        workdir: Path,
        recipe: Recipe,
        tokenizer: Any = None,
        packed_path: Path | None = None,
    ):
        self.report, self.model_path, self.recipe, self.tokenizer = report, model_path, recipe, tokenizer
        self.packed_path = packed_path  # model.packed: the weights entropy-coded, when asked for
        self._workdir = workdir
        self._cleanup = weakref.finalize(self, shutil.rmtree, workdir, True)

    def __repr__(self) -> str:
        b = self.report.budget
        return (
            f"CompressionResult(task={self.report.task!r}, {b.primary_metric} "
            f"{b.baseline:.4f} -> {b.compressed:.4f}, size x{self.report.ratios['size']}, "
            f"speed x{self.report.ratios['latency_speedup']})"
        )

    @property
    def model(self):
        """The compressed model as an ``onnx.ModelProto``."""
        import onnx

        return onnx.load(str(self.model_path))

    def predictor(self):
        from presso.export.predictor import Predictor

        return Predictor(self.model_path, tokenizer=self.tokenizer, task=self.report.task)

    def save(self, out: str | Path, overwrite: bool = True) -> Path:
        """Write model.onnx, report.json, report.html, recipe.yaml (and tokenizer/, model.packed)
        to ``out``.

        Everything is written to a temporary folder beside ``out`` and swapped into place
        (:func:`presso.files.replace_folder`), so an interrupted save leaves no half-written
        artifact and a reader of ``out`` sees the old artifact or the new one. An existing
        presso artifact at ``out`` is replaced; any other non-empty folder is refused.
        """
        out = Path(out)
        check_output_dir(out, overwrite)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            self._write(tmp)
            replace_folder(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    def save_into(self, out: str | Path) -> Path:
        """Write the artifact's files into the existing folder ``out``, each renamed into
        place whole, leaving the folder's other files alone: a search folder keeps its study
        database (which other workers may have open) and its trials."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".artifact.tmp-", dir=out))
        try:
            self._write(tmp)
            # report.json last: it is what marks the folder as an artifact
            entries = sorted(tmp.iterdir(), key=lambda e: e.name == "report.json")
            for entry in entries:
                target = out / entry.name
                if entry.is_dir():
                    replace_folder(entry, target)
                else:
                    os.replace(entry, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out

    def _write(self, folder: Path) -> None:
        from presso.report.html import render_html

        copy_onnx(self.model_path, folder / "model.onnx")
        (folder / "recipe.yaml").write_text(self.recipe.to_yaml())
        (folder / "report.html").write_text(render_html(self.report))
        (folder / "report.json").write_text(self.report_json())
        if self.packed_path is not None:
            shutil.copyfile(self.packed_path, folder / "model.packed")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder / "tokenizer"))

    def report_json(self) -> str:
        return json.dumps(self.report.model_dump(mode="json"), indent=2)


def check_output_dir(out: Path, overwrite: bool = True) -> None:
    """Refuse an output path that holds something other than a presso artifact."""
    if out.exists() and not _replaceable(out, overwrite):
        raise PressoError(f"Output folder '{out}' exists and is not a presso artifact. Choose another --out.")


def _replaceable(out: Path, overwrite: bool) -> bool:
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    return overwrite and (out / "report.json").is_file() and (out / "model.onnx").is_file()
