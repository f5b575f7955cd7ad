"""LoRA (Hu et al. 2022) on a linear layer: ``out + B·A·x·scale``.

Count at rank r: ``r · (in_features + out_features)``. ``A`` is
Kaiming-uniform, ``B`` zero, so the output is unchanged at initialisation.
The scale is ``lora_alpha / r`` with ``lora_alpha = r`` by default (scale 1
at every candidate rank, so the entangled slices share one scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.modules import PeftModule
from bipeft_core.types import ModuleSpec, Shape


class LoRAModule(PeftModule):
    folds_gate = True

    def __init__(self, spec: ModuleSpec, ranks: tuple[int, ...], scale: float = 1.0) -> None:
        super().__init__(spec, ranks)
        r = self.max_rank
        self.scale = float(scale)
        self.lora_A = nn.Parameter(torch.empty(r, spec.shape.in_features))
        self.lora_B = nn.Parameter(torch.zeros(spec.shape.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        r = self.rank
        a = self.w(self.lora_A)[:r]
        b = self.w(self.lora_B)[:, :r]
        h = F.linear(x.to(a.dtype), a)
        s = self.inner_scale(r)  # rank mask and gate, on the (…, r) product
        if s is not None:
            h = h * s
        return F.linear(h, b * self.scale) if self.scale != 1.0 else F.linear(h, b)


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


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(LoRA())
