"""BIPEFT's budget-aware trigger ``budget_stability`` (docs/algorithm.md, Eq. 5)."""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from bipeft_core.budget import fill_walk
from bipeft_core.interfaces import Trigger
from bipeft_plugins.strategies.bipeft.sensitivity import cosine

__all__ = ["DEADLINES", "BudgetStability"]

DEADLINES = ("span", "slot")


@attrs.define(kw_only=True)
class BudgetStability(Trigger):
    """Eq. 5: fire when the budget-filling importance indicator has been
    stable over the last ``window`` weight steps (mean cosine ≥
    ``threshold``), after the warm-up, at most ``max_triggers`` times.

    The schedule (docs/search.md). The warm-up is ``warmup_fraction`` of the
    search's planned weight steps, or ``warmup_epochs`` epochs when that is
    given (the paper's ``prune_begin_epoch``). With ``spread`` (the default)
    the triggers are spread over the ``span_fraction`` of the planned steps
    that follows the warm-up: ``K = min(max_triggers, span // (window + 1))``
    triggers (at least 1). ``deadline`` says how:

    ``span`` (the default): each trigger is due ``⌊(end − last)/k⌋``
    steps after the previous firing (``last``, the warm-up's end before the
    first; ``k`` triggers left; ``end`` the span's last step) and fires once
    due and stable; from ``end`` on a trigger fires at every step without
    waiting for stability, so triggers that did not find a stable indicator
    fire on consecutive steps at the span's end.

    ``slot``: the span is cut into ``K`` equal slots, one trigger each;
    trigger ``j`` fires inside its slot as soon as the indicator is stable,
    and at the slot's last step (``warm-up + ⌈j·span/K⌉``) at the latest. The
    triggers never bunch. It scored lower than ``span`` on three paired CoLA
    seeds (docs/benchmarks.md), so it is an option, not the default.

    ``spread = false`` fires whenever the indicator is stable (the paper's
    rule, ``K = max_triggers``). With ``fresh``, the indicator history is
    cleared at each firing, so a trigger needs ``window`` indicators taken
    after the previous one; without it (the paper's), a stable indicator
    fires on consecutive steps.
    """

    name = "budget_stability"
    window: int = attrs.field(default=5, validator=attrs.validators.ge(1))
    threshold: float = attrs.field(default=0.85, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])
    warmup_epochs: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0.0)))
    warmup_fraction: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0.0),
                                                                 attrs.validators.lt(1.0)])
    span_fraction: float = attrs.field(default=0.2, validator=[attrs.validators.gt(0.0), attrs.validators.le(1.0)])
    spread: bool = True
    max_triggers: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    fresh: bool = True
    deadline: str = attrs.field(default="span", validator=attrs.validators.in_(DEADLINES))
    _history: list[torch.Tensor] = attrs.field(init=False, factory=list)
    _last: int = attrs.field(init=False, default=0)
    _warmup_step: int = attrs.field(init=False, default=0)
    _end: int = attrs.field(init=False, default=0)
    _k: int = attrs.field(init=False, default=1)

    def schedule(self, state) -> tuple[int, int, int]:
        """``(warm-up steps, K, the step by which the triggers should have
        fired)`` for a search of ``state.total_steps`` planned steps
        (``steps_per_epoch`` when unknown); the last is 0 without ``spread``."""
        planned = state.total_steps or state.steps_per_epoch
        if self.warmup_epochs is not None:
            warmup = math.ceil(self.warmup_epochs * state.steps_per_epoch)
        else:
            warmup = round(self.warmup_fraction * planned)
        if not self.spread:
            return warmup, self.max_triggers, 0
        span = max(1, round(self.span_fraction * planned))
        k = max(1, min(self.max_triggers, span // (self.window + 1)))
        return warmup, k, warmup + span

    def reset(self, state) -> None:
        self._warmup_step, k, self._end = self.schedule(state)
        self._k = k
        state.plan_triggers(k)
        self._last = self._warmup_step
        self._history = []

    def warmed_up(self, state) -> bool:
        if self.warmup_epochs is not None:
            return state.epoch >= self.warmup_epochs
        return state.step >= self._warmup_step

    def indicator(self, state) -> torch.Tensor:
        """``m_t``: 1 for the unpruned modules that fill the budget in order
        of decreasing score (skipping those that do not fit)."""
        unpruned = torch.nonzero(~state.pruned).flatten().tolist()
        scores = state.scores
        order = sorted(unpruned, key=lambda i: (-float(scores[i]), i))
        sizes = state.expected_sizes
        taken = fill_walk([float(sizes[i]) for i in order], state.budget)
        m = torch.zeros(len(state.specs), dtype=torch.float64)
        for i, t in zip(order, taken):
            if t:
                m[i] = 1.0
        return m

    def slot_end(self, state) -> int:
        """The last step of the next trigger's slot (``deadline = "slot"``)."""
        j = self._k - state.triggers_left + 1  # the next trigger, 1-based
        return self._warmup_step + math.ceil(j * (self._end - self._warmup_step) / self._k)

    def should_fire(self, state) -> bool:
        if not self.warmed_up(state) or state.triggers_left <= 0:
            return False
        m = self.indicator(state)
        fire = False
        stable_after = 0  # the steps after the last firing before a stable indicator may fire
        if self.spread and self.deadline == "slot":
            forced = state.step >= self.slot_end(state)
        elif self.spread:
            stable_after = (self._end - self._last) // state.triggers_left
            forced = state.step >= self._end  # the span's end: no waiting for stability
        else:
            forced = False
        if forced:
            fire = True
        elif len(self._history) >= self.window and state.step - self._last >= stable_after:
            sims = [cosine(m, h) for h in self._history[-self.window:]]
            fire = sum(sims) / self.window >= self.threshold
        self._history.append(m)
        del self._history[: -self.window]
        if fire:
            self._last = state.step
            if self.fresh:
                self._history = []
        return fire

    def state_dict(self) -> dict[str, Any]:
        return {"history": [h.clone() for h in self._history], "last": self._last}

    def load_state_dict(self, state) -> None:
        self._history = [h.clone() for h in state["history"]]
        self._last = int(state.get("last", self._last))
