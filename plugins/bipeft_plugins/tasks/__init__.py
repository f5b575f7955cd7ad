"""The built-in tasks: the text-task implementation of the task contract,
and GLUE and SuperGLUE.

Registered through ``bipeft_register_tasks`` as ``glue/<name>`` (cola, sst2,
mrpc, qqp, stsb, mnli, qnli, rte) and ``superglue/<name>`` (boolq, cb, copa,
multirc, record, rte, wic); each also answers to its bare name, except
SuperGLUE's ``rte`` (a bare ``rte`` is GLUE's). Each reads the official file
format from ``<data_dir>/glue/<TASK>/`` or ``<data_dir>/superglue/<TASK>/``
(see ``docs/tasks.md``), splits by the S3Delta protocol and scores with the
metric scripts shipped in ``bipeft_plugins.metrics``.

The modules: ``text`` (:class:`TextTask`, the concrete task a text task
subclasses, and :class:`PreparedTextTask`: tokenising, batches, losses,
predictions and scores), ``models`` (model families, task heads, building
and loading models), ``readers`` (the data folder, the TSV and JSON Lines
readers, the S3Delta splits and the training cap), ``_formats`` (the
data-folder layout and label conversion both benchmarks share), ``glue``
(the TSV reader and the GLUE tasks), ``super_glue`` (the JSON Lines readers
and the SuperGLUE tasks), ``files`` (the user's own CSV, JSON and JSON Lines
files, hook ``bipeft_task_from_data``). A third party's text task subclasses
:class:`TextTask` and uses the readers (docs/tasks.md).
"""

from __future__ import annotations

from typing import Any

from bipeft_core.hookspecs import hookimpl
from bipeft_plugins.tasks._formats import DATA_LAYOUT
from bipeft_plugins.tasks.files import FileTask, file_task
from bipeft_plugins.tasks.glue import GLUE, GLUE_TASKS, GlueTask
from bipeft_plugins.tasks.lm import CausalLMTask, causal_lm_task
from bipeft_plugins.tasks.models import build_model, load_model, model_family
from bipeft_plugins.tasks.readers import (
    DATA_DIR_ENV,
    cap_rows,
    read_jsonl,
    read_tsv,
    resolve_data_dir,
    s3delta_split,
)
from bipeft_plugins.tasks.super_glue import (
    SUPERGLUE,
    SUPERGLUE_TASKS,
    COPATask,
    MultiRCTask,
    ReCoRDTask,
    SuperGlueTask,
    WiCTask,
)
from bipeft_plugins.tasks.text import PreparedTextTask, TextTask, prepare_text_task

__all__ = [
    "COPATask",
    "DATA_DIR_ENV",
    "DATA_LAYOUT",
    "CausalLMTask",
    "FileTask",
    "GLUE",
    "GLUE_TASKS",
    "GlueTask",
    "MultiRCTask",
    "PreparedTextTask",
    "ReCoRDTask",
    "SUPERGLUE",
    "SUPERGLUE_TASKS",
    "SuperGlueTask",
    "TASKS",
    "TextTask",
    "WiCTask",
    "bipeft_register_tasks",
    "build_model",
    "bipeft_task_from_data",
    "cap_rows",
    "causal_lm_task",
    "file_task",
    "load_model",
    "model_family",
    "prepare_text_task",
    "read_jsonl",
    "read_tsv",
    "resolve_data_dir",
    "s3delta_split",
]

#: Every built-in task.
TASKS: tuple[TextTask, ...] = GLUE + SUPERGLUE


@hookimpl
def bipeft_register_tasks(registry: object) -> None:
    """Register the built-in GLUE and SuperGLUE tasks."""
    for task in TASKS:
        registry.add(task)  # type: ignore[attr-defined]


@hookimpl
def bipeft_task_from_data(data: dict[str, Any]) -> TextTask | CausalLMTask:
    """The built-in reader of own data (files or a ``datasets.load_dataset``
    source): a causal language-model task for ``kind = "causal_lm"``, else a
    text classification or regression task."""
    if (data.get("kind") or "auto") == "causal_lm":
        return causal_lm_task(data)
    return file_task(data)
