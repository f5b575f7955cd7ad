"""Hugging Face peft's own adapter format (``format="peft"``).

For structures whose every module has a native peft form (a ``LoraConfig``
for LoRA). The format knows no module type: it asks each kept module's type
for that form (:meth:`PeftModuleType.peft_export`, a
:class:`~bipeft_core.types.PeftExport`) and groups the records into one peft
config; a value that differs from module to module goes in the config's
pattern fields, under anchored full module names checked at export (with
peft's own matching rules) to select exactly their module. The task head
goes in ``modules_to_save`` and the config carries the peft ``task_type`` of
the model's class, so ``peft.PeftModel.from_pretrained`` and the
``AutoPeftModelFor...`` classes load the folder.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bipeft_core.errors import StructureError
from bipeft_core.formats import (
    PEFT_PREFIX,
    PEFT_WEIGHTS_FILE,
    auto_class_suffix,
    head_modules,
    import_peft,
    peft_records,
    save_tensors,
    task_type_of,
    unrepresentable,
)
from bipeft_core.interfaces import ExportFormat
from bipeft_core.structure import PeftModel, StructureEntry
from bipeft_core.types import ExportFiles, PeftExport

__all__ = ["PeftFormat", "peft_config", "verify_config"]


def _anchored(name: str) -> str:
    return "^" + re.escape(name) + "$"


def _pattern_matches(key: str, name: str) -> bool:
    """peft's ``get_pattern_key`` rule: the key matches a suffix of the name."""
    try:
        from peft.utils.other import get_pattern_key
    except ImportError:  # pragma: no cover - peft moved it; use its documented rule
        return re.match(rf"(.*\.)?({key})$", name) is not None
    return get_pattern_key([key], name) == key


def _is_target(config: Any, name: str) -> bool:
    """peft's ``check_target_module_exists``: does ``config`` wrap ``name``?"""
    try:
        from peft.tuners.tuners_utils import _ExcludedModule, check_target_module_exists
    except ImportError:  # pragma: no cover - peft moved it; use its documented rule
        if config.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in config.modules_to_save):
            return False
        return name in config.target_modules or any(name.endswith(f".{t}") for t in config.target_modules)
    found = check_target_module_exists(config, name)
    return bool(found) and not isinstance(found, _ExcludedModule)


def _config_class(peft: Any, peft_type: str, owner: str) -> Any:
    """peft's config class for the tuner type ``peft_type`` (asked for by
    module type ``owner``)."""
    try:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING as by_type
    except ImportError:  # pragma: no cover - peft moved it
        by_type = getattr(peft, "PEFT_TYPE_TO_CONFIG_MAPPING", {})
    member = getattr(peft.PeftType, peft_type, None)
    cls = by_type.get(member) if member is not None else None
    if cls is None:
        raise StructureError(
            f"module type {owner!r} asks for peft tuner type {peft_type!r}, which peft "
            f"{getattr(peft, '__version__', '?')} does not have; upgrade peft, or export with format='bipeft'"
        )
    return cls


def _wanted(records: Sequence[tuple[StructureEntry, PeftExport | None]]) -> dict[str, PeftExport]:
    """The records by target, checked to fit one peft config: one module per
    target, one tuner type, the same config fields."""
    wanted: dict[str, PeftExport] = {}
    owner: dict[str, StructureEntry] = {}
    for e, record in records:
        if record is None:  # the callers refuse such structures first; a guard, not a path
            raise StructureError(f"{e.spec.id} has no native peft form; export with format='bipeft'")
        if record.target in wanted:
            raise StructureError(f"two modules on {record.target!r} ({owner[record.target].spec.id} and "
                                 f"{e.spec.id}); a peft adapter holds one module per layer, export with "
                                 "format='bipeft'")
        wanted[record.target] = record
        owner[record.target] = e
    if not wanted:
        raise StructureError("the structure has no module; a peft adapter needs at least one, export with "
                             "format='bipeft'")
    first_target, first = next(iter(wanted.items()))
    for target, record in wanted.items():
        if record.peft_type != first.peft_type:
            raise StructureError(
                f"the structure's modules need two peft tuner types ({first.peft_type} for "
                f"{owner[first_target].spec.id}, {record.peft_type} for {owner[target].spec.id}); one peft "
                "adapter has one, export with format='bipeft'"
            )
        if list(record.config) != list(first.config) or record.patterns != first.patterns:
            raise StructureError(
                f"the peft {first.peft_type} fields of {owner[target].spec.id} ({list(record.config)}, "
                f"patterns {record.patterns}) differ from those of {owner[first_target].spec.id} "
                f"({list(first.config)}, patterns {first.patterns}); one peft config cannot describe both, "
                "export with format='bipeft'"
            )
    return wanted


