"""The user's own data: a text task made of CSV, JSON or JSON Lines files
(the spec's ``[data]`` table, ``bipeft run --train-file ...``;
docs/own-data.md).

:func:`file_task` reads the training file once to learn the labels (the
classes, sorted, or numeric values for regression) and returns a
:class:`FileTask`, a :class:`~bipeft_plugins.tasks.text.TextTask` whose
:meth:`FileTask.load` reads the files and makes the three splits from what is
given, as the built-in tasks are split:

* train, validation and test files: used as they are;
* train and validation: the validation file is halved into validation and
  test (the S3Delta protocol of the built-in tasks);
* train and test: 10 % of the training rows (at least one) become validation;
* train alone: 20 % of the training rows (seeded shuffle) play the original
  validation file and are halved into validation and test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from bipeft_core.errors import DataError, SpecError
from bipeft_plugins.metrics import metric_path
from bipeft_plugins.tasks.readers import _read_data_file, cap_rows, read_jsonl, s3delta_split
from bipeft_plugins.tasks.text import TextTask

__all__ = ["FILE_METRICS", "FileTask", "file_task", "make_splits", "read_table"]

#: The shipped metrics a task on own data may name, with their primary key.
FILE_METRICS = {"accuracy": "accuracy", "f1": "f1", "matthews_correlation": "matthews_correlation",
                "pearsonr": "pearsonr", "spearmanr": "spearmanr"}
_REGRESSION_METRICS = ("pearsonr", "spearmanr")
_FORMAT = ("a CSV file with a header row (.csv, or .tsv for tab-separated), a JSON file holding a list of "
           "objects (.json), or a JSON Lines file, one object per line (.jsonl)")


def read_table(path: str | os.PathLike[str], columns: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of a CSV/TSV, JSON or JSON Lines file (by its suffix), each
    checked to have ``columns``. :class:`DataError` naming the file and the
    fix for a missing or empty file, an unknown suffix, a missing column."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        text = _read_data_file(path, _FORMAT)
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        head = [h.strip() for h in (reader.fieldnames or [])]
        if not head:
            raise DataError(f"{str(path)!r} is empty; it needs a header row naming the columns, then one row "
                            "per example")
        reader.fieldnames = head
        missing = [c for c in columns if c not in head]
        if missing:
            raise DataError(f"{str(path)!r} has no column {', '.join(repr(c) for c in missing)}; its columns "
                            f"are {head}. Name the right ones with --text-columns and --label-column "
                            "([data] text_columns, label_column)")
        rows = [dict(r) for r in reader]
    elif suffix == ".jsonl":
        rows = read_jsonl(path, keys=columns, expected=_FORMAT)
    elif suffix == ".json":
        text = _read_data_file(path, _FORMAT)
        try:
            data = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as exc:
            raise DataError(f"{str(path)!r} is not valid JSON ({exc}); {_FORMAT}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{str(path)!r} must hold a list of objects (or {{\"data\": [...]}}), one per example")
        for n, row in enumerate(data, start=1):
            missing = [c for c in columns if c not in row]
            if missing:
                raise DataError(f"{str(path)!r} object {n} has no field {', '.join(repr(c) for c in missing)} "
                                f"(it has {sorted(row)}). Name the right ones with --text-columns and "
                                "--label-column ([data] text_columns, label_column)")
        rows = list(data)
    else:
        raise DataError(f"{str(path)!r}: unknown file type {suffix or '(none)'!r}; give {_FORMAT}")
    if not rows:
        raise DataError(f"{str(path)!r} holds no examples; a data file needs at least one row")
    return rows


def read_dataset_split(source: str, config: str | None, split: str, columns: Sequence[str]) -> list[dict[str, Any]]:
    """The rows of one split of a ``datasets.load_dataset`` source, checked
    to have ``columns``; :class:`DataError` with the loader's reason."""
    import datasets

    where = f"datasets.load_dataset({source!r}, {config!r}, split={split!r})"
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as exc:  # missing dataset, no network, unknown split: one message
        raise DataError(f"{where} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                        "check the dataset name (a hub id needs the network; a local folder or a builder such "
                        "as 'csv' or 'parquet' with data files works offline) and the split names") from None
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"{where} has no column {', '.join(repr(c) for c in missing)}; its columns are "
                        f"{ds.column_names}. Name the right ones with --text-columns and --label-column")
    if len(ds) == 0:
        raise DataError(f"{where} holds no examples")
    return [dict(r) for r in ds]


