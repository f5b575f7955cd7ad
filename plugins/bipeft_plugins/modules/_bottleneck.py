"""The bottleneck adapter shared by the serial and parallel adapters:
``up(gelu(down(x)))`` with ``r`` bottleneck units (the searched rank)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bipeft_core.modules import PeftModule


class BottleneckModule(PeftModule):
    folds_gate = True

    def __init__(self, spec, ranks, d_in: int, d_out: int, init_std: float = 0.01) -> None:
        super().__init__(spec, ranks)
        r = self.max_rank
        self.down = nn.Parameter(torch.randn(r, d_in) * init_std)
        self.down_bias = nn.Parameter(torch.zeros(r))
        self.up = nn.Parameter(torch.zeros(d_out, r))  # zero: output 0 at initialisation
        self.up_bias = nn.Parameter(torch.zeros(d_out))

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        r = self.rank
        h = F.gelu(F.linear(x.to(self.down.dtype), self.w(self.down)[:r], self.w(self.down_bias)[:r]))
        s = self.inner_scale(r)  # the rank mask and the gate
        if s is not None:
            h = h * s
        return F.linear(h, self.w(self.up)[:, :r], self.gated(self.w(self.up_bias)))


def bottleneck_count(d_in: int, d_out: int, rank: int) -> int:
    return d_in * rank + rank + rank * d_out + d_out
