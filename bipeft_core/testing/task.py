"""The contract of a task (:class:`bipeft_core.tasks.Task`), as pytest tests a
plugin author subclasses::

    from bipeft_core.testing import TaskContract

    class TestMyTask(TaskContract):
        task = "mybench/mytask"          # registered by extra_plugins, or a Task instance
        extra_plugins = [my_plugin]
        data_dir = "/path/to/data"       # default: $BIPEFT_DATA_DIR

The task is loaded from the data folder (never the hub); a task whose
declared files are not in it is skipped, naming the files it lacks. A split
is any sequence of rows (mappings); one that offers columns
(``split.column_names`` and ``split[column]``, as a ``datasets.Dataset``
does) is read by column.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bipeft_core.errors import DataError
from bipeft_core.testing._common import expect

__all__ = ["TaskContract", "column", "gold_predictions", "wrong_predictions"]

_SPLITS = ["train", "validation", "test"]


def _columnar(split: Any) -> bool:
    return getattr(split, "column_names", None) is not None


def column(split: Any, name: str) -> list[Any]:
    """The values of column ``name`` of ``split``, in row order."""
    return list(split[name]) if _columnar(split) else [row[name] for row in split]


def _columns(split: Any) -> list[set[str]]:
    """The column sets of ``split``'s rows (one set for a columnar split)."""
    if _columnar(split):
        return [set(split.column_names)]
    return [set(row) for row in split]


def _rows(split: Any, n: int) -> list[Mapping[str, Any]]:
    return [split[i] for i in range(min(n, len(split)))]


def gold_predictions(task: Any, rows: Any) -> list[Any]:
    """The predictions that are right on every row: the label, or a
    choice task's first gold candidate."""
    if task.kind == "choice":
        return [task.gold_choices(row)[0] for row in rows]
    return column(rows, "label")


def wrong_predictions(task: Any, rows: Any) -> list[Any]:
    """Predictions that are wrong on every row: the next class, the labels in
    reverse order (regression), the next candidate."""
    if task.kind == "choice":
        return [(task.gold_choices(row)[0] + 1) % len(task.choices(row)) for row in rows]
    labels = column(rows, "label")
    if task.kind == "regression":
        return list(reversed(labels))
    return [(label + 1) % task.num_labels for label in labels]


def _missing_files(task: Any, root: Path) -> list[str]:
    """What of the task's declared files (``files`` in the folder
    ``folder_path(root)``, for a task that declares them) the data folder
    lacks."""
    files, folder_path = getattr(task, "files", None), getattr(task, "folder_path", None)
    if files is None or folder_path is None:
        return []
    try:
        folder = folder_path(root)
    except DataError:
        return [f"{task.name}'s folder under {root}"]
    return [str(folder / f) for f in files.values() if not (folder / f).is_file()]


