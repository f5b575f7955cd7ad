"""The ``iterative`` optimizer: BIPEFT's first-order DARTS loop (ALGORITHM.md §3).

Per weight step on half A of the training set: an architecture step on the
next batch of half B (binary and dimension stages alternating, starting with
binary), then the weight step; then the sensitivity update, a β snapshot
after the warm-up, and the trigger with both selectors.

With a checkpoint manager in the context, the whole search state (logits,
PEFT and head weights, optimiser and scheduler states, component states,
trace, data order and every RNG) is saved at step boundaries, and a resumed
search continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import torch

from bipeft_core.checkpoint import CheckpointError
from bipeft_core.distributed import Dist
from bipeft_core.errors import TrainingError
from bipeft_core.interfaces import Optimizer
from bipeft_core.repair import refill_to_budget, repair_to_budget, structure_count
from bipeft_core.state import Control, SearchResult, SearchState, TriggerEvent
from bipeft_core.structure import Structure
from bipeft_core.training import linear_schedule, make_loader, progress_bar, split_halves

GATE_GRADIENTS = ("straight_through", "sampled_only")
VARIANTS = ("bipeft", "entangled", "no_iteration", "no_selection")


def check_finite(loss: torch.Tensor, where: str, step: int) -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss is {float(loss.detach())} at {where} step {step}; lower the learning rate (search.lr), "
            "check the data for empty or broken examples, or use float32"
        )


def trainable_state(sn) -> dict[str, torch.Tensor]:
    """The supernet's trainable and search state (not the frozen backbone)."""
    out = {f"peft.{k}": v.detach().clone() for k, v in sn.peft.state_dict().items()}
    out.update(alpha=sn.alpha.detach().clone(), beta=sn.beta.detach().clone(), pruned=sn.pruned.clone(),
               fixed_rank=sn.fixed_rank.clone())
    for i, p in enumerate(sn.head_params):
        out[f"head.{i}"] = p.detach().clone()
    return out


@torch.no_grad()
def load_trainable_state(sn, state: dict[str, torch.Tensor]) -> None:
    sn.peft.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("peft.")})
    sn.alpha.copy_(state["alpha"])
    sn.beta.copy_(state["beta"])
    sn.pruned.copy_(state["pruned"])
    sn.fixed_rank.copy_(state["fixed_rank"])
    for i, p in enumerate(sn.head_params):
        p.copy_(state[f"head.{i}"])


def trace_from_dicts(events: list[dict[str, Any]]) -> list[TriggerEvent]:
    """Trigger events read back from a checkpoint."""
    return [TriggerEvent(**{**e, "pruned": tuple(e["pruned"]), "fixed": tuple(map(tuple, e["fixed"]))})
            for e in events]


@attrs.define
class _Cursor:
    """Where the loop is, and what it needs to replay the data order."""

    epoch: int = 0
    batch_in_epoch: int = 0
    stage: str = "binary"
    gen_a_state: torch.Tensor | None = None
    gen_b_state: torch.Tensor | None = None
    b_consumed: int = 0


