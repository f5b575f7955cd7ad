"""The search loop: the one engine every gradient-based strategy drives.

:class:`SearchLoop` owns a search's data order, its optimisers, the calls to
the components (sensitivity estimator, trigger, module and dimension
selectors), the plugin hooks, the per-step history, the checkpoints and
their resume, and the result (with the budget repair and re-fill of
:mod:`bipeft_core.repair`). A strategy subclasses :class:`LoopOptimizer`
and says, through the hooks declared there (each with a default), what is
its own: the architecture optimiser, how the gates are set for each pass,
what a history record holds and which structure it ends with. BIPEFT's
``iterative``, ``s3delta``, ``prunepeft`` and ``apet`` are such strategies.

One weight step, on the next batch of half A of the training set (the whole
set when the strategy has no architecture optimiser):

1. the architecture step, when the strategy has an architecture optimiser
   and the step is due (:attr:`LoopOptimizer.warmup_arch`), on the next
   batch of half B: gradients zeroed, :meth:`~LoopOptimizer.arch_gates`,
   the loss (a non-finite loss stops the search with a
   :class:`~bipeft_core.errors.TrainingError`),
   :meth:`~LoopOptimizer.arch_objective`, backward,
   :meth:`~LoopOptimizer.arch_update` (steps the logits, returns the
   validation products);
2. the weight step: gradients zeroed, :meth:`~LoopOptimizer.weight_gates`,
   the loss (checked), backward, the logits' gradients dropped, gradients
   averaged over processes and clipped, the training products recorded,
   AdamW and the linear schedule step;
3. the sensitivity estimator observes both products, ``state.step`` and
   ``state.scores`` advance;
4. once the trigger is warmed up the dimension selector takes a snapshot,
   then the trigger decides; when it fires the module selector prunes, ``K``
   decreases, the dimension selector fixes ranks, and ``bipeft_on_trigger``
   sees the :class:`~bipeft_core.state.TriggerEvent`;
5. the history record (:meth:`~LoopOptimizer.history_record`),
   ``bipeft_after_step`` (whose :class:`~bipeft_core.state.Control` may stop
   the search) and, as the strategy's checkpoint policy says, a checkpoint.

The search ends when the epochs run out, a plugin stops it, or (with
:attr:`LoopOptimizer.stop_when_spent`) the triggers are spent. Checkpoints
hold everything a resumed search needs to continue bit for bit (weights and
logits, optimiser and schedule states, component and strategy states, the
search state, trace, history, the data order and every RNG).
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch

from bipeft_core.checkpoint import CheckpointError
from bipeft_core.distributed import Dist
from bipeft_core.errors import TrainingError
from bipeft_core.interfaces import Optimizer
from bipeft_core.repair import refill_to_budget, repair_to_budget, smallest_addition, structure_count
from bipeft_core.state import Control, SearchContext, SearchResult, SearchState, TriggerEvent
from bipeft_core.structure import Structure
from bipeft_core.training import (
    enable_gradient_checkpointing,
    groups,
    linear_schedule,
    make_loader,
    precision,
    progress_bar,
    split_halves,
)

__all__ = [
    "LOOP_COMPONENTS",
    "Choices",
    "LoopOptimizer",
    "Products",
    "SearchCheckpoints",
    "SearchLoop",
    "build_result",
    "check_finite",
    "load_trainable_state",
    "trainable_state",
]

#: A structure as the loop hands it around: module index → rank (``None`` for vector modules).
Choices = dict[int, int | None]
#: Per module, ``θ ⊙ ∂L/∂θ`` of each of its tensors (``None`` where not computed).
Products = Sequence[Sequence[torch.Tensor | None] | None]
#: The component kinds the loop drives, in the order it resets and checkpoints them.
LOOP_COMPONENTS = ("sensitivity", "trigger", "module_selector", "dimension_selector")
#: The note a re-filled result carries when it stops short of its budget:
#: what is left and the smallest single addition the space offers (larger).
REFILL_NOTE = "re-fill: {left:,} of the budget left, smaller than the smallest addition the space offers (+{least:,})"


def check_finite(loss: torch.Tensor, where: str, step: int) -> None:
    """Raise :class:`TrainingError` when ``loss`` (of the ``where`` step
    ``step``) is NaN or infinite."""
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss is {float(loss.detach())} at {where} step {step}; lower the learning rate (search.lr), "
            "check the data for empty or broken examples, or use float32"
        )


def trainable_state(supernet: Any) -> dict[str, torch.Tensor]:
    """The supernet's trainable and search state (not the frozen backbone):
    module weights, logits, pruned modules, fixed ranks and the task head."""
    out = {f"peft.{k}": v.detach().clone() for k, v in supernet.peft.state_dict().items()}
    out.update(alpha=supernet.alpha.detach().clone(), beta=supernet.beta.detach().clone(),
               pruned=supernet.pruned.clone(), fixed_rank=supernet.fixed_rank.clone())
    for i, p in enumerate(supernet.head_params):
        out[f"head.{i}"] = p.detach().clone()
    return out


@torch.no_grad()
def load_trainable_state(supernet: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Put back what :func:`trainable_state` returned."""
    supernet.peft.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("peft.")})
    supernet.alpha.copy_(state["alpha"])
    supernet.beta.copy_(state["beta"])
    supernet.pruned.copy_(state["pruned"])
    supernet.fixed_rank.copy_(state["fixed_rank"])
    for i, p in enumerate(supernet.head_params):
        p.copy_(state[f"head.{i}"])


