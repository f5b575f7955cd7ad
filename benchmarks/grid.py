"""The benchmark grid: (method × task × budget × seed) on MiniLM and the shared
GLUE data, every cell through the same data, splits, recipe and training loop.

    BIPEFT_DATA_DIR=../shared/data python benchmarks/grid.py            # the whole protocol
    BIPEFT_DATA_DIR=../shared/data python benchmarks/grid.py --quick    # one task, one seed, capped data
    python benchmarks/grid.py --list                                     # the cells and which are done
    python benchmarks/grid.py --report                                   # tables and plots from finished cells

The protocol is docs/benchmarks.md's: tasks STS-B (3 epochs), MRPC (5), CoLA
(3), RTE (5), SST-2 (1, training set capped at 8,000); budgets 0.1 % and 0.5 %
of the backbone; at 0.1 %, seeds 42-46 for BIPEFT, S3Delta, PrunePEFT and peft
LoRA on STS-B, MRPC, CoLA and SST-2, seeds 42-44 for APET and peft AdaLoRA on
STS-B, MRPC and CoLA, for the ablation variants (``VARIANTS``) on STS-B and
CoLA and for the candidates for the default (``DEFAULT_CANDIDATES``) on the
four tasks of the search comparison; seed 42 for every other cell. Methods
with a fixed size (bipeft's manual LoRA r=8, BitFit, LNFit, full fine-tuning,
peft's LoRA r=8) have one cell per task and seed, shown beside both budgets.

Each cell runs in its own process (so its peak resident memory is its own)
and writes ``<out>/cells/<cell>.json`` when it finishes; the harness skips
finished cells, so the grid resumes where it stopped, across sessions. A cell
of a bipeft strategy keeps its run folder under ``--work`` and resumes its
search from the checkpoint if it was killed. ``--tasks``, ``--budgets``,
``--methods`` and ``--seeds`` restrict the grid; the report is written from
every finished cell after each cell and at the end.

Named with ``--methods`` only (not in the default grid): the ablation and
schedule variants (``VARIANTS``); ``bipeft_curve``, one BIPEFT search for
0.05/0.1/0.2 % on STS-B and CoLA (its cell is named at 0.05 %, its smallest
budget; the reference points are trained on seed 42 only); and
``transfer_<task>``, that task's 0.1 % BIPEFT structure (read from its
finished cell of the same seed) re-trained on STS-B, MRPC or CoLA. Seeds
42-44; with ``--budgets 0.05%,0.2%`` the default ``bipeft`` cells at those
budgets for the same seeds are the separate searches the curve is set
against.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomllib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "examples" / "specs"

#: task -> (registered name, epochs, training cap)
TASKS = {"stsb": ("glue/stsb", 3, None), "mrpc": ("glue/mrpc", 5, None), "cola": ("glue/cola", 3, None),
         "rte": ("glue/rte", 5, None), "sst2": ("glue/sst2", 1, 8000)}
BUDGETS = ("0.1%", "0.5%")
SEEDS = (42, 43, 44, 45, 46)
#: methods searched or sized at each budget
BUDGETED = ("bipeft", "s3delta", "prunepeft", "apet", "peft_adalora")
#: methods whose size does not depend on the budget
FIXED = ("peft_lora", "lora", "bitfit", "lnfit", "full")
METHODS = BUDGETED + FIXED
#: spec files that a grid may also name with --methods (not in the default grid)
EXTRA = ("autopeft", "serial_adapter")
#: the paper's rules with each of issue 10's changes alone, and the other normaliser and schedule variants
ABLATION_STEPS = ("bipeft_sens_only", "bipeft_refill_only", "bipeft_trigger_only")
OTHER_VARIANTS = ("bipeft_norm_live", "bipeft_norm_max", "bipeft_late", "bipeft_slot", "bipeft_slot_late",
                  "bipeft_k6", "bipeft_refill_cheap")
#: BIPEFT as first built (the paper's rules), and the ablations and normaliser variants of docs/search.md
VARIANTS = ("bipeft_paper", *ABLATION_STEPS, *OTHER_VARIANTS)
EXTRA = EXTRA + VARIANTS
#: issue 15's evidence, seeds 42-44 (docs/benchmarks.md, "One search, several budgets" and "Transfer"):
#: the BIPEFT default searched once down to the smallest of CURVE_BUDGETS (the cell's budget), each larger
#: budget's structure re-trained on the way; and each TRANSFER_SOURCES task's 0.1 % BIPEFT structure (from
#: its cell of the same seed) re-trained on the other tasks
CURVE = "bipeft_curve"
CURVE_BUDGETS = ("0.05%", "0.1%", "0.2%")
CURVE_TASKS = ("stsb", "cola")
TRANSFER_SOURCES = ("stsb", "mrpc", "cola")
TRANSFER = tuple(f"transfer_{t}" for t in TRANSFER_SOURCES)
EVIDENCE_SEEDS = (42, 43, 44)
EXTRA = EXTRA + (CURVE,) + TRANSFER
#: the spec file a method runs from when it is not <method>.toml
SPEC_OF = {CURVE: "bipeft", **{m: "bipeft" for m in TRANSFER}}
#: the cells with three seeds (the rest use seed 42)
SEEDED_METHODS = ("bipeft", "s3delta", "prunepeft", "apet", "peft_lora", "peft_adalora")
SEEDED_TASKS = ("stsb", "mrpc", "cola")
#: seeds 42-46 at 0.1 % for the search comparison of docs/search.md (BIPEFT against its rivals), on these tasks
FIVE_SEEDS = (42, 43, 44, 45, 46)
FIVE_SEED_METHODS = ("bipeft", "s3delta", "prunepeft", "peft_lora")
FIVE_SEED_TASKS = ("stsb", "mrpc", "cola", "sst2")
#: the ablation and normaliser cells: seeds 42-44 on these tasks
VARIANT_TASKS = ("stsb", "cola")
#: variants that are candidates for the default: seeds 42-44 on every task of the search comparison
DEFAULT_CANDIDATES = ("bipeft_norm_max",)
PEERS = ("peft_lora", "peft_adalora")
#: forward+backward passes per recorded search step
PASSES = {"iterative": 2, "s3delta": 2, "prunepeft": 1}
#: the shared training recipe: the default spec's [retrain] table (one place for it), less the seed
RECIPE = {k: v for k, v in tomllib.loads((ROOT / "plugins" / "bipeft_plugins" / "default_spec.toml").read_text(
    encoding="utf-8"))["retrain"].items() if k != "seed"}
FULL_LR = 5e-5
LABELS = {"bipeft_paper": "BIPEFT (paper rules)", "bipeft_sens_only": "BIPEFT paper + 1 (sensitivity)",
          "bipeft_refill_only": "BIPEFT paper + 2 (re-fill)", "bipeft_trigger_only": "BIPEFT paper + 3 (trigger)",
          "bipeft_norm_live": "BIPEFT, live-rank normaliser", "bipeft_norm_max": "BIPEFT, max-rank normaliser",
          "bipeft_late": "BIPEFT, weight-only warm-up to 30 %",
          "bipeft_slot": "BIPEFT, slot deadline (one trigger per slot)",
          "bipeft_slot_late": "BIPEFT, weight-only warm-up to 30 %, slots to 50 %",
          "bipeft_k6": "BIPEFT, 6 triggers in the span",
          "bipeft_refill_cheap": "BIPEFT paper + 2, weight-only warm-up",
          CURVE: "BIPEFT, one search for 0.05/0.1/0.2 %",
          **{f"transfer_{t}": f"BIPEFT structure searched on {t}" for t in TRANSFER_SOURCES},
          "autopeft": "AutoPEFT", "serial_adapter": "serial adapter r=8", "bipeft": "BIPEFT", "s3delta": "S3Delta", "prunepeft": "PrunePEFT", "apet": "APET",
          "peft_adalora": "peft AdaLoRA", "peft_lora": "peft LoRA r=8 (q,v)", "lora": "LoRA r=8 (q,v)",
          "bitfit": "BitFit", "lnfit": "LNFit", "full": "full fine-tuning"}
QUICK = {"tasks": ("stsb",), "budgets": ("0.1%",), "seeds": (42,), "max_train": 320,
         "methods": ("bipeft", "s3delta", "prunepeft", "apet", "peft_adalora", "peft_lora")}


# -- the cells -------------------------------------------------------------------------------
def budget_tag(budget: str | None) -> str:
    return "fixed" if budget is None else "b" + budget.rstrip("%")


def cell_id(task: str, budget: str | None, method: str, seed: int) -> str:
    return f"{task}-{budget_tag(budget)}-{method}-s{seed}"


def seeded(task: str, method: str, seed: int) -> bool:
    """Whether the protocol has a cell of ``method`` on ``task`` for ``seed``
    (seed 42 always; at 0.1 % only for the others)."""
    if method == CURVE:
        return task in CURVE_TASKS and seed in EVIDENCE_SEEDS
    if method in TRANSFER:
        return task in TRANSFER_SOURCES and method != f"transfer_{task}" and seed in EVIDENCE_SEEDS
    if seed == 42:
        return True
    if method in FIVE_SEED_METHODS and task in FIVE_SEED_TASKS:
        return seed in FIVE_SEEDS
    if method in DEFAULT_CANDIDATES:
        return task in FIVE_SEED_TASKS and seed in (43, 44)
    if method in VARIANTS:
        return task in VARIANT_TASKS and seed in (43, 44)
    return method in SEEDED_METHODS and task in SEEDED_TASKS and seed in (43, 44)


def protocol_cells(tasks, budgets, methods, seeds) -> list[dict[str, Any]]:
    """The protocol's cells within the given restrictions, in running order:
    seed 42 first (one full pass over the grid), then the other seeds."""
    cells = []
    for seed in sorted(seeds, key=lambda s: (s != 42, s)):
        for task in tasks:
            for method in methods:
                if not seeded(task, method, seed):
                    continue
                if method in FIXED or method == "serial_adapter":
                    cells.append({"task": task, "budget": None, "method": method, "seed": seed})
                    continue
                if method in (CURVE, *TRANSFER):  # one budget each, whatever --budgets says
                    cells.append({"task": task, "budget": CURVE_BUDGETS[0] if method == CURVE else "0.1%",
                                  "method": method, "seed": seed})
                    continue
                for budget in budgets:
                    # other budgets than 0.1 % on seed 42 only, but for the separate searches that the curve's
                    # points are set against
                    curve_peer = method == "bipeft" and task in CURVE_TASKS and budget in CURVE_BUDGETS \
                        and seed in EVIDENCE_SEEDS
                    if seed != 42 and budget != "0.1%" and not curve_peer:
                        continue
                    cells.append({"task": task, "budget": budget, "method": method, "seed": seed})
    return cells


# -- one cell (in its own process) -----------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _step_figures(history: list[dict[str, Any]], strategy: str) -> dict[str, float | None]:
    """Median time of one forward+backward pass at the start (steps 2 to 6)
    and at the end (the last 5 steps) of the search. A step of a
    two-pass strategy that took no architecture step (a weight-only
    warm-up: its ``arch_loss`` is ``None``) counts one pass."""
    passes = PASSES.get(strategy)
    rows = [h for h in history if "step_time" in h]
    if not passes or len(rows) < 7:
        return {"search_pass_start": None, "search_pass_end": None}
    per_pass = [h["step_time"] / (1 if passes == 2 and h.get("arch_loss", 0.0) is None else passes)
                for h in rows]
    return {"search_pass_start": statistics.median(per_pass[1:6]),
            "search_pass_end": statistics.median(per_pass[-5:])}


def _planned_steps(result: dict[str, Any], epochs: int) -> int | None:
    """The search's planned weight steps: steps per epoch (read from the
    last history row, ``step / epoch``) × ``epochs``."""
    hist = result.get("history") or []
    if not hist or not hist[-1].get("epoch"):
        return None
    return round(hist[-1]["step"] / hist[-1]["epoch"]) * epochs


def cell_settings(task: str, epochs: int | None, max_train: int | None) -> tuple[str, int, int | None]:
    """The task's name, epochs and training cap a cell runs with: the protocol's unless overridden."""
    task_name, task_epochs, cap = TASKS[task]
    return task_name, epochs or task_epochs, max_train or cap


def fit_warmup(spec: dict[str, Any], epochs: int) -> None:
    """Shorten a spec's trigger warm-up to at most a third of ``epochs``: the
    spec's 1 epoch is a third of the 3-epoch tasks, and SST-2's single epoch
    (or a 1-epoch timing run) keeps that share instead of a warm-up that
    fills the whole search (which the spec check refuses)."""
    trigger = spec.get("search", {}).get("trigger")
    if isinstance(trigger, dict) and "warmup_epochs" in trigger:
        trigger["warmup_epochs"] = min(trigger["warmup_epochs"], round(epochs / 3, 4))


def transfer_source(cell: dict[str, Any], out: Path) -> Path:
    """The finished cell whose structure a transfer cell re-trains: the source
    task's BIPEFT cell at the same budget and seed."""
    source = cell["method"].removeprefix("transfer_")
    return out / "cells" / f"{cell_id(source, cell['budget'], 'bipeft', cell['seed'])}.json"


