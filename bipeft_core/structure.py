"""Structures: which module at which position at which rank.

A :class:`Structure` is the result of a search: a list of kept modules, each
with its type, position and rank, and its exact parameter count. It builds
the discrete PEFT model on a fresh backbone (:meth:`Structure.build`), and
saves to and loads from JSON.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import attrs
import torch
from torch import nn

from bipeft_core.budget import format_count
from bipeft_core.errors import StructureError, read_text_file
from bipeft_core.modules import PeftModule, keyword_forward, require_peft_module
from bipeft_core.types import ModuleSpec, Shape

__all__ = ["PeftModel", "Structure", "StructureEntry"]

FORMAT_VERSION = 1


def _entry_tuple(entries: Any) -> tuple[StructureEntry, ...]:
    return tuple(entries)


@attrs.frozen(kw_only=True)
class StructureEntry:
    """One kept module: its spec (type, position, shape) and its rank."""

    spec: ModuleSpec
    rank: int | None

    @property
    def count(self) -> int:
        return self.spec.count(self.rank)

    def discrete_spec(self) -> ModuleSpec:
        """The spec of the plain module at this entry's rank."""
        if self.rank is None:
            return self.spec
        return attrs.evolve(self.spec, ranks=(self.rank,), counts=(self.count,))

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "index": s.index,
            "id": s.id,
            "type": s.type,
            "kind": s.kind,
            "position": s.position,
            "layer": s.layer,
            "sites": {r: n for r, n in s.sites},
            "shape": {"in_features": s.shape.in_features, "out_features": s.shape.out_features,
                      **({"extra": dict(s.shape.extra)} if s.shape.extra else {})},
            "ranks": list(s.ranks),
            "counts": list(s.counts),
            **({"options": dict(s.options)} if s.options else {}),
            "rank": self.rank,
            "count": self.count,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], index: int = 0) -> StructureEntry:
        try:
            shape = Shape(in_features=d["shape"]["in_features"], out_features=d["shape"]["out_features"],
                          extra=d["shape"].get("extra", {}))
            spec = ModuleSpec(
                index=d.get("index", index), id=d["id"], type=d["type"], kind=d["kind"], position=d["position"],
                layer=d["layer"], sites=tuple(d["sites"].items()), shape=shape,
                ranks=tuple(d["ranks"]), counts=tuple(d["counts"]), options=d.get("options", {}),
            )
            entry = cls(spec=spec, rank=d["rank"])
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise StructureError(f"structure entry {index} is malformed (missing or wrong {exc}); "
                                 "was the file written by bipeft?") from None
        if len(spec.counts) != max(1, len(spec.ranks)) or (
            entry.rank not in spec.ranks if spec.is_matrix else entry.rank is not None
        ):
            raise StructureError(f"structure entry {spec.id}: rank {entry.rank!r} does not fit its candidate "
                                 f"ranks {list(spec.ranks)} and counts {list(spec.counts)}; the file was edited "
                                 "or is corrupt")
        if d.get("count") is not None and d["count"] != entry.count:
            raise StructureError(f"structure entry {d['id']}: stored count {d['count']} does not match "
                                 f"its rank's count {entry.count}; the file was edited or is corrupt")
        return entry


