"""BIPEFT's selectors (docs/algorithm.md): ``budget_guided`` prunes modules
(Eq. 6–8), ``stability_kl`` fixes ranks (Eq. 9–10); and the expected size
of a supernet's modules that both the selection and the search loop's
history use."""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from bipeft_core.budget import prune_walk
from bipeft_core.interfaces import DimensionSelector, ModuleSelector
from bipeft_plugins.strategies.bipeft.sensitivity import cosine

__all__ = ["BudgetGuided", "StabilityKL", "expected_sizes"]


def expected_sizes(supernet, use_keep_prob: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per module: (expected size with π, as in E; walk size, where vector
    modules count ``N_v`` without π). Pruned modules get 0."""
    w = supernet.rank_weights().double()
    counts = supernet.cand_counts.double()
    per_rank = (w * counts).sum(-1)
    n_vec = counts[:, 0]
    base = torch.where(supernet.is_matrix, per_rank, n_vec)
    pi = supernet.keep_probability().double() if use_keep_prob else torch.ones_like(base)
    unpruned = (~supernet.pruned).double()
    expected = unpruned * pi * base
    walk = unpruned * torch.where(supernet.is_matrix, pi * per_rank, n_vec)
    return expected, walk


@attrs.define(kw_only=True)
class BudgetGuided(ModuleSelector):
    """Eq. 6–8: remove ``ΔP = (E − B)/K`` of expected size per trigger,
    least sensitive modules first. π (the keep probability) is used while
    more than ``keep_prob_until`` triggers are left, then 1."""

    name = "budget_guided"
    keep_prob_until: int = attrs.field(default=10, validator=attrs.validators.ge(0))

    def select(self, state) -> list[int]:
        k = state.triggers_left
        if k <= 0:
            return []
        expected, walk = expected_sizes(state.supernet, use_keep_prob=k > self.keep_prob_until)
        e = float(expected.sum())
        delta = (e - state.budget) / k
        state.last_expected, state.last_delta = e, delta
        unpruned = torch.nonzero(~state.pruned).flatten().tolist()
        scores = state.scores
        order = sorted(unpruned, key=lambda i: (float(scores[i]), i))
        picked = prune_walk([float(walk[i]) for i in order], delta)
        pruned = [order[j] for j in picked]
        sizes = torch.where(state.supernet.is_matrix, walk, state.max_counts())
        state.expected_sizes = sizes
        return pruned


@attrs.define(kw_only=True)
class StabilityKL(DimensionSelector):
    """Eq. 9–10: at each trigger, fix ``n_fix = ⌊g·M_u/K'⌋`` unfixed ranks,
    the most stable first (smallest ``DSI = mean_c std_t(β_c) ·
    KL(p_last ‖ p_first)``), where ``g`` is the cosine between the first
    and last snapshot of every module's potential rank."""

    name = "stability_kl"
    _betas: list[torch.Tensor] = attrs.field(init=False, factory=list)
    _dims: list[torch.Tensor] = attrs.field(init=False, factory=list)

    def reset(self, state) -> None:
        self._betas, self._dims = [], []

    def observe(self, state) -> None:
        sn = state.supernet
        dims = sn.argmax_rank().double()
        dims = torch.where(sn.pruned, torch.zeros_like(dims), dims)
        self._betas.append(sn.beta.detach().clone())
        self._dims.append(dims)

    def select(self, state) -> dict[int, int]:
        k = state.triggers_left
        if k <= 0 or len(self._betas) < 2:
            if k <= 0:
                self._betas, self._dims = [], []
            return {}
        sn = state.supernet
        g = cosine(self._dims[0], self._dims[-1]) if self._dims[-1].norm() > 0 else 1.0
        if math.isnan(g):
            g = 1.0
        unfixed = torch.nonzero(sn.is_matrix & ~sn.pruned & (sn.fixed_rank < 0)).flatten().tolist()
        n_fix = len(unfixed) if k == 1 else math.floor(g * len(unfixed) / k)
        out: dict[int, int] = {}
        if n_fix > 0 and unfixed:
            stack = torch.stack(self._betas).double()  # (T, M, C)
            valid = sn.cand_valid
            dsi = {}
            for i in unfixed:
                v = valid[i]
                b = stack[:, i, v]
                std = b.std(0, unbiased=False).mean()
                p_first, p_last = b[0].softmax(-1), b[-1].softmax(-1)
                kl = float((p_last * (p_last.log() - p_first.log())).sum())
                dsi[i] = float(std) * kl
            chosen = sorted(unfixed, key=lambda i: (dsi[i], i))[:n_fix]
            ranks = sn.argmax_rank()
            out = {i: int(ranks[i]) for i in chosen}
        self._betas, self._dims = [], []
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"betas": [b.clone() for b in self._betas], "dims": [d.clone() for d in self._dims]}

    def load_state_dict(self, state) -> None:
        self._betas = [b.clone() for b in state["betas"]]
        self._dims = [d.clone() for d in state["dims"]]
