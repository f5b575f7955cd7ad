"""The supernet: a frozen backbone with every searchable module attached,
architecture logits α (keep/drop) and β (candidate ranks), and the gate
sampling of docs/algorithm.md §2.

Before each forward, :meth:`Supernet.configure` sets every module's controls
for one of the modes:

``weight``     binary stage, weight step: gate ~ GumbelHard(α); a module
               sampled off is skipped; rank = fixed rank or argmax β.
``binary``     binary stage, architecture step: gate ~ GumbelHard(α) with a
               straight-through gradient; a module sampled off is computed
               with detached weights (or skipped with
               ``gate_gradient="sampled_only"``).
``dimension``  dimension stage, architecture step: unpruned modules on;
               rank weights ~ GumbelHard(β) mixed as a rank mask.
``eval``       deterministic: keep = argmax α, rank = fixed or argmax β.
``all_on``     every unpruned module on at its largest rank, no gates.
``joint``      α and β together (the ablation "disentangled without
               iteration"): gate ~ GumbelHard(α) and rank weights ~
               GumbelHard(β), both with straight-through gradients.

With ``entangled = True`` (the ablation "entangled space") a matrix module
has one joint distribution over {0} ∪ C with logits ``[α_drop, β_1..β_C]``:
``weight``, ``joint`` and ``eval`` sample (or take the argmax of) that
distribution, rank 0 meaning off; the keep probability is ``1 − p(0)``.

Pruned modules are always skipped: no compute, no memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from bipeft_core.modules import PeftModule, keyword_forward, require_peft_module
from bipeft_core.types import ModuleSpec

__all__ = ["MODES", "Supernet", "gumbel_hard", "trainable_head_parameters"]

MODES = ("weight", "binary", "dimension", "eval", "all_on", "joint")
FROZEN_HEADS = ("lm_head", "cls")


def gumbel_hard(
    logits: torch.Tensor, tau: float, generator: torch.Generator | None, *, noise: bool = True
) -> torch.Tensor:
    """Hard Gumbel-softmax over the last dimension, with a straight-through
    gradient: the formula of ``torch.nn.functional.gumbel_softmax(hard=True)``
    written with an explicit generator. ``noise=False`` gives the hard
    softmax (no sampling)."""
    if noise:
        u = torch.rand(logits.shape, generator=generator, dtype=torch.float32).to(logits.device)
        g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
        y = ((logits + g.to(logits.dtype)) / tau).softmax(-1)
    else:
        y = (logits / tau).softmax(-1)
    index = y.argmax(-1, keepdim=True)
    hard = torch.zeros_like(y).scatter_(-1, index, 1.0)
    return hard - y.detach() + y


def trainable_head_parameters(model: nn.Module, heads: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """Task-head parameters that train with every method (classifier, pooler,
    score head); LM heads (T5's tied head) stay frozen."""
    out = []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        parts = name.split(".")
        if any(h in parts for h in heads) and not any(h in parts for h in FROZEN_HEADS):
            if id(p) not in seen:
                seen.add(id(p))
                out.append((name, p))
    return out


class Supernet(nn.Module):
    """A backbone with every module of a space attached in supernet form.

    ``model`` is changed in place: its parameters are frozen except the task
    head, and hooks are attached. Module weights are created with the global
    torch RNG (seed it first); architecture logits with ``generator``.
    """

    # buffers (registered in __init__), declared for type checkers
    cand_valid: torch.Tensor
    cand_ranks: torch.Tensor
    cand_counts: torch.Tensor
    rank_masks: torch.Tensor
    is_matrix: torch.Tensor
    pruned: torch.Tensor
    fixed_rank: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        specs: Sequence[ModuleSpec],
        registry: Any,
        *,
        heads: Sequence[str] = ("classifier", "score", "pooler"),
        generator: torch.Generator | None = None,
        logit_init_std: float = 1e-3,
    ) -> None:
        super().__init__()
        self.model = model
        self.forward = keyword_forward(self, model)  # type: ignore[method-assign]  # Trainer reads its inputs
        self.specs = list(specs)
        for p in model.parameters():
            p.requires_grad_(False)
        self.head_params = [p for _, p in trainable_head_parameters(model, heads)]
        for p in self.head_params:
            p.requires_grad_(True)
        self.peft = nn.ModuleList(registry.get(s.type).supernet(s, model) for s in self.specs)
        for spec, m in zip(self.specs, self.peft):
            require_peft_module(m, spec.type, "supernet")
        for m in self.peft_modules():
            m.attach(model)
        n = len(self.specs)
        cmax = max([len(s.ranks) for s in self.specs] + [1])
        rmax = max([s.max_rank or 0 for s in self.specs] + [1])
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        self.alpha = nn.Parameter(logit_init_std * torch.randn(n, 2, generator=generator))
        self.beta = nn.Parameter(logit_init_std * torch.randn(n, cmax, generator=generator))
        valid = torch.zeros(n, cmax, dtype=torch.bool)
        ranks = torch.zeros(n, cmax, dtype=torch.long)
        counts = torch.zeros(n, cmax, dtype=torch.float64)
        masks = torch.zeros(n, cmax, rmax)
        for i, s in enumerate(self.specs):
            if s.ranks:
                for c, (r, cnt) in enumerate(zip(s.ranks, s.counts)):
                    valid[i, c] = True
                    ranks[i, c] = r
                    counts[i, c] = cnt
                    masks[i, c, :r] = 1.0
            else:
                valid[i, 0] = True
                counts[i, 0] = s.counts[0]
        self.register_buffer("cand_valid", valid, persistent=False)
        self.register_buffer("cand_ranks", ranks, persistent=False)
        self.register_buffer("cand_counts", counts, persistent=False)
        self.register_buffer("rank_masks", masks, persistent=False)
        self.register_buffer("is_matrix", torch.tensor([s.is_matrix for s in self.specs], dtype=torch.bool),
                             persistent=False)
        self.register_buffer("pruned", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("fixed_rank", torch.full((n,), -1, dtype=torch.long))
        self.mode = "all_on"
        self.entangled = False

    # -- reading ---------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.specs)

    def masked_beta(self) -> torch.Tensor:
        return self.beta.masked_fill(~self.cand_valid, float("-inf"))

    def argmax_rank(self) -> torch.Tensor:
        """Per module: the fixed rank if fixed, else the candidate at argmax β
        (0 for vector modules)."""
        idx = self.masked_beta().argmax(-1)
        ranks = self.cand_ranks.gather(1, idx[:, None])[:, 0]
        ranks = torch.where(self.fixed_rank >= 0, self.fixed_rank, ranks)
        return torch.where(self.is_matrix, ranks, torch.zeros_like(ranks))

    def rank_weights(self) -> torch.Tensor:
        """``w̃``: one-hot at the fixed rank if fixed, else softmax(β)."""
        w = self.masked_beta().detach().softmax(-1)
        fixed = self.fixed_rank >= 0
        if fixed.any():
            onehot = (self.cand_ranks == self.fixed_rank[:, None]) & self.cand_valid
            w = torch.where(fixed[:, None], onehot.to(w.dtype), w)
        return w

    def effective_counts(self) -> dict[str, torch.Tensor]:
        """Per module, the parameters it carries (float64, pruned modules
        included): ``max`` at its largest candidate rank, ``expected`` under
        the dimension weights ``w̃`` (``Σ_c w̃_c·N(d_c)``), ``live`` at the
        rank a weight step runs it at (fixed, else argmax β). A vector
        module's three are its one count."""
        counts = self.cand_counts.double()
        n_max = counts.max(-1).values
        expected = (self.rank_weights().double() * counts).sum(-1)
        idx = self.masked_beta().argmax(-1)
        fixed = self.fixed_rank >= 0
        if fixed.any():
            hit = (self.cand_ranks == self.fixed_rank[:, None]) & self.cand_valid
            idx = torch.where(fixed, hit.double().argmax(-1), idx)
        live = counts.gather(1, idx[:, None])[:, 0]
        vec = counts[:, 0]
        return {"max": torch.where(self.is_matrix, n_max, vec),
                "expected": torch.where(self.is_matrix, expected, vec),
                "live": torch.where(self.is_matrix, live, vec)}

    def keep_probability(self) -> torch.Tensor:
        """``π = softmax(α)[keep]``; in the entangled space, ``1 − p(rank 0)``
        of the joint distribution for matrix modules."""
        pi = self.alpha.detach().softmax(-1)[:, 1]
        if self.entangled:
            joint = self.joint_logits().detach().softmax(-1)[:, 0]
            pi = torch.where(self.is_matrix, 1.0 - joint, pi)
        return pi

    def joint_logits(self) -> torch.Tensor:
        """``[α_drop, β_1..β_C]`` per module (the entangled space's logits;
        vector modules: ``[α_drop, α_keep, -inf...]``)."""
        beta = torch.where(self.is_matrix[:, None], self.masked_beta(),
                           torch.full_like(self.beta, float("-inf")))
        beta = torch.where((~self.is_matrix)[:, None] & (torch.arange(beta.shape[1]) == 0)[None, :],
                           self.alpha[:, 1:2].expand_as(beta), beta)
        return torch.cat([self.alpha[:, :1], beta], dim=1)

    def eval_keep(self) -> torch.Tensor:
        """Whether each module is on in ``eval`` mode (argmax α, or in the
        entangled space argmax of the joint distribution ≠ rank 0)."""
        if self.entangled:
            return self.joint_logits().detach().argmax(-1) != 0
        return self.alpha.detach()[:, 1] > self.alpha.detach()[:, 0]

    def eval_rank(self) -> torch.Tensor:
        """The rank each module runs at in ``eval`` mode."""
        ranks = self.argmax_rank()
        if self.entangled:
            idx = self.joint_logits().detach()[:, 1:].argmax(-1)
            joint_rank = self.cand_ranks.gather(1, idx[:, None])[:, 0]
            ranks = torch.where(self.is_matrix & (self.fixed_rank < 0), joint_rank, ranks)
        return ranks

    def peft_modules(self) -> list[PeftModule]:
        """The attached modules, in the order of :attr:`specs`."""
        return cast("list[PeftModule]", list(self.peft))

    def peft_parameters(self) -> list[nn.Parameter]:
        return list(self.peft.parameters())

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.beta]

    def module_products(self) -> list[list[torch.Tensor | None] | None]:
        """Per module, ``θ ⊙ ∂L/∂θ`` for each of its tensors (``None`` for a
        tensor without gradient; ``None`` for a module not computed at all):
        what a :class:`~bipeft_core.SensitivityEstimator` observes."""
        out: list[list[torch.Tensor | None] | None] = []
        for m in self.peft_modules():
            prods = [(p.detach() * p.grad) if p.grad is not None else None for p in m.parameters()]
            out.append(prods if any(t is not None for t in prods) else None)
        return out

    # -- configuring a forward -------------------------------------------------------
    @torch.no_grad()
    def _reset_all(self) -> None:
        for m in self.peft_modules():
            m.reset_controls()

    def configure(
        self,
        mode: str,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        gate_gradient: str = "straight_through",
        noise: bool = True,
    ) -> torch.Tensor | None:
        """Set every module's controls for the next forward (see the module
        docstring). Returns the sampled gates (``(M,)``, keep = 1) where the
        mode samples α, else ``None``."""
        if mode not in MODES:
            raise ValueError(f"unknown supernet mode {mode!r}; one of {MODES}")
        self.mode = mode
        pruned = self.pruned.tolist()
        fixed = self.fixed_rank.tolist()
        argmax_rank = self.argmax_rank().tolist()
        gates = None
        rank_w = None  # (M, C) hard rank samples with straight-through gradients
        keep: list[bool] = [True] * len(self.specs)
        sampled_rank: list[int] | None = None
        if self.entangled and mode in ("weight", "joint"):
            w = gumbel_hard(self.joint_logits(), temperature, generator, noise=noise)  # (M, 1 + C)
            gates = 1.0 - w[:, 0]
            keep = (w.detach()[:, 0] < 0.5).tolist()
            rank_w = w[:, 1:]
            idx = rank_w.detach().argmax(-1)
            sampled_rank = self.cand_ranks.gather(1, idx[:, None])[:, 0].tolist()
        elif mode in ("weight", "binary", "joint"):
            g = gumbel_hard(self.alpha, temperature, generator, noise=noise)[:, 1]
            gates = g
            keep = (g.detach() > 0.5).tolist()
        elif mode == "eval":
            keep = self.eval_keep().tolist()
            argmax_rank = self.eval_rank().tolist()
        if mode in ("dimension", "joint") and rank_w is None:
            rank_w = gumbel_hard(self.masked_beta(), temperature, generator, noise=noise)
        mask_all = torch.einsum("mc,mcr->mr", rank_w, self.rank_masks) if rank_w is not None else None
        for i, m in enumerate(self.peft_modules()):
            m.reset_controls()
            if pruned[i]:
                m.enabled = False
                continue
            matrix = m.max_rank is not None
            if matrix and mode != "all_on":
                m.rank = fixed[i] if fixed[i] >= 0 else argmax_rank[i]
            if mode == "weight":
                m.enabled = keep[i]
                if sampled_rank is not None and matrix and fixed[i] < 0:
                    m.rank = sampled_rank[i]
            elif mode == "eval":
                m.enabled = keep[i]
            elif mode in ("binary", "joint"):
                if not keep[i] and gate_gradient == "sampled_only":
                    m.enabled = False
                    continue
                assert gates is not None  # these modes sample α
                m.gate = gates[i]
                m.detach_weights = not keep[i]
            if mode in ("dimension", "joint") and matrix and fixed[i] < 0:
                assert rank_w is not None and mask_all is not None  # these modes sample β
                if gate_gradient == "sampled_only":
                    c = int(rank_w[i].detach().argmax())
                    m.rank = int(self.cand_ranks[i, c])
                else:
                    m.rank = m.max_rank
                m.rank_mask = mask_all[i, : m.max_rank]
        return gates

    def set_gates(self, gates: torch.Tensor | None, *, enabled: torch.Tensor | None = None) -> None:
        """Set externally computed gates (baselines such as S3Delta): module
        ``i`` runs at its fixed (else argmax β) rank with output scaled by
        ``gates[i]`` (``None``: no gate); ``enabled`` (bool, per module)
        switches modules off. Pruned modules stay off."""
        self.mode = "external"
        ranks = self.argmax_rank().tolist()
        pruned = self.pruned.tolist()
        on = enabled.tolist() if enabled is not None else [True] * len(self.specs)
        for i, m in enumerate(self.peft_modules()):
            m.reset_controls()
            if pruned[i] or not on[i]:
                m.enabled = False
                continue
            if m.max_rank is not None:
                m.rank = ranks[i]
            if gates is not None:
                m.gate = gates[i]

    def forward(self, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
        # ``labels`` by name: Trainer finds a model's label columns in its class's forward
        if labels is not None:
            kwargs["labels"] = labels
        return self.model(*args, **kwargs)

    def detach_hooks(self) -> None:
        for m in self.peft_modules():
            m.detach()
