"""The search-quality changes of docs/search.md: the sensitivity normaliser,
the spread trigger schedule with fresh indicators, and the budget re-fill."""

from __future__ import annotations

import pytest
import torch
from bipeft_plugins.strategies.bipeft import BudgetStability, GradWeightCos
from hypothesis import given, settings
from hypothesis import strategies as st

from bipeft_core import Pipeline, load_plugins
from bipeft_core.repair import refill_to_budget, repair_to_budget, smallest_addition, structure_count
from bipeft_core.state import SearchState
from bipeft_core.supernet import Supernet
from bipeft_core.targets import find_target_map
from bipeft_core.testing import tiny_model
from bipeft_core.testing import toy_examples as synthetic


def supernet_for(family="bert"):
    pl = load_plugins(entry_points=False)
    model = tiny_model(family)
    specs = pl.spaces.get("s2").modules(model, find_target_map(model, pl.target_maps), pl.peft_modules)
    return Supernet(model, specs, pl.peft_modules, generator=torch.Generator().manual_seed(0)), specs


# -- the normaliser ---------------------------------------------------------------------------


def test_effective_counts_max_expected_and_live():
    sn, specs = supernet_for()
    i = next(j for j, s in enumerate(specs) if s.is_matrix)
    v = next(j for j, s in enumerate(specs) if not s.is_matrix)
    spec = specs[i]
    with torch.no_grad():
        sn.beta[i, : len(spec.ranks)] = torch.tensor([0.0, 2.0, 0.0])  # argmax at the middle rank
    counts = sn.effective_counts()
    w = torch.tensor([0.0, 2.0, 0.0]).softmax(-1).double()
    assert float(counts["max"][i]) == spec.max_count
    assert float(counts["live"][i]) == spec.count(spec.ranks[1])
    assert float(counts["expected"][i]) == pytest.approx(float((w * torch.tensor(spec.counts).double()).sum()))
    for key in ("max", "expected", "live"):  # a vector module carries its one count under all three
        assert float(counts[key][v]) == specs[v].count(None)
    with torch.no_grad():  # a fixed rank decides live and expected alike
        sn.fixed_rank[i] = spec.ranks[0]
    counts = sn.effective_counts()
    assert float(counts["live"][i]) == float(counts["expected"][i]) == spec.count(spec.ranks[0])


def test_normalizer_divides_by_the_size_it_names():
    class Spec:
        max_count = 8

    prods = [torch.tensor([1.0, -1.0])]  # I_tr = 2
    sizes = {"max": torch.tensor([8.0]), "expected": torch.tensor([4.0]), "live": torch.tensor([2.0])}
    for normalizer, n in (("max", 8.0), ("expected", 4.0), ("live", 2.0)):
        est = GradWeightCos(criterion="train", normalizer=normalizer, beta=0.0)
        est.reset([Spec()])
        est.observe(train=[prods], val=[None], active=torch.tensor([True]), sizes=sizes)
        assert float(est.scores[0]) == pytest.approx(2.0 / n)


def test_normalizer_that_needs_sizes_says_so():
    class Spec:
        max_count = 8

    est = GradWeightCos(normalizer="expected")
    est.reset([Spec()])
    with pytest.raises(TypeError, match="normalizer = 'expected' needs the per-module sizes"):
        est.observe(train=[None], val=[None], active=torch.tensor([True]))
    with pytest.raises(ValueError):
        GradWeightCos(normalizer="median")


# -- the trigger schedule -----------------------------------------------------------------


class _FakeSupernet:
    def __init__(self, n):
        self.pruned = torch.zeros(n, dtype=torch.bool)


def _state(total_steps, steps_per_epoch=10):
    sizes, scores = [5, 4, 3, 2], [4.0, 3.0, 2.0, 1.0]
    specs = [type("S", (), {"max_count": s})() for s in sizes]
    state = SearchState(supernet=_FakeSupernet(4), specs=specs, budget=8, steps_per_epoch=steps_per_epoch,
                        total_steps=total_steps)
    state.expected_sizes = torch.tensor(sizes, dtype=torch.float64)
    state.scores = torch.tensor(scores, dtype=torch.float64)
    return state


#: scores whose budget-filling indicators alternate between two disjoint sets (by step parity)
_ALTERNATING = ([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0])


def _fire_steps(trig, state, steps, scores_at=None):
    """The steps at which ``trig`` fires over ``steps`` steps; ``scores_at(step)``
    gives the scores of each step (default: the state's, unchanged)."""
    out = []
    for step in range(1, steps + 1):
        state.step = step
        if scores_at is not None:
            state.scores = torch.tensor(scores_at(step), dtype=torch.float64)
        if trig.should_fire(state):
            out.append(step)
            state.count_firing()
    return out


