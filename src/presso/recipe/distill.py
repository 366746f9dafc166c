"""``presso.distill``: a student from a teacher, measured like any compress result."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from presso.progress import SILENT, Progress
from presso.recipe.result import CompressionResult
from presso.recipe.run import RunSettings


def distill(
    teacher: Any,
    data: Any = None,
    *,
    student: str = "auto",
    int8: bool = False,
    settings: RunSettings | None = None,
    progress: Progress = SILENT,
    **options: Any,
) -> CompressionResult:
    """Distil a smaller ``student`` from ``teacher`` and measure it against the teacher.

    Parameters
    ----------
    teacher : nn.Module, str, Path or callable
        A PyTorch module, an ``.onnx`` file, a Hugging Face folder, a factory ``"file.py:fn"``,
        or any Python callable taking the rows (one array, or a dict for several inputs)
        and returning outputs, e.g. a fitted scikit-learn model's ``predict_proba``.
    data : path, arrays, (X, y), list of texts or Dataset
        Rows the teacher was not trained on, split into training rows for the student
        and held-out rows for every reported figure (as in :func:`presso.compress`).
    student : str
        ``"auto"`` (derived from a PyTorch teacher: ``width``, ``depth``, ``init``),
        ``"mlp"`` (``hidden``), or a factory ``"file.py:fn"`` returning an ``nn.Module``.
    int8 : bool
        Quantize the student to int8 afterwards (accuracy-aware, like the int8 recipe);
        the option ``int8_aware=True`` (train the student as ONNX Runtime's dynamic int8
        will compute it) implies it.
    settings : RunSettings, optional
        The run settings (task, max_drop, seed, ...), as for :func:`presso.compress`;
        its fields may also be given as keywords.
    **options
        Any run setting, or any option of the ``distill`` technique: ``width``, ``depth``, ``init``, ``alpha``,
        ``temperature``, ``loss``, ``hints``, ``epochs``, ``lr``, ``augment``,
        ``train_data``, ``checkpoint`` ... (``presso recipes show student`` lists them).

    Returns
    -------
    CompressionResult
        The student's ONNX file and the evidence: quality against the teacher on held-out
        rows, latency (the teacher timed as it runs: ONNX Runtime, or its own predict for a
        callable), size and parameter counts.

    Examples
    --------
    >>> import presso
    >>> ex = presso.load_example("digits")                                   # doctest: +SKIP
    >>> result = presso.distill(ex.model, ex.data, width=0.5, int8=True)     # doctest: +SKIP
    >>> result.report.compressed.parameters < result.report.baseline.parameters  # doctest: +SKIP
    True
    """
    from presso.recipe.runner import compress
    from presso.recipe.schema import Recipe, Stage

    run_fields = {f.name for f in fields(RunSettings)}
    run = RunSettings.of(settings, {k: v for k, v in options.items() if k in run_fields}, "distill")
    technique = {k: v for k, v in options.items() if k not in run_fields}
    stages = [Stage(technique="distill", options={"student": student, **technique})]
    if int8 or technique.get("int8_aware"):
        stages.append(Stage(technique="int8"))
    recipe = Recipe(name="student", description="knowledge distillation (presso.distill)", stages=stages)
    return compress(teacher, recipe, data=data, settings=run, progress=progress)