def cell_spec(cell: dict[str, Any], *, epochs: int | None = None, max_train: int | None = None, overrides=(),
              work: Path | None = None, out: Path | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The pipeline spec (dict form) a BIPEFT-family cell runs: the method's
    spec file with the protocol's budget, recipe, epochs and warm-up, and
    ``overrides`` (``method:key=value``) applied; with the source cell of a
    transfer cell (``None`` for the others), whose structure is written to
    ``work`` beside the cell's run folder."""
    from bipeft_core.cli import _parse_value, _set

    task_name, epochs, cap = cell_settings(cell["task"], epochs, max_train)
    budget = cell["budget"] or "0.1%"
    data = tomllib.loads((SPECS / f"{SPEC_OF.get(cell['method'], cell['method'])}.toml").read_text(
        encoding="utf-8"))
    data["budget"] = {"value": budget}
    if cell["method"] == CURVE:
        # the reference points (LoRA r=1..8, BitFit: five re-trains) once, on seed 42, for the plot
        data["budget"] = {"value": budget, "budgets": list(CURVE_BUDGETS), "references": cell["seed"] == 42}
    source = None
    if cell["method"] in TRANSFER:
        if work is None:
            raise ValueError("a transfer cell's spec needs the work folder for its source structure")
        source = json.loads(transfer_source(cell, out or ROOT / "docs" / "benchmarks").read_text())
        # beside the run folder, which must be new or a run folder when the run is created
        kept = work / f"{cell_id(**cell)}.source-structure.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(source["structure"], indent=1) + "\n")
        data["search"] = {k: v for k, v in data["search"].items() if k not in (
            "optimizer", "sensitivity", "trigger", "module_selector", "dimension_selector")}
        data["search"]["optimizer"] = {"name": "fixed", "structure": str(kept)}
    _set(data, "model.task", task_name)
    for table in ("search", "retrain"):
        settings = {**RECIPE, "seed": cell["seed"], "epochs": epochs}
        if cell["method"] == "full":
            settings["lr"] = FULL_LR
        if cap:
            settings["max_train_examples"] = cap
        for key, value in settings.items():
            _set(data, f"{table}.{key}", value)
    fit_warmup(data, epochs)
    for item in overrides:
        target, _, assignment = item.partition(":")
        if target != cell["method"]:
            continue
        key, value = assignment.split("=", 1)
        _set(data, key, _parse_value(value))
    return data, source


def run_cell(cell: dict[str, Any], *, work: Path, data_dir: str | None, max_train: int | None,
             epochs: int | None, device: str | None, progress: bool, overrides=(),
             out: Path | None = None) -> dict[str, Any]:
    task_name, epochs, cap = cell_settings(cell["task"], epochs, max_train)
    budget = cell["budget"] or "0.1%"
    started = time.perf_counter()
    if cell["method"] in PEERS:
        sys.path.insert(0, str(Path(__file__).parent))
        from peers import run_peer

        summary = run_peer(cell["method"], task_name=task_name, budget_value=budget, seed=cell["seed"],
                           epochs=epochs, max_train=cap, data_dir=data_dir, recipe=RECIPE, progress=progress)
        summary.update(peak_rss_search_mb=None, search_pass_start=None, search_pass_end=None)
    else:
        from bipeft_core import Pipeline, load_plugins
        from bipeft_core.runner import Run

        plugins = load_plugins()
        folder = work / cell_id(**cell)
        data, source = cell_spec(cell, epochs=epochs, max_train=max_train, overrides=overrides, work=work,
                                 out=out)
        pipe = Pipeline.from_dict(data, plugins=plugins, source=f"{cell['method']}.toml")
        run = Run.open(folder, plugins=plugins) if (folder / "run.json").is_file() else Run.create(
            folder, pipe, argv=sys.argv)
        peaks = {}

        def on_stage(stage: str, _value: Any) -> None:
            peaks[stage] = _peak_rss_mb()

        summary = run.execute(data_dir=data_dir, progress=progress, on_stage=on_stage)
        result = json.loads((folder / "search_result.json").read_text())
        metrics = json.loads((folder / "retrain" / "metrics.json").read_text())
        summary.update(_step_figures(result.get("history", []), result["strategy"]))
        summary.update(peak_rss_search_mb=peaks.get("search"), retrain_step_time=metrics.get("step_time"),
                       best_epoch=metrics["best_epoch"], epochs=metrics["epochs"],
                       search_steps=result.get("steps"), triggers=len(result.get("trace", [])),
                       trigger_steps=[e["step"] for e in result.get("trace", [])],
                       repair_log=result.get("repair_log", []), refill_log=result.get("refill_log", []),
                       budget_use=result["count"] / result["budget"], structure=result["structure"],
                       planned_steps=_planned_steps(result, epochs),
                       notes=result.get("notes", []), run_folder=str(folder))
        if cell["method"] == CURVE:
            curve = json.loads((folder / "curve.json").read_text())
            # CURVE_BUDGETS ascend as the entries' exact budgets do
            summary["curve"] = [{**e, "budget_value": b} for e, b in zip(curve["entries"], CURVE_BUDGETS)]
            summary["curve_reference"] = curve["reference"]
        if cell["method"] in TRANSFER:
            summary["transfer_source"] = source["cell"]
    import torch

    from bipeft_core.runner import versions

    summary.update(versions=versions(), code=_code_version(), cell=cell_id(**cell), method=cell["method"], seed=cell["seed"], budget_value=cell["budget"],
                   task_key=cell["task"], train_epochs=epochs, max_train=cap, peak_rss_mb=_peak_rss_mb(),
                   cell_wall_time=time.perf_counter() - started, torch_threads=torch.get_num_threads(),
                   device=_device_name(device), finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return summary


def _code_version() -> str | None:
    """The checkout's commit, with ``+dirty`` when bipeft's own files differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bipeft_core", "plugins", "spaces",
                                "examples/specs"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty.strip() else "")


def _device_name(device: str | None) -> str:
    import platform

    import torch

    if (device or "").startswith("cuda") and torch.cuda.is_available():
        return f"{device}: {torch.cuda.get_device_name()}"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


# -- the report ------------------------------------------------------------------------------
def load_cells(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    if len(values) == 1:
        return values[0], None
    return statistics.mean(values), statistics.stdev(values)


#: strategies that run no search (APET draws its structure at random): their search time and ratio read "–".
#: AutoPEFT searches by trials, not supernet steps, so a step count cannot tell.
NO_SEARCH = frozenset({"manual", "full", "fixed", "apet", "peft_lora", "peft_adalora"})


def aggregate(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, budget, method): the metric's mean and standard
    deviation over seeds, and the other figures' means."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["task_key"], budget_tag(c["budget_value"]), c["method"]), []).append(c)
    rows = []
    for (task, tag, method), group in groups.items():
        metric = group[0]["metric"]
        scores = [100 * c["test"][metric] for c in group]
        mean, std = _mean_std(scores)

        def avg(key: str, group=group) -> float | None:
            values = [c[key] for c in group if c.get(key) is not None]
            return statistics.mean(values) if values else None

        rows.append({"task": task, "budget": tag, "method": method, "metric": metric, "mean": mean, "std": std,
                     "seeds": sorted(c["seed"] for c in group), "peft_params": avg("peft_params"),
                     "ratio_of_backbone": avg("ratio_of_backbone"), "budget_met": all(c["budget_met"] for c in group),
                     "searched": group[0].get("strategy") not in NO_SEARCH,
                     "search_time": avg("search_time"), "retrain_time": avg("retrain_time"),
                     "search_retrain_ratio": avg("search_retrain_ratio"),
                     "seed_ratios": [c["search_retrain_ratio"] for c in sorted(group, key=lambda c: c["seed"])
                                     if c.get("search_retrain_ratio") is not None],
                     "peak_rss_mb": max(c["peak_rss_mb"] for c in group),
                     "search_pass_start": avg("search_pass_start"), "search_pass_end": avg("search_pass_end"),
                     "retrain_step_time": avg("retrain_step_time"),
                     "max_train": group[0].get("max_train"), "epochs": group[0].get("train_epochs")})
    order = {m: i for i, m in enumerate(METHODS + EXTRA)}
    tasks = {t: i for i, t in enumerate(TASKS)}
    rows.sort(key=lambda r: (tasks.get(r["task"], 99), r["budget"] == "fixed", r["budget"], order.get(r["method"], 99)))
    return rows


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        sub = [r for r in rows if r["task"] == task]
        cap = sub[0]["max_train"]
        lines += ["", f"### {TASKS[task][0] if task in TASKS else task}: test {sub[0]['metric']} ×100, "
                  f"{sub[0]['epochs']} epoch{'s' if sub[0]['epochs'] != 1 else ''}" + (f", training set capped at {cap:,}" if cap else ""), "",
                  "| budget | method | metric (mean ± std) | seeds | PEFT params | % of backbone | budget met | "
                  "search s | re-train s | search/re-train | peak RSS MB | pass s, search start | "
                  "pass s, search end | re-train step s |",
                  "|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in sub:
            budget = "–" if r["budget"] == "fixed" else r["budget"][1:] + " %"
            metric = f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] is not None else "")
            searched = r["searched"]
            lines.append(
                f"| {budget} | {LABELS.get(r['method'], r['method'])} | {metric} | "
                f"{','.join(map(str, r['seeds']))} | {r['peft_params']:,.0f} | {100 * r['ratio_of_backbone']:.4f} | "
                f"{'–' if r['budget'] == 'fixed' else 'yes' if r['budget_met'] else 'no'} | {_fmt(r['search_time'] if searched else None)} | "
                f"{_fmt(r['retrain_time'])} | {_fmt(r['search_retrain_ratio'] if searched else None, '.2f')} | {r['peak_rss_mb']:,.0f} | "
                f"{_fmt(r['search_pass_start'], '.2f')} | {_fmt(r['search_pass_end'], '.2f')} | "
                f"{_fmt(r['retrain_step_time'], '.2f')} |")
    return lines


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on the finished rows (a target whose rows
    are missing says so)."""
    out = []
    by = {(r["task"], r["budget"], r["method"]): r for r in rows}
    for task in dict.fromkeys(r["task"] for r in rows):
        for tag in ("b0.1", "b0.5"):
            b = by.get((task, tag, "bipeft"))
            if b is None:
                continue
            others = {m: by[(task, tag, m)] for m in ("s3delta", "prunepeft") if (task, tag, m) in by}
            ratio = b["search_retrain_ratio"]
            verdict = "met" if ratio <= 0.5 and all(ratio < o["search_retrain_ratio"] for o in others.values()) \
                else "missed"
            detail = ", ".join(f"{LABELS[m]} {o['search_retrain_ratio']:.2f}" for m, o in others.items())
            seeds = b["seed_ratios"]
            spread = f" (seeds: {', '.join(f'{x:.2f}' for x in seeds)})" if len(seeds) > 1 else ""
            out.append(f"- {task} {tag[1:]} %: BIPEFT search/re-train {ratio:.2f}{spread} (≤ 0.5, below "
                       f"{detail or 'no baseline yet'}): **{verdict}**")
    for tag in ("b0.1",):
        tasks = [t for t in dict.fromkeys(r["task"] for r in rows) if (t, tag, "bipeft") in by]
        if not tasks:
            continue
        comp = {m: [t for t in tasks if (t, "fixed" if m in FIXED else tag, m) in by]
                for m in ("lora", "peft_lora", "s3delta", "prunepeft", "apet", "peft_adalora", "autopeft")}
        for m, have in comp.items():
            if not have:
                continue
            key = "fixed" if m in FIXED else tag
            ours = statistics.mean(by[(t, tag, "bipeft")]["mean"] for t in have)
            theirs = statistics.mean(by[(t, key, m)]["mean"] for t in have)
            out.append(f"- 0.1 %: BIPEFT average {ours:.2f} vs {LABELS[m]} {theirs:.2f} over {', '.join(have)}: "
                       f"**{'met' if ours >= theirs else 'missed'}**")
    for task in dict.fromkeys(r["task"] for r in rows):
        b = by.get((task, "b0.1", "bipeft"))
        if b and b["search_pass_start"] is not None:
            change = b["search_pass_end"] / b["search_pass_start"] - 1
            # a change within ±2 % is timing noise on a shared CPU, not an effect of the pruning
            verdict = "falls" if change < -0.02 else "does not fall" if change > 0.02 else "about flat"
            out.append(f"- {task}: BIPEFT pass time {b['search_pass_start']:.3f} s at the start, "
                       f"{b['search_pass_end']:.3f} s at the end of the search ({change:+.0%}): "
                       f"**{verdict}** (the 1.2× bar against peft LoRA on the same "
                       "batch is measured by benchmarks/step_time.py)")
    return out


#: two-sided 95 % quantiles of Student's t by degrees of freedom (seeds − 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
#: the rivals BIPEFT is compared with seed by seed, and the ablation rows set against the paper's rules
RIVALS = ("s3delta", "prunepeft", "peft_lora", "bipeft_paper")
ABLATIONS = (*ABLATION_STEPS, "bipeft", *OTHER_VARIANTS)


def scores_by_seed(cells: list[dict[str, Any]], task: str, tag: str, method: str) -> dict[int, float]:
    """Test metric ×100 per seed of one (task, budget, method); fixed-size methods at any budget."""
    key = "fixed" if method in FIXED else tag
    return {c["seed"]: 100 * c["test"][c["metric"]] for c in cells
            if c["task_key"] == task and c["method"] == method and budget_tag(c["budget_value"]) == key}


def paired_difference(ours: dict[int, float], theirs: dict[int, float]) -> dict[str, Any] | None:
    """Per seed ``ours − theirs`` on the seeds both have: the mean and its
    t-based 95 % interval (``None`` half-width with one seed)."""
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    diffs = [ours[s] - theirs[s] for s in seeds]
    mean = statistics.mean(diffs)
    half = T975[len(diffs) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return {"seeds": seeds, "mean": mean, "half": half, "diffs": diffs}


def _ms(values: list[float]) -> str:
    mean, std = _mean_std(values)
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")


def _diff_text(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    interval = f" [{d['mean'] - d['half']:+.2f}, {d['mean'] + d['half']:+.2f}]" if d["half"] is not None else " (one seed)"
    return f"{d['mean']:+.2f}{interval}"


def paired_lines(cells: list[dict[str, Any]], ours: str, against: tuple[str, ...], tag: str = "b0.1") -> list[str]:
    """A table row per (task, other method) with both methods' mean ± std
    over the shared seeds and the paired difference with its 95 % interval."""
    lines = ["| task | method | other | seeds | method mean ± std | other mean ± std | paired difference [95 % CI] |",
             "|---|---|---|---|---:|---:|---:|"]
    for task in TASKS:
        a = scores_by_seed(cells, task, tag, ours)
        for other in against:
            if other == ours:
                continue
            d = paired_difference(a, scores_by_seed(cells, task, tag, other))
            if d is None:
                continue
            b = scores_by_seed(cells, task, tag, other)
            lines.append(f"| {task} | {LABELS[ours]} | {LABELS[other]} | {','.join(map(str, d['seeds']))} | "
                         f"{_ms([a[s] for s in d['seeds']])} | {_ms([b[s] for s in d['seeds']])} | "
                         f"{_diff_text(d)} |")
    return lines if len(lines) > 2 else []


def curve_lines(cells: list[dict[str, Any]]) -> list[str]:
    """Issue 15's curve evidence: each point of the one-search curve against a
    separate BIPEFT search at that budget (same seed), and the cost of the
    curve's search against the single search at 0.1 %."""
    curves = [c for c in cells if c["method"] == CURVE and c.get("curve")]
    if not curves:
        return []
    lines = ["| task | budget | seeds | one search: metric | params | separate search: metric | params | "
             "paired difference [95 % CI] |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for task in CURVE_TASKS:
        mine = [c for c in curves if c["task_key"] == task]
        for b in CURVE_BUDGETS:
            points = {c["seed"]: e for c in mine for e in c["curve"] if e["budget_value"] == b}
            if not points:
                continue
            ours = {s: 100 * e["metric"] for s, e in points.items()}
            separate = {c["seed"]: c for c in cells if c["task_key"] == task and c["method"] == "bipeft"
                        and c["budget_value"] == b}
            theirs = {s: 100 * c["test"][c["metric"]] for s, c in separate.items()}
            seeds = sorted(set(ours) & set(theirs)) or sorted(ours)
            params = statistics.mean(points[s]["params"] for s in seeds if s in points)
            other = (f"{_ms([theirs[s] for s in seeds])} | {statistics.mean(separate[s]['peft_params'] for s in seeds):,.0f}"
                     if set(seeds) <= set(theirs) else "– | –")
            lines.append(f"| {task} | {b} | {','.join(map(str, seeds))} | {_ms([ours[s] for s in seeds if s in ours])} | "
                         f"{params:,.0f} | {other} | {_diff_text(paired_difference(ours, theirs))} |")
    costs = []
    for c in curves:
        single = next((x for x in cells if x["task_key"] == c["task_key"] and x["method"] == "bipeft"
                       and x["budget_value"] == "0.1%" and x["seed"] == c["seed"]), None)
        if single:
            costs.append(f"{c['task_key']} s{c['seed']} {c['search_time'] / single['search_time']:.2f} "
                         f"({c.get('search_steps')} against {single.get('search_steps')} steps)")
    if costs:
        lines += ["", "Search time of the one search (down to 0.05 %) over the single search at 0.1 % of the same "
                  "seed (target ≤ 1.5), with both searches' steps: wall times of cells that shared the CPU "
                  "differently compare only roughly, the steps exactly: " + ", ".join(costs) + "."]
    return lines


def transfer_lines(cells: list[dict[str, Any]]) -> list[str]:
    """Issue 15's transfer evidence: each source task's 0.1 % structure
    re-trained on a target task, against the target's own search and peft
    LoRA r=8, seed by seed."""
    if not any(c["method"] in TRANSFER for c in cells):
        return []
    lines = ["| target | structure from | seeds | transferred | searched on the target | difference [95 % CI] | "
             "peft LoRA r=8 | difference [95 % CI] |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for target in TRANSFER_SOURCES:
        own = scores_by_seed(cells, target, "b0.1", "bipeft")
        lora = scores_by_seed(cells, target, "b0.1", "peft_lora")
        for method in TRANSFER:
            moved = scores_by_seed(cells, target, "b0.1", method)
            if not moved:
                continue
            seeds = sorted(moved)

            def col(other: dict[int, float], seeds=seeds) -> str:
                have = [s for s in seeds if s in other]
                return _ms([other[s] for s in have]) if have else "–"

            lines.append(f"| {target} | {method.removeprefix('transfer_')} | {','.join(map(str, seeds))} | "
                         f"{_ms(list(moved.values()))} | {col(own)} | {_diff_text(paired_difference(moved, own))} | "
                         f"{col(lora)} | {_diff_text(paired_difference(moved, lora))} |")
    return lines


def structure_lines(cells: list[dict[str, Any]]) -> list[str]:
    """Per (task, budget, method) over the cells that store their structure:
    the share of the kept parameters in each module type, the modules kept,
    the budget use and the trigger steps (first and last, mean over seeds)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in cells:
        if c.get("structure") and c.get("budget_value"):
            groups.setdefault((c["task_key"], c["budget_value"], c["method"]), []).append(c)
    if not groups:
        return []
    types = sorted({e["type"] for g in groups.values() for c in g for e in c["structure"]["entries"]})
    lines = ["| task | budget | method | seeds | " + " | ".join(types) + " | modules | budget use | "
             "trigger steps (first–last) | planned steps |",
             "|---|---|---|---|" + "---:|" * (len(types) + 4)]
    order = {m: i for i, m in enumerate(METHODS + EXTRA)}
    for (task, budget, method), group in sorted(groups.items(), key=lambda kv: (
            kv[0][0], kv[0][1], order.get(kv[0][2], 99))):
        share = {t: 0.0 for t in types}
        for c in group:
            total = sum(e["count"] for e in c["structure"]["entries"]) or 1
            for e in c["structure"]["entries"]:
                share[e["type"]] += e["count"] / total / len(group)
        modules = statistics.mean(len(c["structure"]["entries"]) for c in group)
        use = statistics.mean(c["budget_use"] for c in group)
        steps = [c.get("trigger_steps") or [] for c in group]
        span = (f"{statistics.mean(s[0] for s in steps if s):.0f}–{statistics.mean(s[-1] for s in steps if s):.0f}"
                if any(steps) else "–")
        planned = group[0].get("planned_steps")
        lines.append(f"| {task} | {budget} | {LABELS.get(method, method)} | "
                     f"{','.join(str(c['seed']) for c in sorted(group, key=lambda c: c['seed']))} | "
                     + " | ".join(f"{100 * share[t]:.0f} %" for t in types)
                     + f" | {modules:.1f} | {100 * use:.1f} % | {span} | {planned or '–'} |")
    return lines


def _correlation(xs: list[float], ys: list[float]) -> float | None:
    """Pearson's r, or ``None`` when either side does not vary."""
    try:
        return statistics.correlation(xs, ys)
    except statistics.StatisticsError:
        return None


def share_score_lines(cells: list[dict[str, Any]], budget: str = "0.1%") -> list[str]:
    """Per task, over every cell at ``budget`` that re-trained a structure of
    BIPEFT's space (BIPEFT, its variants and its transferred structures; the
    same space and recipe, so only the structure differs): Pearson's r between
    each module type's share of the kept parameters and the test metric, and
    the share of the kept parameters in modules at rank 4 or more. A
    correlation over structures, not a cause: it says where to look. Also the
    parameter-weighted mean depth (the first number in each entry's layer
    name, entries without one left out)."""
    family = {"bipeft", CURVE, *VARIANTS, *TRANSFER}
    by_task: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        if c.get("structure") and c.get("budget_value") == budget and c["method"] in family:
            by_task.setdefault(c["task_key"], []).append(c)
    by_task = {t: g for t, g in by_task.items() if len(g) >= 4}
    if not by_task:
        return []
    types = sorted({e["type"] for g in by_task.values() for c in g for e in c["structure"]["entries"]})
    lines = ["| task | cells | " + " | ".join(f"r({t} share, metric)" for t in types)
             + " | r(rank ≥ 4 share, metric) | r(mean layer, metric) |", "|---|---:|" + "---:|" * (len(types) + 2)]

    def text(r: float | None) -> str:
        return "–" if r is None else f"{r:+.2f}"

    for task, group in sorted(by_task.items()):
        scores = [100 * c["test"][c["metric"]] for c in group]
        shares: dict[str, list[float]] = {t: [] for t in [*types, "big", "depth"]}
        for c in group:
            entries = c["structure"]["entries"]
            total = sum(e["count"] for e in entries) or 1
            for t in types:
                shares[t].append(sum(e["count"] for e in entries if e["type"] == t) / total)
            shares["big"].append(sum(e["count"] for e in entries if (e.get("rank") or 0) >= 4) / total)
            depths = [(int(m.group()), e["count"]) for e in entries
                      if (m := re.search(r"\d+", str(e.get("layer") or "")))]
            shares["depth"].append(sum(d * n for d, n in depths) / (sum(n for _, n in depths) or 1))
        lines.append(f"| {task} | {len(group)} | "
                     + " | ".join(text(_correlation(shares[t], scores)) for t in [*types, "big", "depth"]) + " |")
    return lines


def _refill_note() -> re.Pattern[str]:
    """The re-fill note of a result short of its budget, as a pattern."""
    from bipeft_core.loop import REFILL_NOTE

    pattern = re.escape(REFILL_NOTE)
    for name in ("left", "least"):
        pattern = pattern.replace(re.escape("{" + name + ":,}"), rf"(?P<{name}>[\d,]+)")
    return re.compile(pattern)


def budget_use_lines(cells: list[dict[str, Any]]) -> list[str]:
    """Budget use of every BIPEFT cell that records it. The target is ≥ 97 %
    wherever something in the space still fits: a cell under 97 % passes
    when its re-fill note says what is left is below the smallest addition
    the space offers, or (cells from before that note) when its re-fill ran,
    since a re-fill stops only when nothing fits (docs/search.md)."""
    use = [c for c in cells if c["method"] == "bipeft" and c.get("budget_use")]
    if not use:
        return []
    low = min(use, key=lambda c: c["budget_use"])
    short, unexplained = [], []
    for c in sorted((c for c in use if c["budget_use"] < 0.97), key=lambda c: c["cell"]):
        left = c["budget"] - c["peft_params"]
        note = next((m for n in c.get("notes") or [] if (m := _refill_note().match(n))), None)
        if note and int(note["least"].replace(",", "")) > left:
            short.append(f"{c['cell']}: {left:,} left, smallest addition +{note['least']}")
        elif not note and c.get("refill_log"):
            short.append(f"{c['cell']}: {left:,} left after {len(c['refill_log'])} re-fill additions")
        else:
            unexplained.append(c["cell"])
    verdict = "met" if not unexplained else "missed on " + ", ".join(unexplained)
    text = (f"- BIPEFT budget use: {low['budget_use']:.1%} to {max(c['budget_use'] for c in use):.1%} over "
            f"{len(use)} cells (lowest {low['cell']}; ≥ 97 % wherever something in the space still fits): "
            f"**{verdict}**")
    if short:
        text += "; under 97 % with nothing left that fits: " + "; ".join(short)
    return [text]


def plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'bipeft[plots]'): no plots", file=sys.stderr)
        return []
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    markers = dict(zip(METHODS + EXTRA, "o^sDvP*XhHd<>"))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r["task"] == task):
            colour = {"b0.1": "tab:blue", "b0.5": "tab:orange", "fixed": "tab:grey"}.get(r["budget"], "k")
            ax.errorbar(max(r["peft_params"], 1), r["mean"], yerr=r["std"] or 0, fmt=markers.get(r["method"], "o"),
                        color=colour, capsize=3, label=LABELS.get(r["method"], r["method"]))
        ax.set_xscale("log")
        ax.set_xlabel("trainable PEFT parameters")
        ax.set_ylabel(f"test {rows[0]['metric'] if len(tasks) == 1 else 'metric'} ×100")
        ax.set_title(f"{task} (blue 0.1 %, orange 0.5 %, grey fixed)")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    save(fig, "metric_vs_params.png")

    timed = [r for r in rows if r["budget"] != "fixed" or r["method"] in FIXED]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sub = [r for r in timed if r["task"] == task and r["budget"] in ("b0.1", "fixed")]
        names = [LABELS.get(r["method"], r["method"]) for r in sub]
        ax.barh(names, [r["search_time"] or 0 for r in sub], color="tab:red", label="search")
        ax.barh(names, [r["retrain_time"] or 0 for r in sub], left=[r["search_time"] or 0 for r in sub],
                color="tab:green", label="re-train")
        ax.set_xlabel("wall time, s")
        ax.set_title(f"{task}, 0.1 % and fixed-size methods")
        ax.legend(fontsize=7)
    save(fig, "wall_times.png")

    stepped = [r for r in rows if r["search_pass_start"] is not None]
    if stepped:
        fig, ax = plt.subplots(figsize=(7, 4))
        names = [f"{r['task']} {r['budget'][1:]}% {LABELS[r['method']]}" for r in stepped]
        y = range(len(stepped))
        ax.barh([i + 0.2 for i in y], [r["search_pass_start"] for r in stepped], height=0.4, label="search start")
        ax.barh([i - 0.2 for i in y], [r["search_pass_end"] for r in stepped], height=0.4, label="search end")
        ax.set_yticks(list(y), names, fontsize=7)
        ax.set_xlabel("seconds per forward+backward pass")
        ax.legend(fontsize=7)
        save(fig, "pass_times.png")
    return written


def write_report(out: Path, command: str | None = None) -> list[dict[str, Any]]:
    """Tables, targets and plots from the finished cells; the commands that
    ran cells into ``out`` are kept in ``commands.txt`` and listed."""
    log = out / "commands.txt"
    commands = log.read_text().splitlines() if log.is_file() else []
    if command and command not in commands:
        commands.append(command)
        log.write_text("\n".join(commands) + "\n")
    cells = load_cells(out)
    not_run = [c for c in cells if "not_run" in c]
    cells = [c for c in cells if "not_run" not in c]
    if not cells:
        print(f"no finished cells under {out / 'cells'}", file=sys.stderr)
        return []
    rows = aggregate(cells)
    (out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")

    def seen(values) -> str:
        """Every distinct value across the cells, with how many cells had it when they differ."""
        counts: dict[str, int] = {}
        for v in values:
            counts[str(v)] = counts.get(str(v), 0) + 1
        return counts.popitem()[0] if len(counts) == 1 else " / ".join(f"{v} ({n} cells)" for v, n in counts.items())

    keys = dict.fromkeys(k for c in cells for k in c.get("versions") or {})
    versions = {k: seen((c.get("versions") or {}).get(k) for c in cells) for k in keys}
    lines = ["# Benchmark results", "",
             "Written by `benchmarks/grid.py` from the finished cells in `cells/` (one JSON each); "
             "see docs/benchmarks.md for the protocol and how to read the columns.", "",
             "Produced by: " + "; ".join(f"`{c}`" for c in commands), "",
             f"Cells finished: {len(cells)}. Machine: {seen(c.get('device', 'cpu') for c in cells)}, "
             f"{seen(c.get('torch_threads') for c in cells)} torch threads; "
             + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".", ""]
    lines += ["## Targets", ""] + (targets(rows) or ["- no BIPEFT row yet"]) + budget_use_lines(cells)
    sections = (
        ("Paired differences at 0.1 %", "BIPEFT minus each rival on the same seed (test metric ×100): the mean "
         "over the seeds both have and its t-based 95 % interval.", paired_lines(cells, "bipeft", RIVALS)),
        ("Ablation at 0.1 %", "Each variant against BIPEFT with the paper's rules (`bipeft_paper`), seed by "
         "seed: the 'method' column is the paper's rules, so a negative difference means the variant is better.",
         paired_lines(cells, "bipeft_paper", ABLATIONS)),
        ("One search, several budgets", "Each point of BIPEFT's one-search curve (`--budgets 0.05%,0.1%,0.2%`) "
         "against a separate BIPEFT search at that budget, same seed (test metric ×100; the difference is the "
         "curve minus the separate search).", curve_lines(cells)),
        ("Transfer", "A 0.1 % BIPEFT structure searched on one task, re-trained on another (`bipeft transfer`), "
         "against the target's own search and peft LoRA r=8, same seed (differences: transferred minus the "
         "other).", transfer_lines(cells)),
        ("Structures", "Share of the kept parameters by module type, mean over the seeds of the cells that "
         "store their structure (cells run before issue 10 do not).", structure_lines(cells)),
        ("Structure and score", "Over every 0.1 % cell that re-trained a structure of BIPEFT's space (BIPEFT, "
         "its variants and its transferred structures: one space and one recipe, so only the structure "
         "differs), Pearson's r between a structure's share of kept parameters in each module type (or at "
         "rank 4 or more) and its test metric. A correlation over structures, not a cause.",
         share_score_lines(cells)))
    for title, intro, section_rows in sections:
        if section_rows:
            lines += ["", f"## {title}", "", intro, ""] + section_rows
    lines += ["", "## Tables"] + table(rows)
    noted = [c for c in cells if c.get("notes") and c.get("search_steps")]
    if noted:
        # a supernet search that stopped on its epochs, not on its triggers, is a different search: say which
        # cells (methods without supernet steps note only that they have no search)
        lines += ["", "## Searches that ended with a note", ""] + [
            f"- {c['cell']}: {'; '.join(c['notes'])} ({c['search_steps']} steps, "
            f"triggers fired: {c['triggers']}, search/re-train {c['search_retrain_ratio']:.2f})"
            for c in noted]
    if not_run:
        lines += ["", "## Cells the method cannot run", ""] + [f"- {c['cell']}: {c['not_run']}" for c in not_run]
    pngs = plots(rows, out)
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def settings_clash(cells, done: set[str], out: Path, *, epochs: int | None, max_train: int | None) -> str | None:
    """A message when a finished cell in ``out`` was trained with other epochs
    or another training-set cap than this run asks for: a cell's name does not
    carry them, so the run would skip it and mix the two in one table."""
    for c in cells:
        name = cell_id(**c)
        if name not in done:
            continue
        _, want_epochs, want_cap = cell_settings(c["task"], epochs, max_train)
        found = json.loads((out / "cells" / f"{name}.json").read_text())
        want = {"train_epochs": want_epochs, "max_train": want_cap}
        differs = {k: v for k, v in want.items() if found.get(k) != v}
        if differs:
            have = ", ".join(f"{k}={found.get(k)}" for k in differs)
            asked = ", ".join(f"{k}={v}" for k, v in differs.items())
            return (f"the finished cell {out / 'cells' / name}.json has {have}, this run asks for {asked}; "
                    "give this run its own --out folder (and --work), e.g. --out docs/benchmarks/cola-15-epochs")
    return None


# -- the command line ------------------------------------------------------------------------
def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true",
                    help=f"one task, one seed, capped data: {QUICK} (writes into <out>/quick)".replace("%", "%%"))
    ap.add_argument("--tasks", type=_csv, default=tuple(TASKS), help="comma-separated, of " + ",".join(TASKS))
    ap.add_argument("--budgets", type=_csv, default=BUDGETS)
    ap.add_argument("--methods", type=_csv, default=METHODS, help="comma-separated, of " + ",".join(METHODS))
    ap.add_argument("--seeds", type=lambda t: tuple(int(x) for x in _csv(t)), default=SEEDS)
    ap.add_argument("--max-train", type=int, help="cap every task's training set (quick runs)")
    ap.add_argument("--epochs", type=int, help="override every task's epochs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "runs",
                    help="run folders of the bipeft cells (resumable, not committed)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default=None, help="cpu (default) or cuda")
    ap.add_argument("--list", action="store_true", help="print the cells and whether each is done")
    ap.add_argument("--report", action="store_true", help="only write the report from the finished cells")
    ap.add_argument("--progress", action="store_true", help="progress bars of each cell on stderr")
    ap.add_argument("--set", action="append", metavar="METHOD:KEY=VALUE",
                    help="override one spec field of one method, e.g. autopeft:search.optimizer.trials=6")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for item in args.set or ():
        if ":" not in item.split("=", 1)[0] or "=" not in item:
            ap.error(f"--set {item}: write METHOD:KEY=VALUE, e.g. autopeft:search.optimizer.trials=6")
    for name, given, known in (("task", args.tasks, TASKS), ("method", args.methods, METHODS + EXTRA)):
        unknown = [x for x in given if x not in known]
        if unknown:
            ap.error(f"unknown {name} {', '.join(unknown)}; known: {', '.join(known)}")
    if args.device:
        os.environ["BIPEFT_DEVICE"] = args.device
    if args.cell:  # the child: run one cell, write its result
        from bipeft_core.errors import BudgetError

        cell = json.loads(args.cell)
        try:
            result = run_cell(cell, work=args.work, data_dir=args.data_dir, max_train=args.max_train,
                              epochs=args.epochs, device=args.device, progress=args.progress,
                              overrides=args.set or (), out=args.out)
        except BudgetError as exc:  # e.g. S3Delta's rank-1 space is smaller than 0.5 % of MiniLM: a finding, kept
            _, epochs, cap = cell_settings(cell["task"], args.epochs, args.max_train)
            result = {"cell": cell_id(**cell), "method": cell["method"], "seed": cell["seed"],
                      "budget_value": cell["budget"], "task_key": cell["task"], "not_run": str(exc),
                      "train_epochs": epochs, "max_train": cap,
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        path = args.out / "cells" / f"{cell_id(**cell)}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        os.replace(tmp, path)
        return 0
    if args.quick:
        args.tasks, args.budgets, args.seeds = QUICK["tasks"], QUICK["budgets"], QUICK["seeds"]
        args.methods = tuple(m for m in QUICK["methods"] if m in args.methods) if args.methods != METHODS \
            else QUICK["methods"]
        args.max_train = args.max_train or QUICK["max_train"]
        args.out = args.out / "quick"
        args.work = args.work / "quick"
    command = "python benchmarks/grid.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cells = protocol_cells(args.tasks, args.budgets, args.methods, args.seeds)
    done = {p.stem for p in (args.out / "cells").glob("*.json")}
    if not args.report:
        clash = settings_clash(cells, done, args.out, epochs=args.epochs, max_train=args.max_train)
        if clash:
            ap.error(clash)
    if args.list:
        for c in cells:
            print(f"{'done' if cell_id(**c) in done else 'todo'}  {cell_id(**c)}")
        print(f"{sum(cell_id(**c) in done for c in cells)} of {len(cells)} cells done")
        return 0
    if not args.report:
        todo = [c for c in cells if cell_id(**c) not in done]
        print(f"{len(cells) - len(todo)} of {len(cells)} cells done; running {len(todo)}", flush=True)
        grid_started = time.perf_counter()
        failed = []
        for i, cell in enumerate(todo, 1):
            name = cell_id(**cell)
            if cell["method"] in TRANSFER and not transfer_source(cell, args.out).is_file():
                print(f"[{i}/{len(todo)}] {name}: skipped, its source cell {transfer_source(cell, args.out)} "
                      "is not finished (run it first: --methods bipeft)", flush=True)
                continue
            print(f"[{i}/{len(todo)}] {name} ...", flush=True)
            started = time.perf_counter()
            child = [sys.executable, str(Path(__file__).resolve()), "--cell", json.dumps(cell),
                     "--out", str(args.out), "--work", str(args.work)]
            for flag, value in (("--data-dir", args.data_dir), ("--max-train", args.max_train),
                                ("--epochs", args.epochs), ("--device", args.device)):
                if value is not None:
                    child += [flag, str(value)]
            if args.progress:
                child.append("--progress")
            for item in args.set or ():
                child += ["--set", item]
            code = subprocess.call(child)
            if code:
                failed.append(name)
                print(f"[{i}/{len(todo)}] {name} FAILED (exit {code}); the grid goes on", flush=True)
                if code in (-2, 130):  # Ctrl-C
                    break
                continue
            result = json.loads((args.out / "cells" / f"{name}.json").read_text())
            if "not_run" in result:
                print(f"[{i}/{len(todo)}] {name}: cannot run: {result['not_run']}", flush=True)
                write_report(args.out, command)
                continue
            print(f"[{i}/{len(todo)}] {name}: {result['metric']} {100 * result['test'][result['metric']]:.2f}, "
                  f"{result['peft_params']:,} params, search {result['search_time']:.0f}s, "
                  f"re-train {result['retrain_time']:.0f}s, cell {time.perf_counter() - started:.0f}s, "
                  f"grid {time.perf_counter() - grid_started:.0f}s", flush=True)
            write_report(args.out, command)
        if failed:
            print(f"failed cells: {', '.join(failed)}", file=sys.stderr)
    rows = write_report(args.out, None if args.report else command)
    if rows:
        print("\n".join(table(rows)))
        print("\n".join(["", "Targets:"] + targets(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
