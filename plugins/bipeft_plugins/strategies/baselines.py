"""Baseline strategies on bipeft's registry, budget accountant, data and
training loop (../shared/docs/BASELINES.md): ``s3delta``, ``prunepeft``,
``apet``, ``manual`` (LoRA, serial adapter, BitFit, LNFit at a fixed
configuration) and ``full`` (full fine-tuning). ``autopeft`` lives in
``autopeft.py``.
"""

from __future__ import annotations

import random
import time
from typing import Any

import attrs
import torch

from bipeft_core.budget import fill_walk
from bipeft_core.checkpoint import CheckpointError
from bipeft_core.distributed import Dist
from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import Optimizer
from bipeft_core.repair import repair_to_budget
from bipeft_core.space import DeclarativeSpace
from bipeft_core.state import Control, SearchResult, SearchState, TriggerEvent
from bipeft_core.structure import Structure
from bipeft_core.training import linear_schedule, make_loader, split_halves
from bipeft_plugins.strategies.iterative import (
    check_finite,
    load_trainable_state,
    trace_from_dicts,
    trainable_state,
)


def _result(ctx, strategy: str, choices: dict[int, int | None], started: float, *, steps: int = 0,
            trace=(), history=(), notes=(), repair: bool = True, scores=None, structure: Structure | None = None,
            extra: dict[str, Any] | None = None) -> SearchResult:
    log: list[str] = []
    if repair and structure is None:
        choices, log = repair_to_budget(ctx.specs, choices, scores if scores is not None else [0.0] * len(ctx.specs),
                                        ctx.budget)
    if structure is None:
        structure = Structure.from_choices(ctx.specs, choices, space=ctx.space_name, model_type=ctx.model_type,
                                           backbone_params=ctx.backbone_params, budget=ctx.budget)
    count = structure.count()
    result = SearchResult(
        structure=structure, count=count, budget=ctx.budget, backbone_params=ctx.backbone_params,
        strategy=strategy, trace=tuple(trace), wall_time=time.perf_counter() - started, steps=steps,
        budget_met=count <= ctx.budget, repaired=bool(log), repair_log=tuple(log), notes=tuple(notes),
        history=tuple(history), extra=extra or {},
    )
    return result


def _weights(sn) -> list[torch.nn.Parameter]:
    return sn.peft_parameters() + list(sn.head_params)


def _to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def _after_step(ctx, state, control, dist) -> bool:
    """The plugins' after-step hook; a stop requested on any rank stops every rank."""
    if ctx.hook is not None:
        ctx.hook.bipeft_after_step(state=state, control=control)
    if dist.enabled:
        control.stop_requested = bool(dist.mean(torch.tensor(float(control.stop_requested))) > 0)
    return control.stop_requested


class _LoopCheckpoints:
    """Checkpoints of a baseline's search loop (S3Delta and PrunePEFT at each
    epoch end, AutoPEFT after each trial), through the context's checkpoint
    manager (a run folder's ``search/``): what the loop needs to continue,
    stamped with the strategy, modules, budget and seed so that another
    search's file is refused."""

    def __init__(self, ctx, strategy: str) -> None:
        self.ctx, self.strategy = ctx, strategy
        self.manager = getattr(ctx, "checkpoint", None)
        self.stamp = {"strategy": strategy, "spec_ids": [m.id for m in ctx.specs], "budget": ctx.budget,
                      "seed": ctx.settings.seed}

    def load(self) -> dict[str, Any] | None:
        if self.manager is None or not getattr(self.ctx, "resume", False) or not self.manager.exists():
            return None
        data = self.manager.load()
        if any(data.get(k) != v for k, v in self.stamp.items()):
            raise CheckpointError(
                f"the checkpoint belongs to another search (not {self.strategy}, or other modules, budget or "
                "seed); resume with the spec and model that wrote it, or start a new search in another folder")
        return data

    def save(self, payload: dict[str, Any]) -> None:
        dist = getattr(self.ctx, "dist", None)
        if self.manager is not None and (dist is None or dist.is_main):
            self.manager.save({**self.stamp, **payload})


# -- S3Delta ----------------------------------------------------------------------------------


