"""Where PEFT modules can attach in a backbone: target maps and discovery.

A :class:`TargetMap` names, for one family of architectures, the modules that
play each *role*, by regular expressions over module names:

* blocks: the transformer blocks (``encoder.layer.3``, ``decoder.block.7``);
* roles inside a block, relative to it: ``attn_q``, ``attn_k``, ``attn_v``,
  ``attn_qkv`` (a fused projection, GPT-2), ``attn_o``, ``ffn_in``,
  ``ffn_out``, ``norm``;
* roles outside any block (``global_roles``), e.g. final LayerNorms.

Positions are found by names, never by layer offsets. Task heads
(classifiers, poolers, LM heads) are never targets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from typing import Any

import attrs
import torch
from torch import nn

from bipeft_core.errors import TargetError
from bipeft_core.types import Site

__all__ = ["ROLES", "Site", "TargetMap", "backbone_param_count", "find_target_map", "head_module_names"]

#: The roles spaces may name.
ROLES = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "ffn_in", "ffn_out", "norm")

#: Module names (last component) of task heads: never PEFT targets, never in
#: the budget's base.
DEFAULT_HEADS = ("classifier", "score", "pooler", "lm_head", "qa_outputs", "cls")


def _freeze_roles(value: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    out = []
    for role, patterns in dict(value).items():
        if isinstance(patterns, str):
            patterns = (patterns,)
        out.append((str(role), tuple(str(p) for p in patterns)))
    return tuple(out)


def _tuple_of_str(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _module_kind_and_shape(module: nn.Module) -> tuple[str, int, int]:
    if isinstance(module, nn.Linear):
        return "linear", module.in_features, module.out_features
    cls = type(module).__name__
    weight = getattr(module, "weight", None)
    weight = weight if isinstance(weight, torch.Tensor) else None
    if cls == "Conv1D" and weight is not None and weight.dim() == 2:  # GPT-2: weight is (in, out)
        return "linear", int(weight.shape[0]), int(weight.shape[1])
    if isinstance(module, nn.LayerNorm) or ("norm" in cls.lower() and weight is not None and weight.dim() == 1):
        shape: Any = module.normalized_shape if weight is None else weight.shape
        n = int(shape[-1] if weight is None else shape[0])
        return "norm", n, n
    return "other", 0, 0


@attrs.frozen(kw_only=True)
class TargetMap:
    """Role patterns for one architecture family (see the module docstring).

    Build one for an architecture bipeft does not know with
    :meth:`from_dict` (or a ``[target_map]`` table in a spec) and pass it to
    the pipeline, or register it from a plugin.
    """

    name: str
    model_types: tuple[str, ...] = attrs.field(converter=_tuple_of_str, default=())
    """``config.model_type`` values this map serves."""
    blocks: tuple[str, ...] = attrs.field(converter=_tuple_of_str)
    roles: tuple[tuple[str, tuple[str, ...]], ...] = attrs.field(converter=_freeze_roles)
    global_roles: tuple[tuple[str, tuple[str, ...]], ...] = attrs.field(
        converter=_freeze_roles, factory=dict
    )
    heads: tuple[str, ...] = attrs.field(converter=_tuple_of_str, default=DEFAULT_HEADS)

    def __attrs_post_init__(self) -> None:
        for role, patterns in self.roles + self.global_roles:
            if role not in ROLES:
                raise TargetError(
                    f"target map {self.name!r}: unknown role {role!r}; the roles are {', '.join(ROLES)}"
                )
            for p in patterns:
                try:
                    re.compile(p)
                except re.error as exc:
                    raise TargetError(
                        f"target map {self.name!r}: pattern {p!r} for role {role!r} is not a "
                        f"valid regular expression ({exc})"
                    ) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TargetMap:
        """From a plain mapping (e.g. a TOML table) with the field names."""
        allowed = {f.name for f in attrs.fields(cls)}
        extra = set(data) - allowed
        if extra:
            raise TargetError(
                f"unknown target map field(s) {sorted(extra)}; the fields are {sorted(allowed)}"
            )
        for required in ("name", "blocks", "roles"):
            if required not in data:
                raise TargetError(f"a target map needs {required!r}; got fields {sorted(data)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model_types": list(self.model_types),
            "blocks": list(self.blocks),
            "roles": {r: list(p) for r, p in self.roles},
            "global_roles": {r: list(p) for r, p in self.global_roles},
            "heads": list(self.heads),
        }

    @cached_property
    def _block_re(self) -> re.Pattern[str]:
        return re.compile(r"^(?:(.+)\.)?(" + "|".join(f"(?:{b})" for b in self.blocks) + r")$")

    def is_head(self, name: str) -> bool:
        parts = name.split(".")
        return any(p in self.heads for p in parts)

    def find(self, model: nn.Module) -> list[Site]:
        """Every site of every role in ``model``, in module order."""
        named = list(model.named_modules())
        blocks: list[tuple[str, str]] = []  # (full block name, block label)
        for name, _ in named:
            m = self._block_re.match(name)
            if m:
                blocks.append((name, m.group(2)))
        block_names = {b for b, _ in blocks}
        sites: list[Site] = []
        role_res = [(role, [re.compile(p) for p in pats]) for role, pats in self.roles]
        glob_res = [
            (role, [re.compile(r"^(?:.+?\.)?(?P<label>" + p + r")$") for p in pats])
            for role, pats in self.global_roles
        ]
        for order, (name, module) in enumerate(named):
            if not name or self.is_head(name):
                continue
            # the innermost block containing this module
            block = None
            prefix = name
            while "." in prefix:
                prefix = prefix.rsplit(".", 1)[0]
                if prefix in block_names:
                    block = prefix
                    break
            kind, fin, fout = _module_kind_and_shape(module)
            if block is not None:
                rel = name[len(block) + 1 :]
                label = self._block_re.match(block).group(2)  # type: ignore[union-attr]
                for role, res in role_res:
                    if any(r.fullmatch(rel) for r in res):
                        sites.append(Site(name=name, role=role, layer=label, kind=kind,
                                          in_features=fin, out_features=fout, order=order))
            elif name not in block_names:
                for role, res in glob_res:
                    match = next((m for m in (r.match(name) for r in res) if m), None)
                    if match:
                        label = match.group("label")
                        sites.append(Site(name=name, role=role, layer=label, kind=kind,
                                          in_features=fin, out_features=fout, order=order))
        return sites


def find_target_map(model: nn.Module, registry: Any, override: TargetMap | None = None) -> TargetMap:
    """The target map for ``model``: ``override`` if given, else the
    registered map that serves ``model.config.model_type``."""
    if override is not None:
        return override
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for entry in registry.entries():
        if model_type in entry.obj.model_types:
            return entry.obj
    served = sorted({t for e in registry.entries() for t in e.obj.model_types})
    raise TargetError(
        f"no target map for model_type {model_type!r}; bipeft knows {', '.join(served)}. "
        "Give target patterns for this model with TargetMap.from_dict({'name': ..., 'blocks': "
        "[...], 'roles': {'attn_q': [...], ...}}) and pass it as target_map=, or register one "
        "from a plugin (bipeft_register_target_maps)"
    )


def head_module_names(model: nn.Module, target_map: TargetMap | None = None) -> list[str]:
    """Names of the task-head modules of ``model`` (classifier, pooler,
    score, untied LM head)."""
    heads = target_map.heads if target_map is not None else DEFAULT_HEADS
    out = []
    for name, _ in model.named_modules():
        if name and name.split(".")[-1] in heads:
            out.append(name)
    return out


def backbone_param_count(model: nn.Module, target_map: TargetMap | None = None) -> int:
    """Parameters of the backbone without its task head (the base of a ratio
    budget, docs/algorithm.md §1). Tied weights count once; works on the meta
    device."""
    heads = tuple(h + "." for h in head_module_names(model, target_map))
    total = 0
    for name, p in model.named_parameters(remove_duplicate=True):
        if name.startswith(heads):
            continue
        total += p.numel()
    return total
