"""Files that let :func:`presso.train.fit` go on after an interruption, and the atomic
``torch.save`` they (and the examples' weight cache) are written with."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from presso.errors import PressoError
from presso.files import atomic_path

FORMAT = "presso.fit-checkpoint/1"


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic, so a crash or Ctrl-C while writing leaves the previous file
    whole rather than a truncated one that cannot be read.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def fingerprint_of(module: nn.Module, settings, train_rows: int, val_rows: int | None) -> dict:
    """What must match for a checkpoint to belong to this fit (taken before any hook runs)."""
    return {
        "settings": dataclasses.asdict(settings),
        "train_rows": train_rows,
        "val_rows": val_rows,
        "parameters": [[name, list(p.shape)] for name, p in module.named_parameters()],
    }


def _load(path: Path, fix: str) -> dict:
    try:  # tensors, numbers, strings, lists and dicts only: no code runs while loading
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PressoError(f"The checkpoint {path} does not exist; {fix}.") from None
    except Exception as e:
        raise PressoError(f"The checkpoint {path} could not be read ({type(e).__name__}); {fix}.") from e
    if not (isinstance(ckpt, dict) and ckpt.get("format") == FORMAT):
        raise PressoError(f"The file {path} is not a presso fine-tuning checkpoint; {fix}.")
    return ckpt


def trained_weights(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The best weights a fit's checkpoint holds (its last ones when it validated nothing),
    and the epochs it had run: to start a new fit from, whatever that fit's settings were."""
    ckpt = _load(path, "give the .student.pt or .checkpoint.pt file an earlier run wrote")
    state = ckpt.get("best_state") or ckpt.get("module")
    if not isinstance(state, dict) or not state:
        raise PressoError(f"The checkpoint {path} holds no weights; give one an earlier run wrote.")
    return state, int(ckpt.get("epoch", 0))


def read_checkpoint(path: Path, fingerprint: dict) -> dict:
    """The checkpoint at ``path``, refused unless it was written by a fit like this one."""
    fix = "delete it or pick another checkpoint path"
    ckpt = _load(path, fix)
    saved = ckpt.get("fingerprint", {})
    for key, what in (
        ("settings", "fine-tuning settings"),
        ("train_rows", "number of training rows"),
        ("val_rows", "number of validation rows"),
        ("parameters", "parameter names or shapes"),
    ):
        if saved.get(key) != fingerprint[key]:
            raise PressoError(
                f"The checkpoint {path} is from another fine-tuning run (the {what} differ); {fix}."
            )
    return ckpt
