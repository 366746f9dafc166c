"""Knowledge-distillation losses: soft targets, Hinton's mix, regression, cosine, feature hints.

Hinton et al. (2015) train a student on a mix of the labels and the teacher's tempered
distribution::

    loss = (1 - alpha) * CE(s, y) + alpha * T**2 * KL(softmax(t / T) || softmax(s / T))

with student logits ``s``, teacher logits ``t``, labels ``y`` and temperature ``T``. A higher
``T`` shows the student more of the teacher's "dark knowledge" (how it ranks the wrong
classes); the ``T**2`` keeps gradient sizes comparable across temperatures. Teachers with
continuous outputs (forecasters, autoencoders, embedding models) use :func:`regression_loss`
or :func:`cosine_loss`; embedding models also :func:`similarity_loss`, which keeps the
teacher's neighbourhoods within a batch; :class:`HintLoss` with :class:`FeatureTap` matches intermediate
features (FitNets, Romero et al. 2015).

Every loss takes batch-first tensors and returns a scalar tensor. The teacher is a fixed
target: its tensors are detached, so gradients reach the student (and a hint projection) only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from presso.errors import PressoError
from presso.model.loaded import first_tensor

__all__ = [
    "FeatureTap",
    "HintLoss",
    "cosine_loss",
    "hinton_loss",
    "looks_like_probabilities",
    "regression_loss",
    "similarity_loss",
    "soft_target_loss",
    "teacher_logits_from",
]

_MIN_PROB = 1e-7  # probabilities are clamped here before the log: log(0) would be -inf
_PROB_TOL = 1e-4


def finite_number(v) -> bool:
    """A real, finite number that is not a bool (option checks here and in :mod:`presso.train.loop`)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def check_temperature(temperature) -> float:
    if not (finite_number(temperature) and temperature > 0):
        raise PressoError(f"The 'temperature' option must be a positive number. Got {temperature!r} instead.")
    return float(temperature)


def loss_kind(task: str) -> str:
    """The teacher loss a task uses: ``kl`` (soft targets) for classification, ``cosine``
    for embeddings, ``mse`` for regression, forecasts and reconstructions."""
    return {"classification": "kl", "embedding": "cosine"}.get(task, "mse")


def _student(x, name: str) -> Tensor:
    if not (isinstance(x, Tensor) and x.is_floating_point()):
        what = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
        raise PressoError(
            f"The '{name}' must be a floating-point tensor (the student's raw outputs); got {what}."
        )
    return x


def _teacher(t, s: Tensor, name: str, student_name: str) -> Tensor:
    """``t`` as a detached tensor shaped and typed like the student output ``s``."""
    t = torch.as_tensor(t, device=s.device)
    if not t.is_floating_point():
        raise PressoError(
            f"The '{name}' are integers; for labels use torch.nn.functional.cross_entropy, "
            "or hinton_loss(labels=...) beside a teacher's raw (float) outputs."
        )
    if t.numel() != s.numel():
        raise PressoError(
            f"The '{name}' have shape {tuple(t.shape)} but the '{student_name}' have "
            f"{tuple(s.shape)}; give teacher outputs of the same shape as the student's."
        )
    return t.detach().reshape(s.shape).to(s.dtype)


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """``T**2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, mean over rows.

    Computed in log space (no ``log(0)``). Classes are on the last axis; any leading axes
    are rows, so ``(N, T, C)`` sequence logits give a mean per token.

    Parameters
    ----------
    student_logits : Tensor, shape (N, ..., C)
    teacher_logits : Tensor or array, same number of elements
        Logits; turn a scikit-learn teacher's probabilities into log-probabilities with
        :func:`teacher_logits_from` first. Detached (a fixed target).
    temperature : float
        ``T > 0``; 1 compares the plain distributions.

    Returns
    -------
    Tensor
        Scalar, 0 when the student's logits equal the teacher's.

    Examples
    --------
    >>> import torch
    >>> s, t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]])
    >>> round(float(soft_target_loss(s, t, temperature=2.0)), 4)
    1.2806
    >>> float(soft_target_loss(s, s, temperature=2.0))
    0.0
    """
    temp = check_temperature(temperature)
    s = _student(student_logits, "student_logits")
    t = _teacher(teacher_logits, s, "teacher_logits", "student_logits")
    classes = s.shape[-1] if s.ndim else 1
    s, t = s.reshape(-1, classes), t.reshape(-1, classes)  # (rows, C)
    kl = F.kl_div(
        F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), reduction="batchmean", log_target=True
    )
    return kl * (temp * temp)


