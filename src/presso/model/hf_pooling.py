"""Sentence pooling as a folder defines it, read from sentence-transformers' files.

A folder saved by sentence-transformers lists its modules in ``modules.json``: the
Transformer, a Pooling module (``1_Pooling/config.json``), optionally ``Dense`` projections
and a ``Normalize``. :func:`read_pooling` turns that list into a :class:`SentencePooling`
module, so the exported graph returns exactly what ``SentenceTransformer(folder).encode``
returns. A folder without ``modules.json`` is mean-pooled, as sentence-transformers itself
does with a plain Hugging Face folder.

Every mode masks padded tokens, so presso's fixed-length padding gives the same embeddings
as sentence-transformers' padding to the longest text of a batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from presso.errors import PressoError, reason

# sentence-transformers' order of concatenation when a config enables several modes.
MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_ST = "sentence_transformers."


def _pool(mode: str, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One pooling mode over ``hidden`` (B, T, C), with ``attention_mask`` (B, T) -> (B, C)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if mode == "cls":  # the first unmasked token (the first token unless padded on the left)
        first = attention_mask.to(hidden.dtype).argmax(dim=1)  # (B,)
        return torch.gather(hidden, 1, first.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
    if mode == "max":
        return hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
    if mode in ("mean", "mean_sqrt_len_tokens"):
        count = mask.sum(dim=1).clamp(min=1e-9)  # (B, 1)
        return (hidden * mask).sum(dim=1) / (count if mode == "mean" else count.sqrt())
    if mode == "weightedmean":  # weight i+1 for the i-th unmasked token
        steps = torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype).view(1, -1, 1)  # (1, T, 1)
        left_pad = attention_mask.to(hidden.dtype).argmax(dim=1).view(-1, 1, 1)  # (B, 1, 1)
        weighted = mask * (steps - left_pad)
        return (hidden * weighted).sum(dim=1) / weighted.sum(dim=1).clamp(min=1e-9)
    if mode == "lasttoken":  # the last unmasked token
        last = attention_mask.shape[1] - 1 - attention_mask.to(hidden.dtype).flip(1).argmax(dim=1)  # (B,)
        return torch.gather(hidden * mask, 1, last.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
    raise ValueError(f"unknown pooling mode {mode!r}")


class SentencePooling(nn.Module):
    """Token states (B, T, C) and the attention mask -> one embedding per row."""

    def __init__(
        self, modes: tuple[str, ...] = ("mean",), dense: list[nn.Module] | None = None, normalize=False
    ):
        super().__init__()
        self.modes, self.normalize = tuple(modes), normalize
        self.dense = nn.ModuleList(dense or [])

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = torch.cat([_pool(m, hidden, attention_mask) for m in self.modes], dim=-1)
        for layer in self.dense:
            out = layer(out)
        return F.normalize(out, p=2, dim=-1) if self.normalize else out

    def describe(self) -> str:
        parts = ["+".join(self.modes) + " pooling"]
        linears = [m for d in self.dense for m in d.modules() if isinstance(m, nn.Linear)]
        parts += [f"dense {m.in_features}->{m.out_features}" for m in linears]
        return ", ".join(parts + (["L2-normalised"] if self.normalize else []))


@dataclass
class FolderLayout:
    """Where the transformer sits in a folder and how its token states are pooled."""

    transformer: Path
    pooling: SentencePooling = field(default_factory=SentencePooling)
    from_modules_json: bool = False


def read_pooling(folder: Path) -> FolderLayout:
    """The folder's sentence-transformers modules, or plain mean pooling without modules.json."""
    listing = folder / "modules.json"
    if not listing.is_file():
        return FolderLayout(folder)
    modules = _read_json(listing)
    if not isinstance(modules, list):
        raise PressoError(
            f"'{listing}' is not a list of modules. Save the folder with SentenceTransformer.save()."
        )
    transformer, modes, dense, normalize = None, None, [], False
    for entry in sorted(modules, key=lambda m: m.get("idx", 0)):
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        where = folder / entry.get("path", "")
        if kind == "Transformer":
            transformer = where
        elif kind == "Pooling":
            modes = _pooling_modes(where / "config.json")
        elif kind == "Dense":
            dense.append(_dense(where))
        elif kind == "Normalize":
            normalize = True
        else:
            raise PressoError(
                f"'{listing}' lists a {entry.get('type')} module, which presso cannot export. "
                "presso supports Transformer, Pooling, Dense and Normalize modules."
            )
    if transformer is None or modes is None:
        raise PressoError(
            f"'{listing}' has no {'Transformer' if transformer is None else 'Pooling'} module. "
            "presso needs a Transformer followed by a Pooling module."
        )
    return FolderLayout(transformer, SentencePooling(modes, dense, normalize), from_modules_json=True)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PressoError(f"Cannot read '{path}' ({type(exc).__name__}). Save the folder again.") from None


def _pooling_modes(path: Path) -> tuple[str, ...]:
    config = _read_json(path) if path.is_file() else {}
    if "pooling_mode" in config:  # newer sentence-transformers saves the mode names themselves
        given = config["pooling_mode"]
        modes = tuple([given] if isinstance(given, str) else given)
        modes = tuple("mean_sqrt_len_tokens" if m == "mean_sqrt_len" else m for m in modes)
    else:
        modes = tuple(mode for key, mode in MODES.items() if config.get(key))
    unknown = [m for m in modes if m not in MODES.values()]
    if unknown:
        raise PressoError(
            f"'{path}' asks for pooling mode {unknown[0]!r}, which presso does not know. "
            f"presso pools with {', '.join(MODES.values())}."
        )
    if config.get("include_prompt") is False:
        raise PressoError(
            f"'{path}' pools without the prompt tokens (include_prompt: false), which presso cannot export. "
            "Use a folder whose Pooling module includes the prompt."
        )
    return modes or ("mean",)  # sentence-transformers' default when no mode is set


def _dense(where: Path) -> nn.Module:
    """A Dense module: a linear layer and a torch.nn activation, with its saved weights."""
    config = _read_json(where / "config.json")
    if (
        config.get("use_residual")
        or config.get("module_input_name", "sentence_embedding") != "sentence_embedding"
    ):
        raise PressoError(
            f"'{where}' is a Dense module with a residual or a custom input, which presso cannot export. "
            "presso supports plain Dense projections of the sentence embedding."
        )
    activation_name = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    activation = getattr(nn, activation_name.rsplit(".", 1)[-1], None)
    if not activation_name.startswith("torch.") or activation is None:
        raise PressoError(
            f"'{where}' uses activation {activation_name}, which presso does not load. "
            "presso supports torch.nn activations (Tanh, Identity, ReLU, GELU...)."
        )
    linear = nn.Linear(
        int(config["in_features"]), int(config["out_features"]), bias=bool(config.get("bias", True))
    )
    state = _dense_weights(where)
    try:
        linear.load_state_dict(
            {k.removeprefix("linear."): v for k, v in state.items() if k.startswith("linear.")}
        )
    except RuntimeError as exc:
        raise PressoError(f"The weights in '{where}' do not match its config.json: {reason(exc)}") from None
    return nn.Sequential(linear, activation())


def _dense_weights(where: Path) -> dict[str, torch.Tensor]:
    if (where / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(where / "model.safetensors"))
    if (where / "pytorch_model.bin").is_file():
        return torch.load(str(where / "pytorch_model.bin"), map_location="cpu", weights_only=True)
    raise PressoError(f"'{where}' has no model.safetensors or pytorch_model.bin. Save the folder again.")