def build_result(
    ctx: SearchContext,
    strategy: str,
    choices: Mapping[int, int | None],
    started: float,
    *,
    steps: int = 0,
    trace: Sequence[TriggerEvent] = (),
    history: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
    scores: Sequence[float] | None = None,
    repair: bool = True,
    refill: bool = False,
    structure: Structure | None = None,
    extra: dict[str, Any] | None = None,
) -> SearchResult:
    """The :class:`SearchResult` of a search that chose ``choices`` (the one
    place a result is built). With ``repair`` the structure is brought within
    the budget (:func:`~bipeft_core.repair.repair_to_budget`, least ``scores``
    first; all 0 when ``None``), then with ``refill`` filled back up
    (:func:`~bipeft_core.repair.refill_to_budget`). ``structure`` replaces
    the structure built from ``choices`` (full fine-tuning), unrepaired.
    ``started``: the search's ``time.perf_counter()`` start."""
    log: list[str] = []
    refill_log: list[str] = []
    if structure is None:
        choices = dict(choices)
        if repair:
            order = list(scores) if scores is not None else [0.0] * len(ctx.specs)
            choices, log = repair_to_budget(ctx.specs, choices, order, ctx.budget)
            if refill:
                choices, refill_log = refill_to_budget(ctx.specs, choices, order, ctx.budget)
                left = ctx.budget - structure_count(ctx.specs, choices)
                if left > 0:
                    least = smallest_addition(ctx.specs, choices)
                    notes = [*notes, REFILL_NOTE.format(left=left, least=least) if least is not None
                             else f"re-fill: {left:,} of the budget left and the whole space is in the structure"]
        structure = Structure.from_choices(ctx.specs, choices, space=ctx.space_name, model_type=ctx.model_type,
                                           backbone_params=ctx.backbone_params, budget=ctx.budget)
    count = structure.count()
    return SearchResult(
        structure=structure, count=count, budget=ctx.budget, backbone_params=ctx.backbone_params,
        strategy=strategy, trace=tuple(trace), wall_time=time.perf_counter() - started, steps=steps,
        budget_met=count <= ctx.budget, repaired=bool(log), repair_log=tuple(log), refill_log=tuple(refill_log),
        notes=tuple(notes), history=tuple(history), extra=extra or {},
    )


