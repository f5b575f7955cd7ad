"""Loading plugins and filling the registries.

``load_plugins()`` builds a fresh pluggy manager, registers the built-in
plugins (from the one list below), the plugins of the entry-point group
``bipeft`` and any plugin objects passed in, checks that every hook
implementation matches a spec, and asks each plugin to fill the registries.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import Any

import pluggy

import bipeft_core.hookspecs as hookspecs
from bipeft_core.errors import RegistryError, UnknownNameError
from bipeft_core.interfaces import (
    DimensionSelector,
    ExportFormat,
    ModuleSelector,
    Optimizer,
    PeftModuleType,
    SearchSpace,
    SensitivityEstimator,
    Trigger,
)
from bipeft_core.registry import Registry

__all__ = ["BUILTIN_PLUGINS", "Plugins", "StrategyRegistries", "default_plugins", "load_plugins"]

#: The built-in plugins, by short name. They register through the same hooks a
#: third-party plugin uses; ``load_plugins(disable=[short name])`` leaves one out.
BUILTIN_PLUGINS: Mapping[str, str] = {
    "lora": "bipeft_plugins.modules.lora",
    "adapter_lr": "bipeft_plugins.modules.adapter_lr",
    "bitfit": "bipeft_plugins.modules.bitfit",
    "lnfit": "bipeft_plugins.modules.lnfit",
    "serial_adapter": "bipeft_plugins.modules.serial_adapter",
    "parallel_adapter": "bipeft_plugins.modules.parallel_adapter",
    "prefix": "bipeft_plugins.modules.prefix",
    "target_maps": "bipeft_plugins.target_maps",
    "spaces": "bipeft_plugins.spaces",
    "bipeft": "bipeft_plugins.strategies.bipeft",
    "s3delta": "bipeft_plugins.strategies.s3delta",
    "prunepeft": "bipeft_plugins.strategies.prunepeft",
    "apet": "bipeft_plugins.strategies.apet",
    "manual": "bipeft_plugins.strategies.manual",
    "autopeft": "bipeft_plugins.strategies.autopeft",
    "tasks": "bipeft_plugins.tasks",
    "exports": "bipeft_plugins.exports",
    "defaults": "bipeft_plugins.defaults",
}

#: The interface kinds of strategies, in the order a spec lists them.
STRATEGY_KINDS: Mapping[str, type] = {
    "optimizer": Optimizer,
    "sensitivity": SensitivityEstimator,
    "trigger": Trigger,
    "module_selector": ModuleSelector,
    "dimension_selector": DimensionSelector,
}


class StrategyRegistries:
    """One registry per strategy interface kind.

    ``registry.add(cls)`` files ``cls`` under the kind of its base class;
    ``registry.trigger`` (and the other kinds) is the :class:`Registry` itself.
    Entries are classes (or factories) called with a spec's parameters.
    """

    def __init__(self) -> None:
        self._by_kind: dict[str, Registry[Any]] = {
            kind: Registry(kind.replace("_", " "), base) for kind, base in STRATEGY_KINDS.items()
        }

    def __getattr__(self, kind: str) -> Registry[Any]:
        try:
            return self.__dict__["_by_kind"][kind]
        except KeyError:
            raise AttributeError(kind) from None

    def kind(self, kind: str) -> Registry[Any]:
        """The registry for ``kind`` (``optimizer``, ``sensitivity``, ...)."""
        if kind not in self._by_kind:
            raise UnknownNameError(
                f"unknown strategy kind {kind!r}; the kinds are {', '.join(self._by_kind)}"
            )
        return self._by_kind[kind]

    def add(self, cls: Any, name: str | None = None) -> Any:
        for kind, base in STRATEGY_KINDS.items():
            if isinstance(cls, type) and issubclass(cls, base):
                return self._by_kind[kind].add(cls, name)
        bases = ", ".join(b.__name__ for b in STRATEGY_KINDS.values())
        raise RegistryError(
            f"cannot tell which strategy kind {cls!r} is: a strategy is a class "
            f"that subclasses one of {bases}; or add it to one registry directly, "
            "e.g. registry.trigger.add(factory, name='my_trigger')"
        )

    def items(self) -> Iterable[tuple[str, Registry[Any]]]:
        return self._by_kind.items()

    def _set_provider(self, plugin_name: str, distribution: str) -> None:
        for reg in self._by_kind.values():
            reg._set_provider(plugin_name, distribution)


class Plugins:
    """The loaded plugins and the registries they filled.

    Attributes: ``pm`` (the pluggy manager), ``hook`` (to call event hooks),
    ``peft_modules``, ``strategies``, ``spaces``, ``target_maps``, ``tasks``,
    ``export_formats``.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        from bipeft_core.targets import TargetMap  # local: avoids an import cycle

        self.pm = pm
        self.peft_modules: Registry[PeftModuleType] = Registry("PEFT module type", PeftModuleType)
        self.strategies = StrategyRegistries()
        self.spaces: Registry[SearchSpace] = Registry("search space", SearchSpace)
        self.target_maps: Registry[TargetMap] = Registry("target map", TargetMap)
        self.tasks: Registry[Any] = Registry("task")
        self.export_formats: Registry[ExportFormat] = Registry("export format", ExportFormat)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def registries(self) -> dict[str, Any]:
        """Every registry by its kind, for listing (``bipeft plugins``)."""
        out: dict[str, Any] = {"peft_module": self.peft_modules}
        out.update(dict(self.strategies.items()))
        out.update(space=self.spaces, target_map=self.target_maps, task=self.tasks,
                   export_format=self.export_formats)
        return out

    def _fill(self) -> None:
        dists = {id(p): d for p, d in self.pm.list_plugin_distinfo()}
        builtin_modules = set(BUILTIN_PLUGINS.values())
        fills: list[tuple[str, Registry | StrategyRegistries]] = [
            ("bipeft_register_peft_modules", self.peft_modules),
            ("bipeft_register_strategies", self.strategies),
            ("bipeft_register_search_spaces", self.spaces),
            ("bipeft_register_target_maps", self.target_maps),
            ("bipeft_register_tasks", self.tasks),
            ("bipeft_register_export_formats", self.export_formats),
        ]
        from bipeft_core.formats import BipeftFormat  # local: formats imports the structure layer

        self.export_formats._set_provider("bipeft_core", "bipeft (built-in)")
        self.export_formats.add(BipeftFormat())
        # Spaces and tasks may look up module types: fill in this order, each
        # hook called plugin by plugin in registration order so every entry
        # records who provided it.
        for hook_name, registry in fills:
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin
                if id(plugin) in dists:
                    dist = dists[id(plugin)]
                    distribution = f"{dist.project_name} {dist.version}"
                elif getattr(plugin, "__name__", None) in builtin_modules:
                    distribution = "bipeft (built-in)"
                else:
                    distribution = "(passed in)"
                registry._set_provider(impl.plugin_name, distribution)
                impl.function(registry=registry)
            registry._set_provider("?", "?")