@attrs.define(kw_only=True)
class Iterative(Optimizer):
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

    def temperature(self, epoch: int, epochs: int) -> float:
        """``T = 5 − 4·epoch/E`` by default: constant within an epoch."""
        return self.temperature_start - (self.temperature_start - self.temperature_end) * epoch / epochs

    # -- the loop ----------------------------------------------------------------------
    def search(self, ctx) -> SearchResult:
        s = ctx.settings
        sn = ctx.supernet
        comps = ctx.components
        sens, trigger, msel, dsel = (comps[k] for k in
                                     ("sensitivity", "trigger", "module_selector", "dimension_selector"))
        dist = ctx.dist or Dist()
        half_a, half_b = split_halves(ctx.train, seed=s.seed)
        half_a, half_b = dist.shard(half_a), dist.shard(half_b)  # each rank its share; the same steps on all
        batch = max(1, s.batch_size // dist.world)
        loader_a = make_loader(half_a, batch, ctx.collate, seed=s.seed, shuffle=True)
        loader_b = make_loader(half_b, batch, ctx.collate, seed=s.seed + 1, shuffle=True)
        gen_a, gen_b = loader_a.generator, loader_b.generator
        steps_per_epoch = len(loader_a)
        gates = torch.Generator().manual_seed(s.seed)
        weights = sn.peft_parameters() + list(sn.head_params)
        opt_w = torch.optim.AdamW(weights, lr=s.lr, weight_decay=s.weight_decay)
        sched = linear_schedule(opt_w, steps_per_epoch * s.epochs, s.warmup_ratio)
        opt_a = torch.optim.Adam(sn.arch_parameters(), lr=self.arch_lr, betas=self.arch_betas,
                                 weight_decay=self.arch_weight_decay)
        state = SearchState(supernet=sn, specs=ctx.specs, budget=ctx.budget, steps_per_epoch=steps_per_epoch,
                            total_steps=steps_per_epoch * s.epochs)
        state.expected_sizes = state.max_counts()
        sn.entangled = self.variant == "entangled"
        sens.reset(ctx.specs)
        trigger.reset(state)
        dsel.reset(state)
        if not self.selects:
            state.triggers_left = 0
        state.scores = sens.scores
        cursor = _Cursor()
        trace: list[TriggerEvent] = []
        history: list[dict[str, Any]] = []
        elapsed_before = 0.0
        ckpt = getattr(ctx, "checkpoint", None)
        resumed = False
        if ckpt is not None and getattr(ctx, "resume", False) and ckpt.exists():
            data = ckpt.load()
            self._check_checkpoint(data, ctx)
            load_trainable_state(sn, data["supernet"])
            opt_w.load_state_dict(data["opt_w"])
            opt_a.load_state_dict(data["opt_a"])
            sched.load_state_dict(data["sched"])
            for kind in ("sensitivity", "trigger", "module_selector", "dimension_selector"):
                comps[kind].load_state_dict(data["components"][kind])
            st = data["state"]
            state.step, state.triggers_left = st["step"], st["triggers_left"]
            state.expected_sizes, state.last_delta, state.last_expected = (
                st["expected_sizes"], st["last_delta"], st["last_expected"])
            state.scores = sens.scores
            cursor = _Cursor(**data["cursor"])
            trace = trace_from_dicts(data["trace"])
            history = list(data["history"])
            gates.set_state(data["rng"]["gates"])
            torch.set_rng_state(data["rng"]["torch"])
            elapsed_before = data["elapsed"]
            resumed = True
        if ctx.hook is not None:
            ctx.hook.bipeft_before_search(context=ctx)
        control = Control()
        started = time.perf_counter() - elapsed_before

        def save() -> None:
            if ckpt is None or not dist.is_main:
                return
            ckpt.save({
                "spec_ids": [m.id for m in ctx.specs], "budget": ctx.budget, "seed": s.seed,
                "supernet": trainable_state(sn), "opt_w": opt_w.state_dict(), "opt_a": opt_a.state_dict(),
                "sched": sched.state_dict(),
                "components": {k: comps[k].state_dict() for k in
                               ("sensitivity", "trigger", "module_selector", "dimension_selector")},
                "state": {"step": state.step, "triggers_left": state.triggers_left,
                          "expected_sizes": state.expected_sizes, "last_delta": state.last_delta,
                          "last_expected": state.last_expected},
                "cursor": attrs.asdict(cursor), "trace": [e.to_dict() for e in trace], "history": history,
                "rng": {"gates": gates.get_state(), "torch": torch.get_rng_state()},
                "elapsed": time.perf_counter() - started,
            })

        # replay the data order up to the cursor
        it_b = None
        if cursor.gen_b_state is not None:
            gen_b.set_state(cursor.gen_b_state)
            it_b = iter(loader_b)
            for _ in range(cursor.b_consumed):
                next(it_b)

        def next_b():
            nonlocal it_b
            if it_b is not None:
                try:
                    batch = next(it_b)
                    cursor.b_consumed += 1
                    return batch
                except StopIteration:
                    pass
            cursor.gen_b_state = gen_b.get_state()
            it_b = iter(loader_b)
            cursor.b_consumed = 1
            return next(it_b)

        spent = self.selects and self.stop_when_spent
        done = spent and state.triggers_left <= 0 and state.step > 0
        bar = progress_bar(bool(ctx.progress) and dist.is_main, total=steps_per_epoch * s.epochs,
                           initial=state.step, desc="search")
        while not done and cursor.epoch < s.epochs:
            temp = self.temperature(cursor.epoch, s.epochs)
            if resumed and cursor.gen_a_state is not None:
                gen_a.set_state(cursor.gen_a_state)
            else:
                cursor.gen_a_state = gen_a.get_state()
                cursor.batch_in_epoch = 0
            resumed = False
            it_a = iter(loader_a)
            for _ in range(cursor.batch_in_epoch):
                next(it_a)
            for batch_a in it_a:
                t0 = time.perf_counter()
                fired = self._iteration(ctx, state, batch_a, next_b, cursor, temp, gates, opt_a, opt_w, sched,
                                        weights, trace, history, started, dist)
                cursor.batch_in_epoch += 1
                history[-1]["step_time"] = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix_str(f"size {history[-1]['expected_size']:,.0f}/{ctx.budget:,} "
                                    f"modules {history[-1]['remaining']} triggers left {state.triggers_left}",
                                    refresh=False)
                if ctx.hook is not None:
                    ctx.hook.bipeft_after_step(state=state, control=control)
                if dist.enabled:  # a stop requested on one rank stops every rank
                    control.stop_requested = bool(dist.mean(torch.tensor(float(control.stop_requested))) > 0)
                if fired or state.step % (ckpt.every if ckpt else 1) == 0:
                    save()
                if control.stop_requested or (spent and state.triggers_left <= 0):
                    done = True
                    break
            if not done:
                cursor.epoch += 1
                cursor.batch_in_epoch = 0
                cursor.gen_a_state = gen_a.get_state()  # where the next epoch's shuffle starts
                resumed = True  # the cursor now describes where to continue
                save()
        bar.close()
        return self._finish(ctx, state, trace, history, started, control)

    def _iteration(self, ctx, state, batch_a, next_b, cursor, temp, gates, opt_a, opt_w, sched, weights,
                   trace, history, started, dist) -> bool:
        sn = ctx.supernet
        s = ctx.settings
        comps = ctx.components
        batch_a = {k: v.to(ctx.device) for k, v in batch_a.items()}
        sn.train()
        if self.warmup_arch or not self.selects or comps["trigger"].warmed_up(state):
            loss_b, val_products = self._arch_step(ctx, state, next_b(), cursor, temp, gates, opt_a, weights, dist)
        else:  # a weight-only warm-up: no architecture step, no validation products
            loss_b, val_products = None, [None] * len(ctx.specs)
        # -- weight step on half A --------------------------------------------------
        sn.zero_grad(set_to_none=True)
        sn.configure("weight", temperature=temp, generator=gates, noise=self.noise)
        loss_a = ctx.loss(sn, batch_a)
        check_finite(dist.mean(loss_a), "weight", state.step)
        loss_a.backward()
        sn.alpha.grad = None
        sn.beta.grad = None
        dist.all_reduce_grads(weights)
        if s.clip_norm:
            torch.nn.utils.clip_grad_norm_([p for p in weights if p.grad is not None], s.clip_norm)
        train_products = sn.module_products()
        opt_w.step()
        sched.step()
        comps["sensitivity"].observe(train=train_products, val=val_products, active=~sn.pruned,
                                     sizes=sn.effective_counts())
        state.step += 1
        state.scores = comps["sensitivity"].scores
        if self.selects and comps["trigger"].warmed_up(state):
            comps["dimension_selector"].observe(state)
        fired = False
        if self.selects and comps["trigger"].should_fire(state):
            trace.append(self._fire(state, comps["module_selector"], comps["dimension_selector"], ctx, started,
                                    len(trace)))
            fired = True
        if dist.enabled:  # every step: whether it fired, what is pruned and fixed, must agree on all ranks
            dist.check_same(f"the decisions of step {state.step}", torch.tensor([fired]), sn.pruned, sn.fixed_rank)
        history.append({
            "step": state.step, "epoch": round(state.epoch, 4), "loss": float(dist.mean(loss_a)),
            "arch_loss": None if loss_b is None else float(dist.mean(loss_b)), "expected_size": self._expected(sn),
            "remaining": int((~sn.pruned).sum()), "triggers_left": state.triggers_left,
        })
        return fired

    def _arch_step(self, ctx, state, batch_b, cursor, temp, gates, opt_a, weights, dist):
        """The architecture step on a batch of half B: returns its loss and the
        validation products."""
        sn = ctx.supernet
        batch_b = {k: v.to(ctx.device) for k, v in batch_b.items()}
        stage = cursor.stage if self.variant in ("bipeft", "no_selection") else "joint"
        sn.zero_grad(set_to_none=True)
        sn.configure(stage, temperature=temp, generator=gates, gate_gradient=self.gate_gradient, noise=self.noise)
        loss_b = ctx.loss(sn, batch_b)
        check_finite(dist.mean(loss_b), "architecture", state.step)
        stepped = {"binary": (sn.alpha,), "dimension": (sn.beta,), "joint": (sn.alpha, sn.beta)}[stage]
        if self.regularizer:
            for theta in stepped:
                if theta is sn.beta:
                    theta = sn.beta.masked_fill(~sn.cand_valid, 0.0)
                loss_b = loss_b + self.regularizer * (theta.softmax(-1) - theta).abs().mean(-1).sum()
        loss_b.backward()
        dist.all_reduce_grads([*weights, sn.alpha, sn.beta])
        val_products = sn.module_products()
        frozen_rows = {id(sn.alpha): sn.pruned, id(sn.beta): sn.pruned | (sn.fixed_rank >= 0) | ~sn.is_matrix}
        saved = [(p, frozen_rows[id(p)], p.detach()[frozen_rows[id(p)]].clone()) for p in stepped]
        for p in (sn.alpha, sn.beta):
            if all(p is not q for q in stepped):
                p.grad = None
        opt_a.step()
        with torch.no_grad():
            for p, rows, values in saved:
                p[rows] = values
        cursor.stage = "dimension" if stage == "binary" else "binary"
        return loss_b, val_products

    @staticmethod
    def _check_checkpoint(data: dict[str, Any], ctx) -> None:
        ids = [m.id for m in ctx.specs]
        if data.get("spec_ids") != ids or data.get("budget") != ctx.budget or data.get("seed") != ctx.settings.seed:
            raise CheckpointError(
                "the checkpoint belongs to another search (its modules, budget or seed differ from this one's); "
                "resume with the spec and model that wrote it, or start a new search in another folder"
            )

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
        notes = []
        if self.selects:
            ranks = sn.argmax_rank().tolist()
            choices = {i: (ranks[i] if spec.is_matrix else None)
                       for i, spec in enumerate(ctx.specs) if not bool(sn.pruned[i])}
        else:  # argmax α (or the joint argmax) and argmax β, not repaired
            keep, ranks = sn.eval_keep().tolist(), sn.eval_rank().tolist()
            choices = {i: (ranks[i] if spec.is_matrix else None) for i, spec in enumerate(ctx.specs) if keep[i]}
            notes.append("variant no_selection: argmax structure, not repaired to the budget")
        if self.selects and state.triggers_left > 0:
            notes.append(f"the epochs ran out with {state.triggers_left} triggers left")
        if control.stop_requested:
            notes.append(f"stopped early: {control.reason}")
        refill_log: list[str] = []
        if self.selects:
            repaired, log = repair_to_budget(ctx.specs, choices, state.scores.tolist(), ctx.budget)
            if self.refill:
                repaired, refill_log = refill_to_budget(ctx.specs, repaired, state.scores.tolist(), ctx.budget)
        else:
            repaired, log = choices, []
        count = structure_count(ctx.specs, repaired)
        structure = Structure.from_choices(ctx.specs, repaired, space=ctx.space_name, model_type=ctx.model_type,
                                           backbone_params=ctx.backbone_params, budget=ctx.budget)
        return SearchResult(
            structure=structure, count=count, budget=ctx.budget, backbone_params=ctx.backbone_params,
            strategy=self.name, trace=tuple(trace), wall_time=time.perf_counter() - started,
            steps=state.step, budget_met=count <= ctx.budget, repaired=bool(log), repair_log=tuple(log),
            refill_log=tuple(refill_log), notes=tuple(notes), history=tuple(history),
        )
