"""A peft adapter of bipeft's own peft method ``BIPEFT`` (``format="peft-bipeft"``).

For any structure of PEFT modules, including module types peft has no
native form of and several types at once: the adapter config carries the
structure, and the peft method (:mod:`bipeft_core.peft_tuner`, registered
with peft once ``bipeft_core`` is imported) builds it with the installed
plugins' module types. ``peft.PeftModel.from_pretrained`` and the
``AutoPeftModelFor...`` classes load the folder. Full fine-tuning is no
adapter and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bipeft_core.errors import StructureError
from bipeft_core.formats import (
    PEFT_PREFIX,
    PEFT_WEIGHTS_FILE,
    head_modules,
    import_peft,
    save_tensors,
    task_type_of,
    unrepresentable,
)
from bipeft_core.interfaces import ExportFormat
from bipeft_core.structure import PeftModel
from bipeft_core.types import ExportFiles
from bipeft_plugins.exports.peft_native import loading_lines

__all__ = ["PeftMethodFormat"]

_TUNER_PREFIX = "base_model.bipeft.bipeft_modules."


def _tuner_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The weights in the key layout peft writes for a ``BIPEFT`` adapter:
    module ``i``'s parameter ``p`` under ``base_model.bipeft.bipeft_modules.<i>.<p>``
    (peft drops the adapter name), the task head under
    ``base_model.model.<parameter name>``."""
    out = {f"{_TUNER_PREFIX}{k}": v.detach() for k, v in peft_model.peft.state_dict().items()}
    params = dict(peft_model.model.named_parameters())
    for n in peft_model.head_names:
        out[f"{PEFT_PREFIX}{n}"] = params[n].detach()
    return out


class PeftMethodFormat(ExportFormat):
    """``format="peft-bipeft"``: what ``format="auto"`` writes when native
    peft cannot hold the structure. ``plugin_modules`` (import names of
    third-party plugin modules not installed through the ``bipeft`` entry
    point) are recorded in the config, and the loader imports them."""

    name = "peft-bipeft"
    auto_preference = 20
    weights_file = PEFT_WEIGHTS_FILE

    def refusal(self, peft_model: PeftModel, registry: Any) -> str | None:
        if peft_model.structure.full:
            return "a full fine-tuning structure is no peft adapter"
        try:
            import peft  # noqa: F401
        except ImportError:
            return "peft is not installed (pip install 'bipeft[peft]')"
        return None

    def prepare(self, peft_model: PeftModel, *, registry: Any, base_model_name_or_path: str | None,
                plugin_modules: Sequence[str] = ()) -> ExportFiles:
        from bipeft_core.peft_tuner import BipeftTunerConfig

        structure = peft_model.structure
        if structure.full:
            raise StructureError("a full fine-tuning structure is no peft adapter; export it with format='merged' "
                                 "(a plain transformers model) or format='bipeft'")
        peft = import_peft()
        unsupported = unrepresentable(peft_model, registry)  # a malformed peft_export fails here
        model = peft_model.model
        heads = head_modules(model, peft_model.head_names)
        sites = sorted({site for e in structure.entries for _, site in e.spec.sites})
        config = BipeftTunerConfig(structure=structure.to_dict(), modules_to_save=heads or None,
                                   target_modules=sites, plugins=list(plugin_modules) or None,
                                   task_type=task_type_of(model), base_model_name_or_path=base_model_name_or_path)
        state = _tuner_state(peft_model)

        def write(path: Path) -> None:
            config.save_pretrained(str(path))
            save_tensors(state, path / PEFT_WEIGHTS_FILE, {"format": "pt"})

        return ExportFiles(write=write, weights=PEFT_WEIGHTS_FILE, unsupported=unsupported,
                           extra={"peft_version": getattr(peft, "__version__", "?"), "modules_to_save": heads,
                                  "peft_type": "BIPEFT", "task_type": config.task_type})

    def to_trainable_state(self, state: Mapping[str, torch.Tensor], peft_model: PeftModel,
                           registry: Any) -> dict[str, torch.Tensor]:
        """The ``BIPEFT`` method's key layout (:func:`_tuner_state`) back to
        :meth:`PeftModel.trainable_state_dict`'s."""
        out: dict[str, torch.Tensor] = {}
        heads = {f"{PEFT_PREFIX}{n}": n for n in peft_model.head_names}
        for key, v in state.items():
            if key.startswith(_TUNER_PREFIX):
                out["peft." + key[len(_TUNER_PREFIX):]] = v
            elif key in heads:
                out[f"head.{heads[key]}"] = v
            else:
                raise StructureError(f"the peft weights hold a key bipeft does not place: {key!r}; the folder "
                                     "was edited or is corrupt")
        return out

    def loading_snippet(self, model: nn.Module) -> list[str]:
        return loading_lines(model, ["import bipeft_core  # registers bipeft's peft method"])
