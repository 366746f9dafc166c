"""Per-stage checkpoints of a compress run, so that an interrupted run resumes from its
last finished stage (``presso compress ... --resume``).

The folder holds ``state.json`` (what each finished stage chose, its report rows and
held-out metrics) and each finished stage's model: ``stageN.onnx`` and, for stages that
train the PyTorch model, ``stageN.pt`` (the whole module, pickled: its architecture
changes as channels, layers or ranks are removed, so a state dict alone cannot rebuild
it). Only presso writes these files and ``--resume`` is the user's explicit request to
load them. ``state.json`` is replaced atomically after the stage's files are written, so
a kill at any moment leaves either the previous state or the new one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from presso.errors import PressoError
from presso.files import atomic_path, write_text_atomic
from presso.report.schema import StageReport
from presso.runtime.onnx_files import copy_onnx

FORMAT = 2  # 2: each stage's pickled module is recorded with its sha256


@dataclass
class StageOutcome:
    """What one stage left behind: the model it chose (or none, when skipped) and its report."""

    technique: str
    report: StageReport  # the stage's entry in report.stages
    path: Path | None  # the chosen ONNX model; None when the stage was skipped
    module: Any = None  # torch stages: the trained nn.Module the ONNX file was exported from
    metrics: dict | None = None  # held-out metrics of the chosen model
    pinned: dict | None = None  # the recipe stage pinned to the chosen variant (recipe.yaml)
    notes: list[str] = field(default_factory=list)
    transformer: dict | None = None  # heads / hidden size after the stage (slim and distill change them)
    sparse: bool = False  # the technique leaves zero weights (stored as a bitmask + values at the end)

    @property
    def skipped(self) -> bool:
        return self.path is None


def run_fingerprint(recipe_json: str, settings: dict, arrays: list[np.ndarray]) -> str:
    """A digest of everything that decides a run's stages: the recipe, the settings, the
    rows and the original model's outputs on them (a changed model changes those)."""
    h = hashlib.sha256(recipe_json.encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


class RunCheckpoint:
    """The checkpoint folder of one run."""

    def __init__(self, folder: Path, fingerprint: str, stages: list[dict]):
        self.folder, self.fingerprint, self.stages = folder, fingerprint, stages

    @classmethod
    def open(cls, folder: str | Path, fingerprint: str, resume: bool) -> RunCheckpoint:
        """The checkpoint at ``folder``: a new one, or (with ``resume``) the one an
        interrupted run of the same model, data, recipe and settings left there."""
        folder = Path(folder)
        state_file = folder / "state.json"
        if state_file.is_file():
            if not resume:
                raise PressoError(
                    f"An unfinished run left a checkpoint at '{folder}'. Add --resume to continue "
                    "it from its last finished stage, or delete that folder to start over."
                )
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError) as exc:
                raise PressoError(
                    f"The checkpoint '{state_file}' cannot be read ({exc}); delete '{folder}' to start over."
                ) from None
            if state.get("format") != FORMAT or state.get("fingerprint") != fingerprint:
                raise PressoError(
                    f"The checkpoint at '{folder}' was written by a different run (the model, "
                    "data, recipe or settings differ). Run the same command as before, or "
                    "delete that folder to start over."
                )
            return cls(folder, fingerprint, state["stages"])
        if folder.exists() and any(folder.iterdir()):
            raise PressoError(f"'{folder}' exists and is not a presso checkpoint; move it away.")
        return cls(folder, fingerprint, [])  # the folder appears with the first finished stage

    @property
    def finished(self) -> int:
        """How many stages (from the first) are done."""
        return len(self.stages)

    def save(self, index: int, outcome: StageOutcome) -> None:
        """Record stage ``index`` (1-based; stages finish in order) as done."""
        self.folder.mkdir(parents=True, exist_ok=True)
        entry: dict[str, Any] = {  # one stage's record in state.json
            "technique": outcome.technique,
            "report": outcome.report.model_dump(),
            "metrics": outcome.metrics,
            "pinned": outcome.pinned,
            "notes": outcome.notes,
            "transformer": outcome.transformer,
            "sparse": outcome.sparse,
            "model": None,
            "module": None,
        }
        if outcome.path is not None:
            entry["model"] = f"stage{index}.onnx"
            copy_onnx(outcome.path, self.folder / entry["model"])
        if outcome.module is not None:
            import torch

            entry["module"] = f"stage{index}.pt"
            with atomic_path(self.folder / entry["module"]) as tmp:
                torch.save(outcome.module, tmp)
            entry["module_sha256"] = _sha256(self.folder / entry["module"])
        self.stages = self.stages[: index - 1] + [entry]
        self._write_state()

    def restore(self, index: int, workdir: Path) -> StageOutcome:
        """Stage ``index`` as it finished, its model copied into ``workdir``."""
        entry = self.stages[index - 1]
        path = module = None
        if entry["model"]:
            path = workdir / f"stage{index}-{entry['technique']}-restored.onnx"
            copy_onnx(self.folder / f"stage{index}.onnx", path)  # never a name state.json gives
        if entry["module"]:
            import torch

            # presso's own file, loaded on the user's --resume (see the module docstring):
            # only under the name this stage gives it, in this folder, and only when its bytes
            # are those recorded when it was written (a file put there since is not unpickled).
            file = self.folder / f"stage{index}.pt"
            if entry["module"] != file.name or entry.get("module_sha256") != _sha256(file):
                raise PressoError(
                    f"The checkpoint file '{file}' is not the one this run wrote; delete "
                    f"'{self.folder}' to start over."
                )
            module = torch.load(file, weights_only=False)
        report = StageReport(**{**entry["report"], "resumed": True})
        return StageOutcome(
            entry["technique"],
            report,
            path,
            module,
            entry["metrics"],
            entry["pinned"],
            entry["notes"],
            entry["transformer"],
            entry.get("sparse", False),
        )

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _write_state(self) -> None:
        write_text_atomic(
            self.folder / "state.json",
            json.dumps(
                {"format": FORMAT, "fingerprint": self.fingerprint, "stages": self.stages},
                indent=1,
                default=str,
            ),
        )


def _sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None
