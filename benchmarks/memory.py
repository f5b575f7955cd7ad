"""Peak memory of a MiniLM search with and without gradient checkpointing.

    BIPEFT_DATA_DIR=../shared/data python benchmarks/memory.py [--task stsb] [--max-train 640]

Runs the default search (BIPEFT on S2 at 0.1 %, the benchmark recipe) for
one epoch on ``--max-train`` training examples, once per setting, each in a
fresh ``bipeft search`` process, and prints each process's peak resident
memory (``ru_maxrss`` of that child, from ``os.wait4``) and its wall time.
The settings: the default, ``train.gradient_checkpointing = true``,
``train.mixed_precision = "bf16"``, and ``train.grad_accum_steps = 4`` with a
quarter of the batch (the same effective batch). The peak includes Python,
torch and the model (about the first row's figure less the activations), so
differences between rows are what a setting saves. ``--out FILE`` writes
the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "default": [],
    "gradient checkpointing": ["--set", "train.gradient_checkpointing=true"],
    "bf16 autocast": ["--set", 'train.mixed_precision="bf16"'],
    "grad accumulation 4 x 8": ["--set", "train.grad_accum_steps=4", "--set", "search.batch_size=8"],
}


def run(args: argparse.Namespace, extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "bipeft_core", "search", "--task", args.task, "--epochs", "1",
               "--max-train", str(args.max_train), "--out", str(Path(tmp) / "run"), *extra]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child becomes the search
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.execv(sys.executable, cmd)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd)} failed (exit {os.waitstatus_to_exitcode(status)})")
        return {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="stsb")
    ap.add_argument("--max-train", type=int, default=640)
    ap.add_argument("--data-dir")
    ap.add_argument("--only", help="comma-separated setting names (default: all)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(SETTINGS)
    rows = {}
    print(f"{'setting':<26} {'peak RSS (MB)':>14} {'wall (s)':>9}")
    for name in names:
        rows[name] = run(args, SETTINGS[name])
        print(f"{name:<26} {rows[name]['peak_rss_mb']:>14.0f} {rows[name]['wall_s']:>9.1f}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"task": args.task, "max_train": args.max_train, "rows": rows,
                                        "machine": platform.processor() or platform.machine(),
                                        "threads": os.cpu_count()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
