"""What the GLUE and SuperGLUE readers share: the layout of the data folder
that holds both benchmarks' official downloads, the format help that ends
every reading error, and the conversion of a label in a file to a class
index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bipeft_core.errors import DataError
from bipeft_plugins.tasks.text import TextTask

__all__ = ["DATA_LAYOUT", "NLI2", "class_index", "format_help"]

#: The data-folder layout the GLUE and SuperGLUE tasks expect (shown in every DataError).
DATA_LAYOUT = """\
<data_dir>/glue/<TASK>/train.tsv and dev.tsv (MNLI: dev_matched.tsv), GLUE TSV files
    with a header row (CoLA: none), tab-separated, no quoting;
<data_dir>/superglue/<TASK>/train.jsonl and val.jsonl, SuperGLUE JSON Lines;
<TASK> is the folder name of the official downloads: CoLA, SST-2, MRPC, QQP, STS-B,
MNLI, QNLI, RTE; BoolQ, CB, COPA, MultiRC, ReCoRD, RTE, WiC."""

#: The two-way entailment labels (QNLI and both copies of RTE), in the hub datasets' order.
NLI2: tuple[str, ...] = ("entailment", "not_entailment")


def format_help(task: TextTask, path: Path) -> str:
    """The format help for a reading error in ``path`` (a file of ``task``,
    at ``<data_dir>/<benchmark>/<TASK>/<file>``)."""
    root = path.parent.parent.parent
    return f"Expected: {task.layout(root)}. The data folder is laid out as:\n{DATA_LAYOUT}"


def class_index(task: TextTask, value: Any, where: str) -> int:
    """A label value from a file as a class index of ``task``: a class name,
    a bool (for False/True tasks) or an index; :class:`DataError` naming
    ``where`` for anything else."""
    names = task.label_names
    original = value
    if isinstance(value, bool):
        text = str(value)
        if text in names:
            return names.index(text)
    elif isinstance(value, str):
        text = value.strip()
        if text in names:
            return names.index(text)
        try:
            value = int(text)
        except ValueError:
            value = None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    raise DataError(
        f"{where}: label {original!r} is not one of {list(names)} (or an index 0..{len(names) - 1}) "
        f"for task {task.name}; check that the file belongs to this task"
    )
