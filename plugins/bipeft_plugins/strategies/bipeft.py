"""BIPEFT's strategies (ALGORITHM.md §3–8):

* ``grad_weight_cos``: sensitivity from weight-gradient products (Eq. 1–4);
* ``budget_stability``: the budget-aware trigger (Eq. 5);
* ``budget_guided``: binary module selection (Eq. 6–8);
* ``stability_kl``: rank (dimension) selection (Eq. 9–10);
* ``iterative``: the first-order DARTS loop that alternates the binary and
  dimension stages and calls the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from bipeft_core.budget import fill_walk, prune_walk
from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import DimensionSelector, ModuleSelector, SensitivityEstimator, Trigger
from bipeft_core.types import ModuleSpec

CRITERIA = ("cos", "train", "val", "sum", "cos_sum")
NORMALIZERS = ("expected", "live", "max")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 0.0
    return float(torch.dot(a, b) / (na * nb))


@attrs.define(kw_only=True)
class GradWeightCos(SensitivityEstimator):
    """Eq. 1–4: ``S = I_tr/N + cos·I_val/N`` smoothed by an EMA.

    ``criterion``: ``cos`` (the paper's), ``train`` (``I_tr/N``), ``val``
    (``I_val/N``), ``sum`` (``(I_tr + I_val)/N``), ``cos_sum``
    (``cos·(I_tr + I_val)/N``).

    ``normalizer``: what ``N`` is. ``max`` (the paper's): the module's size
    at its largest candidate rank, whatever rank it runs at. ``expected``:
    its expected size under the dimension weights (``Σ_c w̃_c·N(d_c)``, the
    fixed rank's size once fixed). ``live``: its size at the rank the weight
    step ran it at. A vector module's ``N`` is its one count under all
    three. ``expected`` and ``live`` compare a low-rank LoRA fairly with a
    BitFit vector: the products of unused rank slices are zero, so ``max``
    understates a matrix module's importance per parameter it really
    carries (docs/search.md has the measurement that chose the default).
    """

    name = "grad_weight_cos"
    beta: float = attrs.field(default=0.85, validator=[attrs.validators.ge(0.0), attrs.validators.lt(1.0)])
    criterion: str = attrs.field(default="cos", validator=attrs.validators.in_(CRITERIA))
    normalizer: str = attrs.field(default="expected", validator=attrs.validators.in_(NORMALIZERS))
    _ema: torch.Tensor = attrs.field(init=False, factory=lambda: torch.zeros(0, dtype=torch.float64))
    _n: torch.Tensor = attrs.field(init=False, factory=lambda: torch.zeros(0, dtype=torch.float64))

    def reset(self, modules: Sequence[ModuleSpec]) -> None:
        self._ema = torch.zeros(len(modules), dtype=torch.float64)
        self._n = torch.tensor([float(m.max_count) for m in modules], dtype=torch.float64)

    def score_of(self, train: Sequence[torch.Tensor | None] | None,
                 val: Sequence[torch.Tensor | None] | None, n: float) -> float:
        """``S_t(m)`` of one module from its per-tensor products."""
        i_tr = sum(float(t.abs().sum()) for t in (train or ()) if t is not None)
        i_val = sum(float(t.abs().sum()) for t in (val or ()) if t is not None)
        if self.criterion == "train":
            return i_tr / n
        if self.criterion == "val":
            return i_val / n
        if self.criterion == "sum":
            return (i_tr + i_val) / n
        cos = 0.0
        if train and val:
            sims = [(_cos(a.flatten().double(), b.flatten().double()) if a is not None and b is not None else 0.0)
                    for a, b in zip(train, val)]
            cos = sum(sims) / len(sims)
        if self.criterion == "cos_sum":
            return cos * (i_tr + i_val) / n
        return i_tr / n + cos * i_val / n

    def observe(self, *, train, val, active, sizes=None) -> None:
        n = self._n
        if self.normalizer != "max":
            if sizes is None or self.normalizer not in sizes:
                raise TypeError(
                    f"grad_weight_cos with normalizer = {self.normalizer!r} needs the per-module sizes, which "
                    "this optimizer does not pass to observe(); use normalizer = 'max' with it")
            n = sizes[self.normalizer].double()
        b = self.beta
        for i in torch.nonzero(active).flatten().tolist():
            s = self.score_of(train[i], val[i], float(n[i]))
            self._ema[i] = b * self._ema[i] + (1 - b) * s

    @property
    def scores(self) -> torch.Tensor:
        return self._ema

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self._ema.clone()}

    def load_state_dict(self, state) -> None:
        self._ema = state["ema"].clone().to(torch.float64)


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
    triggers (at least 1), each due ``⌊(end − last)/k⌋`` steps after the
    previous firing (``last``, the warm-up's end before the first; ``k``
    triggers left; ``end`` the span's last step), so a trigger that waited
    for stability brings the next ones closer; from ``end`` on a trigger
    fires at every step without waiting for stability, so the selection
    ends by ``end`` plus the triggers left (a deadline that bounds the
    search's cost); ``spread = false`` fires whenever the indicator is stable
    (the paper's rule, ``K = max_triggers``). With ``fresh``, the indicator
    history is cleared at each firing, so a trigger needs ``window``
    indicators taken after the previous one; without it (the paper's), a
    stable indicator fires on consecutive steps.
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
    _history: list[torch.Tensor] = attrs.field(init=False, factory=list)
    _last: int = attrs.field(init=False, default=0)
    _warmup_step: int = attrs.field(init=False, default=0)
    _end: int = attrs.field(init=False, default=0)

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
        self._warmup_step, state.triggers_left, self._end = self.schedule(state)
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

    def should_fire(self, state) -> bool:
        if not self.warmed_up(state) or state.triggers_left <= 0:
            return False
        m = self.indicator(state)
        fire = False
        due = (self._end - self._last) // state.triggers_left if self.spread else 0
        if self.spread and state.step >= self._end:  # the deadline: no waiting for stability
            fire = True
        elif len(self._history) >= self.window and state.step - self._last >= due:
            sims = [_cos(m, h) for h in self._history[-self.window:]]
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
        g = _cos(self._dims[0], self._dims[-1]) if self._dims[-1].norm() > 0 else 1.0
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


@hookimpl
def bipeft_register_strategies(registry):
    from bipeft_plugins.strategies.iterative import Iterative

    for cls in (GradWeightCos, BudgetStability, BudgetGuided, StabilityKL, Iterative):
        registry.add(cls)
