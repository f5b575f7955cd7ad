"""Prefix-tuning, as the BIPEFT authors attach it: ``d`` learned key and
value vectors per self-attention layer, attended by the layer's queries
through a separate softmax over the prefix alone; the result, scaled by a
learned scalar gate (zero-initialised), is added to the attention context
that enters the output projection. The searched "rank" is the number of
prefix tokens. Count ``d·(q_dim + o_dim) + 1`` (the gate included).

Needs separate query and output projections (roles ``attn_q`` and
``attn_o``): T5, BERT-family and Llama-style attention. A fused QKV
projection (GPT-2) has no ``attn_q`` and is refused with a clear error.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bipeft_core.errors import TargetError
from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.modules import PeftModule, input_of
from bipeft_core.types import Shape

UNSCALED_ATTENTION = ("t5", "mt5", "umt5")


def attention_heads(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for attr in ("num_attention_heads", "num_heads", "n_head"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise TargetError(
        f"prefix tuning needs the number of attention heads, but {type(model).__name__}'s config has "
        "none of num_attention_heads, num_heads, n_head; set one on model.config"
    )


class PrefixModule(PeftModule):
    folds_gate = True

    def __init__(self, spec, ranks, heads: int, scaled: bool = True, init_std: float = 0.02) -> None:
        super().__init__(spec, ranks)
        r = self.max_rank
        q_dim, o_dim = spec.shape.in_features, spec.shape.out_features
        if q_dim % heads:
            raise TargetError(f"{spec.id}: query width {q_dim} is not divisible by {heads} heads")
        self.heads = heads
        self.scaled = scaled
        self.prefix_k = nn.Parameter(torch.randn(r, q_dim) * init_std)
        self.prefix_v = nn.Parameter(torch.randn(r, o_dim) * init_std)
        self.prefix_gate = nn.Parameter(torch.zeros(()))
        self._q = None

    def _register(self, model):
        def capture(_mod, args, kwargs, output):
            self._q = output if self.enabled else None
            return None

        def add(_mod, args, kwargs):
            q, self._q = self._q, None
            if not self.enabled or q is None:
                return None
            self.calls += 1
            ctx = input_of(args, kwargs)
            d = self._apply_gate(self.attend(q) * self.gated(self.w(self.prefix_gate)), ctx)
            new_args = (ctx + d,) + tuple(args[1:]) if args else args
            return new_args, kwargs

        self._hook(model, self.spec.site("attn_q"), capture)
        self._hook(model, self.spec.site("attn_o"), add, pre=True)

    def attend(self, q: torch.Tensor) -> torch.Tensor:
        r = self.rank
        k = self.w(self.prefix_k)[:r]
        v = self.w(self.prefix_v)[:r]
        h = self.heads
        *lead, qd = q.shape
        qh = q.to(k.dtype).reshape(*lead, h, qd // h)  # (..., L, H, dh)
        kh = k.reshape(r, h, qd // h)  # (r, H, dh)
        scores = torch.einsum("...lhd,rhd->...hlr", qh, kh)
        if self.scaled:
            scores = scores / math.sqrt(qd // h)
        if self.rank_mask is not None:  # mix prefix lengths: masked tokens get no weight
            scores = scores + torch.log(self.rank_mask[:r].clamp_min(1e-30))
        probs = scores.softmax(-1)
        if self.rank_mask is not None:
            probs = probs * self.rank_mask[:r]
        vh = v.reshape(r, h, v.shape[-1] // h)
        out = torch.einsum("...hlr,rhd->...lhd", probs, vh)
        return out.reshape(*lead, v.shape[-1])


class Prefix(PeftModuleType):
    name = "prefix"
    kind = "matrix"
    roles = ("attn_q", "attn_o")

    def shape(self, sites, **options):
        return Shape(in_features=sites["attn_q"].out_features, out_features=sites["attn_o"].in_features)

    def param_count(self, shape, rank, **options):
        return int(rank) * (shape.in_features + shape.out_features) + 1

    def _build(self, spec, model, ranks):
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        return PrefixModule(spec, ranks, attention_heads(model), scaled=model_type not in UNSCALED_ATTENTION,
                            **spec.option_dict())

    def supernet(self, spec, model):
        return self._build(spec, model, spec.ranks)

    def discrete(self, spec, model, rank):
        return self._build(spec, model, (rank,))


@hookimpl
def bipeft_register_peft_modules(registry):
    registry.add(Prefix())
