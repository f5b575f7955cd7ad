"""Adapter-LR: a low-rank adapter after a block's output (S3Delta's space).

``out + up(gelu(down(out)))`` with bottleneck ``b = max(1, d // 32)``, where
the down (``b × d``) and up (``d × b``) projections are each factorised at
the searched rank ``r`` and carry a bias. Count at rank r:
``2·r·(d + b) + b + d``. Down factors Xavier-uniform, the up projection's
output-side factor and both biases zero, so the output is unchanged at
initialisation. Attaches to the self-attention output and the FFN output
(roles ``attn_o`` and ``ffn_out``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.modules import PeftModule
from bipeft_core.types import Shape


def bottleneck_of(d: int, reduction: int = 32) -> int:
    return max(1, d // reduction)


class AdapterLRModule(PeftModule):
    folds_gate = True

    def __init__(self, spec, ranks, reduction: int = 32) -> None:
        super().__init__(spec, ranks)
        d = spec.shape.out_features
        b = bottleneck_of(d, reduction)
        r = self.max_rank
        self.down_v = nn.Parameter(torch.empty(r, d))  # d -> r
        self.down_u = nn.Parameter(torch.empty(b, r))  # r -> b
        self.down_bias = nn.Parameter(torch.zeros(b))
        self.up_v = nn.Parameter(torch.empty(r, b))  # b -> r
        self.up_u = nn.Parameter(torch.zeros(d, r))  # r -> d (zero: output 0 at init)
        self.up_bias = nn.Parameter(torch.zeros(d))
        for p in (self.down_v, self.down_u, self.up_v):
            nn.init.xavier_uniform_(p)

    def delta(self, x, output):
        r = self.rank
        mask = self.rank_mask[:r] if self.rank_mask is not None else None
        h = F.linear(output.to(self.down_v.dtype), self.w(self.down_v)[:r])
        if mask is not None:
            h = h * mask
        h = F.gelu(F.linear(h, self.w(self.down_u)[:, :r], self.w(self.down_bias)))
        h = F.linear(h, self.w(self.up_v)[:r])
        s = self.inner_scale(r)  # the rank mask and the gate
        if s is not None:
            h = h * s
        return F.linear(h, self.w(self.up_u)[:, :r], self.gated(self.w(self.up_bias)))


class AdapterLR(PeftModuleType):
    name = "adapter_lr"
    kind = "matrix"
    roles = ("target",)
    site_kind = "linear"

    def shape(self, sites, reduction: int = 32, **options):
        d = sites["target"].out_features
        return Shape(in_features=d, out_features=d, extra={"bottleneck": bottleneck_of(d, reduction)})

    def param_count(self, shape, rank, reduction: int = 32, **options):
        d = shape.out_features
        b = bottleneck_of(d, reduction)
        return 2 * int(rank) * (d + b) + b + d

    def supernet(self, spec, model):
        return AdapterLRModule(spec, spec.ranks, **spec.option_dict())

    def discrete(self, spec, model, rank):
        return AdapterLRModule(spec, (rank,), **spec.option_dict())


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(AdapterLR())