@attrs.frozen(kw_only=True)
class Structure:
    """A discrete PEFT structure, with where it came from."""

    entries: tuple[StructureEntry, ...] = attrs.field(converter=_entry_tuple)
    space: str = ""
    model_type: str = ""
    backbone_params: int | None = None
    budget: int | None = None
    full: bool = False
    """Full fine-tuning: every backbone parameter trains (no PEFT modules)."""

    def __attrs_post_init__(self) -> None:
        if self.full and (self.entries or not self.backbone_params):
            raise StructureError("a full fine-tuning structure has no modules and needs backbone_params")

    @classmethod
    def from_choices(
        cls, specs: Sequence[ModuleSpec], choices: Mapping[int, int | None], **meta: Any
    ) -> Structure:
        """Kept modules by index → rank (``None`` for vector modules)."""
        entries = []
        for i in sorted(choices):
            spec = specs[i]
            rank = choices[i] if spec.is_matrix else None
            if spec.is_matrix and rank not in spec.ranks:
                raise StructureError(f"{spec.id}: rank {rank!r} is not a candidate ({list(spec.ranks)})")
            entries.append(StructureEntry(spec=spec, rank=rank))
        return cls(entries=tuple(entries), **meta)

    # -- counting --------------------------------------------------------------------
    def count(self) -> int:
        """Exact trainable PEFT parameters (task head not included; the whole
        backbone for full fine-tuning)."""
        if self.full:
            return int(self.backbone_params or 0)
        return sum(e.count for e in self.entries)

    def verify(self, registry: Any) -> None:
        """Recompute every count with the module types' count functions."""
        for e in self.entries:
            mtype = registry.get(e.spec.type)
            n = mtype.param_count(e.spec.shape, e.rank, **e.spec.option_dict())
            if n != e.count:
                raise StructureError(f"{e.spec.id}: count {e.count} but {e.spec.type}.param_count gives {n}")

    def by_type(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for e in self.entries:
            out[e.spec.type] += e.count
        return dict(out)

    def by_layer(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for e in self.entries:
            out[e.spec.layer] += e.count
        return dict(out)

    def summary(self, budget: int | None = None) -> str:
        """Layer × module type table with ranks, and the count vs budget."""
        budget = budget if budget is not None else self.budget
        if self.full:
            return f"full fine-tuning: every backbone parameter trains ({format_count(self.count())})"
        types = sorted({e.spec.type for e in self.entries})
        layers: dict[str, dict[str, list[str]]] = {}
        for e in self.entries:
            cell = layers.setdefault(e.spec.layer, {}).setdefault(e.spec.type, [])
            label = e.spec.position if e.spec.position != "block" else ""
            cell.append(f"{label}{'@' + str(e.rank) if e.rank is not None else ''}" or "on")
        by_layer = self.by_layer()
        rows = [["layer", *types, "params"]]
        for layer, cells in layers.items():
            rows.append([layer, *[" ".join(cells.get(t, [])) or "-" for t in types], format_count(by_layer[layer])])
        by_type = self.by_type()
        rows.append(["total", *[format_count(by_type.get(t, 0)) for t in types], format_count(self.count())])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        head = f"{len(self.entries)} modules, {format_count(self.count())} parameters"
        if budget:
            head += f" of a budget of {format_count(budget)} ({100 * self.count() / budget:.1f}%)"
        if self.backbone_params:
            head += f"; {1e4 * self.count() / self.backbone_params:.3f}bp of the backbone"
        return head + "\n" + "\n".join(lines)

    # -- files -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "bipeft-structure",
            "version": FORMAT_VERSION,
            "space": self.space,
            "model_type": self.model_type,
            "backbone_params": self.backbone_params,
            "budget": self.budget,
            **({"full": True} if self.full else {}),
            "count": self.count(),
            "entries": [e.to_dict() for e in self.entries],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Structure:
        if not isinstance(d, Mapping) or d.get("format") != "bipeft-structure":
            raise StructureError("not a bipeft structure (no 'format': 'bipeft-structure'); "
                                 "give a structure.json written by bipeft")
        if d.get("version", 0) > FORMAT_VERSION:
            raise StructureError(f"structure format version {d['version']} is newer than this bipeft "
                                 f"({FORMAT_VERSION}); upgrade bipeft")
        if not isinstance(d.get("entries", []), list):
            raise StructureError("structure 'entries' must be a list of modules; the file was edited or is corrupt")
        entries = tuple(StructureEntry.from_dict(e, i) for i, e in enumerate(d.get("entries", [])))
        s = cls(entries=entries, space=d.get("space", ""), model_type=d.get("model_type", ""),
                backbone_params=d.get("backbone_params"), budget=d.get("budget"), full=bool(d.get("full", False)))
        if d.get("count") is not None and d["count"] != s.count():
            raise StructureError(f"structure count {d['count']} does not match its entries "
                                 f"({s.count()}); the file was edited or is corrupt")
        return s

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Structure:
        path = Path(path)
        text = read_text_file(path, what="structure file", error=StructureError)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StructureError(f"structure file {str(path)!r} is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    # -- building --------------------------------------------------------------------
    def build(self, model: nn.Module, registry: Any, *, heads: Sequence[str] | None = None) -> PeftModel:
        """Attach the discrete modules to ``model`` (fresh weights from the
        global torch RNG) and freeze everything but them and the task head."""
        return PeftModel(model, self, registry, heads=heads)


class PeftModel(nn.Module):
    """A backbone with a structure's discrete modules attached (by hooks)."""

    def __init__(self, model: nn.Module, structure: Structure, registry: Any,
                 *, heads: Sequence[str] | None = None) -> None:
        from bipeft_core.supernet import trainable_head_parameters

        super().__init__()
        self.model = model
        self.forward = keyword_forward(self, model)  # type: ignore[method-assign]  # Trainer reads its inputs
        self.structure = structure
        heads = tuple(heads) if heads is not None else ("classifier", "score", "pooler")
        for p in model.parameters():
            p.requires_grad_(False)
        self.head_names = [n for n, _ in trainable_head_parameters(model, heads)]
        for _, p in trainable_head_parameters(model, heads):
            p.requires_grad_(True)
        self._full_params = 0
        if structure.full:
            head_ids = {id(p) for _, p in trainable_head_parameters(model, heads)}
            for p in model.parameters():
                if id(p) not in head_ids and not p.requires_grad:
                    p.requires_grad_(True)
                    self._full_params += p.numel()
        mods = []
        for e in structure.entries:
            mtype = registry.get(e.spec.type)
            mods.append(mtype.discrete(e.discrete_spec(), model, e.rank))
        self.peft = nn.ModuleList(mods)
        for e, m in zip(structure.entries, mods):
            require_peft_module(m, e.spec.type, "discrete").attach(model)

    def forward(self, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
        # ``labels`` by name: Trainer finds a model's label columns in its class's forward
        if labels is not None:
            kwargs["labels"] = labels
        return self.model(*args, **kwargs)

    def peft_parameter_count(self) -> int:
        """Trainable parameters besides the task head (the backbone's for full fine-tuning)."""
        return sum(p.numel() for p in self.peft.parameters()) + self._full_params

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """PEFT weights (``peft.<i>.<name>``) and task-head weights (``head.<name>``)."""
        out = {f"peft.{k}": v.detach().clone() for k, v in self.peft.state_dict().items()}
        params = dict(self.model.named_parameters())
        for n in self.head_names:
            out[f"head.{n}"] = params[n].detach().clone()
        if self.structure.full:
            heads = set(self.head_names)
            out.update({f"backbone.{n}": p.detach().clone() for n, p in params.items()
                        if p.requires_grad and n not in heads})
        return out

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        peft_state = {k[5:]: v for k, v in state.items() if k.startswith("peft.")}
        missing = set(self.peft.state_dict()) - set(peft_state)
        if missing:
            raise StructureError(f"saved PEFT weights lack {sorted(missing)[:5]}; they belong to another structure")
        self.peft.load_state_dict(peft_state)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                if k.startswith(("head.", "backbone.")):
                    name = k.split(".", 1)[1]
                    if name not in params or params[name].shape != v.shape:
                        raise StructureError(f"saved head weight {name!r} does not fit this model")
                    params[name].copy_(v)

    def detach_hooks(self) -> None:
        for m in self.peft:
            cast(PeftModule, m).detach()
