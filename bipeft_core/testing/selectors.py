"""The contracts of :class:`~bipeft_core.interfaces.ModuleSelector` and
:class:`~bipeft_core.interfaces.DimensionSelector`, as pytest tests a plugin
author subclasses::

    from bipeft_core.testing import DimensionSelectorContract, ModuleSelectorContract

    class TestMySelector(ModuleSelectorContract):
        module_selector = MySelector
        params = {"share": 0.5}

A selector is driven through the triggers of a synthetic search
(:func:`~bipeft_core.testing.fixtures.synthetic_state`) as the iterative
optimizer drives it (:func:`fire_selectors`); the other kind of selection is
made by a simple stand-in. The sequence invariants of both selectors
together are :class:`~bipeft_core.testing.BudgetInvariantsContract`'s.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from bipeft_core.interfaces import DimensionSelector, ModuleSelector
from bipeft_core.state import SearchState
from bipeft_core.testing._common import Snapshot, build, expect, scores_of, through_checkpoint
from bipeft_core.testing.fixtures import synthetic_search_specs, synthetic_state, synthetic_step

__all__ = [
    "MODULE_SELECTOR_OWNS",
    "DimensionSelectorContract",
    "ModuleSelectorContract",
    "check_dimension_selection",
    "check_module_selection",
    "fire_selectors",
    "observe_dimensions",
]


#: What a module selector may write in the search state (ModuleSelector.select).
MODULE_SELECTOR_OWNS = ("state.expected_sizes", "state.last_expected", "state.last_delta")


def _whole(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_module_selection(state: SearchState, picked: Any, who: str) -> list[int]:
    """``picked`` (what ``who.select`` returned) is a list of distinct module
    indices, none pruned already; and ``state.expected_sizes``, which a
    module selector may update, is still one finite size >= 0 per module."""
    expect(isinstance(picked, (list, tuple)), f"{who}.select returned {picked!r}, not a list of module indices")
    n = len(state.specs)
    for i in picked:
        expect(_whole(i) and 0 <= i < n, f"{who}.select returned {i!r}, not a module index in [0, {n})")
        expect(not bool(state.pruned[i]), f"{who}.select returned module {i} ({state.specs[i].id}), which is "
                                          "already pruned")
    expect(len(set(picked)) == len(picked), f"{who}.select returned a module twice: {list(picked)}")
    sizes = state.expected_sizes
    if sizes is not None:
        expect(isinstance(sizes, torch.Tensor) and sizes.shape == (n,),
               f"{who} set state.expected_sizes to {sizes!r}; it is one size per module ({n})")
        expect(bool(torch.isfinite(sizes).all()) and bool((sizes >= 0).all()),
               f"{who} set state.expected_sizes to {sizes.tolist()}; sizes are finite and >= 0")
    return [int(i) for i in picked]


def check_dimension_selection(state: SearchState, fixed: Any, who: str) -> dict[int, int]:
    """``fixed`` (what ``who.select`` returned) maps module indices to ranks:
    each an unpruned matrix module whose rank is not fixed yet, each rank one
    of its candidates."""
    expect(isinstance(fixed, Mapping), f"{who}.select returned {fixed!r}, not a {{module index: rank}} mapping")
    n = len(state.specs)
    for i, rank in fixed.items():
        expect(_whole(i) and 0 <= i < n, f"{who}.select returned module {i!r}, not a module index in [0, {n})")
        spec = state.specs[i]
        expect(spec.is_matrix, f"{who}.select fixed a rank of {spec.id}, a vector module (it has no rank)")
        expect(not bool(state.pruned[i]), f"{who}.select fixed a rank of {spec.id}, which is pruned")
        already = int(state.fixed_rank[i])
        expect(already < 0, f"{who}.select fixed {spec.id} at rank {rank!r}; its rank was fixed at {already} "
                            "already, and a fixed rank never changes")
        expect(_whole(rank) and rank in spec.ranks,
               f"{who}.select fixed {spec.id} at rank {rank!r}, not one of its candidates {list(spec.ranks)}")
    return {int(i): int(r) for i, r in fixed.items()}


def observe_dimensions(state: SearchState, selector: DimensionSelector) -> None:
    """``selector.observe(state)`` after a weight step, checking it changes
    no structure."""
    before = Snapshot.of(state)
    selector.observe(state)
    before.unchanged(state, f"{type(selector).__name__}.observe")


def fire_selectors(state: SearchState, module_selector: ModuleSelector | None,
                   dimension_selector: DimensionSelector | None) -> tuple[list[int], dict[int, int]]:
    """One firing of the trigger, as the search loop makes it: the module
    selector (``state.triggers_left`` not yet counted down), the pruning
    applied, the firing counted (``state.count_firing``), the dimension
    selector, the ranks fixed. Each selection is checked
    (:func:`check_module_selection`, :func:`check_dimension_selection`);
    neither selector may change the structure itself, nor anything of the
    state it does not own (:data:`MODULE_SELECTOR_OWNS`). Returns what was
    pruned and fixed."""
    sn = state.supernet
    picked: list[int] = []
    if module_selector is not None:
        who = type(module_selector).__name__
        before = Snapshot.of(state)
        result = module_selector.select(state)
        before.unchanged(state, f"{who}.select", owns=MODULE_SELECTOR_OWNS)
        picked = check_module_selection(state, result, who)
    with torch.no_grad():
        for i in picked:
            sn.pruned[i] = True
    state.count_firing()
    fixed: dict[int, int] = {}
    if dimension_selector is not None:
        who = type(dimension_selector).__name__
        before = Snapshot.of(state)
        chosen = dimension_selector.select(state)
        before.unchanged(state, f"{who}.select")
        fixed = check_dimension_selection(state, chosen, who)
    with torch.no_grad():
        for i, rank in fixed.items():
            sn.fixed_rank[i] = rank
    return picked, fixed


@attrs.define
class _LeastScored(ModuleSelector):
    """Stand-in module selection for the dimension selector's contract: the
    least scored module, while more than one is left."""

    name = "contract_least_scored"

    def select(self, state: SearchState) -> list[int]:
        unpruned = torch.nonzero(~state.pruned).flatten().tolist()
        if len(unpruned) <= 1:
            return []
        return [min(unpruned, key=lambda i: (float(scores_of(state)[i]), i))]


@attrs.define
class _MostScoredArgmax(DimensionSelector):
    """Stand-in dimension selection for the module selector's contract: the
    most scored unfixed matrix module, at its argmax-β rank."""

    name = "contract_most_scored_argmax"

    def select(self, state: SearchState) -> dict[int, int]:
        sn = state.supernet
        open_ = torch.nonzero(sn.is_matrix & ~sn.pruned & (sn.fixed_rank < 0)).flatten().tolist()
        if not open_:
            return {}
        i = max(open_, key=lambda j: (float(scores_of(state)[j]), -j))
        return {i: int(sn.argmax_rank()[i])}


class _SelectorContract:
    """The synthetic search both selector contracts drive."""

    params: ClassVar[Mapping[str, Any]] = {}
    triggers: ClassVar[int] = 4
    """Firings per synthetic search."""
    steps_between: ClassVar[int] = 3
    """Synthetic weight steps before each firing."""
    n_matrix: ClassVar[int] = 8
    n_vector: ClassVar[int] = 6
    budget_fraction: ClassVar[float] = 0.3
    seeds: ClassVar[tuple[int, ...]] = (0, 1, 2)

    def make_state(self, seed: int = 0) -> SearchState:
        specs = synthetic_search_specs(self.n_matrix, self.n_vector, seed=seed)
        budget = max(1, int(self.budget_fraction * sum(s.max_count for s in specs)))
        state = synthetic_state(specs, budget, seed=seed)
        state.plan_triggers(self.triggers)  # what a trigger's reset does
        return state

    def make(self) -> Any:
        raise NotImplementedError

    def pair(self, selector: Any) -> tuple[ModuleSelector | None, DimensionSelector | None]:
        raise NotImplementedError

    def _start(self, selector: Any, state: SearchState) -> None:
        """Called once before the first step, as the loop does."""
        selector.reset(state)

    def _step(self, selector: Any, state: SearchState, g: torch.Generator) -> None:
        synthetic_step(state, g)

    def events(self) -> list[str]:
        """The synthetic search: ``step`` (a weight step) and ``fire`` (a
        trigger firing), :attr:`steps_between` steps before each of
        :attr:`triggers` firings."""
        return (["step"] * self.steps_between + ["fire"]) * self.triggers

    def _run(self, selector: Any, state: SearchState, g: torch.Generator, events: list[str],
             ) -> list[tuple[list[int], dict[int, int]]]:
        msel, dsel = self.pair(selector)
        out = []
        for event in events:
            if event == "step":
                self._step(selector, state, g)
            else:
                out.append(fire_selectors(state, msel, dsel))
        return out

    def _search(self, seed: int, selector: Any = None) -> tuple[Any, SearchState, list[Any]]:
        selector = selector if selector is not None else self.make()
        state = self.make_state(seed)
        self._start(selector, state)
        return selector, state, self._run(selector, state, torch.Generator().manual_seed(seed), self.events())

    def test_selections_are_valid_and_leave_the_structure_to_the_optimizer(self) -> None:
        for seed in self.seeds:
            self._search(seed)

    def test_same_inputs_same_selections(self) -> None:
        for seed in self.seeds:
            a, b = self._search(seed)[2], self._search(seed)[2]
            expect(a == b, f"two fresh {type(self.make()).__name__} on the same search selected {a} and {b}")

    def test_reset_starts_afresh(self) -> None:
        for seed in self.seeds:
            used = self._search(seed)[0]
            again = self._search(seed, used)[2]
            fresh = self._search(seed)[2]
            expect(again == fresh, f"{type(used).__name__} reset after a search selected {again}; a fresh one "
                                   f"{fresh}")

    def test_state_dict_round_trip_resumes_bit_for_bit(self) -> None:
        """Saved between two weight steps and right after a firing, as a
        search checkpoints."""
        events = self.events()
        gap = self.steps_between + 1
        cuts = sorted({min(len(events) - 1, c) for c in (gap // 2 + 1, gap, gap + gap // 2 + 1, len(events) - 2)})
        for seed in self.seeds:
            for cut in cuts:
                first = self.make()
                who = type(first).__name__
                state = self.make_state(seed)
                self._start(first, state)
                g = torch.Generator().manual_seed(seed)
                self._run(first, state, g, events[:cut])
                saved = through_checkpoint(first.state_dict(), f"{who}.state_dict()")
                copied, g_copy = copy.deepcopy(state), torch.Generator()
                g_copy.set_state(g.get_state())
                resumed = self.make()
                self._start(resumed, self.make_state(seed))  # a resumed search resets, then loads
                resumed.load_state_dict(saved)
                copied.load_state_dict(through_checkpoint(state.state_dict(), "SearchState.state_dict()"))
                a = self._run(first, state, g, events[cut:])
                b = self._run(resumed, copied, g_copy, events[cut:])
                expect(a == b, f"{who} resumed after event {cut} of {events} selected {b}; uninterrupted, {a}")


class ModuleSelectorContract(_SelectorContract):
    """What every module selector keeps, at each firing of a synthetic
    search: it returns distinct indices of unpruned modules (never one
    pruned already: pruning is never undone); it changes no structure,
    budget or count of triggers itself (the optimizer applies its
    selection); any ``expected_sizes`` it sets are one finite size >= 0 per
    module; the same inputs give the same selections; and ``state_dict``
    survives a checkpoint and a resumed selector selects as the
    uninterrupted one."""

    module_selector: ClassVar[Any] = None
    """The selector's class, or any callable that returns a fresh one."""

    def make_module_selector(self) -> ModuleSelector:
        """A fresh module selector (override for anything
        :attr:`module_selector` and :attr:`params` cannot express)."""
        return build(type(self).module_selector, self.params, "module_selector")

    def make(self) -> ModuleSelector:
        return self.make_module_selector()

    def pair(self, selector: ModuleSelector) -> tuple[ModuleSelector | None, DimensionSelector | None]:
        return selector, _MostScoredArgmax()

    def test_is_a_module_selector(self) -> None:
        sel = self.make_module_selector()
        expect(isinstance(sel, ModuleSelector), f"{sel!r} does not subclass ModuleSelector")
        expect(isinstance(type(sel).name, str) and bool(type(sel).name), f"{type(sel).__name__} has no name")


