"""BitFit: a zero-initialised, gated bias added to a layer's output.

Always an *added* delta, whether or not the layer has a bias of its own (so
switching it off never removes a pretrained bias); attaches to linears and
normalisation layers. Count: the output width.
"""

from __future__ import annotations

import torch
from torch import nn

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.modules import PeftModule
from bipeft_core.space import Shape


class BitFitModule(PeftModule):
    def __init__(self, spec, ranks=()) -> None:
        super().__init__(spec, ())
        self.bias = nn.Parameter(torch.zeros(spec.shape.out_features))

    def delta(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return self.w(self.bias).expand_as(output)


class BitFit(PeftModuleType):
    name = "bitfit"
    kind = "vector"
    roles = ("target",)
    site_kind = "any"

    def shape(self, sites, **options):
        s = sites["target"]
        return Shape(in_features=s.in_features, out_features=s.out_features)

    def param_count(self, shape, rank, **options):
        return shape.out_features

    def supernet(self, spec, model):
        return BitFitModule(spec)

    def discrete(self, spec, model, rank):
        return BitFitModule(spec)


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(BitFit())
