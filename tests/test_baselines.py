"""Baseline strategies on the same registry, budget accountant and loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bipeft_plugins.strategies.bipeft import BudgetGuided, GradWeightCos
from bipeft_plugins.strategies.prunepeft import PruneRounds
from bipeft_plugins.strategies.s3delta import solve_shift

from bipeft_core import Pipeline, load_plugins
from bipeft_core.targets import backbone_param_count
from bipeft_core.testing import InterruptAt, tiny_model
from bipeft_core.testing import toy_accuracy as accuracy
from bipeft_core.testing import toy_examples as synthetic

SPECS = Path(__file__).resolve().parents[1] / "examples" / "specs"


def pipe(optimizer, budget=1500, space="s2", epochs=2):
    return Pipeline(budget=budget, space=space, optimizer=optimizer,
                    search_settings={"epochs": epochs, "batch_size": 16, "lr": 1e-3},
                    retrain_settings={"epochs": 1, "batch_size": 16}, plugins=load_plugins(entry_points=False))


SEARCHES = [
    {"name": "s3delta"},
    {"name": "prunepeft", "rounds": 4},
    "apet",
]


@pytest.mark.parametrize("optimizer", SEARCHES, ids=lambda o: o if isinstance(o, str) else o["name"])
def test_budget_respected_deterministic_and_retrains(optimizer):
    train = synthetic(96)
    p = pipe(optimizer)
    a = p.search(tiny_model("bert"), train)
    b = p.search(tiny_model("bert"), train)
    assert a.count <= a.budget == 1500 and a.budget_met
    assert a.structure == b.structure
    assert a.structure.entries, "a search at this budget keeps some modules"
    retrained = p.retrain(tiny_model("bert"), a.structure, train)
    assert retrained.peft_params == a.count
    assert a.wall_time >= 0 and isinstance(a.steps, int)


def test_s3delta_uses_rank_one_and_the_shift_meets_the_budget():
    result = pipe({"name": "s3delta"}).search(tiny_model("bert"), synthetic(64))
    assert all(e.rank in (None, 1) for e in result.structure.entries)
    assert all(e.spec.ranks in ((), (1,)) for e in result.structure.entries)
    alpha = torch.randn(50)
    sizes = torch.randint(10, 500, (50,)).float()
    b = solve_shift(alpha, sizes, 3000.0)
    assert float((torch.sigmoid(alpha - b) * sizes).sum()) == pytest.approx(3000.0, rel=1e-4)


def test_prunepeft_shares_the_registered_bipeft_components():
    pl = load_plugins(entry_points=False)
    p = Pipeline(budget=1500, optimizer="prunepeft", plugins=pl)
    sens = p.build_component("sensitivity")
    sel = p.build_component("module_selector")
    assert type(sens) is pl.strategies.sensitivity.get("grad_weight_cos") is GradWeightCos
    assert type(sel) is pl.strategies.module_selector.get("budget_guided") is BudgetGuided
    assert sens.criterion == "train"  # I_tr/N, as docs/baselines.md says
    result = p.evolve(search_settings={"epochs": 2, "batch_size": 16}).search(tiny_model("bert"), synthetic(96))
    assert result.trace and all(e.rank in (None, 8) for e in result.structure.entries)
    # its rounds are a trigger of its own on the shared loop: 12 planned steps, rounds over the first 6
    assert PruneRounds(rounds=10, fraction=0.5).steps(12) == [1, 2, 3, 4, 5, 6]
    assert result.steps == 12 and [e.step for e in result.trace] == [1, 2, 3, 4, 5, 6]
    assert result.trace[-1].triggers_left == 0 and all(e.fixed == () and e.sensitivity == {} for e in result.trace)


def test_apet_fills_the_budget_with_other_seeds_giving_other_structures():
    train = synthetic(32)
    a = pipe("apet").search(tiny_model("bert"), train)
    c = pipe("apet").search(tiny_model("bert"), train, seed=3)
    assert a.structure != c.structure
    smallest = min(min(e.spec.counts) for e in a.structure.entries)
    assert a.budget - a.count < smallest or a.count == a.budget


@pytest.mark.parametrize(
    "method, expected",
    [
        ({"method": "lora"}, 2 * 2 * 8 * (32 + 32)),
        ({"method": "lora", "rank": 2, "targets": ["attn_q"]}, 2 * 2 * (32 + 32)),
        ({"method": "bitfit"}, 2 * (4 * 32 + 64 + 32 + 2 * 32) + 32),
        ({"method": "lnfit"}, 5 * 32),
        ({"method": "serial_adapter"}, 2 * (2 * 8 * 32 + 8 + 32)),
    ],
)
def test_manual_methods_have_their_exact_counts(method, expected):
    p = pipe({"name": "manual", **method}, budget=100)
    result = p.search(tiny_model("bert"), synthetic(16))
    assert result.count == expected
    assert result.budget_met == (expected <= 100)
    assert p.retrain(tiny_model("bert"), result.structure, synthetic(16)).peft_params == expected


def test_manual_counts_on_minilm_shape_match_the_reference_figures():
    """docs/baselines.md: BitFit (all biases) 25,728; LoRA r=8 on q, v 73,728 on MiniLM-L6."""
    import transformers as T

    cfg = T.BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                       vocab_size=30522)
    with torch.device("meta"):
        model = T.BertForSequenceClassification(cfg)
    assert backbone_param_count(model) == 22_565_376
    for method, expected in (("bitfit", 25_728), ("lora", 73_728)):
        p = pipe({"name": "manual", "method": method}, budget="0.1%")
        from bipeft_core.targets import find_target_map

        space = p.build_component("optimizer").adapt_space(p.resolved_space())
        specs = space.modules(model, find_target_map(model, p.get_plugins().target_maps), p.get_plugins().peft_modules)
        assert sum(s.max_count for s in specs) == expected


def test_full_fine_tuning_trains_every_backbone_parameter():
    p = pipe("full", budget=100)
    model = tiny_model("bert")
    result = p.search(model, synthetic(16))
    total = backbone_param_count(tiny_model("bert"))
    assert result.count == total and result.structure.full and not result.budget_met
    fresh = tiny_model("bert")
    before = {n: t.clone() for n, t in fresh.named_parameters()}
    retrained = p.retrain(fresh, result.structure, synthetic(32))
    assert retrained.peft_params == total
    changed = [n for n, t in fresh.named_parameters() if not torch.equal(before[n], t)]
    assert any("encoder.layer.0.attention.self.query" in n for n in changed)


def test_autopeft_returns_front_and_best_within_budget():
    pytest.importorskip("optuna")
    train, val = synthetic(64), synthetic(32, seed=1)
    p = pipe({"name": "autopeft", "trials": 4, "trial_epochs": 1}, budget=3000, space="s1")
    result = p.search(tiny_model("bert"), train, val, evaluate_fn=lambda m: accuracy(m, val))
    trials = result.extra["trials"]
    assert len(trials) == 4 and result.extra["pareto"]
    # a trial's count is the exact count of the modules it switched on
    specs = {e.spec.index: e.spec for e in result.structure.entries}
    picked = next(t for t in trials if t["count"] == result.count)
    assert sum(specs[int(i)].count(r) for i, r in picked["choices"].items()) == result.count
    fitting = [t for t in trials if t["count"] <= 3000]
    if fitting:
        assert result.count <= 3000
        assert result.count in {t["count"] for t in fitting}
    again = p.search(tiny_model("bert"), train, val, evaluate_fn=lambda m: accuracy(m, val))
    assert [t["sizes"] for t in again.extra["trials"]] == [t["sizes"] for t in trials]


class Boom(Exception):
    pass


@pytest.mark.parametrize("optimizer, at", [({"name": "s3delta"}, 4), ({"name": "prunepeft", "rounds": 4}, 8)],
                         ids=["s3delta", "prunepeft"])
def test_s3delta_and_prunepeft_resume_after_their_last_finished_epoch(tmp_path, optimizer, at):
    from bipeft_core import BipeftError

    train = synthetic(96)
    ref = pipe(optimizer, epochs=3).search(tiny_model("bert"), train)
    cut = pipe(optimizer, epochs=3).evolve(plugins=load_plugins([InterruptAt(at, Boom)], entry_points=False))
    with pytest.raises(Boom):  # in the second epoch: the checkpoint holds the first
        cut.search(tiny_model("bert"), train, checkpoint_dir=tmp_path)
    assert (tmp_path / "search-checkpoint.pt").is_file()
    resumed = pipe(optimizer, epochs=3).search(tiny_model("bert"), train, checkpoint_dir=tmp_path, resume=True)
    assert resumed.structure == ref.structure and resumed.steps == ref.steps
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history]
    assert [e.pruned for e in resumed.trace] == [e.pruned for e in ref.trace]
    with pytest.raises(BipeftError, match="belongs to another search"):
        pipe({"name": "s3delta" if optimizer["name"] == "prunepeft" else "prunepeft"}, epochs=3).search(
            tiny_model("bert"), train, checkpoint_dir=tmp_path, resume=True)


def test_autopeft_resumes_after_its_last_finished_trial(tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    import bipeft_plugins.strategies.autopeft as autopeft

    from bipeft_core import BipeftError

    train, val = synthetic(48), synthetic(16, seed=1)
    p = pipe({"name": "autopeft", "trials": 5, "trial_epochs": 1}, budget=3000, space="s1")

    def search(folder, resume=False):
        return p.search(tiny_model("bert"), train, val, evaluate_fn=lambda m: accuracy(m, val),
                        checkpoint_dir=folder, resume=resume)

    ref = search(None)
    trained = sum("repeat_of" not in t for t in ref.extra["trials"])
    assert trained >= 3
    original, calls = autopeft.train_model, []

    def killed_at_the_third_training(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(autopeft, "train_model", killed_at_the_third_training)
    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "ckpt")
    calls.clear()
    resumed = search(tmp_path / "ckpt", resume=True)
    assert len(calls) == trained - 2  # the two trained trials are not trained again
    assert resumed.extra["trials"] == ref.extra["trials"] and resumed.structure == ref.structure
    other = pipe({"name": "autopeft", "trials": 5, "trial_epochs": 1}, budget=2000, space="s1")
    with pytest.raises(BipeftError, match="belongs to another search"):
        other.search(tiny_model("bert"), train, val, evaluate_fn=lambda m: accuracy(m, val),
                     checkpoint_dir=tmp_path / "ckpt", resume=True)


def test_autopeft_does_not_train_the_same_modules_twice(monkeypatch):
    optuna = pytest.importorskip("optuna")
    import bipeft_plugins.strategies.autopeft as autopeft

    class AlwaysLargest(optuna.samplers.BaseSampler):  # proposes one configuration again and again
        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, name, distribution):
            return distribution.choices[-1]

    monkeypatch.setattr(optuna.samplers, "RandomSampler", lambda seed: AlwaysLargest())
    original, calls = autopeft.train_model, []
    monkeypatch.setattr(autopeft, "train_model", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    train, val = synthetic(32), synthetic(16, seed=1)
    p = pipe({"name": "autopeft", "trials": 3, "sampler": "random"}, budget=10**6, space="s1")
    result = p.search(tiny_model("bert"), train, val, evaluate_fn=lambda m: accuracy(m, val))
    trials = result.extra["trials"]
    assert len(calls) == 1 and len(trials) == 3
    assert [t.get("repeat_of") for t in trials] == [None, 0, 0]
    assert trials[1]["accuracy"] == trials[2]["accuracy"] == trials[0]["accuracy"]
    assert "1 trained; 2 repeated" in result.notes[0] and "picked trial 0" in result.notes[0]


def test_autopeft_without_validation_is_a_clear_error():
    pytest.importorskip("optuna")
    from bipeft_core import BipeftError

    with pytest.raises(BipeftError, match="pass validation examples"):
        pipe({"name": "autopeft", "trials": 1}, space="s1").search(tiny_model("bert"), synthetic(16))


def test_every_strategy_has_a_spec_file_and_they_load():
    pl = load_plugins(entry_points=False)
    files = sorted(SPECS.glob("*.toml"))
    optimizers = {Pipeline.from_toml(f, plugins=pl).optimizer.name for f in files}
    assert {"iterative", "s3delta", "prunepeft", "apet", "autopeft", "manual", "full"} <= optimizers
