"""Exporting a trained :class:`~bipeft_core.structure.PeftModel`, and loading it back.

The exporter knows no format's files: each format is an
:class:`~bipeft_core.interfaces.ExportFormat` registered through
``bipeft_register_export_formats`` (docs/export.md describes the built-in
ones file by file):

* ``"bipeft"``: bipeft's own format, for every structure (full fine-tuning
  included), the core's (:class:`~bipeft_core.formats.BipeftFormat`).
* ``"peft"``: Hugging Face ``peft``'s own native adapter, for structures
  whose every module has a native peft form (``bipeft_plugins.exports``).
* ``"peft-bipeft"``: a peft adapter of the peft method ``BIPEFT`` that
  bipeft registers with peft (:mod:`bipeft_core.peft_tuner`), for any
  structure of PEFT modules.
* ``"merged"``: every module folded into the backbone's own weights, saved
  as a plain transformers model.
* ``"auto"`` (the default): the format with the highest
  :attr:`~bipeft_core.interfaces.ExportFormat.auto_preference` that holds
  the structure (with the built-ins: ``peft``, else ``peft-bipeft``, else
  ``bipeft``); :func:`choose_format` says which and why.

The exporter owns what every folder holds: ``structure.json``, the
tokenizer's files when given, a model card (``README.md``) and, written
last, ``export.json`` with the checksums, so :func:`load_peft` rebuilds
bipeft's own model from any format that reads back.

Every function takes ``plugins`` (a :class:`~bipeft_core.plugins.Plugins`,
or a PEFT-module registry whose formats then come from
:func:`~bipeft_core.plugins.default_plugins`; default: the latter's).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bipeft_core.errors import BipeftError, StructureError, UnknownNameError
from bipeft_core.formats import (
    CARD_FILE,
    EXPORT_FILE,
    PEFT_CONFIG_FILE,
    STRUCTURE_FILE,
    check_peft_model,
    load_tensors,
    sha256,
    task_type_of,
    version,
)
from bipeft_core.interfaces import ExportFormat
from bipeft_core.merge import merge_modules
from bipeft_core.structure import PeftModel, Structure

__all__ = ["choose_format", "export", "export_bipeft", "export_merged", "export_peft", "export_peft_bipeft",
           "format_names", "load_peft", "merge_modules", "merge_refusal", "peft_refusal", "task_type_of",
           "write_card"]

EXPORT_VERSION = 2

_ALL_FILES = (EXPORT_FILE, STRUCTURE_FILE, "adapter.safetensors", PEFT_CONFIG_FILE, "adapter_model.safetensors",
              CARD_FILE, "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
              "merges.txt", "spiece.model", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
              "sentencepiece.bpe.model")


# -- plugins -----------------------------------------------------------------------------------


def _plugins_of(plugins: Any) -> tuple[Any, Any]:
    """The export-format registry and the PEFT-module registry of ``plugins``."""
    if plugins is None or not hasattr(plugins, "export_formats"):
        from bipeft_core.plugins import default_plugins

        defaults = default_plugins()
        return defaults.export_formats, (defaults.peft_modules if plugins is None
                                         else getattr(plugins, "peft_modules", plugins))
    return plugins.export_formats, plugins.peft_modules


def _format(name: str, plugins: Any) -> ExportFormat:
    formats, _ = _plugins_of(plugins)
    try:
        return formats.get(str(name).lower())
    except UnknownNameError:
        raise BipeftError(f"unknown export format {name!r}; use one of {', '.join(format_names(plugins))} "
                          "(an export-format plugin adds more)") from None


def format_names(plugins: Any = None) -> list[str]:
    """The formats ``export`` takes: ``auto`` and every registered one."""
    formats, _ = _plugins_of(plugins)
    return ["auto", *formats.names()]


def _auto_order(plugins: Any) -> list[ExportFormat]:
    formats, _ = _plugins_of(plugins)
    found = [formats.get(n) for n in formats.names()]
    return sorted((f for f in found if f.auto_preference is not None), key=lambda f: -int(f.auto_preference or 0))


# -- writing -------------------------------------------------------------------------------------


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


def _yaml_value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def write_card(path: Path, fmt: str, peft_model: PeftModel, base_model_name_or_path: str | None,
               card: Mapping[str, Any] | None, plugins: Any = None) -> None:
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
    writer = _format(fmt, plugins)
    library = writer.library_name
    types = sorted({e.spec.type for e in structure.entries})
    tags = ["bipeft", *writer.card_tags, *types]
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
    lines += ["## Loading", "", "```python", *writer.loading_snippet(peft_model.model), "```", ""]
    lines += ["## Structure", "", "```", structure_table(structure, budget), "```", ""]
    search = card.get("search")
    if search:
        lines += ["## Search settings", "", "| setting | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in search.items()]
        lines.append("")
    if card.get("resolved_base_model") and card.get("resolved_base_model") != base_model_name_or_path:
        lines += [f"The run loaded the base model from `{card['resolved_base_model']}`.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _write_export_json(path: Path, fmt: str, peft_model: PeftModel, unsupported: list[str], *,
                       weights: str, base_model_name_or_path: str | None,
                       extra: Mapping[str, Any] | None = None, resolved: str | None = None) -> None:
    model = peft_model.model
    data = {
        "format": fmt,
        "version": EXPORT_VERSION,
        "bipeft_version": version(),
        "model_class": type(model).__name__,
        "model_type": getattr(getattr(model, "config", None), "model_type", None),
        "base_model_name_or_path": base_model_name_or_path,
        "resolved_base_model": resolved,
        "modules_by_type": dict(Counter(e.spec.type for e in peft_model.structure.entries)),
        "full_fine_tuning": peft_model.structure.full,
        "head_parameters": list(peft_model.head_names),
        "peft_cannot_represent": unsupported,
        "files": {name: sha256(path / name) for name in (STRUCTURE_FILE, weights)},
        **dict(extra or {}),
    }
    # Written last: a folder without it is an interrupted export.
    (path / EXPORT_FILE).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def export(peft_model: PeftModel, path: str | Path, format: str = "auto", *,
           base_model_name_or_path: str | None = None, overwrite: bool = False, plugins: Any = None,
           tokenizer: Any = None, card: Mapping[str, Any] | None = None, plugin_modules: Sequence[str] = ()) -> Path:
    """Export ``peft_model`` to the folder ``path`` in ``format``: ``"auto"``
    (the default; :func:`choose_format` picks) or a registered format's name
    (built-in: ``"peft"``, ``"peft-bipeft"``, ``"merged"``, ``"bipeft"``).
    The format checks and builds its files before the folder is touched, so
    a refused export writes nothing. ``overwrite``: replace an earlier
    export in a non-empty folder; ``tokenizer``: saved with the export;
    ``card``: what the model card says about the run (:func:`write_card`);
    ``plugin_modules``: third-party plugin modules formats may record
    (``peft-bipeft`` does)."""
    peft_model = check_peft_model(peft_model)
    fmt = str(format).lower()
    if fmt == "auto":
        fmt, _ = choose_format(peft_model, plugins)
    writer = _format(fmt, plugins)
    _, registry = _plugins_of(plugins)
    files = writer.prepare(peft_model, registry=registry, base_model_name_or_path=base_model_name_or_path,
                           plugin_modules=plugin_modules)
    path = _prepare_folder(path, overwrite)
    weights = files.write(path) or files.weights
    peft_model.structure.save(path / STRUCTURE_FILE)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    write_card(path / CARD_FILE, writer.name, peft_model, base_model_name_or_path, card, plugins=plugins)
    _write_export_json(path, writer.name, peft_model, list(files.unsupported), weights=weights,
                       base_model_name_or_path=base_model_name_or_path, extra=files.extra,
                       resolved=(card or {}).get("resolved_base_model"))
    return path


def export_bipeft(peft_model: PeftModel, path: str | Path, **kwargs: Any) -> Path:
    """:func:`export` in bipeft's own format."""
    return export(peft_model, path, "bipeft", **kwargs)


