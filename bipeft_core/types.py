"""The plain data the contract speaks in: where a module can attach (:class:`Site`),
the shape facts a parameter count needs (:class:`Shape`), and one searchable
module at one position (:class:`ModuleSpec`).

This module imports nothing of bipeft but its errors, so every other layer
(interfaces, engine, plugins) can depend on it without a cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from bipeft_core.errors import SearchSpaceError

__all__ = ["ModuleSpec", "Shape", "Site", "check_ranks", "freeze_mapping", "hashable"]


@attrs.frozen(kw_only=True)
class Site:
    """One backbone module a PEFT module can attach to."""

    name: str
    """Full module name in the model, e.g. ``bert.encoder.layer.0.attention.self.query``."""
    role: str
    layer: str
    """The block it sits in (``encoder.layer.0``), or its own name outside blocks."""
    kind: str
    """``linear``, ``norm`` or ``other``."""
    in_features: int
    out_features: int
    order: int
    """Position in ``model.named_modules()``: the modules' canonical order."""


def freeze_mapping(value: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    if not value:
        return ()
    if isinstance(value, tuple):
        return value
    return tuple(sorted((str(k), hashable(v)) for k, v in dict(value).items()))


def hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(hashable(x) for x in v)
    if isinstance(v, dict):
        return freeze_mapping(v)
    return v


def check_ranks(ranks: Any, where: str) -> tuple[int, ...]:
    """Validate a candidate rank set: positive whole numbers, no repeats;
    returned sorted ascending."""
    if isinstance(ranks, (int, str)) or not isinstance(ranks, (Sequence, tuple, list)):
        raise SearchSpaceError(f"{where}: ranks must be a list of whole numbers such as [1, 4, 8], got {ranks!r}")
    out = []
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int):
            raise SearchSpaceError(f"{where}: rank {r!r} is not a whole number; use e.g. ranks = [1, 4, 8]")
        if r <= 0:
            raise SearchSpaceError(
                f"{where}: rank {r} is not allowed; candidate ranks are whole numbers >= 1 "
                "(a module is switched off by its gate, not by rank 0)"
            )
        out.append(r)
    if not out:
        raise SearchSpaceError(f"{where}: the rank set is empty; give at least one rank, e.g. [1, 4, 8]")
    if len(set(out)) != len(out):
        raise SearchSpaceError(f"{where}: ranks {list(ranks)} repeat a value; list each rank once")
    return tuple(sorted(out))


@attrs.frozen(kw_only=True)
class Shape:
    """The shape facts a module type's parameter count needs."""

    in_features: int
    out_features: int
    extra: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=freeze_mapping)

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


@attrs.frozen(kw_only=True)
class ModuleSpec:
    """One searchable module: a type at a position, with its counts."""

    index: int
    id: str
    """Unique, e.g. ``lora:bert.encoder.layer.0.attention.self.query``."""
    type: str
    kind: str
    """``matrix`` or ``vector``."""
    position: str
    """The role it attaches to (``attn_q``, ..., or ``block`` for multi-role types)."""
    layer: str
    sites: tuple[tuple[str, str], ...]
    """(role, module name) pairs."""
    shape: Shape
    ranks: tuple[int, ...]
    """Candidate ranks (empty for vector modules)."""
    counts: tuple[int, ...]
    """Exact parameter count at each candidate rank (one value for vector modules)."""
    options: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=freeze_mapping)

    @property
    def is_matrix(self) -> bool:
        return self.kind == "matrix"

    @property
    def max_count(self) -> int:
        """``N_m``: the count at the largest rank."""
        return self.counts[-1]

    @property
    def max_rank(self) -> int | None:
        return self.ranks[-1] if self.ranks else None

    def site(self, role: str = "target") -> str:
        return dict(self.sites)[role]

    def count(self, rank: int | None) -> int:
        """Exact count at ``rank`` (must be a candidate; ``None`` for vector modules)."""
        if not self.ranks:
            return self.counts[0]
        try:
            return self.counts[self.ranks.index(rank)]  # type: ignore[arg-type]
        except ValueError:
            raise SearchSpaceError(
                f"module {self.id}: rank {rank!r} is not one of its candidate ranks {list(self.ranks)}"
            ) from None

    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)
