"""BitFit: a zero-initialised, gated bias added to a layer's output.

Always an *added* delta, whether or not the layer has a bias of its own (so
switching it off never removes a pretrained bias); attaches to linears and
normalisation layers. Count: the output width. It merges into the layer's
own bias where the layer has one.
"""

from __future__ import annotations

import torch
from torch import nn

from bipeft_core.errors import StructureError
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

    def merged_weights(self, spec, rank, module, model):
        """The vector added to the target layer's own bias; a layer without
        a bias (Llama's and T5's linears and norms) cannot take it."""
        target = spec.site("target")
        bias = getattr(model.get_submodule(target), "bias", None)
        if not isinstance(bias, torch.nn.Parameter):
            raise StructureError(f"its target {target!r} has no bias to fold the BitFit vector into")
        return {f"{target}.bias": module.bias.detach().float()}


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(BitFit())
