"""Structures: exact counts of the discrete model they build, JSON files
that round-trip, and the errors for files that were edited or corrupted."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bipeft_core.errors import StructureError
from bipeft_core.structure import Structure
from bipeft_core.targets import find_target_map
from bipeft_core.testing import TINY_FAMILIES, load_module_plugins, tiny_batch, tiny_model

SPACES = {"bert": ("s1", "s2"), "roberta": ("s2",), "t5": ("s1", "s2"), "gpt2": ("s2",), "llama": ("s1", "s2")}


@pytest.fixture(scope="module")
def plugins():
    """Module/target-map/space built-ins only (see tests/test_modules.py)."""
    return load_module_plugins()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def specs(plugins):
    """Per (family, space): the space's modules in a one-block tiny model."""
    out = {}
    for family, spaces in SPACES.items():
        model = tiny_model(family, layers=1)
        tm = find_target_map(model, plugins.target_maps)
        for space in spaces:
            out[family, space] = plugins.spaces.get(space).modules(model, tm, plugins.peft_modules)
    return out


@st.composite
def choices(draw, specs, *, min_kept=0):
    """Kept modules (index → rank; ``None`` for vector modules)."""
    kept = draw(st.lists(st.sampled_from(range(len(specs))), min_size=min_kept, unique=True))
    return {i: (draw(st.sampled_from(specs[i].ranks)) if specs[i].is_matrix else None) for i in kept}


def _structure(specs, choice, **meta):
    return Structure.from_choices(specs, choice, **meta)


