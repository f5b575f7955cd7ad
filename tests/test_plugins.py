"""Plugin loading: built-ins, disabling, passed-in plugins, entry points."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bipeft_core import (
    DuplicateNameError,
    Pipeline,
    SpecError,
    UnknownNameError,
    hookimpl,
    load_plugins,
)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def third_party(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURES))
    import third_party_plugin

    return third_party_plugin


def _install_entry_point(tmp_path: Path, monkeypatch) -> None:
    """Make an installed-looking distribution whose entry point in group
    'bipeft' names the fixture plugin module."""
    dist = tmp_path / "my_bipeft_plugin-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-bipeft-plugin\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[bipeft]\nscaled = third_party_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(FIXTURES))


def test_entry_point_plugin_adds_module_type_and_selector(tmp_path, monkeypatch):
    _install_entry_point(tmp_path, monkeypatch)
    pl = load_plugins()
    assert "scaled_bias" in pl.peft_modules
    assert "largest_first" in pl.strategies.module_selector
    entry = pl.peft_modules.entry("scaled_bias")
    assert entry.provider == "scaled" and entry.distribution == "my-bipeft-plugin 0.3"
    # a spec can now name both
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent("""
        budget = "0.5%"
        [space]
        name = "s2"
        [search]
        module_selector = { name = "largest_first", count = 2 }
    """))
    pipe = Pipeline.from_toml(spec, plugins=pl)
    assert pipe.module_selector.name == "largest_first"
    assert pipe.build_component("module_selector").count == 2
    # and disabling it by its entry-point name removes it
    assert "scaled_bias" not in load_plugins(disable=["scaled"]).peft_modules


def test_passed_in_plugin_and_space_using_its_module_type(third_party):
    from bipeft_core import DeclarativeSpace
    from bipeft_core.targets import find_target_map
    from bipeft_core.testing import tiny_model

    pl = load_plugins([third_party], entry_points=False)
    assert pl.peft_modules.entry("scaled_bias").distribution == "(passed in)"
    space = DeclarativeSpace.from_dict({"name": "mine", "modules": [{"type": "scaled_bias", "targets": ["norm"]}]})
    model = tiny_model("bert")
    specs = space.modules(model, find_target_map(model, pl.target_maps), pl.peft_modules)
    assert len(specs) == 5 and all(s.counts == (33,) for s in specs)


def test_spec_naming_plugin_that_is_not_loaded_fails_with_known_names(plugins):
    with pytest.raises(SpecError) as exc:
        Pipeline(budget=1000, module_selector="largest_first", plugins=plugins)
    assert "search.module_selector = 'largest_first'" in str(exc.value)
    assert "budget_guided" in str(exc.value)


def test_builtins_can_be_disabled_by_short_name():
    pl = load_plugins(disable=["prefix", "lora"], entry_points=False)
    assert "prefix" not in pl.peft_modules and "lora" not in pl.peft_modules
    assert "bitfit" in pl.peft_modules


def test_disabling_an_unknown_plugin_is_an_error():
    with pytest.raises(UnknownNameError, match="cannot disable unknown plugin"):
        load_plugins(disable=["no_such_plugin"], entry_points=False)


def test_registering_a_taken_name_is_an_error():
    class Again:
        @hookimpl
        def bipeft_register_peft_modules(self, registry):
            from bipeft_plugins.modules.lora import LoRA

            registry.add(LoRA())

    with pytest.raises(DuplicateNameError, match="'lora' is already registered by plugin 'lora'"):
        load_plugins([Again()], entry_points=False)


def test_misspelled_hook_fails_check_pending():
    from pluggy import PluginValidationError

    class Typo:
        @hookimpl
        def bipeft_register_peft_module(self, registry):  # missing 's'
            pass

    with pytest.raises(PluginValidationError):
        load_plugins([Typo()], entry_points=False)


def test_event_hooks_see_the_search_and_can_stop_it(plugins):
    import torch

    from bipeft_core.testing import tiny_model

    seen = {"before": 0, "steps": 0, "after": 0}

    class Watcher:
        @hookimpl
        def bipeft_before_search(self, context):
            seen["before"] += 1

        @hookimpl
        def bipeft_after_step(self, state, control):
            seen["steps"] += 1
            if state.step == 3:
                control.request_stop("enough")

        @hookimpl
        def bipeft_after_search(self, result):
            seen["after"] += 1
            seen["notes"] = result.notes

    pl = load_plugins([Watcher()], entry_points=False)
    g = torch.Generator().manual_seed(0)
    train = [{"input_ids": torch.randint(2, 128, (6,), generator=g), "attention_mask": torch.ones(6, dtype=torch.long),
              "labels": torch.tensor(i % 2)} for i in range(64)]
    pipe = Pipeline(budget=800, plugins=pl, search_settings={"epochs": 2, "batch_size": 8})
    pipe.search(tiny_model("bert"), train)
    assert seen["before"] == 1 and seen["steps"] == 3 and seen["after"] == 1
    assert any("enough" in n for n in seen["notes"])
