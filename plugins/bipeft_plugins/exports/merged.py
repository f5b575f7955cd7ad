"""Every module folded into the backbone's own weights (``format="merged"``).

Each module type says what its kept module adds to which backbone
parameter (:meth:`PeftModuleType.merged_weights`); the folded copy of the
backbone is saved as a plain transformers model (``save_pretrained``,
safetensors) with the trained task head, so
``AutoModelFor...from_pretrained(path)`` loads it with no inference
overhead. Refused, naming the modules, when one cannot be folded (a
nonlinear adapter, a prefix, a bias on a layer that has none). Never chosen
by ``format="auto"``, and not read back by ``load_peft`` (load it with
transformers).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from bipeft_core.errors import StructureError
from bipeft_core.formats import auto_class_suffix
from bipeft_core.interfaces import ExportFormat
from bipeft_core.merge import merge_records
from bipeft_core.structure import PeftModel
from bipeft_core.types import ExportFiles

__all__ = ["MergedFormat"]


class MergedFormat(ExportFormat):
    """``format="merged"``; ``peft_model`` itself is left as it was."""

    name = "merged"
    library_name = "transformers"
    card_tags = ("merged",)
    load_hint = ("a plain transformers model with the modules folded in; load it with transformers, e.g. "
                 "AutoModelForSequenceClassification.from_pretrained(path)")

    def refusal(self, peft_model: PeftModel, registry: Any) -> str | None:
        _, refused = merge_records(peft_model.model, list(peft_model.peft), registry)
        if refused:
            return "these modules cannot be folded into the backbone's weights: " + "; ".join(refused)
        return None

    def prepare(self, peft_model: PeftModel, *, registry: Any, base_model_name_or_path: str | None,
                plugin_modules: Sequence[str] = ()) -> ExportFiles:
        deltas, refused = merge_records(peft_model.model, list(peft_model.peft), registry)
        if refused:
            raise StructureError("cannot merge this structure: these modules cannot be folded into the "
                                 f"backbone's weights: {'; '.join(refused)}; export with format='peft-bipeft' or "
                                 "format='bipeft' instead")
        model = peft_model.model
        if not hasattr(model, "save_pretrained"):
            raise StructureError(f"a merged export saves a transformers model; {type(model).__name__} has no "
                                 "save_pretrained: export with format='bipeft'")
        peft_model.detach_hooks()
        try:
            merged = copy.deepcopy(model)
        finally:
            for m in peft_model.peft:
                cast(Any, m).attach(model)
        copies = dict(merged.named_parameters())
        with torch.no_grad():
            for name, delta in deltas.items():
                copies[name].add_(delta.to(copies[name].dtype))
        for p in merged.parameters():
            p.requires_grad_(True)

        def write(path: Path) -> str:
            cast(Any, merged).save_pretrained(str(path), safe_serialization=True)
            # A model too large for one file is sharded: config.json then stands for the weights.
            return "model.safetensors" if (path / "model.safetensors").is_file() else "config.json"

        return ExportFiles(write=write, weights="model.safetensors", extra={"merged_modules": len(peft_model.peft)})

    def loading_snippet(self, model: nn.Module) -> list[str]:
        auto = auto_class_suffix(model)
        cls = f"AutoModelFor{auto}" if auto else "AutoModel"
        return [f"from transformers import {cls}", f'model = {cls}.from_pretrained("<this folder>")']

