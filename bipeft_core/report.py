"""Reading search results back, and showing them as text.

``bipeft show`` uses this module. It rebuilds a :class:`~bipeft_core.SearchResult`
from the JSON that :meth:`SearchResult.to_dict` writes (``search_result.json``
in a run folder), and prints the structure as a layer × module-type table
(:func:`structure_table`, written with the result's summary line by
:func:`write_text_report`). :func:`structure_layout` is the layer and column
order that the table and the heatmap share.

The plots live in :mod:`bipeft_core.plots`, the one module that imports
matplotlib (an optional extra); this module needs nothing beyond bipeft's own
dependencies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bipeft_core.budget import format_count
from bipeft_core.errors import BipeftError, StructureError, read_text_file
from bipeft_core.state import SearchResult, TriggerEvent
from bipeft_core.structure import Structure, StructureEntry
from bipeft_core.targets import ROLES

__all__ = [
    "RESULT_FILE",
    "STRUCTURE_TEXT",
    "ReportError",
    "ResultFileError",
    "ResultNotFoundError",
    "StructureLayout",
    "load_result",
    "result_from_dict",
    "structure_layout",
    "structure_table",
    "summary_lines",
    "write_text_report",
]

RESULT_FILE = "search_result.json"
STRUCTURE_TEXT = "structure.txt"


class ReportError(BipeftError):
    """Base class of the errors of reading and showing results (this module
    and :mod:`bipeft_core.plots`)."""


class ResultFileError(ReportError, ValueError):
    """A search result file (or dict) that is not valid JSON or not a search result."""


class ResultNotFoundError(ReportError, FileNotFoundError):
    """A search result file that does not exist."""

    def __str__(self) -> str:  # FileNotFoundError would format (errno, strerror)
        return str(self.args[0]) if self.args else ""


# -- layout shared by the table and the heatmap ---------------------------------------------------


def _site_suffix(entry: StructureEntry) -> str:
    """The entry's site name below its layer (``attention.output.LayerNorm`` for
    ``bert.encoder.layer.0.attention.output.LayerNorm`` in ``encoder.layer.0``);
    empty for whole-block modules and for sites that are their own layer."""
    spec = entry.spec
    if spec.position == "block" or not spec.sites:
        return ""
    sites = dict(spec.sites)
    site = sites.get("target", next(iter(sites.values())))
    comps, layer = site.split("."), spec.layer.split(".")
    n = len(layer)
    for i in range(len(comps) - n, -1, -1):
        if comps[i:i + n] == layer:
            return ".".join(comps[i + n:])
    return site


def _distinguishing(suffix: str, others: Sequence[str]) -> str:
    """The shortest run of leading or trailing name components of ``suffix``
    that no other suffix of the group shares (leading preferred on a tie)."""
    comps = suffix.split(".")
    rest = [o.split(".") for o in others if o != suffix]
    for k in range(1, len(comps) + 1):
        if all(o[:k] != comps[:k] for o in rest):
            return ".".join(comps[:k])
        if all(o[-k:] != comps[-k:] for o in rest):
            return ".".join(comps[-k:])
    return suffix


def _role_rank(position: str) -> tuple[int, str]:
    if position in ROLES:
        return (ROLES.index(position), position)
    if position == "block":
        return (len(ROLES) + 1, position)
    return (len(ROLES), position)


@attrs.frozen
class StructureLayout:
    """Where each kept module of a structure goes in the table and the
    heatmap: rows (layers), column groups (types) and columns."""

    layers: tuple[str, ...]
    """Layers in model order (by the smallest module index in each)."""
    types: tuple[str, ...]
    columns: tuple[tuple[str, str, str], ...]
    """(type, position, site suffix) in display order."""
    labels: dict[tuple[str, str, str], str]
    """Column → position label (``norm(attention)`` where a type has several
    sites with one position; ``block`` for whole-block modules)."""
    slot_of: dict[int, tuple[str, str, str]]
    """Entry number → its column."""


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that puts ``layer.2`` before ``layer.10``."""
    return tuple((0, int(c)) if c.isdigit() else (1, c) for c in text.split("."))


