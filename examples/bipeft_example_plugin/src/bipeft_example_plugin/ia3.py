"""IA3 (Liu et al. 2022): a learned vector that rescales a linear layer's
outputs, ``y ↦ y ⊙ (1 + l)``.

``l`` starts at zero, so the model is unchanged at initialisation. One
vector of the layer's output width, no rank: a *vector* module type, which
the search switches on or off with its gate. Count: the output width.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bipeft_core import ModuleSpec, PeftModule, PeftModuleType, Shape


class IA3Module(PeftModule):
    """The runtime form (one class serves the supernet and the discrete
    form): adds ``gate · (l ⊙ y)`` to the target's output ``y``. The gate
    is folded into the small vector ``l`` rather than multiplied with the
    whole output."""

    folds_gate = True

    def __init__(self, spec: ModuleSpec) -> None:
        super().__init__(spec, ())
        self.scale = nn.Parameter(torch.zeros(spec.shape.out_features))

    def delta(self, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        return output * self.gated(self.w(self.scale)).to(output.dtype)


class IA3(PeftModuleType):
    """The ``ia3`` module type: stateless, one instance serves every position."""

    name = "ia3"
    kind = "vector"
    roles = ("target",)
    site_kind = "linear"

    def shape(self, sites: Any, **options: Any) -> Shape:
        target = sites["target"]
        return Shape(in_features=target.in_features, out_features=target.out_features)

    def param_count(self, shape: Shape, rank: int | None, **options: Any) -> int:
        return shape.out_features

    def supernet(self, spec: ModuleSpec, model: nn.Module) -> nn.Module:
        return IA3Module(spec)

    def discrete(self, spec: ModuleSpec, model: nn.Module, rank: int | None) -> nn.Module:
        return IA3Module(spec)
