"""Testing bipeft and its plugins: fixtures, hypothesis strategies, and one
contract per interface, as pytest classes a plugin subclasses.

Fixtures (:mod:`~bipeft_core.testing.fixtures`): tiny random-weight models of
each supported family (:func:`tiny_model`), a learnable toy task
(:func:`toy_examples`, :func:`toy_accuracy`), :class:`InterruptAt` (a plugin
that stops a search at a step), synthetic positions and specs for module
types, and a synthetic supernet and search state for the strategies.

Contracts, each a class whose ``test_*`` methods assert the rules of one
interface's docstrings (docs/testing.md)::

    from bipeft_core.testing import PeftModuleTypeContract, ModuleSelectorContract

    class TestMyType(PeftModuleTypeContract):
        module_type = MyType()

    class TestMySelector(ModuleSelectorContract):
        module_selector = MySelector

* :class:`PeftModuleTypeContract` (also as one call, :func:`check_peft_module_type`),
* :class:`SensitivityEstimatorContract`, :class:`TriggerContract`,
* :class:`ModuleSelectorContract`, :class:`DimensionSelectorContract`,
* :class:`BudgetInvariantsContract`: the hypothesis stateful test of the
  budget invariants of both selectors across a search's triggers,
* :class:`OptimizerContract`: a whole search on a tiny model,
* :class:`TaskContract`: a task loaded from a data folder,
* :class:`ExportFormatContract`: an export format's refusals, files and round trip.

Everything here needs the ``test`` extra (pytest and hypothesis).
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401
    import pytest  # noqa: F401
except ImportError as exc:  # pragma: no cover - the test extra is not installed
    raise ImportError(f"bipeft_core.testing needs pytest and hypothesis ({exc}); "
                      "pip install 'bipeft[test]'") from exc

from bipeft_core.testing.budget_invariants import BudgetInvariantsContract, BudgetInvariantsMachine
from bipeft_core.testing.export_format import ExportFormatContract, export_structures
from bipeft_core.testing.fixtures import (
    TINY_FAMILIES,
    InterruptAt,
    discrete_spec,
    load_module_plugins,
    search_spec,
    synthetic_model,
    synthetic_products,
    synthetic_search_specs,
    synthetic_sites,
    synthetic_spec,
    synthetic_state,
    synthetic_step,
    synthetic_supernet,
    tiny_batch,
    tiny_model,
    toy_accuracy,
    toy_examples,
)
from bipeft_core.testing.module_type import (
    MODULE_TYPE_RULES,
    ModuleTypeProbe,
    PeftModuleTypeContract,
    check_count_function,
    check_peft_module_type,
)
from bipeft_core.testing.optimizer import OptimizerContract
from bipeft_core.testing.selectors import (
    DimensionSelectorContract,
    ModuleSelectorContract,
    check_dimension_selection,
    check_module_selection,
    fire_selectors,
)
from bipeft_core.testing.sensitivity import SensitivityEstimatorContract, sensitivity_feed
from bipeft_core.testing.strategies import module_specs, rank_sets, search_spaces, shapes
from bipeft_core.testing.task import TaskContract
from bipeft_core.testing.trigger import TriggerContract, drive_trigger

__all__ = [
    "MODULE_TYPE_RULES",
    "TINY_FAMILIES",
    "BudgetInvariantsContract",
    "BudgetInvariantsMachine",
    "DimensionSelectorContract",
    "ExportFormatContract",
    "InterruptAt",
    "ModuleSelectorContract",
    "ModuleTypeProbe",
    "OptimizerContract",
    "PeftModuleTypeContract",
    "SensitivityEstimatorContract",
    "TaskContract",
    "TriggerContract",
    "check_count_function",
    "check_dimension_selection",
    "check_module_selection",
    "check_peft_module_type",
    "discrete_spec",
    "export_structures",
    "drive_trigger",
    "fire_selectors",
    "load_module_plugins",
    "module_specs",
    "rank_sets",
    "search_spaces",
    "search_spec",
    "sensitivity_feed",
    "shapes",
    "synthetic_model",
    "synthetic_products",
    "synthetic_search_specs",
    "synthetic_sites",
    "synthetic_spec",
    "synthetic_state",
    "synthetic_step",
    "synthetic_supernet",
    "tiny_batch",
    "tiny_model",
    "toy_accuracy",
    "toy_examples",
]
