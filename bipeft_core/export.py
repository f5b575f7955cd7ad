"""Exporting a trained :class:`~bipeft_core.structure.PeftModel`, and loading it back.

Formats (``docs/export.md`` describes them file by file):

* ``"peft"``: Hugging Face ``peft``'s own native adapter (a ``LoraConfig``
  for LoRA), for structures whose every module has a native peft form. This
  module knows no module type: it asks each kept module's type for that
  form (:meth:`PeftModuleType.peft_export`, a
  :class:`~bipeft_core.types.PeftExport`) and groups the records into one
  peft config; a value that differs from module to module goes in the
  config's pattern fields, under anchored full module names checked at
  export (with peft's own matching rules) to select exactly their module.
* ``"peft-bipeft"``: a peft adapter of the peft method ``BIPEFT`` that
  bipeft registers with peft (:mod:`bipeft_core.peft_tuner`), for any
  structure of PEFT modules: peft loads it once ``bipeft_core`` is imported.
* ``"merged"``: every module folded into the backbone's own weights (each
  type says how, :meth:`PeftModuleType.merged_weights`), saved as a plain
  transformers model with no inference overhead.
* ``"bipeft"``: bipeft's own format, for every structure (full fine-tuning
  included): ``structure.json``, ``adapter.safetensors`` and ``export.json``.
* ``"auto"`` (the default): ``peft`` when it holds the structure exactly,
  else ``peft-bipeft``, else (full fine-tuning, or no peft installed)
  ``bipeft``; :func:`choose_format` says which and why.

The peft formats carry the task head in ``modules_to_save`` and the peft
``task_type`` of the model's class, so ``peft.PeftModel.from_pretrained``
and the ``AutoPeftModelFor...`` classes load them. Every folder holds
bipeft's ``structure.json`` and ``export.json``, so :func:`load_peft`
rebuilds bipeft's own model from any of them but ``merged``; given a
tokenizer, the folder also holds its files, and a model card
(``README.md``) describes the export.

Every function that needs the module types takes ``plugins`` (a
:class:`~bipeft_core.plugins.Plugins` or its PEFT-module registry; default
:func:`~bipeft_core.plugins.default_plugins`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from bipeft_core.errors import BipeftError, StructureError
from bipeft_core.merge import merge_modules, merge_records
from bipeft_core.structure import PeftModel, Structure, StructureEntry
from bipeft_core.types import PeftExport

__all__ = ["FORMATS", "choose_format", "export", "export_bipeft", "export_merged", "export_peft",
           "export_peft_bipeft", "load_peft", "merge_modules", "merge_refusal", "peft_refusal"]

FORMATS = ("auto", "peft", "peft-bipeft", "merged", "bipeft")
_WRITTEN_FORMATS = FORMATS[1:]
EXPORT_VERSION = 2

EXPORT_FILE = "export.json"
STRUCTURE_FILE = "structure.json"
ADAPTER_FILE = "adapter.safetensors"
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
CARD_FILE = "README.md"
_ALL_FILES = (EXPORT_FILE, STRUCTURE_FILE, ADAPTER_FILE, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, CARD_FILE,
              "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
              "merges.txt", "spiece.model", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
              "sentencepiece.bpe.model")

_PEFT_PREFIX = "base_model.model."
_TUNER_PREFIX = "base_model.bipeft.bipeft_modules."
_FULL_PART = "full fine-tuning (backbone weights)"


# -- helpers ---------------------------------------------------------------------------------


def _import_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise BipeftError(
            "exporting to the peft format needs the 'peft' package, which is not installed: "
            "pip install 'bipeft[peft]' (or export with format='bipeft', which needs nothing extra)"
        ) from None
    return peft


def _version() -> str:
    from bipeft_core._version import __version__

    return __version__


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _prepare_folder(path: str | Path, overwrite: bool) -> Path:
    """Create ``path``; refuse a non-empty folder unless ``overwrite`` (then
    remove only the files an export writes, so a stale file of the other
    format cannot mislead a loader)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BipeftError(f"cannot export to {str(path)!r}: it is a file, not a folder; give a folder path")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise BipeftError(
                f"export folder {str(path)!r} already exists and is not empty; give a new folder, "
                "or pass overwrite=True to replace an earlier export there"
            )
        for f in [*(path / name for name in _ALL_FILES), *path.glob("model-*-of-*.safetensors")]:
            if f.is_file():
                f.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save_file

    # safetensors refuses tensors that share memory; each gets its own copy.
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path),
              metadata=dict(metadata))


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
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


