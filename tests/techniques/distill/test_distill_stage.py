"""The distill stage end to end: students of PyTorch, ONNX and callable teachers, the
objective's numbers, the data rules (held-out rows never trained on, cached teacher
outputs), the CLI and its checkpoint / resume contract."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import presso
from presso.errors import PressoError
from presso.measure.bench import BenchSettings
from presso.techniques.distill.config import DistillConfig
from presso.techniques.distill.data import NO_LABEL, cached_teacher_outputs, without_rows
from presso.techniques.distill.objective import Trainee, distill_loss, target_rows
from presso.techniques.distill.stage import calibration_inputs, rank_weight_for, wider
from presso.train.losses import cosine_loss, similarity_loss

QUICK = BenchSettings(rounds=2, round_seconds=0.02, throughput_batch=16)


def _blobs(n=300, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(k, d))
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y.astype(np.int64)


class Wide(nn.Module):
    def __init__(self, d=6, k=3, h=64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, k))

    def forward(self, x):
        return self.net(x)


def _teacher(X, y, seed=0):
    torch.manual_seed(seed)
    m = Wide()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(m(torch.from_numpy(X)), torch.from_numpy(y)).backward()
        opt.step()
    return m.eval()


# --- the objective --------------------------------------------------------------------------


def test_kl_objective_mixes_soft_targets_and_labels_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    labels = np.array([2, NO_LABEL])
    targets = torch.from_numpy(target_rows(t.numpy(), labels))
    trainee = Trainee(nn.Identity(), None, [], (s,))
    loss = distill_loss("kl", 3, alpha=0.7, temperature=2.0, has_labels=True, trainee=trainee, hint_weight=0)
    # by hand: T^2 * mean_rows KL(p_t || p_s) at T=2, then cross-entropy on the labelled row only
    pt = np.exp(t.numpy() / 2) / np.exp(t.numpy() / 2).sum(1, keepdims=True)
    ps = np.exp(s.numpy() / 2) / np.exp(s.numpy() / 2).sum(1, keepdims=True)
    kl = float(np.mean((pt * (np.log(pt) - np.log(ps))).sum(1))) * 4
    ce = -np.log(np.exp(0.5) / np.exp(s.numpy()[0]).sum())
    assert float(loss(s, targets)) == pytest.approx(0.7 * kl + 0.3 * ce, rel=1e-5)
    # alpha 0: labels alone; a batch with no labelled row then gives 0 with a gradient path
    only_ce = distill_loss(
        "kl", 3, alpha=0.0, temperature=2.0, has_labels=True, trainee=trainee, hint_weight=0
    )
    assert float(only_ce(s, targets)) == pytest.approx(ce, rel=1e-6)
    unlabelled = torch.from_numpy(target_rows(t.numpy(), np.array([NO_LABEL, NO_LABEL])))
    s_req = s.clone().requires_grad_(True)
    zero = only_ce(s_req, unlabelled)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_cosine_and_mse_objectives_against_numpy():
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    trainee = Trainee(nn.Identity(), None, [], (s,))
    cos = distill_loss("cosine", 2, alpha=1, temperature=1, has_labels=False, trainee=trainee, hint_weight=0)
    mse = distill_loss("mse", 2, alpha=1, temperature=1, has_labels=False, trainee=trainee, hint_weight=0)
    assert float(cos(s, torch.from_numpy(target_rows(t.numpy(), None)))) == pytest.approx(0.5)
    assert float(mse(s, t)) == pytest.approx(float(np.mean((s.numpy() - t.numpy()) ** 2)))


def test_cosine_objective_adds_the_weighted_similarity_term():
    s, t = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.randn(6, 4)
    trainee = Trainee(nn.Identity(), None, [], (s,))
    plain = distill_loss(
        "cosine", 4, alpha=1, temperature=1, has_labels=False, trainee=trainee, hint_weight=0
    )
    ranked = distill_loss(
        "cosine", 4, alpha=1, temperature=1, has_labels=False, trainee=trainee, hint_weight=0, rank_weight=0.5
    )
    expected = cosine_loss(s, t) + 0.5 * similarity_loss(s, t, 0.05, "kl")
    assert float(ranked(s, t)) == pytest.approx(float(expected), rel=1e-6)
    assert float(ranked(s, t)) > float(plain(s, t)) > 0


def test_rank_weight_defaults_to_one_for_embeddings_only():
    assert rank_weight_for(DistillConfig(), "cosine") == 1.0
    assert rank_weight_for(DistillConfig(), "kl") == 0.0
    assert rank_weight_for(DistillConfig(rank_weight=0.0), "cosine") == 0.0
    with pytest.raises(PressoError, match="this run's loss is mse"):
        rank_weight_for(DistillConfig(rank_weight=2.0), "mse")


def test_layer_search_rows_are_cut_to_the_longest_attended_token():
    mask = np.zeros((3, 128), np.int64)
    mask[0, :5], mask[1, :17], mask[2, :9] = 1, 1, 1
    ids = np.arange(3 * 128).reshape(3, 128)
    rows = {"input_ids": ids, "attention_mask": mask, "extra": np.ones((3, 4), np.float32)}
    ctx = SimpleNamespace(
        calibration=SimpleNamespace(
            head=lambda n: SimpleNamespace(inputs={k: v[:n] for k, v in rows.items()})
        ),
        input_names=["input_ids", "attention_mask", "extra"],
    )
    ids_t, mask_t, extra_t = calibration_inputs(ctx, rows=2)
    assert ids_t.shape == mask_t.shape == (2, 17) and extra_t.shape == (2, 4)
    assert torch.equal(ids_t, torch.from_numpy(ids[:2, :17]))


def test_wider_halves_the_gap_to_full_width():
    assert wider(0.45, 2) == [0.45, 0.725, 0.8625]
    assert wider(0.97, 3) == [0.97]


# --- data rules -----------------------------------------------------------------------------


def test_extra_rows_equal_to_heldout_rows_are_dropped():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    kept, labels, dropped = without_rows({"x": x}, np.arange(6), {"x": x[[1, 4]]})
    assert dropped == 2 and kept["x"].tolist() == x[[0, 2, 3, 5]].tolist() and labels.tolist() == [0, 2, 3, 5]


def test_teacher_outputs_are_cached_and_a_changed_teacher_misses(tmp_path):
    x = {"x": np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)}
    probe = {"x": x["x"][:4]}
    calls = []

    def teacher(scale):
        def run(rows):
            calls.append(len(rows["x"]))
            return rows["x"] * scale

        return run

    a = cached_teacher_outputs(teacher(2.0), x, probe, tmp_path)
    b = cached_teacher_outputs(teacher(2.0), x, probe, tmp_path)
    np.testing.assert_array_equal(a, b)
    assert calls == [4, 20, 4]  # the second call ran the probe only
    c = cached_teacher_outputs(teacher(3.0), x, probe, tmp_path)
    np.testing.assert_allclose(c, x["x"] * 3.0)
    assert len(list(tmp_path.glob("*.npy"))) == 2 and not list(tmp_path.glob("*.tmp*"))


# --- end to end -----------------------------------------------------------------------------


def test_derived_student_of_a_torch_teacher_within_budget():
    X, y = _blobs()
    teacher = _teacher(X, y)
    r = presso.distill(teacher, (X, y), width=0.25, epochs=40, bench=QUICK, max_drop=0.02)
    rep = r.report
    assert rep.budget.passed and rep.budget.drop <= 0.02
    assert rep.baseline.parameters == 4803 and rep.compressed.parameters < rep.baseline.parameters / 4
    assert r.recipe.stages[0].options["width"] == 0.25 and r.recipe.stages[0].options["checkpoint"] is None
    assert any("soft targets T=4" in n and "with labels" in n for n in rep.notes)


def test_callable_teacher_gets_an_mlp_student_and_is_timed_as_itself(tmp_path):
    from sklearn.linear_model import LogisticRegression

    X, y = _blobs(400)
    clf = LogisticRegression(max_iter=500).fit(X[:200], y[:200])
    np.savez(tmp_path / "extra.npz", X=X[:200])
    r = presso.distill(
        clf.predict_proba,
        (X[200:], y[200:]),
        student="mlp",
        hidden=[32],
        train_data=str(tmp_path / "extra.npz"),
        task="classification",
        epochs=60,
        bench=QUICK,
    )
    rep = r.report
    assert rep.model["kind"] == "callable" and "predict_proba" in rep.baseline.runtime
    assert rep.baseline.parameters is None and rep.baseline.size_bytes > 0
    assert rep.budget.drop <= 0.01
    assert rep.compressed.parameters == 6 * 32 + 32 + 32 * 3 + 3 + 2 * 6  # + the standardisation mean, std
    assert any("200 extra rows labelled by the teacher" in n for n in rep.notes)
    assert presso.load(_saved(r, tmp_path)).predict(X[:3]).shape == (3, 3)


def _saved(result, tmp_path):
    out = tmp_path / "artifact"
    result.save(out)
    return out


def test_heldout_rows_in_train_data_are_dropped_and_reported(tmp_path):
    X, y = _blobs()
    teacher = _teacher(X, y)
    np.savez(tmp_path / "extra.npz", X=X)  # every row, held-out ones included
    r = presso.distill(
        teacher,
        (X, y),
        width=0.5,
        epochs=2,
        train_data=str(tmp_path / "extra.npz"),
        bench=QUICK,
        max_drop=1.0,
    )
    n_eval = r.report.data["split"]["evaluation_rows"]
    assert any(f"({n_eval} dropped: they repeat held-out rows)" in n for n in r.report.notes)


def test_onnx_teacher_with_a_factory_student(tmp_path):
    from presso.export.onnx_export import export_onnx
    from presso.model.sources import from_module

    X, y = _blobs()
    teacher = _teacher(X, y)
    onnx_path = tmp_path / "teacher.onnx"
    export_onnx(from_module(teacher, "t", "test"), {"x": X[:2]}, onnx_path)
    (tmp_path / "small.py").write_text(
        "import torch\n"
        "class Small(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))\n"
        "    def forward(self, x):\n"
        "        return self.net(x)\n"
        "def build():\n"
        "    return Small()\n"
    )
    r = presso.distill(
        str(onnx_path), (X, y), student=f"{tmp_path / 'small.py'}:build", epochs=40, bench=QUICK
    )
    assert r.report.compressed.parameters == 6 * 16 + 16 + 16 * 3 + 3 and r.report.budget.drop <= 0.01


def test_hints_train_a_projection_and_need_a_torch_teacher():
    X, y = _blobs()
    teacher = _teacher(X, y)
    r = presso.distill(
        teacher, (X, y), width=0.5, epochs=3, hints=[["net.2", "net.2"]], bench=QUICK, max_drop=1.0
    )
    assert any("hints on 1 layer pair(s)" in n for n in r.report.notes)
    clf_fn = lambda x: teacher(torch.from_numpy(x)).detach().numpy()  # noqa: E731
    with pytest.raises(PressoError, match="hints .* need a PyTorch teacher|student: auto derives"):
        presso.distill(
            clf_fn,
            (X, y),
            student="mlp",
            hints=[["net.1", "net.1"]],
            task="classification",
            epochs=1,
            bench=QUICK,
        )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"student": "mlp", "width": 0.3}, "width, heads, depth and layers derive a student"),
        ({"depth": 1.5}, r"depth must be an int >= 1 \(layers kept\) or a float in \(0, 1\)"),
        ({"depth": 0}, "depth must be an int >= 1"),
        ({"heads": 0.0}, "heads"),
        ({"layers": [1, 1]}, "distinct layer indices"),
        ({"depth": 2, "layers": [0]}, "depth 2 differs from the 1 layers listed"),
        ({"layers": "best"}, "layers"),
        ({"rank_weight": 1.0, "epochs": 1}, "rank_weight keeps an embedding model's neighbourhoods"),
        ({"alpha": 1.5}, "alpha"),
        ({"student": "nothing"}, "student must be auto, mlp or a factory"),
        ({"hints": [["a"]]}, "pairs"),
    ],
)
def test_bad_options_name_the_option(kwargs, match):
    X, y = _blobs(60)
    with pytest.raises(PressoError, match=match):
        presso.distill(Wide(), (X, y), **kwargs)


def test_auto_student_needs_a_torch_teacher_and_callables_need_distill_first(tmp_path):
    X, y = _blobs(60)
    fn = lambda x: np.tile(np.array([[0.2, 0.3, 0.5]], np.float32), (len(x), 1))  # noqa: E731
    with pytest.raises(PressoError, match="student: auto derives the student from the teacher.s PyTorch"):
        presso.distill(fn, (X, y), task="classification", epochs=1, bench=QUICK)
    with pytest.raises(PressoError, match="cannot start from a Python callable"):
        presso.compress(fn, "int8", data=(X, y), task="classification")


def test_student_with_the_wrong_output_shape_is_refused(tmp_path):
    (tmp_path / "bad.py").write_text("import torch\ndef build():\n    return torch.nn.Linear(6, 5)\n")
    X, y = _blobs(60)
    with pytest.raises(PressoError, match="gives 5 values per row, the teacher 3"):
        presso.distill(_teacher(X, y), (X, y), student=f"{tmp_path / 'bad.py'}:build", epochs=1, bench=QUICK)


# --- CLI ------------------------------------------------------------------------------------


def test_cli_distill_writes_an_artifact_and_guards_its_checkpoint(tmp_path, capsys):
    from presso.cli.main import main

    X, y = _blobs()
    torch.save(_teacher(X, y).state_dict(), tmp_path / "t.pt")
    (tmp_path / "model.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), "
        "torch.nn.ReLU(), torch.nn.Linear(64, 3))\n"
    )
    # the teacher's state dict is a Wide's: keys net.0..., so save the Sequential's own keys
    state = {k.removeprefix("net."): v for k, v in torch.load(tmp_path / "t.pt").items()}
    torch.save(state, tmp_path / "t.pt")
    np.savez(tmp_path / "rows.npz", X=X, y=y)
    out = tmp_path / "student"
    args = [
        f"{tmp_path / 'model.py'}:build",
        "--weights",
        str(tmp_path / "t.pt"),
        "--data",
        str(tmp_path / "rows.npz"),
        "--width",
        "0.5",
        "--epochs",
        "3",
        "--rounds",
        "2",
        "--max-drop",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(["distill", *args]) == 0
    assert (out / "model.onnx").is_file() and not out.with_name("student.checkpoint.pt").exists()
    # the written student's training state stays, under a name that is no interrupted run's
    kept = out.with_name("student.student.pt")
    assert kept.is_file()
    out4 = tmp_path / "more"
    # the usual way to make a finished student int8-friendly: a few int8-aware epochs from it
    more = [a if a != str(out) else str(out4) for a in args] + ["--start-from", str(kept), "--int8-aware"]
    assert main(["distill", *more]) == 0
    report = json.loads((out4 / "report.json").read_text())
    note = report["stages"][0]["variants"][0]["note"]
    assert "started from student.student.pt (after its 3 epochs)" in note
    assert "computing as ONNX Runtime's dynamic int8" in note
    assert [s["technique"] for s in report["stages"]] == ["distill", "int8"]  # --int8-aware implies --int8
    out2 = tmp_path / "student2"
    args2 = [a if a != str(out) else str(out2) for a in args]
    out2.with_name("student2.checkpoint.pt").write_bytes(b"left by a killed run")
    assert main(["distill", *args2]) == 2
    assert "add --resume to continue it" in capsys.readouterr().err and not out2.exists()

    # A student that misses the budget leaves its checkpoint, and says how to use it.
    out3 = tmp_path / "student3"
    strict = [a if a != str(out) else str(out3) for a in args]
    strict[strict.index("--max-drop") + 1] = "0"
    strict[strict.index("--width") + 1] = "0.05"
    # rows spread across the teacher's decision boundaries: a 3-unit student disagrees somewhere
    np.savez(
        tmp_path / "spread.npz",
        X=np.random.default_rng(1).normal(scale=4.0, size=(300, 6)).astype(np.float32),
    )
    strict[strict.index("--data") + 1] = str(tmp_path / "spread.npz")
    strict += ["--task", "classification"]
    assert main(["distill", *strict]) == 1
    err = capsys.readouterr().err
    kept = out3.with_name("student3.checkpoint.pt")
    assert "The trained student is kept in" in err and "--resume" in err and not out3.exists()
    assert kept.is_file()
    strict[strict.index("--max-drop") + 1] = "1"
    assert main(["distill", *strict, "--resume"]) == 0
    report = json.loads((out3 / "report.json").read_text())
    assert "resumed after epoch 3" in report["stages"][0]["variants"][0]["note"]
    assert not kept.exists() and out3.with_name("student3.student.pt").is_file()


def test_start_from_begins_where_an_earlier_student_ended(tmp_path):
    X, y = _blobs()
    teacher = _teacher(X, y)
    ckpt = tmp_path / "first.checkpoint.pt"
    run = dict(width=0.25, bench=QUICK, max_drop=1.0)
    first = presso.distill(teacher, (X, y), epochs=6, checkpoint=str(ckpt), **run)
    assert ckpt.is_file()  # the API keeps it (the CLI deletes it once the artifact is written)
    probe = X[:64]

    def outputs(result):
        return result.predictor().predict(probe)

    # No epoch of its own: the student is the earlier one's best weights, output for output...
    again = presso.distill(teacher, (X, y), epochs=0, start_from=str(ckpt), **run)
    np.testing.assert_allclose(outputs(again), outputs(first), rtol=1e-5, atol=1e-5)
    assert any("started from first.checkpoint.pt (after its 6 epochs)" in n for n in again.report.notes)
    assert again.recipe.stages[0].options["start_from"] == str(ckpt)
    # ...where the same run without it is the untrained student copied from the teacher.
    fresh = presso.distill(teacher, (X, y), epochs=0, **run)
    assert np.abs(outputs(fresh) - outputs(first)).max() > 0.1
    # More epochs go on from there: a fresh schedule, the earlier weights.
    more = presso.distill(teacher, (X, y), epochs=2, start_from=str(ckpt), **run)
    assert more.report.budget.drop <= first.report.budget.drop + 0.01

    with pytest.raises(PressoError, match="another shape than this run's .*same depth, width"):
        presso.distill(teacher, (X, y), epochs=0, start_from=str(ckpt), **{**run, "width": 0.5})
    with pytest.raises(PressoError, match="does not exist"):
        presso.distill(teacher, (X, y), epochs=0, start_from=str(tmp_path / "none.pt"), **run)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PressoError, match="could not be read"):
        presso.distill(teacher, (X, y), epochs=0, start_from=str(tmp_path / "junk.pt"), **run)


def test_cli_start_from_refuses_the_runs_own_checkpoint(tmp_path, capsys):
    from presso.cli.main import main

    own = tmp_path / "student.checkpoint.pt"
    own.write_bytes(b"an earlier run's student")
    code = main(
        ["distill", "--example", "digits", "--out", str(tmp_path / "student"), "--start-from", str(own)]
    )
    assert code == 2
    assert (
        "is this run's own checkpoint" in capsys.readouterr().err
        and own.read_bytes() == b"an earlier run's student"
    )


def test_cli_layers_option_reads_auto_even_or_indices():
    import argparse

    from presso.cli.distill import _layers

    assert _layers("auto") == "auto" and _layers("even") == "even" and _layers("0,4,5") == [0, 4, 5]
    with pytest.raises(argparse.ArgumentTypeError, match="auto, even or layer indices"):
        _layers("first")


def test_cli_depth_reads_a_count_or_a_fraction():
    import argparse

    from presso.cli.distill import _depth

    assert (_depth("4"), _depth("0.67")) == (4, 0.67) and isinstance(_depth("4"), int)
    for bad in ("0", "1.5", "-1", "all"):
        with pytest.raises(argparse.ArgumentTypeError, match="a fraction of them in \\(0, 1\\)"):
            _depth(bad)


def test_applies_to_encoders_skips_any_other_model_in_an_optional_stage(tmp_path):
    X, y = _blobs(200)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "presso_recipe: 1\nname: enc\nstages:\n"
        "  - technique: distill\n    optional: true\n    options: {applies_to: encoders, depth: 0.5}\n"
        "  - technique: int8\n"
    )
    result = presso.compress(_teacher(X, y), str(recipe), data=(X, y), bench=QUICK)
    first = result.report.stages[0]
    assert first.skipped and first.chosen is None
    assert "applies_to: encoders, and this model is not a transformer encoder" in first.notes[0]
    assert result.report.stages[1].chosen is not None  # int8 ran on the teacher


def test_transformer_student_measures_its_layers_and_ranks_embeddings(tmp_path):
    from hf_tiny import _sentences, tiny_hf_folder

    folder = tiny_hf_folder("bert", False, tmp_path / "bert", pooling="mean+normalize")
    result = presso.distill(
        str(folder), list(_sentences())[:40], depth=1, epochs=1, task="embedding", max_drop=1.0, bench=QUICK
    )
    notes = " ".join(result.report.notes)
    kept = re.search(
        r"kept encoder layers (\d) of 2 \(by greedy removal on the calibration inputs: dropped (\d) \(cosine ([\d.]+)\)\)",
        notes,
    )
    assert kept is not None and {kept.group(1), kept.group(2)} == {"0", "1"}
    assert 0 < float(kept.group(3)) <= 1
    assert "cosine to the teacher + 1 x batch similarity kl T=0.05" in notes
    assert "+ 3 x each layer's output against the teacher layer it was copied from" in notes


def test_layer_hints_by_default_for_shallower_transformer_students_only():
    from presso.techniques.distill.stage import hint_pairs

    pairs = [("encoder.layer.0", "encoder.layer.0"), ("encoder.layer.1", "encoder.layer.3")]
    shallower, whole = nn.Linear(2, 2), nn.Linear(2, 2)
    shallower.__dict__["_presso_copied_layers"] = pairs  # what derive_student records
    torch_ctx = SimpleNamespace(module=nn.Linear(2, 2))
    assert hint_pairs(DistillConfig(), torch_ctx, shallower) == (pairs, 3.0)
    assert hint_pairs(DistillConfig(hint_weight=0.5), torch_ctx, shallower) == (pairs, 0.5)
    assert hint_pairs(DistillConfig(), torch_ctx, whole) == ([], 0.0)
    for off in (DistillConfig(hints="none"), DistillConfig(hint_weight=0)):  # nor run the teacher for nothing
        assert hint_pairs(off, torch_ctx, shallower) == ([], 0.0)
    assert hint_pairs(DistillConfig(), SimpleNamespace(module=None), shallower) == ([], 0.0)  # ONNX teacher
    listed = DistillConfig(hints=[["a", "b"]])
    assert hint_pairs(listed, torch_ctx, shallower) == ([["a", "b"]], 1.0)


def test_fast_recipe_gives_an_encoder_a_distilled_student_from_train_texts(tmp_path):
    from hf_tiny import _sentences, tiny_hf_folder

    folder = tiny_hf_folder("bert", False, tmp_path / "bert", pooling="mean+normalize")
    sentences = list(_sentences())
    corpus = tmp_path / "more.txt"
    corpus.write_text("\n".join(sentences[60:260]) + "\n")
    result = presso.compress(
        str(folder),
        "fast",
        data=sentences[:60],
        task="embedding",
        train_texts=str(corpus),
        max_drop=1.0,
        bench=QUICK,
    )
    first = result.report.stages[0]
    assert first.technique == "distill"
    (student,) = first.variants
    assert "200 texts streamed from more.txt at their own length" in student["note"]
    # two thirds of 2 layers: 1 (a tiny BERT layer holds 8,544 parameters)
    assert "41,568 -> 33,024 parameters" in student["note"]
    # kept unless its speed gain is lost in the timing noise of so small a model (keep_if: faster)
    assert first.chosen == "student width 1" or "keep_if: faster" in first.notes[0]


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("more.csv", "a\n", r"--train-texts .*more\.csv: give a \.txt file, one text a line"),
        ("missing.txt", None, r"--train-texts .*missing\.txt: no such file"),
    ],
)
def test_bad_train_texts_are_refused_before_any_work(tmp_path, name, content, match):
    from hf_tiny import _sentences, tiny_hf_folder

    folder = tiny_hf_folder("bert", False, tmp_path / "bert", pooling="mean+normalize")
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(PressoError, match=match):
        presso.compress(str(folder), "fast", data=list(_sentences())[:40], train_texts=str(path))


def test_train_texts_need_a_text_model(tmp_path):
    X, y = _blobs(60)
    path = tmp_path / "t.txt"
    path.write_text("a text\n")
    with pytest.raises(PressoError, match="this model takes no text"):
        presso.compress(_teacher(X, y), "int8", data=(X, y), train_texts=str(path))


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_bf16_for_transformer_students_on_a_cpu_with_native_bf16(monkeypatch, native):
    import dataclasses

    from presso.runtime import cpu
    from presso.techniques.distill.stage import _settings

    features = dataclasses.replace(cpu.cpu_features(), bf16=native)
    monkeypatch.setattr(cpu, "cpu_features", lambda: features)
    encoder, other = SimpleNamespace(transformer={"num_heads": 4}), SimpleNamespace(transformer=None)
    assert _settings(DistillConfig(), encoder).precision == ("bf16" if native else "fp32")
    assert _settings(DistillConfig(), other).precision == "fp32"
    for chosen in ("fp32", "bf16"):  # asked for: kept whatever the CPU
        assert _settings(DistillConfig(precision=chosen), encoder).precision == chosen
        assert _settings(DistillConfig(precision=chosen), other).precision == chosen
