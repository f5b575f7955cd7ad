"""The built-in tasks: GLUE and SuperGLUE.

Registered through ``bipeft_register_tasks`` as ``glue/<name>`` (cola, sst2,
mrpc, qqp, stsb, mnli, qnli, rte) and ``superglue/<name>`` (boolq, cb, copa,
multirc, record, rte, wic); each also answers to its bare name, except
SuperGLUE's ``rte`` (a bare ``rte`` is GLUE's). Each reads the official file
format from ``<data_dir>/glue/<TASK>/`` or ``<data_dir>/superglue/<TASK>/``
(see ``docs/tasks.md``), splits by the S3Delta protocol and scores with the
metric scripts shipped in ``bipeft_plugins.metrics``.

The modules: ``_formats`` (the data-folder layout and label conversion both
benchmarks share), ``glue`` (the TSV reader and the GLUE tasks),
``super_glue`` (the JSON Lines readers and the SuperGLUE tasks).
"""

from __future__ import annotations

from bipeft_core.hookspecs import hookimpl
from bipeft_core.tasks import Task
from bipeft_plugins.tasks._formats import DATA_LAYOUT
from bipeft_plugins.tasks.glue import GLUE, GLUE_TASKS, GlueTask
from bipeft_plugins.tasks.super_glue import (
    SUPERGLUE,
    SUPERGLUE_TASKS,
    COPATask,
    MultiRCTask,
    ReCoRDTask,
    SuperGlueTask,
    WiCTask,
)

__all__ = [
    "COPATask",
    "DATA_LAYOUT",
    "GLUE",
    "GLUE_TASKS",
    "GlueTask",
    "MultiRCTask",
    "ReCoRDTask",
    "SUPERGLUE",
    "SUPERGLUE_TASKS",
    "SuperGlueTask",
    "TASKS",
    "WiCTask",
    "bipeft_register_tasks",
]

#: Every built-in task.
TASKS: tuple[Task, ...] = GLUE + SUPERGLUE


@hookimpl
def bipeft_register_tasks(registry: object) -> None:
    """Register the built-in GLUE and SuperGLUE tasks."""
    for task in TASKS:
        registry.add(task)  # type: ignore[attr-defined]
