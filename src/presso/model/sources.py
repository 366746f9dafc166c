"""Turn what the user gave (module, factory, HF folder, ONNX file) into a LoadedModel."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from torch import nn

from presso.errors import PressoError, reason
from presso.model.loaded import LoadedModel, forward_input_names, with_output

_HOW = (
    "Give an .onnx file, a Hugging Face model folder (with config.json), "
    "or a factory 'path/to/file.py:function' / 'package.module:function'."
)
_CALLABLE_NOTE = (
    "a Python callable is a teacher only: presso times it and distils a student from it, "
    "but cannot export or transform it"
)


def load_model(model: Any, weights: str | Path | None = None, output: str | None = None) -> LoadedModel:
    """Load ``model`` from any source presso supports.

    The user's module is deep-copied, so presso never mutates it. ``output`` names the
    output presso works on when forward returns several (a dict / ModelOutput key or a
    tuple index; for an ONNX file, a graph output name); None takes the first.
    """
    if isinstance(model, LoadedModel):
        return model
    loaded = (
        _load_spec(str(model), weights) if isinstance(model, str | Path) else _load_object(model, weights)
    )
    if output is not None:
        _choose_output(loaded, output)
    return loaded


def _choose_output(loaded: LoadedModel, output: str) -> None:
    """Make ``loaded`` answer with its output ``output``: a module's forward returns that
    tensor (checked when it first runs), an ONNX file's graph output is checked now."""
    if loaded.module is not None:
        with_output(loaded.module, output)
    elif loaded.onnx_path is not None:
        from presso.model.onnx_file import graph_output_names

        names = graph_output_names(loaded.onnx_path)
        if output not in names:
            raise PressoError(
                f"'{loaded.onnx_path.name}' has no output '{output}': its outputs are "
                f"{', '.join(names)}. Pass one of those to --output, or drop it."
            )
    else:
        raise PressoError(
            "--output applies to PyTorch modules and ONNX files; a callable returns one output."
        )
    loaded.output = output


def _load_object(model: Any, weights: str | Path | None) -> LoadedModel:
    """A model given as a Python object: an nn.Module (copied) or a callable teacher."""
    if isinstance(model, nn.Module):
        if weights is not None:
            raise PressoError("weights= applies to factories only; load them into your module.")
        return from_module(copy.deepcopy(model), name=type(model).__name__, source="nn.Module")
    if callable(model):
        if weights is not None:
            raise PressoError("weights= applies to factories only; a callable carries its own model.")
        return from_callable(model, name=_callable_name(model), source="Python callable")
    raise PressoError(f"Cannot use a {type(model).__name__} as a model. {_HOW}")


def _load_spec(spec: str, weights: str | Path | None) -> LoadedModel:
    """A model named by a string or path: an ONNX file, a model folder or a factory."""
    path = Path(spec)
    if path.suffix == ".onnx":
        if weights is not None:
            raise PressoError("--weights applies to factories only; an ONNX file has its weights.")
        from presso.model.onnx_file import load_onnx

        return load_onnx(path)
    if path.is_dir():
        if weights is not None:
            raise PressoError("--weights applies to factories only; a model folder has its weights.")
        from presso.model.huggingface import load_hf_folder

        return load_hf_folder(path)
    if ":" in spec and not path.exists():
        return load_factory(spec, weights)
    if path.exists():
        raise PressoError(f"Cannot load model '{spec}': unsupported kind of file. {_HOW}")
    raise PressoError(f"Model '{spec}' not found. {_HOW}")


def from_module(module: nn.Module, name: str, source: str) -> LoadedModel:
    module.eval()
    names = forward_input_names(module)
    return LoadedModel(
        name=name,
        source=source,
        module=module,
        input_names=names,
        dynamic_axes={n: {0: "batch"} for n in names},
    )


def _callable_name(fn) -> str:
    owner = getattr(fn, "__self__", None)
    if owner is not None:
        return f"{type(owner).__name__}.{getattr(fn, '__name__', 'predict')}"
    return getattr(fn, "__name__", type(fn).__name__)


def from_callable(fn, name: str, source: str, input_names: list[str] | None = None) -> LoadedModel:
    """A teacher that is any Python callable: one input array (rows first) -> outputs."""
    names = input_names or ["x"]
    return LoadedModel(
        name=name,
        source=source,
        predict=fn,
        input_names=names,
        dynamic_axes={n: {0: "batch"} for n in names},
        notes=[_CALLABLE_NOTE],
    )


def _import_factory(spec: str):
    target, _, fn_name = spec.rpartition(":")
    if not target or not fn_name:
        raise PressoError(f"Factory '{spec}' must look like 'file.py:function' or 'pkg.module:function'.")
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise PressoError(f"Factory file '{target}' not found. {_HOW}")
        mod_name = f"presso_user_factory_{abs(hash(str(file.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, file)
        # A path ending in .py always gets a spec with a source loader (None is for other suffixes).
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module  # dataclasses and pickling look modules up here
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise PressoError(f"Importing '{target}' failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise PressoError(f"Cannot import module '{target}' of factory '{spec}': {exc}") from exc
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise PressoError(f"'{target}' has no function '{fn_name}'. Check the name after ':'.")
    return fn


def load_factory(spec: str, weights: str | Path | None) -> LoadedModel:
    fn = _import_factory(spec)
    try:
        module = fn()
    except Exception as exc:
        raise PressoError(f"Factory '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, nn.Module) and callable(module):
        if weights is not None:
            raise PressoError(
                f"--weights applies to factories returning an nn.Module; '{spec}' returned a "
                f"{type(module).__name__}, which carries its own model."
            )
        return from_callable(module, name=_callable_name(module), source=f"callable from factory {spec}")
    if not isinstance(module, nn.Module):
        raise PressoError(
            f"Factory '{spec}' returned a {type(module).__name__}; it must return a torch.nn.Module "
            "(or, as a distillation teacher, a callable such as a fitted model's predict_proba)."
        )
    if weights is not None:
        load_weights(module, Path(weights))
    return from_module(module, name=spec.rpartition(":")[2], source=f"factory {spec}")


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a state dict from .pt/.pth (weights only, never unpickling code) or .safetensors."""
    if not path.is_file():
        raise PressoError(f"Weights file '{path}' not found.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            import torch

            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PressoError(
            f"Cannot read weights '{path}': {type(exc).__name__}: {reason(exc)}. "
            "Give a state dict saved with torch.save(model.state_dict(), ...) or a .safetensors file."
        ) from exc
    if not isinstance(state, dict):
        raise PressoError(f"Weights '{path}' hold a {type(state).__name__}, not a state dict.")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).split("\n\t")[0:2]
        raise PressoError(
            f"Weights '{path}' do not fit the model: {' '.join(s.strip() for s in first)}"
        ) from exc
