"""Search and re-train timings on a randomly initialised T5-large-shaped
backbone (timing only: random weights and random tokens, no accuracy).

    python benchmarks/timing.py --device cuda                       # T5-large, BIPEFT, S3Delta, PrunePEFT
    python benchmarks/timing.py --backbone tiny --examples 64       # the same path on a tiny T5 (CPU check)

Each method's spec file in ``examples/specs/`` is used as it is, with the
space S2 at the paper's budget of 1.39‱ of the backbone, on a synthetic
text-to-text task: ``--examples`` random inputs of ``--length`` tokens, each
with a 2-token target. The search runs ``--epochs`` epochs over them (BIPEFT
ends early once its triggers are spent; its warm-up is at most a third of
the epochs, as in the grid), then the found structure is
re-trained from fresh random weights for the same epochs. Prints and (with
``--out``) writes the search and re-train wall times, their ratio, the
median time of a search step at its start and end, the peak GPU memory (on
CUDA), and the device.
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

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid import fit_warmup  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "examples" / "specs"
#: t5-large's shape (737M parameters with its embeddings)
T5_LARGE = {"d_model": 1024, "d_ff": 4096, "num_layers": 24, "num_decoder_layers": 24, "num_heads": 16,
            "d_kv": 64, "vocab_size": 32128}
TINY = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4, "d_kv": 8,
        "vocab_size": 128}


def build_t5(shape: dict, seed: int) -> torch.nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(**shape, decoder_start_token_id=0, pad_token_id=0, dropout_rate=0.1)
    return T5ForConditionalGeneration(config)


def synthetic(n: int, length: int, vocab: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, length), generator=g)
    targets = torch.randint(2, vocab, (n, 2), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(length, dtype=torch.long), "labels": targets[i]}
            for i in range(n)]


def loss_fn(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", choices=("t5-large", "tiny"), default="t5-large")
    ap.add_argument("--methods", default="bipeft,s3delta,prunepeft")
    ap.add_argument("--device", default=None, help="cuda, cpu (default: cuda when available)")
    ap.add_argument("--examples", type=int, default=4096)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget", default="1.39bp")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, help="folder for timing.json and timing.md")
    args = ap.parse_args(argv)
    if args.device:
        os.environ["BIPEFT_DEVICE"] = args.device

    import tomllib

    from bipeft_core import Pipeline, load_plugins
    from bipeft_core.cli import _set
    from bipeft_core.distributed import Dist
    from bipeft_core.training import default_collate

    device = Dist().device()
    shape = T5_LARGE if args.backbone == "t5-large" else TINY
    plugins = load_plugins()
    data = synthetic(args.examples, args.length, shape["vocab_size"], args.seed)
    rows = []
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        spec = tomllib.loads((SPECS / f"{method}.toml").read_text(encoding="utf-8"))
        spec["budget"] = {"value": args.budget}
        spec["space"] = {"name": "s2", "ranks": [1, 4, 8]}
        spec.get("model", {}).pop("task", None)
        for table in ("search", "retrain"):
            for key, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("seed", args.seed)):
                _set(spec, f"{table}.{key}", value)
        fit_warmup(spec, args.epochs)
        pipe = Pipeline.from_dict(spec, plugins=plugins, source=f"{method}.toml")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model = build_t5(shape, args.seed)
        t0 = time.perf_counter()
        result = pipe.search(model, data, loss_fn=loss_fn, collate_fn=default_collate, device=device)
        search_s = time.perf_counter() - t0
        peak_search = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        del model
        fresh = build_t5(shape, args.seed)
        t0 = time.perf_counter()
        rt = pipe.retrain(fresh, result.structure, data, loss_fn=loss_fn, collate_fn=default_collate)
        retrain_s = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        times = [h["step_time"] for h in result.history if "step_time" in h]
        row = {"method": method, "strategy": result.strategy, "peft_params": result.count,
            "budget": result.budget, "backbone_params": result.backbone_params, "search_s": search_s,
            "retrain_s": retrain_s, "ratio": search_s / retrain_s, "search_steps": result.steps,
            "step_start_s": statistics.median(times[1:6]) if len(times) >= 6 else None,
            "step_end_s": statistics.median(times[-5:]) if len(times) >= 6 else None,
            "retrain_step_s": rt.step_time, "peak_gib_search": peak_search, "peak_gib": peak}
        rows.append(row)
        del fresh, rt
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    lines = [f"{args.backbone}-shaped random T5, {rows[0]['backbone_params']:,} backbone parameters, space S2, "
             f"budget {args.budget} = {rows[0]['budget']:,}; {args.examples} random examples of {args.length} "
             f"tokens, batch {args.batch_size}, {args.epochs} epochs; device {name}; torch {torch.__version__}.", "",
             "| method | PEFT params | search s | re-train s | search/re-train | search steps | step s, start | "
             "step s, end | re-train step s | peak GiB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v, spec=".2f"):
        return "–" if v is None else format(v, spec)

    for r in rows:
        lines.append(f"| {r['method']} | {r['peft_params']:,} | {r['search_s']:.1f} | {r['retrain_s']:.1f} | "
                     f"{r['ratio']:.2f} | {r['search_steps']} | {f(r['step_start_s'])} | {f(r['step_end_s'])} | "
                     f"{f(r['retrain_step_s'])} | {f(r['peak_gib'], '.1f')} |")
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "timing.json").write_text(json.dumps({"device": name, "rows": rows, "args": vars(args)},
                                                         indent=1, default=str) + "\n")
        (args.out / "timing.md").write_text("# Timings on a random T5-large-shaped backbone\n\nCommand: "
                                            "`python benchmarks/timing.py " + " ".join(sys.argv[1:] if argv is None
                                                                                      else argv)
                                            + "`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