def _config_values(wanted: Mapping[str, PeftExport]) -> dict[str, Any]:
    """The peft config's fields from the records (see
    :attr:`PeftExport.patterns`): for each field with a pattern, in order, the
    most common value among the modules that take every earlier default, and
    each other value in the pattern under the module's anchored name; every
    other field must be equal in all records."""
    records = list(wanted.values())
    first = records[0]
    values: dict[str, Any] = {}
    pool = records
    for field in first.patterns:
        values[field] = Counter(r.config[field] for r in pool).most_common(1)[0][0]
        pool = [r for r in pool if r.config[field] == values[field]]
    for field, pattern in first.patterns.items():
        values[pattern] = {_anchored(t): r.config[field] for t, r in wanted.items()
                           if r.config[field] != values[field]}
    for field, value in first.config.items():
        if field in first.patterns:
            continue
        other = next((r for r in records if r.config[field] != value), None)
        if other is not None:
            raise StructureError(
                f"the modules' peft {first.peft_type} field {field!r} differs ({value!r} on {first.target!r}, "
                f"{other.config[field]!r} on {other.target!r}); one peft config cannot describe both, "
                "export with format='bipeft'"
            )
        values[field] = value
    return values


def peft_config(peft: Any, peft_model: PeftModel, registry: Any,
                 base_model_name_or_path: str | None) -> tuple[Any, list[str], list[tuple[int, PeftExport]]]:
    """The peft config for ``peft_model``'s modules (each with a native peft
    form), checked against the model's module names with peft's matching
    rules; with the task-head modules, and each module's record by its
    number in the structure."""
    records = peft_records(peft_model, registry)
    wanted = _wanted(records)
    first = next(iter(wanted.values()))
    owner = next(e.spec.type for e, r in records if r is first)
    cls = _config_class(peft, first.peft_type, owner)
    model = peft_model.model
    heads = head_modules(model, peft_model.head_names)
    values = _config_values(wanted)
    try:
        config = cls(**values, target_modules=sorted(wanted), modules_to_save=heads or None,
                     base_model_name_or_path=base_model_name_or_path, task_type=task_type_of(model))
    except TypeError as exc:
        raise StructureError(f"peft's {cls.__name__} does not take the fields that module type {owner!r} "
                             f"gives ({exc}); fix the plugin's peft_export, or export with format='bipeft'"
                             ) from None
    verify_config(config, model, wanted, heads)
    return config, heads, [(i, r) for i, (_, r) in enumerate(records) if r is not None]


def verify_config(config: Any, model: nn.Module, wanted: Mapping[str, PeftExport],
                   heads: Sequence[str]) -> None:
    """Every pattern key selects exactly its module, the targets are exactly
    the modules' targets, and each target resolves to its own values, as peft
    will resolve them."""
    names = [n for n, _ in model.named_modules(remove_duplicate=False) if n]
    patterns = next(iter(wanted.values())).patterns if wanted else {}
    for pattern in patterns.values():
        for key in getattr(config, pattern) or {}:
            hits = [n for n in names if _pattern_matches(key, n)]
            if len(hits) != 1 or _anchored(hits[0]) != key:
                raise StructureError(f"peft pattern key {key!r} matches {hits[:5]}, not exactly one module; "
                                     "export with format='bipeft'")
    targets = sorted(n for n in names if _is_target(config, n))
    if targets != sorted(wanted):
        extra, lost = sorted(set(targets) - set(wanted)), sorted(set(wanted) - set(targets))
        raise StructureError(f"the peft config would also wrap {extra[:5]} and miss {lost[:5]}; "
                             "export with format='bipeft'")
    for name, record in wanted.items():
        for field, pattern in record.patterns.items():
            table = getattr(config, pattern) or {}
            key = next((k for k in table if _pattern_matches(k, name)), None)
            got = table[key] if key is not None else getattr(config, field)
            if got != record.config[field]:
                raise StructureError(f"the peft config gives {name!r} {field}={got!r}, not "
                                     f"{record.config[field]!r}; export with format='bipeft'")
    for head in heads:
        # peft wraps every module whose name ends with a modules_to_save entry.
        hits = [n for n in names if n.endswith(head)]
        if hits != [head]:
            raise StructureError(f"peft's modules_to_save entry {head!r} would wrap {hits[:5]}, not just "
                                 "the task head; export with format='bipeft'")


