"""Tasks: the task contract and the engine that turns a task into batches,
losses and scores for a model. No concrete task lives here.

A :class:`Task` says where one dataset's files are and how to read them
(:meth:`Task.read_split`, written by the task's plugin for its file format,
with the generic readers :func:`read_tsv` and :func:`read_jsonl`), which
fields and labels it has, how to split it (the S3Delta protocol,
:func:`s3delta_split`; docs/tasks.md) and which ``evaluate`` metric module
scores it. Tasks are plugins: a package registers instances through the
``bipeft_register_tasks`` hook under registry keys such as
``<benchmark>/<name>``, each with the short names it answers to
(:attr:`Task.aliases`); :func:`resolve_task_name` and :func:`get_task` look
names up through that registry. The built-in tasks and their file layouts
live in the task plugin (``bipeft_plugins.tasks``; docs/tasks.md).

:func:`prepare_task` binds a task to a tokenizer and a model of one of three
families (:func:`model_family`): ``encoder`` (BERT, RoBERTa, MiniLM with a
sequence-classification head), ``seq2seq`` (T5, text to text, scored by rank
classification over label words) and ``decoder`` (GPT-2, Llama with a
sequence-classification head). The :class:`PreparedTask` it returns
tokenizes the splits and provides ``collate``, ``loss``, ``predict`` and
``evaluate``.
"""

from __future__ import annotations

import copy
import csv
import difflib
import io
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from bipeft_core.errors import DataError, SpecError, UnknownNameError, read_text_file

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import torch
    from torch import nn

__all__ = [
    "DATA_DIR_ENV",
    "PreparedTask",
    "Task",
    "build_task_model",
    "cap_rows",
    "get_task",
    "load_task_model",
    "model_family",
    "prepare_task",
    "read_jsonl",
    "read_tsv",
    "resolve_data_dir",
    "resolve_task_name",
    "s3delta_split",
]

logger = logging.getLogger("bipeft.tasks")

#: The environment variable naming the local data folder.
DATA_DIR_ENV = "BIPEFT_DATA_DIR"

TaskKind = Literal["classification", "regression", "choice"]
Family = Literal["encoder", "seq2seq", "decoder"]

_MAX_TARGET_LENGTH = 64
_MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


# -- names -----------------------------------------------------------------------------


def _squash(text: str) -> str:
    """``text`` without ``-``, ``_`` and spaces: the form in which task names,
    aliases and task folder names are compared."""
    return text.replace("-", "").replace("_", "").replace(" ", "")


def _task_table(registry: Any) -> dict[str, Any]:
    """Registry key -> task for what :func:`resolve_task_name` accepts as a
    registry (the task objects are ``None`` where only names are given)."""
    if registry is None:
        from bipeft_core.plugins import default_plugins

        registry = default_plugins().tasks
    registry = getattr(registry, "tasks", registry)  # the Plugins object
    getter = getattr(registry, "get", None)
    if callable(getter):  # a Registry, or a mapping of names to tasks
        return {key: getter(key) for key in registry}
    return dict.fromkeys(registry)


