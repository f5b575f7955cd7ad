"""Tasks: the task contract the engine uses, and task names.

A task is a dataset together with what it takes to train and score a model
on it. The engine (the runner, the CLI, the benchmarks) reads a task only
through :class:`Task`: its registry name and short names, its default epochs
and primary metric, its splits (:meth:`Task.load`), a pretrained model with
the task's head (:meth:`Task.load_model`) and the task bound to a tokenizer
and that model (:meth:`Task.prepare`, a :class:`PreparedTask`: the rows,
``collate``, ``loss`` and ``evaluate`` a training loop calls).
:func:`load_task_model` and :func:`prepare_task` are those two methods as
functions. No concrete task, file format, model family or metric lives
here: the built-in text tasks and their implementation (``TextTask``, the
readers, the model heads, tokenising and scoring) are the task plugin's,
``bipeft_plugins.tasks`` (docs/tasks.md).

Tasks are plugins: a package registers instances through the
``bipeft_register_tasks`` hook under registry keys such as
``<benchmark>/<name>``, each with the short names it answers to
(:attr:`Task.aliases`); :func:`resolve_task_name` and :func:`get_task` look
names up through that registry.
"""

from __future__ import annotations

import abc
import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import attrs

from bipeft_core.errors import SpecError, UnknownNameError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = [
    "PreparedTask",
    "Task",
    "TaskKind",
    "get_task",
    "load_task_model",
    "prepare_task",
    "resolve_task_name",
    "squash_name",
    "task_of",
]

TaskKind = Literal["classification", "regression", "choice", "language_modeling"]