class SearchCheckpoints:
    """The checkpoints of one search, through the context's
    :class:`~bipeft_core.checkpoint.CheckpointManager` (a run folder's
    ``search/``; none: nothing is written or read). Each is stamped with the
    strategy, the modules, the budget and the seed, and a resumed search
    refuses another search's file. The loop writes its checkpoints through
    it; a strategy that searches otherwise (AutoPEFT, after each trial) uses
    it directly. Only the main process writes."""

    def __init__(self, ctx: SearchContext, strategy: str) -> None:
        self.manager = ctx.checkpoint
        self.resume = bool(ctx.resume)
        self.writes = ctx.dist is None or ctx.dist.is_main
        self.stamp: dict[str, Any] = {"strategy": strategy, "spec_ids": [m.id for m in ctx.specs],
                                      "budget": ctx.budget, "seed": ctx.settings.seed}

    @property
    def every(self) -> int | None:
        """The manager's step interval (``None`` without a manager)."""
        return None if self.manager is None else int(self.manager.every)

    def load(self) -> dict[str, Any] | None:
        """The checkpoint to resume from: ``None`` unless resuming and one
        exists. Raises :class:`CheckpointError` for another search's file."""
        if self.manager is None or not self.resume or not self.manager.exists():
            return None
        data = self.manager.load()
        differs = []
        if data.get("strategy") != self.stamp["strategy"]:
            differs.append(f"strategy {data.get('strategy')!r}, not {self.stamp['strategy']!r}")
        if data.get("spec_ids") != self.stamp["spec_ids"]:
            differs.append("other modules (another model or space)")
        for key in ("budget", "seed"):
            if data.get(key) != self.stamp[key]:
                differs.append(f"{key} {data.get(key)!r}, not {self.stamp[key]!r}")
        if differs:
            raise CheckpointError(
                f"the checkpoint {self.manager.path} belongs to another search ({'; '.join(differs)}); resume "
                "with the spec and model that wrote it, or start a new search in another folder")
        return data

    def save(self, payload: Mapping[str, Any]) -> None:
        """Write ``payload`` with the stamp (main process only). The stamp's
        keys (``strategy``, ``spec_ids``, ``budget``, ``seed``) are reserved."""
        clash = sorted(set(payload) & set(self.stamp))
        if clash:
            raise CheckpointError(f"a checkpoint payload may not use the stamp's keys {clash}; rename them")
        if self.manager is not None and self.writes:
            self.manager.save({**self.stamp, **payload})