def _peft_state(peft_model: PeftModel, records: Sequence[tuple[int, PeftExport]]) -> dict[str, torch.Tensor]:
    """The weights in peft's key layout: each record's weights under
    ``base_model.model.<target>.<peft name>``, then the task head."""
    out: dict[str, torch.Tensor] = {}
    for i, record in records:
        own = peft_model.peft[i].state_dict()
        for peft_name, key in record.weights.items():
            if key not in own:
                raise StructureError(
                    f"module type {peft_model.structure.entries[i].spec.type!r} names weight {key!r} in its "
                    f"peft export, but its module has only {sorted(own)[:5]}; fix the plugin's peft_export"
                )
            out[f"{PEFT_PREFIX}{record.target}.{peft_name}"] = own[key].detach()
    params = dict(peft_model.model.named_parameters())
    for n in peft_model.head_names:
        out[f"{PEFT_PREFIX}{n}"] = params[n].detach()
    return out


def _from_peft_layout(state: Mapping[str, torch.Tensor], pm: PeftModel, registry: Any) -> dict[str, torch.Tensor]:
    """peft's key layout back to :meth:`PeftModel.trainable_state_dict`'s,
    through each module type's :class:`~bipeft_core.types.PeftExport` names."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    for i, (e, record) in enumerate(peft_records(pm, registry)):
        if record is None:
            raise StructureError(f"a peft-format export holds only modules with a native peft form, but its "
                                 f"structure.json has {e.spec.id}; the folder was edited or is corrupt")
        for peft_name, own in record.weights.items():
            key = f"{PEFT_PREFIX}{record.target}.{peft_name}"
            if key not in state:
                raise StructureError(f"the peft weights lack {key!r}; the folder was edited or is corrupt")
            out[f"peft.{i}.{own}"] = state.pop(key)
    for n in pm.head_names:
        key = f"{PEFT_PREFIX}{n}"
        if key in state:
            out[f"head.{n}"] = state.pop(key)
    if state:
        raise StructureError(f"the peft weights hold keys bipeft does not place: {sorted(state)[:5]}")
    return out


def loading_lines(model: nn.Module, first: Sequence[str] = ()) -> list[str]:
    """The model card's lines that load a peft adapter folder of ``model``'s task."""
    auto = auto_class_suffix(model)
    cls = f"AutoPeftModelFor{auto}" if auto else "AutoPeftModel"
    labels = getattr(getattr(model, "config", None), "num_labels", None)
    extra = f", num_labels={labels}" if task_type_of(model) in ("SEQ_CLS", "TOKEN_CLS") and labels else ""
    return [*first, f"from peft import {cls}", f'model = {cls}.from_pretrained("<this folder>"{extra})']


class PeftFormat(ExportFormat):
    """``format="peft"``: a native peft adapter (``adapter_config.json``,
    ``adapter_model.safetensors``), for structures whose every module has a
    native peft form; what ``format="auto"`` writes first when it can."""

    name = "peft"
    auto_preference = 30
    weights_file = PEFT_WEIGHTS_FILE

    def refusal(self, peft_model: PeftModel, registry: Any) -> str | None:
        unsupported = unrepresentable(peft_model, registry)
        if unsupported:
            return f"peft cannot represent its {', '.join(unsupported)}"
        try:
            import peft
        except ImportError:
            return "peft is not installed (pip install 'bipeft[peft]')"
        try:
            peft_config(peft, peft_model, registry, None)
        except StructureError as exc:
            return str(exc)
        return None

    def prepare(self, peft_model: PeftModel, *, registry: Any, base_model_name_or_path: str | None,
                plugin_modules: Sequence[str] = ()) -> ExportFiles:
        unsupported = unrepresentable(peft_model, registry)
        if unsupported:
            raise StructureError(
                f"peft cannot represent this structure's {', '.join(unsupported)} natively; only structures made "
                "of modules with a native peft form export to format='peft'. Export with format='peft-bipeft' "
                "(a peft adapter of bipeft's registered peft method) or format='auto'"
            )
        peft = import_peft()
        config, heads, records = peft_config(peft, peft_model, registry, base_model_name_or_path)
        state = _peft_state(peft_model, records)

        def write(path: Path) -> None:
            config.save_pretrained(str(path))
            save_tensors(state, path / PEFT_WEIGHTS_FILE, {"format": "pt"})

        return ExportFiles(write=write, weights=PEFT_WEIGHTS_FILE,
                           extra={"peft_version": getattr(peft, "__version__", "?"), "modules_to_save": heads,
                                  "peft_type": str(config.peft_type.value), "task_type": config.task_type})

    def to_trainable_state(self, state: Mapping[str, torch.Tensor], peft_model: PeftModel,
                           registry: Any) -> dict[str, torch.Tensor]:
        return _from_peft_layout(state, peft_model, registry)

    def loading_snippet(self, model: nn.Module) -> list[str]:
        return loading_lines(model)
