"""Runtime state of a search, the events it emits, and its result.

Each field of :class:`SearchState` has one owner, the one code path that
changes it; everyone else reads it:

* ``step`` and ``scores``: the search loop
  (:class:`bipeft_core.loop.SearchLoop`).
* ``triggers_left`` (read-only): set once, by :meth:`Trigger.reset
  <bipeft_core.interfaces.Trigger.reset>` through
  :meth:`SearchState.plan_triggers`; lowered only by the loop, with
  :meth:`SearchState.count_firing`, each time the trigger fires.
* ``expected_sizes``, ``last_expected``, ``last_delta``: the module selector
  (:meth:`ModuleSelector.select <bipeft_core.interfaces.ModuleSelector.select>`),
  at each firing; ``expected_sizes`` starts at the modules' sizes at their
  largest rank.
* the supernet's ``pruned`` and ``fixed_rank`` (read here through
  properties): the loop, which applies what the selectors return.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch

from bipeft_core.structure import Structure
from bipeft_core.types import ModuleSpec

__all__ = ["Control", "SearchContext", "SearchResult", "SearchState", "TriggerEvent"]


@attrs.define
class SearchState:
    """What the trigger and selectors read during a search (and what the
    module selector writes, see the module docstring). Lives as long as one
    search; the loop checkpoints it with :meth:`state_dict`."""

    supernet: Any
    specs: Sequence[ModuleSpec]
    budget: int
    steps_per_epoch: int
    step: int = 0
    """Weight steps done. Owner: the loop."""
    total_steps: int = 0
    """Weight steps the search plans (``steps_per_epoch × epochs``; 0: unknown)."""
    _triggers_left: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    """``K``, see :attr:`triggers_left` (an init argument of that name, for tests)."""
    expected_sizes: torch.Tensor = attrs.field()
    """Per module: the size the trigger's walk uses (``N_m`` at the largest
    rank until the first trigger, then the expected size the module selector
    computed at the last trigger). Owner: the module selector."""
    scores: torch.Tensor | None = None
    """The sensitivity estimator's scores after the last weight step
    (``None`` without an estimator). Owner: the loop."""
    last_delta: float = 0.0
    """``ΔP`` of the last firing. Owner: the module selector."""
    last_expected: float = 0.0
    """The expected size ``E`` at the last firing. Owner: the module selector."""

    @expected_sizes.default
    def _max_sizes(self) -> torch.Tensor:
        return self.max_counts()

    @property
    def triggers_left(self) -> int:
        """``K``: triggers still to come. Read-only; the trigger's ``reset``
        sets it with :meth:`plan_triggers`, the loop lowers it with
        :meth:`count_firing`."""
        return self._triggers_left

    def plan_triggers(self, k: int) -> None:
        """Set ``K`` at the start of a search: called once, by the trigger's
        :meth:`~bipeft_core.interfaces.Trigger.reset` (0 until then)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"the number of triggers must be a whole number >= 0, not {k!r}; "
                             "a Trigger's reset returns it")
        self._triggers_left = k

    def count_firing(self) -> int:
        """One trigger fired: ``K − 1`` (called by the loop only, between the
        module selector and the dimension selector). Returns the new ``K``."""
        if self._triggers_left <= 0:
            raise ValueError("a trigger fired with no triggers left (K = 0); a Trigger's should_fire must "
                             "return False once state.triggers_left is 0")
        self._triggers_left -= 1
        return self._triggers_left

    @property
    def epoch(self) -> float:
        """Epochs done, as a float (``step / steps_per_epoch``)."""
        return self.step / max(1, self.steps_per_epoch)

    @property
    def pruned(self) -> torch.Tensor:
        return self.supernet.pruned

    @property
    def fixed_rank(self) -> torch.Tensor:
        return self.supernet.fixed_rank

    def max_counts(self) -> torch.Tensor:
        """Per module, its size at its largest candidate rank (float64)."""
        return torch.tensor([float(s.max_count) for s in self.specs], dtype=torch.float64)

    def state_dict(self) -> dict[str, Any]:
        """The fields a resumed search needs (``scores`` come back from the
        estimator's own state)."""
        return {"step": self.step, "triggers_left": self._triggers_left, "expected_sizes": self.expected_sizes,
                "last_delta": self.last_delta, "last_expected": self.last_expected}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume, by the loop)."""
        self.step = int(state["step"])
        self._triggers_left = int(state["triggers_left"])
        self.expected_sizes = state["expected_sizes"]
        self.last_delta, self.last_expected = state["last_delta"], state["last_expected"]


@attrs.frozen(kw_only=True)
class TriggerEvent:
    """One firing of the trigger: what it changed."""

    index: int
    step: int
    epoch: float
    pruned: tuple[str, ...]
    fixed: tuple[tuple[str, int], ...]
    expected_size: float
    delta: float
    triggers_left: int
    remaining_modules: int
    sensitivity: dict[str, float]
    wall_time: float

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["pruned"] = list(self.pruned)
        d["fixed"] = [list(x) for x in self.fixed]
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TriggerEvent:
        """The event back from :meth:`to_dict` (a checkpoint's trace)."""
        return cls(**{**data, "pruned": tuple(data["pruned"]), "fixed": tuple(map(tuple, data["fixed"]))})


@attrs.define
class Control:
    """Passed to ``bipeft_after_step``: a plugin may stop the search."""

    stop_requested: bool = False
    reason: str = ""

    def request_stop(self, reason: str = "requested by a plugin") -> None:
        self.stop_requested = True
        self.reason = reason


@attrs.frozen(kw_only=True)
class SearchResult:
    """What every strategy returns: the structure and its cost."""

    structure: Structure
    count: int
    budget: int
    backbone_params: int
    strategy: str
    trace: tuple[TriggerEvent, ...] = ()
    wall_time: float = 0.0
    steps: int = 0
    budget_met: bool = True
    repaired: bool = False
    repair_log: tuple[str, ...] = ()
    refill_log: tuple[str, ...] = ()
    """What the re-fill after the repair added back (empty: nothing, or no re-fill)."""
    notes: tuple[str, ...] = ()
    history: tuple[dict[str, Any], ...] = ()
    """Per-step records (step, expected size, remaining modules, step time)."""
    extra: dict[str, Any] = attrs.field(factory=dict)
    """Strategy-specific results (AutoPEFT: the Pareto front and the trials)."""

    def summary(self) -> str:
        lines = [
            f"strategy {self.strategy}: {self.count:,} parameters, budget {self.budget:,} "
            f"({'met' if self.budget_met else 'NOT met'}); {self.count / self.backbone_params * 1e4:.3f}bp "
            f"of {self.backbone_params:,}; {len(self.trace)} triggers; search {self.wall_time:.1f}s",
        ]
        if self.repaired:
            lines.append("budget repair: " + "; ".join(self.repair_log))
        if self.refill_log:
            lines.append("re-fill: " + "; ".join(self.refill_log))
        lines.extend(self.notes)
        lines.append(self.structure.summary(self.budget))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "count": self.count,
            "budget": self.budget,
            "backbone_params": self.backbone_params,
            "budget_met": self.budget_met,
            "repaired": self.repaired,
            "repair_log": list(self.repair_log),
            "refill_log": list(self.refill_log),
            "trigger_steps": [e.step for e in self.trace],
            "budget_use": self.count / self.budget if self.budget else None,
            "notes": list(self.notes),
            "wall_time": self.wall_time,
            "steps": self.steps,
            "trace": [e.to_dict() for e in self.trace],
            "history": list(self.history),
            "extra": self.extra,
            "structure": self.structure.to_dict(),
        }


