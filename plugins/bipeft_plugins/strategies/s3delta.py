"""The S3Delta baseline (``s3delta``; docs/baselines.md) on the shared
search loop (:mod:`bipeft_core.loop`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from bipeft_core.budget import fill_walk
from bipeft_core.hookspecs import hookimpl
from bipeft_core.loop import Choices, LoopOptimizer, SearchLoop
from bipeft_core.space import DeclarativeSpace

__all__ = ["S3Delta", "solve_shift"]


def solve_shift(alpha: torch.Tensor, sizes: torch.Tensor, budget: float, temperature: float = 1.0,
                iters: int = 100) -> float:
    """The scalar ``b`` with ``Σ sigmoid((α − b)/T)·N = budget`` (bisection;
    the sum falls monotonically in ``b``)."""
    lo = float(alpha.min()) - 50.0 * temperature
    hi = float(alpha.max()) + 50.0 * temperature
    for _ in range(iters):
        mid = (lo + hi) / 2
        if float((torch.sigmoid((alpha - mid) / temperature) * sizes).sum()) > budget:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@attrs.define(kw_only=True)
class S3Delta(LoopOptimizer):
    """S3Delta (Hu et al. 2022): binary-only differentiable search, every
    matrix module at rank 1; keep probabilities ``sigmoid(α − b)`` shifted
    so the expected size meets the budget; hard-concrete gates; first-order
    DARTS on two halves; final greedy selection by probability. Checkpoints
    at epoch ends."""

    name = "s3delta"
    components = ()
    step_checkpoints = False
    arch_lr: float = attrs.field(default=0.1, validator=attrs.validators.gt(0))
    temperature: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    rank: int = attrs.field(default=1, validator=attrs.validators.ge(1))

    def adapt_space(self, space):
        return space.with_ranks([self.rank]) if isinstance(space, DeclarativeSpace) else space

    @staticmethod
    def sizes(specs: Sequence[Any]) -> torch.Tensor:
        """Per module, its size at its largest rank (float32, as ``probabilities`` takes it)."""
        return torch.tensor([float(m.max_count) for m in specs])

    def probabilities(self, sn, sizes, budget) -> torch.Tensor:
        a = sn.alpha[:, 1]
        b = solve_shift(a.detach(), sizes, budget, self.temperature)
        p = torch.sigmoid((a - b) / self.temperature)
        total = p.sum()
        return p / total * total.detach()  # shift_detach: same values, gradient moves mass between modules

    def gates(self, p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(p.shape, generator=generator).clamp(1e-6, 1 - 1e-6).to(p.device)
        pc = p.clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid(torch.log(u) - torch.log(1 - u) + torch.log(pc) - torch.log(1 - pc))
        return s.clamp(0.0, 1.0)  # stretch [l, r] = [0, 1]: the identity, then clip

    def _current(self, loop: SearchLoop) -> torch.Tensor:
        """The keep probabilities now, without gradient."""
        with torch.no_grad():
            return self.probabilities(loop.supernet, self.sizes(loop.specs), loop.budget)

    # -- the loop's hooks --------------------------------------------------------------------
    def arch_optimizer(self, supernet) -> torch.optim.Optimizer:
        return torch.optim.Adam([supernet.alpha], lr=self.arch_lr)

    def prepare(self, loop: SearchLoop) -> None:
        with torch.no_grad():
            loop.supernet.alpha[:, 0] = 0.0

    def arch_gates(self, loop: SearchLoop) -> None:
        p = self.probabilities(loop.supernet, self.sizes(loop.specs), loop.budget)
        loop.supernet.set_gates(self.gates(p, loop.gate_generator))

    def arch_update(self, loop: SearchLoop) -> None:
        sn = loop.supernet
        sn.beta.grad = None
        loop.dist.all_reduce_grads([sn.alpha])
        assert loop.arch_optimizer is not None
        loop.arch_optimizer.step()

    def weight_gates(self, loop: SearchLoop) -> None:
        loop.supernet.set_gates(self.gates(self._current(loop), loop.gate_generator).detach())

    def history_record(self, loop: SearchLoop, *, loss: float, arch_loss: float | None) -> dict[str, Any]:
        # the weight step's probabilities: it did not change α
        expected = float((self._current(loop) * self.sizes(loop.specs)).sum())
        return {"step": loop.state.step, "loss": loss, "expected_size": expected}

    def final_choices(self, loop: SearchLoop) -> Choices:
        """The modules by probability, descending, while they fit (at rank ``rank``)."""
        p, specs = self._current(loop), loop.specs
        sizes = self.sizes(specs)
        order = sorted(range(len(specs)), key=lambda i: (-float(p[i]), i))
        taken = fill_walk([float(sizes[i]) for i in order], loop.budget)
        return {i: (specs[i].ranks[-1] if specs[i].is_matrix else None) for i, t in zip(order, taken) if t}

    def repair_scores(self, loop: SearchLoop) -> list[float]:
        return self._current(loop).tolist()


@hookimpl
def bipeft_register_strategies(registry):
    registry.add(S3Delta)
