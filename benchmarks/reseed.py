"""Re-train a finished cell's structure with other seeds: is the structure
good or bad, or was its re-train seed lucky or unlucky?

    BIPEFT_DATA_DIR=../shared/data python benchmarks/reseed.py stsb-b0.1-bipeft-s46 --seeds 42,43,44

A grid cell searches and re-trains with one seed, so a low score mixes two
sources: the structure the search found, and the re-train's initialisation
and data order. This re-trains the cell's stored structure (the optimizer
``fixed``, as transfer cells do) on the cell's own task with the protocol's
recipe and epochs, once per seed given, and prints each test metric beside
the cell's own. A structure that scores low on every seed is a search
problem; one that scores as the others do on other seeds was an unlucky
re-train. With ``--out``, writes ``reseed-<cell>.json`` there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid import ROOT, cell_spec  # noqa: E402

CELLS = ROOT / "docs" / "benchmarks" / "cells"


def fixed_spec(cell: dict, structure_file: Path, seed: int, max_train: int | None = None) -> dict:
    """The cell's spec with its search replaced by the stored structure, at ``seed``."""
    data, _ = cell_spec({"task": cell["task_key"], "budget": cell["budget_value"], "method": "bipeft",
                         "seed": seed}, epochs=cell.get("train_epochs"),
                        max_train=max_train or cell.get("max_train"))
    data["search"] = {k: v for k, v in data["search"].items() if k not in (
        "optimizer", "sensitivity", "trigger", "module_selector", "dimension_selector")}
    data["search"]["optimizer"] = {"name": "fixed", "structure": str(structure_file)}
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cell", help="a finished cell's name (docs/benchmarks/cells/<cell>.json) or its file")
    ap.add_argument("--seeds", default="42,43,44", help="comma-separated re-train seeds")
    ap.add_argument("--data-dir", default=os.environ.get("BIPEFT_DATA_DIR"))
    ap.add_argument("--max-train", type=int, default=None, help="cap the training examples (quick checks only)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--work", default=None, help="where the run folders go (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="write reseed-<cell>.json here")
    args = ap.parse_args(argv)
    import torch

    from bipeft_core import Pipeline, load_plugins
    from bipeft_core.runner import Run

    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.cell) if args.cell.endswith(".json") else CELLS / f"{args.cell}.json"
    if not path.is_file():
        ap.error(f"no finished cell {str(path)!r}; give a name from docs/benchmarks/cells/ or a cell file")
    cell = json.loads(path.read_text(encoding="utf-8"))
    if not cell.get("structure"):
        ap.error(f"cell {cell.get('cell', path.stem)!r} stores no structure (cells run before issue 10 do not)")
    name = cell.get("cell", path.stem)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bipeft-reseed-"))
    work.mkdir(parents=True, exist_ok=True)
    structure_file = work / f"{name}.structure.json"
    structure_file.write_text(json.dumps(cell["structure"], indent=1) + "\n", encoding="utf-8")
    metric = cell["metric"]
    plugins = load_plugins()
    scores: dict[int, float] = {}
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        folder = work / f"{name}-retrain-s{seed}"
        metrics_file = folder / "retrain" / "metrics.json"
        if not metrics_file.is_file():
            pipe = Pipeline.from_dict(fixed_spec(cell, structure_file, seed, args.max_train), plugins=plugins,
                                      source=f"{name} (fixed structure)")
            run = Run.open(folder, plugins=plugins) if (folder / "run.json").is_file() else Run.create(
                folder, pipe, argv=sys.argv)
            print(f"[{name}] re-train seed {seed} ...", flush=True)
            run.execute(data_dir=args.data_dir, progress=False)
        scores[seed] = 100 * json.loads(metrics_file.read_text(encoding="utf-8"))["test"][metric]
        print(f"  seed {seed}: test {metric} {scores[seed]:.2f}", flush=True)
    own = 100 * cell["test"][metric]
    values = list(scores.values())
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    print(f"{name}: its own re-train (seed {cell['seed']}) {own:.2f}; other seeds "
          + ", ".join(f"{s}: {v:.2f}" for s, v in scores.items()) + f"; mean {statistics.mean(values):.2f}{spread}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        doc = {"cell": name, "metric": metric, "own_seed": cell["seed"], "own": own,
               "reseeded": {str(s): v for s, v in scores.items()}, "threads": torch.get_num_threads()}
        (out / f"reseed-{name}.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