def load_plugins(
    plugins: Iterable[object] = (),
    *,
    disable: Iterable[str] = (),
    entry_points: bool = True,
) -> Plugins:
    """Build a fresh plugin manager and fill the registries.

    ``plugins``: extra plugin objects (modules, classes or instances with
    ``@hookimpl`` functions), registered after the built-ins and the entry
    points. ``disable``: short names of built-ins (see
    :data:`BUILTIN_PLUGINS`) or entry-point names to leave out.
    ``entry_points=False`` ignores installed third-party plugins (tests use it
    to stay independent of what happens to be installed).
    """
    disable = {str(name).lower() for name in disable}
    known = set(BUILTIN_PLUGINS)
    if entry_points:
        known |= {ep.name.lower() for ep in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME)}
    if disable - known:
        raise UnknownNameError(
            f"cannot disable unknown plugin(s) {sorted(disable - known)}; the plugins "
            f"that can be disabled are: {', '.join(sorted(known))}"
        )
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in disable:
        pm.set_blocked(name)
    for short, modname in BUILTIN_PLUGINS.items():
        if short not in disable:
            pm.register(importlib.import_module(modname), name=short)
    if entry_points:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    for plugin in plugins:
        given = getattr(plugin, "name", None) if not isinstance(plugin, ModuleType) else None
        pm.register(plugin, name=given if isinstance(given, str) else None)
    pm.check_pending()
    host = Plugins(pm)
    host._fill()
    return host


_DEFAULT: Plugins | None = None


def default_plugins() -> Plugins:
    """The plugins of ``load_plugins()``, loaded once per process (used when
    a pipeline is given none)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = load_plugins()
    return _DEFAULT
