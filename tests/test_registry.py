from __future__ import annotations

import pytest

from bipeft_core import DuplicateNameError, PeftModuleType, Registry, RegistryError, UnknownNameError


class Thing:
    def __init__(self, name):
        self.name = name


def test_keys_are_lowercase_and_lookup_is_case_insensitive():
    reg = Registry("thing")
    t = reg.add(Thing("MyThing"))
    assert reg.names() == ["mything"]
    assert reg.get("MYTHING") is t
    assert "mything" in reg and "other" not in reg


def test_duplicate_name_is_rejected_naming_both_plugins():
    reg = Registry("thing")
    reg._set_provider("first_plugin", "dist-a 1.0")
    reg.add(Thing("x"))
    reg._set_provider("second_plugin", "dist-b 2.0")
    with pytest.raises(DuplicateNameError) as exc:
        reg.add(Thing("X"))
    msg = str(exc.value)
    assert "'x'" in msg and "first_plugin" in msg and "second_plugin" in msg and "disable" in msg


def test_unknown_name_lists_the_known_ones_and_suggests():
    reg = Registry("trigger")
    for n in ("budget_stability", "always"):
        reg.add(Thing(n))
    with pytest.raises(UnknownNameError) as exc:
        reg.get("budget_stabilty")
    msg = str(exc.value)
    assert "always, budget_stability" in msg and "Did you mean 'budget_stability'" in msg


def test_invalid_names_and_wrong_kinds_are_rejected():
    reg = Registry("PEFT module type", PeftModuleType)
    with pytest.raises(RegistryError, match="without a name"):
        reg.add(object())
    with pytest.raises(RegistryError, match="invalid registry name"):
        reg.add(Thing("has space"))
    with pytest.raises(RegistryError, match="is not a PeftModuleType"):
        reg.add(Thing("lora2"))


def test_builtin_registries_are_filled(plugins):
    assert {"lora", "adapter_lr", "bitfit", "lnfit", "serial_adapter", "parallel_adapter", "prefix"} <= set(
        plugins.peft_modules.names())
    assert {"s1", "s2"} <= set(plugins.spaces.names())
    assert {"t5", "bert", "gpt2", "llama"} <= set(plugins.target_maps.names())
    assert plugins.strategies.optimizer.names() == ["apet", "autopeft", "fixed", "full", "iterative", "manual", "prunepeft",
                                                     "s3delta"]
    assert plugins.strategies.trigger.names() == ["budget_stability"]
    entry = plugins.peft_modules.entry("lora")
    assert entry.provider == "lora" and entry.distribution == "bipeft (built-in)"
