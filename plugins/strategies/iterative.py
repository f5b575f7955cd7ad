"""The ``iterative`` optimizer: BIPEFT's first-order DARTS loop (ALGORITHM.md §3).

Per weight step on half A of the training set: an architecture step on the
next batch of half B (binary and dimension stages alternating, starting with
binary), then the weight step; then the sensitivity update, a β snapshot
after the warm-up, and the trigger with both selectors.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import torch

from bipeft_core.errors import TrainingError
from bipeft_core.interfaces import Optimizer
from bipeft_core.repair import repair_to_budget, structure_count
from bipeft_core.state import Control, SearchResult, SearchState, TriggerEvent
from bipeft_core.structure import Structure
from bipeft_core.training import linear_schedule, make_loader, split_halves

GATE_GRADIENTS = ("straight_through", "sampled_only")


def _products(supernet) -> list[list[torch.Tensor | None] | None]:
    out: list[list[torch.Tensor | None] | None] = []
    for m in supernet.peft:
        prods = [(p.detach() * p.grad) if p.grad is not None else None for p in m.parameters()]
        out.append(prods if any(t is not None for t in prods) else None)
    return out


def _check_finite(loss: torch.Tensor, where: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss is {float(loss)} at {where} step {step}; lower the learning rate (search.lr), "
            "check the data for empty or broken examples, or use float32"
        )


@attrs.define(kw_only=True)
class Iterative(Optimizer):
    """First-order DARTS with alternating binary (α) and dimension (β) stages.

    ``regularizer``: weight of the official code's ``Σ mean|softmax(θ) − θ|``
    term on the stage's logits (0 = off). ``gate_gradient``:
    ``straight_through`` (a module sampled off is still computed, with
    detached weights, so its gate gets a gradient) or ``sampled_only`` (the
    authors' cheaper variant). ``noise=False`` uses the hard softmax instead
    of Gumbel samples.
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

    def temperature(self, epoch: int, epochs: int) -> float:
        """``T = 5 − 4·epoch/E`` by default: constant within an epoch."""
        return self.temperature_start - (self.temperature_start - self.temperature_end) * epoch / epochs

    def search(self, ctx) -> SearchResult:
        s = ctx.settings
        sn = ctx.supernet
        sens = ctx.components["sensitivity"]
        trigger = ctx.components["trigger"]
        msel = ctx.components["module_selector"]
        dsel = ctx.components["dimension_selector"]
        half_a, half_b = split_halves(ctx.train, seed=s.seed)
        loader_a = make_loader(half_a, s.batch_size, ctx.collate, seed=s.seed, shuffle=True)
        loader_b = make_loader(half_b, s.batch_size, ctx.collate, seed=s.seed + 1, shuffle=True)
        steps_per_epoch = len(loader_a)
        total_steps = steps_per_epoch * s.epochs
        gates = torch.Generator().manual_seed(s.seed)
        weights = sn.peft_parameters() + list(sn.head_params)
        opt_w = torch.optim.AdamW(weights, lr=s.lr, weight_decay=s.weight_decay)
        sched = linear_schedule(opt_w, total_steps, s.warmup_ratio)
        opt_a = torch.optim.Adam(sn.arch_parameters(), lr=self.arch_lr, betas=self.arch_betas,
                                 weight_decay=self.arch_weight_decay)
        state = SearchState(supernet=sn, specs=ctx.specs, budget=ctx.budget, steps_per_epoch=steps_per_epoch)
        state.expected_sizes = state.max_counts()
        sens.reset(ctx.specs)
        trigger.reset(state)
        dsel.reset(state)
        state.scores = sens.scores
        warmup = float(getattr(trigger, "warmup_epochs", 0.0))
        if ctx.hook is not None:
            ctx.hook.bipeft_before_search(context=ctx)
        trace: list[TriggerEvent] = []
        history: list[dict[str, Any]] = []
        control = Control()
        stage = "binary"
        started = time.perf_counter()
        iter_b = iter(loader_b)
        done = False
        for epoch in range(s.epochs):
            temp = self.temperature(epoch, s.epochs)
            for batch_a in loader_a:
                t0 = time.perf_counter()
                try:
                    batch_b = next(iter_b)
                except StopIteration:
                    iter_b = iter(loader_b)
                    batch_b = next(iter_b)
                batch_a = {k: v.to(ctx.device) for k, v in batch_a.items()}
                batch_b = {k: v.to(ctx.device) for k, v in batch_b.items()}
                # -- architecture step on half B ------------------------------------
                sn.zero_grad(set_to_none=True)
                sn.train()
                sn.configure(stage, temperature=temp, generator=gates, gate_gradient=self.gate_gradient,
                             noise=self.noise)
                loss_b = ctx.loss(sn, batch_b)
                _check_finite(loss_b, "architecture", state.step)
                logits = sn.alpha if stage == "binary" else sn.beta
                if self.regularizer:
                    theta = logits if stage == "binary" else sn.masked_beta().masked_fill(~sn.cand_valid, 0.0)
                    loss_b = loss_b + self.regularizer * (theta.softmax(-1) - theta).abs().mean(-1).sum()
                loss_b.backward()
                val_products = _products(sn)
                frozen_alpha = sn.pruned.clone()
                frozen_beta = sn.pruned | (sn.fixed_rank >= 0) | ~sn.is_matrix
                saved_a, saved_b = sn.alpha.detach().clone(), sn.beta.detach().clone()
                if stage == "binary":
                    sn.beta.grad = None
                else:
                    sn.alpha.grad = None
                opt_a.step()
                with torch.no_grad():
                    sn.alpha[frozen_alpha] = saved_a[frozen_alpha]
                    sn.beta[frozen_beta] = saved_b[frozen_beta]
                    if stage == "binary":
                        sn.beta.copy_(saved_b)
                    else:
                        sn.alpha.copy_(saved_a)
                stage = "dimension" if stage == "binary" else "binary"
                # -- weight step on half A ------------------------------------------
                sn.zero_grad(set_to_none=True)
                sn.configure("weight", temperature=temp, generator=gates, noise=self.noise)
                loss_a = ctx.loss(sn, batch_a)
                _check_finite(loss_a, "weight", state.step)
                loss_a.backward()
                sn.alpha.grad = None
                sn.beta.grad = None
                if s.clip_norm:
                    torch.nn.utils.clip_grad_norm_([p for p in weights if p.grad is not None], s.clip_norm)
                train_products = _products(sn)
                opt_w.step()
                sched.step()
                sens.observe(train=train_products, val=val_products, active=~sn.pruned)
                state.step += 1
                state.scores = sens.scores
                if state.epoch >= warmup:
                    dsel.observe(state)
                if trigger.should_fire(state):
                    trace.append(self._fire(state, msel, dsel, ctx, started, len(trace)))
                history.append({
                    "step": state.step, "epoch": round(state.epoch, 4), "loss": float(loss_a.detach()),
                    "expected_size": float(self._expected(sn)), "remaining": int((~sn.pruned).sum()),
                    "triggers_left": state.triggers_left, "step_time": time.perf_counter() - t0,
                })
                if ctx.hook is not None:
                    ctx.hook.bipeft_after_step(state=state, control=control)
                if control.stop_requested or (self.stop_when_spent and state.triggers_left <= 0):
                    done = True
                    break
            if done:
                break
        return self._finish(ctx, state, trace, history, started, control)

    @staticmethod
    def _expected(sn) -> float:
        from bipeft_plugins.strategies.bipeft import expected_sizes

        return float(expected_sizes(sn, use_keep_prob=True)[0].sum())

    def _fire(self, state, msel, dsel, ctx, started, index) -> TriggerEvent:
        sn = state.supernet
        pruned = msel.select(state)
        with torch.no_grad():
            for i in pruned:
                sn.pruned[i] = True
        state.triggers_left -= 1
        fixed = dsel.select(state)
        with torch.no_grad():
            for i, r in fixed.items():
                sn.fixed_rank[i] = r
        scores = state.scores[~sn.pruned]
        event = TriggerEvent(
            index=index, step=state.step, epoch=round(state.epoch, 4),
            pruned=tuple(ctx.specs[i].id for i in pruned),
            fixed=tuple((ctx.specs[i].id, r) for i, r in sorted(fixed.items())),
            expected_size=state.last_expected, delta=state.last_delta, triggers_left=state.triggers_left,
            remaining_modules=int((~sn.pruned).sum()),
            sensitivity={"min": float(scores.min()) if len(scores) else 0.0,
                         "mean": float(scores.mean()) if len(scores) else 0.0,
                         "max": float(scores.max()) if len(scores) else 0.0},
            wall_time=time.perf_counter() - started,
        )
        if ctx.hook is not None:
            ctx.hook.bipeft_on_trigger(event=event, state=state)
        return event

    def _finish(self, ctx, state, trace, history, started, control) -> SearchResult:
        sn = state.supernet
        ranks = sn.argmax_rank().tolist()
        choices = {i: (ranks[i] if spec.is_matrix else None)
                   for i, spec in enumerate(ctx.specs) if not bool(sn.pruned[i])}
        notes = []
        if state.triggers_left > 0:
            notes.append(f"the epochs ran out with {state.triggers_left} triggers left")
        if control.stop_requested:
            notes.append(f"stopped early: {control.reason}")
        scores = state.scores.tolist()
        repaired, log = repair_to_budget(ctx.specs, choices, scores, ctx.budget)
        count = structure_count(ctx.specs, repaired)
        structure = Structure.from_choices(ctx.specs, repaired, space=ctx.space_name, model_type=ctx.model_type,
                                           backbone_params=ctx.backbone_params, budget=ctx.budget)
        return SearchResult(
            structure=structure, count=count, budget=ctx.budget, backbone_params=ctx.backbone_params,
            strategy=self.name, trace=tuple(trace), wall_time=time.perf_counter() - started,
            steps=state.step, budget_met=count <= ctx.budget, repaired=bool(log), repair_log=tuple(log),
            notes=tuple(notes), history=tuple(history),
        )