def structure_layout(structure: Structure) -> StructureLayout:
    """The rows and columns that :func:`structure_table` and
    :func:`bipeft_core.plots.plot_structure` share: layers in model order,
    columns per (type, position), split by site where one position has two
    sites in a layer (two norms in a block)."""
    entries = sorted(enumerate(structure.entries), key=lambda t: (t[1].spec.index, t[0]))
    first: dict[str, int] = {}
    for n, e in entries:
        first.setdefault(e.spec.layer, n)
    layers = tuple(sorted(first, key=lambda layer: first[layer]))
    suffix = {n: _site_suffix(e) for n, e in entries}
    # Per position: the sites below the layer, in their order in each layer. A position
    # that has two sites in one layer (two norms in a block) gets one column per site,
    # for every module type; otherwise one column, whatever the sites are called.
    per_layer: dict[str, dict[str, list[str]]] = {}
    for n, e in entries:
        seq = per_layer.setdefault(e.spec.position, {}).setdefault(e.spec.layer, [])
        if suffix[n] not in seq:
            seq.append(suffix[n])
    short: dict[str, dict[str, str]] = {}
    rank: dict[str, dict[str, int]] = {}
    for p, layer_sites in per_layer.items():
        if all(len(v) == 1 for v in layer_sites.values()):
            continue
        names = sorted({s for v in layer_sites.values() for s in v}, key=_natural)

        def before(a: str, b: str, layer_sites: dict[str, list[str]] = layer_sites) -> int:
            return sum(1 if v.index(a) < v.index(b) else -1 for v in layer_sites.values() if a in v and b in v)

        # model order where two sites share layers (by majority), else by name; the
        # unqualified site (a layer of its own, like a final norm) first
        def order(s: str, all_: tuple[str, ...] = tuple(names)) -> tuple[bool, int, tuple[tuple[int, int | str], ...]]:
            return (s != "", sum(1 for o in all_ if o != s and before(o, s) > 0)
                    - sum(1 for o in all_ if o != s and before(s, o) > 0), _natural(s))

        names = sorted(names, key=order)
        named = [s for s in names if s]
        labels_p = {s: _distinguishing(s, named) for s in named}
        if len(set(labels_p.values())) < len(labels_p):
            labels_p = {s: s for s in named}
        short[p] = {s: f"{p}({labels_p[s]})" if s else p for s in names}
        rank[p] = {s: i for i, s in enumerate(names)}
    slot_of = {n: (e.spec.type, e.spec.position, suffix[n] if e.spec.position in short else "")
               for n, e in entries}
    types = tuple(sorted({e.spec.type for _, e in entries}))
    used = set(slot_of.values())
    columns = tuple(sorted(used, key=lambda c: (types.index(c[0]), _role_rank(c[1]),
                                                rank.get(c[1], {}).get(c[2], 0))))
    labels = {c: short[c[1]][c[2]] if c[1] in short else c[1] for c in columns}
    return StructureLayout(layers=layers, types=types, columns=columns, labels=labels, slot_of=slot_of)


def _budget_line(count: int, budget: int | None, backbone: int | None) -> str:
    line = f"{format_count(count)} parameters"
    if budget:
        diff = budget - count
        how = f"{format_count(diff)} under" if diff >= 0 else f"OVER by {format_count(-diff)}"
        line += f" of a budget of {format_count(budget)} ({100 * count / budget:.1f}%, {how})"
    if backbone:
        line += f"; {1e4 * count / backbone:.3f}bp of the backbone's {format_count(backbone)}"
    return line


# -- the table ------------------------------------------------------------------------------------


