"""Search spaces as declarative data, and the concrete modules they yield.

A space is a list of entries, each a PEFT module type with the roles it
attaches to and its candidate ranks. Applied to a model (through a target
map) it yields :class:`ModuleSpec` objects: one searchable module at one
position, with its exact parameter count at every candidate rank.

A space file (TOML)::

    name = "s2"
    ranks = [1, 4, 8]            # default candidate ranks of matrix modules

    [[modules]]
    type = "lora"
    targets = ["attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "ffn_in", "ffn_out"]

    [[modules]]
    type = "bitfit"
    targets = ["attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "ffn_in", "ffn_out", "norm"]

Types with more than one role (parallel adapter, prefix) take no ``targets``:
they get one module per block that has all their roles.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from torch import nn

from bipeft_core.errors import SearchSpaceError, TargetError, read_text_file
from bipeft_core.interfaces import PeftModuleType, SearchSpace
from bipeft_core.targets import ROLES, TargetMap
from bipeft_core.types import ModuleSpec, Shape, Site, check_ranks
from bipeft_core.types import freeze_mapping as _freeze_mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DeclarativeSpace", "ModuleSpec", "Shape", "SpaceEntry", "check_ranks"]


@attrs.frozen(kw_only=True)
class SpaceEntry:
    """One ``[[modules]]`` table of a space."""

    type: str
    targets: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    ranks: tuple[int, ...] | None = None
    options: tuple[tuple[str, Any], ...] = attrs.field(default=(), converter=_freeze_mapping)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.targets:
            out["targets"] = list(self.targets)
        if self.ranks is not None:
            out["ranks"] = list(self.ranks)
        if self.options:
            out["options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.options}
        return out


@attrs.frozen(kw_only=True)
class DeclarativeSpace(SearchSpace):
    """A search space defined by data (a TOML file or a dict)."""

    name: str
    entries: tuple[SpaceEntry, ...]
    ranks: tuple[int, ...] = (1, 4, 8)
    description: str = ""

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "space") -> DeclarativeSpace:
        allowed = {"name", "description", "ranks", "modules"}
        extra = set(data) - allowed
        if extra:
            raise SearchSpaceError(
                f"{source}: unknown key(s) {sorted(extra)}; a space has {sorted(allowed)}"
            )
        if "name" not in data or not isinstance(data["name"], str) or not data["name"]:
            raise SearchSpaceError(f"{source}: a space needs a name, e.g. name = \"my_space\"")
        name = data["name"].lower()
        ranks = check_ranks(data.get("ranks", [1, 4, 8]), f"{source}: space {name!r}")
        modules = data.get("modules")
        if not modules or not isinstance(modules, list):
            raise SearchSpaceError(
                f"{source}: space {name!r} lists no modules; add [[modules]] tables with a type "
                "and targets"
            )
        entries = []
        for i, m in enumerate(modules):
            where = f"{source}: modules[{i}]"
            if not isinstance(m, Mapping) or "type" not in m:
                raise SearchSpaceError(f"{where}: each [[modules]] table needs a type, e.g. type = \"lora\"")
            extra = set(m) - {"type", "targets", "ranks", "options"}
            if extra:
                raise SearchSpaceError(
                    f"{where}: unknown key(s) {sorted(extra)}; a module entry has type, targets, ranks, options"
                )
            targets = m.get("targets", [])
            if isinstance(targets, str):
                targets = [targets]
            bad = [t for t in targets if t not in ROLES]
            if bad:
                raise SearchSpaceError(f"{where}: unknown target role(s) {bad}; the roles are {', '.join(ROLES)}")
            entry_ranks = m.get("ranks")
            if entry_ranks is not None:
                entry_ranks = check_ranks(entry_ranks, f"{where} ({m['type']})")
            entries.append(
                SpaceEntry(type=str(m["type"]).lower(), targets=tuple(targets), ranks=entry_ranks,
                           options=m.get("options") or {})
            )
        return cls(name=name, entries=tuple(entries), ranks=ranks, description=str(data.get("description", "")))

    @classmethod
    def from_toml(cls, path: str | Path) -> DeclarativeSpace:
        path = Path(path)
        text = read_text_file(path, what="space file", error=SearchSpaceError,
                              fix="give the path of a space .toml file")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SearchSpaceError(f"space file {str(path)!r} is not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["ranks"] = list(self.ranks)
        out["modules"] = [e.to_dict() for e in self.entries]
        return out

    def with_ranks(self, ranks: Sequence[int]) -> DeclarativeSpace:
        """The same space with other default candidate ranks."""
        return attrs.evolve(self, ranks=check_ranks(list(ranks), f"space {self.name!r}"))

    def check(self, registry: Any) -> None:
        """Check every entry's type against the PEFT module registry."""
        for i, e in enumerate(self.entries):
            if e.type not in registry:
                known = ", ".join(registry.names())
                raise SearchSpaceError(
                    f"space {self.name!r}: modules[{i}] has unknown module type {e.type!r}; "
                    f"known types: {known}. Install or pass the plugin that provides it"
                )
            mtype = registry.get(e.type)
            if len(mtype.roles) > 1 and e.targets:
                raise SearchSpaceError(
                    f"space {self.name!r}: modules[{i}] ({e.type}) attaches to whole blocks "
                    f"(roles {list(mtype.roles)}); remove its targets"
                )
            if len(mtype.roles) == 1 and not e.targets:
                raise SearchSpaceError(
                    f"space {self.name!r}: modules[{i}] ({e.type}) needs targets, e.g. "
                    f"targets = [\"attn_q\", \"attn_v\"]; the roles are {', '.join(ROLES)}"
                )

    # -- application ---------------------------------------------------------------
    def modules(self, model: nn.Module, target_map: TargetMap, registry: Any) -> list[ModuleSpec]:
        self.check(registry)
        sites = target_map.find(model)
        by_role: dict[str, list[Site]] = {}
        for s in sites:
            by_role.setdefault(s.role, []).append(s)
        # (sort key, entry index, type, sites dict, layer, position)
        found: list[tuple[tuple[int, int], SpaceEntry, PeftModuleType, dict[str, Site], str, str]] = []
        for ei, e in enumerate(self.entries):
            mtype = registry.get(e.type)
            if len(mtype.roles) == 1:
                for role in e.targets:
                    for s in by_role.get(role, []):
                        if mtype.site_kind != "any" and s.kind != mtype.site_kind:
                            continue
                        found.append(((s.order, ei), e, mtype, {mtype.roles[0]: s}, s.layer, role))
            else:
                blocks: dict[str, dict[str, Site]] = {}
                for s in sites:
                    if s.role in mtype.roles and s.layer != s.name:
                        blocks.setdefault(s.layer, {}).setdefault(s.role, s)
                for layer, roles in blocks.items():
                    if all(r in roles for r in mtype.roles):
                        order = min(s.order for s in roles.values())
                        found.append(((order, ei), e, mtype, roles, layer, "block"))
        if not found:
            wanted = sorted({t for e in self.entries for t in (e.targets or registry.get(e.type).roles)})
            names = [n for n, _ in model.named_modules()][:8]
            raise TargetError(
                f"space {self.name!r} finds no position in this {type(model).__name__} "
                f"(target map {target_map.name!r}, roles {wanted}); its modules are named like "
                f"{names}. Check that the model matches the target map, or pass a TargetMap with "
                "patterns for this model (target_map=TargetMap.from_dict(...))"
            )
        for ei, e in enumerate(self.entries):
            if not any(f[0][1] == ei for f in found):
                mtype = registry.get(e.type)
                wanted = list(e.targets) if e.targets else list(mtype.roles)
                raise TargetError(
                    f"space {self.name!r}: module type {e.type!r} finds no position in this "
                    f"{type(model).__name__} (target map {target_map.name!r} has no "
                    f"{'site for roles' if e.targets else 'block with all of the roles'} {wanted}). "
                    "Remove it from the space for this model, or give a target map with those roles"
                )
        found.sort(key=lambda f: f[0])
        out: list[ModuleSpec] = []
        for _, e, mtype, roles, layer, position in found:
            options = dict(e.options)
            site_map = dict(roles)
            shape = mtype.shape(site_map, **options)
            if mtype.kind == "matrix":
                ranks = e.ranks if e.ranks is not None else self.ranks
                counts = tuple(int(mtype.param_count(shape, r, **options)) for r in ranks)
            else:
                ranks = ()
                counts = (int(mtype.param_count(shape, None, **options)),)
            anchor = next(iter(site_map.values())).name if position != "block" else layer
            sid = f"{mtype.name}:{anchor}"
            out.append(
                ModuleSpec(
                    index=len(out), id=sid, type=mtype.name, kind=mtype.kind, position=position,
                    layer=layer, sites=tuple((r, s.name) for r, s in site_map.items()), shape=shape,
                    ranks=tuple(ranks), counts=counts, options=options,
                )
            )
        ids = [m.id for m in out]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise SearchSpaceError(
                f"space {self.name!r} puts the same module twice at one position: {dup[:5]}; "
                "list each role once per module type"
            )
        return out
