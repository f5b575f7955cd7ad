"""Budget parsing and the budget invariants (hypothesis)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bipeft_core import Budget, BudgetError, fill_walk, prune_walk
from bipeft_core.structure import Structure
from bipeft_core.types import ModuleSpec, Shape


@pytest.mark.parametrize(
    "text, count, ratio",
    [
        ("102600", 102600, None),
        ("102,600", 102600, None),
        ("0.0139%", None, Fraction(139, 1_000_000)),
        ("1.39bp", None, Fraction(139, 1_000_000)),
        ("1.39‱", None, Fraction(139, 1_000_000)),
        ("0.1%", None, Fraction(1, 1000)),
        ("100%", None, Fraction(1)),
    ],
)
def test_parse(text, count, ratio):
    b = Budget.parse(text)
    assert (b.count, b.ratio) == (count, ratio)


def test_paper_budget_on_t5_large_and_minilm():
    assert Budget.parse("1.39bp").resolve(737_639_424) == 102_531
    assert Budget.parse("0.1%").resolve(22_565_376) == 22_565
    assert "22,565 parameters (0.1% = 10bp of 22,565,376)" == Budget.parse("0.1%").describe(22_565_376)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("0", "at least 1 parameter"),
        (0, "at least 1 parameter"),
        (-5, "at least 1 parameter"),
        ("-5", "above 0"),
        ("0%", "above 0"),
        ("101%", "at most 1 (100%)"),
        ("0.5", "ambiguous budget '0.5'"),
        (0.5, "ambiguous budget 0.5"),
        ("lots", "cannot read budget 'lots'"),
        ({"count": 1, "ratio": 0.1}, "one key"),
    ],
)
def test_bad_budgets_say_what_and_how(bad, message):
    with pytest.raises(BudgetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Budget.parse(bad)


def test_ratio_above_one_from_python():
    with pytest.raises(BudgetError, match="at most 1"):
        Budget.of_ratio(1.5)


@st.composite
def budgets(draw, *, max_count: int = 10**9):
    """Count budgets and ratio budgets with each unit."""
    if draw(st.booleans()):
        return Budget.of_count(draw(st.integers(min_value=1, max_value=max_count)))
    digits = draw(st.integers(min_value=1, max_value=10**6))
    scale = draw(st.integers(min_value=0, max_value=8))
    ratio = Fraction(digits, 10**scale) / 10**4
    if ratio > 1:
        ratio = Fraction(1)
    return Budget.of_ratio(ratio)


@given(budgets())
def test_format_parse_round_trip(b):
    assert Budget.parse(str(b)) == b
    assert Budget.parse(b.to_value()) == b


@given(budgets(), st.integers(min_value=1, max_value=10**10))
def test_resolve_is_a_ceiling(b, total):
    n = b.resolve(total)
    assert n >= 1
    if b.ratio is not None and b.ratio * total >= 1:
        assert n <= b.ratio * total < n + 1


@st.composite
def module_specs(draw, *, max_modules: int = 12):
    n = draw(st.integers(min_value=1, max_value=max_modules))
    specs = []
    for i in range(n):
        fin = draw(st.integers(min_value=1, max_value=64))
        fout = draw(st.integers(min_value=1, max_value=64))
        matrix = draw(st.booleans())
        ranks = tuple(sorted(draw(st.sets(st.integers(min_value=1, max_value=16), min_size=1, max_size=4))))
        if matrix:
            counts = tuple(r * (fin + fout) for r in ranks)  # LoRA's count
        else:
            ranks, counts = (), (fout,)
        specs.append(ModuleSpec(index=i, id=f"m{i}", type="lora" if matrix else "bitfit",
                                kind="matrix" if matrix else "vector", position="attn_q", layer=f"l{i % 3}",
                                sites=(("target", f"x{i}"),), shape=Shape(in_features=fin, out_features=fout),
                                ranks=ranks, counts=counts))
    return specs


@given(module_specs(), st.data())
def test_structure_count_is_sum_and_breakdowns_agree(specs, data):

    keep = data.draw(st.lists(st.booleans(), min_size=len(specs), max_size=len(specs)))
    choices = {i: (data.draw(st.sampled_from(s.ranks)) if s.ranks else None)
               for i, s in enumerate(specs) if keep[i]}
    structure = Structure.from_choices(specs, choices)
    expected = sum(specs[i].count(r) for i, r in choices.items())
    assert structure.count() == expected
    assert sum(structure.by_type().values()) == expected == sum(structure.by_layer().values())
    structure.verify(_registry())
    assert Structure.from_dict(structure.to_dict()) == structure


_REG = []


def _registry():
    if not _REG:
        from bipeft_core.plugins import load_plugins

        _REG.append(load_plugins(entry_points=False).peft_modules)
    return _REG[0]


@given(st.integers(min_value=1, max_value=256), st.integers(min_value=1, max_value=256),
       st.integers(min_value=1, max_value=63))
def test_counts_are_monotone_in_rank(fin, fout, r):
    from bipeft_core.space import Shape as S

    reg = _registry()
    for name in ("lora", "adapter_lr", "serial_adapter", "parallel_adapter", "prefix"):
        t = reg.get(name)
        shape = S(in_features=fin, out_features=fout)
        assert t.param_count(shape, r + 1) > t.param_count(shape, r) > 0


@given(st.lists(st.integers(min_value=1, max_value=10_000), max_size=40), st.integers(min_value=0, max_value=50_000))
def test_fill_walk_never_exceeds_budget_and_is_greedy(sizes, budget):
    taken = fill_walk(sizes, budget)
    total = sum(s for s, t in zip(sizes, taken) if t)
    assert total <= budget
    # greedy: a skipped module did not fit at the moment it was reached
    running = 0
    for s, t in zip(sizes, taken):
        if t:
            running += s
        else:
            assert running + s > budget


@given(st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=40),
       st.floats(min_value=-100, max_value=50_000))
def test_prune_walk(sizes, delta):
    picked = prune_walk(sizes, delta)
    if delta <= 0:
        assert picked == []
        return
    assert picked[0] == 0  # the first module is always pruned when delta > 0
    removed = sum(sizes[i] for i in picked)
    assert removed <= delta or picked == [0]
    assert picked == sorted(set(picked))