@attrs.define
class SearchContext:
    """Everything an :class:`~bipeft_core.Optimizer` needs to run a search."""

    supernet: Any
    specs: Sequence[ModuleSpec]
    budget: int
    backbone_params: int
    components: dict[str, Any]
    settings: Any
    """The search's :class:`~bipeft_core.TrainSpec`."""
    train: Sequence[Any]
    """The training examples (the optimizer splits them as it needs)."""
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]
    loss: Callable[[Any, dict[str, torch.Tensor]], torch.Tensor]
    hook: Any = None
    validation: Sequence[Any] | None = None
    evaluate: Callable[[Any], dict[str, float]] | None = None
    space_name: str = ""
    model_type: str = ""
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    progress: bool = False
    checkpoint: Any = None
    """A :class:`~bipeft_core.checkpoint.CheckpointManager`, or ``None``."""
    resume: bool = False
    """Continue from the checkpoint if there is one."""
    dist: Any = None
    """The :class:`~bipeft_core.distributed.Dist` of a multi-process run (``None``: one process)."""
    curve_budgets: tuple[int, ...] = ()
    """Larger budgets whose structures the search records on its way down
    to :attr:`budget` (a budget-to-quality curve from one search; none by
    default)."""
    started: float = attrs.field(factory=time.perf_counter)