def resolve_task_name(name: str, registry: Iterable[str] | None = None) -> str:
    """The registry key for a user's spelling of a task name.

    A name matches a registry key, or one of the :attr:`Task.aliases` a task
    declares, ignoring case, spaces, ``-`` and ``_``; registry keys win over
    aliases. The task plugin decides the short names: a short name that two
    tasks could claim is declared by the one it should mean.

    ``registry`` is the task registry (``load_plugins().tasks``), the
    :class:`bipeft_core.plugins.Plugins` object, a mapping of registry keys to
    tasks, or any iterable of registry keys (which knows no aliases); without
    it the tasks of the default plugins (:func:`bipeft_core.default_plugins`)
    are known. Raises :class:`UnknownNameError` with the known names for
    anything else, and for a name that matches two tasks.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownNameError(
            f"a task name is a non-empty string such as '<benchmark>/<task>', got {name!r}"
        )
    table = _task_table(registry)
    key = name.strip().lower()
    if key in table:
        return key
    wanted = _squash(key)
    by_key = sorted(k for k in table if _squash(k.lower()) == wanted)
    by_alias = sorted(k for k, task in table.items() if wanted in _squashed_aliases(task))
    for found in (by_key, by_alias):
        if len(found) == 1:
            return found[0]
        if found:
            raise UnknownNameError(
                f"task name {name!r} is ambiguous: it matches {', '.join(found)}; write one of these in full"
            )
    spellings: dict[str, str] = {}
    for k, task in table.items():
        spellings.setdefault(_squash(k.lower()), k)
        for alias in _squashed_aliases(task):
            spellings.setdefault(alias, k)
    close = difflib.get_close_matches(wanted, list(spellings), n=1)
    hint = f" Did you mean {spellings[close[0]]!r}?" if close else ""
    raise UnknownNameError(
        f"unknown task {name!r}. Known tasks: {', '.join(sorted(table))}.{hint} "
        "Write a registry name ('<benchmark>/<task>') or a short name a task declares; "
        "a task from another package needs its plugin installed"
    )


def _squashed_aliases(task: Any) -> set[str]:
    aliases = task.aliases if isinstance(task, Task) else ()
    return {_squash(a.strip().lower()) for a in aliases}


def get_task(name: str, registry: Any) -> Task:
    """The task registered under ``name`` (any spelling :func:`resolve_task_name`
    accepts). ``registry`` is the task registry (``load_plugins().tasks``) or
    the :class:`bipeft_core.plugins.Plugins` object itself."""
    reg = getattr(registry, "tasks", registry)
    return reg.get(resolve_task_name(name, reg))


# -- files -----------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None, *, layout: str = "") -> Path | None:
    """The local data folder: ``data_dir`` if given, else the
    ``BIPEFT_DATA_DIR`` environment variable, else ``None`` (load from the
    Hugging Face hub). A folder that does not exist is a :class:`DataError`;
    ``layout`` (the folder's expected layout, see :attr:`Task.data_layout`)
    is shown in it."""
    if data_dir is not None:
        source = "data_dir"
        path = Path(data_dir).expanduser()
    else:
        env = os.environ.get(DATA_DIR_ENV, "").strip()
        if not env:
            return None
        source = f"the environment variable {DATA_DIR_ENV}"
        path = Path(env).expanduser()
    if not path.is_dir():
        point = f"Point it at a folder laid out as:\n{layout}\nor" if layout else "Point it at a folder, or"
        raise DataError(
            f"data folder {str(path)!r} (from {source}) does not exist or is not a folder. "
            f"{point} unset it to download from the Hugging Face hub"
        )
    return path


def _read_data_file(path: Path, expected: str) -> str:
    """The text of the data file ``path`` without a leading UTF-8 BOM; a
    :class:`DataError` ending with ``expected`` (the format, for the reader)
    if it is missing, not UTF-8 or unreadable."""
    if not path.is_file():
        raise DataError(f"missing file {str(path)!r}. {expected}".strip())
    text = read_text_file(path, what="data file", error=DataError, fix=expected)
    return text.removeprefix("\ufeff")


def read_tsv(
    path: Path,
    *,
    columns: Sequence[str] | None = None,
    header: bool = True,
    n_columns: int | None = None,
    expected: str = "",
) -> list[dict[str, str]] | list[list[str]]:
    """Rows of a tab-separated file, split on tabs with no quote handling
    (``csv.QUOTE_NONE``: corpora hold stray ``"`` in their text). A leading
    UTF-8 BOM is dropped.

    With ``header=True`` each row is a dict keyed by the header; ``columns``
    that the header lacks raise :class:`DataError`, and rows with fewer
    fields than the header are skipped with a warning (as the ``datasets``
    loaders of such files do). With ``header=False`` each row is a list of
    at least ``n_columns`` fields. ``expected`` describes the format for
    error messages.
    """
    text = _read_data_file(path, expected)
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not header:
        need = n_columns or 1
        out_lists: list[list[str]] = []
        for lineno, row in enumerate(rows, start=1):
            if not row:
                continue
            if len(row) < need:
                raise DataError(
                    f"{str(path)!r} line {lineno} has {len(row)} tab-separated field(s), "
                    f"expected {need}: {row!r}. {expected}".strip()
                )
            out_lists.append(row)
        return out_lists
    if not rows:
        raise DataError(f"{str(path)!r} is empty; it needs a header row. {expected}".strip())
    head = [h.strip() for h in rows[0]]
    missing = [c for c in (columns or ()) if c not in head]
    if missing:
        raise DataError(
            f"{str(path)!r} has no column {', '.join(repr(c) for c in missing)}; its header row is "
            f"{head!r}. {expected}".strip()
        )
    out: list[dict[str, str]] = []
    skipped = 0
    for row in rows[1:]:
        if not row:
            continue
        if len(row) < len(head):
            skipped += 1
            continue
        out.append(dict(zip(head, row)))
    if skipped:
        logger.warning("%s: skipped %d row(s) with fewer fields than the header", path, skipped)
    return out


def read_jsonl(path: Path, *, keys: Sequence[str] = (), expected: str = "") -> list[dict[str, Any]]:
    """Objects of a JSON Lines file (a leading UTF-8 BOM is dropped); every
    object must have ``keys`` (:class:`DataError` naming the file, the line
    and the missing key). ``expected`` describes the format for error
    messages."""
    text = _read_data_file(path, expected)
    out: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{str(path)!r} line {lineno} is not valid JSON ({e}). {expected}".strip()) from None
        if not isinstance(obj, dict):
            raise DataError(f"{str(path)!r} line {lineno} is not a JSON object. {expected}".strip())
        missing = [k for k in keys if k not in obj]
        if missing:
            raise DataError(
                f"{str(path)!r} line {lineno} has no field {', '.join(repr(k) for k in missing)} "
                f"(it has {sorted(obj)}). {expected}".strip()
            )
        out.append(obj)
    return out


# -- splits ----------------------------------------------------------------------------


def s3delta_split(
    train_rows: Sequence[Any],
    validation_rows: Sequence[Any],
    *,
    protocol: Literal["halve", "holdout"],
    seed: int,
    holdout_size: int = 2000,
    group_key: str | None = None,
) -> tuple[list[Any], list[Any], list[Any]]:
    """The S3Delta splits (docs/tasks.md, "Splits"): ``(train, validation, test)``.

    ``halve``: ``random.Random(seed).shuffle`` of the original validation rows
    in file order; the first half (rounded down) is validation, the rest test;
    the training rows are kept as they are. With ``group_key`` the groups
    (e.g. the questions of one paragraph, in order of first appearance) are
    shuffled and halved instead, so no group sits in both halves; rows keep
    their file order within a group.

    ``holdout``: the training row indices ``0..n-1`` are shuffled with
    ``random.Random(seed)``; the first ``holdout_size`` become validation (in
    that shuffled order), the remaining training rows stay in file order, and
    the original validation rows (file order) are the test split.
    """
    train_rows, validation_rows = list(train_rows), list(validation_rows)
    rng = random.Random(seed)
    if protocol == "halve":
        if group_key is None:
            shuffled = list(validation_rows)
            rng.shuffle(shuffled)
            half = len(shuffled) // 2
            return train_rows, shuffled[:half], shuffled[half:]
        groups: dict[Any, list[Any]] = {}
        for row in validation_rows:
            groups.setdefault(row[group_key], []).append(row)
        order = list(groups)
        rng.shuffle(order)
        half = len(order) // 2
        val = [row for g in order[:half] for row in groups[g]]
        test = [row for g in order[half:] for row in groups[g]]
        return train_rows, val, test
    if protocol == "holdout":
        if len(train_rows) <= holdout_size:
            raise DataError(
                f"the training split has {len(train_rows)} rows, too few to move {holdout_size} of "
                "them to validation as the S3Delta protocol does; use the full training file"
            )
        order = list(range(len(train_rows)))
        rng.shuffle(order)
        val = [train_rows[i] for i in order[:holdout_size]]
        rest = sorted(order[holdout_size:])
        return [train_rows[i] for i in rest], val, validation_rows
    raise ValueError(f"unknown split protocol {protocol!r}; use 'halve' or 'holdout'")


def cap_rows(rows: Sequence[Any], max_examples: int | None, *, seed: int) -> list[Any]:
    """At most ``max_examples`` rows: a seeded sample (``random.Random`` seeded
    with ``f"{seed}/max_train_examples"``), kept in their original order."""
    rows = list(rows)
    if max_examples is None:
        return rows
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise DataError(
            f"max_train_examples must be a whole number >= 1 (or None for all), got {max_examples!r}"
        )
    if max_examples >= len(rows):
        return rows
    keep = sorted(random.Random(f"{seed}/max_train_examples").sample(range(len(rows)), max_examples))
    return [rows[i] for i in keep]


# -- the task --------------------------------------------------------------------------


def _default_hub_splits() -> dict[str, str]:
    return {"train": "train", "validation": "validation"}


@attrs.frozen(kw_only=True)
class Task:
    """The task contract: one dataset, where its files are, its fields,
    labels, split protocol, metric and input formats. Every attribute the
    engine reads is declared here; ``name``, ``benchmark``, ``folder``,
    ``files`` and ``primary_metric`` have no default.

    Subclasses implement :meth:`read_split` for their file format (the
    built-ins: ``bipeft_plugins.tasks``) and may override the text formats.
    ``kind`` is ``classification`` (``label_names`` are the classes, the
    ``label`` column their index), ``regression`` (a float ``label``) or
    ``choice`` (pick one of several candidate strings per example; see
    :meth:`choices`).
    """

    name: str
    """Registry key, ``<benchmark>/<task>``."""
    benchmark: str
    """Sub-folder of the data folder that holds this task's folder."""
    folder: str
    """Task folder inside the benchmark folder (matched case-insensitively,
    ignoring ``-``, ``_`` and spaces)."""
    files: Mapping[str, str]
    """File name per original split: ``train`` and ``validation``."""
    primary_metric: str
    """The metric value (a key of the metric module's result) used for model
    selection and reported first."""
    aliases: tuple[str, ...] = ()
    """Other names :func:`resolve_task_name` maps to this task (matched
    ignoring case, spaces, ``-`` and ``_``), e.g. the bare task name; none by
    default."""
    kind: TaskKind = "classification"
    """``classification``, ``regression`` or ``choice`` (see the class)."""
    label_names: tuple[str, ...] = ()
    """Class names in label-index order (at least two for classification)."""
    input_fields: tuple[str, ...] = ()
    """The text fields, in the order an encoder sees them (one or two)."""
    metric: str = ""
    """The ``evaluate`` module: a path to a metric script, or a hub name;
    empty: no metric (scoring raises :class:`SpecError`)."""
    metric_config: str | None = None
    """The metric module's config name (``None``: its default)."""
    max_length: int = 128
    """Tokens per input, the default of :func:`prepare_task`."""
    epochs: int | None = None
    """Training epochs for this task in the runner's embedded default spec
    (search and re-train); ``None``: the runner's own default."""
    split_protocol: Literal["halve", "holdout"] = "halve"
    """How the original splits become train / validation / test
    (:func:`s3delta_split`)."""
    holdout_size: int = 2000
    """Training rows moved to validation by the ``holdout`` protocol."""
    group_by: str | None = None
    """Column that keeps rows together when a split is halved (``None``: rows
    are halved one by one)."""
    t5_prefix: str = ""
    """The first word of the T5 input (none by default)."""
    t5_fields: tuple[str, ...] = ()
    """Fields in the T5 input, in order: ``"<prefix> <field>: <value> ..."``
    (default: ``input_fields``)."""
    t5_label_words: tuple[str, ...] | None = None
    """Target words per class for T5 (default: ``label_names``)."""
    regression_grid: tuple[float, float, float] | None = None
    """Regression targets as text for T5: (low, high, step); the prediction
    is the best-scoring of these values. A regression task needs it for
    text-to-text models only; ``None`` by default."""
    hub: tuple[str, str | None] = ("", None)
    """``datasets.load_dataset`` arguments for the hub fallback (an empty
    path: no hub dataset)."""
    hub_splits: Mapping[str, str] = attrs.field(factory=_default_hub_splits)
    """The hub dataset's split per original split (default: ``train`` and
    ``validation``)."""
    file_format: str = ""
    """A sentence on the file format, shown in errors (empty by default)."""
    data_layout: str = ""
    """The layout of the whole data folder the task's plugin reads, shown in
    the errors about that folder; empty: this task's :meth:`layout` alone."""
    description: str = ""
    """One line on the task, for listings."""

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("classification", "regression", "choice"):
            raise SpecError(
                f"task {self.name!r}: kind {self.kind!r} is not 'classification', 'regression' or 'choice'"
            )
        if self.kind == "classification" and len(self.label_names) < 2:
            raise SpecError(
                f"task {self.name!r} is a classification task with label_names={self.label_names!r}; "
                "give at least two class names, in label-index order"
            )
        if self.split_protocol not in ("halve", "holdout"):
            raise SpecError(
                f"task {self.name!r}: split_protocol {self.split_protocol!r} is not 'halve' or 'holdout'"
            )
        if self.holdout_size < 1 or self.max_length < 2:
            raise SpecError(
                f"task {self.name!r}: holdout_size ({self.holdout_size}) must be >= 1 and max_length "
                f"({self.max_length}) >= 2"
            )
        missing = {"train", "validation"} - set(self.files)
        if missing:
            raise SpecError(f"task {self.name!r}: files={dict(self.files)!r} lacks {sorted(missing)}")
        if isinstance(self.aliases, str):
            raise SpecError(
                f"task {self.name!r}: aliases={self.aliases!r} is a string; give a tuple of names, "
                f"e.g. ({self.aliases!r},)"
            )
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):
            raise SpecError(f"task {self.name!r}: epochs={self.epochs!r} must be a whole number >= 1 or None")

    # -- facts ---------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        """Outputs of a classification head: classes, or 1 (regression,
        choice: one score per candidate)."""
        return len(self.label_names) if self.kind == "classification" else 1

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def label_words(self) -> tuple[str, ...]:
        """The T5 target strings scored by rank classification: one per class,
        or the regression grid written like ``"3.8"``; empty for choice tasks."""
        if self.kind == "classification":
            return tuple(self.t5_label_words or self.label_names)
        if self.kind == "regression":
            lo, hi, step = self._grid()
            n = int(round((hi - lo) / step))
            return tuple(self._format_value(lo + i * step) for i in range(n + 1))
        return ()

    def _grid(self) -> tuple[float, float, float]:
        if self.regression_grid is None:
            raise SpecError(
                f"task {self.name!r} is a regression task without a regression_grid, which a text-to-text "
                "model needs; set regression_grid=(low, high, step), the values it scores as text"
            )
        return self.regression_grid

    def _format_value(self, value: float) -> str:
        lo, _, step = self._grid()
        snapped = lo + round((value - lo) / step) * step
        decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
        return f"{snapped:.{decimals}f}"

    def layout(self, root: Path | str = "<data_dir>") -> str:
        """Where this task's files go under ``root``, and their format."""
        folder = Path(root) / self.benchmark / self.folder
        names = " and ".join(str(folder / f) for f in self.files.values())
        return f"task {self.name} reads {names}" + (f" ({self.file_format})" if self.file_format else "")

    def _data_folder_help(self) -> str:
        """The data-folder layout shown in errors: the plugin's, else this task's."""
        return self.data_layout or self.layout()

    # -- reading ---------------------------------------------------------------------------
    def read_split(self, path: Path, split: str) -> list[dict[str, Any]]:
        """The rows of one original split (``train`` or ``validation``) read
        from ``path``, as dicts with the columns of :meth:`features`. Raises
        :class:`DataError` naming the file for a missing file or column."""
        raise NotImplementedError(
            f"task {self.name!r} ({type(self).__name__}) does not implement read_split(); "
            "subclass Task and implement it for its file format"
        )

    def features(self) -> datasets.Features:
        """The columns of the loaded splits: the text fields, ``label`` and
        ``idx`` (the row's index in its original file)."""
        import datasets

        cols: dict[str, Any] = {f: datasets.Value("string") for f in self.input_fields}
        if self.kind == "classification":
            cols["label"] = datasets.ClassLabel(names=list(self.label_names))
        elif self.kind == "regression":
            cols["label"] = datasets.Value("float32")
        cols["idx"] = datasets.Value("int64")
        return datasets.Features(cols)

    def from_hub(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A row of the hub's dataset in this task's columns."""
        return {k: row[k] for k in self.features()}

    def folder_path(self, root: Path) -> Path:
        """This task's folder under ``root`` (the task folder name matched
        case-insensitively); :class:`DataError` if it is missing."""
        bench = root / self.benchmark
        exact = bench / self.folder
        if exact.is_dir():
            return exact
        if bench.is_dir():
            for child in sorted(bench.iterdir()):
                if child.is_dir() and _squash(child.name.lower()) == _squash(self.folder.lower()):
                    return child
        whole = f" The data folder is laid out as:\n{self.data_layout}" if self.data_layout else ""
        raise DataError(f"missing folder {str(exact)!r} for task {self.name}: {self.layout(root)}.{whole}")

    def load(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        seed: int = 42,
        max_train_examples: int | None = None,
    ) -> datasets.DatasetDict:
        """The ``train``, ``validation`` and ``test`` splits of this task under
        the S3Delta protocol (:func:`s3delta_split`), seeded.

        The data come from ``data_dir``, else the folder named by
        ``BIPEFT_DATA_DIR``, else the Hugging Face hub (``self.hub``).
        ``max_train_examples`` caps the training split (:func:`cap_rows`).
        """
        import datasets

        root = resolve_data_dir(data_dir, layout=self._data_folder_help())
        if root is None:
            train_rows, val_rows = self._hub_rows()
        else:
            folder = self.folder_path(root)
            train_rows = self.read_split(folder / self.files["train"], "train")
            val_rows = self.read_split(folder / self.files["validation"], "validation")
        train, val, test = s3delta_split(
            train_rows,
            val_rows,
            protocol=self.split_protocol,
            seed=seed,
            holdout_size=self.holdout_size,
            group_key=self.group_by,
        )
        train = cap_rows(train, max_train_examples, seed=seed)
        feats = self.features()
        return datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_list(train, features=feats),
                "validation": datasets.Dataset.from_list(val, features=feats),
                "test": datasets.Dataset.from_list(test, features=feats),
            }
        )

    def _hub_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        import datasets

        path, config = self.hub
        if not path:
            raise DataError(
                f"task {self.name} has no local data folder and no hub dataset: pass data_dir=... (bipeft: --data-dir DIR) or set "
                f"{DATA_DIR_ENV}; {self.layout()}"
            )
        where = f"datasets.load_dataset({path!r}, {config!r})"
        try:
            dd = datasets.load_dataset(path, config)
            train = [self.from_hub(r) for r in dd[self.hub_splits["train"]]]
            val = [self.from_hub(r) for r in dd[self.hub_splits["validation"]]]
        except Exception as e:  # network, missing dataset, changed columns: one message
            raise DataError(
                f"task {self.name} has no local data folder (pass data_dir=... (bipeft: --data-dir DIR) or set "
                f"{DATA_DIR_ENV} to a folder laid out as:\n{self._data_folder_help()}\n) and loading it from "
                f"the Hugging Face hub with {where} failed: {type(e).__name__}: {e}"
            ) from e
        return train, val

    # -- inputs ----------------------------------------------------------------------------
    def encoder_text(self, example: Mapping[str, Any]) -> tuple[str, str | None]:
        """The text (or text pair) a classification model reads."""
        texts = [str(example[f]) for f in self.input_fields]
        if len(texts) == 1:
            return texts[0], None
        if len(texts) == 2:
            return texts[0], texts[1]
        return texts[0], " ".join(texts[1:])

    def t5_text(self, example: Mapping[str, Any]) -> str:
        """The T5 input: ``"<prefix> field: value field: value"`` (T5's
        format for classification benchmarks)."""
        parts = [self.t5_prefix] if self.t5_prefix else []
        for f in self.t5_fields or self.input_fields:
            parts.append(f"{f}: {example[f]}")
        return " ".join(parts)

    def t5_target(self, example: Mapping[str, Any]) -> str:
        """The T5 target text of an example (its label word, value or the
        first gold choice)."""
        if self.kind == "classification":
            return self.label_words[int(example["label"])]
        if self.kind == "regression":
            return self._format_value(float(example["label"]))
        gold = self.gold_choices(example)
        return self.choices(example)[gold[0]] if gold else ""

    def parse_label_word(self, word: str) -> float | int:
        """The label (class index or value) of a T5 label string."""
        if self.kind == "regression":
            return float(word)
        return self.label_words.index(word)

    def choices(self, example: Mapping[str, Any]) -> list[str]:
        """Candidate strings of a ``choice`` example."""
        raise NotImplementedError(f"task {self.name!r} is not a choice task")

    def gold_choices(self, example: Mapping[str, Any]) -> list[int]:
        """Indices of the correct candidates of a ``choice`` example (may be
        empty for unlabelled rows)."""
        raise NotImplementedError(f"task {self.name!r} is not a choice task")

    def choice_text(self, example: Mapping[str, Any], choice: str) -> tuple[str, str | None]:
        """The text pair an encoder or decoder scores for one candidate."""
        raise NotImplementedError(f"task {self.name!r} is not a choice task")

    # -- scoring ---------------------------------------------------------------------------
    def metric_inputs(self, predictions: Sequence[Any], rows: Any) -> tuple[list[Any], list[Any]]:
        """``(predictions, references)`` in the form the metric module takes.
        ``predictions`` are class indices, values or candidate indices, one
        per row of ``rows`` (a dataset with this task's columns)."""
        return list(predictions), list(rows["label"])

    def compute_metrics(self, predictions: Sequence[Any], rows: Any) -> dict[str, float]:
        """The metric values (fractions, not percentages) for ``predictions``
        against ``rows``, the primary metric first."""
        preds, refs = self.metric_inputs(predictions, rows)
        module = _metric_module(self.metric, self.metric_config)
        module.add_batch(predictions=preds, references=refs)
        result = module.compute()
        if result is None or self.primary_metric not in result:
            raise KeyError(
                f"the metric {self.metric!r} ({self.metric_config}) of task {self.name} returned "
                f"{result!r}, without its primary metric {self.primary_metric!r}"
            )
        out = {self.primary_metric: float(result[self.primary_metric])}
        out.update({k: float(v) for k, v in result.items() if k != self.primary_metric})
        return out


def _metric_module(path: str, config_name: str | None) -> Any:
    """A fresh evaluate module (a few milliseconds once the script is in the
    modules cache); fresh, so a failed call leaves no batches behind."""
    import evaluate

    if not path:
        raise SpecError("this task names no metric module; set Task.metric to an evaluate script path")
    return evaluate.load(path, config_name, keep_in_memory=True)


# -- models ----------------------------------------------------------------------------


def _inner_model(model: Any) -> Any:
    """The transformers model inside wrappers that hold it as ``.model``
    (bipeft's Supernet and PeftModel) or behind ``get_base_model()`` (peft)."""
    from transformers import PretrainedConfig

    current = model
    for _ in range(8):
        if isinstance(getattr(current, "config", None), PretrainedConfig):
            return current
        if callable(getattr(current, "get_base_model", None)):
            current = current.get_base_model()
        elif getattr(current, "model", None) is not None and getattr(current, "model", None) is not current:
            current = current.model
        else:
            break
    return current


def _config_of(model_or_config: Any) -> Any:
    from transformers import PretrainedConfig

    if isinstance(model_or_config, PretrainedConfig):
        return model_or_config
    config = getattr(_inner_model(model_or_config), "config", None)
    if not isinstance(config, PretrainedConfig):
        raise SpecError(
            f"cannot tell the family of {type(model_or_config).__name__}: it has no transformers "
            "config (nor wraps a model that has one as .model); pass a transformers model (or its config)"
        )
    return config


def model_family(model: Any) -> Family:
    """``"encoder"``, ``"seq2seq"`` or ``"decoder"`` for a transformers model
    (or config): encoder-decoder configs are ``seq2seq``; model types that
    have a causal-LM class and no masked-LM class (GPT-2, Llama, ...) are
    ``decoder``; the rest (BERT, RoBERTa, MiniLM, ...) are ``encoder``."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = _config_of(model)
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    mtype = getattr(config, "model_type", "")
    if mtype in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mtype not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "decoder"
    return "encoder"


def _configure_head(config: Any, task: Task) -> Any:
    config = copy.deepcopy(config)
    config.num_labels = task.num_labels
    if task.kind == "classification":
        config.id2label = dict(enumerate(task.label_names))
        config.label2id = {n: i for i, n in enumerate(task.label_names)}
        config.problem_type = "single_label_classification"
    elif task.kind == "regression":
        config.problem_type = "regression"
    else:
        config.problem_type = None
    if model_family(config) == "decoder" and getattr(config, "pad_token_id", None) is None:
        eos = getattr(config, "eos_token_id", None)
        config.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    return config


def build_task_model(config: Any, task: Task, *, seed: int = 0) -> nn.Module:
    """A randomly initialised model for ``task`` from a transformers config:
    ``AutoModelForSeq2SeqLM`` for encoder-decoder configs (T5), else
    ``AutoModelForSequenceClassification`` with the task's number of labels
    (``problem_type="regression"`` for regression tasks; one score per
    candidate for choice tasks). Decoders without a ``pad_token_id`` get
    their EOS id. The weights are drawn from ``torch.manual_seed(seed)``
    without touching the global generator."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model_family(config) == "seq2seq":
            return AutoModelForSeq2SeqLM.from_config(config)
        return AutoModelForSequenceClassification.from_config(_configure_head(config, task))


def load_task_model(name_or_path: str | os.PathLike[str], task: Task, *, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Like :func:`build_task_model` with pretrained weights from
    ``name_or_path`` (a local folder, or a hub id when online); a new task
    head is initialised from ``seed``. ``kwargs`` go to ``from_pretrained``."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(name_or_path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model_family(config) == "seq2seq":
            return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
        kwargs.setdefault("ignore_mismatched_sizes", True)
        return AutoModelForSequenceClassification.from_pretrained(
            name_or_path, config=_configure_head(config, task), **kwargs
        )


# -- prepared tasks --------------------------------------------------------------------


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    import torch

    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def _device_of(model: nn.Module) -> torch.device:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@attrs.define(kw_only=True, eq=False)
class PreparedTask:
    """A task bound to a tokenizer and a model family: tokenized splits and
    the functions a training loop needs. Build it with :func:`prepare_task`.

    The tokenized splits keep the task's columns beside the model features
    (``input_ids``, ...), so they can be scored without the raw splits.
    ``collate`` turns a list of rows into a batch of tensors with dynamic
    padding; ``model(**prepared.model_inputs(batch))`` runs the model, but
    :meth:`loss` and :meth:`predict` are the ones to use: they also handle
    choice tasks and T5's rank classification.
    """

    task: Task
    family: Family
    tokenizer: Any
    max_length: int
    train: datasets.Dataset | None
    validation: datasets.Dataset | None
    test: datasets.Dataset | None
    pad_token_id: int
    use_token_type_ids: bool
    label_word_ids: list[list[int]]
    """Tokenized T5 label words (empty for other families and choice tasks)."""

    @property
    def primary_metric(self) -> str:
        return self.task.primary_metric

    @property
    def splits(self) -> dict[str, datasets.Dataset]:
        return {
            n: d
            for n, d in (("train", self.train), ("validation", self.validation), ("test", self.test))
            if d is not None
        }

    # -- tokenizing --------------------------------------------------------------------
    def _pairs(self, texts: Sequence[tuple[str, str | None]]) -> dict[str, list[list[int]]]:
        if not texts:
            empty: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
            if self.use_token_type_ids:
                empty["token_type_ids"] = []
            return empty
        firsts = [a for a, _ in texts]
        seconds = [b for _, b in texts]
        has_pair = any(b is not None for b in seconds)
        if has_pair and self.family == "decoder" and getattr(self.tokenizer, "sep_token", None) is None:
            seconds = ["\n" + (b or "") for b in seconds]
        enc = self.tokenizer(
            firsts,
            [b or "" for b in seconds] if has_pair else None,
            truncation=True,
            max_length=self.max_length,
        )
        out = {"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"])}
        if self.use_token_type_ids:
            out["token_type_ids"] = list(enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]])
        return out

    def _targets(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        enc = self.tokenizer(text_target=list(texts), truncation=True, max_length=_MAX_TARGET_LENGTH)
        return list(enc["input_ids"])

    def encode(self, rows: datasets.Dataset, *, drop_unlabelled: bool = False) -> datasets.Dataset:
        """Tokenize a split of this task (columns as :meth:`Task.load` gives):
        the task's columns plus the model features. ``drop_unlabelled`` drops
        choice rows with no correct candidate (for training)."""
        task = self.task
        examples = rows.to_list()
        if drop_unlabelled and task.kind == "choice":
            keep = [i for i, ex in enumerate(examples) if task.gold_choices(ex)]
            if len(keep) < len(examples):
                rows = rows.select(keep)
                examples = [examples[i] for i in keep]
        cols: dict[str, list[Any]] = {}
        if task.kind == "choice":
            choices = [task.choices(ex) for ex in examples]
            cols["choice_gold"] = [task.gold_choices(ex) for ex in examples]
            if self.family == "seq2seq":
                cols.update(self._pairs([(task.t5_text(ex), None) for ex in examples]))
                cols["target_ids"] = self._targets([task.t5_target(ex) for ex in examples])
                flat = self._targets([c for cs in choices for c in cs])
                cols["choice_target_ids"] = _regroup(flat, [len(cs) for cs in choices])
            else:
                flat_pairs = [task.choice_text(ex, c) for ex, cs in zip(examples, choices) for c in cs]
                counts = [len(cs) for cs in choices]
                for key, values in self._pairs(flat_pairs).items():
                    cols[f"choice_{key}"] = _regroup(values, counts)
        else:
            if self.family == "seq2seq":
                cols.update(self._pairs([(task.t5_text(ex), None) for ex in examples]))
                cols["target_ids"] = self._targets([task.t5_target(ex) for ex in examples])
            else:
                cols.update(self._pairs([task.encoder_text(ex) for ex in examples]))
        # an explicit fingerprint: otherwise datasets hashes every new column (slow)
        from datasets.fingerprint import generate_random_fingerprint

        out = rows
        for key, values in cols.items():
            if key in out.column_names:
                out = out.remove_columns(key, new_fingerprint=generate_random_fingerprint())
            out = out.add_column(key, values, new_fingerprint=generate_random_fingerprint())
        return out

    # -- batches -----------------------------------------------------------------------
    def collate(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """A batch of tensors from rows of a tokenized split, padded to the
        longest row. Keys: ``input_ids``, ``attention_mask``
        (``token_type_ids`` for BERT-type encoders) and ``labels``, plus
        ``choice_counts`` / ``choice_gold`` for choice tasks and
        ``choice_labels`` for T5 choice tasks; T5's ``labels`` are the target
        tokens (``-100`` padded) and its class or value is ``task_label``."""
        import torch

        feats = list(features)
        batch: dict[str, torch.Tensor] = {}
        task = self.task
        if task.kind == "choice":
            counts = [len(f[_choice_key(self.family)]) for f in feats]
            gold = torch.zeros(sum(counts), dtype=torch.float32)
            offset = 0
            for f, n in zip(feats, counts):
                for g in f["choice_gold"]:
                    gold[offset + int(g)] = 1.0
                offset += n
            batch["choice_counts"] = torch.tensor(counts, dtype=torch.long)
            batch["choice_gold"] = gold
            if self.family == "seq2seq":
                batch["input_ids"] = _pad([f["input_ids"] for f in feats], self.pad_token_id)
                batch["attention_mask"] = _pad([f["attention_mask"] for f in feats], 0)
                batch["labels"] = _pad([f["target_ids"] for f in feats], -100)
                batch["choice_labels"] = _pad([c for f in feats for c in f["choice_target_ids"]], -100)
            else:
                batch["input_ids"] = _pad([c for f in feats for c in f["choice_input_ids"]], self.pad_token_id)
                batch["attention_mask"] = _pad([c for f in feats for c in f["choice_attention_mask"]], 0)
                if self.use_token_type_ids:
                    batch["token_type_ids"] = _pad([c for f in feats for c in f["choice_token_type_ids"]], 0)
            return batch
        batch["input_ids"] = _pad([f["input_ids"] for f in feats], self.pad_token_id)
        batch["attention_mask"] = _pad([f["attention_mask"] for f in feats], 0)
        if self.use_token_type_ids and self.family != "seq2seq":
            batch["token_type_ids"] = _pad([f["token_type_ids"] for f in feats], 0)
        dtype = torch.float32 if task.is_regression else torch.long
        label = torch.tensor([f["label"] for f in feats], dtype=dtype)
        if self.family == "seq2seq":
            batch["labels"] = _pad([f["target_ids"] for f in feats], -100)
            batch["task_label"] = label
        else:
            batch["labels"] = label
        return batch

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keys of ``batch`` that the model's ``forward`` takes."""
        return {k: v for k, v in batch.items() if k in _MODEL_INPUT_KEYS}

    def dataloader(
        self, split: str | datasets.Dataset, *, batch_size: int = 32, shuffle: bool = False, seed: int = 0
    ) -> torch.utils.data.DataLoader:
        """A ``DataLoader`` over a split with :meth:`collate`; a shuffled one
        draws its order from its own generator seeded with ``seed``."""
        import torch

        ds = self._dataset(split)
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        return torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate, generator=gen
        )

    # -- model calls -------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch: cross-entropy (classification), MSE
        (regression), cross-entropy over each example's candidates (choice,
        encoder and decoder) or the sequence-to-sequence LM loss on the target
        words (T5)."""
        import torch.nn.functional as F

        batch = _to_device(batch, _device_of(model))
        if self.family == "seq2seq":
            return model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
        logits = model(**self.model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits
        if self.task.kind == "classification":
            return F.cross_entropy(logits.float(), batch["labels"])
        if self.task.kind == "regression":
            return F.mse_loss(logits.float().squeeze(-1), batch["labels"].float())
        scores, gold = _group(logits.float()[:, 0], batch["choice_counts"], batch["choice_gold"])
        gold_scores = scores.masked_fill(gold <= 0, float("-inf"))
        has_gold = gold.sum(-1) > 0
        per_example = scores.logsumexp(-1) - gold_scores.logsumexp(-1)
        return per_example[has_gold].mean() if bool(has_gold.any()) else scores.sum() * 0.0

    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Predictions for a batch: class indices (long), values (float,
        regression) or candidate indices (long, choice). T5 scores every
        label string (or candidate) by its summed log-likelihood and takes
        the best; it never generates freely."""
        import torch

        batch = _to_device(batch, _device_of(model))
        if self.family != "seq2seq":
            logits = model(**self.model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits
            if self.task.kind == "classification":
                return logits.argmax(-1)
            if self.task.kind == "regression":
                return logits.float().squeeze(-1)
            scores, _ = _group(logits.float()[:, 0], batch["choice_counts"], batch["choice_gold"])
            return scores.argmax(-1)
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        b = input_ids.shape[0]
        if self.task.kind == "choice":
            counts = batch["choice_counts"]
            owner = torch.repeat_interleave(torch.arange(b, device=input_ids.device), counts)
            flat = _score_candidates(model, input_ids, mask, batch["choice_labels"], owner)
            scores, _ = _group(flat, counts, batch["choice_gold"])
            return scores.argmax(-1)
        words = _pad(self.label_word_ids, -100).to(input_ids.device)
        c = words.shape[0]
        owner = torch.arange(b, device=input_ids.device).repeat_interleave(c)
        flat = _score_candidates(model, input_ids, mask, words.repeat(b, 1), owner)
        best = flat.view(b, c).argmax(-1)
        if self.task.kind == "regression":
            values = torch.tensor(
                [float(self.task.parse_label_word(w)) for w in self.task.label_words], device=best.device
            )
            return values[best]
        return best

    def _dataset(self, split: str | datasets.Dataset | Sequence[Mapping[str, Any]]) -> datasets.Dataset:
        import datasets

        if isinstance(split, str):
            ds = self.splits.get(split)
            if ds is None:
                raise KeyError(f"no split {split!r} in this prepared task; it has {sorted(self.splits)}")
            return ds
        if not isinstance(split, datasets.Dataset):
            split = datasets.Dataset.from_list([dict(row) for row in split])
        feature_key = _choice_key(self.family) if self.task.kind == "choice" else "input_ids"
        if feature_key in split.column_names:
            return split
        return self.encode(split)

    def evaluate(
        self,
        model: nn.Module,
        split: str | datasets.Dataset | Sequence[Mapping[str, Any]] = "validation",
        *,
        batch_size: int = 64,
    ) -> dict[str, float]:
        """The task's metrics on a split (``"validation"``, ``"test"``, ...) or
        a dataset (raw or tokenized; a ``datasets.Dataset`` or a list of row
        dicts), primary metric first. The model runs in
        eval mode under ``torch.no_grad()``; each submodule's train/eval mode
        is restored afterwards."""
        import torch

        ds = self._dataset(split)
        if len(ds) == 0:
            raise DataError(f"cannot evaluate task {self.task.name} on an empty split")
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        preds: list[Any] = []
        try:
            with torch.no_grad():
                for start in range(0, len(ds), batch_size):
                    chunk = ds[start : start + batch_size]
                    rows = [dict(zip(chunk, values)) for values in zip(*chunk.values())]
                    preds.extend(self.predict(model, self.collate(rows)).cpu().tolist())
        finally:
            for module, was_training in modes:
                module.training = was_training
        return self.task.compute_metrics(preds, ds)


def _choice_key(family: str) -> str:
    return "choice_target_ids" if family == "seq2seq" else "choice_input_ids"


def _regroup(flat: Sequence[Any], counts: Sequence[int]) -> list[list[Any]]:
    out, i = [], 0
    for n in counts:
        out.append(list(flat[i : i + n]))
        i += n
    return out


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def _group(flat: torch.Tensor, counts: torch.Tensor, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-candidate values into ``(examples, max candidates)``, padded with
    ``-inf`` (scores) and 0 (gold)."""
    import torch

    b = counts.shape[0]
    width = int(counts.max()) if b else 0
    scores = torch.full((b, max(width, 1)), float("-inf"), dtype=flat.dtype, device=flat.device)
    gold_out = torch.zeros((b, max(width, 1)), dtype=gold.dtype, device=flat.device)
    offset = 0
    for i, n in enumerate(counts.tolist()):
        scores[i, :n] = flat[offset : offset + n]
        gold_out[i, :n] = gold[offset : offset + n]
        offset += n
    return scores, gold_out


def _score_candidates(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    owner: torch.Tensor,
    *,
    max_logits: int = 2**25,
) -> torch.Tensor:
    """Summed log-likelihood of each candidate target (rows of ``labels``,
    ``-100`` padded) given the input of example ``owner[i]``. The encoder runs
    once per example; the decoder in chunks that keep the logits under
    ``max_logits`` floats."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    get_encoder: Callable[[], Any] | None = getattr(_inner_model(model), "get_encoder", None)
    hidden = None
    if get_encoder is not None:
        hidden = get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)[0]
    vocab = int(getattr(_config_of(model), "vocab_size", 32_000) or 32_000)
    rows_per_chunk = max(1, max_logits // max(1, labels.shape[1] * vocab))
    out = []
    for start in range(0, labels.shape[0], rows_per_chunk):
        idx = owner[start : start + rows_per_chunk]
        lab = labels[start : start + rows_per_chunk]
        if hidden is not None:
            res = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden[idx]),
                attention_mask=attention_mask[idx],
                labels=lab,
            )
        else:
            res = model(input_ids=input_ids[idx], attention_mask=attention_mask[idx], labels=lab)
        logp = torch.log_softmax(res.logits.float(), dim=-1)
        valid = lab != -100
        tok = logp.gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out.append((tok * valid).sum(-1))
    return torch.cat(out) if out else torch.zeros(0, device=input_ids.device)