# -- the contract ------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Task(abc.ABC):
    """The task contract: what the engine, the CLI, the benchmarks and the
    contract tests (:class:`bipeft_core.testing.TaskContract`) read of a task.

    Every attribute they read is declared here with its default; ``name``
    and ``primary_metric`` have none, because only a concrete task can know
    them. A concrete task is an attrs frozen subclass that adds what it
    needs (files, formats, a metric module, ...) and implements the abstract
    methods: :meth:`load` (the splits), :meth:`features` and
    :meth:`compute_metrics` (what the rows hold and how predictions on them
    score), :meth:`load_model` and :meth:`prepare` (a model with the task's
    head, and the task bound to a tokenizer and that model). The text tasks'
    implementation is ``bipeft_plugins.tasks.TextTask``.

    ``kind`` says what a prediction is: ``classification`` (``label_names``
    are the classes, a row's ``label`` their index), ``regression`` (a
    float ``label``) or ``choice`` (one of several candidates per example;
    :meth:`choices`, :meth:`gold_choices`).
    """

    name: str
    """Registry key, ``<benchmark>/<task>``; required."""
    primary_metric: str
    """The key of :meth:`compute_metrics`'s result used for model selection
    and reported first; required."""
    aliases: tuple[str, ...] = ()
    """Other names :func:`resolve_task_name` maps to this task (matched
    ignoring case, spaces, ``-`` and ``_``), e.g. the bare task name; none by
    default."""
    epochs: int | None = None
    """Training epochs for this task in the runner's embedded default spec
    (search and re-train); ``None`` (the default): the runner's own default."""
    kind: TaskKind = "classification"
    """``classification`` (the default), ``regression``, ``choice`` or
    ``language_modeling`` (next-token prediction on text; no label) (see the
    class)."""
    greater_is_better: bool = True
    """Whether a higher :attr:`primary_metric` is better (the default);
    ``False`` for a loss-like metric such as perplexity. The re-train keeps
    the epoch that is best in this direction."""
    label_names: tuple[str, ...] = ()
    """Class names in label-index order (at least two for classification;
    none by default, as a regression or choice task has)."""
    input_fields: tuple[str, ...] = ()
    """The row fields a model reads, in order (none by default; a task that
    loads data declares at least one)."""

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("classification", "regression", "choice", "language_modeling"):
            raise SpecError(
                f"task {self.name!r}: kind {self.kind!r} is not 'classification', 'regression', 'choice' or "
                "'language_modeling'"
            )
        if self.kind == "classification" and len(self.label_names) < 2:
            raise SpecError(
                f"task {self.name!r} is a classification task with label_names={self.label_names!r}; "
                "give at least two class names, in label-index order"
            )
        if isinstance(self.aliases, str):
            raise SpecError(
                f"task {self.name!r}: aliases={self.aliases!r} is a string; give a tuple of names, "
                f"e.g. ({self.aliases!r},)"
            )
        if self.epochs is not None and (isinstance(self.epochs, bool) or not isinstance(self.epochs, int)
                                        or self.epochs < 1):
            raise SpecError(f"task {self.name!r}: epochs={self.epochs!r} must be a whole number >= 1 or None")

    @property
    def num_labels(self) -> int:
        """Outputs of a classification head: classes, or 1 (regression,
        choice: one score per candidate)."""
        return len(self.label_names) if self.kind == "classification" else 1

    # -- data ----------------------------------------------------------------------------
    @abc.abstractmethod
    def load(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        seed: int = 42,
        max_train_examples: int | None = None,
    ) -> Mapping[str, Any]:
        """The ``train``, ``validation`` and ``test`` splits (in that order),
        each a sequence of rows with the columns of :meth:`features`; the
        same ``seed`` gives the same splits. ``data_dir`` is a local data
        folder (``None``: the task's own default), ``max_train_examples``
        caps the training split only (``None``: all rows). Raises
        :class:`bipeft_core.errors.DataError` naming the file and the fix."""

    @abc.abstractmethod
    def features(self) -> Any:
        """The columns of the loaded splits: at least the
        :attr:`input_fields`, ``idx`` (distinct per row of a split) and, but
        for choice tasks, ``label``."""

    @abc.abstractmethod
    def compute_metrics(self, predictions: Sequence[Any], rows: Any) -> dict[str, float]:
        """The metric values (finite floats, fractions rather than
        percentages) of ``predictions`` (class indices, values or candidate
        indices, one per row) against ``rows`` (a split of this task),
        :attr:`primary_metric` first."""

    def choices(self, example: Mapping[str, Any]) -> list[str]:
        """The candidates of a ``choice`` example; other kinds have none
        (the default raises ``NotImplementedError``)."""
        raise NotImplementedError(f"task {self.name!r} is not a choice task")

    def gold_choices(self, example: Mapping[str, Any]) -> list[int]:
        """Indices of the correct candidates of a ``choice`` example (may be
        empty for unlabelled rows); other kinds have none (the default raises
        ``NotImplementedError``)."""
        raise NotImplementedError(f"task {self.name!r} is not a choice task")

    # -- models --------------------------------------------------------------------------
    @abc.abstractmethod
    def load_model(self, name_or_path: str | os.PathLike[str], *, seed: int = 0, **kwargs: Any) -> nn.Module:
        """A pretrained backbone from ``name_or_path`` (a local folder, or a
        hub id when online) with this task's head, a new head initialised
        from ``seed`` without touching the global random generator.
        ``kwargs`` go to the loader."""

    @abc.abstractmethod
    def prepare(
        self,
        splits: Mapping[str, Any],
        tokenizer: Any,
        model: nn.Module,
        *,
        max_length: int | None = None,
    ) -> PreparedTask:
        """This task bound to ``tokenizer`` and ``model`` (from
        :meth:`load_model`): ``splits`` (as :meth:`load` returns them)
        turned into model inputs of at most ``max_length`` tokens
        (``None``: the task's own length)."""


