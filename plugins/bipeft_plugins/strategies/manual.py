"""The fixed-size methods, no search (docs/baselines.md): ``manual`` (a
hand-chosen LoRA, serial adapter, BitFit or LNFit configuration) and
``full`` (full fine-tuning). Both report their count against the budget but
do not enforce it."""

from __future__ import annotations

import time

import attrs

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import Optimizer
from bipeft_core.loop import build_result
from bipeft_core.space import DeclarativeSpace
from bipeft_core.state import SearchResult
from bipeft_core.structure import Structure

__all__ = ["MANUAL_DEFAULTS", "FullFineTune", "Manual"]

MANUAL_DEFAULTS = {
    "lora": {"rank": 8, "targets": ("attn_q", "attn_v")},
    "serial_adapter": {"rank": 8, "targets": ("ffn_out",)},
    "bitfit": {"rank": None, "targets": ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "ffn_in", "ffn_out",
                                         "norm")},
    "lnfit": {"rank": None, "targets": ("norm",)},
}


def _targets(value):
    return tuple(value) if value is not None else None


@attrs.define(kw_only=True)
class Manual(Optimizer):
    """A hand-chosen PEFT method at a fixed configuration, no search:
    ``method`` = ``lora`` (default rank 8 on q and v), ``serial_adapter``
    (rank 8 on the FFN output), ``bitfit`` (every linear and norm) or
    ``lnfit`` (every norm); ``rank`` and ``targets`` override. The budget is
    reported against, not enforced."""

    name = "manual"
    components = ()
    budgeted = False
    method: str = attrs.field(default="lora", validator=attrs.validators.in_(tuple(MANUAL_DEFAULTS)))
    rank: int | None = None
    targets: tuple[str, ...] | None = attrs.field(default=None, converter=_targets)

    def adapt_space(self, space):
        defaults = MANUAL_DEFAULTS[self.method]
        rank = self.rank if self.rank is not None else defaults["rank"]
        entry = {"type": self.method, "targets": list(self.targets or defaults["targets"])}
        data = {"name": f"manual-{self.method}", "modules": [entry]}
        if rank is not None:
            data["ranks"] = [rank]
        return DeclarativeSpace.from_dict(data, source=f"manual {self.method}")

    def search(self, ctx) -> SearchResult:
        started = time.perf_counter()
        choices = {i: (m.ranks[-1] if m.is_matrix else None) for i, m in enumerate(ctx.specs)}
        return build_result(ctx, self.name, choices, started, repair=False,
                            notes=[f"manual {self.method}: no search; the budget is not enforced"])


@attrs.define(kw_only=True)
class FullFineTune(Optimizer):
    """Full fine-tuning: every backbone parameter trains (the task head too);
    no search. The budget is reported against, not enforced."""

    name = "full"
    components = ()
    budgeted = False

    def search(self, ctx) -> SearchResult:
        started = time.perf_counter()
        structure = Structure(entries=(), space="", model_type=ctx.model_type, backbone_params=ctx.backbone_params,
                              budget=ctx.budget, full=True)
        return build_result(ctx, self.name, {}, started, structure=structure,
                            notes=["full fine-tuning: no search; the budget is not enforced"])


@hookimpl
def bipeft_register_strategies(registry):
    for cls in (Manual, FullFineTune):
        registry.add(cls)
