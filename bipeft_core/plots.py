"""The PNG plots of a search result: its progress and its final structure.

:func:`plot_search` draws the search's progress (expected parameter count
against the budget over the steps, with the triggers marked, and the
remaining modules and the loss where the result recorded them);
:func:`plot_structure` draws a heatmap of a structure (layers × positions,
colour = rank), with the rows and columns of
:func:`bipeft_core.report.structure_layout`; :func:`write_report` writes the
text report and both plots into a folder (what ``bipeft show`` does).

This is the only module of bipeft that uses matplotlib, an optional extra
(``pip install 'bipeft[plots]'``). It is imported only when a plot is drawn,
with :class:`PlotDependencyError` naming the extra when it is missing, and
only its Agg canvas is used, so the caller's pyplot backend is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bipeft_core.budget import format_count
from bipeft_core.report import ReportError, structure_layout, write_text_report
from bipeft_core.state import SearchResult
from bipeft_core.structure import Structure

__all__ = ["SEARCH_PLOT", "STRUCTURE_PLOT", "PlotDependencyError", "plot_curve", "plot_search", "plot_structure",
           "write_report"]

SEARCH_PLOT = "search_progress.png"
STRUCTURE_PLOT = "structure_heatmap.png"


class PlotDependencyError(ReportError, ImportError):
    """matplotlib, needed for the plots, is not installed."""


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

    lay = structure_layout(structure)
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


def plot_curve(curve: Mapping[str, Any], path: str | Path) -> Path:
    """The budget-to-quality curve (``curve.json``'s content): the test
    metric against the exact parameter count, the searched structures joined
    by a line, the reference methods as labelled points."""
    fig = _new_figure((7.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    entries = [e for e in curve.get("entries", []) if e.get("metric") is not None]
    if entries:
        ax.plot([e["params"] for e in entries], [e["metric"] for e in entries], marker="o",
                label=f"{curve.get('strategy', 'search')} (one search)")
        for e in entries:
            ax.annotate(f"{e['budget']:,}", (e["params"], e["metric"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    for ref in curve.get("reference", []):
        if ref.get("metric") is None:
            continue
        ax.scatter([ref["params"]], [ref["metric"]], marker="s", color="gray")
        ax.annotate(ref["name"], (ref["params"], ref["metric"]), textcoords="offset points", xytext=(4, -10),
                    fontsize=7, color="gray")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters besides the task head (exact count, log scale)")
    ax.set_ylabel(f"test {curve.get('metric', 'metric')}")
    ax.set_title(f"{curve.get('task', '')}: metric against parameters")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def write_report(result: SearchResult, folder: str | Path) -> list[Path]:
    """Write ``structure.txt`` (:func:`bipeft_core.report.write_text_report`),
    ``search_progress.png`` and ``structure_heatmap.png`` into ``folder``
    (created if needed); return their paths. The text is written before the
    plots, so it is there even when matplotlib is missing (which raises
    :class:`PlotDependencyError`)."""
    folder = Path(folder)
    text = write_text_report(result, folder)
    return [text, plot_search(result, folder / SEARCH_PLOT), plot_structure(result.structure, folder / STRUCTURE_PLOT)]
