"""Step time of the supernet against a plain peft LoRA step, on the same batch.

    BIPEFT_DATA_DIR=../shared/data python benchmarks/step_time.py [--task stsb] [--repeats 10]

"Supernet step" (docs/benchmarks.md): one forward+backward pass of BIPEFT's
supernet (space S2, ranks {1, 4, 8}, MiniLM) in the binary stage with every
module unpruned, against one forward+backward pass of peft's LoRA r=8 on query
and value, on the same batch of 32 training examples. A search iteration has
two such passes (architecture step and weight step). Also timed: the binary
stage with the authors' ``sampled_only`` gate gradients (a module sampled off
is not computed), the weight stage, the binary stage with a growing share of
the modules pruned (the search gets faster as it prunes), and the task head
alone (the floor: no backward through the backbone). Prints a table with the median of
``--repeats`` timed passes after ``--warmup`` untimed ones, and writes it as
JSON and Markdown with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

#: the bar for the binary-stage pass against peft's LoRA r=8 pass (issue 10)
TARGET = 1.2


def timed(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="stsb")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--data-dir")
    ap.add_argument("--out", type=Path, help="folder for step_time.json and step_time.md")
    args = ap.parse_args(argv)

    import peft
    from transformers import AutoTokenizer

    from bipeft_core import Pipeline, load_plugins
    from bipeft_core.runner import default_model_path, default_spec
    from bipeft_core.supernet import Supernet
    from bipeft_core.targets import find_target_map, head_module_names
    from bipeft_core.tasks import get_task, load_task_model, prepare_task

    plugins = load_plugins()
    task = get_task(args.task, plugins)
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_task_model(path, task, seed=42)
    prepared = prepare_task(task, task.load(args.data_dir, seed=42), tokenizer, model)
    rows = list(prepared.train)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(rows), generator=g)[: args.batch_size].tolist()
    batch = prepared.collate([rows[i] for i in pick])
    tokens = int(batch["attention_mask"].sum())
    width = batch["input_ids"].shape[1]
    results: dict[str, float] = {}

    def fwd_bwd(m, loss_fn):
        def run():
            m.zero_grad(set_to_none=True)
            loss_fn(m, batch).backward()
        return run

    # -- the floor: the task head alone -------------------------------------------------
    heads = head_module_names(model)
    for n, p in model.named_parameters():
        p.requires_grad_(any(n.startswith(h + ".") for h in heads))
    model.train()  # dropout on, as in every other timed pass
    results["task head only"] = timed(fwd_bwd(model, prepared.loss), args.repeats, args.warmup)

    # -- peft LoRA r=8 on query, value ----------------------------------------------------
    torch.manual_seed(0)
    lora = peft.get_peft_model(load_task_model(path, task, seed=42), peft.LoraConfig(
        r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"], modules_to_save=heads))
    lora.train()
    results["peft LoRA r=8 (q,v)"] = timed(fwd_bwd(lora, prepared.loss), args.repeats, args.warmup)
    del lora

    # -- the supernet ---------------------------------------------------------------------
    pipe = Pipeline.from_dict(default_spec(task.name), plugins=plugins)
    base = load_task_model(path, task, seed=42)
    tm = find_target_map(base, plugins.target_maps)
    specs = pipe.resolved_space().modules(base, tm, plugins.peft_modules)
    torch.manual_seed(0)
    sn = Supernet(base, specs, plugins.peft_modules, heads=tm.heads, generator=torch.Generator().manual_seed(0))
    sn.train()
    gates = torch.Generator().manual_seed(0)

    def stage(mode: str, gate_gradient: str = "straight_through"):
        def run():
            sn.zero_grad(set_to_none=True)
            sn.configure(mode, temperature=5.0, generator=gates, gate_gradient=gate_gradient)
            prepared.loss(sn, batch).backward()
        return run

    n = len(specs)
    results[f"supernet binary stage, {n} modules unpruned"] = timed(stage("binary"), args.repeats, args.warmup)
    results[f"supernet binary stage, sampled_only gates, {n} modules unpruned"] = timed(
        stage("binary", "sampled_only"), args.repeats, args.warmup)
    results[f"supernet weight stage, {n} modules unpruned"] = timed(stage("weight"), args.repeats, args.warmup)
    results[f"supernet dimension stage, {n} modules unpruned"] = timed(stage("dimension"), args.repeats,
                                                                       args.warmup)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1)).tolist()
    for share in (0.5, 0.9, 1.0):
        with torch.no_grad():
            sn.pruned.zero_()
            sn.pruned[order[: int(share * n)]] = True
        left = int((~sn.pruned).sum())
        results[f"supernet binary stage, {left} modules left"] = timed(stage("binary"), args.repeats, args.warmup)

    lora_t = results["peft LoRA r=8 (q,v)"]
    binary = results[f"supernet binary stage, {n} modules unpruned"]
    info = {"task": task.name, "batch_size": args.batch_size, "padded_length": width, "tokens": tokens,
            "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "torch": torch.__version__, "peft": peft.__version__,
            "ratio_binary_to_lora": binary / lora_t, "target": TARGET}
    lines = [f"Batch of {args.batch_size} {task.name} training examples (padded to {width}, {tokens} tokens), "
             f"median of {args.repeats} forward+backward passes, {torch.get_num_threads()} torch threads, "
             f"{info['machine']}.", "",
             "| pass | seconds | × peft LoRA r=8 |", "|---|---:|---:|"]
    for name, t in results.items():
        lines.append(f"| {name} | {t:.3f} | {t / lora_t:.2f} |")
    verdict = "met" if binary <= TARGET * lora_t else "missed"
    lines += ["", f"Supernet binary-stage pass with every module unpruned: {binary / lora_t:.2f}× a peft LoRA r=8 "
              f"pass (target ≤ {TARGET}×): **{verdict}**."]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "step_time.json").write_text(json.dumps({"seconds": results, **info}, indent=1) + "\n")
        (args.out / "step_time.md").write_text(
            "# Step time: supernet vs peft LoRA\n\nCommand: `python benchmarks/step_time.py "
            + " ".join(sys.argv[1:] if argv is None else argv) + "`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
