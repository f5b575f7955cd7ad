"""Reading search results back, and showing them: a text table and PNG plots.

``bipeft show`` uses this module. It rebuilds a :class:`~bipeft_core.SearchResult`
from the JSON that :meth:`SearchResult.to_dict` writes (``search_result.json``
in a run folder), prints the structure as a layer × module-type table, and
writes two plots: the search's progress (expected parameter count against the
budget over the steps, with the triggers marked) and a heatmap of the final
structure (layers × positions, colour = rank).

Plotting needs matplotlib, an optional extra (``pip install 'bipeft[plots]'``).
It is imported only when a plot is drawn, and only its Agg canvas is used, so
the caller's pyplot backend is left alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bipeft_core.budget import format_count
from bipeft_core.errors import BipeftError, StructureError
from bipeft_core.state import SearchResult, TriggerEvent
from bipeft_core.structure import Structure, StructureEntry
from bipeft_core.targets import ROLES

__all__ = [
    "PlotDependencyError",
    "ReportError",
    "ResultFileError",
    "ResultNotFoundError",
    "load_result",
    "plot_search",
    "plot_structure",
    "result_from_dict",
    "structure_table",
    "write_report",
]

RESULT_FILE = "search_result.json"
SEARCH_PLOT = "search_progress.png"
STRUCTURE_PLOT = "structure_heatmap.png"
STRUCTURE_TEXT = "structure.txt"


class ReportError(BipeftError):
    """Base class of the errors of this module."""


class ResultFileError(ReportError, ValueError):
    """A search result file (or dict) that is not valid JSON or not a search result."""


class ResultNotFoundError(ReportError, FileNotFoundError):
    """A search result file that does not exist."""

    def __str__(self) -> str:  # FileNotFoundError would format (errno, strerror)
        return str(self.args[0]) if self.args else ""


class PlotDependencyError(ReportError, ImportError):
    """matplotlib, needed for the plots, is not installed."""


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
class _Layout:
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


def _layout(structure: Structure) -> _Layout:
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
        names = sorted(names, key=lambda s, all_=tuple(names): (
            s != "", sum(1 for o in all_ if o != s and before(o, s) > 0)
            - sum(1 for o in all_ if o != s and before(s, o) > 0), _natural(s)))
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
    return _Layout(layers=layers, types=types, columns=columns, labels=labels, slot_of=slot_of)


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
    lay = _layout(structure)
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
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultNotFoundError(f"search result file {str(path)!r} does not exist") from None
    except UnicodeDecodeError:
        raise ResultFileError(f"search result file {str(path)!r} is not text (not UTF-8 JSON); "
                              "the file is corrupt") from None
    except OSError as exc:
        raise ResultFileError(f"search result file {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    if not text.strip():
        raise ResultFileError(f"search result file {str(path)!r} is empty; the search was interrupted while "
                              "writing it, or the file is corrupt")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultFileError(f"search result file {str(path)!r} is not valid JSON ({exc}); "
                              "the file is truncated or corrupt") from None
    return result_from_dict(data, source=f"search result file {str(path)!r}")


# -- plots ----------------------------------------------------------------------------------------


def _matplotlib() -> tuple[Any, Any]:
    """(Figure, FigureCanvasAgg), imported on first use."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotDependencyError(
            "the plots need matplotlib, which is not installed: pip install 'bipeft[plots]' "
            "(or print the table only: bipeft show RESULT --no-plots)"
        ) from None
    return Figure, FigureCanvasAgg


