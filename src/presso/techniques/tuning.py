"""The fine-tuning hyper-parameters a search tries for the stages that recover by training
(slim, prune, distill): one definition, so every such technique offers the same grid."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from presso.techniques.contract import Choice, Values

# The option a stage config takes for each searched hyper-parameter.
_OPTIONS = ("lr", "epochs", "temperature", "l1")


def recovery_choices(
    prefix: str,
    when: Callable[[Values], bool],
    transformer: bool,
    temperature: bool = True,
    l1: bool = False,
) -> list[Choice]:
    """Learning rate, epochs, the temperature of the recovery loss and (``l1``) an L1
    penalty toward small weights."""
    if transformer:  # an epoch of MiniLM on 192 sentences takes 30-60 s on 2 cores
        out = [
            Choice(f"{prefix}.lr", (1e-4, 2e-4, 5e-4), when, "fine-tuning learning rate"),
            Choice(f"{prefix}.epochs", (2, 4), when, "fine-tuning epochs"),
        ]
    else:
        out = [
            Choice(f"{prefix}.lr", (3e-4, 1e-3, 3e-3), when, "fine-tuning learning rate"),
            Choice(f"{prefix}.epochs", (30, 60, 120), when, "fine-tuning epochs"),
        ]
    if temperature:
        out.append(Choice(f"{prefix}.temperature", (1.0, 2.0, 4.0), when, "temperature of the recovery loss"))
    if l1 and not transformer:
        out.append(
            Choice(f"{prefix}.l1", (0.0, 1e-5, 1e-4), when, "L1 penalty on the weights while fine-tuning")
        )
    return out


def recovery_values(prefix: str, values: Values) -> dict[str, Any]:
    """The stage options of the recovery choices a trial made."""
    return {opt: values[f"{prefix}.{opt}"] for opt in _OPTIONS if f"{prefix}.{opt}" in values}
