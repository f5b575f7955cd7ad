"""The example plugin against bipeft's contracts: each class subclasses one
contract of ``bipeft_core.testing`` and names the implementation under test;
the contract brings the tests."""

from __future__ import annotations

import importlib
from pathlib import Path

import tomllib
from bipeft_example_plugin import IA3, ExcessShare, plugin

from bipeft_core import load_plugins
from bipeft_core.testing import (
    BudgetInvariantsContract,
    ModuleSelectorContract,
    OptimizerContract,
    PeftModuleTypeContract,
)

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class TestIA3(PeftModuleTypeContract):
    """The module type: exact counts, zero initialisation, gates, ... on
    every tiny model family."""

    module_type = IA3()
    extra_plugins = [plugin]


class TestExcessShare(ModuleSelectorContract):
    module_selector = ExcessShare


class TestExcessShareKeepsThree(ModuleSelectorContract):
    module_selector = ExcessShare
    params = {"min_keep": 3}


class TestExcessShareWithBIPEFTRanks(BudgetInvariantsContract):
    """The stateful budget invariants, with BIPEFT's dimension selector
    taken from the registry by name."""

    module_selector = ExcessShare
    dimension_selector = load_plugins(entry_points=False).strategies.dimension_selector.get("stability_kl")


class TestBIPEFTSearchWithExcessShareOverIA3(OptimizerContract):
    """A whole search: BIPEFT's iterative optimizer with this selector, on
    the plugin's space (IA3 everywhere, LoRA on queries and values)."""

    optimizer = "iterative"
    components = {"module_selector": "excess_share"}
    space = "example-ia3"
    budget = 1000
    extra_plugins = [plugin]


def test_entry_point_names_the_plugin_module():
    """What pip installs as the entry point is a module that registers the
    module type, the selector and the space."""
    declared = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["entry-points"]["bipeft"]
    assert declared == {"example": "bipeft_example_plugin.plugin"}
    module = importlib.import_module(declared["example"])
    loaded = load_plugins([module], entry_points=False)
    assert isinstance(loaded.peft_modules.get("ia3"), IA3)
    assert loaded.strategies.module_selector.get("excess_share") is ExcessShare
    assert loaded.spaces.get("example-ia3").name == "example-ia3"
