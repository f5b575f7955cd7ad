"""BIPEFT's optimizer ``iterative``: first-order DARTS that alternates the
binary and dimension stages (docs/algorithm.md §3), on the shared search
loop (:mod:`bipeft_core.loop`), which calls the sensitivity estimator, the
trigger and both selectors.

Per weight step on half A of the training set: an architecture step on the
next batch of half B (binary and dimension stages alternating, starting with
binary), then the weight step; then the sensitivity update, a β snapshot
after the warm-up, and the trigger with both selectors.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from bipeft_core.loop import Choices, LoopOptimizer, Products, SearchLoop
from bipeft_plugins.strategies.bipeft.selectors import expected_sizes

__all__ = ["GATE_GRADIENTS", "VARIANTS", "Iterative"]

GATE_GRADIENTS = ("straight_through", "sampled_only")
VARIANTS = ("bipeft", "entangled", "no_iteration", "no_selection")


@attrs.define(kw_only=True)
class Iterative(LoopOptimizer):
    """First-order DARTS with alternating binary (α) and dimension (β) stages.

    ``regularizer``: weight of the official code's ``Σ mean|softmax(θ) − θ|``
    term on the stage's logits (0 = off). ``gate_gradient``:
    ``straight_through`` (a module sampled off is still computed, with
    detached weights, so its gate gets a gradient) or ``sampled_only`` (the
    authors' cheaper variant). ``noise=False`` uses the hard softmax instead
    of Gumbel samples. ``stop_when_spent``: end the search once the triggers
    are spent (else train on to the last epoch). ``refill``: after the
    budget repair, add back greedily, by score, what the budget still holds
    (docs/search.md; the paper has no re-fill). ``warmup_arch``: take
    architecture steps during the trigger's warm-up (the paper's); false
    makes the warm-up weight steps only (one pass per step instead of two,
    the sensitivity from the training products alone), so the same search
    time reaches a later selection.

    ``variant`` selects the paper's Table 2 ablations: ``bipeft`` (the
    method), ``entangled`` (one joint space per module where rank 0 is a
    candidate, logits ``[α_drop, β_1..β_C]``, no separate binary stage),
    ``no_iteration`` (disentangled without iteration: α and β sampled and
    stepped together in every architecture step), ``no_selection``
    (iterative without selection: no trigger, no pruning or rank fixing; the
    final structure is argmax α and argmax β, reported at the size it
    reaches, not repaired).
    """

    name = "iterative"
    components = ("sensitivity", "trigger", "module_selector", "dimension_selector")
    default_components = {
        "sensitivity": "grad_weight_cos",
        "trigger": "budget_stability",
        "module_selector": "budget_guided",
        "dimension_selector": "stability_kl",
    }
    arch_lr: float = attrs.field(default=0.01, validator=attrs.validators.gt(0))
    arch_betas: tuple[float, float] = attrs.field(default=(0.5, 0.999), converter=tuple)
    arch_weight_decay: float = attrs.field(default=1e-4, validator=attrs.validators.ge(0))
    temperature_start: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    temperature_end: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    regularizer: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    gate_gradient: str = attrs.field(default="straight_through", validator=attrs.validators.in_(GATE_GRADIENTS))
    noise: bool = True
    stop_when_spent: bool = True
    refill: bool = True
    warmup_arch: bool = True
    variant: str = attrs.field(default="bipeft", validator=attrs.validators.in_(VARIANTS))

    @property
    def selects(self) -> bool:
        return self.variant != "no_selection"

    @property
    def repairs(self) -> bool:
        return self.selects

    @property
    def refills(self) -> bool:
        return self.selects and self.refill

    def temperature(self, epoch: int, epochs: int) -> float:
        """``T = 5 − 4·epoch/E`` by default: constant within an epoch."""
        return self.temperature_start - (self.temperature_start - self.temperature_end) * epoch / epochs

    def stage(self, loop: SearchLoop) -> str:
        """The stage of the next architecture step: ``binary`` and
        ``dimension`` alternating from the first (``joint`` in the
        ``entangled`` and ``no_iteration`` variants)."""
        if self.variant not in ("bipeft", "no_selection"):
            return "joint"
        return ("binary", "dimension")[loop.arch_steps % 2]

    # -- the loop's hooks --------------------------------------------------------------------
    def arch_optimizer(self, supernet) -> torch.optim.Optimizer:
        return torch.optim.Adam(supernet.arch_parameters(), lr=self.arch_lr, betas=self.arch_betas,
                                weight_decay=self.arch_weight_decay)

    def prepare(self, loop: SearchLoop) -> None:
        loop.supernet.entangled = self.variant == "entangled"

    def arch_gates(self, loop: SearchLoop) -> None:
        loop.supernet.configure(self.stage(loop), temperature=self.temperature(loop.epoch, loop.epochs),
                                generator=loop.gate_generator, gate_gradient=self.gate_gradient, noise=self.noise)

    def _stepped(self, loop: SearchLoop) -> tuple[torch.Tensor, ...]:
        sn = loop.supernet
        return {"binary": (sn.alpha,), "dimension": (sn.beta,), "joint": (sn.alpha, sn.beta)}[self.stage(loop)]

    def arch_objective(self, loop: SearchLoop, loss: torch.Tensor) -> torch.Tensor:
        if self.regularizer:
            sn = loop.supernet
            for theta in self._stepped(loop):
                if theta is sn.beta:
                    theta = sn.beta.masked_fill(~sn.cand_valid, 0.0)
                loss = loss + self.regularizer * (theta.softmax(-1) - theta).abs().mean(-1).sum()
        return loss

    def arch_update(self, loop: SearchLoop) -> Products:
        """Only the stage's logits step; pruned modules' α and fixed or
        pruned modules' β keep their values."""
        sn = loop.supernet
        stepped = self._stepped(loop)
        loop.dist.all_reduce_grads([*loop.weights, sn.alpha, sn.beta])
        val_products = sn.module_products()
        frozen_rows = {id(sn.alpha): sn.pruned, id(sn.beta): sn.pruned | (sn.fixed_rank >= 0) | ~sn.is_matrix}
        saved = [(p, frozen_rows[id(p)], p.detach()[frozen_rows[id(p)]].clone()) for p in stepped]
        for p in (sn.alpha, sn.beta):
            if all(p is not q for q in stepped):
                p.grad = None
        assert loop.arch_optimizer is not None
        loop.arch_optimizer.step()
        with torch.no_grad():
            for p, rows, values in saved:
                p[rows] = values
        return val_products

    def weight_gates(self, loop: SearchLoop) -> None:
        loop.supernet.configure("weight", temperature=self.temperature(loop.epoch, loop.epochs),
                                generator=loop.gate_generator, noise=self.noise)

    def history_record(self, loop: SearchLoop, *, loss: float, arch_loss: float | None) -> dict[str, Any]:
        sn, state = loop.supernet, loop.state
        return {
            "step": state.step, "epoch": round(state.epoch, 4), "loss": loss, "arch_loss": arch_loss,
            "expected_size": float(expected_sizes(sn, use_keep_prob=True)[0].sum()),
            "remaining": int((~sn.pruned).sum()), "triggers_left": state.triggers_left,
        }

    def final_choices(self, loop: SearchLoop) -> Choices:
        """The unpruned modules at their fixed (else argmax β) rank; without
        selection, argmax α (or the joint argmax) and argmax β."""
        sn, specs = loop.supernet, loop.specs
        if self.selects:
            ranks = sn.argmax_rank().tolist()
            return {i: (ranks[i] if spec.is_matrix else None) for i, spec in enumerate(specs) if not bool(sn.pruned[i])}
        keep, ranks = sn.eval_keep().tolist(), sn.eval_rank().tolist()
        return {i: (ranks[i] if spec.is_matrix else None) for i, spec in enumerate(specs) if keep[i]}

    def result_notes(self, loop: SearchLoop) -> list[str]:
        return [] if self.selects else ["variant no_selection: argmax structure, not repaired to the budget"]
