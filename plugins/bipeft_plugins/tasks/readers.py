"""The readers of the text tasks' data: the data folder (:func:`resolve_data_dir`,
``BIPEFT_DATA_DIR``), the generic file readers :func:`read_tsv` and
:func:`read_jsonl` (their file-read errors come from
:func:`bipeft_core.errors.read_text_file`), the S3Delta split protocol
(:func:`s3delta_split`; docs/tasks.md, "Splits") and the seeded cap of the
training rows (:func:`cap_rows`). A task plugin's ``read_split`` builds on
them; nothing here knows a concrete task."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from bipeft_core.errors import DataError, read_text_file

__all__ = ["DATA_DIR_ENV", "cap_rows", "read_jsonl", "read_tsv", "resolve_data_dir", "s3delta_split"]

logger = logging.getLogger("bipeft.tasks")

#: The environment variable naming the local data folder.
DATA_DIR_ENV = "BIPEFT_DATA_DIR"


# -- files -----------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None, *, layout: str = "") -> Path | None:
    """The local data folder: ``data_dir`` if given, else the
    ``BIPEFT_DATA_DIR`` environment variable, else ``None`` (load from the
    Hugging Face hub). A folder that does not exist is a :class:`DataError`;
    ``layout`` (the folder's expected layout, see :attr:`~bipeft_plugins.tasks.text.TextTask.data_layout`)
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
