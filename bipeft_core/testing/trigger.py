"""The contract of :class:`~bipeft_core.interfaces.Trigger`, as pytest tests a
plugin author subclasses::

    from bipeft_core.testing import TriggerContract

    class TestMyTrigger(TriggerContract):
        trigger = MyTrigger
        params = {"window": 3}

The trigger is driven as the search loop drives it, on a synthetic search
(:func:`~bipeft_core.testing.fixtures.synthetic_state`): after every weight
step, :meth:`~Trigger.should_fire`; on a firing, a stand-in selection prunes
the least scored module and the firing is counted (``state.count_firing``).
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from bipeft_core.interfaces import Trigger
from bipeft_core.state import SearchState
from bipeft_core.testing._common import Snapshot, build, expect, scores_of, through_checkpoint
from bipeft_core.testing.fixtures import synthetic_search_specs, synthetic_state, synthetic_step

__all__ = ["TriggerContract", "drive_trigger"]


def drive_trigger(trigger: Trigger, state: SearchState, generator: torch.Generator, steps: int) -> list[int]:
    """``steps`` synthetic weight steps with ``trigger`` asked after each, as
    the search loop asks it, checking on every step that ``should_fire``
    changes neither the structure nor the search state, that
    ``warmed_up`` never turns back, and that a firing comes after the
    warm-up (and after ``warmup_epochs`` epochs when set) with a trigger
    left. Returns the steps at which it fired."""
    who = type(trigger).__name__
    sn = state.supernet
    fired: list[int] = []
    was_warm = trigger.warmed_up(state)
    for _ in range(steps):
        synthetic_step(state, generator)
        warm = trigger.warmed_up(state)
        expect(warm or not was_warm, f"{who}.warmed_up turned False again at step {state.step}")
        was_warm = warm
        left = state.triggers_left
        before = Snapshot.of(state)
        fire = trigger.should_fire(state)
        before.unchanged(state, f"{who}.should_fire")  # it may record history, nothing else
        expect(isinstance(fire, bool), f"{who}.should_fire returned {fire!r}, not a bool")
        if not fire:
            continue
        expect(warm, f"{who} fired at step {state.step}, during its warm-up (warmed_up is False)")
        if trigger.warmup_epochs is not None:
            expect(state.epoch >= trigger.warmup_epochs,
                   f"{who} fired at epoch {state.epoch:g}, before its warmup_epochs = {trigger.warmup_epochs:g}")
        expect(left > 0, f"{who} fired at step {state.step} with no trigger left")
        unpruned = torch.nonzero(~sn.pruned).flatten().tolist()
        if len(unpruned) > 1:  # a stand-in selection: the least scored module goes
            with torch.no_grad():
                sn.pruned[min(unpruned, key=lambda i: (float(scores_of(state)[i]), i))] = True
        state.count_firing()
        fired.append(state.step)
    return fired


class TriggerContract:
    """What every trigger keeps: ``reset`` sets the triggers left, whatever
    they were; it never fires during its warm-up, nor with no trigger left,
    nor more often than ``reset`` planned; ``should_fire`` changes neither
    the structure nor the search state; the same inputs give the same
    decisions; ``state_dict``
    survives a checkpoint and a resumed trigger decides as the uninterrupted
    one; ``reset`` starts afresh."""

    trigger: ClassVar[Any] = None
    """The trigger's class, or any callable that returns a fresh one."""
    params: ClassVar[Mapping[str, Any]] = {}
    steps_per_epoch: ClassVar[int] = 8
    epochs: ClassVar[int] = 6
    n_matrix: ClassVar[int] = 8
    n_vector: ClassVar[int] = 6
    budget_fraction: ClassVar[float] = 0.3
    """The synthetic search's budget, as a fraction of its whole space."""
    seeds: ClassVar[tuple[int, ...]] = (0, 1, 2)

    def make_trigger(self) -> Trigger:
        """A fresh trigger (override for anything :attr:`trigger` and
        :attr:`params` cannot express)."""
        return build(type(self).trigger, self.params, "trigger")

    def make_state(self, seed: int = 0) -> SearchState:
        """A fresh synthetic search at step 0."""
        specs = synthetic_search_specs(self.n_matrix, self.n_vector, seed=seed)
        budget = max(1, int(self.budget_fraction * sum(s.max_count for s in specs)))
        return synthetic_state(specs, budget, steps_per_epoch=self.steps_per_epoch, epochs=self.epochs, seed=seed)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def _search(self, seed: int) -> tuple[Trigger, SearchState, int, list[int]]:
        trigger, state = self.make_trigger(), self.make_state(seed)
        trigger.reset(state)
        planned = state.triggers_left
        fired = drive_trigger(trigger, state, torch.Generator().manual_seed(seed), self.total_steps)
        return trigger, state, planned, fired

    def test_is_a_trigger(self) -> None:
        trigger = self.make_trigger()
        who = type(trigger).__name__
        expect(isinstance(trigger, Trigger), f"{trigger!r} does not subclass Trigger")
        expect(isinstance(type(trigger).name, str) and bool(type(trigger).name), f"{who} has no name")
        w = trigger.warmup_epochs
        expect(w is None or (isinstance(w, numbers.Real) and w >= 0),
               f"{who}.warmup_epochs = {w!r}; it is None or a number of epochs >= 0")

    def test_reset_sets_the_triggers_left(self) -> None:
        planned = []
        for stale in (0, 3, 1000):
            trigger, state = self.make_trigger(), self.make_state()
            state.plan_triggers(stale)
            trigger.reset(state)
            left = state.triggers_left
            expect(isinstance(left, numbers.Integral) and not isinstance(left, bool) and left >= 0,
                   f"{type(trigger).__name__}.reset set triggers_left = {left!r}, not a whole number >= 0")
            planned.append(left)
        expect(len(set(planned)) == 1, f"{type(self.make_trigger()).__name__}.reset left triggers_left at "
                                       f"{planned} for earlier values 0, 3 and 1000: it must set it "
                                       "(state.plan_triggers)")

    def test_never_fires_during_its_warm_up_nor_beyond_its_triggers(self) -> None:
        for seed in self.seeds:
            trigger, _, planned, fired = self._search(seed)
            expect(len(fired) <= planned, f"{type(trigger).__name__} fired {len(fired)} times at steps {fired}; "
                                          f"reset planned {planned}")

    def test_same_inputs_same_decisions(self) -> None:
        for seed in self.seeds:
            a, b = self._search(seed), self._search(seed)
            expect(a[3] == b[3], f"two fresh triggers on the same search fired at steps {a[3]} and {b[3]}")

    def test_state_dict_round_trip_resumes_bit_for_bit(self) -> None:
        for seed in self.seeds:
            for cut in (self.total_steps // 3, 2 * self.total_steps // 3):
                self._resume_at(seed, cut)

    def _resume_at(self, seed: int, cut: int) -> None:
        first, state = self.make_trigger(), self.make_state(seed)
        who = type(first).__name__
        first.reset(state)
        g = torch.Generator().manual_seed(seed)
        drive_trigger(first, state, g, cut)
        saved = through_checkpoint(first.state_dict(), f"{who}.state_dict()")
        # a resumed search: a fresh trigger reset at step 0, then its state and the search state loaded
        copied, g_copy = copy.deepcopy(state), torch.Generator()
        g_copy.set_state(g.get_state())
        search_state = through_checkpoint(state.state_dict(), "SearchState.state_dict()")
        copied.load_state_dict({**search_state, "step": 0, "triggers_left": 0})
        resumed = self.make_trigger()
        resumed.reset(copied)
        resumed.load_state_dict(saved)
        copied.load_state_dict(search_state)
        rest = self.total_steps - cut
        a = drive_trigger(first, state, g, rest)
        b = drive_trigger(resumed, copied, g_copy, rest)
        expect(a == b, f"{who} resumed at step {cut} fired at steps {b}; uninterrupted, at {a}")

    def test_reset_starts_afresh(self) -> None:
        for seed in self.seeds:
            used, _, _, _ = self._search(seed)
            state = self.make_state(seed)
            used.reset(state)
            again = drive_trigger(used, state, torch.Generator().manual_seed(seed), self.total_steps)
            fresh = self._search(seed)[3]
            expect(again == fresh, f"{type(used).__name__} reset after a search fired at steps {again}; a fresh "
                                   f"one at {fresh}")
