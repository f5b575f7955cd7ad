"""What the contract modules share: the assertion helper, the checkpoint
round trip of a component's state, a snapshot of what only the optimizer may
write, and the building of a component from a contract's factory."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch

from bipeft_core.checkpoint import plain
from bipeft_core.state import SearchState

__all__ = ["Snapshot", "build", "expect", "scores_of", "through_checkpoint"]


def expect(condition: bool, message: str) -> None:
    """``AssertionError(message)`` unless ``condition`` (kept under ``python -O``)."""
    if not condition:
        raise AssertionError(message)


def scores_of(state: SearchState) -> torch.Tensor:
    """``state.scores``, which a synthetic search always has."""
    scores = state.scores
    if scores is None:
        raise AssertionError("the search state has no scores; build it with synthetic_state")
    return scores


def through_checkpoint(state: Any, where: str) -> Any:
    """``state`` written as a search checkpoint writes it (plain data and
    tensors only, :func:`bipeft_core.checkpoint.plain`) and read back with
    ``torch.load(weights_only=True)``, as a resumed search gets it."""
    buffer = io.BytesIO()
    torch.save(plain(state, where), buffer)
    buffer.seek(0)
    return torch.load(buffer, map_location="cpu", weights_only=True)  # as checkpoint.load_safe reads a file


def build(factory: Any, params: Mapping[str, Any] | None, what: str) -> Any:
    """A fresh component from a contract's ``factory`` (a class, or any
    callable) called with ``params``."""
    if factory is None:
        raise AssertionError(f"the contract has no {what}: set it on the subclass (a class or a factory)")
    maker: Callable[..., Any] = factory
    return maker(**dict(params or {}))


@attrs.frozen
class Snapshot:
    """What a component may not change unless it owns it: the supernet's
    pruned modules, fixed ranks and architecture logits (the optimizer's),
    the search state's budget, step, triggers left and scores (the loop's)
    and its expected sizes, last ``E`` and ``ΔP`` (the module selector's)."""

    values: tuple[tuple[str, Any], ...]

    @classmethod
    def of(cls, state: SearchState) -> Snapshot:
        sn = state.supernet

        def copy(x: Any) -> Any:
            return x.detach().clone() if isinstance(x, torch.Tensor) else x

        return cls(values=tuple((name, copy(value)) for name, value in (
            ("supernet.pruned", sn.pruned), ("supernet.fixed_rank", sn.fixed_rank), ("supernet.alpha", sn.alpha),
            ("supernet.beta", sn.beta), ("state.budget", state.budget), ("state.step", state.step),
            ("state.triggers_left", state.triggers_left), ("state.scores", state.scores),
            ("state.expected_sizes", state.expected_sizes), ("state.last_expected", state.last_expected),
            ("state.last_delta", state.last_delta))))

    def unchanged(self, state: SearchState, who: str, *, owns: tuple[str, ...] = ()) -> None:
        """Raise naming what ``who`` changed since the snapshot, besides the
        fields it ``owns`` (names as ``state.expected_sizes``)."""
        now = dict(Snapshot.of(state).values)
        for name, before in self.values:
            if name in owns:
                continue
            after = now[name]
            same = (torch.equal(before, after) if isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor)
                    else before == after if not isinstance(before, torch.Tensor) and not isinstance(after, torch.Tensor)
                    else False)
            expect(same, f"{who} changed {name}; it is not its to change (the optimizer applies a selection, "
                         "the loop counts the steps and triggers, the module selector owns the expected sizes)")
