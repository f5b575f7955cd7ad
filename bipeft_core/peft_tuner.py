"""bipeft as a Hugging Face ``peft`` method: the peft type ``BIPEFT``.

A searched structure may keep modules that peft has no native form of
(Adapter-LR, BitFit, LNFit, ...), or several kinds at once, which one native
peft config cannot hold. For those, bipeft registers its own peft method
with peft's registration API (``peft.utils.register_peft_method``): a
:class:`BipeftTunerConfig` that carries the structure (``structure.json``'s
content) and a :class:`BipeftTunerModel` that builds it on the base model
with the module types of the installed plugins. Once ``bipeft_core`` is
imported (it registers the method when ``peft`` is installed), a folder
written by :func:`bipeft_core.export.export` in the ``peft-bipeft`` format
loads as any peft adapter does::

    import bipeft_core  # registers the method
    from peft import AutoPeftModelForSequenceClassification
    model = AutoPeftModelForSequenceClassification.from_pretrained("out/export")

peft then trains it (``Trainer`` included), saves it with
``save_pretrained`` and disables it with ``disable_adapter()``.

peft's ``PeftType`` is a closed enum that its registration API checks
names against; :func:`register` adds the member ``BIPEFT`` to it (the one
step peft's API does not do itself) and then calls the API.

Importing peft takes seconds, so ``import bipeft_core`` does not import it:
:func:`install` registers at once when peft is already imported, and
otherwise right after the program's first ``import peft`` (an import hook
that removes itself then).
"""

from __future__ import annotations

import enum
import importlib.abc
import importlib.machinery
import sys
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

# ``BipeftTunerConfig`` and ``BipeftTunerModel`` are module attributes too,
# built on first access (they subclass peft's classes; see ``__getattr__``).
__all__ = ["PEFT_TYPE", "install", "register", "registered"]

PEFT_TYPE = "BIPEFT"
PREFIX = "bipeft_"
_STATE: dict[str, Any] = {}


