"""The budget invariants of a search's selection, as a hypothesis stateful test.

:class:`BudgetInvariantsMachine` drives a module selector and a dimension
selector through a drawn sequence of weight steps and trigger firings on a
drawn synthetic search space (:func:`~bipeft_core.testing.strategies.search_spaces`,
budget and number of triggers drawn too), firing as the search loop
fires (:func:`~bipeft_core.testing.selectors.fire_selectors`), and checks
after every step:

* pruning is monotone: a pruned module stays pruned;
* every fixed rank is a candidate of a matrix module, and a fixed rank never
  changes;
* the *reachable size* (the count of the largest structure the search can
  still return: every unpruned module at its fixed rank, else its largest
  candidate) never grows;
* the budget never changes, and the triggers left never go below 0;

and at the end, that the structure the search would return (every unpruned
module at its fixed, else argmax-β, rank), repaired by
:func:`~bipeft_core.repair.repair_to_budget`, keeps only unpruned modules at
no higher ranks and its exact count is within the budget, and that the
re-fill (:func:`~bipeft_core.repair.refill_to_budget`) stays within it.

The expected size under the logits (``E`` of the budget-guided selector) is
not among the invariants: architecture steps move the keep probabilities and
rank weights both ways between firings, so it may grow; the reachable size
bounds it from above and only shrinks.

A plugin author runs it on their selectors::

    from bipeft_core.testing import BudgetInvariantsContract

    class TestMySelectors(BudgetInvariantsContract):
        module_selector = MySelector
        dimension_selector = MyDimensionSelector   # or None: ranks stay at argmax β
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bipeft_core.interfaces import DimensionSelector, ModuleSelector
from bipeft_core.repair import refill_to_budget, repair_to_budget, structure_count
from bipeft_core.state import SearchState
from bipeft_core.structure import Structure
from bipeft_core.testing._common import build, expect, scores_of
from bipeft_core.testing.fixtures import synthetic_state, synthetic_step
from bipeft_core.testing.selectors import fire_selectors, observe_dimensions
from bipeft_core.testing.strategies import search_spaces

__all__ = ["BudgetInvariantsContract", "BudgetInvariantsMachine", "reachable_sizes"]


def reachable_sizes(state: SearchState) -> list[int]:
    """Per module, the count it can still reach: 0 once pruned, the count at
    its fixed rank once fixed, else the count at its largest candidate."""
    out = []
    for i, spec in enumerate(state.specs):
        if bool(state.pruned[i]):
            out.append(0)
        elif spec.is_matrix and int(state.fixed_rank[i]) >= 0:
            out.append(spec.count(int(state.fixed_rank[i])))
        else:
            out.append(spec.max_count)
    return out


def final_choices(state: SearchState) -> dict[int, int | None]:
    """The structure a search returns before repair: every unpruned module,
    a matrix module at its fixed rank, else at argmax β."""
    ranks = state.supernet.argmax_rank().tolist()
    return {i: (int(ranks[i]) if spec.is_matrix else None)
            for i, spec in enumerate(state.specs) if not bool(state.pruned[i])}


class BudgetInvariantsMachine(RuleBasedStateMachine):
    """See the module docstring. Subclasses set the two factories (either
    may be ``None``: no module pruning, or no rank fixing)."""

    module_selector_factory: ClassVar[Callable[[], ModuleSelector] | None] = None
    dimension_selector_factory: ClassVar[Callable[[], DimensionSelector] | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.state: SearchState | None = None
        self.msel: ModuleSelector | None = None
        self.dsel: DimensionSelector | None = None
        self.generator = torch.Generator()
        self.firings = 0

    @initialize(specs=search_spaces(), data=st.data())
    def start(self, specs: list[Any], data: Any) -> None:
        smallest = min(min(s.counts) for s in specs)
        whole = sum(s.max_count for s in specs)
        budget = data.draw(st.integers(smallest, max(smallest, whole - 1)), label="budget")
        triggers = data.draw(st.integers(1, 8), label="triggers")
        seed = data.draw(st.integers(0, 2**16 - 1), label="seed")
        state = synthetic_state(specs, budget, seed=seed)
        state.plan_triggers(triggers)  # what a trigger's reset does
        make_msel, make_dsel = type(self).module_selector_factory, type(self).dimension_selector_factory
        self.msel = make_msel() if make_msel is not None else None
        self.dsel = make_dsel() if make_dsel is not None else None
        for selector in (self.msel, self.dsel):
            if selector is not None:
                selector.reset(state)
        self.generator.manual_seed(seed)
        self.state = state
        self._remember()

    def _remember(self) -> None:
        assert self.state is not None
        self.pruned = self.state.pruned.clone()
        self.fixed = self.state.fixed_rank.clone()
        self.reachable = sum(reachable_sizes(self.state))
        self.budget = self.state.budget

    @precondition(lambda self: self.state is not None)
    @rule(steps=st.integers(1, 6), logit_scale=st.floats(0.0, 2.0), score_mix=st.floats(0.0, 1.0))
    def weight_steps(self, steps: int, logit_scale: float, score_mix: float) -> None:
        """Weight (and architecture) steps: logits and scores move, the
        dimension selector takes its snapshot after each."""
        assert self.state is not None
        for _ in range(steps):
            synthetic_step(self.state, self.generator, logit_scale=logit_scale, score_mix=score_mix)
            if self.dsel is not None:
                observe_dimensions(self.state, self.dsel)

    @precondition(lambda self: self.state is not None and self.state.triggers_left > 0)
    @rule(steps=st.integers(1, 6))
    def trigger(self, steps: int) -> None:
        """Weight steps, then the trigger fires (a trigger fires after a
        weight step, never twice on one): prune, count down, fix ranks."""
        assert self.state is not None
        self.weight_steps(steps, 0.3, 0.2)
        fire_selectors(self.state, self.msel, self.dsel)
        self.firings += 1

    @invariant()
    def budget_invariants_hold(self) -> None:
        state = self.state
        assert state is not None
        sn = state.supernet
        unpruned = torch.nonzero(self.pruned & ~sn.pruned).flatten().tolist()
        expect(not unpruned, f"pruning was undone for modules {unpruned} after firing {self.firings}")
        for i in torch.nonzero(sn.fixed_rank >= 0).flatten().tolist():
            spec, rank = state.specs[i], int(sn.fixed_rank[i])
            expect(spec.is_matrix and rank in spec.ranks,
                   f"{spec.id} is fixed at rank {rank}, not one of its candidates {list(spec.ranks)}")
            was = int(self.fixed[i])
            expect(was < 0 or was == rank, f"the fixed rank of {spec.id} changed from {was} to {rank}")
        reachable = sum(reachable_sizes(state))
        expect(reachable <= self.reachable,
               f"the reachable size grew from {self.reachable:,} to {reachable:,} after firing {self.firings}")
        expect(state.budget == self.budget, f"the budget changed from {self.budget} to {state.budget}")
        expect(state.triggers_left >= 0, f"triggers_left went to {state.triggers_left}")
        self._remember()

    def teardown(self) -> None:
        state = self.state
        if state is None:
            return
        specs, budget = state.specs, state.budget
        scores = scores_of(state).tolist()
        choices = final_choices(state)
        repaired, _ = repair_to_budget(specs, choices, scores, budget)
        count = structure_count(specs, repaired)
        expect(count <= budget, f"the repaired structure holds {count:,} parameters, over the budget of {budget:,}")
        for i, rank in repaired.items():
            expect(i in choices, f"the repair added {specs[i].id}, which the search pruned")
            chosen = choices[i]
            if specs[i].is_matrix:
                expect(rank is not None and chosen is not None and rank in specs[i].ranks and rank <= chosen,
                       f"the repair moved {specs[i].id} from rank {choices[i]} to {rank}")
        exact = Structure.from_choices(specs, repaired).count()
        expect(exact == count, f"the repaired structure's exact count is {exact:,}, the repair counted {count:,}")
        refilled, _ = refill_to_budget(specs, repaired, scores, budget)
        refill_count = Structure.from_choices(specs, refilled).count()
        expect(count <= refill_count <= budget,
               f"the re-fill took the structure from {count:,} to {refill_count:,} parameters (budget {budget:,})")


class BudgetInvariantsContract:
    """Runs :class:`BudgetInvariantsMachine` on a subclass's selectors (each
    a class or factory, with its params; either may be ``None``). Examples
    and steps follow the current hypothesis profile."""

    module_selector: ClassVar[Any] = None
    module_selector_params: ClassVar[Mapping[str, Any]] = {}
    dimension_selector: ClassVar[Any] = None
    dimension_selector_params: ClassVar[Mapping[str, Any]] = {}

    def machine(self) -> type[BudgetInvariantsMachine]:
        """The state machine class, with this contract's selectors."""
        cls = type(self)

        def factory(maker: Any, params: Mapping[str, Any], what: str) -> Any:
            return None if maker is None else staticmethod(lambda: build(maker, params, what))

        return type(f"{cls.__name__}Machine", (BudgetInvariantsMachine,), {
            "module_selector_factory": factory(cls.module_selector, cls.module_selector_params, "module_selector"),
            "dimension_selector_factory": factory(cls.dimension_selector, cls.dimension_selector_params,
                                                  "dimension_selector"),
        })

    stateful_step_count: ClassVar[int] = 20
    """Steps (weight steps and firings) per drawn search."""

    def run_budget_invariants(self, hypothesis_settings: settings | None = None) -> None:
        """Run the machine under ``hypothesis_settings``; by default the
        current profile's number of examples, no deadline, and no shrinking:
        a failure names the module, rank or count that broke the rule, and
        shrinking a drawn search can take minutes (pass settings with
        ``Phase.shrink`` for a minimal example)."""
        run_state_machine_as_test(self.machine(), settings=hypothesis_settings or settings(
            deadline=None, stateful_step_count=self.stateful_step_count,
            phases=[Phase.explicit, Phase.reuse, Phase.generate]))

    def test_budget_invariants_across_triggers(self) -> None:
        expect(type(self).module_selector is not None or type(self).dimension_selector is not None,
               f"{type(self).__name__} sets neither module_selector nor dimension_selector")
        self.run_budget_invariants()