def _cross_entropy(s: Tensor, labels) -> Tensor:
    classes = s.shape[-1] if s.ndim else 1
    s = s.reshape(-1, classes)  # (rows, C)
    y = torch.as_tensor(labels, device=s.device)
    if y.is_floating_point() and not torch.all(y == y.round()):
        raise PressoError(
            "The 'labels' must be class indices (integers); got fractional values. "
            "Give one class index per row, not probabilities."
        )
    y = y.reshape(-1).long()
    if len(y) != len(s):
        raise PressoError(
            f"The 'labels' have {len(y)} values but the logits have {len(s)} rows; "
            "give one class index per row."
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise PressoError(
            f"The 'labels' must be class indices in [0, {classes}); got values from "
            f"{int(y.min())} to {int(y.max())}."
        )
    return F.cross_entropy(s, y)


def hinton_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> Tensor:
    """``(1 - alpha) * CE(s, labels) + alpha * soft_target_loss(s, t, temperature)``.

    Parameters
    ----------
    student_logits : Tensor, shape (N, ..., C)
    teacher_logits : Tensor or array, same number of elements
    labels : Tensor of class indices, one per row, optional
        Needed unless ``alpha`` is 1. Float tensors holding whole numbers are accepted.
    temperature : float
        ``T > 0`` of the soft-target term.
    alpha : float in [0, 1]
        Weight of the teacher. The term whose weight is 0 is not computed: ``alpha=0`` is
        exactly the cross-entropy, ``alpha=1`` exactly :func:`soft_target_loss`.

    Examples
    --------
    >>> import torch
    >>> s, t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]])
    >>> round(float(hinton_loss(s, t, torch.tensor([2]), temperature=2.0, alpha=0.5)), 4)
    0.8441
    >>> round(float(hinton_loss(s, t, temperature=2.0, alpha=1.0)), 4)
    1.2806
    """
    if not (finite_number(alpha) and 0 <= alpha <= 1):
        raise PressoError(
            f"The 'alpha' option must be a number in [0, 1] (the teacher's weight). Got {alpha!r} instead."
        )
    temp = check_temperature(temperature)
    s = _student(student_logits, "student_logits")
    if alpha < 1 and labels is None:
        raise PressoError(f"hinton_loss with alpha {alpha} needs labels; give labels or set alpha: 1.")
    if alpha == 1:
        return soft_target_loss(s, teacher_logits, temp)
    ce = _cross_entropy(s, labels)
    if alpha == 0:
        return ce
    return (1 - alpha) * ce + alpha * soft_target_loss(s, teacher_logits, temp)


def looks_like_probabilities(outputs: Tensor | np.ndarray) -> bool:
    """True when ``outputs`` are class probabilities: float, at least 2 classes on the last
    axis, no negatives, each row summing to 1 within 1e-4 (``predict_proba`` of scikit-learn).

    Examples
    --------
    >>> import numpy as np
    >>> looks_like_probabilities(np.array([[0.2, 0.8], [1.0, 0.0]]))
    True
    >>> looks_like_probabilities(np.array([[2.0, -1.0]]))
    False
    """
    if not isinstance(outputs, Tensor):
        outputs = np.asarray(outputs)
        if outputs.dtype.kind != "f":
            return False
    x = torch.as_tensor(outputs)
    if not x.is_floating_point() or x.ndim == 0 or x.shape[-1] < 2 or x.numel() == 0:
        return False
    x = x.detach().double()
    return bool(
        torch.all(torch.isfinite(x)) and torch.all(x >= 0) and torch.all((x.sum(-1) - 1).abs() <= _PROB_TOL)
    )


def teacher_logits_from(outputs: Tensor | np.ndarray) -> Tensor:
    """A teacher's outputs as logits for :func:`soft_target_loss`.

    Probabilities (see :func:`looks_like_probabilities`) become log-probabilities, with
    probabilities clamped at 1e-7 so that zeros stay finite. That is all soft targets need:
    ``softmax(log(p) / T)`` is ``p ** (1/T)`` renormalised, the teacher's distribution at
    temperature ``T`` (and ``p`` itself at ``T = 1``). Anything else counts as logits and is
    returned unchanged (as a tensor).

    Examples
    --------
    >>> import torch
    >>> p = torch.tensor([[0.25, 0.75]])
    >>> torch.softmax(teacher_logits_from(p), -1)
    tensor([[0.2500, 0.7500]])
    """
    x = outputs if isinstance(outputs, Tensor) else torch.as_tensor(np.asarray(outputs))
    if not looks_like_probabilities(x):
        return x
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x.clamp_min(_MIN_PROB).log()


def regression_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error to a teacher's continuous outputs (forecasts, reconstructions,
    embeddings). The teacher is reshaped to the student's shape when the sizes match.

    Examples
    --------
    >>> import torch
    >>> float(regression_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([1.0, 1.0])))
    2.0
    """
    s = _student(student, "student")
    return F.mse_loss(s, _teacher(teacher, s, "teacher", "student"))


def cosine_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``1 - mean cosine similarity`` of each row's flattened student and teacher outputs;
    0 when every row points the teacher's way. Rows of zeros count as cosine 0 (no NaN).

    Examples
    --------
    >>> import torch
    >>> float(cosine_loss(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [3.0, 3.0]])))
    0.5
    """
    s = _student(student, "student")
    t = _teacher(teacher, s, "teacher", "student")
    rows = len(s) if s.ndim else 1
    return 1.0 - F.cosine_similarity(s.reshape(rows, -1), t.reshape(rows, -1), dim=1, eps=1e-8).mean()


