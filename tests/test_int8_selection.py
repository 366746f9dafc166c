"""How int8 ranks the variants that pass the budget."""

from __future__ import annotations

from pathlib import Path

from presso.techniques.base import Candidate, Score
from presso.techniques.quantization.int8 import default_variants, rank


def _cand(name, ms, quality):
    return Candidate(name, Path(name), score=Score("q", quality, 1 - quality, True, {}), latency_ms=ms)


def test_fastest_first_when_clearly_faster():
    ranked = rank([_cand("slow-exact", 10.0, 1.0), _cand("fast", 8.0, 0.99)])
    assert [c.name for c in ranked] == ["fast", "slow-exact"]


def test_more_faithful_wins_a_timing_tie():
    ranked = rank([_cand("a", 10.0, 0.991), _cand("b", 10.2, 0.993), _cand("c", 12.0, 0.999)])
    assert [c.name for c in ranked] == ["b", "a", "c"]  # a and b are within 3%; c is not


def test_reduce_range_only_without_vnni():
    assert default_variants(True, vnni=True) == ["dynamic", "dynamic-smooth"]
    assert "dynamic-reduce-range" in default_variants(True, vnni=False)
    assert default_variants(False, vnni=True)[0].startswith("static")