def prepare_task(
    task: Task,
    splits: Mapping[str, datasets.Dataset],
    tokenizer: Any,
    model: nn.Module,
    *,
    max_length: int | None = None,
) -> PreparedTask:
    """Tokenize ``splits`` (as :meth:`Task.load` returns them) for ``model``
    and return a :class:`PreparedTask`.

    ``max_length`` defaults to the task's (:attr:`Task.max_length`).
    Encoders and decoders read the task's text (pair); T5 reads
    ``task.t5_text`` and is trained on ``task.t5_target``. A decoder's
    ``model.config.pad_token_id`` is set to the padding id used here (the
    tokenizer's pad token, else the model's, else EOS).
    """
    family = model_family(model)
    config = _config_of(model)
    length = int(max_length or task.max_length)
    if length < 2:
        raise SpecError(f"max_length must be at least 2 tokens, got {max_length!r}")
    pad = getattr(tokenizer, "pad_token_id", None)
    if family == "decoder":
        if pad is None:
            pad = getattr(config, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        if pad is None:
            raise SpecError(
                "the decoder's tokenizer has no pad or EOS token and its config no pad_token_id; "
                "set tokenizer.pad_token (e.g. to tokenizer.eos_token)"
            )
        if getattr(config, "pad_token_id", None) != pad:
            config.pad_token_id = pad
    elif pad is None:
        raise SpecError(
            f"the tokenizer {type(tokenizer).__name__} has no pad token; set tokenizer.pad_token "
            "before prepare_task"
        )
    if family != "seq2seq" and int(getattr(config, "num_labels", 0)) != task.num_labels:
        raise SpecError(
            f"the model's head has {getattr(config, 'num_labels', None)} output(s) but task {task.name} "
            f"needs {task.num_labels}; build it with bipeft_core.tasks.build_task_model(config, task) "
            "or load_task_model(path, task)"
        )
    use_tt = (
        family == "encoder"
        and int(getattr(config, "type_vocab_size", 0) or 0) >= 2
        and "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    )
    prepared = PreparedTask(
        task=task,
        family=family,
        tokenizer=tokenizer,
        max_length=length,
        train=None,
        validation=None,
        test=None,
        pad_token_id=int(pad),
        use_token_type_ids=use_tt,
        label_word_ids=[],
    )
    if family == "seq2seq" and task.kind != "choice":
        prepared.label_word_ids = prepared._targets(list(task.label_words))
    unknown = set(splits) - {"train", "validation", "test"}
    if unknown:
        raise DataError(f"unknown split(s) {sorted(unknown)}; a task has 'train', 'validation' and 'test'")
    for name, ds in splits.items():
        setattr(prepared, name, prepared.encode(ds, drop_unlabelled=name == "train"))
    return prepared
