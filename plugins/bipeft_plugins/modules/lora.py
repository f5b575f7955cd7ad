"""LoRA (Hu et al. 2022) on a linear layer: ``out + B·A·x·scale``.

Count at rank r: ``r · (in_features + out_features)``. ``A`` is
Kaiming-uniform, ``B`` zero, so the output is unchanged at initialisation.
The scale is ``lora_alpha / r`` with ``lora_alpha = r`` by default (scale 1
at every candidate rank, so the entangled slices share one scale).

Its native peft form is peft's own LoRA (:meth:`LoRA.peft_export`): the same
``lora_A`` / ``lora_B`` weights, ``lora_alpha = scale · r``, one adapter per
target layer. It merges into the target's weight as ``W + scale·B·A``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.modules import PeftModule
from bipeft_core.types import ModuleSpec, PeftExport, Shape


class LoRAModule(PeftModule):
    folds_gate = True

    def __init__(self, spec: ModuleSpec, ranks: tuple[int, ...], scale: float = 1.0) -> None:
        super().__init__(spec, ranks)
        r = self.max_rank
        self.scale = float(scale)
        self.lora_A = nn.Parameter(torch.empty(r, spec.shape.in_features))
        self.lora_B = nn.Parameter(torch.zeros(spec.shape.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def _inner(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, B)``: the rank product ``A·x`` with the rank mask and gate
        applied, and the (scaled) up factor."""
        r = self.rank
        a = self.w(self.lora_A)[:r]
        b = self.w(self.lora_B)[:, :r]
        h = F.linear(x.to(a.dtype), a)
        s = self.inner_scale(r)  # rank mask and gate, on the (…, r) product
        if s is not None:
            h = h * s
        return h, (b * self.scale if self.scale != 1.0 else b)

    def delta(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        h, b = self._inner(x)
        return F.linear(h, b)

    def add_delta(self, x: torch.Tensor, inner: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """``output + B·h`` as one ``addmm`` (no full-size delta of its own).
        A subclass that overrides ``delta`` alone gets the plain addition of
        its own ``delta``, so the fusion never hides what it changed."""
        if type(self).delta is not LoRAModule.delta:
            return super().add_delta(x, inner, output)
        h, b = self._inner(x)
        if output.dtype != b.dtype or h.dim() < 2:
            return output + F.linear(h, b).to(output.dtype)
        flat = torch.addmm(output.reshape(-1, output.shape[-1]), h.reshape(-1, h.shape[-1]), b.t())
        return flat.view(output.shape)


class LoRA(PeftModuleType):
    name = "lora"
    kind = "matrix"
    roles = ("target",)
    site_kind = "linear"

    def shape(self, sites, **options):
        s = sites["target"]
        return Shape(in_features=s.in_features, out_features=s.out_features)

    def param_count(self, shape, rank, **options):
        return int(rank) * (shape.in_features + shape.out_features)

    def supernet(self, spec, model):
        return LoRAModule(spec, spec.ranks, **spec.option_dict())

    def discrete(self, spec, model, rank):
        return LoRAModule(spec, (rank,), **spec.option_dict())

    def peft_export(self, spec, rank, module, model):
        """peft's ``LoraConfig`` fields for this module: ``r`` and
        ``lora_alpha = scale · r`` (both may differ per module, through
        ``rank_pattern`` / ``alpha_pattern``), no dropout or bias, and
        ``fan_in_fan_out`` for GPT-2's ``Conv1D`` layers (which store the
        weight transposed); the weights are ``lora_A`` / ``lora_B`` unchanged."""
        target = spec.site("target")
        r = int(module.lora_A.shape[0])
        alpha = _whole_if_whole(float(module.scale) * r)
        layer = type(model.get_submodule(target)).__name__
        return PeftExport(
            peft_type="LORA", target=target,
            config={"r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
                    "fan_in_fan_out": layer == "Conv1D"},
            patterns={"r": "rank_pattern", "lora_alpha": "alpha_pattern"},
            weights={"lora_A.weight": "lora_A", "lora_B.weight": "lora_B"},
        )


    def merged_weights(self, spec, rank, module, model):
        """``scale · B·A`` added to the target's weight (transposed for GPT-2's
        ``Conv1D``, which stores it as ``(in, out)``)."""
        target = spec.site("target")
        layer = model.get_submodule(target)
        delta = (module.lora_B.detach().float() @ module.lora_A.detach().float()) * float(module.scale)
        if type(layer).__name__ == "Conv1D":
            delta = delta.T
        return {f"{target}.weight": delta}


def _whole_if_whole(x: float) -> int | float:
    """``x`` as an int when it is a whole number (peft's config then reads
    ``"lora_alpha": 4``, as peft writes it itself), else as a float."""
    return int(round(x)) if abs(x - round(x)) < 1e-12 else float(x)


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(LoRA())