class DimensionSelectorContract(_SelectorContract):
    """What every dimension selector keeps, observing after every weight
    step and selecting at each firing of a synthetic search: it fixes only
    unpruned matrix modules whose rank is not fixed yet (a fixed rank never
    changes), each at one of its candidate ranks; neither ``observe`` nor
    ``select`` changes the structure itself; the same inputs give the same
    selections; ``state_dict`` survives a checkpoint and a resumed selector
    (reset, then loaded) selects as the uninterrupted one; ``reset`` starts
    afresh."""

    dimension_selector: ClassVar[Any] = None
    """The selector's class, or any callable that returns a fresh one."""

    def make_dimension_selector(self) -> DimensionSelector:
        """A fresh dimension selector (override for anything
        :attr:`dimension_selector` and :attr:`params` cannot express)."""
        return build(type(self).dimension_selector, self.params, "dimension_selector")

    def make(self) -> DimensionSelector:
        return self.make_dimension_selector()

    def pair(self, selector: DimensionSelector) -> tuple[ModuleSelector | None, DimensionSelector | None]:
        return _LeastScored(), selector

    def _step(self, selector: DimensionSelector, state: SearchState, g: torch.Generator) -> None:
        synthetic_step(state, g)
        observe_dimensions(state, selector)

    def test_is_a_dimension_selector(self) -> None:
        sel = self.make_dimension_selector()
        expect(isinstance(sel, DimensionSelector), f"{sel!r} does not subclass DimensionSelector")
        expect(isinstance(type(sel).name, str) and bool(type(sel).name), f"{type(sel).__name__} has no name")
