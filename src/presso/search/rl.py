"""A reinforcement-learning controller over categorical choices, as an Optuna sampler.

Each categorical parameter gets its own policy: one logit per choice, all zero at first,
trained with REINFORCE (Williams 1992) against a moving-average baseline, as the
controller of Zoph & Le, "Neural Architecture Search with Reinforcement Learning"
(ICLR 2017). For one parameter with K choices the sampler replays the study's finished
trials that used it (COMPLETE and PRUNED, in trial-number order)::

    r       reward of the trial, to maximise
    b       baseline: the first reward, then b <- decay * b + (1 - decay) * r  (after A)
    s       population std of the rewards replayed so far, this one included
    A       (r - b) / max(s, 1e-8)                       # 0 for the first trial
    logits += lr * A * (onehot(choice) - softmax(logits))

and samples from ``p = (1 - K f) softmax(logits) + f`` with ``f = min(entropy_floor, 0.5 / K)``,
so that no choice is ever ruled out. The policy is rebuilt from the study on every call:
the sampler keeps no learned state, so processes sharing a study through an RDB storage
all learn from every trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from presso.errors import PressoError

Reward = Callable[[FrozenTrial, Sequence[FrozenTrial]], float]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def default_reward(
    trial: FrozenTrial, complete_trials: Sequence[FrozenTrial], directions: Sequence[StudyDirection]
) -> float:
    """Reward (to maximise) of a complete ``trial`` of a study with these ``directions``.

    One objective: the value, negated when minimising. Several: minus the sum over
    objectives of the value min-max normalised among ``complete_trials`` (0 best, 1 worst,
    each objective in its own direction; 0 where all of them are equal), so a trial that
    dominates another always gets a higher reward.

    Examples
    --------
    >>> from optuna.trial import create_trial
    >>> from optuna.study import StudyDirection as D
    >>> ts = [create_trial(values=[1.0, 4.0]), create_trial(values=[3.0, 2.0])]
    >>> default_reward(ts[0], ts, [D.MINIMIZE, D.MINIMIZE])
    -1.0
    """
    return _default_rewards([trial], complete_trials, directions)[0]


def _default_rewards(
    trials: Sequence[FrozenTrial],
    complete_trials: Sequence[FrozenTrial],
    directions: Sequence[StudyDirection],
) -> list[float]:
    if len(directions) == 1:
        sign = -1.0 if directions[0] == StudyDirection.MINIMIZE else 1.0
        rewards = []
        for t in trials:
            assert t.value is not None  # a complete single-objective trial has its value
            rewards.append(sign * t.value)
        return rewards
    ref = np.array([t.values for t in complete_trials], dtype=float).reshape(-1, len(directions))  # (N, M)
    ref = ref[np.isfinite(ref).all(axis=1)]  # an infinite value would flatten everyone else to 0
    if len(ref) == 0:
        return [0.0] * len(trials)
    values = np.array([t.values for t in trials], dtype=float)  # (n, M)
    lo, hi = ref.min(axis=0), ref.max(axis=0)
    spread = hi > lo
    badness = (values - lo) / np.where(spread, hi - lo, 1.0)
    maximise = np.array([d == StudyDirection.MAXIMIZE for d in directions])
    badness = np.where(maximise, 1.0 - badness, badness)
    return [float(-x) for x in np.where(spread, badness, 0.0).sum(axis=1)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max())
    return e / e.sum()


class PolicyGradientSampler(optuna.samplers.BaseSampler):
    """REINFORCE over categorical parameters; other parameters are sampled at random.

    Parameters
    ----------
    reward : callable ``(trial, complete_trials) -> float``, optional
        Reward to maximise of a COMPLETE trial, given all complete trials of the study (for
        normalising). Default: :func:`default_reward` with the study's directions. PRUNED
        trials get the worst complete reward minus 1, and so do trials whose reward is not
        finite; FAIL, RUNNING and WAITING trials are ignored.
    lr : float
        Step size of the REINFORCE update on the logits.
    baseline_decay : float in [0, 1)
        Weight of the old baseline in the moving average.
    seed : int, optional
        Seeds this instance's draws; the learned policy does not depend on it.
    entropy_floor : float in [0, 1)
        Least probability of every choice (lowered to 0.5 / K for K choices).

    Examples
    --------
    >>> import optuna
    >>> sampler = PolicyGradientSampler(seed=0)
    >>> study = optuna.create_study(sampler=sampler)
    >>> study.optimize(lambda t: float(t.suggest_categorical("bits", [2, 4, 8]) != 8), n_trials=40)
    >>> sampler.policy(study, "bits", optuna.distributions.CategoricalDistribution([2, 4, 8]))[8] > 0.5
    True
    """

    def __init__(
        self,
        *,
        reward: Reward | None = None,
        lr: float = 0.5,
        baseline_decay: float = 0.8,
        seed: int | None = None,
        entropy_floor: float = 0.02,
    ) -> None:
        # Checked here, not when sampling: inside study.optimize an error would surface as a
        # failed trial far from the line that caused it.
        bad = None
        if reward is not None and not callable(reward):
            bad = ("reward", "a callable (trial, complete_trials) -> float or None", reward)
        elif not (_is_number(lr) and lr > 0):
            bad = ("lr", "a positive number", lr)
        elif not (_is_number(baseline_decay) and 0 <= baseline_decay < 1):
            bad = ("baseline_decay", "a number in [0, 1)", baseline_decay)
        elif not (_is_number(entropy_floor) and 0 <= entropy_floor < 1):
            bad = ("entropy_floor", "a number in [0, 1)", entropy_floor)
        elif not (seed is None or (isinstance(seed, int) and not isinstance(seed, bool))):
            bad = ("seed", "an int or None", seed)
        if bad:
            raise PressoError(
                f"The '{bad[0]}' option of PolicyGradientSampler must be {bad[1]}. Got {bad[2]!r} instead."
            )
        self.reward = reward
        self.lr = lr
        self.baseline_decay = baseline_decay
        self.seed = seed
        self.entropy_floor = entropy_floor
        self._rng = np.random.default_rng(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if not isinstance(param_distribution, CategoricalDistribution):
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        p = self._probabilities(study, param_name, param_distribution)
        return param_distribution.choices[int(self._rng.choice(len(p), p=p))]

    def reseed_rng(self) -> None:
        # Optuna calls this when threads (n_jobs > 1) share copies of one sampler, which would
        # otherwise draw the same choices.
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def policy(
        self, study: optuna.Study, param_name: str, distribution: CategoricalDistribution
    ) -> dict[Any, float]:
        """Probability of each choice of ``param_name`` the next trial would be sampled with.

        Choices that are equal as dict keys (``1`` and ``True``) share one entry.
        """
        if not isinstance(distribution, CategoricalDistribution):
            raise PressoError(
                f"PolicyGradientSampler learns categorical parameters only; '{param_name}' "
                f"has a {type(distribution).__name__}. Pass its CategoricalDistribution."
            )
        p = self._probabilities(study, param_name, distribution)
        return {choice: float(q) for choice, q in zip(distribution.choices, p, strict=True)}

    def _rewards(self, study: optuna.Study, trials: Sequence[FrozenTrial]) -> dict[int, float]:
        """Reward of every finished trial, by trial number."""
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if self.reward is None:
            scores = _default_rewards(complete, complete, study.directions)
        else:
            scores = [float(self.reward(t, complete)) for t in complete]
        finite = [s for s in scores if math.isfinite(s)]
        penalty = (min(finite) if finite else 0.0) - 1.0
        rewards = {
            t.number: (s if math.isfinite(s) else penalty) for t, s in zip(complete, scores, strict=True)
        }
        rewards.update((t.number, penalty) for t in trials if t.state == TrialState.PRUNED)
        return rewards

    def _probabilities(
        self, study: optuna.Study, param_name: str, distribution: CategoricalDistribution
    ) -> np.ndarray:
        trials = sorted(study.get_trials(deepcopy=False, states=_FINISHED), key=lambda t: t.number)
        rewards = self._rewards(study, trials)
        k = len(distribution.choices)
        logits = np.zeros(k)  # (K,)
        baseline = None
        n, mean, m2 = 0, 0.0, 0.0  # Welford: the std stays exact when rewards share a large offset
        for t in trials:
            # A trial that saw other choices for this name taught nothing about these ones.
            if t.distributions.get(param_name) != distribution:
                continue
            r = rewards[t.number]
            n += 1
            delta = r - mean
            mean += delta / n
            m2 += delta * (r - mean)
            baseline = r if baseline is None else baseline
            advantage = (r - baseline) / max(math.sqrt(m2 / n), 1e-8)
            # to_internal_repr, not ==: it also matches NaN and float choices stored with rounding.
            # The choice's index: an int, typed float by optuna's base Distribution.
            onehot = np.eye(k)[int(distribution.to_internal_repr(t.params[param_name]))]
            logits += self.lr * advantage * (onehot - _softmax(logits))
            baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * r
        floor = min(self.entropy_floor, 0.5 / k)
        p = (1 - k * floor) * _softmax(logits) + floor
        return p / p.sum()


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