def _new_figure(size: tuple[float, float]) -> Any:
    Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=size, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the history rows that have a finite number under ``key``."""
    xs, ys = [], []
    for i, row in enumerate(history):
        v = row.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        step = row.get("step")
        xs.append(float(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else float(i + 1))
        ys.append(float(v))
    return xs, ys


def _moving_average(ys: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y
        if i >= window:
            total -= ys[i - window]
        out.append(total / min(i + 1, window))
    return out


def _thousands(ax: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def plot_search(result: SearchResult, path: str | Path) -> Path:
    """Write a PNG of the search's progress and return its path.

    Top panel: the expected parameter count per step (``history`` key
    ``expected_size``), the budget as a horizontal line, each trigger as a
    vertical dotted line with a point at its expected size, and the final
    exact count as a star. Below, where the history (or the trace) has them:
    the remaining modules (and the triggers left, right-hand axis), and the
    training loss. Only what the result recorded is drawn: a baseline with no
    per-step history gives the budget and the final count alone."""
    _matplotlib()  # a clear error first when matplotlib is missing
    hist = result.history
    size_x, size_y = _series(hist, "expected_size")
    rem_x, rem_y = _series(hist, "remaining")
    if not rem_x and result.trace:
        rem_x = [float(e.step) for e in result.trace]
        rem_y = [float(e.remaining_modules) for e in result.trace]
    left_x, left_y = _series(hist, "triggers_left")
    loss = {k: _series(hist, k) for k in ("loss", "arch_loss")}
    loss = {k: v for k, v in loss.items() if v[0]}
    panels = ["size"] + (["modules"] if rem_x else []) + (["loss"] if loss else [])
    heights = {"size": 3.0, "modules": 1.7, "loss": 1.7}
    fig = _new_figure((9.0, 1.2 + sum(heights[p] for p in panels)))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [heights[p] for p in panels]})[:, 0]
    ax = axes[0]
    all_x = size_x + rem_x + [float(e.step) for e in result.trace] + next(iter(loss.values()), ([], []))[0]
    last = max(all_x + [float(result.steps)]) if all_x else 0.0
    if size_x:
        ax.plot(size_x, size_y, color="tab:blue", lw=1.6, label="expected parameter count")
    ax.axhline(result.budget, color="tab:red", ls="--", lw=1.3, label=f"budget {format_count(result.budget)}")
    at_step = dict(zip(size_x, size_y))
    trigger_steps = [e.step for e in result.trace]
    if len(trigger_steps) <= 30:
        for a in axes:
            for step in trigger_steps:
                a.axvline(step, color="0.55", ls=":", lw=0.9, zorder=0)
    else:  # many triggers: a rug along the bottom of each panel instead of lines across it
        for a in axes:
            a.vlines(trigger_steps, 0, 0.035, transform=a.get_xaxis_transform(), color="0.45", lw=0.8)
    if result.trace:
        # on the curve where the history has the step; else the trigger's own estimate
        ys = [at_step.get(float(e.step), e.expected_size) for e in result.trace]
        ax.plot(trigger_steps, ys, "o", color="tab:orange", ms=4.5 if len(ys) <= 30 else 2.5, zorder=3,
                label=f"trigger ({len(result.trace)})")
    ax.plot([last], [result.count], "*", color="tab:green", ms=13, zorder=4, clip_on=False,
            label=f"final count {format_count(result.count)}")
    ax.set_ylabel("parameters")
    shown = [result.budget, result.count, *size_y, *(() if size_x else (e.expected_size for e in result.trace))]
    ymax, ymin = max(shown), min(shown)
    if ymin > 0 and ymax / ymin > 30:  # the budget would sit flat on the axis: log scale
        ax.set_yscale("log")
        ax.set_ylim(ymin / 1.5, ymax * 1.5)
        ax.set_ylabel("parameters (log scale)")
    else:
        ax.set_ylim(0, ymax * 1.08 if ymax > 0 else 1)
    _thousands(ax)
    ax.set_xlim(0, last * 1.02 if last > 0 else 1)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    if not hist:
        ax.text(0.02, 0.06, f"strategy {result.strategy!r} recorded no per-step history",
                transform=ax.transAxes, fontsize=8, color="0.3")
    if "modules" in panels:
        ax = axes[panels.index("modules")]
        ax.step(rem_x, rem_y, where="post", color="tab:purple", lw=1.4, label="remaining modules")
        if not _series(hist, "remaining")[0]:
            ax.plot(rem_x, rem_y, "o", color="tab:purple", ms=3.5)
        ax.set_ylabel("modules")
        ax.set_ylim(bottom=0)
        ax.grid(True, axis="y", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if left_x:
            twin = ax.twinx()
            twin.step(left_x, left_y, where="post", color="tab:brown", lw=1.1, ls="--", label="triggers left")
            twin.set_ylabel("triggers left")
            twin.set_ylim(bottom=0)
            h2, l2 = twin.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.9)
    if "loss" in panels:
        ax = axes[panels.index("loss")]
        colours = {"loss": "tab:blue", "arch_loss": "tab:orange"}
        names = {"loss": "training loss", "arch_loss": "architecture loss"}
        for k, (xs, ys) in loss.items():
            if len(ys) > 40:
                ax.plot(xs, ys, color=colours[k], lw=0.6, alpha=0.3)
                ax.plot(xs, _moving_average(ys, max(5, len(ys) // 25)), color=colours[k], lw=1.4,
                        label=f"{names[k]} (moving average)")
            else:
                ax.plot(xs, ys, color=colours[k], lw=1.3, label=names[k])
        ax.set_ylabel("loss")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
    from matplotlib.ticker import MaxNLocator

    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if all_x:
        axes[-1].set_xlabel("step")
    else:
        axes[-1].set_xlim(-1, 1)
        axes[-1].set_xticks([])
        axes[-1].set_xlabel("(no steps recorded: the final count only)")
    pct = f"{100 * result.count / result.budget:.1f}% of" if result.budget else "no"
    met = "met" if result.budget_met else "NOT met"
    sub = (f"{len(result.trace)} triggers, {result.steps} steps, {result.wall_time:.1f}s"
           + ("; repaired to the budget" if result.repaired else ""))
    fig.suptitle(f"{result.strategy}: {format_count(result.count)} of {format_count(result.budget)} parameters "
                 f"({pct} budget, {met})\n{sub}", fontsize=11)
    return _save(fig, path)


def plot_structure(structure: Structure, path: str | Path) -> Path:
    """Write a PNG heatmap of a structure and return its path.

    Rows are the layers in model order, columns the (module type, position)
    pairs that the structure uses, grouped by type (the type names run along
    the top). A cell's colour is the rank of the kept module there; a kept
    vector module, which has no rank, is a separate colour marked ``on``; a
    blank cell is a module not kept. Cells carry their rank as text while the
    grid is small enough to read it."""
    _matplotlib()  # a clear error first when matplotlib is missing
    from matplotlib.colors import BoundaryNorm, ListedColormap

    if structure.full or not structure.entries:
        fig = _new_figure((6.0, 2.2))
        ax = fig.add_subplot()
        ax.axis("off")
        what = ("full fine-tuning: every backbone parameter trains, no PEFT modules" if structure.full
                else "no module is kept")
        ax.text(0.5, 0.5, f"{what}\n{format_count(structure.count())} parameters", ha="center", va="center")
        return _save(fig, path)
    from matplotlib import colormaps

    lay = _layout(structure)
    ranks = sorted({e.rank for e in structure.entries if e.rank is not None})
    has_vector = any(e.rank is None for e in structure.entries)
    levels = (["on"] if has_vector else []) + [str(r) for r in ranks]
    code = {lv: i for i, lv in enumerate(levels)}
    rows, cols = len(lay.layers), len(lay.columns)
    row_of = {layer: i for i, layer in enumerate(lay.layers)}
    col_of = {c: j for j, c in enumerate(lay.columns)}
    import numpy as np

    grid = np.full((rows, cols), np.nan)
    for n, e in enumerate(structure.entries):
        grid[row_of[e.spec.layer], col_of[lay.slot_of[n]]] = code["on" if e.rank is None else str(e.rank)]
    seq = colormaps["viridis"]
    rank_colours = [seq(0.15 + 0.75 * (i / max(1, len(ranks) - 1))) for i in range(len(ranks))]
    colours = (["#f28e2b"] if has_vector else []) + rank_colours
    cmap = ListedColormap(colours).with_extremes(bad="white")
    norm = BoundaryNorm([i - 0.5 for i in range(len(levels) + 1)], len(levels))

    longest_row = max(len(layer) for layer in lay.layers)
    longest_col = max(len(lay.labels[c]) for c in lay.columns)
    cell = 0.36 if cols <= 40 else 0.26
    width = min(40.0, max(6.5, 0.075 * longest_row + cell * cols + 1.8))
    height = min(40.0, max(3.2, 0.075 * longest_col + 0.30 * rows + 1.6))
    # a type name wider than its columns: the names along the top are slanted
    drawn = max(cell, (width - 0.075 * longest_row - 1.8) / cols)
    slant = any(0.07 * len(t) > drawn * sum(1 for c in lay.columns if c[0] == t) for t in lay.types)
    fig = _new_figure((width, height))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(grid)
    im = ax.imshow(masked, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_yticks(range(rows), labels=list(lay.layers), fontsize=8)
    ax.set_xticks(range(cols), labels=[lay.labels[c] for c in lay.columns], rotation=90, fontsize=8)
    ax.set_xticks([x - 0.5 for x in range(cols + 1)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(rows + 1)], minor=True)
    ax.grid(which="minor", color="0.85", lw=0.6)
    ax.tick_params(which="minor", length=0)
    # type groups: separators and names along the top
    bounds, start = [], 0
    for t in lay.types:
        n_t = sum(1 for c in lay.columns if c[0] == t)
        bounds.append((t, start, start + n_t))
        start += n_t
    for _, a, _b in bounds[1:]:
        ax.axvline(a - 0.5, color="0.2", lw=1.4)
    top = ax.secondary_xaxis("top")
    top.set_xticks([(a + b - 1) / 2 for _, a, b in bounds], labels=[t for t, _, _ in bounds], fontsize=9,
                   fontweight="bold")
    if slant:
        top.tick_params(labelrotation=35)
        for label in top.get_xticklabels():
            label.set_horizontalalignment("left")
            label.set_rotation_mode("anchor")
    top.tick_params(length=0)
    if rows * cols <= 1500:
        for (i, j), v in np.ndenumerate(grid):
            if math.isnan(v):
                continue
            level = levels[int(v)]
            rgb = colours[int(v)]
            rgba = rgb if not isinstance(rgb, str) else None
            dark = rgba is not None and (0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]) < 0.5
            ax.text(j, i, level, ha="center", va="center", fontsize=7 if cols <= 40 else 6,
                    color="white" if dark else "black")
    bar = fig.colorbar(im, ax=ax, ticks=range(len(levels)), fraction=0.05, pad=0.02,
                       shrink=min(1.0, max(0.35, 0.9 * len(levels) / max(rows, 1))))
    bar.ax.set_yticklabels(levels)
    bar.set_label("rank (on: vector module; blank: not kept)" if has_vector else "rank (blank: not kept)",
                  fontsize=8)
    budget = f" of {format_count(structure.budget)}" if structure.budget else ""
    space = f", space {structure.space}" if structure.space else ""
    fig.suptitle(f"structure: {len(structure.entries)} modules, {format_count(structure.count())}{budget} "
                 f"parameters{space}", fontsize=10)
    return _save(fig, path)


def write_report(result: SearchResult, folder: str | Path) -> list[Path]:
    """Write ``structure.txt`` (the result's summary line and the structure
    table), ``search_progress.png`` and ``structure_heatmap.png`` into
    ``folder`` (created if needed); return their paths. The text is written
    before the plots, so it is there even when matplotlib is missing (which
    raises :class:`PlotDependencyError`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    met = "met" if result.budget_met else "NOT met"
    lines = [f"strategy {result.strategy}: {format_count(result.count)} parameters, budget "
             f"{format_count(result.budget)} ({met}); {len(result.trace)} triggers, {result.steps} steps; "
             f"search {result.wall_time:.1f}s"]
    if result.repaired:
        lines.append("budget repair: " + "; ".join(result.repair_log))
    if result.refill_log:
        lines.append("re-fill: " + "; ".join(result.refill_log))
    lines.extend(result.notes)
    lines += ["", structure_table(result.structure, result.budget)]
    text = folder / STRUCTURE_TEXT
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [text, plot_search(result, folder / SEARCH_PLOT), plot_structure(result.structure, folder / STRUCTURE_PLOT)]