def structure_table(structure: Structure, budget: int | None = None) -> str:
    """The structure as a text table: one row per layer (model order), one column
    per module type; a cell lists the kept modules of that type in that layer as
    ``position@rank`` (matrix modules) or ``position`` (vector modules, which
    have no rank; ``on`` for a whole-block vector module). Per-layer module and
    parameter totals close each row, per-type totals close each column, and the
    head line gives the exact count against the budget (``budget``, else the
    structure's own)."""
    budget = budget if budget is not None else structure.budget
    if structure.full:
        return ("full fine-tuning: no PEFT modules, every backbone parameter trains\n"
                + _budget_line(structure.count(), budget, structure.backbone_params))
    head = f"{len(structure.entries)} modules, " + _budget_line(structure.count(), budget,
                                                                 structure.backbone_params)
    if not structure.entries:
        return head + "\n(no module is kept)"
    lay = structure_layout(structure)
    col_index = {c: i for i, c in enumerate(lay.columns)}
    cells: dict[tuple[str, str], list[tuple[int, str]]] = {}
    layer_params: dict[str, int] = dict.fromkeys(lay.layers, 0)
    layer_modules: dict[str, int] = dict.fromkeys(lay.layers, 0)
    type_params: dict[str, int] = dict.fromkeys(lay.types, 0)
    type_modules: dict[str, int] = dict.fromkeys(lay.types, 0)
    for n, e in enumerate(structure.entries):
        col = lay.slot_of[n]
        label = lay.labels[col] if e.spec.position != "block" else ""
        text = f"{label}@{e.rank}" if e.rank is not None else (label or "on")
        cells.setdefault((e.spec.layer, e.spec.type), []).append((col_index[col], text))
        layer_params[e.spec.layer] += e.count
        layer_modules[e.spec.layer] += 1
        type_params[e.spec.type] += e.count
        type_modules[e.spec.type] += 1
    rows = [["layer", *lay.types, "modules", "params"]]
    for layer in lay.layers:
        row = [layer]
        for t in lay.types:
            items = sorted(cells.get((layer, t), []))
            row.append(" ".join(text for _, text in items) or "-")
        rows.append([*row, str(layer_modules[layer]), format_count(layer_params[layer])])
    rows.append(["modules", *[str(type_modules[t]) for t in lay.types], str(len(structure.entries)), ""])
    rows.append(["params", *[format_count(type_params[t]) for t in lay.types], "",
                 format_count(structure.count())])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    numeric = {len(widths) - 2, len(widths) - 1}

    def fmt(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [head, fmt(rows[0]), rule, *(fmt(r) for r in rows[1:-2]), rule, fmt(rows[-2]), fmt(rows[-1])]
    ranks = sorted({e.rank for e in structure.entries if e.rank is not None})
    if ranks:
        lines.append("@r: rank r of a matrix module; a position without @: a vector module (no rank)")
    return "\n".join(lines)


# -- reading results back -------------------------------------------------------------------------


def _need(d: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ResultFileError(f"{where}: no {key!r}; the file is not a complete bipeft search result "
                              "(truncated or edited?)")
    value = d[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    bad_bool = isinstance(value, bool) and bool not in kinds
    if bad_bool or not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ResultFileError(f"{where}: {key!r} is {value!r}, expected {names}; the file was edited or is corrupt")
    return value


def _event_from_dict(d: Any, i: int) -> TriggerEvent:
    where = f"search result trace[{i}]"
    if not isinstance(d, Mapping):
        raise ResultFileError(f"{where} is {type(d).__name__}, not an object; the file was edited or is corrupt")
    num = (int, float)
    pruned_list, fixed_list = _need(d, "pruned", list, where), _need(d, "fixed", list, where)
    try:
        pruned = tuple(str(x) for x in pruned_list)
        fixed = tuple((str(x[0]), int(x[1])) for x in fixed_list)
    except (TypeError, ValueError, IndexError, KeyError):
        raise ResultFileError(f"{where}: 'pruned' must list module ids and 'fixed' [id, rank] pairs; "
                              "the file was edited or is corrupt") from None
    sensitivity = _need(d, "sensitivity", dict, where)
    if not all(isinstance(v, num) and not isinstance(v, bool) for v in sensitivity.values()):
        raise ResultFileError(f"{where}: 'sensitivity' must map names to numbers; the file was edited or is corrupt")
    return TriggerEvent(
        index=_need(d, "index", int, where), step=_need(d, "step", int, where),
        epoch=float(_need(d, "epoch", num, where)), pruned=pruned, fixed=fixed,
        expected_size=float(_need(d, "expected_size", num, where)), delta=float(_need(d, "delta", num, where)),
        triggers_left=_need(d, "triggers_left", int, where),
        remaining_modules=_need(d, "remaining_modules", int, where),
        sensitivity={str(k): float(v) for k, v in sensitivity.items()},
        wall_time=float(_need(d, "wall_time", num, where)),
    )


def result_from_dict(d: Mapping[str, Any], *, source: str = "search result") -> SearchResult:
    """Rebuild a :class:`SearchResult` (with its :class:`Structure` and
    :class:`TriggerEvent` trace) from :meth:`SearchResult.to_dict` output.
    ``source`` names the input in error messages. Raises
    :class:`ResultFileError` when ``d`` is not a complete, consistent result."""
    where = source
    if not isinstance(d, Mapping):
        raise ResultFileError(f"{where} is a JSON {type(d).__name__}, not an object; give the "
                              f"{RESULT_FILE} that a bipeft search wrote")
    if d.get("format") == "bipeft-structure":
        raise ResultFileError(f"{where} is a structure (structure.json), not a search result; give the "
                              f"{RESULT_FILE} beside it, or the run folder")
    missing = [k for k in ("strategy", "count", "budget", "backbone_params", "structure") if k not in d]
    if missing:
        raise ResultFileError(f"{where} has no {', '.join(repr(k) for k in missing)}: it is not a bipeft search "
                              f"result (give the {RESULT_FILE} of a run folder) or it is truncated")
    num = (int, float)
    try:
        structure = Structure.from_dict(_need(d, "structure", dict, where))
    except StructureError as exc:
        raise ResultFileError(f"{where}: its structure is invalid: {exc}") from None
    count = _need(d, "count", int, where)
    budget = _need(d, "budget", int, where)
    if count != structure.count():
        raise ResultFileError(f"{where}: 'count' is {count:,} but the structure's modules add up to "
                              f"{structure.count():,}; the file was edited or is corrupt")
    trace = _need(d, "trace", list, where) if "trace" in d else []
    history = _need(d, "history", list, where) if "history" in d else []
    for i, row in enumerate(history):
        if not isinstance(row, Mapping):
            raise ResultFileError(f"{where}: history[{i}] is {type(row).__name__}, not an object; "
                                  "the file was edited or is corrupt")

    def opt(key: str, kinds: type | tuple[type, ...], default: Any) -> Any:
        return _need(d, key, kinds, where) if key in d else default

    return SearchResult(
        structure=structure, count=count, budget=budget,
        backbone_params=_need(d, "backbone_params", int, where), strategy=_need(d, "strategy", str, where),
        trace=tuple(_event_from_dict(e, i) for i, e in enumerate(trace)),
        wall_time=float(opt("wall_time", num, 0.0)), steps=opt("steps", int, 0),
        budget_met=opt("budget_met", bool, count <= budget), repaired=opt("repaired", bool, False),
        repair_log=tuple(str(x) for x in opt("repair_log", list, [])),
        refill_log=tuple(str(x) for x in opt("refill_log", list, [])),
        notes=tuple(str(x) for x in opt("notes", list, [])),
        history=tuple(dict(row) for row in history), extra=dict(opt("extra", dict, {})),
    )


def load_result(path: str | Path) -> SearchResult:
    """Read a search result written as ``json.dumps(result.to_dict())``; a run
    folder stands for its ``search_result.json``. Raises
    :class:`ResultNotFoundError` when there is no such file and
    :class:`ResultFileError` when it is not valid JSON or not a search result."""
    path = Path(path)
    if path.is_dir():
        folder, path = path, path / RESULT_FILE
        if not path.is_file():
            raise ResultNotFoundError(f"folder {str(folder)!r} has no {RESULT_FILE}; give a run folder whose "
                                      "search has finished, or the result file itself")
    if not path.exists():
        raise ResultNotFoundError(f"search result file {str(path)!r} does not exist")
    text = read_text_file(path, what="search result file", error=ResultFileError,
                          fix=f"give the {RESULT_FILE} that a bipeft search wrote, or its run folder")
    if not text.strip():
        raise ResultFileError(f"search result file {str(path)!r} is empty; the search was interrupted while "
                              "writing it, or the file is corrupt")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"search result file {str(path)!r} is not valid JSON ({exc}); "
                              "the file is truncated or corrupt") from None
    return result_from_dict(data, source=f"search result file {str(path)!r}")


# -- the text report ------------------------------------------------------------------------------


def summary_lines(result: SearchResult) -> list[str]:
    """The result's summary: strategy, count against the budget, triggers,
    steps and search time; then the budget repair and re-fill logs and the
    strategy's notes, where there are any."""
    met = "met" if result.budget_met else "NOT met"
    lines = [f"strategy {result.strategy}: {format_count(result.count)} parameters, budget "
             f"{format_count(result.budget)} ({met}); {len(result.trace)} triggers, {result.steps} steps; "
             f"search {result.wall_time:.1f}s"]
    if result.repaired:
        lines.append("budget repair: " + "; ".join(result.repair_log))
    if result.refill_log:
        lines.append("re-fill: " + "; ".join(result.refill_log))
    lines.extend(result.notes)
    return lines


def write_text_report(result: SearchResult, folder: str | Path) -> Path:
    """Write ``structure.txt`` (the :func:`summary_lines` and the structure
    table) into ``folder`` (created if needed) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / STRUCTURE_TEXT
    lines = [*summary_lines(result), "", structure_table(result.structure, result.budget)]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return text
