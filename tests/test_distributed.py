"""Multi-process search under ``accelerate launch`` (two gloo processes on
this CPU): identical decisions on every rank, from reduced values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ACCELERATE = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")

pytestmark = pytest.mark.skipif(ACCELERATE is None, reason="the accelerate command is not on PATH")


TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def launch(*args: str, timeout: int = 600, launcher: str = "accelerate") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if launcher == "torchrun":
        cmd = [TORCHRUN, "--nproc_per_node", "2", *args]
    else:
        cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def ranks(folder: Path) -> list[dict]:
    out = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]
    assert [o["world"] for o in out] == [2, 2], "the launcher must start two processes"
    return out


def test_two_processes_reach_the_same_structure(tmp_path):
    launch(str(HERE / "dist_search.py"), str(tmp_path), "same")
    a, b = ranks(tmp_path)
    assert a["structure"] == b["structure"] and a["count"] == b["count"] <= 1500
    assert a["decisions"] == b["decisions"] and a["decisions"]
    # the processes are accelerate's: its state holds both (gloo on this CPU)
    assert a["state"] == b["state"] == "DistributedType.MULTI_CPU"
    assert a["retrained_weights"] == b["retrained_weights"] and a["retrained_params"] == a["count"]
    # the checkpoint was written once, by the main process
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["search-checkpoint.pt"]


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not on PATH")
def test_torchrun_and_accelerate_launch_reach_the_same_structure(tmp_path):
    """Both launchers go through accelerate's state: same processes, same search."""
    launch(str(HERE / "dist_search.py"), str(tmp_path / "acc"), "same", "128")
    launch(str(HERE / "dist_search.py"), str(tmp_path / "tr"), "same", "128", launcher="torchrun")
    acc, tr = ranks(tmp_path / "acc"), ranks(tmp_path / "tr")
    assert tr[0]["state"] == "DistributedType.MULTI_CPU"
    assert acc[0]["structure"] == tr[0]["structure"] and acc[0]["decisions"] == tr[0]["decisions"]


def test_decisions_agree_when_a_rank_sees_different_data(tmp_path):
    launch(str(HERE / "dist_search.py"), str(tmp_path), "skewed")
    a, b = ranks(tmp_path)
    assert a["decisions"] == b["decisions"] and a["structure"] == b["structure"]
    # control: without averaging the gradients the ranks disagree, and the digest check catches it
    control = tmp_path / "control"
    control.mkdir()
    launch(str(HERE / "dist_search.py"), str(control), "noreduce")
    assert all("ranks disagree" in r["mismatch"] for r in ranks(control))


def test_baseline_searches_agree_across_processes(tmp_path):
    pytest.importorskip("optuna")
    launch(str(HERE / "dist_search.py"), str(tmp_path), "baselines")
    a, b = ranks(tmp_path)
    for name in ("s3delta", "prunepeft", "autopeft"):
        assert a[name] == b[name], name  # rank 1's labels are flipped: only averaged gradients agree
        assert a[name]["count"] <= 1500 or name == "autopeft"
    assert a["prunepeft"]["pruned"] and a["autopeft"]["trials"]


def test_cli_run_under_the_launcher_writes_one_result(tmp_path, tiny_model_dir, data_dir):
    out = tmp_path / "run"
    launch("-m", "bipeft_core", "-q", "run", "--task", "rte", "--model", str(tiny_model_dir), "--out", str(out),
           "--data-dir", str(data_dir), "--max-train", "64", "--epochs", "1", "--budget", "2000",
           "--set", 'search.trigger={name="budget_stability",warmup_epochs=0.25,max_triggers=6,window=2}',
           "--set", "search.batch_size=8", "--set", "retrain.batch_size=8")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files.count("search_result.json") == 1 and files.count("summary.json") == 1
    info = json.loads((out / "run.json").read_text())
    assert info["processes"] == 2 and info["stages"]["search"]["done"] and info["stages"]["retrain"]["done"]
