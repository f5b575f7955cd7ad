"""bipeft: budget-guided search for parameter-efficient fine-tuning structures.

The public API is re-exported here; helper modules are private by convention.
"""

from bipeft_core._version import __version__
from bipeft_core.budget import Budget, fill_walk, prune_walk
from bipeft_core.errors import (
    BipeftError,
    BudgetError,
    DataError,
    DuplicateNameError,
    RegistryError,
    SearchSpaceError,
    SpecError,
    StructureError,
    TargetError,
    TrainingError,
    UnknownNameError,
)
from bipeft_core.export import export as export_model
from bipeft_core.export import export_bipeft, export_merged, export_peft, export_peft_bipeft, load_peft
from bipeft_core.hookspecs import hookimpl, hookspec
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
from bipeft_core.modules import PeftModule
from bipeft_core.pipeline import Pipeline
from bipeft_core.plugins import BUILTIN_PLUGINS, Plugins, StrategyRegistries, default_plugins, load_plugins
from bipeft_core.registry import Registry
from bipeft_core.space import DeclarativeSpace
from bipeft_core.spec import Component, ModelSpec, PipelineSpec, SpaceSpec, TrainSpec
from bipeft_core.state import Control, SearchContext, SearchResult, SearchState, TriggerEvent
from bipeft_core.structure import PeftModel, Structure, StructureEntry
from bipeft_core.supernet import Supernet
from bipeft_core.targets import TargetMap, backbone_param_count
from bipeft_core.types import ModuleSpec, Shape, Site

__all__ = [
    "BUILTIN_PLUGINS",
    "BipeftError",
    "Budget",
    "BudgetError",
    "Component",
    "Control",
    "DataError",
    "DeclarativeSpace",
    "DimensionSelector",
    "ExportFormat",
    "DuplicateNameError",
    "ModelSpec",
    "ModuleSelector",
    "ModuleSpec",
    "Optimizer",
    "PeftModel",
    "PeftModule",
    "PeftModuleType",
    "Pipeline",
    "PipelineSpec",
    "Plugins",
    "Registry",
    "RegistryError",
    "SearchContext",
    "SearchResult",
    "SearchSpace",
    "SearchSpaceError",
    "SearchState",
    "SensitivityEstimator",
    "Shape",
    "Site",
    "SpaceSpec",
    "SpecError",
    "StrategyRegistries",
    "Structure",
    "StructureEntry",
    "StructureError",
    "Supernet",
    "TargetError",
    "TargetMap",
    "TrainSpec",
    "TrainingError",
    "Trigger",
    "TriggerEvent",
    "UnknownNameError",
    "__version__",
    "backbone_param_count",
    "default_plugins",
    "export_bipeft",
    "export_merged",
    "export_model",
    "export_peft",
    "export_peft_bipeft",
    "fill_walk",
    "hookimpl",
    "hookspec",
    "load_peft",
    "load_plugins",
    "prune_walk",
]

# The library reports through the "bipeft" logger (and its children, e.g.
# "bipeft.tasks"); it prints nothing itself. An application decides where the
# records go; the ``bipeft`` command shows them on stderr.
import logging as _logging

_logging.getLogger("bipeft").addHandler(_logging.NullHandler())

# bipeft's own peft method (peft type ``BIPEFT``), registered with peft on its
# first import (see bipeft_core.peft_tuner).
from bipeft_core import peft_tuner as _peft_tuner  # noqa: E402

_peft_tuner.install()
