"""The order a recipe's stages may run in, checked against the model before any slow work."""

from __future__ import annotations

from presso.errors import PressoError
from presso.model.loaded import LoadedModel
from presso.recipe.schema import Recipe


def check_stage_order(recipe: Recipe, stages: list, loaded: LoadedModel) -> None:
    """Stages that train the PyTorch model need one, and must run before ONNX stages;
    storage stages come last, after at least one stage that changes the model."""
    storage = [i for i, (t, _) in enumerate(stages, 1) if t.domain == "storage"]
    if storage and (storage[0] == 1 or storage[-1] != len(stages) or len(storage) > 1):
        i = storage[0] if storage[0] == 1 or len(storage) > 1 else storage[-1]
        raise PressoError(
            f"Recipe '{recipe.name}' stage {i} '{stages[i - 1][0].name}' stores the final model, "
            "so it must be the last stage, once, after a stage that compresses the model "
            "(or pass --packed to any recipe)."
        )
    torch_stages = [(i, t.name) for i, (t, _) in enumerate(stages, 1) if t.domain == "torch"]
    if loaded.kind != "torch":
        # A student with its own architecture (distill: student mlp / a factory) can learn from
        # an ONNX file or a callable; every stage after it works on that student.
        config = stages[0][1] if stages else None
        needs_module = getattr(config, "needs_teacher_module", None)  # None: not a distill stage
        what = "an ONNX file" if loaded.kind == "onnx" else "a Python callable"
        if needs_module:
            raise PressoError(
                f"Recipe '{recipe.name}' stage 1 '{stages[0][0].name}': student: auto derives the student "
                f"from the teacher's PyTorch architecture, and this teacher is {what}. Use "
                "student: mlp (flat rows) or your own student factory file.py:fn."
            )
        if needs_module is None and loaded.kind == "callable":
            raise PressoError(
                f"Recipe '{recipe.name}' cannot start from {what}: presso can only distil a "
                "student from it. Use a recipe whose first stage is distill with student: mlp "
                "or a factory (e.g. presso distill MODEL --student mlp)."
            )
        if needs_module is None and torch_stages:
            i, name = torch_stages[0]
            raise PressoError(
                f"Recipe '{recipe.name}' stage {i} '{name}' trains the PyTorch model; it needs "
                "a PyTorch model or Hugging Face folder, not an ONNX file (or a distill stage "
                "first with student: mlp or a factory)."
            )
    first_onnx = next((i for i, (t, _) in enumerate(stages, 1) if t.domain == "onnx"), None)
    late = [(i, n) for i, n in torch_stages if first_onnx is not None and i > first_onnx]
    if late and first_onnx is not None:  # late is empty without an ONNX stage
        i, name = late[0]
        raise PressoError(
            f"Recipe '{recipe.name}' stage {i} '{name}' trains the PyTorch model, so it must "
            f"come before stage {first_onnx} '{stages[first_onnx - 1][0].name}', which works "
            "on the exported ONNX graph. Reorder the stages."
        )
