"""PolicyGradientSampler: it learns, it is a pure function of the study's history, it
penalises pruned trials, handles several objectives, delegates other distributions and
keeps every choice alive."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from numpy.testing import assert_allclose
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from presso.errors import PressoError
from presso.search.rl import PolicyGradientSampler, default_reward

CHOICES = ["a", "b", "c", "d"]
BEST = {"x0": "c", "x1": "a", "x2": "d"}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(level)


def _op(choice, value=None, state=TrialState.COMPLETE, choices=("a", "b", "c")):
    return create_trial(
        state=state,
        value=value,
        params={"op": choice},
        distributions={"op": CategoricalDistribution(list(choices))},
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_learns_the_hidden_best_choices(seed):
    sampler = PolicyGradientSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    study.optimize(
        lambda t: float(sum(t.suggest_categorical(k, CHOICES) != v for k, v in BEST.items())), n_trials=60
    )
    for name, best in BEST.items():
        assert sampler.policy(study, name, CategoricalDistribution(CHOICES))[best] > 0.6
    values = [t.value for t in study.trials]
    assert np.mean(values[-20:]) < np.mean(values[:20])


def _hand_policy():
    """The update rule worked by hand for rewards -3, -1, -2 on choices a, b, c (lr 0.5, decay 0.8)."""

    def softmax(z):
        return np.exp(z) / np.exp(z).sum()

    logits = np.zeros(3)
    # trial 0: r=-3 sets the baseline; advantage 0; baseline stays -3
    # trial 1: r=-1, std(-3, -1) = 1, advantage (-1 + 3) / 1 = 2; then baseline 0.8*-3 + 0.2*-1 = -2.6
    logits = logits + 0.5 * 2.0 * (np.array([0.0, 1.0, 0.0]) - softmax(logits))
    # trial 2: r=-2, std(-3, -1, -2) = sqrt(2/3), advantage (-2 + 2.6) / sqrt(2/3)
    logits = logits + 0.5 * (0.6 / np.sqrt(2 / 3)) * (np.array([0.0, 0.0, 1.0]) - softmax(logits))
    return 0.94 * softmax(logits) + 0.02  # floor 0.02 for each of 3 choices


def test_policy_is_a_function_of_the_shared_history(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    s1, s2 = PolicyGradientSampler(seed=1), PolicyGradientSampler(seed=2)
    study1 = optuna.create_study(study_name="nas", storage=storage, sampler=s1)
    study2 = optuna.load_study(study_name="nas", storage=storage, sampler=s2)
    for choice, value in [("a", 3.0), ("b", 1.0), ("c", 2.0)]:
        study1.add_trial(_op(choice, value))
    study2.add_trial(_op("a", state=TrialState.FAIL))  # ignored
    dist = CategoricalDistribution(["a", "b", "c"])
    p1, p2 = s1.policy(study1, "op", dist), s2.policy(study2, "op", dist)
    assert_allclose([p1[c] for c in "abc"], _hand_policy(), rtol=1e-12, atol=0)
    assert p1 == p2

    # Different seeds draw differently from the same policy; FAIL trials leave it as it was.
    draws = {}
    for sampler, study in [(s1, study1), (s2, study2)]:
        draws[sampler.seed] = []
        for _ in range(20):
            trial = study.ask()
            draws[sampler.seed].append(trial.suggest_categorical("op", ["a", "b", "c"]))
            study.tell(trial, state=TrialState.FAIL)
    assert draws[1] != draws[2]
    assert s1.policy(study1, "op", dist) == p1

    # Both processes go on optimising the one study and still agree.
    for study in [study1, study2] * 3:
        study.optimize(
            lambda t: {"a": 3.0, "b": 1.0, "c": 2.0}[t.suggest_categorical("op", ["a", "b", "c"])], n_trials=1
        )
    assert len(study1.get_trials(states=[TrialState.COMPLETE])) == 9
    assert s1.policy(study1, "op", dist) == s2.policy(study2, "op", dist)


def test_pruned_choices_are_penalised():
    study = optuna.create_study(sampler=PolicyGradientSampler(seed=0))
    for i in range(6):
        study.add_trial(_op("a", state=TrialState.PRUNED, choices=("a", "b")))
        study.add_trial(_op("b", 1.0 + 0.1 * i, choices=("a", "b")))
    p = study.sampler.policy(study, "op", CategoricalDistribution(["a", "b"]))
    assert p["b"] > 0.8 > 0.2 > p["a"]


def test_default_reward_multi_objective_ranks_the_dominating_trial_first():
    trials = [create_trial(values=v) for v in [(1.0, 1.0), (2.0, 2.0), (1.0, 3.0), (3.0, 1.0)]]
    mm = [StudyDirection.MINIMIZE, StudyDirection.MINIMIZE]
    rewards = [default_reward(t, trials, mm) for t in trials]
    assert_allclose(rewards, [0.0, -1.0, -1.0, -1.0], atol=1e-12)
    # Maximising the first objective: (3, 1) is now best on both; equal values contribute 0.
    xm = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert_allclose([default_reward(t, trials, xm) for t in trials], [-1.0, -1.0, -2.0, 0.0], atol=1e-12)
    flat = [create_trial(values=(v, 5.0)) for v in (1.0, 2.0)]
    assert_allclose([default_reward(t, flat, mm) for t in flat], [0.0, -1.0], atol=1e-12)
    assert default_reward(create_trial(value=2.5), [], [StudyDirection.MINIMIZE]) == -2.5
    assert default_reward(create_trial(value=2.5), [], [StudyDirection.MAXIMIZE]) == 2.5


def _two_objectives(trial):
    cost = {"x": 0.0, "y": 1.0, "z": 1.0}[trial.suggest_categorical("op", ["x", "y", "z"])]
    w = trial.suggest_float("w", 0.0, 1.0)
    return cost + w, cost + 1.0 - w


@pytest.mark.parametrize(
    "reward, learned", [(None, "x"), (lambda t, complete: float(t.params["op"] == "y"), "y")]
)
def test_multi_objective_study_learns_from_its_reward(reward, learned):
    sampler = PolicyGradientSampler(seed=0, reward=reward)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(_two_objectives, n_trials=30)
    assert len(study.get_trials(states=[TrialState.COMPLETE])) == 30
    p = sampler.policy(study, "op", CategoricalDistribution(["x", "y", "z"]))
    assert p[learned] == max(p.values())
    assert p[learned] > 0.5


def test_other_distributions_are_sampled_at_random_within_bounds():
    study = optuna.create_study(sampler=PolicyGradientSampler(seed=0))
    study.optimize(
        lambda t: (
            t.suggest_float("x", -2.0, 3.0)
            + t.suggest_float("lr", 1e-4, 1e-1, log=True)
            + t.suggest_int("n", 1, 5)
            + t.suggest_int("k", 0, 12, step=4)
        ),
        n_trials=30,
    )
    x, lr, n, k = (np.array([t.params[name] for t in study.trials]) for name in ("x", "lr", "n", "k"))
    assert ((-2.0 <= x) & (x <= 3.0)).all() and ((1e-4 <= lr) & (lr <= 1e-1)).all()
    assert set(n) <= {1, 2, 3, 4, 5} and len(set(n)) >= 4
    assert set(k) <= {0, 4, 8, 12} and len(set(k)) >= 3
    assert np.std(x) > 0.5


def test_entropy_floor_keeps_every_choice_alive():
    sampler = PolicyGradientSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: 0.0 if t.suggest_categorical("op", CHOICES) == "a" else 100.0, n_trials=200)
    p = sampler.policy(study, "op", CategoricalDistribution(CHOICES))
    assert min(p.values()) >= 0.02 - 1e-12
    assert p["a"] > 0.9  # at most 1 - 3 * 0.02 = 0.94
    assert_allclose(sum(p.values()), 1.0, rtol=1e-12)


def test_entropy_floor_is_lowered_to_leave_half_the_mass_to_the_policy():
    choices = list(range(40))
    dist = CategoricalDistribution(choices)
    study = optuna.create_study(sampler=PolicyGradientSampler(seed=0, entropy_floor=0.02))
    for i in range(30):
        study.add_trial(
            create_trial(value=0.0 if i % 2 else 1.0, params={"n": i % 2}, distributions={"n": dist})
        )
    p = np.array(list(study.sampler.policy(study, "n", dist).values()))
    assert p.min() >= 0.5 / 40 - 1e-12
    assert p.min() < 0.02  # 40 * 0.02 would exceed half the mass
    assert_allclose(p.sum(), 1.0, rtol=1e-12)


def test_choices_of_mixed_types_map_back_to_their_index():
    choices = [None, True, 3, 0.5, "s"]
    dist = CategoricalDistribution(choices)
    study = optuna.create_study(sampler=PolicyGradientSampler(seed=0))
    for i in range(20):
        choice = choices[i % len(choices)]
        study.add_trial(
            create_trial(
                value=0.0 if choice is None else 1.0, params={"c": choice}, distributions={"c": dist}
            )
        )
    p = study.sampler.policy(study, "c", dist)
    assert list(p) == choices
    assert p[None] == max(p.values()) and p[None] > 0.5
    assert study.sampler.sample_independent(study, None, "c", dist) in choices


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr": -1}, "'lr' option of PolicyGradientSampler must be a positive number. Got -1"),
        ({"baseline_decay": 1.0}, "'baseline_decay' .* in \\[0, 1\\). Got 1.0"),
        ({"entropy_floor": float("nan")}, "'entropy_floor'"),
        ({"seed": 1.5}, "'seed' .* an int or None"),
        ({"reward": "neg"}, "'reward' .* a callable"),
    ],
)
def test_bad_options_are_rejected_with_the_fix(kwargs, match):
    with pytest.raises(PressoError, match=match):
        PolicyGradientSampler(**kwargs)


def test_policy_of_a_non_categorical_parameter_is_an_error():
    study = optuna.create_study()
    with pytest.raises(PressoError, match="categorical parameters only; 'x' has a FloatDistribution"):
        PolicyGradientSampler().policy(study, "x", FloatDistribution(0.0, 1.0))
