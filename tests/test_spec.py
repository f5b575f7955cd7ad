"""Declarative pipeline specs: TOML and Python give the same object,
to_dict round-trips, and invalid specs fail at load time."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bipeft_core import Budget, Pipeline, SpecError, load_plugins

SPEC = textwrap.dedent("""
    [model]
    name_or_path = "some/model"

    [budget]
    value = "1.39bp"

    [space]
    name = "s2"
    ranks = [1, 4, 8]

    [search]
    optimizer = "iterative"
    sensitivity = { name = "grad_weight_cos", beta = 0.85 }
    trigger = { name = "budget_stability", window = 5, threshold = 0.85, max_triggers = 100, warmup_epochs = 3 }
    module_selector = "budget_guided"
    dimension_selector = "stability_kl"
    epochs = 20
    batch_size = 32
    seed = 42

    [retrain]
    epochs = 20
    lr = 3e-4
""")


def write(tmp_path, text, name="spec.toml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_toml_and_python_give_the_same_object(tmp_path, plugins):
    from_toml = Pipeline.from_toml(write(tmp_path, SPEC), plugins=plugins)
    in_python = Pipeline(
        model={"name_or_path": "some/model"},
        budget=Budget.parse("1.39‱"),
        space={"name": "s2", "ranks": [1, 4, 8]},
        optimizer="iterative",
        sensitivity={"name": "grad_weight_cos", "beta": 0.85},
        trigger={"name": "budget_stability", "window": 5, "threshold": 0.85, "max_triggers": 100,
                 "warmup_epochs": 3},
        module_selector="budget_guided",
        dimension_selector="stability_kl",
        search_settings={"epochs": 20, "batch_size": 32, "seed": 42},
        retrain_settings={"epochs": 20, "lr": 3e-4},
        plugins=plugins,
    )
    assert from_toml == in_python
    trigger = from_toml.build_component("trigger")
    assert (trigger.window, trigger.warmup_epochs, trigger.max_triggers) == (5, 3, 100)


def test_to_dict_round_trips_through_toml(tmp_path, plugins):
    pipe = Pipeline.from_toml(write(tmp_path, SPEC), plugins=plugins)
    assert Pipeline.from_dict(pipe.to_dict(), plugins=plugins) == pipe
    again = Pipeline.from_toml(write(tmp_path, pipe.to_toml(), "again.toml"), plugins=plugins)
    assert again == pipe


def test_defaults_come_from_the_optimizer(plugins):
    pipe = Pipeline(budget="0.1%", plugins=plugins)
    assert pipe.component_name("trigger") == "budget_stability"
    assert pipe.build_component("sensitivity").beta == 0.85


@given(
    epochs=st.integers(min_value=1, max_value=100),
    batch=st.integers(min_value=1, max_value=512),
    lr=st.floats(min_value=1e-6, max_value=1.0),
    window=st.integers(min_value=1, max_value=20),
    budget=st.one_of(st.integers(min_value=1, max_value=10**7), st.sampled_from(["0.1%", "1.39bp", "0.5%"])),
    ranks=st.lists(st.integers(min_value=1, max_value=32), min_size=1, max_size=4, unique=True),
)
def test_spec_dict_round_trip(epochs, batch, lr, window, budget, ranks):
    from bipeft_core import default_plugins

    pl = default_plugins()
    pipe = Pipeline(budget=budget, space={"name": "s2", "ranks": ranks}, trigger={"name": "budget_stability",
                    "window": window, "warmup_epochs": 0.5}, search_settings={"epochs": epochs, "batch_size": batch, "lr": lr},
                    plugins=pl)
    assert Pipeline.from_dict(pipe.to_dict(), plugins=pl) == pipe


@pytest.mark.parametrize(
    "text, message",
    [
        ("budget = \"0.1%\"\n[search]\ntrigger = \"nope\"\n", "search.trigger = 'nope': unknown trigger 'nope'"),
        ("budget = \"0.1%\"\n[space]\nname = \"s9\"\n", "space.name = 's9': unknown search space 's9'. Known"),
        ("budget = \"0%\"\n", "budget = '0%'"),
        ("budget = -3\n", "at least 1 parameter"),
        ("budget = \"150%\"\n", "at most 1 (100%)"),
        ("budget = 0.5\n", "ambiguous budget 0.5"),
        ("[search]\nepochs = 3\n", "no budget"),
        ("budget = 100\n[search]\nepochs = 0\n", "search.epochs = 0 is not valid: give a whole number >= 1"),
        ("budget = 100\n[search]\nepoch = 3\n", "[search] has unknown key(s) ['epoch']"),
        ("budget = 100\n[serach]\n", "unknown table(s) ['serach']"),
        ("budget = 100\n[space]\nranks = [0, 4]\n", "rank 0 is not allowed"),
        ("budget = 100\n[search]\ntrigger = { name = \"budget_stability\", windw = 3 }\n",
         "budget_stability does not take ['windw']; its parameters are"),
        ("budget = 100\n[search]\ntrigger = { name = \"budget_stability\", window = 0 }\n",
         "search.trigger"),
        ("budget = 100\nthis is not toml\n", "is not valid TOML"),
        ("budget = 100\n[search]\nepochs = 1\ntrigger = { name = \"budget_stability\", warmup_epochs = 1 }\n",
         "search.trigger warmup_epochs = 1 is not below search.epochs = 1: no trigger could fire; lower"),
    ],
)
def test_invalid_specs_fail_at_load_time(tmp_path, plugins, text, message):
    with pytest.raises(SpecError) as exc:
        Pipeline.from_toml(write(tmp_path, text), plugins=plugins)
    assert message in str(exc.value)
    assert "spec.toml" in str(exc.value)


def test_warmup_check_only_where_a_trigger_selects(plugins):
    # a warm-up as long as the search is fine for strategies that never read the trigger
    Pipeline(budget=100, optimizer={"name": "iterative", "variant": "no_selection"},
             search_settings={"epochs": 1}, plugins=plugins)
    Pipeline(budget=100, optimizer="prunepeft", search_settings={"epochs": 1}, plugins=plugins)
    Pipeline(budget=100, trigger={"name": "budget_stability", "warmup_epochs": 0.3},
             search_settings={"epochs": 1}, plugins=plugins)


def test_missing_spec_file(tmp_path, plugins):
    with pytest.raises(SpecError, match="does not exist"):
        Pipeline.from_toml(tmp_path / "nope.toml", plugins=plugins)


def test_space_file_defines_a_space_without_python(tmp_path, plugins):
    space = tmp_path / "mine.toml"
    space.write_text('name = "mine"\nranks = [2]\n[[modules]]\ntype = "lora"\ntargets = ["attn_v"]\n')
    pipe = Pipeline(budget=100, space={"file": str(space)}, plugins=plugins)
    assert pipe.resolved_space().name == "mine"
    assert Pipeline.from_dict(pipe.to_dict(), plugins=plugins) == pipe
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[[modules]]\ntype = "dora"\ntargets = ["attn_v"]\n')
    with pytest.raises(SpecError, match="space.file = .*unknown module type 'dora'"):
        Pipeline(budget=100, space={"file": str(bad)}, plugins=plugins)


def test_the_default_spec_of_every_registered_task_is_valid_and_round_trips(plugins):
    from bipeft_core.runner import default_spec

    names = [e.name for e in plugins.tasks.entries()]
    assert {"glue/stsb", "glue/sst2", "glue/rte"} <= set(names)
    for name in names:
        pipe = Pipeline.from_dict(default_spec(name, plugins), plugins=plugins, source=f"default spec of {name}")
        assert pipe.model.task == name
        assert pipe.search_settings.epochs == pipe.retrain_settings.epochs == (plugins.tasks.get(name).epochs or 3)
        assert Pipeline.from_dict(Pipeline.from_dict(pipe.to_dict(), plugins=plugins).to_dict(),
                                  plugins=plugins) == pipe


def test_the_default_spec_comes_from_a_plugin_and_a_plugin_can_replace_it():
    from bipeft_core import hookimpl
    from bipeft_core.runner import default_spec

    builtin = default_spec("stsb", load_plugins(entry_points=False))
    assert builtin["search"]["optimizer"] == "iterative" and builtin["budget"] == {"value": "0.1%"}
    assert builtin["search"]["lr"] == builtin["retrain"]["lr"] == 1e-3  # the benchmark recipe
    assert builtin["search"]["epochs"] == 3  # STS-B's own default

    class Mine:
        @hookimpl
        def bipeft_default_spec(self):
            return {"budget": {"value": "0.5%"}, "space": {"name": "s1"}, "search": {"optimizer": "s3delta"},
                    "retrain": {"epochs": 7}}

    plugins = load_plugins([Mine()], entry_points=False)
    mine = default_spec("glue/rte", plugins)
    assert mine["budget"] == {"value": "0.5%"} and mine["search"] == {"optimizer": "s3delta", "epochs": 5}
    assert mine["retrain"]["epochs"] == 7  # the plugin's own value stays
    assert default_spec("glue/rte", plugins) is not mine  # a fresh dict each time
    assert "trigger" in default_spec("stsb", load_plugins(entry_points=False))["search"]


def test_no_default_spec_is_a_clear_error():
    from bipeft_core.runner import default_spec

    with pytest.raises(SpecError, match="no plugin provides a default spec.*--spec FILE"):
        default_spec("stsb", load_plugins(entry_points=False, disable=["defaults"]))


@pytest.mark.parametrize("budget", ["0", 0, "-5", {"value": "0"}])
def test_a_budget_error_echoes_the_value_as_written(plugins, budget):
    shown = budget["value"] if isinstance(budget, dict) else budget
    with pytest.raises(SpecError, match=f"^spec: budget = {shown!r}: "):
        Pipeline.from_dict({"budget": budget}, plugins=plugins)


def test_spec_file_that_is_not_utf8_or_a_folder_is_a_clear_error(tmp_path, plugins):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('budget = "0.1%"\n# caf\xe9\n'.encode("latin-1"))
    with pytest.raises(SpecError, match="is not UTF-8 text .*save it as UTF-8"):
        Pipeline.from_toml(bad, plugins=plugins)
    with pytest.raises(SpecError, match="is a folder"):
        Pipeline.from_toml(tmp_path, plugins=plugins)


def test_optimizer_and_space_left_out_are_the_default_specs():
    pipe = Pipeline(budget=1500, plugins=load_plugins(entry_points=False))
    assert pipe.optimizer.name == "iterative" and pipe.space.name == "s2"
    assert Pipeline.from_dict({"budget": 1500, "space": {"ranks": [1, 2]}},
                              plugins=load_plugins(entry_points=False)).space.name == "s2"
    bare = load_plugins(entry_points=False, disable=["defaults"])
    with pytest.raises(SpecError, match="names no optimizer.*set search.optimizer"):
        Pipeline(budget=1500, plugins=bare)
    with pytest.raises(SpecError, match=r"names no space.*\[space\] name"):
        Pipeline(budget=1500, optimizer="iterative", plugins=bare)
    assert Pipeline(budget=1500, optimizer="s3delta", space="s1", plugins=bare).space.name == "s1"
