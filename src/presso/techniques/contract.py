"""The technique contract: what a technique declares, and the decorator that registers it.

A technique is a typed config (a pydantic model: the options a recipe stage may set) and
one stage function, registered next to its code::

    @technique("int8", config=Int8Config, domain="onnx", summary="...", search=INT8_SEARCH)
    def quantize_int8(model: Path, cfg: Int8Config, ctx: StageContext) -> StageResult: ...

The domain says what the stage function works on:

- ``"torch"``: trains the PyTorch model (``ctx.module``, a copy) and returns candidates that
  carry the trained module and its checked ONNX export;
- ``"onnx"``: rewrites the current ONNX graph (``model``) into candidate files;
- ``"storage"``: how the final model's weights are stored (runs after every other stage;
  see :mod:`presso.techniques.storage`).

A technique that should join ``presso search`` also declares its :class:`SearchEntry`: its
own choices and how chosen values become the stage's options. The search builds its space
from the registry, so a new technique needs no edit anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel

from presso.errors import PressoError
from presso.techniques.base import StageContext, StageResult

Domain = Literal["torch", "onnx", "storage"]
# Where a technique sits in a searched pipeline: at most one structural change (slim or a
# student), then any optional stages (on/off each), then at most one weights format.
Slot = Literal["structure", "optional", "weights"]
# Model kinds the search tells apart: a PyTorch module, a transformer encoder (PyTorch), an
# ONNX file (nothing to train) or a Python callable (only a student can learn from it).
ModelKind = Literal["torch", "transformer", "onnx", "callable"]
Values = dict[str, Any]  # the values a search trial chose, by choice name


class StageFunction(Protocol):
    """A model-changing stage: the current model (an ONNX file; ``None`` before the first
    export of a callable teacher), the stage's validated config, the run's context."""

    def __call__(self, model: Path | None, cfg: Any, ctx: StageContext, /) -> StageResult: ...


def _always(values: Values) -> bool:
    return True


@dataclass(frozen=True)
class Choice:
    """One categorical choice of a search trial; it exists only when ``when`` holds for
    the values chosen before it (a slim ratio only if the trial slims)."""

    name: str
    values: tuple
    when: Callable[[Values], bool] = _always
    describe: str = ""


@dataclass(frozen=True)
class SpaceModel:
    """What a technique's search choices may depend on: the model's kind and facts about it."""

    kind: ModelKind
    module: Any = None  # the PyTorch module (torch / transformer kinds)
    layers: tuple[str, ...] = ()  # factorizable layers that get their own on/off choice
    onnx_nodes: tuple[str, ...] = ()  # ONNX layers that get their own keep-float choice


@dataclass(frozen=True)
class SearchEntry:
    """How a technique joins ``presso search``.

    ``choices(model, on)`` returns the technique's own choices, each gated by ``on`` (the
    trial uses this technique); ``options(values, model)`` turns a trial's values into the
    stage's options (``None``: no stage after all); ``describe(options)`` is the stage in a
    few words for tables ("ratio 0.65")."""

    family: str  # its name in --techniques (the technique's name unless they differ)
    slot: Slot
    kinds: frozenset[str]  # ModelKind values it applies to
    order: int  # position in the pipeline within and across slots (lower runs first)
    choices: Callable[[SpaceModel, Callable[[Values], bool]], list[Choice]]
    options: Callable[[Values, SpaceModel], dict[str, Any] | None]
    describe: Callable[[dict[str, Any]], str]
    summary: str = ""  # the on/off choice's description (optional slot)
    excludes: tuple[str, ...] = ()  # optional slot: families it never runs together with
    stage_optional: bool = False  # the stage is skipped (not failed) when nothing fits the budget


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[BaseModel]
    domain: Domain
    summary: str
    run: Callable[..., Any]  # a StageFunction; storage techniques take a StorageContext
    sparse: bool = False  # leaves zero weights: the run stores them as a bitmask + values at the end
    search: SearchEntry | None = None


# name -> Technique, in registration order; filled by @technique as modules are imported.
# presso.techniques.registry imports the built-in modules (and plugins) before reading it.
REGISTERED: dict[str, Technique] = {}


def technique(
    name: str,
    *,
    config: type[BaseModel],
    domain: Domain,
    summary: str,
    sparse: bool = False,
    search: SearchEntry | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated stage function as technique ``name`` (see the module doc)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        known = REGISTERED.get(name)
        if known is not None and known.run is not fn:
            raise PressoError(
                f"Technique '{name}' is registered twice ({known.run.__module__} and {fn.__module__})."
            )
        REGISTERED[name] = Technique(name, config, domain, summary, fn, sparse, search)
        return fn

    return register


def unregister(name: str) -> None:
    """Remove a technique (tests that register a temporary one clean up with this)."""
    REGISTERED.pop(name, None)