def test_spread_schedule_places_warmup_and_triggers_by_planned_steps():
    state = _state(total_steps=300)
    trig = BudgetStability(window=5, warmup_fraction=0.1, span_fraction=0.2, max_triggers=20)
    trig.reset(state)
    # warm-up 30 steps; span 60 steps holds 60 // 6 = 10 triggers, one per 6 steps, ending by step 90
    assert trig.schedule(state) == (30, 10, 90) and state.triggers_left == 10
    fired = _fire_steps(trig, state, 300)
    # a stable indicator: each trigger fires as soon as its spacing allows, all within the span
    assert fired == [36 + 6 * j for j in range(10)]
    # with slots, each fires once it has its window of 5 fresh indicators, also within the span
    slots = BudgetStability(window=5, warmup_fraction=0.1, span_fraction=0.2, max_triggers=20, deadline="slot")
    state = _state(total_steps=300)
    slots.reset(state)
    assert _fire_steps(slots, state, 300) == [35 + 6 * j for j in range(10)]
    assert fired[-1] <= 30 + 60
    # fewer planned steps: fewer triggers, never fewer than one
    small = _state(total_steps=20)
    assert trig.schedule(small)[1] == 1


def test_slots_fire_an_unsettled_trigger_at_its_slot_end_and_never_bunch():
    state = _state(total_steps=300)
    trig = BudgetStability(window=2, warmup_fraction=0.1, span_fraction=0.2, max_triggers=4, deadline="slot")
    trig.reset(state)
    assert trig.schedule(state) == (30, 4, 90)  # four slots of 15 steps: they end at 45, 60, 75 and 90
    never = _fire_steps(trig, state, 199, lambda step: _ALTERNATING[step % 2])  # an indicator that never settles
    assert never == [45, 60, 75, 90]
    # settled from step 60 on: the first two at their slots' ends, the others once stable (2 fresh indicators)
    state = _state(total_steps=300)
    trig.reset(state)
    fired = _fire_steps(trig, state, 199, lambda step: _ALTERNATING[step % 2] if step < 60 else _ALTERNATING[1])
    assert fired == [45, 60, 63, 66]


def test_span_deadline_spaces_by_what_is_left_and_bunches_at_the_end():
    """The default rule (``deadline = "span"``)."""
    state = _state(total_steps=300)
    trig = BudgetStability(window=2, warmup_fraction=0.1, span_fraction=0.2, max_triggers=4)
    assert trig.deadline == "span"
    trig.reset(state)
    assert trig.schedule(state) == (30, 4, 90)  # one trigger due every 15 steps
    # the indicator keeps changing until step 60
    fired = _fire_steps(trig, state, 199, lambda step: _ALTERNATING[step % 2] if step < 60 else _ALTERNATING[1])
    # the first fires once stable (step 61: steps 59 and 60 had its indicator); the other three share
    # the 29 steps left to step 90 (9, 10 and 10 apart) instead of 15 each
    assert fired == [61, 70, 80, 90]
    # an indicator that never settles: all four fire from the span's end (step 90) on, one a step
    state = _state(total_steps=300)
    trig.reset(state)
    assert _fire_steps(trig, state, 199, lambda step: _ALTERNATING[step % 2]) == [90, 91, 92, 93]


def test_fresh_indicators_keep_triggers_apart_without_spread():
    state = _state(total_steps=300)
    trig = BudgetStability(window=3, warmup_fraction=0.0, spread=False, fresh=True, max_triggers=5)
    trig.reset(state)
    fired = _fire_steps(trig, state, 40)
    # each firing clears the history: the next needs 3 new indicators, then compares the 4th
    assert fired == [4, 8, 12, 16, 20]


def test_paper_schedule_fires_on_consecutive_steps():
    state = _state(total_steps=300)
    trig = BudgetStability(window=3, warmup_epochs=0.0, spread=False, fresh=False, max_triggers=5)
    trig.reset(state)
    assert _fire_steps(trig, state, 40) == [4, 5, 6, 7, 8]


def test_trigger_state_round_trips_the_last_firing():
    state = _state(total_steps=300)
    trig = BudgetStability(window=2, warmup_fraction=0.0, span_fraction=0.5)
    trig.reset(state)
    _fire_steps(trig, state, 20)
    saved = trig.state_dict()
    again = BudgetStability(window=2, warmup_fraction=0.0, span_fraction=0.5)
    again.reset(_state(total_steps=300))
    again.load_state_dict(saved)
    assert again._last == trig._last and len(again._history) == len(trig._history)


# -- the re-fill ----------------------------------------------------------------------------


def test_refill_adds_by_score_and_records_each_addition():
    sn, specs = supernet_for()
    mats = [i for i, s in enumerate(specs) if s.is_matrix]
    vecs = [i for i, s in enumerate(specs) if not s.is_matrix]
    a, b = mats[0], mats[1]
    choices = {a: specs[a].ranks[0]}
    scores = [0.0] * len(specs)
    scores[a], scores[b], scores[vecs[0]] = 3.0, 2.0, 1.0
    budget = specs[a].max_count + specs[b].count(specs[b].ranks[0]) + specs[vecs[0]].count(None)
    out, log = refill_to_budget(specs, choices, scores, budget)
    # the best module is raised to its largest rank, then the next added at the rank that fits, then the vector
    assert out[a] == specs[a].max_rank and out[b] == specs[b].ranks[0] and out[vecs[0]] is None
    assert structure_count(specs, out) == budget
    assert log[0].startswith(f"raised {specs[a].id} from rank {specs[a].ranks[0]} to {specs[a].max_rank}")
    assert log[1].startswith(f"added {specs[b].id} at rank {specs[b].ranks[0]}")
    assert log[2].startswith(f"added {specs[vecs[0]].id}")
    # nothing more fits: a second re-fill adds nothing
    assert refill_to_budget(specs, out, scores, budget) == (out, [])