class LoopOptimizer(Optimizer):
    """An :class:`~bipeft_core.interfaces.Optimizer` whose search is the
    shared :class:`SearchLoop`. What the loop reads from its strategy is
    declared here, each with its default; a strategy overrides what is its
    own and implements :meth:`final_choices`. Hooks receive the running
    :class:`SearchLoop` (``loop``) and read from it what they need
    (``loop.supernet``, ``loop.state``, ``loop.gate_generator``, ...)."""

    trains: ClassVar[bool] = True
    """Whether the search trains the supernet. ``False``: the structure is
    chosen without a step (APET's random draw); the loop then goes straight
    to :meth:`final_choices` and the result."""
    step_checkpoints: ClassVar[bool] = True
    """Write a checkpoint every ``checkpoint_every`` weight steps and after
    each trigger, besides the one at each epoch end (default). ``False``: at
    epoch ends only."""
    event_scores: ClassVar[bool] = True
    """Whether each :class:`TriggerEvent` carries the min, mean and max
    score of the modules left (default); ``False`` leaves it empty."""
    warmup_arch: bool = True
    """Take architecture steps during the trigger's warm-up (default).
    ``False``: until :meth:`Trigger.warmed_up
    <bipeft_core.interfaces.Trigger.warmed_up>`, weight steps only."""
    stop_when_spent: bool = False
    """End the search once the triggers are spent (``K`` = 0); default: train
    on to the last epoch."""

    @property
    def repairs(self) -> bool:
        """Whether the final structure is repaired to the budget (default ``True``)."""
        return True

    @property
    def refills(self) -> bool:
        """Whether the repaired structure is filled back up to the budget
        (default ``False``)."""
        return False

    def loop_components(self, ctx: SearchContext) -> dict[str, Any]:
        """The components the loop drives, by kind (of
        :data:`LOOP_COMPONENTS`). Default: those the spec built for
        :attr:`components`. A strategy may add one of its own (PrunePEFT's
        schedule of pruning rounds is its trigger)."""
        return {kind: ctx.components[kind] for kind in LOOP_COMPONENTS if ctx.components.get(kind) is not None}

    def arch_optimizer(self, supernet: Any) -> torch.optim.Optimizer | None:
        """The optimiser of the architecture logits, built once per search.
        Default ``None``: no architecture steps, and the weights train on the
        whole training set (else on half A, the logits on half B)."""
        return None

    def prepare(self, loop: SearchLoop) -> None:
        """Set up the supernet before the first step (e.g. its logits);
        called once, before a checkpoint is loaded. Default: nothing."""

    def arch_gates(self, loop: SearchLoop) -> None:
        """Set the supernet's gates for the architecture forward. Default:
        the ``joint`` mode (α and β sampled together)."""
        loop.supernet.configure("joint", generator=loop.gate_generator)

    def arch_objective(self, loop: SearchLoop, loss: torch.Tensor) -> torch.Tensor:
        """The architecture step's objective from its (finite) loss; default
        the loss itself."""
        return loss

    def arch_update(self, loop: SearchLoop) -> Products | None:
        """After the architecture backward: average the gradients over
        processes, step :attr:`SearchLoop.arch_optimizer` and return the
        validation products (``None``: none). Default: both logits step, the
        products are recorded before the step."""
        sn = loop.supernet
        loop.dist.all_reduce_grads([*loop.weights, *sn.arch_parameters()])
        products = sn.module_products()
        assert loop.arch_optimizer is not None
        loop.arch_optimizer.step()
        return products

    def weight_gates(self, loop: SearchLoop) -> None:
        """Set the supernet's gates for the weight forward. Default: the
        ``weight`` mode (gates sampled from α)."""
        loop.supernet.configure("weight", generator=loop.gate_generator)

    def history_record(self, loop: SearchLoop, *, loss: float, arch_loss: float | None) -> dict[str, Any]:
        """The history record of the step just taken (after the trigger);
        the loop adds ``step_time``. Default: ``step`` and ``loss``."""
        return {"step": loop.state.step, "loss": loss}

    @abstractmethod
    def final_choices(self, loop: SearchLoop) -> Choices:
        """The structure the search ends with, before the repair."""

    def repair_scores(self, loop: SearchLoop) -> Sequence[float]:
        """Per module, the score the repair removes least first and the
        re-fill adds most first. Default: ``state.scores`` (0 without an
        estimator)."""
        scores = loop.state.scores
        return [0.0] * len(loop.specs) if scores is None else scores.tolist()

    def result_notes(self, loop: SearchLoop) -> list[str]:
        """Notes of the strategy's own for the result (default none); the
        loop adds the triggers left and an early stop."""
        return []

    def search(self, ctx: SearchContext) -> SearchResult:
        """Run :class:`SearchLoop` with this strategy."""
        return SearchLoop(self, ctx).run()


@attrs.define
class _Cursor:
    """Where the loop is, and what it needs to replay the data order."""

    epoch: int = 0
    batch_in_epoch: int = 0
    arch_steps: int = 0
    gen_a_state: torch.Tensor | None = None
    gen_b_state: torch.Tensor | None = None
    b_consumed: int = 0