def _registry_of(plugins: Any) -> Any:
    if plugins is None:
        from bipeft_core.plugins import default_plugins

        plugins = default_plugins()
    return getattr(plugins, "peft_modules", plugins)


def _records(peft_model: PeftModel, registry: Any) -> list[tuple[StructureEntry, PeftExport | None]]:
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


def _unrepresentable(peft_model: PeftModel, registry: Any) -> list[str]:
    """What peft cannot hold: one item per module type without a native peft
    form (plus full fine-tuning)."""
    parts = sorted({e.spec.type for e, record in _records(peft_model, registry) if record is None})
    out = [f"{t} modules" for t in parts]
    if peft_model.structure.full:
        out.insert(0, _FULL_PART)
    return out


def peft_refusal(peft_model: PeftModel, plugins: Any = None) -> str | None:
    """Why the peft format cannot hold ``peft_model``'s structure (``None``
    when it can, as far as its module types go): what :func:`export` uses to
    choose a format when none is given."""
    unsupported = _unrepresentable(_check_peft_model(peft_model), _registry_of(plugins))
    if unsupported:
        return f"peft cannot represent its {', '.join(unsupported)}"
    try:
        import peft  # noqa: F401
    except ImportError:
        return "peft is not installed (pip install 'bipeft[peft]')"
    return None


def _check_peft_model(peft_model: Any) -> PeftModel:
    if not isinstance(peft_model, PeftModel):
        raise BipeftError(f"export needs a bipeft PeftModel (Structure.build(model, registry)), got "
                          f"{type(peft_model).__name__}")
    return peft_model


# -- the peft format --------------------------------------------------------------------------


def _head_modules(model: nn.Module, head_params: Sequence[str]) -> list[str]:
    """The shortest module names that hold only task-head parameters, covering
    every head parameter (``classifier``, ``bert.pooler``, ``score``)."""
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


def _peft_config(peft: Any, peft_model: PeftModel, registry: Any,
                 base_model_name_or_path: str | None) -> tuple[Any, list[str], list[tuple[int, PeftExport]]]:
    """The peft config for ``peft_model``'s modules (each with a native peft
    form), checked against the model's module names with peft's matching
    rules; with the task-head modules, and each module's record by its
    number in the structure."""
    records = _records(peft_model, registry)
    wanted = _wanted(records)
    first = next(iter(wanted.values()))
    owner = next(e.spec.type for e, r in records if r is first)
    cls = _config_class(peft, first.peft_type, owner)
    model = peft_model.model
    heads = _head_modules(model, peft_model.head_names)
    values = _config_values(wanted)
    try:
        config = cls(**values, target_modules=sorted(wanted), modules_to_save=heads or None,
                     base_model_name_or_path=base_model_name_or_path, task_type=task_type_of(model))
    except TypeError as exc:
        raise StructureError(f"peft's {cls.__name__} does not take the fields that module type {owner!r} "
                             f"gives ({exc}); fix the plugin's peft_export, or export with format='bipeft'"
                             ) from None
    _verify_config(config, model, wanted, heads)
    return config, heads, [(i, r) for i, (_, r) in enumerate(records) if r is not None]