class TaskContract:
    """What every task keeps, loaded from a data folder: it declares a name,
    a kind, classes for a classification task, input fields and a primary
    metric; it loads exactly the ``train``, ``validation`` and ``test``
    splits, in that order, none empty, every row with the columns of
    :meth:`~bipeft_core.tasks.Task.features` (the input fields, ``idx``, and
    ``label`` but for choice tasks), ``idx`` distinct within a split; labels
    are valid for the kind; the same seed gives the same splits and
    ``max_train_examples`` caps the training split only; its metric returns
    finite floats, the primary metric first, higher for right predictions
    than for wrong ones."""

    task: ClassVar[Any] = None
    """The task: a :class:`~bipeft_core.tasks.Task`, or its registry name
    (then :attr:`extra_plugins` and the built-ins are loaded)."""
    extra_plugins: ClassVar[Sequence[object]] = ()
    data_dir: ClassVar[str | os.PathLike[str] | None] = None
    """The data folder (default: ``$BIPEFT_DATA_DIR``; without one the
    tests are skipped)."""
    seed: ClassVar[int] = 42
    choice_rows: ClassVar[int] = 200
    """Rows of each split whose candidates a choice task's check reads."""

    @pytest.fixture(scope="class")
    @classmethod
    def resolved_task(cls) -> Any:
        task = cls.task
        expect(task is not None, f"{cls.__name__} sets no task")
        if isinstance(task, str):
            from bipeft_core.plugins import load_plugins

            return load_plugins(list(cls.extra_plugins), entry_points=False).tasks.get(task)
        return task

    @pytest.fixture(scope="class")
    @classmethod
    def task_data_dir(cls, resolved_task: Any) -> Path:
        where = cls.data_dir if cls.data_dir is not None else os.environ.get("BIPEFT_DATA_DIR")
        if not where or not Path(where).is_dir():
            pytest.skip(f"no data folder for task {resolved_task.name} (set BIPEFT_DATA_DIR or data_dir)")
        root = Path(where)
        missing = _missing_files(resolved_task, root)
        if missing:
            pytest.skip(f"no local data for task {resolved_task.name}: {', '.join(missing)} missing")
        return root

    @pytest.fixture(scope="class")
    @classmethod
    def splits(cls, resolved_task: Any, task_data_dir: Path) -> Any:
        return resolved_task.load(task_data_dir, seed=cls.seed)

    def test_declares_name_kind_labels_and_metric(self, resolved_task: Any) -> None:
        t = resolved_task
        expect(isinstance(t.name, str) and bool(t.name), f"{t!r}: name {t.name!r} is not a non-empty string")
        expect(t.kind in ("classification", "regression", "choice"),
               f"{t.name}: kind {t.kind!r} is not 'classification', 'regression' or 'choice'")
        if t.kind == "classification":
            expect(len(t.label_names) >= 2 and t.num_labels == len(t.label_names),
                   f"{t.name}: label_names {t.label_names!r} and num_labels {t.num_labels} do not give >= 2 classes")
        expect(isinstance(t.primary_metric, str) and bool(t.primary_metric),
               f"{t.name}: primary_metric {t.primary_metric!r} is not a metric name")
        expect(len(t.input_fields) >= 1, f"{t.name}: no input_fields; a task that loads data declares them")

    def test_loads_train_validation_and_test(self, resolved_task: Any, splits: Any) -> None:
        expect(list(splits) == _SPLITS, f"{resolved_task.name} loads splits {list(splits)}, not {_SPLITS}")
        for name in _SPLITS:
            expect(len(splits[name]) > 0, f"{resolved_task.name}: the {name} split is empty")

    def test_rows_have_the_declared_columns(self, resolved_task: Any, splits: Any) -> None:
        t = resolved_task
        declared = set(t.features())
        needed = set(t.input_fields) | {"idx"} | ({"label"} if t.kind != "choice" else set())
        expect(needed <= declared, f"{t.name}: features {sorted(declared)} lack {sorted(needed - declared)}")
        for name in _SPLITS:
            split = splits[name]
            odd = [cols for cols in _columns(split) if cols != declared]
            expect(not odd, f"{t.name}: a row of the {name} split has columns {sorted(odd[0]) if odd else ''}, "
                            f"declared {sorted(declared)}")
            idx = column(split, "idx")
            expect(len(set(idx)) == len(idx), f"{t.name}: the {name} split repeats an idx")

    def test_labels_are_valid_for_the_kind(self, resolved_task: Any, splits: Any) -> None:
        t = resolved_task
        for name in _SPLITS:
            split = splits[name]
            if t.kind == "classification":
                bad = sorted({y for y in column(split, "label") if not 0 <= y < t.num_labels})
                expect(not bad, f"{t.name}: the {name} split has labels {bad[:5]} outside 0..{t.num_labels - 1}")
            elif t.kind == "regression":
                expect(all(math.isfinite(y) for y in column(split, "label")),
                       f"{t.name}: a {name} label is not finite")
            else:
                for row in _rows(split, self.choice_rows):
                    gold, choices = t.gold_choices(row), t.choices(row)
                    expect(len(choices) >= 2 and all(0 <= g < len(choices) for g in gold),
                           f"{t.name}: {name} row {row['idx']} has gold {gold} among {len(choices)} candidates")

    def test_same_seed_same_splits_and_the_cap_takes_training_rows_only(self, resolved_task: Any,
                                                                         task_data_dir: Path, splits: Any) -> None:
        t = resolved_task
        cap = max(1, len(splits["train"]) // 2)
        capped = t.load(task_data_dir, seed=self.seed, max_train_examples=cap)
        for name in ("validation", "test"):
            expect(column(capped[name], "idx") == column(splits[name], "idx"),
                   f"{t.name}: loading again with seed {self.seed} gives another {name} split")
        expect(len(capped["train"]) == cap, f"{t.name}: max_train_examples={cap} gives {len(capped['train'])} rows")
        expect(set(column(capped["train"], "idx")) <= set(column(splits["train"], "idx")),
               f"{t.name}: the capped training split holds rows the full one does not")

    def test_metric_keys_and_values(self, resolved_task: Any, splits: Any) -> None:
        t = resolved_task
        rows = splits["validation"]
        right = t.compute_metrics(gold_predictions(t, rows), rows)
        wrong = t.compute_metrics(wrong_predictions(t, rows), rows)
        for result in (right, wrong):
            expect(isinstance(result, dict) and next(iter(result), None) == t.primary_metric,
                   f"{t.name}: compute_metrics returned keys {list(result)}; the primary metric "
                   f"{t.primary_metric!r} comes first")
            expect(all(isinstance(v, float) and math.isfinite(v) for v in result.values()),
                   f"{t.name}: compute_metrics returned {result}; every value is a finite float")
        expect(set(right) == set(wrong), f"{t.name}: compute_metrics returns keys {list(right)} for one "
                                         f"prediction and {list(wrong)} for another")
        expect(right[t.primary_metric] > wrong[t.primary_metric],
               f"{t.name}: right predictions score {t.primary_metric} = {right[t.primary_metric]:g}, wrong ones "
               f"{wrong[t.primary_metric]:g}")
