"""The BIPEFT search: components against hand-computed values, properties,
end-to-end runs on tiny models, and checkpoint/resume."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from bipeft_plugins.strategies.bipeft import (
    BudgetGuided,
    BudgetStability,
    GradWeightCos,
    StabilityKL,
    expected_sizes,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from bipeft_core import BudgetError, Pipeline, TrainingError, hookimpl, load_plugins
from bipeft_core.checkpoint import CheckpointError, CheckpointManager
from bipeft_core.loop import LoopOptimizer
from bipeft_core.repair import repair_to_budget, structure_count
from bipeft_core.state import SearchState
from bipeft_core.supernet import Supernet
from bipeft_core.targets import find_target_map
from bipeft_core.testing import InterruptAt, tiny_model
from bipeft_core.testing import toy_examples as synthetic


def supernet_for(family="bert", space="s2"):
    pl = load_plugins(entry_points=False)
    model = tiny_model(family)
    specs = pl.spaces.get(space).modules(model, find_target_map(model, pl.target_maps), pl.peft_modules)
    return Supernet(model, specs, pl.peft_modules, generator=torch.Generator().manual_seed(0)), specs


# -- sensitivity (Eq. 1-4) -------------------------------------------------------------------


def test_sensitivity_matches_hand_computation():
    theta = torch.tensor([1.0, 2.0])
    s_tr = theta * torch.tensor([0.5, -1.0])  # [0.5, -2]
    s_val = theta * torch.tensor([1.0, 1.0])  # [1, 2]
    est = GradWeightCos(normalizer="max")  # the paper's N_m (the normalisers: test_search_quality.py)
    n = 2.0
    i_tr, i_val = 2.5, 3.0
    cos = (0.5 * 1 - 2 * 2) / (math.hypot(0.5, 2) * math.hypot(1, 2))
    expected = i_tr / n + cos * i_val / n
    assert est.score_of([s_tr], [s_val], n) == pytest.approx(expected)

    class Spec:
        max_count = 2

    est.reset([Spec(), Spec()])
    est.observe(train=[[s_tr], None], val=[[s_val], [s_val]], active=torch.tensor([True, True]))
    assert float(est.scores[0]) == pytest.approx(0.15 * expected)
    # a module with no training products: zeros, cosine with a zero vector is 0 (never NaN)
    assert float(est.scores[1]) == pytest.approx(0.15 * (0 + 0 * 3 / 2))
    est.observe(train=[[s_tr], [s_tr]], val=[[s_val], [s_val]], active=torch.tensor([True, False]))
    assert float(est.scores[0]) == pytest.approx(0.85 * 0.15 * expected + 0.15 * expected)
    assert float(est.scores[1]) == 0.0  # inactive (pruned) modules are not updated


@pytest.mark.parametrize("criterion, value", [("train", 2.5 / 2), ("val", 3 / 2), ("sum", 5.5 / 2)])
def test_sensitivity_criteria(criterion, value):
    s_tr, s_val = torch.tensor([0.5, -2.0]), torch.tensor([1.0, 2.0])
    assert GradWeightCos(criterion=criterion).score_of([s_tr], [s_val], 2.0) == pytest.approx(value)


def test_sensitivity_rejects_bad_parameters():
    with pytest.raises(ValueError):
        GradWeightCos(beta=1.5)
    with pytest.raises(ValueError):
        GradWeightCos(criterion="magic")


# -- trigger (Eq. 5) -------------------------------------------------------------------------


class FakeSupernet:
    def __init__(self, n):
        self.pruned = torch.zeros(n, dtype=torch.bool)


def fake_state(sizes, budget, scores, steps_per_epoch=1):
    specs = [type("S", (), {"max_count": s})() for s in sizes]
    st_ = SearchState(supernet=FakeSupernet(len(sizes)), specs=specs, budget=budget, steps_per_epoch=steps_per_epoch)
    st_.expected_sizes = torch.tensor(sizes, dtype=torch.float64)
    st_.scores = torch.tensor(scores, dtype=torch.float64)
    return st_


def test_trigger_indicator_fills_budget_skipping_what_does_not_fit():
    state = fake_state([5, 4, 3, 2], budget=8, scores=[4.0, 3.0, 2.0, 1.0])
    trig = BudgetStability(window=2, warmup_epochs=0)
    trig.reset(state)
    # by score: 5 (fits, 5), 4 (9 > 8, skip), 3 (8, fits), 2 (10, skip)
    assert trig.indicator(state).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_paper_trigger_fires_on_a_stable_history_and_not_during_warmup():
    state = fake_state([5, 4, 3, 2], budget=8, scores=[4.0, 3.0, 2.0, 1.0], steps_per_epoch=10)
    trig = BudgetStability(window=3, threshold=0.85, warmup_epochs=0.5, spread=False, fresh=False, max_triggers=100)
    trig.reset(state)
    assert state.triggers_left == 100
    fired = []
    for step in range(1, 12):
        state.step = step
        fired.append(trig.should_fire(state))
    # warm-up until epoch 0.5 (step 5); indicators recorded from step 5 on; step 8 is the first
    # with 3 earlier ones, and the history is not cleared, so it fires on every later step
    assert fired == [False] * 7 + [True] * 4


def test_trigger_does_not_fire_when_the_indicator_keeps_changing():
    state = fake_state([4, 4, 4, 4], budget=8, scores=[4.0, 3.0, 2.0, 1.0])
    trig = BudgetStability(window=2, threshold=0.85, warmup_epochs=0, spread=False)  # the stability rule alone
    trig.reset(state)
    orders = [[4, 3, 2, 1], [1, 2, 3, 4], [4, 3, 2, 1], [1, 2, 3, 4], [4, 3, 2, 1]]
    out = []
    for step, scores in enumerate(orders, 1):
        state.step = step
        state.scores = torch.tensor(scores, dtype=torch.float64)
        out.append(trig.should_fire(state))
    # indicators alternate [1,1,0,0] / [0,0,1,1]: mean cosine 0.5 < 0.85
    assert out == [False] * 5


def test_triggers_left_has_one_owner_the_loop_through_plan_and_count():
    state = fake_state([5, 4, 3], budget=8, scores=[3.0, 2.0, 1.0])
    assert state.expected_sizes.tolist() == [5.0, 4.0, 3.0]  # N_m until the module selector sets it
    with pytest.raises(AttributeError):
        state.triggers_left = 3  # read-only: components cannot change K
    BudgetStability(spread=False, max_triggers=2).reset(state)  # K through the declared path
    assert state.triggers_left == 2
    assert state.count_firing() == 1 and state.count_firing() == 0
    with pytest.raises(ValueError, match="no triggers left"):
        state.count_firing()
    with pytest.raises(ValueError, match="whole number"):
        state.plan_triggers(-1)
    state.step = 7
    again = fake_state([5, 4, 3], budget=8, scores=[3.0, 2.0, 1.0])
    again.load_state_dict(state.state_dict())  # what a checkpoint holds comes back
    assert (again.step, again.triggers_left) == (7, 0)


# -- module selection (Eq. 6-8) -------------------------------------------------------------


def test_module_selection_delta_and_walk_by_hand():
    sn, specs = supernet_for("bert")
    n = len(specs)
    with torch.no_grad():
        sn.alpha.zero_()  # π = 0.5 everywhere
        sn.beta.zero_()  # uniform rank weights
    state = SearchState(supernet=sn, specs=specs, budget=1000, steps_per_epoch=1, triggers_left=20)
    state.scores = torch.arange(n, dtype=torch.float64)  # module 0 least sensitive
    per = []
    for s in specs:
        per.append(sum(s.counts) / len(s.counts) if s.is_matrix else s.counts[0])
    e = sum(0.5 * p for p in per)
    delta = (e - 1000) / 20
    pruned = BudgetGuided().select(state)
    assert state.last_expected == pytest.approx(e)
    assert state.last_delta == pytest.approx(delta)
    walk = [0.5 * p if s.is_matrix else p for s, p in zip(specs, per)]
    removed, expect = 0.0, []
    for i in range(n):
        if removed > delta:
            break
        if i == 0 or removed + walk[i] <= delta:
            expect.append(i)
            removed += walk[i]
    assert pruned == expect and pruned[0] == 0


def test_module_selection_prunes_nothing_under_budget():
    sn, specs = supernet_for("bert")
    state = SearchState(supernet=sn, specs=specs, budget=10**9, steps_per_epoch=1, triggers_left=5)
    state.scores = torch.zeros(len(specs), dtype=torch.float64)
    assert BudgetGuided().select(state) == []


def test_expected_size_equals_exact_size_when_weights_are_one_hot():
    sn, specs = supernet_for("bert")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        keep = torch.rand(len(specs), generator=g) > 0.5
        sn.alpha.copy_(torch.stack([torch.where(keep, -1e4, 1e4), torch.where(keep, 1e4, -1e4)], 1))
        sn.beta.copy_(torch.randn(sn.beta.shape, generator=g) * 1e4)
    expected, _ = expected_sizes(sn, use_keep_prob=True)
    ranks = sn.argmax_rank().tolist()
    exact = sum(s.count(ranks[i] if s.is_matrix else None) for i, s in enumerate(specs) if keep[i])
    assert float(expected.sum()) == pytest.approx(exact)


# -- rank selection (Eq. 9-10) --------------------------------------------------------------


def test_rank_selection_n_fix_and_dsi_by_hand():
    sn, specs = supernet_for("bert")
    matrix = [i for i, s in enumerate(specs) if s.is_matrix]
    state = SearchState(supernet=sn, specs=specs, budget=1000, steps_per_epoch=1)
    sel = StabilityKL()
    sel.reset(state)
    g = torch.Generator().manual_seed(0)
    snaps = []
    for _ in range(3):
        with torch.no_grad():
            sn.beta.add_(torch.randn(sn.beta.shape, generator=g) * 0.5)
        snaps.append(sn.beta.detach().clone())
        sel.observe(state)
    state.plan_triggers(4)
    fixed = sel.select(state)
    # g = cos(first, last potential dims); n_fix = floor(g * M_u / K')
    def dims(beta):
        idx = beta.masked_fill(~sn.cand_valid, float("-inf")).argmax(-1)
        d = sn.cand_ranks.gather(1, idx[:, None])[:, 0].double()
        return torch.where(sn.is_matrix, d, torch.zeros_like(d))

    a, b = dims(snaps[0]), dims(snaps[-1])
    gsim = float(torch.dot(a, b) / (a.norm() * b.norm()))
    n_fix = math.floor(gsim * len(matrix) / 4)
    assert len(fixed) == n_fix
    dsi = {}
    for i in matrix:
        v = sn.cand_valid[i]
        stack = torch.stack([s[i, v] for s in snaps]).double()
        p0, p1 = stack[0].softmax(-1), stack[-1].softmax(-1)
        dsi[i] = float(stack.std(0, unbiased=False).mean()) * float((p1 * (p1.log() - p0.log())).sum())
    assert sorted(fixed) == sorted(sorted(matrix, key=lambda i: (dsi[i], i))[:n_fix])
    ranks = sn.argmax_rank()
    assert all(r == int(ranks[i]) for i, r in fixed.items())
    # history is cleared: fewer than 2 snapshots fixes nothing
    assert sel.select(state) == {}


def test_rank_selection_fixes_all_on_the_penultimate_trigger_and_none_on_the_last():
    sn, specs = supernet_for("bert")
    state = SearchState(supernet=sn, specs=specs, budget=1000, steps_per_epoch=1)
    sel = StabilityKL()
    for _ in range(2):
        sel.observe(state)
    state.plan_triggers(1)
    assert len(sel.select(state)) == sum(s.is_matrix for s in specs)
    for _ in range(2):
        sel.observe(state)
    assert state.count_firing() == 0
    assert sel.select(state) == {}


# -- budget repair -----------------------------------------------------------------------


@st.composite
def repair_cases(draw):
    _, specs = SPECS
    keep = draw(st.lists(st.booleans(), min_size=len(specs), max_size=len(specs)))
    choices = {i: (draw(st.sampled_from(s.ranks)) if s.is_matrix else None) for i, s in enumerate(specs) if keep[i]}
    scores = draw(st.lists(st.floats(0, 1), min_size=len(specs), max_size=len(specs)))
    budget = draw(st.integers(min_value=min(min(s.counts) for s in specs), max_value=5000))
    return specs, choices, scores, budget


SPECS = supernet_for("bert")


@given(repair_cases())
def test_repair_never_exceeds_budget_and_only_lowers_or_removes(case):
    specs, choices, scores, budget = case
    out, log = repair_to_budget(specs, choices, scores, budget)
    assert structure_count(specs, out) <= budget
    assert set(out) <= set(choices)
    assert all(out[i] is None or out[i] <= choices[i] for i in out)
    if structure_count(specs, choices) <= budget:
        assert out == choices and log == []


# -- end to end ------------------------------------------------------------------------------


def pipeline(budget, **kw):
    return Pipeline(budget=budget, trigger={"name": "budget_stability", "warmup_epochs": 0.5, "max_triggers": 20,
                                            "window": 2, "span_fraction": 0.6},
                    search_settings={"epochs": 4, "batch_size": 16, "lr": 1e-3},
                    retrain_settings={"epochs": 1, "batch_size": 16}, plugins=load_plugins(entry_points=False), **kw)


class PrunedRecorder:
    def __init__(self):
        self.masks = []

    @hookimpl
    def bipeft_after_step(self, state, control):
        self.masks.append(state.pruned.clone())


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_search_reaches_budget_and_retrain_matches_count(family):
    train = synthetic(192, t5=family == "t5")
    rec = PrunedRecorder()
    pipe = Pipeline(budget=1500, trigger={"name": "budget_stability", "warmup_epochs": 0.5, "max_triggers": 8,
                                          "window": 3, "spread": False, "fresh": False},
                    search_settings={"epochs": 10, "batch_size": 16, "lr": 1e-3},
                    retrain_settings={"epochs": 1, "batch_size": 16}, plugins=load_plugins([rec], entry_points=False))
    result = pipe.search(tiny_model(family), train)
    assert result.count <= result.budget == 1500
    # the selection reaches the budget within the run: every trigger fired before the epochs ran out
    assert result.budget_met and len(result.trace) == 8 and result.trace[-1].triggers_left == 0
    assert result.steps < 10 * 6 and not any("ran out" in n for n in result.notes)
    assert result.structure.count() == result.count
    # pruning is monotone: nothing comes back
    for a, b in zip(rec.masks, rec.masks[1:]):
        assert not (a & ~b).any()
    retrained = pipe.retrain(tiny_model(family), result.structure, train)
    assert retrained.peft_params == result.count


def test_same_seed_same_structure_and_other_seed_differs():
    train = synthetic(160)
    a = pipeline(1500).search(tiny_model("bert"), train)
    b = pipeline(1500).search(tiny_model("bert"), train)
    c = pipeline(1500).search(tiny_model("bert"), train, seed=7)
    assert a.structure == b.structure and a.history == tuple(
        {**h, "step_time": a.history[i]["step_time"]} for i, h in enumerate(b.history))
    assert c.structure != a.structure


@settings(max_examples=4)
@given(budget=st.integers(min_value=400, max_value=6000))
def test_final_structure_never_exceeds_budget(budget):
    result = pipeline(budget).search(tiny_model("bert"), synthetic(96))
    assert result.count <= budget


def test_budget_outside_the_space_is_an_error():
    with pytest.raises(BudgetError, match="below the smallest module"):
        pipeline(5).search(tiny_model("bert"), synthetic(32))
    with pytest.raises(BudgetError, match="holds the whole space"):
        pipeline("100%").search(tiny_model("bert"), synthetic(32))


def test_nan_loss_stops_with_a_clear_error():
    def nan_loss(model, batch):
        return model(**batch).loss * float("nan")

    with pytest.raises(TrainingError, match="the loss is nan at architecture step 0"):
        pipeline(1500).search(tiny_model("bert"), synthetic(32), loss_fn=nan_loss)


# -- checkpoint and resume -------------------------------------------------------------------


class Boom(Exception):
    pass





@pytest.mark.parametrize("at", [5, 7, 17])  # 7: the last checkpoint is the one at the end of epoch 1
def test_resume_reaches_the_same_structure(tmp_path, at):
    train = synthetic(192)
    ref = pipeline(1500).search(tiny_model("bert"), train)
    interrupted = pipeline(1500).evolve(plugins=load_plugins([InterruptAt(at, Boom)], entry_points=False))
    with pytest.raises(Boom):
        interrupted.search(tiny_model("bert"), train, checkpoint_dir=tmp_path, checkpoint_every=2)
    assert (tmp_path / "search-checkpoint.pt").is_file()
    resumed = pipeline(1500).search(tiny_model("bert"), train, checkpoint_dir=tmp_path, checkpoint_every=2,
                                    resume=True)
    assert resumed.structure == ref.structure
    assert [e.pruned for e in resumed.trace] == [e.pruned for e in ref.trace]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history]


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    train = synthetic(64)
    (tmp_path / "search-checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        pipeline(1500).search(tiny_model("bert"), train, checkpoint_dir=tmp_path, resume=True)
    (tmp_path / "search-checkpoint.pt").unlink()
    pipeline(1500).search(tiny_model("bert"), train, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="belongs to another search"):
        pipeline(1200).search(tiny_model("bert"), train, checkpoint_dir=tmp_path, resume=True)


def test_checkpoint_of_an_older_format_is_refused_with_the_fix(tmp_path):
    CheckpointManager(tmp_path).save({})
    data = torch.load(tmp_path / "search-checkpoint.pt", weights_only=True)
    torch.save({**data, "version": 1}, tmp_path / "search-checkpoint.pt")
    with pytest.raises(CheckpointError, match="older bipeft .format 1.*delete the checkpoint"):
        pipeline(1500).search(tiny_model("bert"), synthetic(64), checkpoint_dir=tmp_path, resume=True)


# -- a third-party strategy on the search loop's defaults ----------------------------------------


@attrs.define(kw_only=True)
class JointDarts(LoopOptimizer):
    """Declares only an architecture optimiser and its final structure: every
    other hook of the loop keeps its default (joint α/β steps on half B,
    sampled gates for the weights, step and loss in the history, the repair
    by the sensitivity scores)."""

    name = "joint_darts"
    components = ("sensitivity",)
    default_components = {"sensitivity": {"name": "grad_weight_cos", "normalizer": "max"}}

    def arch_optimizer(self, supernet):
        return torch.optim.Adam(supernet.arch_parameters(), lr=0.05)

    def final_choices(self, loop):
        keep, ranks = loop.supernet.eval_keep().tolist(), loop.supernet.eval_rank().tolist()
        return {i: (ranks[i] if spec.is_matrix else None) for i, spec in enumerate(loop.specs) if keep[i]}


class JointDartsPlugin:
    @hookimpl
    def bipeft_register_strategies(self, registry):
        registry.add(JointDarts)


class LogitRecorder:
    def __init__(self):
        self.alphas = []

    @hookimpl
    def bipeft_before_search(self, context):
        self.supernet = context.supernet

    @hookimpl
    def bipeft_after_step(self, state, control):
        self.alphas.append(self.supernet.alpha.detach().clone())


def test_a_strategy_on_the_loop_defaults_trains_repairs_and_resumes(tmp_path):
    train = synthetic(96)  # 3 steps an epoch on half A

    def pipe(*extra):
        return Pipeline(budget=1500, optimizer="joint_darts", search_settings={"epochs": 3, "batch_size": 16},
                        plugins=load_plugins([JointDartsPlugin(), *extra], entry_points=False))

    rec = LogitRecorder()
    ref = pipe(rec).search(tiny_model("bert"), train)
    # no trigger: every planned step runs, each with an architecture step that moves the logits
    assert ref.steps == 9 and ref.trace == () and len(rec.alphas) == 9
    assert all(not torch.equal(a, b) for a, b in zip(rec.alphas, rec.alphas[1:]))
    assert [sorted(h) for h in ref.history] == [["loss", "step", "step_time"]] * 9
    assert ref.count <= 1500 and ref.structure.count() == ref.count
    with pytest.raises(Boom):
        pipe(InterruptAt(5, Boom)).search(tiny_model("bert"), train, checkpoint_dir=tmp_path, checkpoint_every=2)
    resumed = pipe().search(tiny_model("bert"), train, checkpoint_dir=tmp_path, resume=True)
    assert resumed.structure == ref.structure
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history]
    with pytest.raises(CheckpointError, match="strategy 'joint_darts', not 'iterative'"):
        pipeline(1500).search(tiny_model("bert"), train, checkpoint_dir=tmp_path, resume=True)


# -- the ablation variants (paper Table 2) ------------------------------------------------------


@pytest.mark.parametrize("variant", ["entangled", "no_iteration", "no_selection"])
def test_ablation_variants_run_and_report(variant):
    train = synthetic(128)
    pipe = pipeline(1500, optimizer={"name": "iterative", "variant": variant})
    result = pipe.search(tiny_model("bert"), train)
    assert result.structure.count() == result.count
    if variant == "no_selection":
        assert result.trace == () and any("not repaired" in n for n in result.notes)
    else:
        assert result.count <= 1500 and result.trace


def test_no_iteration_steps_alpha_and_beta_together():
    sn, specs = supernet_for("bert")
    batch = {"input_ids": torch.randint(2, 128, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long),
             "labels": torch.tensor([0, 1])}
    with torch.no_grad():
        for p in sn.peft_parameters():
            p.normal_(0, 0.1)
    sn.configure("joint", temperature=1.0, generator=torch.Generator().manual_seed(0))
    sn(**batch).loss.backward()
    assert sn.alpha.grad.abs().sum() > 0 and sn.beta.grad.abs().sum() > 0


def test_entangled_keep_probability_is_one_minus_rank_zero():
    sn, specs = supernet_for("bert")
    sn.entangled = True
    with torch.no_grad():
        sn.alpha.normal_()
        sn.beta.normal_()
    joint = sn.joint_logits().detach().softmax(-1)
    pi = sn.keep_probability()
    for i, s in enumerate(specs):
        if s.is_matrix:
            assert float(pi[i]) == pytest.approx(1 - float(joint[i, 0]))
            assert float(joint[i, 1:].sum()) == pytest.approx(1 - float(joint[i, 0]))
        else:
            assert float(pi[i]) == pytest.approx(float(sn.alpha[i].detach().softmax(-1)[1]))


def test_unknown_variant_is_rejected_at_spec_load():
    from bipeft_core import SpecError

    with pytest.raises(SpecError, match="variant"):
        pipeline(1500, optimizer={"name": "iterative", "variant": "magic"})