def export_peft(peft_model: PeftModel, path: str | Path, **kwargs: Any) -> Path:
    """:func:`export` as a native Hugging Face ``peft`` adapter."""
    return export(peft_model, path, "peft", **kwargs)


def export_peft_bipeft(peft_model: PeftModel, path: str | Path, **kwargs: Any) -> Path:
    """:func:`export` as a peft adapter of bipeft's peft method ``BIPEFT``."""
    return export(peft_model, path, "peft-bipeft", **kwargs)


def export_merged(peft_model: PeftModel, path: str | Path, **kwargs: Any) -> Path:
    """:func:`export` with every module folded into a plain transformers model."""
    return export(peft_model, path, "merged", **kwargs)


def format_refusal(peft_model: PeftModel, format: str, plugins: Any = None) -> str | None:
    """Why ``format`` cannot hold ``peft_model``'s structure, or ``None``."""
    _, registry = _plugins_of(plugins)
    return _format(format, plugins).refusal(check_peft_model(peft_model), registry)


def peft_refusal(peft_model: PeftModel, plugins: Any = None) -> str | None:
    """Why native peft cannot hold ``peft_model``'s structure, or ``None``."""
    return format_refusal(peft_model, "peft", plugins)


def merge_refusal(peft_model: PeftModel, plugins: Any = None) -> str | None:
    """Why ``peft_model``'s structure cannot be merged into its backbone
    (the modules that cannot be folded, each with its reason), or ``None``."""
    return format_refusal(peft_model, "merged", plugins)


