"""BitFit: a zero-initialised, gated bias added to a layer's output.

Always an *added* delta, whether or not the layer has a bias of its own (so
switching it off never removes a pretrained bias); attaches to linears and
normalisation layers. Count: the output width.
"""

from __future__ import annotations

import torch
from torch import nn

from bipeft_core.hookspecs import hookimpl
from bipeft_core.modules import PeftModule
from bipeft_plugins.modules._vector import VectorModuleType


class BitFitModule(PeftModule):
    folds_gate = True

    def __init__(self, spec, ranks=()) -> None:
        super().__init__(spec, ())
        self.bias = nn.Parameter(torch.zeros(spec.shape.out_features))

    def delta(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return self.gated(self.w(self.bias))  # broadcast onto the output by the hook's addition


class BitFit(VectorModuleType):
    name = "bitfit"
    site_kind = "any"
    module_class = BitFitModule


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(BitFit())
