"""The plain data the contract speaks in: where a module can attach (:class:`Site`),
the shape facts a parameter count needs (:class:`Shape`), one searchable
module at one position (:class:`ModuleSpec`), and how one kept module is
written in Hugging Face peft's own adapter format (:class:`PeftExport`), and
what an export format prepared for a folder (:class:`ExportFiles`).

This module imports nothing of bipeft but its errors, so every other layer
(interfaces, engine, plugins) can depend on it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bipeft_core.errors import SearchSpaceError, StructureError

__all__ = ["ExportFiles", "ModuleSpec", "PeftExport", "Shape", "Site", "check_ranks", "freeze_mapping", "hashable"]


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


def _ordered_str_map(value: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict copy that keeps the given order (the order of
    :attr:`PeftExport.patterns` decides the config's defaults)."""
    return {str(k): v for k, v in dict(value).items()}


@attrs.frozen(kw_only=True)
class PeftExport:
    """How one kept module is written in Hugging Face peft's own adapter format.

    What :meth:`bipeft_core.interfaces.PeftModuleType.peft_export` returns for
    a module type that peft has a native form of. Plain data, no peft objects:
    the ``peft`` export format (``bipeft_plugins.exports.peft_native``) owns grouping the records of a
    structure's modules into one peft config and weights file, and this record
    owns what is particular to the module type.
    """

    peft_type: str
    """peft's name of the tuner (a ``peft.PeftType`` member), e.g. ``"LORA"``;
    its config class is peft's for that type. Every module of one export
    shares it."""
    target: str
    """Full name of the backbone module the tuner wraps (an entry of the
    config's ``target_modules``); one module per target."""
    config: dict[str, Any] = attrs.field(converter=_ordered_str_map)
    """This module's values of the peft config's fields, by field name. A
    field named in :attr:`patterns` may differ from module to module; every
    other field must be equal in all records of one export (the exporter
    refuses a structure whose modules disagree)."""
    patterns: dict[str, str] = attrs.field(factory=dict, converter=_ordered_str_map)
    """Config field → the config's per-module pattern field that holds
    exceptions to it, in order. The first field's default is its most common
    value; each next field's default is the most common value among the
    modules that take every earlier default; a module whose value differs from
    a default gets an entry in the pattern field, keyed by its anchored, escaped
    full name (``^bert\\.encoder\\.layer\\.0\\.attention\\.self\\.query$``)."""
    weights: dict[str, str] = attrs.field(factory=dict, converter=_ordered_str_map)
    """peft's weight name below the target → the key of the module's own
    ``state_dict`` that holds it, copied unchanged both ways (the file key is
    ``base_model.model.<target>.<peft name>``), so a peft export also loads
    back into bipeft."""

    def __attrs_post_init__(self) -> None:
        where = f"peft export record for {self.target!r}"
        if not isinstance(self.peft_type, str) or not self.peft_type:
            raise StructureError(f"{where}: peft_type is {self.peft_type!r}; give peft's tuner type name, "
                                 "e.g. 'LORA'")
        if not isinstance(self.target, str) or not self.target:
            raise StructureError(f"peft export record: target is {self.target!r}; give the full name of the "
                                 "backbone module the tuner wraps")
        unknown = [k for k in self.patterns if k not in self.config]
        if unknown:
            raise StructureError(f"{where}: patterns name {unknown}, which are not config fields "
                                 f"({sorted(self.config)}); give a config value for each")
        bad = [v for v in self.weights.values() if not isinstance(v, str) or not v]
        if bad:
            raise StructureError(f"{where}: weights map to {bad}; give the module's state_dict keys")


@attrs.frozen(kw_only=True)
class ExportFiles:
    """What an :class:`~bipeft_core.interfaces.ExportFormat` prepared: its
    own files, built in memory and written by :attr:`write`, with what the
    exporter records about them in ``export.json``."""

    write: Callable[[Path], str | None]
    """Writes the format's files into the folder it is given (new and empty
    but for what the exporter writes there); returns the weights file's name
    when it is known only once written (a sharded model), else ``None``."""
    weights: str
    """The file (in the folder) that holds the weights; ``export.json``
    records its checksum."""
    unsupported: list[str] = attrs.field(factory=list)
    """``export.json``'s ``peft_cannot_represent``: the parts of the
    structure native peft has no form of (one item per module type)."""
    extra: dict[str, Any] = attrs.field(factory=dict)
    """More fields for ``export.json`` (``peft_version``, ``peft_type``, ...)."""