def _source_rows(data: Mapping[str, Any], which: str, columns: Sequence[str]) -> list[dict[str, Any]] | None:
    """The raw rows of split ``which`` (``train``, ``validation``, ``test``)
    from the ``[data]`` table's files or dataset; ``None`` when not given."""
    if data.get("dataset"):
        split = data.get(f"{which}_split") or ("train" if which == "train" else None)
        return None if split is None else read_dataset_split(data["dataset"], data.get("dataset_config"), split,
                                                              columns)
    path = data.get(f"{which}_file")
    return None if not path else read_table(path, columns)


def source_of(task: Any) -> dict[str, Any]:
    """The ``[data]`` table a task on own data reads: the one it was made
    from, else its files."""
    return dict(task.source) or {"train_file": task.train_file, "validation_file": task.validation_file,
                                 "test_file": task.test_file}


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _label_text(value: Any) -> str:
    """A class label as text: ``1``, ``1.0`` and ``"1"`` are one class."""
    num = _number(value)
    if num is not None and num.is_integer():
        return str(int(num))
    return str(value).strip()


def make_splits(train: list[Any], val: list[Any] | None, test: list[Any] | None, *, seed: int,
                source: str) -> tuple[list[Any], list[Any], list[Any]]:
    """Train, validation and test rows from the files given (the module
    docstring's table); ``source`` names the training file in errors."""
    if val is None:
        share = 0.1 if test is not None else 0.2
        n = max(1, int(round(len(train) * share)))
        if len(train) - n < 1 or (test is None and n < 2):
            raise DataError(f"{source!r} has {len(train)} example(s): too few to split off a validation and a "
                            "test set; give more rows, or --validation-file and --test-file")
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        held = set(order[:n])
        val = [train[i] for i in order[:n]]
        train = [r for i, r in enumerate(train) if i not in held]
    if test is None:
        if len(val) < 2:
            raise DataError(f"the validation set has {len(val)} example: too few to halve into validation and "
                            "test; give more rows or a --test-file")
        train, val, test = s3delta_split(train, val, protocol="halve", seed=seed)
    return train, val, test