SIMILARITY_KINDS = ("kl", "mse")


def _cosine_matrix(x: Tensor) -> Tensor:
    """(N, N) cosine similarities of the batch's rows (flattened)."""
    unit = F.normalize(x.reshape(len(x), -1), dim=1, eps=1e-8)
    return unit @ unit.T


def similarity_loss(student: Tensor, teacher: Tensor, temperature: float = 0.05, kind: str = "kl") -> Tensor:
    """How far the batch's student cosine-similarity matrix is from the teacher's: the
    neighbourhoods retrieval sees (which rows are nearest to each row), not each row alone.

    ``kl``: for each row, ``T^2 * KL(softmax(t_sim / T) || softmax(s_sim / T))`` over the other
    rows (the diagonal, 1 for both, is left out), averaged over rows; a small ``T`` weighs the
    nearest neighbours most, as a top-k ranking does. ``mse``: the mean squared difference of the
    off-diagonal similarities, every pair alike. 0 when the student's similarities equal the
    teacher's (e.g. identical embeddings up to a positive scale per row); 0 for a batch of one row.

    Examples
    --------
    >>> t = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    >>> float(similarity_loss(2 * t, t))
    0.0
    >>> float(similarity_loss(t.flip(0), t, kind="mse")) > 0
    True
    """
    s = _student(student, "student")
    t = _teacher(teacher, s, "teacher", "student")
    temperature = check_temperature(temperature)
    if kind not in SIMILARITY_KINDS:
        raise PressoError(f"The similarity loss kind must be kl or mse. Got {kind!r} instead.")
    n = len(s) if s.ndim else 1
    if n < 2:
        return s.sum() * 0.0
    s_sim, t_sim = _cosine_matrix(s), _cosine_matrix(t)
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    if kind == "mse":
        return (s_sim - t_sim)[off].pow(2).mean()
    s_logits = (s_sim / temperature)[off].reshape(n, n - 1)
    t_logits = (t_sim / temperature)[off].reshape(n, n - 1)
    kl = F.kl_div(
        F.log_softmax(s_logits, dim=1), F.log_softmax(t_logits, dim=1), log_target=True, reduction="batchmean"
    )
    return kl * temperature**2


