"""Run several strategies' spec files on one task through bipeft's runner and
tabulate them: parameter count, search and re-train wall time, metric.

    BIPEFT_DATA_DIR=../shared/data python benchmarks/compare.py --task stsb --budget 0.1% \\
        --max-train 1000 --out benchmarks/results/compare-stsb examples/specs/*.toml

Each spec runs in its own run folder under --out; a finished one is skipped,
so the comparison resumes where it stopped. ``--set NAME:KEY=VALUE`` applies
an override to the spec named NAME only (``--set autopeft:search.optimizer.trials=6``);
without ``NAME:`` it applies to every spec. Writes results.json and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import tomllib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bipeft_core import Pipeline, load_plugins  # noqa: E402
from bipeft_core.cli import _parse_value, _set  # noqa: E402
from bipeft_core.runner import Run  # noqa: E402


def load_spec(path: Path, args: argparse.Namespace) -> dict:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    if isinstance(data.get("budget"), (str, int)):
        data["budget"] = {"value": data["budget"]}
    _set(data, "model.task", args.task)
    if args.budget:
        data["budget"] = {"value": args.budget}
    for table in ("search", "retrain"):
        for key, value in (("seed", args.seed), ("max_train_examples", args.max_train), ("epochs", args.epochs)):
            if value is not None:
                _set(data, f"{table}.{key}", value)
    for item in args.set or ():
        target, _, assignment = item.rpartition(":") if ":" in item.split("=", 1)[0] else ("", "", item)
        if target and target != path.stem:
            continue
        key, value = assignment.split("=", 1)
        _set(data, key, _parse_value(value))
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+", type=Path)
    ap.add_argument("--task", required=True)
    ap.add_argument("--budget")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--max-train", type=int)
    ap.add_argument("--set", action="append", metavar="[NAME:]KEY=VALUE")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    plugins = load_plugins()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.specs:
        folder = args.out / path.stem
        if (folder / "summary.json").is_file():
            print(f"{path.stem}: done, skipped", flush=True)
        else:
            pipe = Pipeline.from_dict(load_spec(path, args), plugins=plugins, source=str(path))
            run = Run.open(folder, plugins=plugins) if (folder / "run.json").is_file() else Run.create(folder, pipe)
            started = time.perf_counter()
            print(f"{path.stem}: running in {folder}", flush=True)
            run.execute(data_dir=args.data_dir, progress=sys.stderr.isatty())
            print(f"{path.stem}: finished in {time.perf_counter() - started:.0f}s", flush=True)
        summary = json.loads((folder / "summary.json").read_text())
        rows.append({"spec": path.stem, **summary})
    (args.out / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    metric = rows[0]["metric"]
    lines = [f"| spec | PEFT params | % of backbone | budget met | test {metric} | search s | re-train s | ratio |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['spec']} | {r['peft_params']:,} | {100 * r['ratio_of_backbone']:.4f} | "
                     f"{'yes' if r['budget_met'] else 'no'} | {100 * r['test'][metric]:.2f} | {r['search_time']:.1f} | "
                     f"{r['retrain_time']:.1f} | {r['search_retrain_ratio']:.2f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
