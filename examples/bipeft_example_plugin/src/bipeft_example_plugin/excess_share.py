"""``excess_share``: a module selector that prunes, at each firing of the
trigger, the least important modules until an equal share of the excess
over the budget is gone.

The excess is measured on the *reachable* structure: every unpruned module
at its fixed rank, else at its largest candidate rank, the largest structure
the search can still return. With ``k`` firings left (this one included) and
a reachable count ``R`` over the budget ``B``, a firing removes about
``(R − B)/k`` by the pruning walk (:func:`bipeft_core.prune_walk`), least
scored modules first, always keeping ``min_keep`` modules. Unlike BIPEFT's
``budget_guided`` it ignores the keep probabilities and rank weights: what
it prunes depends only on the scores, the fixed ranks and the budget.
"""

from __future__ import annotations

import attrs
import torch

from bipeft_core import ModuleSelector, SearchState, SpecError, prune_walk


def reachable_sizes(state: SearchState) -> torch.Tensor:
    """Per module (float64): 0 once pruned, the count at its fixed rank once
    fixed, else the count at its largest candidate rank."""
    sizes = []
    for i, spec in enumerate(state.specs):
        fixed = int(state.fixed_rank[i])
        if bool(state.pruned[i]):
            sizes.append(0.0)
        elif spec.is_matrix and fixed >= 0:
            sizes.append(float(spec.count(fixed)))
        else:
            sizes.append(float(spec.max_count))
    return torch.tensor(sizes, dtype=torch.float64)


@attrs.define(kw_only=True)
class ExcessShare(ModuleSelector):
    """Prunes an equal share of the reachable excess per firing (see the
    module docstring). Sets ``state.expected_sizes`` to the reachable sizes,
    which the trigger's budget-filling walk then uses."""

    name = "excess_share"
    min_keep: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    """Modules never pruned below this number."""

    def select(self, state: SearchState) -> list[int]:
        sizes = reachable_sizes(state)
        state.expected_sizes = sizes
        k = state.triggers_left
        excess = float(sizes.sum()) - state.budget
        unpruned = torch.nonzero(~state.pruned).flatten().tolist()
        room = len(unpruned) - self.min_keep
        scores = state.scores
        if scores is None:
            raise SpecError("excess_share orders modules by their sensitivity scores, and this search has none; "
                            "use it with an optimizer that has a sensitivity estimator (e.g. iterative)")
        if k <= 0 or excess <= 0 or room <= 0:
            return []
        order = sorted(unpruned, key=lambda i: (float(scores[i]), i))
        picked = prune_walk([float(sizes[i]) for i in order], excess / k)[:room]
        return [order[j] for j in picked]