def _verify_config(config: Any, model: nn.Module, wanted: Mapping[str, PeftExport],
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
            out[f"{_PEFT_PREFIX}{record.target}.{peft_name}"] = own[key].detach()
    params = dict(peft_model.model.named_parameters())
    for n in peft_model.head_names:
        out[f"{_PEFT_PREFIX}{n}"] = params[n].detach()
    return out


def export_peft(peft_model: PeftModel, path: str | Path, *, base_model_name_or_path: str | None = None,
                overwrite: bool = False, plugins: Any = None, tokenizer: Any = None,
                card: Mapping[str, Any] | None = None) -> Path:
    """Write ``peft_model`` as a native Hugging Face ``peft`` adapter.

    Only for structures whose every module has a native peft form (its
    type's :meth:`~bipeft_core.interfaces.PeftModuleType.peft_export`; else a
    :class:`StructureError` names the other module types). Writes
    ``adapter_config.json`` (with the task head in ``modules_to_save`` and
    the model's peft ``task_type``), ``adapter_model.safetensors``, bipeft's
    ``structure.json`` and ``export.json``, the model card ``README.md`` and,
    given a ``tokenizer``, its files. Load with
    ``peft.PeftModel.from_pretrained(base_model, path)``, an
    ``AutoPeftModelFor...`` class, or :func:`load_peft`. ``plugins``: where
    the module types come from (default
    :func:`~bipeft_core.plugins.default_plugins`); ``card``: what the model
    card says about the run (see :func:`write_card`).
    """
    peft_model = _check_peft_model(peft_model)
    structure = peft_model.structure
    registry = _registry_of(plugins)
    unsupported = _unrepresentable(peft_model, registry)
    if unsupported:
        raise StructureError(
            f"peft cannot represent this structure's {', '.join(unsupported)} natively; only structures made "
            "of modules with a native peft form export to format='peft'. Export with format='peft-bipeft' "
            "(a peft adapter of bipeft's registered peft method) or format='auto'"
        )
    peft = _import_peft()
    config, heads, records = _peft_config(peft, peft_model, registry, base_model_name_or_path)
    state = _peft_state(peft_model, records)  # before the folder: a plugin's wrong weight name writes nothing
    path = _prepare_folder(path, overwrite)
    config.save_pretrained(str(path))
    _save_tensors(state, path / PEFT_WEIGHTS_FILE, {"format": "pt"})
    structure.save(path / STRUCTURE_FILE)
    _finish(path, "peft", peft_model, [], weights=PEFT_WEIGHTS_FILE, base_model_name_or_path=base_model_name_or_path,
            tokenizer=tokenizer, card=card,
            extra={"peft_version": getattr(peft, "__version__", "?"), "modules_to_save": heads,
                   "peft_type": str(config.peft_type.value), "task_type": config.task_type})
    return path


# -- the peft-bipeft format: a peft adapter of bipeft's registered peft method -----------------


_TASK_TYPES = (("ForSequenceClassification", "SEQ_CLS"), ("ForTokenClassification", "TOKEN_CLS"),
               ("ForQuestionAnswering", "QUESTION_ANS"), ("ForCausalLM", "CAUSAL_LM"),
               ("ForConditionalGeneration", "SEQ_2_SEQ_LM"), ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"))


def task_type_of(model: nn.Module) -> str | None:
    """peft's ``task_type`` for ``model``'s class (``SEQ_CLS`` for a
    ``...ForSequenceClassification``, ``SEQ_2_SEQ_LM`` for T5's
    ``...ForConditionalGeneration``, ``CAUSAL_LM``, ...): what decides the
    ``AutoPeftModelFor...`` class that loads the export; ``None`` for a
    bare backbone (peft's plain ``PeftModel`` then)."""
    name = type(model).__name__
    return next((t for suffix, t in _TASK_TYPES if name.endswith(suffix)), None)


def _tuner_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The weights in the key layout peft writes for a ``BIPEFT`` adapter:
    module ``i``'s parameter ``p`` under ``base_model.bipeft.bipeft_modules.<i>.<p>``
    (peft drops the adapter name), the task head under
    ``base_model.model.<parameter name>``."""
    out = {f"{_TUNER_PREFIX}{k}": v.detach() for k, v in peft_model.peft.state_dict().items()}
    params = dict(peft_model.model.named_parameters())
    for n in peft_model.head_names:
        out[f"{_PEFT_PREFIX}{n}"] = params[n].detach()
    return out


def export_peft_bipeft(peft_model: PeftModel, path: str | Path, *, base_model_name_or_path: str | None = None,
                       overwrite: bool = False, plugins: Any = None, tokenizer: Any = None,
                       card: Mapping[str, Any] | None = None, plugin_modules: Sequence[str] = ()) -> Path:
    """Write ``peft_model`` as a peft adapter of bipeft's own peft method
    ``BIPEFT`` (:mod:`bipeft_core.peft_tuner`), for any structure of PEFT
    modules. ``peft.PeftModel.from_pretrained`` and the ``AutoPeftModelFor...``
    classes load it once ``bipeft_core`` is imported. ``plugin_modules``:
    import names of third-party plugin modules (not installed through the
    ``bipeft`` entry point) whose module types the structure uses; the
    config records them and the loader imports them. Full fine-tuning is
    refused (it is no adapter: use ``format='bipeft'`` or ``'merged'``)."""
    from bipeft_core.peft_tuner import BipeftTunerConfig

    peft_model = _check_peft_model(peft_model)
    structure = peft_model.structure
    if structure.full:
        raise StructureError("a full fine-tuning structure is no peft adapter; export it with format='merged' "
                             "(a plain transformers model) or format='bipeft'")
    peft = _import_peft()
    unsupported = _unrepresentable(peft_model, _registry_of(plugins))  # a malformed peft_export fails here
    model = peft_model.model
    heads = _head_modules(model, peft_model.head_names)
    sites = sorted({site for e in structure.entries for _, site in e.spec.sites})
    config = BipeftTunerConfig(structure=structure.to_dict(), modules_to_save=heads or None, target_modules=sites,
                               plugins=list(plugin_modules) or None, task_type=task_type_of(model),
                               base_model_name_or_path=base_model_name_or_path)
    state = _tuner_state(peft_model)
    path = _prepare_folder(path, overwrite)
    config.save_pretrained(str(path))
    _save_tensors(state, path / PEFT_WEIGHTS_FILE, {"format": "pt"})
    structure.save(path / STRUCTURE_FILE)
    _finish(path, "peft-bipeft", peft_model, unsupported,
            weights=PEFT_WEIGHTS_FILE, base_model_name_or_path=base_model_name_or_path, tokenizer=tokenizer,
            card=card, extra={"peft_version": getattr(peft, "__version__", "?"), "modules_to_save": heads,
                              "peft_type": "BIPEFT", "task_type": config.task_type})
    return path


# -- the merged format ------------------------------------------------------------------------


def merge_refusal(peft_model: PeftModel, plugins: Any = None) -> str | None:
    """Why ``peft_model``'s structure cannot be merged into its backbone
    (the modules that cannot be folded, each with its reason), or ``None``."""
    peft_model = _check_peft_model(peft_model)
    _, refused = merge_records(peft_model.model, list(peft_model.peft), _registry_of(plugins))
    if refused:
        return "these modules cannot be folded into the backbone's weights: " + "; ".join(refused)
    return None


def export_merged(peft_model: PeftModel, path: str | Path, *, base_model_name_or_path: str | None = None,
                  overwrite: bool = False, plugins: Any = None, tokenizer: Any = None,
                  card: Mapping[str, Any] | None = None) -> Path:
    """Fold every module into a copy of the backbone (each type's
    :meth:`~bipeft_core.interfaces.PeftModuleType.merged_weights`) and save
    it as a plain transformers model (``save_pretrained``, safetensors) with
    the trained task head: ``AutoModelFor...from_pretrained(path)`` loads it,
    with no inference overhead. ``peft_model`` is left as it was. Refused,
    naming the modules, when one cannot be folded (a nonlinear adapter, a
    prefix, a bias on a layer that has none)."""
    import copy

    peft_model = _check_peft_model(peft_model)
    registry = _registry_of(plugins)
    deltas, refused = merge_records(peft_model.model, list(peft_model.peft), registry)
    if refused:
        raise StructureError("cannot merge this structure: these modules cannot be folded into the backbone's "
                             f"weights: {'; '.join(refused)}; export with format='peft-bipeft' or "
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
    copies = {name: p for name, p in merged.named_parameters()}
    with torch.no_grad():
        for name, delta in deltas.items():
            copies[name].add_(delta.to(copies[name].dtype))
    for p in merged.parameters():
        p.requires_grad_(True)
    path = _prepare_folder(path, overwrite)
    cast(Any, merged).save_pretrained(str(path), safe_serialization=True)
    peft_model.structure.save(path / STRUCTURE_FILE)
    weights = "model.safetensors" if (path / "model.safetensors").is_file() else "config.json"
    _finish(path, "merged", peft_model, [], weights=weights, base_model_name_or_path=base_model_name_or_path,
            tokenizer=tokenizer, card=card, extra={"merged_modules": len(peft_model.peft)})
    return path


# -- the bipeft format, and what every format writes ------------------------------------------


def _finish(path: Path, fmt: str, peft_model: PeftModel, unsupported: list[str], *, weights: str,
            base_model_name_or_path: str | None, tokenizer: Any, card: Mapping[str, Any] | None,
            extra: Mapping[str, Any] | None = None) -> None:
    """The tokenizer files, the model card and, last, ``export.json``."""
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    write_card(path / CARD_FILE, fmt, peft_model, base_model_name_or_path, card)
    _write_export_json(path, fmt, peft_model, unsupported, weights=weights,
                       base_model_name_or_path=base_model_name_or_path, extra=extra,
                       resolved=(card or {}).get("resolved_base_model"))


def _yaml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def write_card(path: Path, fmt: str, peft_model: PeftModel, base_model_name_or_path: str | None,
               card: Mapping[str, Any] | None) -> None:
    """The model card ``README.md``: the Hugging Face metadata header
    (``base_model``, ``library_name``, ``tags``, the task and its metric
    as ``model-index`` results when known), then how to load the folder, the
    structure table, the budget and exact count, the search settings and the
    test metric. ``card`` (all optional): ``task`` (a name, e.g. ``stsb``),
    ``pipeline_tag``, ``metric`` (its name), ``metric_value`` (the test
    metric), ``budget`` (the parameter budget), ``search`` (a mapping of
    search settings), ``resolved_base_model`` (the path the run loaded)."""
    from bipeft_core.report import structure_table

    card = dict(card or {})
    structure = peft_model.structure
    library = "transformers" if fmt == "merged" else ("bipeft" if fmt == "bipeft" else "peft")
    types = sorted({e.spec.type for e in structure.entries})
    tags = ["bipeft", "peft", *types] if fmt != "merged" else ["bipeft", "merged", *types]
    task = card.get("task")
    if task:
        tags.append(str(task))
    head = ["---"]
    if base_model_name_or_path:
        head.append(f"base_model: {_yaml_value(base_model_name_or_path)}")
    head.append(f"library_name: {library}")
    if card.get("pipeline_tag"):
        head.append(f"pipeline_tag: {card['pipeline_tag']}")
    head.append("tags:")
    head += [f"- {_yaml_value(t)}" for t in tags]
    if task and card.get("metric") and card.get("metric_value") is not None:
        head += ["model-index:", f"- name: {_yaml_value(f'bipeft-{task}')}", "  results:",
                 "  - task:", f"      type: {_yaml_value(card.get('pipeline_tag') or 'text-classification')}",
                 "    dataset:", f"      name: {_yaml_value(str(task))}",
                 f"      type: {_yaml_value(str(task).split('/')[0])}",
                 *([f"      config: {_yaml_value(str(task).split('/', 1)[1])}"] if "/" in str(task) else []),
                 "    metrics:", f"    - type: {_yaml_value(str(card['metric']))}",
                 f"      value: {float(card['metric_value']):.6g}"]
    head.append("---")
    budget = card.get("budget", structure.budget)
    count = structure.count()
    lines = [*head, "", f"# bipeft structure{f' for {task}' if task else ''}", "",
             f"A parameter-efficient fine-tuning structure found by bipeft (format `{fmt}`), "
             f"{len(structure.entries)} modules of {', '.join(types) or 'no'} type(s), "
             f"{count:,} trainable parameters besides the task head"
             + (f" for a budget of {int(budget):,}" + (f" ({count / budget:.1%} used)" if budget else "")
                if budget is not None else "") + ".", ""]
    if card.get("metric") and card.get("metric_value") is not None:
        lines += [f"Test {card['metric']}: {float(card['metric_value']):.4f}", ""]
    lines += ["## Loading", "", "```python", *_loading_snippet(fmt, peft_model.model), "```", ""]
    lines += ["## Structure", "", "```", structure_table(structure, budget), "```", ""]
    search = card.get("search")
    if search:
        lines += ["## Search settings", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in search.items()]
        lines.append("")
    if card.get("resolved_base_model") and card.get("resolved_base_model") != base_model_name_or_path:
        lines += [f"The run loaded the base model from `{card['resolved_base_model']}`.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _loading_snippet(fmt: str, model: nn.Module) -> list[str]:
    task = task_type_of(model)
    auto = {"SEQ_CLS": "SequenceClassification", "TOKEN_CLS": "TokenClassification",
            "QUESTION_ANS": "QuestionAnswering", "CAUSAL_LM": "CausalLM", "SEQ_2_SEQ_LM": "Seq2SeqLM"}.get(task or "")
    if fmt == "merged":
        cls = f"AutoModelFor{auto}" if auto else "AutoModel"
        return [f"from transformers import {cls}", f'model = {cls}.from_pretrained("<this folder>")']
    if fmt == "bipeft":
        return ["from bipeft_core import load_peft",
                'model = load_peft(base_model, "<this folder>")  # base_model: the same architecture and weights']
    cls = f"AutoPeftModelFor{auto}" if auto else "AutoPeftModel"
    first = ["import bipeft_core  # registers bipeft's peft method"] if fmt == "peft-bipeft" else []
    labels = getattr(getattr(model, "config", None), "num_labels", None)
    extra = f", num_labels={labels}" if task in ("SEQ_CLS", "TOKEN_CLS") and labels else ""
    return [*first, f"from peft import {cls}", f'model = {cls}.from_pretrained("<this folder>"{extra})']


def _write_export_json(path: Path, fmt: str, peft_model: PeftModel, unsupported: list[str], *,
                       weights: str, base_model_name_or_path: str | None,
                       extra: Mapping[str, Any] | None = None, resolved: str | None = None) -> None:
    model = peft_model.model
    data = {
        "format": fmt,
        "version": EXPORT_VERSION,
        "bipeft_version": _version(),
        "model_class": type(model).__name__,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "base_model_name_or_path": base_model_name_or_path,
        "resolved_base_model": resolved,
        "modules_by_type": dict(Counter(e.spec.type for e in peft_model.structure.entries)),
        "full_fine_tuning": peft_model.structure.full,
        "head_parameters": list(peft_model.head_names),
        "peft_cannot_represent": unsupported,
        "files": {name: _sha256(path / name) for name in (STRUCTURE_FILE, weights)},
        **dict(extra or {}),
    }
    # Written last: a folder without it is an interrupted export.
    (path / EXPORT_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def export_bipeft(peft_model: PeftModel, path: str | Path, *, base_model_name_or_path: str | None = None,
                  overwrite: bool = False, plugins: Any = None, tokenizer: Any = None,
                  card: Mapping[str, Any] | None = None) -> Path:
    """Write ``peft_model`` in bipeft's own format (any structure):
    ``structure.json``, ``adapter.safetensors`` (module weights ``peft.<i>.*``,
    task head ``head.<name>``, backbone ``backbone.<name>`` for full
    fine-tuning), the model card, the tokenizer's files when given, and
    ``export.json`` (whose ``peft_cannot_represent`` asks the module types of
    ``plugins``). Load with :func:`load_peft`."""
    peft_model = _check_peft_model(peft_model)
    unsupported = _unrepresentable(peft_model, _registry_of(plugins))
    path = _prepare_folder(path, overwrite)
    peft_model.structure.save(path / STRUCTURE_FILE)
    _save_tensors(peft_model.trainable_state_dict(), path / ADAPTER_FILE,
                  {"format": "pt", "bipeft_format": "bipeft", "bipeft_version": _version()})
    _finish(path, "bipeft", peft_model, unsupported, weights=ADAPTER_FILE,
            base_model_name_or_path=base_model_name_or_path, tokenizer=tokenizer, card=card)
    return path


_WRITERS = {"peft": export_peft, "peft-bipeft": export_peft_bipeft, "merged": export_merged,
            "bipeft": export_bipeft}


def export(peft_model: PeftModel, path: str | Path, format: str = "auto", *,
           base_model_name_or_path: str | None = None, overwrite: bool = False, plugins: Any = None,
           tokenizer: Any = None, card: Mapping[str, Any] | None = None) -> Path:
    """Export in ``format``: ``"auto"`` (the default; :func:`choose_format`
    picks), ``"peft"``, ``"peft-bipeft"``, ``"merged"`` or ``"bipeft"``;
    see :func:`export_peft`, :func:`export_peft_bipeft`,
    :func:`export_merged` and :func:`export_bipeft`."""
    fmt = str(format).lower()
    if fmt == "auto":
        fmt, _ = choose_format(peft_model, plugins)
    if fmt not in _WRITERS:
        raise BipeftError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    return _WRITERS[fmt](peft_model, path, base_model_name_or_path=base_model_name_or_path,  # type: ignore[operator]
                         overwrite=overwrite, plugins=plugins, tokenizer=tokenizer, card=card)


def choose_format(peft_model: PeftModel, plugins: Any = None) -> tuple[str, str | None]:
    """The format ``format="auto"`` uses, and why not native peft
    (``None`` when native): ``"peft"`` when peft holds the structure exactly
    in a native config, else ``"peft-bipeft"`` (bipeft's registered peft
    method), else ``"bipeft"`` (full fine-tuning, or peft not installed)."""
    registry = _registry_of(plugins)
    why = peft_refusal(peft_model, registry)
    if why is None:
        peft = _import_peft()
        try:
            _peft_config(peft, peft_model, registry, None)
        except StructureError as exc:
            why = str(exc)
    if why is None:
        return "peft", None
    try:
        import peft  # noqa: F401
    except ImportError:
        return "bipeft", why
    if peft_model.structure.full:
        return "bipeft", why
    return "peft-bipeft", why


# -- loading ----------------------------------------------------------------------------------


def _read_export_json(path: Path) -> dict[str, Any]:
    f = path / EXPORT_FILE
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StructureError(f"{str(f)!r} is not valid JSON ({exc}); the export is corrupt, export again") from None
    if not isinstance(data, dict) or data.get("format") not in _WRITTEN_FORMATS:
        raise StructureError(f"{str(f)!r} is not a bipeft export description (its 'format' must be one of "
                             f"{list(_WRITTEN_FORMATS)}); the file was edited or is corrupt")
    version = data.get("version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise StructureError(f"export format version {version!r} in {str(f)!r} is not one this bipeft "
                             f"reads (up to {EXPORT_VERSION}); upgrade bipeft")
    files = data.get("files")
    if not isinstance(files, dict):
        raise StructureError(f"{str(f)!r} lists no files; the file was edited or is corrupt")
    for name, digest in files.items():
        p = path / str(name)
        if not p.is_file():
            raise StructureError(f"the export lacks {str(p)!r}; the folder is incomplete, export again")
        if _sha256(p) != digest:
            raise StructureError(f"{str(p)!r} does not match the checksum in export.json; it was changed "
                                 "or is corrupt, export again")
    return data


def _from_peft_layout(state: Mapping[str, torch.Tensor], pm: PeftModel, registry: Any) -> dict[str, torch.Tensor]:
    """peft's key layout back to :meth:`PeftModel.trainable_state_dict`'s,
    through each module type's :class:`~bipeft_core.types.PeftExport` names."""
    state = dict(state)
    out: dict[str, torch.Tensor] = {}
    for i, (e, record) in enumerate(_records(pm, registry)):
        if record is None:
            raise StructureError(f"a peft-format export holds only modules with a native peft form, but its "
                                 f"structure.json has {e.spec.id}; the folder was edited or is corrupt")
        for peft_name, own in record.weights.items():
            key = f"{_PEFT_PREFIX}{record.target}.{peft_name}"
            if key not in state:
                raise StructureError(f"the peft weights lack {key!r}; the folder was edited or is corrupt")
            out[f"peft.{i}.{own}"] = state.pop(key)
    for n in pm.head_names:
        key = f"{_PEFT_PREFIX}{n}"
        if key in state:
            out[f"head.{n}"] = state.pop(key)
    if state:
        raise StructureError(f"the peft weights hold keys bipeft does not place: {sorted(state)[:5]}")
    return out


def _from_tuner_layout(state: Mapping[str, torch.Tensor], pm: PeftModel) -> dict[str, torch.Tensor]:
    """The ``BIPEFT`` peft method's key layout (:func:`_tuner_state`) back to
    :meth:`PeftModel.trainable_state_dict`'s."""
    out: dict[str, torch.Tensor] = {}
    heads = {f"{_PEFT_PREFIX}{n}": n for n in pm.head_names}
    for key, v in state.items():
        if key.startswith(_TUNER_PREFIX):
            out["peft." + key[len(_TUNER_PREFIX):]] = v
        elif key in heads:
            out[f"head.{heads[key]}"] = v
        else:
            raise StructureError(f"the peft weights hold a key bipeft does not place: {key!r}; the folder was "
                                 "edited or is corrupt")
    return out


def _check_state(state: Mapping[str, torch.Tensor], pm: PeftModel, where: Path) -> None:
    expected = pm.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise StructureError(
            f"the weights in {str(where)!r} do not fit this model and structure (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}); was the export made from another model architecture?"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise StructureError(f"weight {k!r} in {str(where)!r} has shape {tuple(v.shape)} but this model "
                                 f"needs {tuple(expected[k].shape)}; the export belongs to another model size")


def load_peft(model: nn.Module, path: str | Path, plugins: Any = None) -> PeftModel:
    """Load an export written by :func:`export_bipeft` (or :func:`export_peft`)
    onto ``model``, a fresh backbone of the same architecture and base weights.

    Builds the saved structure on ``model`` with the module types of
    ``plugins`` (a :class:`~bipeft_core.plugins.Plugins` or a PEFT-module
    registry; default :func:`~bipeft_core.plugins.default_plugins`), then
    loads the weights, and returns bipeft's :class:`PeftModel`. A folder
    written by peft itself (no ``export.json``) is refused with a pointer to
    ``peft.PeftModel.from_pretrained``.
    """
    path = Path(path)
    if not path.is_dir():
        raise StructureError(f"export folder {str(path)!r} does not exist")
    if not (path / EXPORT_FILE).is_file():
        if (path / PEFT_CONFIG_FILE).is_file():
            raise StructureError(
                f"{str(path)!r} is a peft adapter folder without bipeft's export.json; load it with peft: "
                "peft.PeftModel.from_pretrained(model, path)"
            )
        raise StructureError(f"{str(path)!r} is not a bipeft export (no {EXPORT_FILE}); give a folder written "
                             "by bipeft_core.export(...), or export again if it was interrupted")
    info = _read_export_json(path)
    if info["format"] == "merged":
        raise StructureError(f"{str(path)!r} is a merged export: a plain transformers model with the modules "
                             "folded in; load it with transformers, e.g. "
                             "AutoModelForSequenceClassification.from_pretrained(path)")
    structure = Structure.load(path / STRUCTURE_FILE)
    weights = path / (ADAPTER_FILE if info["format"] == "bipeft" else PEFT_WEIGHTS_FILE)
    state = _load_tensors(weights)
    registry = _registry_of(plugins)
    pm = structure.build(model, registry)
    try:
        if info["format"] == "peft":
            state = _from_peft_layout(state, pm, registry)
        elif info["format"] == "peft-bipeft":
            state = _from_tuner_layout(state, pm)
        _check_state(state, pm, weights)
        pm.load_trainable_state_dict(state)
    except BaseException:
        pm.detach_hooks()
        raise
    return pm
