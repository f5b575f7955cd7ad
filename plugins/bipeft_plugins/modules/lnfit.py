"""LNFit: a zero-initialised scale ``δ`` added to a normalisation layer's
weight, i.e. output ``LN(x) + δ·x̂`` with ``x̂`` the normalised input.

Works for ``nn.LayerNorm`` and RMS-style norms (T5, Llama). Count: the
normalised width. It merges into the norm's own weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bipeft_core.errors import StructureError
from bipeft_core.hookspecs import hookimpl
from bipeft_core.modules import PeftModule
from bipeft_plugins.modules._vector import VectorModuleType


def normalised_input(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x̂``: the input normalised as ``norm`` does, before its affine part."""
    if isinstance(norm, nn.LayerNorm):
        return F.layer_norm(x, norm.normalized_shape, eps=norm.eps)
    eps = getattr(norm, "variance_epsilon", None)
    if eps is None:
        eps = getattr(norm, "eps", 1e-6)
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class LNFitModule(PeftModule):
    folds_gate = True

    def __init__(self, spec, ranks=()) -> None:
        super().__init__(spec, ())
        self.scale = nn.Parameter(torch.zeros(spec.shape.out_features))
        self._norm: tuple[nn.Module, ...] = ()  # a tuple, so the norm is not registered as a submodule

    def _register(self, model):
        from bipeft_core.modules import get_submodule

        self._norm = (get_submodule(model, self.spec.site("target")),)
        super()._register(model)

    def delta(self, x, output):
        return self.gated(self.w(self.scale)) * normalised_input(self._norm[0], x).to(self.scale.dtype)

    def add_delta(self, x, inner, output):
        """``output + δ·x̂`` as one ``addcmul`` (the plain addition where a
        subclass overrides ``delta``, or the dtypes differ)."""
        if type(self).delta is not LNFitModule.delta or output.dtype != self.scale.dtype:
            return super().add_delta(x, inner, output)
        return torch.addcmul(output, self.gated(self.w(self.scale)), normalised_input(self._norm[0], x))


class LNFit(VectorModuleType):
    name = "lnfit"
    site_kind = "norm"
    module_class = LNFitModule

    def merged_weights(self, spec, rank, module, model):
        """``δ`` added to the norm's own weight (``LN(x) + δ·x̂ = (w + δ)·x̂ + b``);
        a norm without a weight of its own cannot take it."""
        target = spec.site("target")
        norm = model.get_submodule(target)
        weight = getattr(norm, "weight", None)
        if not isinstance(weight, nn.Parameter) or tuple(weight.shape) != tuple(module.scale.shape):
            raise StructureError(f"its target {target!r} has no weight of width {module.scale.numel()} to fold "
                                 "the LNFit scale into")
        return {f"{target}.weight": module.scale.detach().float()}


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(LNFit())
