"""A model presso can work on, whatever it was loaded from."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from presso.errors import PressoError


def first_tensor(out: Any) -> torch.Tensor:
    """The model's prediction when forward returns a tuple, list, dict or ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):  # also transformers' ModelOutput
        out = list(out.values())
    if isinstance(out, list | tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"forward returned {type(out).__name__}, not a tensor")


def output_names(out: Any) -> list[str]:
    """What ``--output`` may name in a forward's result: dict / ModelOutput keys holding a
    tensor, or tuple / list indices."""
    if isinstance(out, dict):
        return [str(k) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, list | tuple):
        return [str(i) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    return []


def select_output(out: Any, name: str | None) -> torch.Tensor:
    """The tensor named ``name`` (a key or a tuple index) of a forward's result; the first
    tensor when ``name`` is None."""
    if name is None:
        return first_tensor(out)
    available = output_names(out)
    if name not in available:
        have = (
            f"its outputs are {', '.join(available)}"
            if available
            else f"it returns a single {type(out).__name__}, not a tuple or dict"
        )
        raise PressoError(
            f"The model has no output '{name}': {have}. Pass one of those to --output, or drop it."
        )
    return out[name] if isinstance(out, dict) else out[int(name)]


class SelectedForward:
    """``forward`` of a module whose result is one of its outputs (``--output``).

    Set as the module's own ``forward`` attribute (not a wrapper module), so submodule
    names stay those of the user's model in ONNX node names, pruning and reports; a
    plain object, so deep copies and pickled checkpoints keep it.
    """

    def __init__(self, module: nn.Module, name: str | None):
        self.module = module
        self.name = name
        # The module's own signature: exporters bind inputs (and dynamic shapes) by it.
        self.__signature__ = inspect.signature(type(module).forward.__get__(module))

    def __call__(self, *args: Any) -> torch.Tensor:
        return select_output(type(self.module).forward(self.module, *args), self.name)


def with_output(module: nn.Module, name: str | None) -> nn.Module:
    """``module`` (changed in place) returning exactly the tensor ``name`` names."""
    module.forward = SelectedForward(module, name)
    return module


def count_parameters(module: nn.Module) -> int:
    """Elements of every parameter of ``module``."""
    return sum(p.numel() for p in module.parameters())


def forward_input_names(module: nn.Module) -> list[str]:
    """Names of the positional arguments of ``module.forward`` (the ONNX input names)."""
    forward = module.forward
    params = inspect.signature(forward).parameters.values()
    names = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return names or [next(iter(inspect.signature(forward).parameters))]


@dataclass
class LoadedModel:
    """A PyTorch module, an ONNX file or a Python callable, with what presso needs to feed it.

    A callable (``predict``: e.g. a scikit-learn model's ``predict_proba``) is a teacher
    only: presso cannot export or transform it, but distils a student from it.

    ``dynamic_axes`` maps input names to the axes that vary (the row axis always,
    the sequence axis for text and, once exported, for sequences that held parity at
    another length). ``tokenizer`` is set for text models. ``output`` names the forward
    output presso works on (a dict key or tuple index; a graph output of an ONNX file);
    None: the first. ``exporter`` says which ONNX exporter produced the baseline
    ("torchscript" or "dynamo"; None before an export or for an ONNX file).
    """

    name: str
    source: str
    module: nn.Module | None = None
    onnx_path: Path | None = None
    input_names: list[str] = field(default_factory=list)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    tokenizer: Any = None
    task_hint: str | None = None
    notes: list[str] = field(default_factory=list)
    # For transformer encoders: {"model_type", "num_heads", "hidden_size"}, which ONNX
    # Runtime's fusion needs (its auto-detection misses the attention of BERT exports).
    transformer: dict | None = None
    predict: Any = None  # a Python callable: one input array (or the inputs dict) -> outputs
    output: str | None = None
    exporter: str | None = None

    @property
    def kind(self) -> str:
        if self.module is not None:
            return "torch"
        return "callable" if self.predict is not None else "onnx"

    @property
    def batch_axis_is_free(self) -> bool:
        """Whether every input takes any number of rows (else the model runs row by row)."""
        return all(0 in self.dynamic_axes.get(n, {}) for n in self.input_names)

    @property
    def is_transformer(self) -> bool:
        return self.transformer is not None

    def parameter_count(self) -> int | None:
        if self.module is None:
            return None
        return count_parameters(self.module)

    @torch.no_grad()
    def run_torch(self, inputs: dict[str, np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Outputs of the PyTorch module on named numpy inputs, in batches."""
        if self.module is None:
            raise ValueError("not a PyTorch model")
        n = len(next(iter(inputs.values())))
        outs = []
        for start in range(0, n, batch_size):
            args = [
                torch.from_numpy(np.ascontiguousarray(inputs[k][start : start + batch_size]))
                for k in self.input_names
            ]
            # A module given an output name answers with that tensor (with_output).
            outs.append(first_tensor(self.module(*args)).float().numpy())
        return np.concatenate(outs)

    def predict_arg(self, inputs: dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """What ``predict`` is called with: the one input's array (what scikit-learn's
        ``predict_proba`` takes), or the dict of the model's inputs."""
        if len(self.input_names) == 1:
            return inputs[self.input_names[0]]
        return {k: inputs[k] for k in self.input_names}

    def run_callable(self, inputs: dict[str, np.ndarray], batch_size: int = 4096) -> np.ndarray:
        """Outputs of the ``predict`` callable on named numpy inputs, in batches, as float32."""
        if self.predict is None:
            raise ValueError("not a callable model")
        n = len(next(iter(inputs.values())))
        outs = []
        for start in range(0, n, batch_size):
            out = self.predict(
                self.predict_arg({k: v[start : start + batch_size] for k, v in inputs.items()})
            )
            if isinstance(out, torch.Tensor):
                out = out.detach().cpu().numpy()
            outs.append(np.asarray(out, dtype=np.float32))
        out = np.concatenate(outs)
        if out.ndim == 0 or len(out) != n:
            raise ValueError(
                f"the callable returned {out.shape[0] if out.ndim else 'a scalar'} rows for {n} inputs"
            )
        return out

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Outputs of the model, whatever its kind (ONNX files on ONNX Runtime, row by row)."""
        if self.module is not None:
            return self.run_torch(inputs)
        if self.predict is not None:
            return self.run_callable(inputs)
        from presso.runtime.session import make_session, run_session

        assert self.onnx_path is not None  # neither a module nor a callable: loaded from an ONNX file
        session = make_session(self.onnx_path)  # a file ORT refuses is named as the model's fault
        if self.output is None:
            return run_session(session, inputs, 1)
        n = len(next(iter(inputs.values())))
        feeds = ({k: inputs[k][i : i + 1] for k in self.input_names} for i in range(n))
        return np.concatenate([session.run([self.output], f)[0] for f in feeds]).astype(np.float32)
