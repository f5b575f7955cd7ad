"""The plugin contract: every hook a bipeft plugin may implement.

A plugin is a module (or any object) with functions marked
``@bipeft_core.hookimpl`` whose names are the hook names below. Hooks are
called with keyword arguments only, so an implementation may accept just the
arguments it needs. Registration hooks fill a :class:`bipeft_core.Registry`;
event hooks are called while a search runs.

Third-party plugins are found through the entry-point group ``bipeft``::

    [project.entry-points.bipeft]
    my_plugin = "my_package.my_plugin_module"
"""

from __future__ import annotations

from typing import Any

import pluggy

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

PROJECT_NAME = "bipeft"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# -- registration ------------------------------------------------------------------


@hookspec
def bipeft_register_peft_modules(registry: Any) -> None:
    """Add PEFT module types (:class:`bipeft_core.PeftModuleType` instances)
    with ``registry.add(obj)``. Called once when plugins are loaded."""


@hookspec
def bipeft_register_strategies(registry: Any) -> None:
    """Add strategy classes. ``registry`` is a
    :class:`bipeft_core.StrategyRegistries` holding one registry per interface
    kind (``registry.sensitivity``, ``.trigger``, ``.module_selector``,
    ``.dimension_selector``, ``.optimizer``); ``registry.add(cls)`` files a
    class under the kind of its base class. Called once when plugins are
    loaded."""


@hookspec
def bipeft_register_search_spaces(registry: Any) -> None:
    """Add search spaces (:class:`bipeft_core.SearchSpace` instances, e.g.
    ``DeclarativeSpace.from_toml(path)``). Called once when plugins are
    loaded."""


@hookspec
def bipeft_register_target_maps(registry: Any) -> None:
    """Add backbone target maps (:class:`bipeft_core.TargetMap`), which say
    where attention, FFN and normalisation layers sit in an architecture.
    Called once when plugins are loaded."""


@hookspec
def bipeft_register_tasks(registry: Any) -> None:
    """Add tasks (datasets with their fields, labels and metric). Called once
    when plugins are loaded."""


@hookspec
def bipeft_register_export_formats(registry: Any) -> None:
    """Add export formats (:class:`bipeft_core.ExportFormat` instances),
    which ``export(..., format=name)`` and ``bipeft export --format`` then
    take. bipeft's own format (``bipeft``) is the core's and always there.
    Called once when plugins are loaded."""


@hookspec(firstresult=True)
def bipeft_default_spec() -> dict[str, Any] | None:
    """The pipeline spec (its dict form, without ``model.task``) that a run
    starts from when the user gives a task and no spec: model, budget, space,
    search components and training recipe. The first plugin that returns a
    dict wins (plugins given to ``load_plugins`` are asked before the
    built-ins, so a plugin can replace the built-in default). Called each time
    the default is needed; return a fresh dict."""


@hookspec(firstresult=True)
def bipeft_default_model() -> str | None:
    """The model (a local folder or a hub id) a run uses when its spec names
    none. The first plugin that returns a value wins; a plugin whose default
    is not available raises a :class:`bipeft_core.BipeftError` that says how
    to get it. Called each time the default is needed."""


@hookspec(firstresult=True)
def bipeft_task_from_data(data: dict[str, Any]) -> Any:
    """A task (a :class:`bipeft_core.tasks.Task`) made of the user's own
    data files: ``data`` is the spec's ``[data]`` table
    (:class:`bipeft_core.spec.DataSpec` as a dict: ``train_file`` and
    optionally ``validation_file``, ``test_file``, ``text_columns``,
    ``label_column``, ``kind``, ``metric``, ``name``). The first plugin that
    returns a task wins; raise :class:`bipeft_core.BipeftError` (a
    ``DataError`` or ``SpecError``) naming the file and the fix for data it
    cannot read."""


@hookspec(firstresult=True)
def bipeft_default_model_id() -> str | None:
    """The public name (a Hugging Face hub id) of the model that
    ``bipeft_default_model`` provides, or ``None``. Exports record it as
    their ``base_model_name_or_path`` instead of the local folder the model
    was loaded from, so the export loads wherever the hub is reachable."""


# -- events ------------------------------------------------------------------------


@hookspec
def bipeft_before_search(context: Any) -> None:
    """Called once when a search starts (after the supernet is built, before
    the first step; also when a search resumes). ``context`` is the
    :class:`bipeft_core.SearchContext`."""


@hookspec
def bipeft_after_step(state: Any, control: Any) -> None:
    """Called after every weight step with the :class:`SearchState` (read
    only) and a :class:`Control`; ``control.request_stop(reason)`` ends the
    search after this step, as if the epochs had run out."""


@hookspec
def bipeft_on_trigger(event: Any, state: Any) -> None:
    """Called each time the trigger fires, after both selectors ran, with the
    :class:`TriggerEvent` (modules pruned, ranks fixed, expected size, ...)."""


@hookspec
def bipeft_after_search(result: Any) -> None:
    """Called once with the :class:`SearchResult` when a search ends."""