def _frozen_head(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", TINY_FAMILIES)
@settings(max_examples=6, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_discrete_model_has_exactly_the_counted_parameters(plugins, specs, family, data):
    space = data.draw(st.sampled_from(SPACES[family]))
    space_specs = specs[family, space]
    choice = data.draw(choices(space_specs))
    structure = _structure(space_specs, choice, space=space, model_type=family)
    assert structure.count() == sum(space_specs[i].count(r) for i, r in choice.items())
    model = tiny_model(family, layers=1).eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        ref = model(**batch).logits
    built = structure.build(model, plugins.peft_modules)
    assert built.peft_parameter_count() == structure.count()
    assert len(built.peft) == len(choice)
    with torch.no_grad():
        assert torch.equal(built(**batch).logits, ref)  # zero-initialised
    structure.verify(plugins.peft_modules)


def test_built_model_trains_only_peft_weights_and_head(plugins, specs):
    space_specs = specs["bert", "s2"]
    structure = _structure(space_specs, {i: (s.ranks[-1] if s.is_matrix else None) for i, s in enumerate(space_specs)})
    model = tiny_model("bert", layers=1)
    built = structure.build(model, plugins.peft_modules)
    assert _frozen_head(model) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
                                   "classifier.bias"}
    assert all(p.requires_grad for p in built.peft.parameters())
    built(**tiny_batch(model)).logits.sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == _frozen_head(model)
    for m in built.peft:  # discrete form: no gates, full rank, on
        assert m.enabled and m.gate is None and m.rank_mask is None and m.ranks == ((m.max_rank,) if m.max_rank else ())


# -- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "space"), [("bert", "s2"), ("t5", "s1"), ("llama", "s2")])
@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_json_round_trip_gives_an_equal_structure(specs, family, space, data):
    space_specs = specs[family, space]
    choice = data.draw(choices(space_specs))
    budget = data.draw(st.none() | st.integers(1, 10**6))
    structure = _structure(space_specs, choice, space=space, model_type=family, backbone_params=12345, budget=budget)
    again = Structure.from_dict(json.loads(json.dumps(structure.to_dict())))
    assert again == structure
    assert again.count() == structure.count()
    assert [e.spec.index for e in again.entries] == sorted(choice)


def test_save_and_load(plugins, specs, tmp_path):
    space_specs = specs["t5", "s2"]
    choice = {i: (space_specs[i].ranks[i % 3] if space_specs[i].is_matrix else None) for i in (0, 3, 9, 20, 31)}
    structure = _structure(space_specs, choice, space="s2", model_type="t5")
    assert len({e.spec.type for e in structure.entries}) >= 2
    path = structure.save(tmp_path / "structure.json")
    data = json.loads(path.read_text())
    assert data["format"] == "bipeft-structure" and data["count"] == structure.count()
    loaded = Structure.load(path)
    assert loaded == structure
    built = loaded.build(tiny_model("t5", layers=1), plugins.peft_modules)
    assert built.peft_parameter_count() == structure.count()
    assert str(structure.count()) in structure.summary() or f"{structure.count():,}" in structure.summary()


@pytest.fixture()
def saved(specs, tmp_path):
    space_specs = specs["bert", "s2"]
    lora = next(i for i, s in enumerate(space_specs) if s.type == "lora")
    bitfit = next(i for i, s in enumerate(space_specs) if s.type == "bitfit")
    structure = _structure(space_specs, {lora: 4, bitfit: None}, space="s2", model_type="bert")
    path = structure.save(tmp_path / "structure.json")
    return path, json.loads(path.read_text())


def _write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_corrupt_json_is_a_structure_error(saved):
    path, _ = saved
    path.write_text(path.read_text()[:-40], encoding="utf-8")
    with pytest.raises(StructureError, match="not valid JSON"):
        Structure.load(path)


def test_edited_total_count_is_a_structure_error(saved):
    path, data = saved
    data["count"] += 1
    with pytest.raises(StructureError, match="does not match its entries"):
        Structure.load(_write(path, data))


def test_edited_entry_count_is_a_structure_error(saved):
    path, data = saved
    data["entries"][0]["count"] -= 1
    with pytest.raises(StructureError, match="edited or is corrupt"):
        Structure.load(_write(path, data))


def _entry(data, type_):
    return next(e for e in data["entries"] if e["type"] == type_)


@pytest.mark.parametrize(("type_", "rank"), [("lora", 3), ("lora", None), ("bitfit", 4)])
def test_edited_rank_is_a_structure_error(saved, type_, rank):
    path, data = saved
    _entry(data, type_)["rank"] = rank  # not a candidate; a rank for a vector module
    with pytest.raises(StructureError, match=f"rank {rank} does not fit"):
        Structure.load(_write(path, data))


def test_edited_rank_with_its_count_still_matches_the_entries(saved):
    """Moving a module to another candidate rank, with the matching counts, is a valid edit."""
    path, data = saved
    entry = _entry(data, "lora")
    entry["rank"] = 8
    entry["count"] = entry["counts"][entry["ranks"].index(8)]
    data["count"] = sum(e["count"] for e in data["entries"])
    loaded = Structure.load(_write(path, data))
    assert [e.rank for e in loaded.entries if e.spec.type == "lora"] == [8]


def test_edited_counts_are_caught_by_verify(plugins, saved):
    path, data = saved
    entry = _entry(data, "lora")
    entry["counts"] = [c + 1 for c in entry["counts"]]
    entry["count"] += 1
    data["count"] += 1
    structure = Structure.load(_write(path, data))  # consistent with itself
    with pytest.raises(StructureError, match="param_count gives"):
        structure.verify(plugins.peft_modules)


@pytest.mark.parametrize("edit", ["no_format", "newer", "missing_key", "list", "sites_list", "entries", "counts"])
def test_malformed_files(saved, edit):
    path, data = saved
    if edit == "no_format":
        del data["format"]
        message = "not a bipeft structure"
    elif edit == "newer":
        data["version"] = 99
        message = "newer"
    elif edit == "missing_key":
        del data["entries"][1]["shape"]
        message = "malformed"
    elif edit == "list":
        data = data["entries"]
        message = "not a bipeft structure"
    elif edit == "sites_list":
        data["entries"][0]["sites"] = ["bert.encoder.layer.0.attention.self.query"]
        message = "malformed"
    elif edit == "entries":
        data["entries"] = {"0": data["entries"][0]}
        message = "must be a list"
    else:
        _entry(data, "lora")["counts"].pop()
        message = "does not fit"
    with pytest.raises(StructureError, match=message):
        Structure.load(_write(path, data))


def test_missing_file(tmp_path):
    with pytest.raises(StructureError, match="does not exist"):
        Structure.load(tmp_path / "none.json")


def test_non_candidate_rank_in_choices(specs):
    space_specs = specs["bert", "s2"]
    lora = next(i for i, s in enumerate(space_specs) if s.type == "lora")
    with pytest.raises(StructureError, match="not a candidate"):
        Structure.from_choices(space_specs, {lora: 2})


def test_building_on_another_architecture_is_a_structure_error(plugins, specs):
    structure = _structure(specs["bert", "s2"], {0: None, 1: None})
    with pytest.raises(StructureError, match="has no module"):
        structure.build(tiny_model("gpt2", layers=1), plugins.peft_modules)


def test_trainable_state_round_trip(plugins, specs):
    space_specs = specs["llama", "s1"]
    structure = _structure(space_specs, {i: s.ranks[1] for i, s in enumerate(space_specs)})
    a = structure.build(tiny_model("llama", layers=1).eval(), plugins.peft_modules)
    with torch.no_grad():
        for p in a.peft.parameters():
            p.normal_(0, 0.1)
    state = a.trainable_state_dict()
    assert {k for k in state if k.startswith("head.")} == {"head.score.weight"}
    assert sum(v.numel() for k, v in state.items() if k.startswith("peft.")) == structure.count()
    b = structure.build(tiny_model("llama", layers=1).eval(), plugins.peft_modules)
    b.load_trainable_state_dict(state)
    batch = tiny_batch(a.model)
    with torch.no_grad():
        assert torch.equal(a(**batch).logits, b(**batch).logits)
    other = _structure(space_specs, {0: space_specs[0].ranks[0]})
    c = other.build(tiny_model("llama", layers=1), plugins.peft_modules)
    with pytest.raises(StructureError, match="another structure|lack"):
        c.load_trainable_state_dict({k: v for k, v in state.items() if not k.startswith("peft.0.")})
