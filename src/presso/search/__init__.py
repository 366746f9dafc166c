"""Automatic compression search (Optuna): a study of recipes over the model's search space,
the Pareto front of quality drop, latency and size, and the chosen point as an artifact.

space (choices -> recipe) -> trial (run + measure) -> study (samplers, storage) -> front -> pick
"""

from presso.search.study import SearchResult, search

__all__ = ["SearchResult", "search"]