class HintLoss(nn.Module):
    """Feature ("hint") distillation, FitNets (Romero et al. 2015): MSE between the student's
    intermediate features, projected to the teacher's width, and the teacher's features.

    The projection is ``nn.Linear(student_width, teacher_width, bias=False)`` when the widths
    differ (train it with the student: add ``hint.parameters()`` to the optimiser) and the
    identity, without parameters, when they are equal.

    The width axis: ``channels_first=None`` (default) uses axis 1 for 4-d conv feature maps
    ``(N, C, H, W)`` (a 1x1 convolution) and the last axis otherwise, as in transformer hidden
    states ``(N, T, C)``; ``True`` always uses axis 1 (e.g. conv1d ``(N, C, L)``), ``False``
    always the last axis. The other axes (spatial sizes, tokens) must match the teacher's.
    ``normalize=True`` divides the MSE by the teacher features' mean square, so the loss is
    the relative error whatever the layer's scale (transformer hidden states).

    Examples
    --------
    >>> import torch
    >>> hint = HintLoss(4, 8)
    >>> tuple(hint.proj.weight.shape)
    (8, 4)
    >>> hint(torch.zeros(2, 5, 4), torch.zeros(2, 5, 8)).item()
    0.0
    """

    def __init__(
        self,
        student_width: int,
        teacher_width: int,
        channels_first: bool | None = None,
        normalize: bool = False,
    ):
        super().__init__()
        for name, v in (("student_width", student_width), ("teacher_width", teacher_width)):
            if not (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1):
                raise PressoError(
                    f"The '{name}' option of HintLoss must be an int >= 1 (the feature "
                    f"width). Got {v!r} instead."
                )
        if channels_first not in (None, True, False):
            raise PressoError(
                f"The 'channels_first' option of HintLoss must be True, False or None. "
                f"Got {channels_first!r} instead."
            )
        self.student_width, self.teacher_width = int(student_width), int(teacher_width)
        self.channels_first, self.normalize = channels_first, bool(normalize)
        self.proj = (
            nn.Identity()
            if student_width == teacher_width
            else nn.Linear(self.student_width, self.teacher_width, bias=False)
        )

    def _axis(self, x: Tensor) -> int:
        first = x.ndim == 4 if self.channels_first is None else self.channels_first
        return 1 if first and x.ndim >= 2 else x.ndim - 1

    def forward(self, student_feat: Tensor, teacher_feat: Tensor) -> Tensor:
        s = _student(student_feat, "student_feat")
        t = torch.as_tensor(teacher_feat, device=s.device).detach().to(s.dtype)
        if s.ndim < 2:
            raise PressoError(
                f"The 'student_feat' must be batch-first with a width axis; got shape "
                f"{tuple(s.shape)}. Reshape it to (N, C) or (N, ..., C)."
            )
        axis = self._axis(s)
        if s.shape[axis] != self.student_width:
            raise PressoError(
                f"The 'student_feat' {tuple(s.shape)} have width {s.shape[axis]} on axis "
                f"{axis} but HintLoss was built with student_width {self.student_width}; "
                "build it with the features' width or set channels_first."
            )
        p = self.proj(s.movedim(axis, -1)).movedim(-1, axis)  # width -> teacher_width
        if p.shape != t.shape:
            raise PressoError(
                f"The 'student_feat' {tuple(s.shape)} (projected {tuple(p.shape)}) and the "
                f"'teacher_feat' {tuple(t.shape)} differ; tap layers with the same batch and "
                "spatial sizes, and set teacher_width to the teacher's width."
            )
        if self.normalize:  # relative to the teacher's mean square: one weight fits any layer's scale
            return F.mse_loss(p, t) / t.pow(2).mean().clamp_min(1e-12)
        return F.mse_loss(p, t)


class FeatureTap:
    """Records the outputs of named submodules while a module runs forward.

    ``tap.features[name]`` holds the latest output of each layer (its first tensor when it
    returns a tuple or dict), not detached: a student's features carry gradients; run the
    teacher under ``torch.no_grad()``. Hooks are added on entering the ``with`` block and
    removed on leaving it, also when forward raises. Names are those of
    ``module.named_modules()``.

    Examples
    --------
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> with FeatureTap(net, ["0", "1"]) as tap:
    ...     _ = net(torch.zeros(5, 3))
    >>> tuple(tap.features["1"].shape), len(net[1]._forward_hooks)
    ((5, 4), 0)
    """

    def __init__(self, module: nn.Module, names: str | Iterable[str]):
        self.module = module
        self.names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
        self.features: dict[str, Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> FeatureTap:
        layers = dict(self.module.named_modules())
        missing = [n for n in self.names if n not in layers]
        if missing:
            valid = [n for n in layers if n][:8]
            raise PressoError(
                f"Layer '{missing[0]}' is not in the module; tap one of its named modules, "
                f"e.g. {', '.join(valid) or '(none)'}."
            )
        self.features = {}
        try:
            for name in self.names:
                self._handles.append(layers[name].register_forward_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            try:
                self.features[name] = first_tensor(output)
            except TypeError:
                raise PressoError(
                    f"Layer '{name}' returned {type(output).__name__}, not a tensor; "
                    "tap a layer whose output is a tensor."
                ) from None

        return record