def _add_enum_member(enum_cls: type[enum.Enum], name: str) -> Any:
    """Add the member ``name`` (value ``name``) to a ``str`` enum, as if it
    had been declared there; return it (the existing one if present)."""
    existing = enum_cls.__members__.get(name)
    if existing is not None:
        return existing
    member: Any = str.__new__(cast(Any, enum_cls), name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = enum_cls  # type: ignore[attr-defined]
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[name] = member
    enum_cls._member_names_.append(name)  # type: ignore[attr-defined]
    type.__setattr__(enum_cls, name, member)
    return member


def registered() -> bool:
    """Whether the ``BIPEFT`` peft method is registered in this process."""
    return bool(_STATE.get("registered"))


def register() -> bool:
    """Register the ``BIPEFT`` peft method (idempotent). ``False`` when peft
    is not installed (nothing to register with)."""
    if _STATE.get("registered"):
        return True
    try:
        import peft  # noqa: F401
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
        from peft.utils.peft_types import PeftType, register_peft_method
    except ImportError:
        return False
    member = _add_enum_member(PeftType, PEFT_TYPE)
    if member not in PEFT_TYPE_TO_CONFIG_MAPPING:
        config_cls, model_cls = _classes()
        register_peft_method(name=PEFT_TYPE.lower(), config_cls=config_cls, model_cls=model_cls, prefix=PREFIX)
    _STATE["registered"] = True
    return True


class _AfterPeftImport(importlib.abc.MetaPathFinder):
    """Finds ``peft`` as the other finders do, and registers the method once
    its package has run."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "peft":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _remove_hook()
            register()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterPeftImport)]


def install() -> None:
    """Make the ``BIPEFT`` method available to peft in this process: now if
    peft is imported, else on its first import. Called by ``import bipeft_core``."""
    if "peft" in sys.modules:
        register()
    elif not any(isinstance(f, _AfterPeftImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterPeftImport())


def _classes() -> tuple[type, type]:
    """The config and model classes (built on first use, as they subclass
    peft's own, which are imported only when peft is installed)."""
    if "classes" in _STATE:
        return _STATE["classes"]
    from peft.config import PeftConfig
    from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
    from peft.utils.peft_types import PeftType

    class _BipeftLayer(nn.Module, BaseTunerLayer):
        """The tuner layer peft sees: it holds each adapter's modules in
        ``bipeft_modules[adapter_name]`` (the modules themselves act through
        forward hooks on the backbone's layers)."""

        adapter_layer_names = ("bipeft_modules",)
        other_param_names = ()

        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.bipeft_modules = nn.ModuleDict()
            self._disable_adapters = False
            self.merged_adapters: list[str] = []
            self._active_adapter = "default"

        def enable_adapters(self, enabled: bool) -> None:
            self._disable_adapters = not enabled
            for mods in self.bipeft_modules.values():
                for m in cast(Any, mods):
                    m.enabled = enabled

    @dataclass
    class _BipeftTunerConfig(PeftConfig):
        """peft config of a bipeft structure: ``structure`` is the content of
        bipeft's ``structure.json`` (module types, sites, shapes, ranks);
        ``modules_to_save`` the task-head modules trained beside it;
        ``plugins`` the Python modules of third-party bipeft plugins whose
        module types the structure uses (loaded with ``bipeft_core.load_plugins``)."""

        structure: dict[str, Any] | None = field(default=None, metadata={"help": "bipeft's structure.json"})
        modules_to_save: list[str] | None = field(default=None, metadata={"help": "task-head modules"})
        plugins: list[str] | None = field(default=None, metadata={"help": "third-party bipeft plugin modules"})
        target_modules: list[str] | None = field(default=None, metadata={"help": "the layers the modules sit on"})

        def __post_init__(self) -> None:
            super().__post_init__()
            self.peft_type = PeftType.BIPEFT  # type: ignore[attr-defined]
            if self.structure is None:
                raise ValueError("a BipeftTunerConfig needs the structure (the content of bipeft's "
                                 "structure.json); export one with bipeft_core.export(..., format='peft-bipeft')")

    class _BipeftTunerModel(BaseTuner):
        """Builds a bipeft structure on the base model: every kept module, as
        its module type builds it for re-training, attached by forward hooks
        and held in ``bipeft.bipeft_modules[adapter_name]`` (a peft tuner
        layer, so peft saves, loads, freezes, disables and trains exactly
        its parameters)."""

        prefix = PREFIX
        target_module_mapping: dict[str, list[str]] = {}

        @property
        def bipeft_modules(self) -> nn.ModuleDict:
            return self.bipeft.bipeft_modules

        def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True,
                           low_cpu_mem_usage: bool = False, state_dict: Any = None) -> None:
            if "bipeft" not in self._modules:
                self.bipeft = _BipeftLayer()
            if len(self.bipeft_modules):
                raise ValueError("a bipeft structure is one adapter; load another structure on a fresh base model")
            config = self.peft_config[adapter_name]
            self.bipeft_modules[adapter_name] = nn.ModuleList(_build_modules(model, config))
            self.bipeft._active_adapter = adapter_name
            built: Any = self.bipeft_modules[adapter_name]
            self.targeted_module_names = sorted({site for m in built for _, site in m.spec.sites})
            self._mark_only_adapters_as_trainable(model)
            if config.inference_mode:
                for p in self.bipeft_modules[adapter_name].parameters():
                    p.requires_grad_(False)

        @classmethod
        def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
            # ``...bipeft.bipeft_modules.<adapter>.<i>.<param>`` is saved without ``<adapter>.``
            marker = f"bipeft_modules.{adapter_name}."
            if marker in key:
                return key.replace(marker, "bipeft_modules.", 1)
            return super()._remove_adapter_name_from_key(key, adapter_name)

        def _create_and_replace(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - not used
            raise NotImplementedError("bipeft modules attach by hooks; inject_adapter builds them")

        @staticmethod
        def _check_target_module_exists(peft_config: Any, key: str) -> bool:  # pragma: no cover - not used
            return False

        def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
            own = {id(p) for p in self.bipeft_modules.parameters()} if "bipeft" in self._modules else set()
            for p in model.parameters():
                if id(p) not in own:
                    p.requires_grad_(False)
            for p in self.bipeft_modules.parameters():
                p.requires_grad_(True)

        def disable_adapter_layers(self) -> None:
            self.bipeft.enable_adapters(False)

        def enable_adapter_layers(self) -> None:
            self.bipeft.enable_adapters(True)

        def set_adapter(self, adapter_name: Any, inference_mode: bool = False) -> None:
            names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
            unknown = [n for n in names if n not in self.bipeft_modules]
            if unknown:
                raise ValueError(f"no bipeft adapter named {unknown}; this model has {list(self.bipeft_modules)}")
            self.active_adapter = adapter_name
            self.bipeft._active_adapter = adapter_name
            if inference_mode:
                for n in names:
                    for p in self.bipeft_modules[n].parameters():
                        p.requires_grad_(False)

        def delete_adapter(self, adapter_name: str) -> None:
            mods: Any = self.bipeft_modules[adapter_name]
            for m in mods:
                m.detach()
            del self.bipeft_modules[adapter_name]
            del self.peft_config[adapter_name]

        def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
            if not autocast_adapter_dtype or adapter_name not in self.bipeft_modules:
                return
            for p in self.bipeft_modules[adapter_name].parameters():
                if p.dtype in (torch.float16, torch.bfloat16):
                    p.data = p.data.float()

        def merge_and_unload(self, *args: Any, **kwargs: Any) -> nn.Module:
            """Fold every module into the base model's weights and return it
            (see ``bipeft_core.merge.merge_modules``)."""
            from bipeft_core.merge import merge_modules

            for name, mods in list(self.bipeft_modules.items()):
                merge_modules(self.model, list(cast(Any, mods)), _plugins_of(self.peft_config[name]).peft_modules)
                del self.bipeft_modules[name]
            return self.model

        def unload(self) -> nn.Module:
            for mods in self.bipeft_modules.values():
                for m in cast(Any, mods):
                    m.detach()
            self.bipeft.bipeft_modules = nn.ModuleDict()
            return self.model

    _BipeftTunerConfig.__name__ = _BipeftTunerConfig.__qualname__ = "BipeftTunerConfig"
    _BipeftTunerModel.__name__ = _BipeftTunerModel.__qualname__ = "BipeftTunerModel"
    _STATE["classes"] = (_BipeftTunerConfig, _BipeftTunerModel)
    return _STATE["classes"]


def _plugins_of(config: Any) -> Any:
    import importlib

    from bipeft_core.plugins import default_plugins, load_plugins

    names = list(getattr(config, "plugins", None) or [])
    return load_plugins([importlib.import_module(n) for n in names]) if names else default_plugins()


def _build_modules(model: nn.Module, config: Any) -> list[Any]:
    """The structure's modules as its module types build them for
    re-training, attached to ``model``."""
    from bipeft_core.modules import require_peft_module
    from bipeft_core.structure import Structure

    structure = Structure.from_dict(dict(config.structure))
    if structure.full:
        raise ValueError("a full fine-tuning structure is not a peft adapter; load the bipeft export with "
                         "bipeft_core.load_peft instead")
    registry = _plugins_of(config).peft_modules
    mods = []
    for e in structure.entries:
        mod = registry.get(e.spec.type).discrete(e.discrete_spec(), model, e.rank)
        mods.append(require_peft_module(mod, e.spec.type, "discrete").attach(model))
    return mods


def __getattr__(name: str) -> Any:
    if name in ("BipeftTunerConfig", "BipeftTunerModel"):
        if not register():
            raise ImportError(f"{name} needs the 'peft' package: pip install 'bipeft[peft]'")
        return _classes()[0 if name == "BipeftTunerConfig" else 1]
    raise AttributeError(name)