def choose_format(peft_model: PeftModel, plugins: Any = None) -> tuple[str, str | None]:
    """The format ``format="auto"`` writes, and why the most preferred
    format (with the built-ins: native ``peft``) cannot hold the structure
    (``None`` when it is the one chosen): the registered formats are tried
    from the highest :attr:`~bipeft_core.interfaces.ExportFormat.auto_preference`."""
    peft_model = check_peft_model(peft_model)
    _, registry = _plugins_of(plugins)
    why: str | None = None
    for writer in _auto_order(plugins):
        refused = writer.refusal(peft_model, registry)
        if refused is None:
            return writer.name, why
        why = why or refused
    return "bipeft", why


# -- loading ------------------------------------------------------------------------------------


def _read_export_json(path: Path) -> dict[str, Any]:
    f = path / EXPORT_FILE
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise StructureError(f"{str(f)!r} is not valid JSON ({exc}); the export is corrupt, export again") from None
    if not isinstance(data, dict) or not isinstance(data.get("format"), str) or data["format"] == "auto":
        raise StructureError(f"{str(f)!r} is not a bipeft export description (it names no format); the file "
                             "was edited or is corrupt")
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
        if sha256(p) != digest:
            raise StructureError(f"{str(p)!r} does not match the checksum in export.json; it was changed "
                                 "or is corrupt, export again")
    return data


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
    """Load an export written by :func:`export` onto ``model``, a fresh
    backbone of the same architecture and base weights.

    Builds the saved structure on ``model`` with the module types of
    ``plugins``, then loads the weights through the export's format
    (:meth:`~bipeft_core.interfaces.ExportFormat.to_trainable_state`), and
    returns bipeft's :class:`PeftModel`. A folder written by peft itself (no
    ``export.json``) is refused with a pointer to
    ``peft.PeftModel.from_pretrained``; so is a format that does not read
    back (``merged``), with how to load it.
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
    formats, registry = _plugins_of(plugins)
    if info["format"] not in formats:
        raise StructureError(f"{str(path)!r} is in the export format {info['format']!r}, which no loaded plugin "
                             f"provides (known: {', '.join(formats.names())}); install or pass the plugin that "
                             "wrote it")
    reader = formats.get(info["format"])
    if reader.weights_file is None:
        raise StructureError(f"{str(path)!r} is a {reader.name} export: {reader.load_hint}")
    structure = Structure.load(path / STRUCTURE_FILE)
    weights = path / reader.weights_file
    state = load_tensors(weights)
    pm = structure.build(model, registry)
    try:
        state = reader.to_trainable_state(state, pm, registry)
        _check_state(state, pm, weights)
        pm.load_trainable_state_dict(state)
    except BaseException:
        pm.detach_hooks()
        raise
    return pm
