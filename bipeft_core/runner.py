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

Everything a run needs (the model and its tokenizer, the data, the budget
against the space, the spec) is checked before the folder is written, so a
mistake leaves no folder behind. A run that is interrupted resumes
(:meth:`Run.open` then :meth:`Run.execute`): finished stages are not redone
and the search continues from its checkpoint. A folder that holds no finished
stage is reused by the same spec; ``overwrite=True`` starts a run folder
afresh; any other folder is never overwritten. Every file is written to a
temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

from bipeft_core.errors import BipeftError, SpecError, read_text_file
from bipeft_core.pipeline import Pipeline
from bipeft_core.spec import Component

__all__ = ["Run", "RunError", "check_model_path", "default_spec", "is_hub_id", "transfer",
           "transfer_pipeline", "transfer_run", "transfer_spec", "versions"]

logger = logging.getLogger("bipeft.run")

class RunError(BipeftError):
    """A run folder that cannot be created, read or resumed."""


def default_spec(task: str | None, plugins: Any = None) -> dict[str, Any]:
    """The spec a run starts from when it is given a task and no spec: the
    dict a plugin returns from ``bipeft_default_spec`` (the built-in one is
    BIPEFT on S2 at 0.1 % with the benchmark recipe), with ``model.task`` set
    and, where the spec gives no epochs, the task's default epochs (else 3)
    for the search and the re-train. ``task=None``: for the user's own data
    (``[data]``, set by the caller), 3 epochs."""
    from bipeft_core.plugins import default_plugins
    from bipeft_core.tasks import get_task

    plugins = plugins if plugins is not None else default_plugins()
    data = plugins.hook.bipeft_default_spec()
    if not isinstance(data, dict):
        raise SpecError("no plugin provides a default spec (hook bipeft_default_spec); give a spec with "
                        "--spec FILE, or load the built-in plugin 'defaults'")
    data = json.loads(json.dumps(data))  # a private deep copy
    epochs = 3
    if task is not None:
        found = get_task(task, plugins)
        data.setdefault("model", {})["task"] = found.name
        epochs = found.epochs or 3
    for table in ("search", "retrain"):
        data.setdefault(table, {}).setdefault("epochs", epochs)
    return data


def transfer_spec(run: str | os.PathLike[str], task: str, *, model: str | None = None,
                  plugins: Any = None) -> dict[str, Any]:
    """The spec of a run that re-trains ``run``'s searched structure on
    ``task`` (and on ``model``, a backbone of the same family whose layers
    map one to one; default the run's): the run's spec with its task (or own
    data) replaced, its optimizer the ``fixed`` structure of the run's
    ``structure.json`` (no other search component), and the task's default
    epochs. ``bipeft transfer`` runs it into a normal run folder."""
    from bipeft_core.plugins import default_plugins
    from bipeft_core.spec import COMPONENT_KINDS
    from bipeft_core.tasks import get_task

    plugins = plugins if plugins is not None else default_plugins()
    source = Run.open(run, plugins=plugins)
    structure = (source.folder / "structure.json").resolve()
    if not source.stage_done("search") or not structure.is_file():
        raise RunError(f"{source.folder} has no finished search (no structure.json); finish it first: "
                       f"bipeft run --resume --out {source.folder}")
    found = get_task(task, plugins)
    data = source.pipeline.to_dict()
    data.pop("data", None)
    data.setdefault("model", {})["task"] = found.name
    if model is not None:
        data["model"]["name_or_path"] = model
    search = {k: v for k, v in data.get("search", {}).items() if k not in COMPONENT_KINDS}
    search["optimizer"] = {"name": "fixed", "structure": str(structure)}
    data["search"] = search
    for table in ("search", "retrain"):
        data.setdefault(table, {})["epochs"] = found.epochs or 3
    return data


def transfer_pipeline(run: str | os.PathLike[str], task: str, *, model: str | None = None,
                      epochs: int | None = None, seed: int | None = None, plugins: Any = None) -> Pipeline:
    """The pipeline of :func:`transfer_spec`, with ``epochs`` and ``seed``
    (when given) replacing the task's defaults in both stages."""
    from bipeft_core.plugins import default_plugins

    plugins = plugins if plugins is not None else default_plugins()
    spec = transfer_spec(run, task, model=model, plugins=plugins)
    for table in ("search", "retrain"):
        if epochs is not None:
            spec[table]["epochs"] = epochs
        if seed is not None:
            spec[table]["seed"] = seed
    return Pipeline.from_dict(spec, plugins=plugins, source=f"transfer of {run}")


