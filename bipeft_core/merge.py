"""Folding PEFT modules into the backbone's own weights.

Each module type says what its kept module adds to which backbone
parameter (:meth:`~bipeft_core.interfaces.PeftModuleType.merged_weights`);
this module sums those changes and applies them. Used by the ``merged``
export format and by ``merge_and_unload`` of bipeft's peft method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bipeft_core.errors import StructureError

__all__ = ["merge_modules", "merge_records"]


def merge_records(model: nn.Module, modules: Sequence[Any],
                   registry: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    """What folding ``modules`` into ``model`` adds to each backbone
    parameter (summed over modules), and why each module that cannot be
    folded cannot."""
    params = dict(model.named_parameters())
    deltas: dict[str, torch.Tensor] = {}
    refused: list[str] = []
    for mod in modules:
        spec = mod.spec
        try:
            got = registry.get(spec.type).merged_weights(spec, mod.rank, mod, model)
        except StructureError as exc:
            refused.append(f"{spec.id} ({exc})")
            continue
        if got is None:
            refused.append(f"{spec.id} (a {spec.type} module is not a linear change of the backbone's weights)")
            continue
        for name, delta in got.items():
            if name not in params or tuple(params[name].shape) != tuple(delta.shape):
                raise StructureError(
                    f"module type {spec.type!r} folds {spec.id} into {name!r} with shape {tuple(delta.shape)}, "
                    f"but the model has {'no such parameter' if name not in params else tuple(params[name].shape)}"
                    "; fix the plugin's merged_weights")
            d = delta.detach().to(torch.float32)
            deltas[name] = deltas[name] + d if name in deltas else d
    return deltas, refused


def merge_modules(model: nn.Module, modules: Sequence[Any], registry: Any) -> None:
    """Fold ``modules`` (discrete bipeft modules attached to ``model``) into
    ``model``'s own weights, in place, and detach them; refuses (changing
    nothing) when one of them cannot be folded."""
    deltas, refused = merge_records(model, modules, registry)
    if refused:
        raise StructureError("these modules cannot be folded into the backbone's weights: " + "; ".join(refused)
                             + "; export with format='peft-bipeft' or format='bipeft' instead")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, delta in deltas.items():
            params[name].add_(delta.to(params[name].dtype))
    for mod in modules:
        mod.detach()
