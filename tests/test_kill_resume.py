"""A run killed with SIGKILL (no clean-up at all) at several moments ends,
once the command is given again (or resumed), with the structure, metrics
and re-trained weights of an uninterrupted run: killed before run.json
exists, in the middle of the search, and during the re-train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

TRIGGER = 'search.trigger={name="budget_stability",warmup_epochs=0.25,max_triggers=6,window=2}'


def command(model: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "bipeft_core", "-q", "run", "--task", "rte", "--model", str(model),
            "--out", str(out), "--data-dir", str(data), "--max-train", "160", "--budget", "2000",
            "--epochs", "2", "--set", "retrain.epochs=4", "--set", TRIGGER, "--set", "search.batch_size=8",
            "--set", "retrain.batch_size=8", "--checkpoint-every", "1"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def kill_when(args: list[str], ready, *, timeout: float = 300) -> None:
    """Start ``args`` and SIGKILL it as soon as ``ready()`` holds; the process
    must still be running then (else the test would prove nothing)."""
    proc = subprocess.Popen(args, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started = time.monotonic()
    try:
        while not ready(proc):
            assert proc.poll() is None, f"the run ended before the moment to kill it: {proc.stderr.read()!r}"
            assert time.monotonic() - started < timeout
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def finish(args: list[str]) -> None:
    proc = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr


def outcome(folder: Path) -> tuple[dict, dict, dict]:
    from safetensors.torch import load_file

    metrics = json.loads((folder / "retrain" / "metrics.json").read_text())
    kept = {k: metrics[k] for k in ("epochs", "best_epoch", "validation", "test", "peft_params")}
    return (json.loads((folder / "structure.json").read_text()), kept,
            load_file(str(folder / "retrain" / "adapter.safetensors")))


def test_sigkill_at_three_moments_then_the_same_result(tiny_model_dir, data_dir, tmp_path):
    ref = tmp_path / "ref"
    finish(command(tiny_model_dir, data_dir, ref))
    want = outcome(ref)

    # 1. before run.json exists (the inputs are being checked): the same command starts again
    early = tmp_path / "early"
    kill_when(command(tiny_model_dir, data_dir, early), lambda proc: time.sleep(1.0) or True)
    assert not (early / "run.json").exists()
    finish(command(tiny_model_dir, data_dir, early))

    # 2. in the middle of the search, after a checkpoint: --resume continues from it
    mid = tmp_path / "mid-search"
    kill_when(command(tiny_model_dir, data_dir, mid),
              lambda proc: (mid / "search" / "search-checkpoint.pt").is_file())
    assert not (mid / "search_result.json").exists()
    finish([sys.executable, "-m", "bipeft_core", "-q", "run", "--resume", "--out", str(mid),
            "--data-dir", str(data_dir)])
    assert json.loads((mid / "run.json").read_text())["stages"]["search"]["resumed"]

    # 3. during the re-train, after its first epoch: the same command continues it too
    late = tmp_path / "retrain"
    kill_when(command(tiny_model_dir, data_dir, late), lambda proc: (late / "retrain" / "checkpoint.pt").is_file())
    assert not (late / "retrain" / "metrics.json").exists()
    finish([sys.executable, "-m", "bipeft_core", "-q", "run", "--resume", "--out", str(late),
            "--data-dir", str(data_dir)])
    assert json.loads((late / "run.json").read_text())["stages"]["retrain"]["resumed"]

    for folder in (early, mid, late):
        structure, metrics, weights = outcome(folder)
        assert structure == want[0], folder.name
        assert metrics == want[1], folder.name
        assert weights.keys() == want[2].keys() and all(torch.equal(weights[k], want[2][k]) for k in weights)
        assert not (folder / "search").exists() and not (folder / "retrain" / "checkpoint.pt").exists()
