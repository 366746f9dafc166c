"""How a study chooses its trials: Optuna's samplers (and presso's policy-gradient one), the
built-in recipes' points a new study starts from, and the front crossover that queues
children of the front's points after every trial."""

from __future__ import annotations

import warnings

from presso.recipe.schema import Settings
from presso.search.front import pareto_front
from presso.search.space import SearchSpace
from presso.search.trial import OBJECTIVES, Constraints


def make_sampler(name: str, seed: int, trials: int, constraints: Constraints):
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(3, min(10, trials // 3)), multivariate=True, group=True
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, trials // 3)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return optuna.samplers.RandomSampler(seed=seed)  # the points are enqueued (_open_study)
    from presso.search.rl import PolicyGradientSampler, default_reward

    def reward(trial, complete) -> float:
        r = default_reward(trial, complete, [optuna.study.StudyDirection.MINIMIZE] * len(OBJECTIVES))
        # A point that misses a latency / size limit is worth less than any point that meets them.
        return r - 3.0 * sum(v > 0 for v in constraints.violations(trial.user_attrs).values())

    return PolicyGradientSampler(seed=seed, reward=reward)


def warm_starts(space: SearchSpace) -> list[dict]:
    """The built-in recipes' points (slim, int8, student + int8, sparse, deep-compression,
    k-means) first: the search starts from what the recipes would give and spends its budget
    improving on them."""
    names = {c.name: c.values for c in space.choices}
    points = []
    if "slim.ratio" in names:  # slim, fast
        points.append(
            {
                "structure": "slim",
                "slim.ratio": 0.65,
                "slim.lr": 1e-3,
                "slim.epochs": 60,
                "slim.temperature": 2.0,
                "slim.l1": 0.0,
                "weights": "fp32",
            }
        )
    int8 = names.get("int8.variant", ())
    if int8:
        # the built-in int8 recipe's usual choice: dynamic-smooth on MiniLM, static s8s8 on the CNN
        variant = "dynamic-smooth" if space.kind == "transformer" else int8[min(1, len(int8) - 1)]
        points.append({"structure": "none", "weights": "int8", "int8.variant": variant})
    if "distill.width" in names and space.kind == "torch":  # student
        points.append(
            {
                "structure": "distill",
                "distill.width": 0.45,
                "distill.temperature": 4.0,
                "distill.alpha": 0.9,
                "distill.lr": 1e-3,
                "distill.epochs": 60,
                "weights": "int8" if int8 else "fp32",
                "int8.variant": int8[0] if int8 else None,
            }
        )
    if "prune" in names:  # sparse, deep-compression
        sparse = {
            "structure": "none",
            "prune": True,
            "prune.sparsity": 0.9,
            "prune.scope": "global",
            "prune.lr": 3e-3,
            "prune.epochs": 60,
            "prune.temperature": 2.0,
            "prune.l1": 0.0,
        }
        points.append({**sparse, "weights": "fp32"})
        if "kmeans.bits" in names:
            points.append({**sparse, "weights": "kmeans", "kmeans.bits": 5})
    if "kmeans.bits" in names:  # kmeans
        points.append({"structure": "none", "weights": "kmeans", "kmeans.bits": 4})
    out = []
    for point in points:
        point = {k: v for k, v in point.items() if k in names and v in names[k]}
        for switch in ("prune", "lowrank"):
            if switch in names:
                point.setdefault(switch, False)
        out.append(space.active(point))
    return out


class FrontCrossover:
    """After each finished trial, cross it with the points of the current front: a child
    takes the structure of one parent (slim / student and their hyper-parameters) and the
    rest of the pipeline of the other (pruning, low-rank factors, weight format), and is
    queued for the next trial of any worker, unless that point was tried.

    Compression stages compose: a structure that keeps the budget and a weight format that
    keeps it are the likeliest pair to keep it together, and a sampler that draws every
    choice at once rarely lands on such a pair within a few dozen trials (TPE on digits in
    20 trials never combined slim with k-means). Queued children are ordinary trials: they
    count toward --trials, and the sampler learns from them like from its own."""

    PER_TRIAL = 2  # children queued per finished trial, so that the sampler keeps most trials

    def __init__(self, space: SearchSpace, constraints: Constraints):
        self.space, self.constraints = space, constraints

    @staticmethod
    def structure(name: str) -> bool:
        return name == "structure" or name.startswith(("slim.", "distill."))

    def __call__(self, study, trial) -> None:
        from optuna.trial import TrialState

        if trial.state != TrialState.COMPLETE or not self.constraints.met(trial.user_attrs):
            return
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        feasible = [
            {**t.user_attrs, "params": t.params, "number": t.number}
            for t in done
            if "drop" in t.user_attrs and self.constraints.met(t.user_attrs)
        ]
        everything = study.get_trials(deepcopy=False)
        seen = [t.params for t in everything] + [t.system_attrs.get("fixed_params") for t in everything]
        # At most a few children wait at a time: the sampler keeps choosing most trials.
        room = self.PER_TRIAL - sum(t.state == TrialState.WAITING for t in everything)
        mine = {"params": trial.params, "number": trial.number}
        for other in pareto_front(feasible):
            for a, b in ((mine, other), (other, mine)):
                child = self.space.active(
                    {
                        **{k: v for k, v in a["params"].items() if self.structure(k)},
                        **{k: v for k, v in b["params"].items() if not self.structure(k)},
                    }
                )
                if room <= 0 or child in seen or not self._runnable(child):
                    continue
                study.enqueue_trial(
                    child,
                    user_attrs={
                        "crossover": f"structure of trial {a['number']}, the rest of trial {b['number']}"
                    },
                )
                seen.append(child)
                room -= 1

    def _runnable(self, child: dict) -> bool:
        try:
            return self.space.recipe(child, "child", Settings()) is not None
        except KeyError:  # a choice the child needs and neither parent had
            return False