def transfer_run(pipeline: Pipeline, out: str | os.PathLike[str], *, data_dir: str | None = None,
                 overwrite: bool = False, argv: list[str] | None = None) -> tuple[Run, Data]:
    """Write the run folder ``out`` for a :func:`transfer_pipeline` and load
    its data; nothing is trained yet (:meth:`Run.execute` with ``data=`` does
    that). Everything is checked before the folder is written, as for any
    run: a ``model`` whose layers do not hold the structure's sites, a folder
    that holds another run."""
    Run.check_folder(out, pipeline, overwrite=overwrite, command="run")  # a transfer resumes as a run
    data = Run.prepare(pipeline, data_dir=data_dir)
    return Run.create(out, pipeline, argv=argv, overwrite=overwrite), data


def transfer(run: str | os.PathLike[str], task: str, out: str | os.PathLike[str], *, model: str | None = None,
             epochs: int | None = None, seed: int | None = None, data_dir: str | None = None,
             overwrite: bool = False, plugins: Any = None, progress: bool = False) -> dict[str, Any]:
    """Re-train ``run``'s searched structure on ``task`` (and on ``model``, a
    backbone of the same family whose layers map one to one) into the normal
    run folder ``out``; returns its summary (what ``summary.json`` holds).
    The Python form of ``bipeft transfer RUN --task TASK --out OUT``."""
    pipeline = transfer_pipeline(run, task, model=model, epochs=epochs, seed=seed, plugins=plugins)
    new, data = transfer_run(pipeline, out, data_dir=data_dir, overwrite=overwrite)
    return new.execute(data=data, progress=progress)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("bipeft", "torch", "transformers", "datasets", "evaluate", "peft", "accelerate", "pluggy", "attrs"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def default_model_path(plugins: Any = None) -> str:
    """The model a run uses when its spec names none: what a plugin returns
    from ``bipeft_default_model`` (the built-in one: MiniLM from the ``demo``
    extra)."""
    from bipeft_core.plugins import default_plugins

    plugins = plugins if plugins is not None else default_plugins()
    path = plugins.hook.bipeft_default_model()
    if not path:
        raise RunError("the spec names no model and no plugin provides a default one; give a model with "
                       "--model PATH (or [model] name_or_path in the spec)")
    return str(path)


def default_model_id(plugins: Any = None) -> str | None:
    """The public name (hub id) of the default model, from the plugin hook
    ``bipeft_default_model_id`` (the built-in one:
    ``sentence-transformers/all-MiniLM-L6-v2``); ``None`` when no plugin
    names one."""
    from bipeft_core.plugins import default_plugins

    plugins = plugins if plugins is not None else default_plugins()
    return plugins.hook.bipeft_default_model_id()


#: Files of which a model folder needs at least one to hold a tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def is_hub_id(text: str) -> bool:
    """Whether ``text`` reads as a Hugging Face hub id (``name`` or
    ``org/name``) rather than a path: no leading ``.``, ``/`` or ``~``, at
    most one ``/``, only the characters hub ids allow."""
    return bool(_HUB_ID.fullmatch(text)) and ".." not in text


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub library refuses is not in its cache
        return False


def check_model_path(model_path: str) -> str:
    """Check ``model_path`` before anything is loaded: a local folder must
    hold ``config.json`` and tokenizer files; a name that is no folder must
    read as a hub id, and with the hub offline be in the local cache. Returns
    the path to load from; raises :class:`RunError` naming the value and the fix."""
    path = Path(model_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise RunError(f"the model {model_path!r} is a file; give a model folder (one that "
                           "save_pretrained wrote, with config.json) or a hub id such as org/name")
        if not (path / "config.json").is_file():
            raise RunError(f"the model folder {model_path!r} has no config.json; give a folder that "
                           "save_pretrained wrote, or a hub id such as org/name")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise RunError(f"the model folder {model_path!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                           f"save the model's tokenizer there: tokenizer.save_pretrained({model_path!r})")
        return str(path)
    if not is_hub_id(model_path):
        raise RunError(f"the model path {model_path!r} does not exist; give a local model folder, or a hub id "
                       "such as org/name")
    if _hub_offline() and not _hub_cached(model_path):
        raise RunError(f"the model {model_path!r} is no local folder, so it is read as a hub id, but the hub is "
                       "offline (HF_HUB_OFFLINE is set) and it is not in the local cache; give a local model "
                       "folder (--model PATH), or download it once with network access")
    return model_path


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into
    place, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1, default=str) + "\n")


def check_interval(every: Any, flag: str = "--checkpoint-every") -> int:
    """A checkpoint interval: a whole number of steps >= 1."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise RunError(f"{flag} {every!r}: give a whole number of steps >= 1 (e.g. {flag} 50)")
    return every


def _read_json(path: Path) -> Any:
    if not path.exists():
        raise RunError(f"{path} is missing; is {path.parent} a bipeft run folder?")
    text = read_text_file(path, what="run file", error=RunError,
                          fix="delete the run folder or that file and run again")
    try:
        return json.loads(text)
    except ValueError as exc:  # not JSON
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
    @staticmethod
    def folder_state(folder: str | os.PathLike[str], pipeline: Pipeline | None = None) -> str:
        """What ``folder`` holds, for deciding whether a run may be written there:

        ``"new"`` (absent or empty), ``"same"`` (a run folder of this spec
        with no finished stage: the same command continues it), ``"unstarted"``
        (a run folder of another spec with no finished stage and no
        checkpoint: nothing would be lost), ``"run"`` (a run folder with a
        finished stage or a checkpoint), ``"other"`` (a folder bipeft did not
        write). A path that is a file raises :class:`RunError`."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise RunError(f"--out {str(folder)!r} is a file, not a folder; give a folder for the run (--out DIR)")
        above = next((p for p in folder.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise RunError(f"cannot write the run folder {str(folder)!r}: {str(above)!r} is a file, not a folder; "
                           "choose another place (--out DIR)")
        try:
            if not folder.exists() or not any(folder.iterdir()):
                return "new"
        except OSError as exc:
            raise RunError(f"the run folder {str(folder)!r} cannot be read ({exc.strerror or exc}); "
                           "choose another folder (--out)") from None
        if not (folder / "run.json").is_file():
            return "other"
        try:
            info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
            stored = Pipeline.from_toml(folder / "spec.toml", plugins=pipeline.plugins if pipeline else None)
        except (OSError, ValueError, BipeftError):
            return "run"  # a damaged run folder is never reused silently
        done = any(v.get("done") for v in info.get("stages", {}).values())
        if done:
            return "run"
        if pipeline is not None and stored.to_dict() == pipeline.to_dict():
            return "same"
        checkpoints = [folder / "search", folder / "retrain" / "checkpoint.pt"]
        return "run" if any(p.exists() for p in checkpoints) else "unstarted"

    @classmethod
    def check_folder(cls, folder: str | os.PathLike[str], pipeline: Pipeline, *, overwrite: bool = False,
                     command: str = "run") -> str:
        """Whether a run of ``pipeline`` may be written in ``folder`` (see
        :meth:`folder_state`; returns the state); raises :class:`RunError`
        with the command that resumes the run there (``bipeft COMMAND``)."""
        state = cls.folder_state(folder, pipeline)
        if state == "other":
            raise RunError(f"the folder {folder} already exists, is not empty and is not a bipeft run folder "
                           "(no run.json); choose another folder (--out)")
        if state == "run" and not overwrite:
            raise RunError(f"the run folder {folder} already holds a run with a finished stage or a checkpoint; "
                           f"resume it with bipeft {command} --resume --out {folder}, start it afresh with "
                           "--overwrite, or choose another folder (--out)")
        return state

    @classmethod
    def create(cls, folder: str | os.PathLike[str], pipeline: Pipeline, *, argv: list[str] | None = None,
               overwrite: bool = False, reuse: bool = True) -> Run:
        """Write a new run folder (``spec.toml`` and ``run.json``) for
        ``pipeline``. A folder with a finished stage (or a checkpoint) is
        refused unless ``overwrite``, which empties it first; a run folder of
        the same spec with no finished stage is opened as it is (``reuse``);
        a folder bipeft did not write is always refused. Check the inputs
        first (:meth:`prepare`): nothing here loads the model or the data."""
        from bipeft_core.distributed import setup

        folder = Path(folder)
        if pipeline.model.task is None and not pipeline.data.given:
            raise SpecError("the spec names no task: set [model] task (e.g. \"glue/stsb\") or pass --task, or "
                            "give your own data with --train-file FILE (the [data] table)")
        dist = setup()
        checked: tuple[str | None, str | None] = (None, None)
        if dist.is_main:
            try:
                checked = (cls.check_folder(folder, pipeline, overwrite=overwrite), None)
            except RunError as exc:
                checked = (None, str(exc))
        state, refused = dist.broadcast_object(checked)  # every process raises the main process's error
        if refused:
            raise RunError(refused)
        if state == "same" and reuse and not overwrite:
            return cls.open(folder, plugins=pipeline.plugins)
        if not dist.is_main:
            dist.barrier()  # the main process writes the folder
            return cls.open(folder, plugins=pipeline.plugins)
        try:
            if state != "new":
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / "spec.toml", pipeline.to_toml())
            info = {"format": "bipeft-run", "version": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "argv": argv or sys.argv, "seed": pipeline.search_settings.seed, "versions": versions(),
                    "processes": dist.world, "stages": {}}
            _write_json(folder / "run.json", info)
        except OSError as exc:
            raise RunError(f"cannot write the run folder {str(folder)!r} ({exc.strerror or exc}); choose a "
                           "folder you can write to (--out DIR)") from None
        dist.barrier()
        return cls(folder, pipeline, info)

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, plugins: Any = None) -> Run:
        folder = Path(folder)
        if not (folder / "run.json").is_file():
            raise RunError(f"{folder} is not a bipeft run folder (no run.json); give the folder a run wrote")
        info = _read_json(folder / "run.json")
        if not isinstance(info, dict) or not isinstance(info.get("stages"), dict):
            raise RunError(f"{folder / 'run.json'} is not a bipeft run record; delete the run folder and "
                           "run again")
        pipeline = Pipeline.from_toml(folder / "spec.toml", plugins=plugins)
        return cls(folder, pipeline, info)

    def update_spec(self, pipeline: Pipeline) -> None:
        """Replace the spec of a run whose stages it changes are not done yet
        (the caller checks); the new spec is written at once."""
        self.pipeline = pipeline
        if self.dist.is_main:
            write_atomic(self.folder / "spec.toml", pipeline.to_toml())

    def _save_info(self) -> None:
        if self.dist.is_main:
            _write_json(self.folder / "run.json", self.info)

    def stage_done(self, stage: str) -> bool:
        return self.info["stages"].get(stage, {}).get("done", False)

    # -- loading what the stages need -------------------------------------------------------
    def load_data(self, *, data_dir: str | None = None) -> Data:
        return self.prepare(self.pipeline, data_dir=data_dir)

    @staticmethod
    def prepare(pipeline: Pipeline, *, data_dir: str | None = None, check_budget: bool = True) -> Data:
        """Load and check everything a run of ``pipeline`` needs, before any
        file is written: the model (a folder with its tokenizer, or a hub id),
        the tokenizer against the model's embedding table, the task's data,
        and the budget against the space on this model. Raises a
        :class:`BipeftError` naming the value and the fix."""
        from transformers import AutoTokenizer, PreTrainedModel

        from bipeft_core.tasks import load_task_model, prepare_task, task_of

        pipe = pipeline
        plugins = pipe.get_plugins()
        task = task_of(pipe, plugins)
        model_path = check_model_path(pipe.model.name_or_path or default_model_path(plugins))
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path)
            model = load_task_model(model_path, task, seed=pipe.search_settings.seed, **pipe.model.load_kwargs())
        except OSError as exc:
            hint = ("it is read as a hub id (no local folder has that name); without a network give a local "
                    "folder (--model PATH)" if is_hub_id(model_path) and not Path(model_path).exists()
                    else "give a folder that save_pretrained wrote")
            raise RunError(f"could not load the model {model_path!r}: {str(exc).splitlines()[0]} ({hint})") from None
        embeddings = model.get_input_embeddings() if isinstance(model, PreTrainedModel) else None
        rows = getattr(embeddings, "num_embeddings", None)
        if rows is not None and len(tokenizer) > rows:
            raise RunError(f"the tokenizer of {model_path!r} has {len(tokenizer):,} tokens but the model's "
                           f"embedding table has {rows:,} rows: they do not belong together; save the model's "
                           "own tokenizer in its folder")
        splits = task.load(data_dir, seed=pipe.search_settings.seed,
                           max_train_examples=pipe.search_settings.max_train_examples)
        prepared = prepare_task(task, splits, tokenizer, model, max_length=pipe.model.max_length)
        if check_budget:
            Run._check_budget(pipe, model)
        return Data(task=task, prepared=prepared, model_path=model_path, spare_model=model)

    @staticmethod
    def _check_budget(pipe: Pipeline, model: Any) -> None:
        """The budget against the space on this model, as the search will
        check it, so that a budget out of range fails before a run folder."""
        from bipeft_core.run import _target_map, check_budget
        from bipeft_core.targets import backbone_param_count, find_target_map

        plugins = pipe.get_plugins()
        optimizer = pipe.build_component("optimizer", plugins)
        if not optimizer.budgeted:
            return
        tm = find_target_map(model, plugins.target_maps, _target_map(pipe, plugins, None))
        specs = optimizer.adapt_space(pipe.resolved_space()).modules(model, tm, plugins.peft_modules)
        budget = pipe.budget.resolve(backbone_param_count(model, tm))
        try:
            check_budget(specs, budget)
        except BipeftError as exc:
            raise SpecError(f"budget = {pipe.budget.to_value()!r}: {exc}") from None

    def fresh_model(self, data: Data) -> Any:
        """A freshly loaded backbone with a new task head (seeded)."""
        from bipeft_core.tasks import load_task_model

        if data.spare_model is not None:
            model, data.spare_model = data.spare_model, None
            return model
        return load_task_model(data.model_path, data.task, seed=self.pipeline.search_settings.seed,
                               **self.pipeline.model.load_kwargs())

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
            write_atomic(self.folder / "structure.json", json.dumps(result.structure.to_dict(), indent=2) + "\n")
        self.info["stages"]["search"] = {"done": True, "wall_time": result.wall_time,
                                         "process_time": time.perf_counter() - started, "resumed": resume}
        self._save_info()
        if self.dist.is_main:  # the checkpoint exists only while the search runs (docs/cli.md)
            shutil.rmtree(self.folder / "search", ignore_errors=True)
        return result

    def retrain(self, data: Data, structure: Any, *, progress: bool = True,
                on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """``on_epoch(epoch, record)``: called after each re-train epoch with
        its metrics (train loss and validation metrics)."""
        from safetensors.torch import save_file

        from bipeft_core.training import epoch_listener

        if self.stage_done("retrain"):
            return _read_json(self.folder / "retrain" / "metrics.json")
        out = self.folder / "retrain"
        checkpoint = out / "checkpoint.pt"
        resumed = checkpoint.is_file()
        with epoch_listener(on_epoch):
            rt = self.pipeline.retrain(self.fresh_model(data), structure, data.prepared.train,
                                       data.prepared.validation, data.prepared.test, task=data.prepared,
                                       progress=progress, checkpoint=checkpoint)
        metrics = {"epochs": list(rt.epochs), "best_epoch": rt.best_epoch, "validation": rt.validation,
                   "test": rt.test, "wall_time": rt.wall_time, "peft_params": rt.peft_params,
                   "step_time": rt.step_time,
                   "primary_metric": data.prepared.primary_metric}
        if self.dist.is_main:
            out.mkdir(exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in rt.model.trainable_state_dict().items()}
            tmp = out / "adapter.safetensors.tmp"
            save_file(state, str(tmp), metadata={"format": "bipeft-trainable"})
            os.replace(tmp, out / "adapter.safetensors")
            _write_json(out / "metrics.json", metrics)
            checkpoint.unlink(missing_ok=True)
        self.info["stages"]["retrain"] = {"done": True, "wall_time": rt.wall_time, "resumed": resumed}
        self._save_info()
        return metrics

    def execute(self, *, data_dir: str | None = None, progress: bool = True, stages=("search", "retrain"),
                checkpoint_every: int = 50, on_stage: Callable[[str, Any], None] | None = None,
                data: Data | None = None,
                on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Run the stages not done yet; returns the summary. ``data``: what
        :meth:`prepare` loaded (else it is loaded here); ``on_epoch``: see
        :meth:`retrain`."""
        check_interval(checkpoint_every)
        if data is None:
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
            metrics = self.retrain(data, result.structure, progress=progress, on_epoch=on_epoch)
            if on_stage:
                on_stage("retrain", metrics)
            summary.update(metric=metrics["primary_metric"], test=metrics["test"], validation=metrics["validation"],
                           retrain_time=metrics["wall_time"],
                           search_retrain_ratio=summary["search_time"] / max(metrics["wall_time"], 1e-9))
        curve = result.extra.get("curve") if isinstance(result.extra, dict) else None
        if curve and "retrain" in stages:
            summary["curve"] = str(self.curve(data, result, curve, progress=progress))
        if self.dist.is_main:
            _write_json(self.folder / "summary.json", summary)
        self.dist.barrier()
        return summary

    #: The reference points of a curve: fixed methods re-trained with the same recipe.
    CURVE_REFERENCES = (("lora r=1", {"name": "manual", "method": "lora", "rank": 1}),
                        ("lora r=2", {"name": "manual", "method": "lora", "rank": 2}),
                        ("lora r=4", {"name": "manual", "method": "lora", "rank": 4}),
                        ("lora r=8", {"name": "manual", "method": "lora", "rank": 8}),
                        ("bitfit", {"name": "manual", "method": "bitfit"}))

    def curve(self, data: Data, result: Any, curve: list[dict[str, Any]], *, progress: bool = False) -> Path:
        """The budget-to-quality curve of a search with several budgets:
        re-trains each larger budget's structure (``curve/<budget>/``) and the
        reference points (LoRA r=1, 2, 4, 8 and BitFit, ``curve/reference/``;
        none with ``[budget] references = false``) with the re-train recipe,
        and writes ``curve.json`` (one entry per budget: ``budget``,
        ``params``, ``metric``; the references apart) and ``curve.png``. Each finished point is kept: a resumed run re-trains
        only the missing ones."""
        from bipeft_core.structure import Structure

        primary = data.prepared.primary_metric
        main = _read_json(self.folder / "retrain" / "metrics.json")
        entries = [{"budget": result.budget, "params": result.count, "metric": main["test"].get(primary),
                    "validation": main["validation"].get(primary), "source": "search", "step": result.steps,
                    "folder": "."}]
        for c in curve:
            folder = self.folder / "curve" / str(c["budget"])
            metrics = self._point(folder, data, Structure.from_dict(c["structure"]), progress)
            entries.append({"budget": c["budget"], "params": c["count"], "metric": metrics["test"].get(primary),
                            "validation": metrics["validation"].get(primary), "source": c["source"],
                            "step": c["step"], "folder": str(folder.relative_to(self.folder))})
        references = []
        for name, optimizer in self.CURVE_REFERENCES if self.pipeline.curve_references else ():
            folder = self.folder / "curve" / "reference" / name.replace(" ", "").replace("=", "")
            structure_file = folder / "structure.json"
            if structure_file.is_file():
                structure = Structure.load(structure_file)
            else:
                ref = attrs.evolve(self.pipeline, optimizer=Component.parse(optimizer, "curve reference"),
                                   sensitivity=None, trigger=None, module_selector=None, dimension_selector=None,
                                   budgets=())
                structure = ref.search(self.fresh_model(data), data.prepared.train, task=data.prepared).structure
                if self.dist.is_main:
                    folder.mkdir(parents=True, exist_ok=True)
                    structure.save(structure_file)
            metrics = self._point(folder, data, structure, progress)
            references.append({"name": name, "params": structure.count(), "metric": metrics["test"].get(primary),
                               "validation": metrics["validation"].get(primary),
                               "folder": str(folder.relative_to(self.folder))})
        doc = {"metric": primary, "task": data.task.name, "strategy": result.strategy,
               "entries": sorted(entries, key=lambda e: e["budget"]), "reference": references}
        if self.dist.is_main:
            _write_json(self.folder / "curve.json", doc)
            try:
                from bipeft_core.plots import plot_curve

                plot_curve(doc, self.folder / "curve.png")
            except ImportError as exc:  # matplotlib is optional: the table is written
                logger.warning("no curve.png (%s); curve.json is written", exc)
        return self.folder / "curve.json"

    def _point(self, folder: Path, data: Data, structure: Any, progress: bool) -> dict[str, Any]:
        """Re-train ``structure`` into ``folder`` (kept: a finished point is read back)."""
        from safetensors.torch import save_file

        done = folder / "metrics.json"
        if done.is_file():
            return _read_json(done)
        rt = self.pipeline.retrain(self.fresh_model(data), structure, data.prepared.train, data.prepared.validation,
                                   data.prepared.test, task=data.prepared, progress=progress)
        metrics = {"epochs": list(rt.epochs), "best_epoch": rt.best_epoch, "validation": rt.validation,
                   "test": rt.test, "wall_time": rt.wall_time, "peft_params": rt.peft_params,
                   "primary_metric": data.prepared.primary_metric}
        if self.dist.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            structure.save(folder / "structure.json")
            state = {k: v.detach().cpu().contiguous() for k, v in rt.model.trainable_state_dict().items()}
            save_file(state, str(folder / "adapter.safetensors"), metadata={"format": "bipeft-trainable"})
            _write_json(done, metrics)
        return metrics
