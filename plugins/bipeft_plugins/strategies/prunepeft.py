"""The PrunePEFT baseline (``prunepeft``; docs/baselines.md) on the shared
search loop (:mod:`bipeft_core.loop`), with BIPEFT's registered sensitivity
estimator and module selector."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import Trigger
from bipeft_core.loop import Choices, LoopOptimizer, SearchLoop
from bipeft_core.space import DeclarativeSpace
from bipeft_core.state import SearchContext

__all__ = ["PruneRounds", "PrunePEFT"]


@attrs.define(kw_only=True)
class PruneRounds(Trigger):
    """PrunePEFT's schedule as a trigger: ``rounds`` firings evenly spaced
    over the first ``fraction`` of the planned steps (steps that coincide
    after rounding fire once). Not registered: PrunePEFT builds its own."""

    name = "prune_rounds"
    rounds: int = attrs.field(validator=attrs.validators.ge(1))
    fraction: float = attrs.field(validator=[attrs.validators.gt(0), attrs.validators.le(1)])
    _at: frozenset[int] = attrs.field(init=False, factory=frozenset)

    def steps(self, total: int) -> list[int]:
        """The steps a search of ``total`` planned steps prunes at."""
        last_round = max(1, int(total * self.fraction))
        return sorted({max(1, round(last_round * (k + 1) / self.rounds)) for k in range(self.rounds)})

    def reset(self, state) -> None:
        at = self.steps(state.total_steps)
        self._at = frozenset(at)
        state.plan_triggers(len(at))

    def should_fire(self, state) -> bool:
        return state.step in self._at and state.triggers_left > 0


@attrs.define(kw_only=True)
class PrunePEFT(LoopOptimizer):
    """PrunePEFT (Lawton et al. 2023): train the whole space at the largest
    rank, all modules on; prune the least important (``I_tr/N``, BIPEFT's
    sensitivity estimator) in ``rounds`` rounds evenly spaced over the first
    ``prune_fraction`` of the steps, each removing an equal share of the
    excess by the budget-guided walk; train on to the last epoch.
    Checkpoints at epoch ends."""

    name = "prunepeft"
    components = ("sensitivity", "module_selector")
    # the score is BIPEFT's estimator with its I_tr/N criterion (docs/baselines.md)
    # normalised by the size at the largest rank, where PrunePEFT trains every module
    default_components = {"sensitivity": {"name": "grad_weight_cos", "criterion": "train", "normalizer": "max"},
                          "module_selector": "budget_guided"}
    step_checkpoints = False
    event_scores = False
    rounds: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    prune_fraction: float = attrs.field(default=0.5, validator=[attrs.validators.gt(0), attrs.validators.le(1)])

    def adapt_space(self, space):
        return space.with_ranks([max(space.ranks)]) if isinstance(space, DeclarativeSpace) else space

    # -- the loop's hooks --------------------------------------------------------------------
    def loop_components(self, ctx: SearchContext) -> dict[str, Any]:
        return {**super().loop_components(ctx), "trigger": PruneRounds(rounds=self.rounds, fraction=self.prune_fraction)}

    def prepare(self, loop: SearchLoop) -> None:
        sn = loop.supernet
        with torch.no_grad():
            sn.fixed_rank.copy_(torch.where(sn.is_matrix, sn.argmax_rank(), sn.fixed_rank))
            sn.alpha.copy_(torch.tensor([-1e4, 1e4]).expand_as(sn.alpha))  # π = 1: every module is on

    def weight_gates(self, loop: SearchLoop) -> None:
        loop.supernet.configure("all_on")

    def history_record(self, loop: SearchLoop, *, loss: float, arch_loss: float | None) -> dict[str, Any]:
        return {"step": loop.state.step, "loss": loss, "remaining": int((~loop.supernet.pruned).sum())}

    def final_choices(self, loop: SearchLoop) -> Choices:
        """The modules left, at the largest rank."""
        sn = loop.supernet
        ranks = sn.argmax_rank().tolist()
        return {i: (ranks[i] if m.is_matrix else None) for i, m in enumerate(loop.specs) if not bool(sn.pruned[i])}


@hookimpl
def bipeft_register_strategies(registry):
    # PrunePEFT shares the BIPEFT components (sensitivity, module selector)
    # through the same registries; it brings no copies of them
    registry.add(PrunePEFT)