class SearchLoop:
    """One search of ``strategy`` in ``ctx`` (see the module docstring).

    What hooks may read: ``ctx``, ``strategy``, ``supernet``, ``specs``,
    ``budget``, ``settings``, ``dist``, ``components`` (kind → component),
    ``state``, ``trace``, ``history``, ``control``, ``gate_generator`` (the
    seeded generator of every gate sample), ``weights`` (the parameters the
    weight step trains), ``arch_optimizer``, ``epochs``, :attr:`epoch` and
    :attr:`arch_steps`. The loop alone changes them."""

    weight_optimizer: torch.optim.Optimizer
    """AdamW over :attr:`weights` (set when training starts)."""
    scheduler: torch.optim.lr_scheduler.LRScheduler
    """The weight optimiser's linear schedule."""

    def __init__(self, strategy: LoopOptimizer, ctx: SearchContext) -> None:
        self.strategy, self.ctx = strategy, ctx
        self.supernet, self.specs, self.budget = ctx.supernet, ctx.specs, ctx.budget
        self.settings = ctx.settings
        self.epochs: int = ctx.settings.epochs
        self.dist: Dist = ctx.dist or Dist()
        self.components = strategy.loop_components(ctx)
        self.control = Control()
        self.trace: list[TriggerEvent] = []
        self.history: list[dict[str, Any]] = []
        self.checkpoints = SearchCheckpoints(ctx, strategy.name)
        self.gate_generator = torch.Generator().manual_seed(ctx.settings.seed)
        self.weights: list[torch.nn.Parameter] = []
        self.arch_optimizer: torch.optim.Optimizer | None = None
        self.state = SearchState(supernet=self.supernet, specs=self.specs, budget=self.budget, steps_per_epoch=0)
        self.started = time.perf_counter()
        self._cursor = _Cursor()
        self.curve_budgets = tuple(sorted(set(ctx.curve_budgets), reverse=True))
        self._snapshots: dict[int, dict[str, Any]] = {}

    @property
    def epoch(self) -> int:
        """The epoch the loop is in (0-based; ``state.epoch`` is the float of steps done)."""
        return self._cursor.epoch

    @property
    def arch_steps(self) -> int:
        """Architecture steps taken so far (during a step's hooks: before it)."""
        return self._cursor.arch_steps

    @property
    def selecting(self) -> bool:
        """Whether the trigger and selectors run: the strategy selects and has a trigger."""
        return self.strategy.selects and "trigger" in self.components

    def run(self) -> SearchResult:
        """The whole search; returns its result."""
        if self.strategy.trains:
            self._train()
        elif self.ctx.hook is not None:
            self.ctx.hook.bipeft_before_search(context=self.ctx)
        return self._result()

    # -- set-up and resume ---------------------------------------------------------------------
    def _train(self) -> None:
        s, sn, dist, strategy = self.settings, self.supernet, self.dist, self.strategy
        self.arch_optimizer = strategy.arch_optimizer(sn)
        batch = max(1, s.batch_size // dist.world)
        self._loader_b = None
        if self.arch_optimizer is not None:  # weights on half A, logits on half B
            half_a, half_b = split_halves(self.ctx.train, seed=s.seed)
            half_a, half_b = dist.shard(half_a), dist.shard(half_b)  # each rank its share; the same steps on all
            self._loader_a = make_loader(half_a, batch, self.ctx.collate, seed=s.seed, shuffle=True)
            self._loader_b = make_loader(half_b, batch, self.ctx.collate, seed=s.seed + 1, shuffle=True)
        else:
            self._loader_a = make_loader(dist.shard(self.ctx.train), batch, self.ctx.collate, seed=s.seed,
                                         shuffle=True)
        self.accum = s.accum
        steps_per_epoch = -(-len(self._loader_a) // self.accum)
        enable_gradient_checkpointing(sn.model, s)
        self.weights = sn.peft_parameters() + list(sn.head_params)
        self.weight_optimizer = torch.optim.AdamW(self.weights, lr=s.lr, weight_decay=s.weight_decay)
        self.scheduler = linear_schedule(self.weight_optimizer, steps_per_epoch * s.epochs, s.warmup_ratio)
        self.state = SearchState(supernet=sn, specs=self.specs, budget=self.budget,
                                 steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * s.epochs)
        strategy.prepare(self)
        self._reset_components()
        resumed = self._resume()
        if self.ctx.hook is not None:
            self.ctx.hook.bipeft_before_search(context=self.ctx)
        self.started = time.perf_counter() - self._elapsed_before
        self._epochs(resumed)

    def _reset_components(self) -> None:
        """Each component reset for a search starting at :attr:`state`."""
        comps = self.components
        if "sensitivity" in comps:
            comps["sensitivity"].reset(self.specs)
        if self.selecting:  # an unused trigger (a strategy that does not select) leaves K at 0
            comps["trigger"].reset(self.state)
        for kind in ("module_selector", "dimension_selector"):
            if kind in comps:
                comps[kind].reset(self.state)
        self._read_scores()

    def _read_scores(self) -> None:
        if "sensitivity" in self.components:
            self.state.scores = self.components["sensitivity"].scores

    def _resume(self) -> bool:
        """Load the checkpoint when resuming; whether one was loaded."""
        self._elapsed_before = 0.0
        data = self.checkpoints.load()
        if data is None:
            return False
        load_trainable_state(self.supernet, data["supernet"])
        self.weight_optimizer.load_state_dict(data["opt_w"])
        if self.arch_optimizer is not None:
            self.arch_optimizer.load_state_dict(data["opt_a"])
        self.scheduler.load_state_dict(data["sched"])
        for kind, comp in self.components.items():
            comp.load_state_dict(data["components"][kind])
        self.strategy.load_state_dict(data["optimizer_state"])
        self.state.load_state_dict(data["state"])
        self._read_scores()
        self._cursor = _Cursor(**data["cursor"])
        self.trace = [TriggerEvent.from_dict(e) for e in data["trace"]]
        self.history = list(data["history"])
        self._snapshots = dict(data.get("curve") or {})
        self.gate_generator.set_state(data["rng"]["gates"])
        torch.set_rng_state(data["rng"]["torch"])
        self._elapsed_before = data["elapsed"]
        return True

    def _save(self) -> None:
        self.checkpoints.save({
            "supernet": trainable_state(self.supernet), "opt_w": self.weight_optimizer.state_dict(),
            "opt_a": None if self.arch_optimizer is None else self.arch_optimizer.state_dict(),
            "sched": self.scheduler.state_dict(),
            "components": {kind: comp.state_dict() for kind, comp in self.components.items()},
            "optimizer_state": self.strategy.state_dict(), "state": self.state.state_dict(),
            "cursor": attrs.asdict(self._cursor), "trace": [e.to_dict() for e in self.trace],
            "history": self.history, "curve": self._snapshots,
            "rng": {"gates": self.gate_generator.get_state(), "torch": torch.get_rng_state()},
            "elapsed": time.perf_counter() - self.started,
        })

    # -- the epochs ------------------------------------------------------------------------------
    def _batches_b(self) -> Callable[[], dict[str, torch.Tensor]]:
        """The next batch of half B each call, continuing its order across
        epochs (and from where a resumed search left it)."""
        cursor, loader_b = self._cursor, self._loader_b
        assert loader_b is not None
        gen_b = loader_b.generator
        it_b: Iterator[dict[str, torch.Tensor]] | None = None
        if cursor.gen_b_state is not None:  # replay the order up to the cursor
            gen_b.set_state(cursor.gen_b_state)
            it_b = iter(loader_b)
            for _ in range(cursor.b_consumed):
                next(it_b)

        def next_b() -> dict[str, torch.Tensor]:
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

        return next_b

    def _epochs(self, resumed: bool) -> None:
        state, cursor, control, dist = self.state, self._cursor, self.control, self.dist
        loader_a = self._loader_a
        gen_a = loader_a.generator
        next_b = self._batches_b() if self._loader_b is not None else None
        spent = self.selecting and self.strategy.stop_when_spent
        every = self.checkpoints.every or 1
        done = spent and state.triggers_left <= 0 and state.step > 0
        bar = progress_bar(bool(self.ctx.progress) and dist.is_main, total=state.total_steps,
                           initial=state.step, desc="search")
        while not done and cursor.epoch < self.epochs:
            if resumed and cursor.gen_a_state is not None:
                gen_a.set_state(cursor.gen_a_state)
            else:
                cursor.gen_a_state = gen_a.get_state()
                cursor.batch_in_epoch = 0
            resumed = False
            it_a = iter(loader_a)
            for _ in range(cursor.batch_in_epoch):
                next(it_a)
            for group_a in groups(it_a, self.accum, len(loader_a) - cursor.batch_in_epoch):
                t0 = time.perf_counter()
                fired = self._step(group_a, next_b)
                cursor.batch_in_epoch += len(group_a)
                self.history[-1]["step_time"] = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix_str(self._progress_text(), refresh=False)
                if self.ctx.hook is not None:
                    self.ctx.hook.bipeft_after_step(state=state, control=control)
                if dist.enabled:  # a stop requested on one rank stops every rank
                    control.stop_requested = bool(dist.mean(torch.tensor(float(control.stop_requested))) > 0)
                if self.strategy.step_checkpoints and (fired or state.step % every == 0):
                    self._save()
                if control.stop_requested or (spent and state.triggers_left <= 0):
                    done = True
                    break
            if not done:
                cursor.epoch += 1
                cursor.batch_in_epoch = 0
                cursor.gen_a_state = gen_a.get_state()  # where the next epoch's shuffle starts
                resumed = True  # the cursor now describes where to continue
                self._save()
        bar.close()

    def _progress_text(self) -> str:
        last, parts = self.history[-1], []
        if "expected_size" in last:
            parts.append(f"size {last['expected_size']:,.0f}/{self.budget:,}")
        if "remaining" in last:
            parts.append(f"modules {last['remaining']}")
        if self.selecting:
            parts.append(f"triggers left {self.state.triggers_left}")
        return " ".join(parts)

    # -- one step ----------------------------------------------------------------------------------
    def _step(self, group_a: list[dict[str, torch.Tensor]],
              next_b: Callable[[], dict[str, torch.Tensor]] | None) -> bool:
        """One weight step on the batches of ``group_a`` (one, or
        ``grad_accum_steps`` whose gradients it sums), with its architecture
        step when due; whether the trigger fired."""
        sn, state, dist, strategy, comps = self.supernet, self.state, self.dist, self.strategy, self.components
        sn.train()
        trigger: Any = comps.get("trigger")  # present whenever self.selecting
        loss_b: torch.Tensor | None = None
        val_products: Products | None = None
        if next_b is not None and (strategy.warmup_arch or not self.selecting or trigger.warmed_up(state)):
            loss_b, val_products = self._arch_step([next_b() for _ in group_a])
        # -- weight step ---------------------------------------------------------------------------
        sn.zero_grad(set_to_none=True)
        strategy.weight_gates(self)
        loss_a = self._backward(group_a, "weight")
        sn.alpha.grad = None
        sn.beta.grad = None
        dist.all_reduce_grads(self.weights)
        if self.settings.clip_norm:
            torch.nn.utils.clip_grad_norm_([p for p in self.weights if p.grad is not None], self.settings.clip_norm)
        sens = comps.get("sensitivity")
        train_products = sn.module_products() if sens is not None else None
        self.weight_optimizer.step()
        self.scheduler.step()
        if sens is not None:
            sens.observe(train=train_products, val=val_products or [None] * len(self.specs), active=~sn.pruned,
                         sizes=sn.effective_counts())
        state.step += 1
        self._read_scores()
        fired = False
        if self.selecting:
            if "dimension_selector" in comps and trigger.warmed_up(state):
                comps["dimension_selector"].observe(state)
            if trigger.should_fire(state):
                self.trace.append(self._fire())
                fired = True
                if self.curve_budgets:
                    self._snapshot()
        if dist.enabled:  # every step: whether it fired, what is pruned and fixed, must agree on all ranks
            dist.check_same(f"the decisions of step {state.step}", torch.tensor([fired]), sn.pruned, sn.fixed_rank)
        self.history.append(strategy.history_record(
            self, loss=float(dist.mean(loss_a)), arch_loss=None if loss_b is None else float(dist.mean(loss_b))))
        return fired

    def _loss(self, batch: dict[str, torch.Tensor], which: str) -> torch.Tensor:
        """The (checked) loss of one batch, under the precision setting."""
        batch = {k: v.to(self.ctx.device) for k, v in batch.items()}
        with precision(self.settings, self.ctx.device):
            loss = self.ctx.loss(self.supernet, batch)
        check_finite(self.dist.mean(loss), which, self.state.step)
        return loss

    def _backward(self, group: list[dict[str, torch.Tensor]], which: str,
                  objective: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Backward of the mean loss of ``group``'s batches (each batch's
        graph freed before the next), then of ``objective``'s batch-free
        terms (``objective(loss) - loss``) once; the mean loss with them."""
        if len(group) == 1:  # one batch: the objective on its loss, as it always was
            loss = self._loss(group[0], which)
            if objective is not None:
                loss = objective(loss)
            loss.backward()
            return loss
        total = torch.zeros((), device=self.ctx.device)
        for i, batch in enumerate(group):
            loss = self._loss(batch, which)
            # the gates were computed once for the step, so their (small) graph is kept for the next batch;
            # each batch's own activations go when its loss does
            (loss / len(group)).backward(retain_graph=i < len(group) - 1)
            total = total + loss.detach() / len(group)
            del loss
        if objective is not None:
            extra = objective(torch.zeros((), device=self.ctx.device))
            if extra.requires_grad:
                extra.backward()
            total = total + extra.detach()
        return total

    def _arch_step(self, group_b: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, Products | None]:
        """The architecture step on batches of half B: its loss and the validation products."""
        sn, strategy = self.supernet, self.strategy
        sn.zero_grad(set_to_none=True)
        strategy.arch_gates(self)
        loss_b = self._backward(group_b, "architecture", lambda loss: strategy.arch_objective(self, loss))
        val_products = strategy.arch_update(self)
        self._cursor.arch_steps += 1
        return loss_b, val_products

    def _fire(self) -> TriggerEvent:
        """The selectors' turn: prune, count the firing, fix ranks; the event."""
        state, sn, comps, specs = self.state, self.supernet, self.components, self.specs
        pruned = comps["module_selector"].select(state) if "module_selector" in comps else []
        with torch.no_grad():
            for i in pruned:
                sn.pruned[i] = True
        state.count_firing()
        fixed = comps["dimension_selector"].select(state) if "dimension_selector" in comps else {}
        with torch.no_grad():
            for i, r in fixed.items():
                sn.fixed_rank[i] = r
        summary: dict[str, float] = {}
        if self.strategy.event_scores and state.scores is not None:
            scores = state.scores[~sn.pruned]
            summary = {"min": float(scores.min()) if len(scores) else 0.0,
                       "mean": float(scores.mean()) if len(scores) else 0.0,
                       "max": float(scores.max()) if len(scores) else 0.0}
        event = TriggerEvent(
            index=len(self.trace), step=state.step, epoch=round(state.epoch, 4),
            pruned=tuple(specs[i].id for i in pruned),
            fixed=tuple((specs[i].id, r) for i, r in sorted(fixed.items())),
            expected_size=state.last_expected, delta=state.last_delta, triggers_left=state.triggers_left,
            remaining_modules=int((~sn.pruned).sum()), sensitivity=summary,
            wall_time=time.perf_counter() - self.started,
        )
        if self.ctx.hook is not None:
            self.ctx.hook.bipeft_on_trigger(event=event, state=state)
        return event

    # -- the result --------------------------------------------------------------------------------
    def _snapshot(self) -> None:
        """After a firing: the structure the search would end with now, kept
        for every larger budget it first fits (before its repair and re-fill)."""
        choices = dict(self.strategy.final_choices(self))
        count = structure_count(self.specs, choices)
        for b in self.curve_budgets:
            if b not in self._snapshots and count <= b:
                scores = list(self.strategy.repair_scores(self)) if self.strategy.repairs else None
                self._snapshots[b] = {"choices": choices, "scores": scores, "step": self.state.step, "count": count}

    def _curve(self, final: Mapping[int, int | None], final_scores: Sequence[float] | None) -> list[dict[str, Any]]:
        """Each larger budget's structure, repaired and re-filled to it as a
        search at that budget is: from the step where the search's structure
        first fitted it, else (no firing reached it) from the final one."""
        out = []
        for b in sorted(self.curve_budgets):
            snap = self._snapshots.get(b)
            choices, scores, step, source = ((snap["choices"], snap["scores"], snap["step"], "first fit")
                                             if snap else (final, final_scores, self.state.step, "final"))
            ctx = attrs.evolve(self.ctx, budget=b)
            r = build_result(ctx, self.strategy.name, choices, self.started, scores=scores,
                             repair=self.strategy.repairs, refill=self.strategy.refills)
            out.append({"budget": b, "step": step, "source": source, "count": r.count,
                        "budget_met": r.budget_met, "structure": r.structure.to_dict(),
                        "repair_log": list(r.repair_log), "refill_log": list(r.refill_log)})
        return out

    def _result(self) -> SearchResult:
        strategy, state = self.strategy, self.state
        choices = strategy.final_choices(self)
        notes = list(strategy.result_notes(self))
        if self.selecting and state.triggers_left > 0:
            notes.append(f"the epochs ran out with {state.triggers_left} triggers left")
        if self.control.stop_requested:
            notes.append(f"stopped early: {self.control.reason}")
        scores = strategy.repair_scores(self) if strategy.repairs else None
        extra = {"curve": self._curve(choices, scores)} if self.curve_budgets else None
        return build_result(self.ctx, strategy.name, choices, self.started, steps=state.step, trace=self.trace,
                            history=self.history, notes=notes, scores=scores,
                            repair=strategy.repairs, refill=strategy.refills, extra=extra)