@attrs.frozen(kw_only=True)
class FileTask(TextTask):
    """A text task on the user's files (see the module docstring)."""

    train_file: str
    validation_file: str | None = None
    test_file: str | None = None
    label_column: str = "label"
    source: Mapping[str, Any] = attrs.field(factory=dict)
    """The ``[data]`` table the task was made from (its files or dataset)."""
    benchmark: str = ""
    folder: str = ""
    file_format: str = _FORMAT

    def layout(self, root: Path | str = "<data_dir>") -> str:
        given = [f for f in (self.train_file, self.validation_file, self.test_file) if f]
        return f"task {self.name} reads {', '.join(given)} ({_FORMAT})"

    def _columns(self) -> list[str]:
        return [*self.input_fields, self.label_column]

    def _rows(self, path: str, split: str, raw_rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        out = []
        for n, raw in enumerate(raw_rows if raw_rows is not None else read_table(path, self._columns())):
            row: dict[str, Any] = {f: "" if raw[f] is None else str(raw[f]) for f in self.input_fields}
            where = f"{path!r} row {n + 1}"
            value = raw[self.label_column]
            if self.kind == "regression":
                num = _number(value)
                if num is None:
                    raise DataError(f"{where}: label {value!r} is not a number, but the task is a regression "
                                    "(--task-kind regression, or numeric labels seen in the training file); "
                                    "fix the row or set --task-kind classification")
                row["label"] = num
            else:
                text = _label_text(value)
                if text not in self.label_names:
                    raise DataError(
                        f"{where}: label {text!r} of the {split} file is not among the training file's labels "
                        f"{list(self.label_names)}; the splits must share one label set: fix the file, or add "
                        "examples of that label to the training file")
                row["label"] = self.label_names.index(text)
            row["idx"] = n
            out.append(row)
        return out

    def read_split(self, path: Path, split: str) -> list[dict[str, Any]]:
        return self._rows(str(path), split)

    def load(self, data_dir: str | os.PathLike[str] | None = None, *, seed: int = 42,
             max_train_examples: int | None = None) -> Any:
        """The ``train``, ``validation`` and ``test`` splits made from the
        given files (module docstring); ``data_dir`` is not used."""
        import datasets

        source = source_of(self)
        parts = {}
        for which, word in (("train", "training"), ("validation", "validation"), ("test", "test")):
            raw = _source_rows(source, which, self._columns())
            name = source.get(f"{which}_file") or f"{source.get('dataset')}[{source.get(f'{which}_split')}]"
            parts[which] = None if raw is None else self._rows(str(name), word, raw)
        train, val, test = make_splits(parts["train"], parts["validation"], parts["test"], seed=seed,
                                       source=self.train_file)
        train = cap_rows(train, max_train_examples, seed=seed)
        feats = self.features()
        return datasets.DatasetDict({name: datasets.Dataset.from_list(rows, features=feats)
                                     for name, rows in (("train", train), ("validation", val), ("test", test))})


def file_task(data: Mapping[str, Any]) -> FileTask:
    """The :class:`FileTask` of a ``[data]`` table (see
    :class:`bipeft_core.spec.DataSpec`): reads the training file to learn
    the labels and whether they are classes or values."""
    train_file = data.get("train_file") or (f"{data['dataset']}[{data.get('train_split') or 'train'}]"
                                            if data.get("dataset") else None)
    if not train_file:
        raise SpecError("[data] needs train_file (bipeft: --train-file FILE) or dataset")
    columns = tuple(data.get("text_columns") or ("text",))
    label = data.get("label_column") or "label"
    if label in columns:
        raise SpecError(f"[data] label_column {label!r} is also a text column; give different columns")
    kind = data.get("kind") or "auto"
    if kind == "causal_lm":
        raise SpecError("[data] kind = 'causal_lm' is a language-model task: make it with "
                        "bipeft_plugins.tasks.lm.causal_lm_task (the hook bipeft_task_from_data does)")
    metric = data.get("metric")
    if metric is not None and metric not in FILE_METRICS:
        raise SpecError(f"[data] metric = {metric!r} is not a shipped metric; choose one of {sorted(FILE_METRICS)}")
    raw = _source_rows(data, "train", [*columns, label]) or []
    values = [r[label] for r in raw]
    if kind == "auto":
        numbers = [_number(v) for v in values]
        fractional = all(n is not None for n in numbers) and any(not n.is_integer() for n in numbers if n is not None)
        kind = "regression" if fractional or metric in _REGRESSION_METRICS else "classification"
    if kind == "classification":
        if metric in _REGRESSION_METRICS:
            raise SpecError(f"[data] metric = {metric!r} scores values, but the labels are classes; choose accuracy, "
                            "f1 or matthews_correlation, or set kind = \"regression\" (--task-kind regression)")
        names = sorted({_label_text(v) for v in values},
                       key=lambda t: (_number(t) is None, _number(t) or 0.0, t))
        if len(names) < 2:
            raise DataError(f"{train_file!r}: every label in column {label!r} is {names[0]!r}; a classification "
                            "task needs at least two classes")
        if metric == "f1" and len(names) != 2:
            raise SpecError(f"[data] metric = 'f1' scores two classes, but {train_file!r} has {len(names)} "
                            f"({names}); choose accuracy or matthews_correlation")
        metric = metric or "accuracy"
    else:
        if metric is not None and metric not in _REGRESSION_METRICS:
            raise SpecError(f"[data] metric = {metric!r} scores classes, but the task is a regression; choose "
                            "pearsonr or spearmanr")
        metric = metric or "pearsonr"
        names = []
    name = data.get("name") or (Path(train_file).stem if data.get("train_file") else
                                str(data["dataset"]).rstrip("/").split("/")[-1])
    return FileTask(
        name=str(name), primary_metric=FILE_METRICS[metric], kind=kind, label_names=tuple(names),
        input_fields=columns, label_column=label, train_file=str(train_file),
        validation_file=data.get("validation_file"), test_file=data.get("test_file"), source=dict(data),
        files={"train": str(train_file), "validation": str(data.get("validation_file") or "")},
        metric=str(metric_path(metric)), description=f"own data from {train_file}",
    )
