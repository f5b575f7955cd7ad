"""What every export format shares, and bipeft's own format.

An export format is an :class:`~bipeft_core.interfaces.ExportFormat`
registered through ``bipeft_register_export_formats``; the exporter
(:mod:`bipeft_core.export`) asks it for its files and writes what every
format carries. This module holds the pieces formats build on: the file
names, reading and writing safetensors, each kept module's native peft form
as its type gives it, the task head's modules and peft's ``task_type`` of a
model class; and :class:`BipeftFormat`, bipeft's own format, which holds
every structure (full fine-tuning included) and needs nothing beyond bipeft.
The peft and merged formats are plugins (``bipeft_plugins.exports``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bipeft_core.errors import BipeftError, StructureError
from bipeft_core.interfaces import ExportFormat
from bipeft_core.structure import PeftModel, StructureEntry
from bipeft_core.types import ExportFiles, PeftExport

__all__ = ["ADAPTER_FILE", "CARD_FILE", "EXPORT_FILE", "PEFT_CONFIG_FILE", "PEFT_PREFIX", "PEFT_WEIGHTS_FILE",
           "STRUCTURE_FILE", "BipeftFormat", "check_peft_model", "head_modules", "import_peft", "load_tensors",
           "peft_records", "save_tensors", "sha256", "task_type_of", "unrepresentable", "version"]

EXPORT_FILE = "export.json"
STRUCTURE_FILE = "structure.json"
ADAPTER_FILE = "adapter.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "README.md"
PEFT_PREFIX = "base_model.model."
"""Where peft's weights files put the base model's modules."""
_FULL_PART = "full fine-tuning (backbone weights)"


def import_peft() -> Any:
    """The ``peft`` package, or an error that says how to install it."""
    try:
        import peft
    except ImportError:
        raise BipeftError(
            "exporting to the peft format needs the 'peft' package, which is not installed: "
            "pip install 'bipeft[peft]' (or export with format='bipeft', which needs nothing extra)"
        ) from None
    return peft


def version() -> str:
    from bipeft_core._version import __version__

    return __version__


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory; each gets its own copy.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path),
              metadata=dict(metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise StructureError(f"the export lacks its weights file {str(path)!r}; the folder is incomplete, "
                             "export again")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise StructureError(f"weights file {str(path)!r} cannot be read ({exc}); it is corrupt or "
                             "truncated, export again") from None


def check_peft_model(peft_model: Any) -> PeftModel:
    if not isinstance(peft_model, PeftModel):
        raise BipeftError(f"export needs a bipeft PeftModel (Structure.build(model, registry)), got "
                          f"{type(peft_model).__name__}")
    return peft_model


def peft_records(peft_model: PeftModel, registry: Any) -> list[tuple[StructureEntry, PeftExport | None]]:
    """Each kept module's native peft form, as its type gives it (``None``:
    the type has none), in the structure's order."""
    out: list[tuple[StructureEntry, PeftExport | None]] = []
    for e, mod in zip(peft_model.structure.entries, peft_model.peft):
        record = registry.get(e.spec.type).peft_export(e.discrete_spec(), e.rank, mod, peft_model.model)
        if record is not None and not isinstance(record, PeftExport):
            raise StructureError(
                f"module type {e.spec.type!r} returned a {type(record).__name__} from peft_export for "
                f"{e.spec.id}; it must return a bipeft_core.types.PeftExport, or None when peft has no "
                "native form of the type: fix the plugin"
            )
        out.append((e, record))
    return out


def unrepresentable(peft_model: PeftModel, registry: Any) -> list[str]:
    """What native peft cannot hold: one item per module type without a
    native peft form (plus full fine-tuning)."""
    parts = sorted({e.spec.type for e, record in peft_records(peft_model, registry) if record is None})
    out = [f"{t} modules" for t in parts]
    if peft_model.structure.full:
        out.insert(0, _FULL_PART)
    return out


def head_modules(model: nn.Module, head_params: Sequence[str]) -> list[str]:
    """The shortest module names that hold only task-head parameters, covering
    every head parameter (``classifier``, ``bert.pooler``, ``score``): what a
    peft config's ``modules_to_save`` lists."""
    heads = set(head_params)
    modules = dict(model.named_modules())
    out: list[str] = []
    for pname in head_params:
        parts = pname.split(".")
        for i in range(1, len(parts)):
            name = ".".join(parts[:i])
            if name not in modules:
                continue
            owned = [f"{name}.{n}" for n, _ in modules[name].named_parameters()]
            if all(n in heads for n in owned):
                if name not in out:
                    out.append(name)
                break
        else:
            raise StructureError(f"head parameter {pname!r} does not sit in a module of its own; peft's "
                                 "modules_to_save cannot hold it; export with format='bipeft'")
    return out


_TASK_TYPES = (("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"),
               ("ForQuestionAnswering", "QUESTION_ANS"), ("ForCausalLM", "CAUSAL_LM"),
               ("ForConditionalGeneration", "SEQ_2_SEQ_LM"), ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"))
_AUTO_CLASSES = {"SEQ_CLS": "SequenceClassification", "TOKEN_CLS": "TokenClassification",
                 "QUESTION_ANS": "QuestionAnswering", "CAUSAL_LM": "CausalLM", "SEQ_2_SEQ_LM": "Seq2SeqLM"}


def task_type_of(model: nn.Module) -> str | None:
    """peft's ``task_type`` for ``model``'s class (``SEQ_CLS`` for a
    ``...ForSequenceClassification``, ``SEQ_2_SEQ_LM`` for T5's
    ``...ForConditionalGeneration``, ``CAUSAL_LM``, ...): what decides the
    ``AutoPeftModelFor...`` class that loads the export; ``None`` for a
    bare backbone (peft's plain ``PeftModel`` then)."""
    name = type(model).__name__
    return next((t for suffix, t in _TASK_TYPES if name.endswith(suffix)), None)


def auto_class_suffix(model: nn.Module) -> str:
    """The ``AutoModelFor...`` suffix of ``model``'s task (``SequenceClassification``),
    or ``""`` for a bare backbone."""
    return _AUTO_CLASSES.get(task_type_of(model) or "", "")


class BipeftFormat(ExportFormat):
    """bipeft's own format, for every structure (full fine-tuning included):
    ``structure.json``, ``adapter.safetensors`` (module weights ``peft.<i>.*``,
    task head ``head.<name>``, backbone ``backbone.<name>`` for full
    fine-tuning) and ``export.json``, whose ``peft_cannot_represent`` asks
    the module types. Loaded back with :func:`~bipeft_core.export.load_peft`.
    ``format="auto"`` falls back to it when no peft format holds the
    structure."""

    name = "bipeft"
    auto_preference = 0
    library_name = "bipeft"
    weights_file = ADAPTER_FILE

    def prepare(self, peft_model: PeftModel, *, registry: Any, base_model_name_or_path: str | None,
                plugin_modules: Sequence[str] = ()) -> ExportFiles:
        unsupported = unrepresentable(peft_model, registry)
        state = peft_model.trainable_state_dict()

        def write(path: Path) -> None:
            save_tensors(state, path / ADAPTER_FILE,
                         {"format": "pt", "bipeft_format": "bipeft", "bipeft_version": version()})

        return ExportFiles(write=write, weights=ADAPTER_FILE, unsupported=unsupported)
