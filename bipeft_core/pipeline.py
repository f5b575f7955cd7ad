"""The pipeline: a spec (:class:`bipeft_core.spec.PipelineSpec`, plain data)
bound to the plugin registries, which checks every name against them, builds
the components, and runs the search and the re-train
(:mod:`bipeft_core.run`).

Data flows one way: spec -> pipeline (names checked, components built,
budget resolved by :mod:`bipeft_core.run`) -> the optimizer.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from bipeft_core.errors import BipeftError, SpecError
from bipeft_core.plugins import default_plugins
from bipeft_core.run import retrain as run_retrain
from bipeft_core.run import search as run_search
from bipeft_core.space import DeclarativeSpace
from bipeft_core.spec import COMPONENT_KINDS, Component, PipelineSpec, SpaceSpec
from bipeft_core.tasks import resolve_task_name

__all__ = ["Pipeline"]


@attrs.frozen(kw_only=True)
class Pipeline(PipelineSpec):
    """A full BIPEFT (or baseline) pipeline: the spec's fields (see
    :class:`~bipeft_core.spec.PipelineSpec`) and ``plugins`` (the result of
    :func:`bipeft_core.load_plugins`; default: the built-ins and installed
    plugins), which checks names on construction and runs. ``plugins`` is not
    part of the spec's value."""

    plugins: Any = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._fill_defaults()
        self.validate()

    def _fill_defaults(self) -> None:
        """An optimizer or space the spec leaves out is the default spec's
        (hook ``bipeft_default_spec``; the built-in one: ``iterative`` on
        space ``s2``), so the core names none itself."""
        if self.optimizer is not None and (self.space.name is not None or self.space.file is not None):
            return
        default = self.get_plugins().hook.bipeft_default_spec() or {}
        if self.optimizer is None:
            name = default.get("search", {}).get("optimizer")
            if name is None:
                raise SpecError("the spec names no optimizer and no plugin provides a default spec; set "
                                "search.optimizer (e.g. optimizer = \"iterative\")")
            object.__setattr__(self, "optimizer", Component.parse(name, "default spec: search.optimizer"))
        if self.space.name is None and self.space.file is None:
            name = SpaceSpec.parse(default.get("space")).name
            if name is None:
                raise SpecError("the spec names no space and no plugin provides a default spec; set "
                                "[space] name (e.g. name = \"s2\") or [space] file")
            object.__setattr__(self, "space", attrs.evolve(self.space, name=name))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, plugins: Any = None, source: str = "spec",
                  **extra: Any) -> Pipeline:
        """From the dict form (the TOML tables), checked against ``plugins``.
        Raises :class:`SpecError`."""
        return super().from_dict(data, source=source, plugins=plugins, **extra)

    @classmethod
    def from_toml(cls, path: str | Path, *, plugins: Any = None, **extra: Any) -> Pipeline:
        """Load a TOML spec file. Raises :class:`SpecError` naming the file."""
        return super().from_toml(path, plugins=plugins, **extra)

    def evolve(self, **changes: Any) -> Pipeline:
        return attrs.evolve(self, **changes)

    # -- checking against the registries ---------------------------------------------
    def get_plugins(self) -> Any:
        if self.plugins is None:
            return default_plugins()
        return self.plugins

    def validate(self) -> None:
        """Check every name against the registries and every component's
        parameters against its constructor. Called on construction."""
        plugins = self.get_plugins()
        if self.space.file is not None:
            try:
                DeclarativeSpace.from_toml(self.space.file).check(plugins.peft_modules)
            except BipeftError as exc:
                raise SpecError(f"space.file = {self.space.file!r}: {exc}") from None
        elif self.space.name not in plugins.spaces:
            _unknown("space.name", plugins.spaces, str(self.space.name))
        optimizer_cls = self._factory("optimizer", plugins)
        used = tuple(optimizer_cls.components)
        for kind in COMPONENT_KINDS[1:]:
            comp = getattr(self, kind)
            if comp is None:
                continue
            if kind not in used:
                raise SpecError(
                    f"search.{kind} = {comp.name!r} is set, but optimizer {self.component_name('optimizer')!r} does not use "
                    f"a {kind} (it uses {list(used) or 'none'}); remove search.{kind}"
                )
            self._factory(kind, plugins)
        built = {kind: self.build_component(kind, plugins) for kind in COMPONENT_KINDS
                 if getattr(self, kind) is not None}
        self._check_warmup(built, used, plugins)
        if self.model.task is not None and len(plugins.tasks):
            try:
                plugins.tasks.get(resolve_task_name(self.model.task, plugins.tasks))
            except BipeftError as exc:
                raise SpecError(f"model.task = {self.model.task!r}: {exc}") from None

    def _check_warmup(self, built: dict[str, Any], used: tuple[str, ...], plugins: Any) -> None:
        """A trigger's warm-up must end before the search's epochs do: otherwise
        no trigger can fire and the search is a warm-up cut down to the budget
        by the repair alone. ``built``: the spec's components as ``validate``
        built them; ``used``: the kinds the optimizer reads."""
        if "trigger" not in used or not built["optimizer"].selects:
            return
        trigger = built.get("trigger") or self.build_component("trigger", plugins)  # else the optimizer's default
        warmup = trigger.warmup_epochs
        epochs = self.search_settings.epochs
        if warmup is not None and warmup >= epochs:
            raise SpecError(
                f"search.trigger warmup_epochs = {warmup:g} is not below search.epochs = {epochs}: no trigger "
                f"could fire; lower warmup_epochs (e.g. {epochs / 3:.2g}) or raise search.epochs")

    def _factory(self, kind: str, plugins: Any) -> Any:
        comp = getattr(self, kind)
        registry = plugins.strategies.kind(kind)
        if comp.name not in registry:
            _unknown(f"search.{kind}", registry, comp.name)
        return registry.get(comp.name)

    def component_name(self, kind: str) -> str | None:
        """The name used for ``kind``: the spec's, else the optimizer's default."""
        comp = getattr(self, kind)
        if comp is not None:
            return comp.name
        default = self._default_component(kind)
        return default.name if default is not None else None

    def _default_component(self, kind: str) -> Component | None:
        optimizer_cls = self._factory("optimizer", self.get_plugins())
        default = optimizer_cls.default_components.get(kind)
        return None if default is None else Component.parse(default, f"{optimizer_cls.__name__} default {kind}")

    def build_component(self, kind: str, plugins: Any = None) -> Any:
        """A fresh instance of the component of ``kind`` (the spec's, else
        the optimizer's default), or ``None`` if the optimizer uses none."""
        plugins = plugins or self.get_plugins()
        comp = getattr(self, kind)
        if comp is None:
            comp = self._default_component(kind)
            if comp is None:
                return None
        registry = plugins.strategies.kind(kind)
        if comp.name not in registry:
            _unknown(f"search.{kind}", registry, comp.name)
        factory = registry.get(comp.name)
        params = comp.param_dict()
        try:
            inspect.signature(factory).bind(**params)
        except TypeError:
            sig = inspect.signature(factory)
            accepted = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
            bad = sorted(set(params) - set(accepted))
            raise SpecError(
                f"search.{kind} = {comp.to_value()!r}: {comp.name} does not take {bad or 'these parameters'}; "
                f"its parameters are {accepted}"
            ) from None
        try:
            return factory(**params)
        except BipeftError as exc:
            raise SpecError(f"search.{kind} = {comp.to_value()!r}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise SpecError(f"search.{kind} = {comp.to_value()!r}: {exc}") from None

    # -- running -----------------------------------------------------------------------
    def search(self, model: Any, train: Any, validation: Any = None, *, epochs: int | None = None,
               seed: int | None = None, **kwargs: Any) -> Any:
        """Run the search on ``model`` and return a :class:`SearchResult`
        (see :func:`bipeft_core.run.search` for the keyword arguments);
        ``epochs`` and ``seed`` override the spec's search settings."""
        pipe = self
        changes: dict[str, Any] = {k: v for k, v in (("epochs", epochs), ("seed", seed)) if v is not None}
        if changes:
            pipe = attrs.evolve(self, search_settings=attrs.evolve(self.search_settings, **changes))
        return run_search(pipe, model, train, validation, **kwargs)

    def retrain(self, model: Any, structure: Any, train: Any, validation: Any = None, test: Any = None,
                **kwargs: Any) -> Any:
        """Re-train ``structure`` on a fresh ``model`` (see :func:`bipeft_core.run.retrain`)."""
        return run_retrain(self, model, structure, train, validation, test, **kwargs)

    def resolved_space(self) -> Any:
        if self.space.file is not None:
            space = DeclarativeSpace.from_toml(self.space.file)
        else:
            space = self.get_plugins().spaces.get(self.space.name)
        if self.space.ranks is not None:
            space = space.with_ranks(self.space.ranks)
        return space


def _unknown(field: str, registry: Any, name: str) -> None:
    try:
        registry.get(name)
    except BipeftError as exc:
        raise SpecError(f"{field} = {name!r}: {exc}") from None