@st.composite
def refill_cases(draw):
    _, specs = _SPECS
    n = len(specs)
    kept = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    choices = {i: (draw(st.sampled_from(specs[i].ranks)) if specs[i].is_matrix else None) for i in kept}
    scores = draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n))
    total = sum(s.max_count for s in specs)
    budget = draw(st.integers(min(s.count(s.ranks[0] if s.is_matrix else None) for s in specs), total))
    return specs, choices, scores, budget


_SPECS = supernet_for()


@settings(max_examples=60, deadline=None)
@given(refill_cases())
def test_repair_then_refill_stays_within_budget_and_leaves_no_room(case):
    specs, choices, scores, budget = case
    repaired, _ = repair_to_budget(specs, choices, scores, budget)
    out, log = refill_to_budget(specs, repaired, scores, budget)
    count = structure_count(specs, out)
    assert count <= budget
    # every kept module stays at least at its repaired rank
    for i, r in repaired.items():
        assert i in out and (r is None or out[i] >= r)
    assert len(log) == sum(1 for i in out if i not in repaired or out[i] != repaired[i])
    # whatever is left is too small for any addition
    room = budget - count
    for i, s in enumerate(specs):
        if i not in out:
            smallest = s.count(s.ranks[0]) if s.is_matrix else s.count(None)
            assert smallest > room
        elif s.is_matrix and out[i] != s.max_rank:
            nxt = min(r for r in s.ranks if r > out[i])
            assert s.count(nxt) - s.count(out[i]) > room
    # and smallest_addition names that smallest step (None only when the whole space is in at full rank)
    least = smallest_addition(specs, out)
    full = len(out) == len(specs) and all(r is None or r == specs[i].max_rank for i, r in out.items())
    assert (least is None) == full
    assert least is None or least > room


def test_smallest_addition_counts_modules_and_rank_steps():
    _, specs = _SPECS
    m = next(i for i, s in enumerate(specs) if s.is_matrix)
    spec = specs[m]
    everything = {i: (s.max_rank if s.is_matrix else None) for i, s in enumerate(specs)}
    assert smallest_addition(specs, everything) is None
    one_step = dict(everything)
    one_step[m] = spec.ranks[-2]
    assert smallest_addition(specs, one_step) == spec.max_count - spec.count(spec.ranks[-2])
    v = next(i for i, s in enumerate(specs) if not s.is_matrix)
    without = {i: r for i, r in everything.items() if i != v}
    assert smallest_addition(specs, without) == specs[v].count(None)


# -- end to end -----------------------------------------------------------------------------


def test_default_search_fills_the_budget_and_records_its_trigger_steps():
    budget = 2000
    pipe = Pipeline(budget=budget, search_settings={"epochs": 6, "batch_size": 16, "lr": 1e-3},
                    plugins=load_plugins(entry_points=False))
    result = pipe.search(tiny_model("bert"), synthetic(192))
    data = result.to_dict()
    assert result.count <= budget and data["budget_use"] == result.count / budget
    assert data["budget_use"] >= 0.97  # the tiny model's smallest module is far below 3 % of the budget
    steps = data["trigger_steps"]
    assert steps == [e.step for e in result.trace] and len(steps) >= 1
    # spread with fresh indicators: two firings are at least window + 1 steps apart
    assert all(b - a >= 6 for a, b in zip(steps, steps[1:]))
    assert list(data["refill_log"]) == list(result.refill_log)
    # a result short of its budget says why: what is left is below the smallest addition
    if result.count < budget:
        note = next(n for n in result.notes if n.startswith("re-fill:"))
        assert f"{budget - result.count:,} of the budget left" in note


def test_weight_only_warmup_takes_no_architecture_step_until_the_warmup_ends():
    pipe = Pipeline(budget=2000, optimizer={"name": "iterative", "warmup_arch": False},
                    trigger={"name": "budget_stability", "warmup_fraction": 0.3, "span_fraction": 0.4, "window": 2},
                    search_settings={"epochs": 4, "batch_size": 16, "lr": 1e-3},
                    plugins=load_plugins(entry_points=False))
    result = pipe.search(tiny_model("bert"), synthetic(192))
    warm = [h for h in result.history if h["arch_loss"] is None]
    # 6 steps an epoch, 24 planned: a warm-up of round(0.3 * 24) = 7 steps, the trigger checked after each
    assert [h["step"] for h in warm] == list(range(1, 8))
    assert all(h["arch_loss"] is not None for h in result.history[7:])
    assert result.trace and result.trace[0].step > 7 and result.count <= 2000
