"""The fixed-size methods, no search (docs/baselines.md): ``manual`` (a
hand-chosen LoRA, serial adapter, BitFit or LNFit configuration), ``full``
(full fine-tuning) and ``fixed`` (a structure searched before, from its
``structure.json``: what ``bipeft transfer`` re-trains on another task or
backbone). They report their count against the budget but do not enforce it."""

from __future__ import annotations

import time

import attrs

from bipeft_core.errors import SearchSpaceError, SpecError
from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import Optimizer
from bipeft_core.loop import build_result
from bipeft_core.space import DeclarativeSpace
from bipeft_core.state import SearchResult
from bipeft_core.structure import Structure

__all__ = ["MANUAL_DEFAULTS", "Fixed", "FullFineTune", "Manual"]

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


@attrs.define(kw_only=True)
class Fixed(Optimizer):
    """A structure found before, re-trained as it is: ``structure`` is the
    path of its ``structure.json``. Each kept module is found again in the
    space on this model by its type and sites (full module names), at its
    rank; its count is recomputed for this model (a backbone of the same
    family whose layers map one to one may be wider or narrower). A module
    whose sites this model lacks, another model family, or a rank the space
    does not offer is refused with the fix. The budget is reported against,
    not enforced."""

    name = "fixed"
    components = ()
    budgeted = False
    structure: str = ""

    def _load(self) -> Structure:
        if not self.structure:
            raise SpecError("optimizer 'fixed' needs structure = \"path/to/structure.json\" (a run folder's)")
        return Structure.load(self.structure)

    def search(self, ctx) -> SearchResult:
        started = time.perf_counter()
        saved = self._load()
        if saved.full:
            structure = Structure(entries=(), space="", model_type=ctx.model_type,
                                  backbone_params=ctx.backbone_params, budget=ctx.budget, full=True)
            return build_result(ctx, self.name, {}, started, structure=structure,
                                notes=[f"full fine-tuning from {self.structure}"])
        if saved.model_type and ctx.model_type and saved.model_type != ctx.model_type:
            raise SearchSpaceError(
                f"the structure in {self.structure!r} was searched on a {saved.model_type} model and this model "
                f"is a {ctx.model_type}: a structure transfers within one model family whose layers map one to "
                "one; search this model instead (bipeft run)")
        by_key = {(m.type, tuple(sorted(m.sites))): m for m in ctx.specs}
        choices: dict[int, int | None] = {}
        for e in saved.entries:
            key = (e.spec.type, tuple(sorted(e.spec.sites)))
            spec = by_key.get(key)
            if spec is None:
                raise SearchSpaceError(
                    f"module {e.spec.id} of {self.structure!r} has no place on this model: it has no "
                    f"{e.spec.type} site {dict(e.spec.sites)} in space {ctx.space_name!r} (another depth or "
                    "layer layout?); a structure transfers to a backbone whose layers map one to one")
            if e.rank is not None and e.rank not in spec.ranks:
                raise SearchSpaceError(f"module {e.spec.id}: rank {e.rank} is not a candidate of the space here "
                                       f"({list(spec.ranks)}); use the space the structure was searched in")
            choices[spec.index] = e.rank
        return build_result(ctx, self.name, choices, started, repair=False,
                            notes=[f"structure of {self.structure} ({len(choices)} modules), re-trained as it is; "
                                   "the budget is not enforced"])


@hookimpl
def bipeft_register_strategies(registry):
    for cls in (Manual, FullFineTune, Fixed):
        registry.add(cls)
