"""Run by tests/test_distributed.py under a launcher (accelerate or torchrun):
a BIPEFT search and re-train on a tiny random BERT; every rank writes what it
decided to OUT/rank<r>.json. With ``skewed``, rank 1 trains on other data
(its labels flipped), so only reduced values can make the ranks agree. Mode
``baselines`` runs the S3Delta, PrunePEFT and AutoPEFT searches instead, on
the skewed data."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from bipeft_core import Pipeline, hookimpl, load_plugins
from bipeft_core.distributed import setup
from bipeft_core.testing import tiny_model
from bipeft_core.testing import toy_accuracy as accuracy
from bipeft_core.testing import toy_examples as synthetic


class Decisions:
    def __init__(self):
        self.events = []

    @hookimpl
    def bipeft_on_trigger(self, event, state):
        self.events.append([list(event.pruned), [list(x) for x in event.fixed]])





def baselines(out: Path, dist) -> None:
    train = synthetic(128, flip=dist.rank == 1)
    val = synthetic(32)
    found = {}
    for optimizer, space in (({"name": "s3delta"}, "s2"), ({"name": "prunepeft", "rounds": 4}, "s2"),
                             ({"name": "autopeft", "trials": 3}, "s1")):
        pipe = Pipeline(budget=1500, space=space, optimizer=optimizer,
                        search_settings={"epochs": 2, "batch_size": 16, "lr": 1e-3},
                        plugins=load_plugins(entry_points=False))
        result = pipe.search(tiny_model("bert"), train, val, evaluate_fn=lambda m: accuracy(m, val))
        found[optimizer["name"]] = {"structure": result.structure.to_dict(), "count": result.count,
                                    "losses": [h["loss"] for h in result.history],
                                    "trials": [t.get("accuracy") for t in result.extra.get("trials", [])],
                                    "pruned": [list(e.pruned) for e in result.trace]}
    (out / f"rank{dist.rank}.json").write_text(json.dumps({"world": dist.world, "rank": dist.rank, **found}))


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    out.mkdir(parents=True, exist_ok=True)
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 256
    torch.set_num_threads(1)
    dist = setup()
    if mode == "baselines":
        return baselines(out, dist)
    if mode == "noreduce":  # control: without averaged gradients the ranks must disagree, and it is caught
        from bipeft_core.distributed import Dist, DistributedMismatchError

        Dist.all_reduce_grads = lambda self, params: None
    decisions = Decisions()
    pipe = Pipeline(budget=1500, trigger={"name": "budget_stability", "warmup_epochs": 0.5, "max_triggers": 15},
                    search_settings={"epochs": 3, "batch_size": 16, "lr": 1e-3},
                    retrain_settings={"epochs": 1, "batch_size": 16}, plugins=load_plugins([decisions], entry_points=False))
    train = synthetic(n, flip=mode in ("skewed", "noreduce") and dist.rank == 1)
    started = time.perf_counter()
    try:
        result = pipe.search(tiny_model("bert"), train, checkpoint_dir=out / "checkpoint")
    except Exception as exc:
        if mode == "noreduce" and isinstance(exc, DistributedMismatchError):
            (out / f"rank{dist.rank}.json").write_text(json.dumps({"mismatch": str(exc), "world": dist.world}))
            return
        raise
    search_time = time.perf_counter() - started
    retrained = pipe.retrain(tiny_model("bert"), result.structure, train)
    head = [p.detach().flatten()[:5].tolist() for p in retrained.model.peft.parameters()][:3]
    (out / f"rank{dist.rank}.json").write_text(json.dumps({
        "world": dist.world, "rank": dist.rank, "state": str(dist.state.distributed_type),
        "structure": result.structure.to_dict(), "count": result.count,
        "decisions": decisions.events, "alpha": result.structure.count(), "search_time": search_time,
        "retrained_weights": head, "retrained_params": retrained.peft_params,
    }))


if __name__ == "__main__":
    main()