class PreparedTask(abc.ABC):
    """A task bound to a tokenizer and a model, as :meth:`Task.prepare`
    returns it: the rows of its splits and the functions a training loop
    calls. The runner reads :attr:`train`, :attr:`validation`, :attr:`test`
    and :attr:`primary_metric`; the training loop calls :meth:`collate`,
    :meth:`loss` and :meth:`evaluate`."""

    train: Sequence[Any] | None = None
    """The training rows, each a mapping :meth:`collate` takes; ``None``
    (the default): the split was not prepared."""
    validation: Sequence[Any] | None = None
    """The validation rows (model selection); ``None`` by default."""
    test: Sequence[Any] | None = None
    """The test rows (the reported score); ``None`` by default."""

    @property
    @abc.abstractmethod
    def primary_metric(self) -> str:
        """The task's :attr:`Task.primary_metric`, the key :meth:`evaluate`
        returns first."""

    @property
    def greater_is_better(self) -> bool:
        """Whether a higher :attr:`primary_metric` is better (default
        ``True``; see :attr:`Task.greater_is_better`)."""
        return True

    @abc.abstractmethod
    def collate(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """A batch (a dict of tensors) from rows of a prepared split."""

    def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The keys of ``batch`` that the model's ``forward`` takes; by
        default all of them."""
        return dict(batch)

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        """The training loss of a batch (a scalar tensor with a gradient)."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, split: Any = "validation", *, batch_size: int = 64) -> dict[str, float]:
        """The task's metrics on a split (its name, ``"validation"`` by
        default, or its rows), :attr:`primary_metric` first. The model's
        train/eval mode is as it was afterwards."""


def load_task_model(name_or_path: str | os.PathLike[str], task: Task, *, seed: int = 0, **kwargs: Any) -> nn.Module:
    """``task.load_model(name_or_path, seed=seed, **kwargs)`` (:meth:`Task.load_model`)."""
    return task.load_model(name_or_path, seed=seed, **kwargs)


def prepare_task(
    task: Task,
    splits: Mapping[str, Any],
    tokenizer: Any,
    model: nn.Module,
    *,
    max_length: int | None = None,
) -> PreparedTask:
    """``task.prepare(splits, tokenizer, model, max_length=max_length)`` (:meth:`Task.prepare`)."""
    return task.prepare(splits, tokenizer, model, max_length=max_length)


# -- names -------------------------------------------------------------------------------


def squash_name(text: str) -> str:
    """``text`` without ``-``, ``_`` and spaces: the form in which task names
    and aliases are compared (and a task plugin's folder names, by the same
    rule)."""
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
    wanted = squash_name(key)
    by_key = sorted(k for k in table if squash_name(k.lower()) == wanted)
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
        spellings.setdefault(squash_name(k.lower()), k)
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
    """The squashed, lower-case :attr:`Task.aliases` of a registry entry
    (none for an entry that is not a :class:`Task`)."""
    aliases = task.aliases if isinstance(task, Task) else ()
    return {squash_name(a.strip().lower()) for a in aliases}


def task_of(pipeline: Any, plugins: Any) -> Task:
    """The task a pipeline runs: the task a plugin makes of its own data
    files (``[data]``; hook ``bipeft_task_from_data``) when the spec gives
    them, else the registered task ``model.task``. Raises
    :class:`~bipeft_core.errors.SpecError` when the spec gives neither."""
    data = getattr(pipeline, "data", None)
    if data is not None and data.given:
        if pipeline.model.task is not None:
            raise SpecError(f"the spec gives both model.task = {pipeline.model.task!r} and its own data files "
                            f"([data] train_file = {data.train_file!r}); keep one (--task or --train-file)")
        task = plugins.hook.bipeft_task_from_data(data=data.to_dict())
        if task is None:
            raise SpecError("the spec gives its own data files ([data]) but no task plugin reads them; load the "
                            "built-in plugin 'tasks' (do not disable it)")
        return cast(Task, task)
    if pipeline.model.task is None:
        raise SpecError("the spec names no task: set [model] task (a registered task; bipeft plugins lists them) "
                        "or pass --task, or give your own data with --train-file FILE (the [data] table)")
    return get_task(pipeline.model.task, plugins)


def get_task(name: str, registry: Any) -> Task:
    """The task registered under ``name`` (any spelling :func:`resolve_task_name`
    accepts). ``registry`` is the task registry (``load_plugins().tasks``) or
    the :class:`bipeft_core.plugins.Plugins` object itself."""
    reg = getattr(registry, "tasks", registry)
    return reg.get(resolve_task_name(name, reg))
