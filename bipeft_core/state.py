"""Runtime state of a search, the events it emits, and its result."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from bipeft_core.structure import Structure
from bipeft_core.types import ModuleSpec

__all__ = ["Control", "SearchContext", "SearchResult", "SearchState", "TriggerEvent"]


@attrs.define
class SearchState:
    """What the trigger and selectors read (and, where their docstrings say,
    change) during a search. Lives as long as one search."""

    supernet: Any
    specs: Sequence[ModuleSpec]
    budget: int
    steps_per_epoch: int
    step: int = 0
    """Weight steps done."""
    total_steps: int = 0
    """Weight steps the search plans (``steps_per_epoch × epochs``; 0: unknown)."""
    triggers_left: int = 0
    """``K``: triggers still to come."""
    expected_sizes: torch.Tensor | None = None
    """Per module: the size the trigger's walk uses (``N_m`` until the first
    trigger, then the expected size computed at the last trigger)."""
    scores: torch.Tensor | None = None
    last_delta: float = 0.0
    last_expected: float = 0.0

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
        return torch.tensor([float(s.max_count) for s in self.specs], dtype=torch.float64)


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
    started: float = attrs.field(factory=time.perf_counter)
