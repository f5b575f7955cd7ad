"""The APET baseline (``apet``; docs/baselines.md): a random structure that
fills the budget, through the shared search loop (:mod:`bipeft_core.loop`)
without a training step."""

from __future__ import annotations

import random

import attrs

from bipeft_core.hookspecs import hookimpl
from bipeft_core.loop import Choices, LoopOptimizer, SearchLoop

__all__ = ["APET"]


@attrs.define(kw_only=True)
class APET(LoopOptimizer):
    """APET (Su et al. 2023): trainable modules chosen at random, seeded,
    until the budget is filled; each draw picks a module uniformly among
    those that still fit, at a rank drawn uniformly among its candidate ranks
    that fit. The sanity floor every search must beat."""

    name = "apet"
    components = ()
    trains = False

    @property
    def repairs(self) -> bool:
        return False  # every draw fits what is left

    def final_choices(self, loop: SearchLoop) -> Choices:
        rng = random.Random(loop.settings.seed)
        left = loop.budget
        choices: Choices = {}
        while True:
            fits = [i for i, m in enumerate(loop.specs) if i not in choices and min(m.counts) <= left]
            if not fits:
                break
            i = rng.choice(fits)
            m = loop.specs[i]
            if m.is_matrix:
                rank = rng.choice([r for r in m.ranks if m.count(r) <= left])
            else:
                rank = None
            choices[i] = rank
            left -= m.count(rank)
        return choices


@hookimpl
def bipeft_register_strategies(registry):
    registry.add(APET)