def solve_shift(alpha: torch.Tensor, sizes: torch.Tensor, budget: float, temperature: float = 1.0,
                iters: int = 100) -> float:
    """The scalar ``b`` with ``Σ sigmoid((α − b)/T)·N = budget`` (bisection;
    the sum falls monotonically in ``b``)."""
    lo = float(alpha.min()) - 50.0 * temperature
    hi = float(alpha.max()) + 50.0 * temperature
    for _ in range(iters):
        mid = (lo + hi) / 2
        if float((torch.sigmoid((alpha - mid) / temperature) * sizes).sum()) > budget:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@attrs.define(kw_only=True)
class S3Delta(Optimizer):
    """S3Delta (Hu et al. 2022): binary-only differentiable search, every
    matrix module at rank 1; keep probabilities ``sigmoid(α − b)`` shifted
    so the expected size meets the budget; hard-concrete gates; first-order
    DARTS on two halves; final greedy selection by probability."""

    name = "s3delta"
    components = ()
    arch_lr: float = attrs.field(default=0.1, validator=attrs.validators.gt(0))
    temperature: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    rank: int = attrs.field(default=1, validator=attrs.validators.ge(1))

    def adapt_space(self, space):
        return space.with_ranks([self.rank]) if isinstance(space, DeclarativeSpace) else space

    def probabilities(self, sn, sizes, budget) -> torch.Tensor:
        a = sn.alpha[:, 1]
        b = solve_shift(a.detach(), sizes, budget, self.temperature)
        p = torch.sigmoid((a - b) / self.temperature)
        total = p.sum()
        return p / total * total.detach()  # shift_detach: same values, gradient moves mass between modules

    def gates(self, p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(p.shape, generator=generator).clamp(1e-6, 1 - 1e-6).to(p.device)
        pc = p.clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid(torch.log(u) - torch.log(1 - u) + torch.log(pc) - torch.log(1 - pc))
        return s.clamp(0.0, 1.0)  # stretch [l, r] = [0, 1]: the identity, then clip

    def search(self, ctx) -> SearchResult:
        s, sn = ctx.settings, ctx.supernet
        started = time.perf_counter()
        with torch.no_grad():
            sn.alpha[:, 0] = 0.0
        sizes = torch.tensor([float(m.max_count) for m in ctx.specs])
        dist = ctx.dist or Dist()
        half_a, half_b = split_halves(ctx.train, seed=s.seed)
        half_a, half_b = dist.shard(half_a), dist.shard(half_b)  # each rank its share; the same steps on all
        batch = max(1, s.batch_size // dist.world)
        loader_a = make_loader(half_a, batch, ctx.collate, seed=s.seed)
        loader_b = make_loader(half_b, batch, ctx.collate, seed=s.seed + 1)
        gen = torch.Generator().manual_seed(s.seed)
        weights = _weights(sn)
        opt_w = torch.optim.AdamW(weights, lr=s.lr, weight_decay=s.weight_decay)
        sched = linear_schedule(opt_w, len(loader_a) * s.epochs, s.warmup_ratio)
        opt_a = torch.optim.Adam([sn.alpha], lr=self.arch_lr)
        state = SearchState(supernet=sn, specs=ctx.specs, budget=ctx.budget, steps_per_epoch=len(loader_a))
        control, history = Control(), []
        checkpoints = _LoopCheckpoints(ctx, self.name)
        first_epoch, b_start, b_used = 0, loader_b.generator.get_state(), 0
        data = checkpoints.load()
        if data is not None:
            load_trainable_state(sn, data["supernet"])
            opt_w.load_state_dict(data["opt_w"])
            opt_a.load_state_dict(data["opt_a"])
            sched.load_state_dict(data["sched"])
            gen.set_state(data["rng"]["gates"])
            loader_a.generator.set_state(data["rng"]["loader_a"])
            torch.set_rng_state(data["rng"]["torch"])
            b_start, b_used = data["rng"]["loader_b"], data["b_used"]
            state.step, history, first_epoch = data["step"], list(data["history"]), data["epoch"] + 1
            started -= data["elapsed"]
        if ctx.hook is not None:
            ctx.hook.bipeft_before_search(context=ctx)
        loader_b.generator.set_state(b_start)
        it_b = iter(loader_b)
        for _ in range(b_used):  # where the interrupted search was in half B's order
            next(it_b)
        stop = False
        for epoch in range(first_epoch, s.epochs):
            for batch_a in loader_a:
                t0 = time.perf_counter()
                try:
                    batch_b = next(it_b)
                    b_used += 1
                except StopIteration:
                    b_start = loader_b.generator.get_state()
                    it_b = iter(loader_b)
                    batch_b, b_used = next(it_b), 1
                sn.train()
                # architecture step on half B
                sn.zero_grad(set_to_none=True)
                p = self.probabilities(sn, sizes, ctx.budget)
                sn.set_gates(self.gates(p, gen))
                loss_b = ctx.loss(sn, _to(batch_b, ctx.device))
                check_finite(dist.mean(loss_b), "architecture", state.step)
                loss_b.backward()
                sn.beta.grad = None
                dist.all_reduce_grads([sn.alpha])
                opt_a.step()
                # weight step on half A
                sn.zero_grad(set_to_none=True)
                with torch.no_grad():
                    p = self.probabilities(sn, sizes, ctx.budget)
                sn.set_gates(self.gates(p, gen).detach())
                loss_a = ctx.loss(sn, _to(batch_a, ctx.device))
                check_finite(dist.mean(loss_a), "weight", state.step)
                loss_a.backward()
                sn.alpha.grad = None
                dist.all_reduce_grads(weights)
                if s.clip_norm:
                    torch.nn.utils.clip_grad_norm_([w for w in weights if w.grad is not None], s.clip_norm)
                opt_w.step()
                sched.step()
                state.step += 1
                history.append({"step": state.step, "loss": float(dist.mean(loss_a)),
                                "expected_size": float((p * sizes).sum()), "step_time": time.perf_counter() - t0})
                if _after_step(ctx, state, control, dist):
                    stop = True
                    break
            if stop:
                break
            checkpoints.save({
                "epoch": epoch, "step": state.step, "history": history, "supernet": trainable_state(sn),
                "opt_w": opt_w.state_dict(), "opt_a": opt_a.state_dict(), "sched": sched.state_dict(),
                "b_used": b_used, "elapsed": time.perf_counter() - started,
                "rng": {"gates": gen.get_state(), "loader_a": loader_a.generator.get_state(), "loader_b": b_start,
                        "torch": torch.get_rng_state()}})
        with torch.no_grad():
            p = self.probabilities(sn, sizes, ctx.budget)
        order = sorted(range(len(ctx.specs)), key=lambda i: (-float(p[i]), i))
        taken = fill_walk([float(sizes[i]) for i in order], ctx.budget)
        choices = {i: (ctx.specs[i].ranks[-1] if ctx.specs[i].is_matrix else None)
                   for i, t in zip(order, taken) if t}
        if dist.enabled:
            dist.check_same("s3delta's selection", torch.tensor(sorted(choices)))
        notes = [f"stopped early: {control.reason}"] if control.stop_requested else []
        return _result(ctx, self.name, choices, started, steps=state.step, history=history, notes=notes,
                       scores=p.tolist())


# -- PrunePEFT --------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class PrunePEFT(Optimizer):
    """PrunePEFT (Lawton et al. 2023): train the whole space at the largest
    rank, all modules on; prune the least important (``I_tr/N``, BIPEFT's
    sensitivity estimator) in ``rounds`` rounds evenly spaced over the first
    half of the epochs, each removing an equal share of the excess by the
    budget-guided walk; train on to the last epoch."""

    name = "prunepeft"
    components = ("sensitivity", "module_selector")
    # the score is BIPEFT's estimator with its I_tr/N criterion (BASELINES.md)
    # normalised by the size at the largest rank, where PrunePEFT trains every module
    default_components = {"sensitivity": {"name": "grad_weight_cos", "criterion": "train", "normalizer": "max"},
                          "module_selector": "budget_guided"}
    rounds: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    prune_fraction: float = attrs.field(default=0.5, validator=[attrs.validators.gt(0), attrs.validators.le(1)])

    def adapt_space(self, space):
        return space.with_ranks([max(space.ranks)]) if isinstance(space, DeclarativeSpace) else space

    def search(self, ctx) -> SearchResult:
        s, sn = ctx.settings, ctx.supernet
        sens, msel = ctx.components["sensitivity"], ctx.components["module_selector"]
        started = time.perf_counter()
        dist = ctx.dist or Dist()
        loader = make_loader(dist.shard(ctx.train), max(1, s.batch_size // dist.world), ctx.collate, seed=s.seed)
        steps_per_epoch = len(loader)
        total = steps_per_epoch * s.epochs
        last_round = max(1, int(total * self.prune_fraction))
        at = sorted({max(1, round(last_round * (k + 1) / self.rounds)) for k in range(self.rounds)})
        weights = _weights(sn)
        opt = torch.optim.AdamW(weights, lr=s.lr, weight_decay=s.weight_decay)
        sched = linear_schedule(opt, total, s.warmup_ratio)
        with torch.no_grad():
            sn.fixed_rank.copy_(torch.where(sn.is_matrix, sn.argmax_rank(), sn.fixed_rank))
            sn.alpha.copy_(torch.tensor([-1e4, 1e4]).expand_as(sn.alpha))  # π = 1: every module is on
        sens.reset(ctx.specs)
        state = SearchState(supernet=sn, specs=ctx.specs, budget=ctx.budget, steps_per_epoch=steps_per_epoch)
        state.triggers_left = len(at)
        state.scores = sens.scores
        trace, history, control = [], [], Control()
        checkpoints = _LoopCheckpoints(ctx, self.name)
        first_epoch = 0
        data = checkpoints.load()
        if data is not None:
            load_trainable_state(sn, data["supernet"])
            opt.load_state_dict(data["opt"])
            sched.load_state_dict(data["sched"])
            sens.load_state_dict(data["components"]["sensitivity"])
            msel.load_state_dict(data["components"]["module_selector"])
            loader.generator.set_state(data["rng"]["loader"])
            torch.set_rng_state(data["rng"]["torch"])
            st = data["state"]
            state.step, state.triggers_left, state.last_expected, state.last_delta, state.expected_sizes = (
                st["step"], st["triggers_left"], st["last_expected"], st["last_delta"], st["expected_sizes"])
            state.scores = sens.scores
            trace, history, first_epoch = trace_from_dicts(data["trace"]), list(data["history"]), data["epoch"] + 1
            started -= data["elapsed"]
        if ctx.hook is not None:
            ctx.hook.bipeft_before_search(context=ctx)
        stop = False
        for epoch in range(first_epoch, s.epochs):
            for batch in loader:
                t0 = time.perf_counter()
                sn.train()
                sn.zero_grad(set_to_none=True)
                sn.configure("all_on")
                loss = ctx.loss(sn, _to(batch, ctx.device))
                check_finite(dist.mean(loss), "weight", state.step)
                loss.backward()
                sn.alpha.grad = sn.beta.grad = None
                dist.all_reduce_grads(weights)
                if s.clip_norm:
                    torch.nn.utils.clip_grad_norm_([w for w in weights if w.grad is not None], s.clip_norm)
                prods = sn.module_products()
                opt.step()
                sched.step()
                sens.observe(train=prods, val=[None] * len(prods), active=~sn.pruned)
                state.step += 1
                state.scores = sens.scores
                if state.step in at and state.triggers_left > 0:
                    pruned = msel.select(state)
                    with torch.no_grad():
                        for i in pruned:
                            sn.pruned[i] = True
                    if dist.enabled:  # the same scores on every rank, so the same modules pruned
                        dist.check_same(f"prunepeft's round at step {state.step}", sn.pruned)
                    state.triggers_left -= 1
                    trace.append(TriggerEvent(
                        index=len(trace), step=state.step, epoch=round(state.epoch, 4),
                        pruned=tuple(ctx.specs[i].id for i in pruned), fixed=(), expected_size=state.last_expected,
                        delta=state.last_delta, triggers_left=state.triggers_left,
                        remaining_modules=int((~sn.pruned).sum()), sensitivity={},
                        wall_time=time.perf_counter() - started))
                    if ctx.hook is not None:
                        ctx.hook.bipeft_on_trigger(event=trace[-1], state=state)
                history.append({"step": state.step, "loss": float(dist.mean(loss)),
                                "remaining": int((~sn.pruned).sum()), "step_time": time.perf_counter() - t0})
                if _after_step(ctx, state, control, dist):
                    stop = True
                    break
            if stop:
                break
            checkpoints.save({
                "epoch": epoch, "history": history, "trace": [e.to_dict() for e in trace],
                "supernet": trainable_state(sn), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "components": {"sensitivity": sens.state_dict(), "module_selector": msel.state_dict()},
                "state": {"step": state.step, "triggers_left": state.triggers_left,
                          "last_expected": state.last_expected, "last_delta": state.last_delta,
                          "expected_sizes": state.expected_sizes},
                "rng": {"loader": loader.generator.get_state(), "torch": torch.get_rng_state()},
                "elapsed": time.perf_counter() - started})
        ranks = sn.argmax_rank().tolist()
        choices = {i: (ranks[i] if m.is_matrix else None) for i, m in enumerate(ctx.specs) if not bool(sn.pruned[i])}
        return _result(ctx, self.name, choices, started, steps=state.step, trace=trace, history=history,
                       scores=sens.scores.tolist())


# -- APET -------------------------------------------------------------------------------------


@attrs.define(kw_only=True)
class APET(Optimizer):
    """APET (Su et al. 2023): trainable modules chosen at random, seeded,
    until the budget is filled; each draw picks a module uniformly among
    those that still fit, at a rank drawn uniformly among its candidate ranks
    that fit. The sanity floor every search must beat."""

    name = "apet"
    components = ()

    def search(self, ctx) -> SearchResult:
        started = time.perf_counter()
        rng = random.Random(ctx.settings.seed)
        left = ctx.budget
        choices: dict[int, int | None] = {}
        while True:
            fits = [i for i, m in enumerate(ctx.specs) if i not in choices and min(m.counts) <= left]
            if not fits:
                break
            i = rng.choice(fits)
            m = ctx.specs[i]
            if m.is_matrix:
                rank = rng.choice([r for r in m.ranks if m.count(r) <= left])
            else:
                rank = None
            choices[i] = rank
            left -= m.count(rank)
        return _result(ctx, self.name, choices, started, repair=False)


# -- manual PEFT and full fine-tuning ----------------------------------------------------------

MANUAL_DEFAULTS = {
    "lora": {"rank": 8, "targets": ("attn_q", "attn_v")},
    "serial_adapter": {"rank": 8, "targets": ("ffn_out",)},
    "bitfit": {"rank": None, "targets": ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "ffn_in", "ffn_out",
                                         "norm")},
    "lnfit": {"rank": None, "targets": ("norm",)},
}


def _targets(value):
    return tuple(value) if value is not None else None


@attrs.define(kw_only=True)
class Manual(Optimizer):
    """A hand-chosen PEFT method at a fixed configuration, no search:
    ``method`` = ``lora`` (default rank 8 on q and v), ``serial_adapter``
    (rank 8 on the FFN output), ``bitfit`` (every linear and norm) or
    ``lnfit`` (every norm); ``rank`` and ``targets`` override. The budget is
    reported against, not enforced."""

    name = "manual"
    components = ()
    budgeted = False
    method: str = attrs.field(default="lora", validator=attrs.validators.in_(tuple(MANUAL_DEFAULTS)))
    rank: int | None = None
    targets: tuple[str, ...] | None = attrs.field(default=None, converter=_targets)

    def adapt_space(self, space):
        defaults = MANUAL_DEFAULTS[self.method]
        rank = self.rank if self.rank is not None else defaults["rank"]
        entry = {"type": self.method, "targets": list(self.targets or defaults["targets"])}
        data = {"name": f"manual-{self.method}", "modules": [entry]}
        if rank is not None:
            data["ranks"] = [rank]
        return DeclarativeSpace.from_dict(data, source=f"manual {self.method}")

    def search(self, ctx) -> SearchResult:
        started = time.perf_counter()
        choices = {i: (m.ranks[-1] if m.is_matrix else None) for i, m in enumerate(ctx.specs)}
        return _result(ctx, self.name, choices, started, repair=False,
                       notes=[f"manual {self.method}: no search; the budget is not enforced"])


@attrs.define(kw_only=True)
class FullFineTune(Optimizer):
    """Full fine-tuning: every backbone parameter trains (the task head too);
    no search. The budget is reported against, not enforced."""

    name = "full"
    components = ()
    budgeted = False

    def search(self, ctx) -> SearchResult:
        started = time.perf_counter()
        structure = Structure(entries=(), space="", model_type=ctx.model_type, backbone_params=ctx.backbone_params,
                              budget=ctx.budget, full=True)
        return _result(ctx, self.name, {}, started, structure=structure,
                       notes=["full fine-tuning: no search; the budget is not enforced"])


@hookimpl
def bipeft_register_strategies(registry):
    from bipeft_plugins.strategies.autopeft import AutoPEFT

    # the baselines share the BIPEFT components (sensitivity, module selector)
    # through the same registries; they bring no copies of them
    for cls in (S3Delta, PrunePEFT, APET, Manual, FullFineTune, AutoPEFT):
        registry.add(cls)
