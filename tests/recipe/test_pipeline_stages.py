"""The runner's stage keys (optional, keep_if), the per-stage waterfall and packed storage,
on the tabular example end to end."""

from __future__ import annotations

import numpy as np
import pytest

import presso
from presso.measure.bench import BenchSettings

# Stage 2 cannot keep a zero drop (95% of the neurons, one epoch, no retry): optional, so
# it is skipped and the run goes on with stage 1's sparse model.
RECIPE = """\
name: skip-one
stages:
  - technique: prune
    options: {sparsity: 0.5, schedule: one-shot, epochs: 3}
  - technique: slim
    optional: true
    options: {ratio: 0.95, epochs: 1, backoff: 0}
  - technique: pack
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    recipe = tmp_path_factory.mktemp("recipe") / "skip-one.yaml"
    recipe.write_text(RECIPE)
    ex = presso.load_example("tabular")
    return presso.compress(
        ex.model,
        recipe,
        data=ex.data,
        task=ex.task,
        max_drop=0.0,
        bench=BenchSettings(rounds=2, throughput_batch=8),
    )


def test_optional_stage_without_a_passing_variant_is_skipped(result):
    stages = result.report.stages
    assert [(s.technique, s.skipped) for s in stages] == [
        ("prune", False),
        ("slim", True),
        ("sparse-storage", False),
        ("pack", False),
    ]
    assert stages[1].chosen is None and "skipped: no variant within the budget" in stages[1].notes[0]
    assert result.report.budget.drop <= 0.0 + 1e-12
    # recipe.yaml re-runs what ran: the skipped stage is left out, the pack stage kept.
    assert [s.technique for s in result.recipe.stages] == ["prune", "pack"]


def test_waterfall_has_every_step_with_the_skipped_one_flat(result):
    steps = result.report.steps
    assert [s.name for s in steps] == ["baseline", "1 prune", "2 slim", "sparse storage", "pack"]
    base, pruned, skipped, sparse, packed = steps
    assert (skipped.skipped, skipped.quality, skipped.size_bytes) == (True, pruned.quality, pruned.size_bytes)
    assert base.quality == pytest.approx(result.report.budget.baseline)
    assert sparse.quality == pytest.approx(result.report.budget.compressed)
    assert sparse.size_bytes == result.report.compressed.size_bytes < base.size_bytes
    assert all(s.latency_ms and s.latency_ms > 0 for s in steps)
    assert packed.stored_bytes == result.report.stored.bytes == result.report.compressed.stored_bytes


def test_packed_file_is_smaller_and_runs_the_same(result, tmp_path):
    stored = result.report.stored
    assert stored.bytes < result.report.compressed.size_bytes
    assert stored.fp32_weights_bytes == 4 * result.report.baseline.parameters
    assert stored.weights_ratio == pytest.approx(stored.fp32_weights_bytes / stored.weights_bytes, rel=1e-3)
    out = result.save(tmp_path / "art")
    x = presso.load_example("tabular").data.inputs["x"][:16]
    assert np.array_equal(presso.load(out / "model.packed").predict(x), presso.load(out).predict(x))


def test_layer_sizes_of_baseline_and_result(result):
    sizes = result.report.layer_sizes
    assert sum(r.bytes for r in sizes["baseline"]) == 4 * result.report.baseline.parameters
    assert sum(r.bytes for r in sizes["compressed"]) < sum(r.bytes for r in sizes["baseline"])
    assert 0 < len(result.report.baseline.latency_ms.samples) <= 200
