"""Export: a LoRA-only structure through Hugging Face peft gives the same
logits as bipeft's own model; bipeft's own format round-trips any structure
(mixed modules, full fine-tuning); the exporter knows no module type, only
what each type's ``peft_export`` gives; the errors for structures peft cannot
hold, occupied folders and damaged exports."""

from __future__ import annotations

import json
import re
import sys

import attrs
import pytest
import torch
from bipeft_plugins.exports.peft_native import verify_config as _verify_config

from bipeft_core.errors import BipeftError, StructureError
from bipeft_core.export import (
    choose_format,
    export,
    export_bipeft,
    export_peft,
    format_names,
    load_peft,
    peft_refusal,
)
from bipeft_core.formats import sha256 as _sha256
from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import ExportFormat, PeftModuleType
from bipeft_core.structure import Structure
from bipeft_core.targets import backbone_param_count, find_target_map
from bipeft_core.testing import tiny_batch, tiny_model
from bipeft_core.types import ExportFiles, PeftExport

peft = pytest.importorskip("peft")

ATOL = 1e-5
HEAD_MODULES = {"bert": ["bert.pooler", "classifier"], "roberta": ["classifier"], "llama": ["score"],
                "gpt2": ["score"], "t5": None}


def _specs(model, plugins):
    tmap = find_target_map(model, plugins.target_maps)
    return plugins.spaces.get("s2").modules(model, tmap, plugins.peft_modules)


def _randomise(pm, seed=1):
    """Trained-looking weights: every PEFT weight (LoRA B included) and the
    task head away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    params = dict(pm.model.named_parameters())
    with torch.no_grad():
        for p in pm.peft.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for n in pm.head_names:
            params[n].add_(torch.randn(params[n].shape, generator=g) * 0.3)


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _lora_model(family, plugins, ranks, *, scales=None):
    """A bipeft model with LoRA at the given ranks on the first LoRA positions
    (``scales``: index among them → LoRA scale)."""
    model = tiny_model(family)
    specs = list(_specs(model, plugins))
    lora = [s.index for s in specs if s.type == "lora"][: len(ranks)]
    assert len(lora) == len(ranks)
    for j, scale in (scales or {}).items():
        specs[lora[j]] = attrs.evolve(specs[lora[j]], options={"scale": scale})
    structure = Structure.from_choices(specs, dict(zip(lora, ranks)), space="s2")
    torch.manual_seed(0)
    pm = structure.build(model, plugins.peft_modules)
    _randomise(pm)
    return pm


# -- through peft -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "ranks", "scales"),
    [
        ("bert", [4, 1, 8, 4, 1, 4], {}),
        ("llama", [8, 4, 1, 4, 8, 4, 1], {3: 0.5}),
        ("roberta", [4, 8, 4], {}),
        ("gpt2", [1, 4, 4, 8], {0: 2.0}),  # Conv1D layers: fan_in_fan_out
        ("t5", [4, 4, 1], {}),  # no trainable head: T5's tied LM head stays frozen
    ],
)
def test_peft_round_trip_gives_equal_logits(plugins, tmp_path, family, ranks, scales):
    pm = _lora_model(family, plugins, ranks, scales=scales)
    batch = tiny_batch(pm.model)
    want = _logits(pm, batch)
    base = _logits(tiny_model(family), batch)
    assert not torch.allclose(want, base, atol=1e-3), "the LoRA weights and head must change the output"

    out = export_peft(pm, tmp_path / "peft")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4
    targets = [e.spec.site("target") for e in pm.structure.entries]
    assert sorted(cfg["target_modules"]) == sorted(targets)
    # Ranks other than the default are in rank_pattern, as anchored full names.
    assert sorted(cfg["rank_pattern"].values()) == sorted(r for r in ranks if r != 4)
    assert all(k.startswith("^") and k.endswith("$") for k in cfg["rank_pattern"])
    alphas = [e.rank * e.spec.option_dict().get("scale", 1.0) for e in pm.structure.entries]
    assert cfg["lora_alpha"] == 4
    for e, alpha in zip(pm.structure.entries, alphas):  # alpha = scale · rank, by pattern or by default
        key = "^" + re.escape(e.spec.site("target")) + "$"
        assert cfg["alpha_pattern"].get(key, cfg["lora_alpha"]) == pytest.approx(alpha)
    assert len(cfg["alpha_pattern"]) == sum(1 for a in alphas if a != 4)
    assert cfg["modules_to_save"] == HEAD_MODULES[family]

    loaded = peft.PeftModel.from_pretrained(tiny_model(family), str(out))
    for e in pm.structure.entries:
        layer = loaded.get_submodule("base_model.model." + e.spec.site("target"))
        assert layer.r["default"] == e.rank
        assert layer.scaling["default"] == pytest.approx(e.spec.option_dict().get("scale", 1.0))
    got = _logits(loaded, batch)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)

    # bipeft reads its own peft export back into its own model too.
    again = load_peft(tiny_model(family), out, plugins=plugins)
    torch.testing.assert_close(_logits(again, batch), want, atol=ATOL, rtol=0)


def test_peft_weights_use_peft_key_layout(plugins, tmp_path):
    from safetensors.torch import load_file

    pm = _lora_model("bert", plugins, [4, 1])
    out = export(pm, tmp_path / "p", format="peft")
    keys = set(load_file(str(out / "adapter_model.safetensors")))
    q = "base_model.model.bert.encoder.layer.0.attention.self.query"
    assert {f"{q}.lora_A.weight", f"{q}.lora_B.weight", "base_model.model.classifier.weight",
            "base_model.model.bert.pooler.dense.weight"} <= keys
    # The same layout peft writes for an equivalent adapter of its own.
    own = peft.get_peft_model(tiny_model("bert"), peft.LoraConfig.from_pretrained(str(out)))
    own.save_pretrained(str(tmp_path / "own"))
    assert set(load_file(str(tmp_path / "own" / "adapter_model.safetensors"))) == keys


def _records(pm, plugins):
    lora = plugins.peft_modules.get("lora")
    return {e.spec.site("target"): lora.peft_export(e.discrete_spec(), e.rank, m, pm.model)
            for e, m in zip(pm.structure.entries, pm.peft)}


def test_pattern_check_refuses_a_key_that_matches_several_modules(plugins):
    pm = _lora_model("bert", plugins, [4, 1])
    wanted = _records(pm, plugins)
    cfg = peft.LoraConfig(r=4, lora_alpha=4, target_modules=sorted(wanted),
                          rank_pattern={"self.key": 1}, alpha_pattern={})
    with pytest.raises(StructureError, match="not exactly one module"):
        _verify_config(cfg, pm.model, wanted, [])
    cfg = peft.LoraConfig(r=4, lora_alpha=4, target_modules=["query", "key"])
    with pytest.raises(StructureError, match=r"would also wrap \['bert\.encoder\.layer\.1\.attention\.self\.key'"):
        _verify_config(cfg, pm.model, wanted, [])
    cfg = peft.LoraConfig(r=4, lora_alpha=4, target_modules=sorted(wanted))  # no rank_pattern: key gets r=4
    with pytest.raises(StructureError, match="gives 'bert.encoder.layer.0.attention.self.key' r=4, not 1"):
        _verify_config(cfg, pm.model, wanted, [])


def test_lora_module_type_gives_its_native_peft_form(plugins):
    pm = _lora_model("gpt2", plugins, [1, 8], scales={1: 0.5})
    first, second = _records(pm, plugins).values()
    assert first.peft_type == "LORA" and first.target == "transformer.h.0.attn.c_attn"
    assert first.config == {"r": 1, "lora_alpha": 1, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": True}
    assert second.config["r"] == 8 and second.config["lora_alpha"] == 4  # alpha = scale · r
    assert list(first.patterns.items()) == [("r", "rank_pattern"), ("lora_alpha", "alpha_pattern")]
    assert first.weights == {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B"}
    # every other built-in type has no native form: PeftModuleType's default
    mixed = _mixed_model(plugins)
    for e, m in zip(mixed.structure.entries, mixed.peft):
        form = plugins.peft_modules.get(e.spec.type).peft_export(e.discrete_spec(), e.rank, m, mixed.model)
        assert (form is None) == (e.spec.type != "lora"), e.spec.id


# -- bipeft's own format ------------------------------------------------------------------------


def _mixed_model(plugins, family="bert"):
    model = tiny_model(family)
    specs = _specs(model, plugins)
    first = {}
    for s in specs:
        first.setdefault(s.type, []).append(s.index)
    choices = {first["lora"][0]: 4, first["lora"][3]: 1, first["adapter_lr"][0]: 8, first["adapter_lr"][1]: 1,
               first["bitfit"][2]: None, first["lnfit"][1]: None}
    structure = Structure.from_choices(specs, choices, space="s2")
    torch.manual_seed(0)
    pm = structure.build(model, plugins.peft_modules)
    _randomise(pm)
    return pm


def test_bipeft_round_trip_mixed_structure(plugins, tmp_path):
    pm = _mixed_model(plugins)
    batch = tiny_batch(pm.model)
    want = _logits(pm, batch)
    assert not torch.allclose(want, _logits(tiny_model("bert"), batch), atol=1e-3)

    out = export_bipeft(pm, tmp_path / "b")
    assert {p.name for p in out.iterdir()} == {"structure.json", "adapter.safetensors", "export.json", "README.md"}
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "bipeft" and info["version"] == 2
    assert info["peft_cannot_represent"] == ["adapter_lr modules", "bitfit modules", "lnfit modules"]

    loaded = load_peft(tiny_model("bert"), out, plugins=plugins)
    assert loaded.structure == pm.structure
    torch.testing.assert_close(_logits(loaded, batch), want, atol=ATOL, rtol=0)


def test_bipeft_round_trip_full_fine_tuning(plugins, tmp_path):
    model = tiny_model("llama")
    structure = Structure(entries=(), full=True, backbone_params=backbone_param_count(model))
    pm = structure.build(model, plugins.peft_modules)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in pm.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    batch = tiny_batch(model)
    want = _logits(pm, batch)
    assert not torch.allclose(want, _logits(tiny_model("llama"), batch), atol=1e-3)

    out = export(pm, tmp_path / "full", format="bipeft")
    info = json.loads((out / "export.json").read_text())
    assert info["peft_cannot_represent"] == ["full fine-tuning (backbone weights)"]
    loaded = load_peft(tiny_model("llama"), out)  # default plugins
    torch.testing.assert_close(_logits(loaded, batch), want, atol=ATOL, rtol=0)


# -- errors -------------------------------------------------------------------------------------


def test_non_lora_structure_refused_as_peft(plugins, tmp_path):
    pm = _mixed_model(plugins)
    with pytest.raises(StructureError) as err:
        export(pm, tmp_path / "x", format="peft")
    msg = str(err.value)
    for part in ("adapter_lr modules", "bitfit modules", "lnfit modules", "format='peft-bipeft'"):
        assert part in msg
    assert "lora" not in msg.split("represent")[1].split(";")[0]
    assert not (tmp_path / "x").exists()


def test_full_fine_tuning_refused_as_peft(plugins, tmp_path):
    model = tiny_model("bert")
    pm = Structure(entries=(), full=True, backbone_params=backbone_param_count(model)).build(
        model, plugins.peft_modules)
    with pytest.raises(StructureError, match=r"full fine-tuning \(backbone weights\)"):
        export_peft(pm, tmp_path / "x")


def test_unknown_format(plugins, tmp_path):
    with pytest.raises(BipeftError, match="unknown export format 'onnx'"):
        export(_lora_model("bert", plugins, [1]), tmp_path / "x", format="onnx")


def test_existing_folder_is_not_overwritten(plugins, tmp_path):
    pm = _lora_model("bert", plugins, [4, 1])
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    for fmt in ("peft", "bipeft"):
        with pytest.raises(BipeftError, match="already exists and is not empty"):
            export(pm, target, format=fmt)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(BipeftError, match="is a file"):
        export_bipeft(pm, tmp_path / "afile")

    # overwrite=True replaces an earlier export (of the other format too).
    export(pm, target, format="peft", overwrite=True)
    export(pm, target, format="bipeft", overwrite=True)
    names = {p.name for p in target.iterdir()}
    assert names == {"notes.txt", "structure.json", "adapter.safetensors", "export.json", "README.md"}
    batch = tiny_batch(pm.model)
    torch.testing.assert_close(_logits(load_peft(tiny_model("bert"), target, plugins), batch),
                               _logits(pm, batch), atol=ATOL, rtol=0)


def _damage_missing_weights(out):
    (out / "adapter.safetensors").unlink()


def _damage_truncated_weights(out):
    f = out / "adapter.safetensors"
    f.write_bytes(f.read_bytes()[:50])


def _damage_unreadable_weights_with_matching_checksum(out):
    f = out / "adapter.safetensors"
    f.write_bytes(b"\x00garbage" * 4)
    info = json.loads((out / "export.json").read_text())
    info["files"]["adapter.safetensors"] = _sha256(f)
    (out / "export.json").write_text(json.dumps(info))


def _damage_structure(out):
    (out / "structure.json").write_text("{not json")


def _damage_export_json(out):
    (out / "export.json").write_text("[1, 2")


def _damage_no_export_json(out):
    (out / "export.json").unlink()


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_damage_missing_weights, "lacks .*adapter.safetensors"),
        (_damage_truncated_weights, "does not match the checksum"),
        (_damage_unreadable_weights_with_matching_checksum, "cannot be read.*corrupt"),
        (_damage_structure, "structure.json.*does not match the checksum"),
        (_damage_export_json, "export.json.*not valid JSON"),
        (_damage_no_export_json, "not a bipeft export"),
    ],
)
def test_damaged_bipeft_export_gives_clear_error(plugins, tmp_path, damage, match):
    out = export_bipeft(_mixed_model(plugins), tmp_path / "b")
    damage(out)
    with pytest.raises(StructureError, match=match):
        load_peft(tiny_model("bert"), out, plugins=plugins)


def test_weights_of_another_structure_are_refused(plugins, tmp_path):
    out = export_bipeft(_mixed_model(plugins), tmp_path / "b")
    other = export_bipeft(_lora_model("bert", plugins, [4, 1]), tmp_path / "o")
    (out / "adapter.safetensors").write_bytes((other / "adapter.safetensors").read_bytes())
    info = json.loads((out / "export.json").read_text())
    info["files"]["adapter.safetensors"] = _sha256(out / "adapter.safetensors")
    (out / "export.json").write_text(json.dumps(info))
    with pytest.raises(StructureError, match="do not fit this model and structure"):
        load_peft(tiny_model("bert"), out, plugins=plugins)


def test_peft_native_folder_points_to_peft(plugins, tmp_path):
    out = export_peft(_lora_model("bert", plugins, [4, 1]), tmp_path / "p")
    (out / "export.json").unlink()
    with pytest.raises(StructureError, match=r"peft\.PeftModel\.from_pretrained"):
        load_peft(tiny_model("bert"), out, plugins=plugins)
    with pytest.raises(StructureError, match="does not exist"):
        load_peft(tiny_model("bert"), tmp_path / "nowhere", plugins=plugins)


# -- the exporter knows module types only through peft_export -----------------------------------


class _Types:
    """A PEFT-module registry: the built-ins plus ``extra`` types."""

    def __init__(self, plugins, *extra):
        self.base, self.extra = plugins.peft_modules, {t.name: t for t in extra}

    def get(self, name):
        return self.extra[name] if name in self.extra else self.base.get(name)


def _renamed(plugins, name, ranks, family="bert"):
    """A bipeft model whose first LoRA positions carry module type ``name``."""
    model = tiny_model(family)
    specs = list(_specs(model, plugins))
    picked = [s.index for s in specs if s.type == "lora"][: len(ranks)]
    for i in picked:
        specs[i] = attrs.evolve(specs[i], type=name, id=specs[i].id.replace("lora:", f"{name}:"))
    return specs, dict(zip(picked, ranks)), model


def _build(plugins, types, name, ranks, family="bert"):
    specs, choices, model = _renamed(plugins, name, ranks, family)
    torch.manual_seed(0)
    pm = Structure.from_choices(specs, choices, space="s2").build(model, types)
    _randomise(pm)
    return pm


def test_any_module_type_with_a_native_form_exports_to_peft(plugins, tmp_path):
    lora = type(plugins.peft_modules.get("lora"))
    mine = type("MyLoRA", (lora,), {"name": "my_lora"})()
    types = _Types(plugins, mine)
    pm = _build(plugins, types, "my_lora", [4, 1, 8])
    assert choose_format(pm, types) == ("peft", None)
    out = export(pm, tmp_path / "p", plugins=types)
    batch = tiny_batch(pm.model)
    loaded = peft.PeftModel.from_pretrained(tiny_model("bert"), str(out))
    torch.testing.assert_close(_logits(loaded, batch), _logits(pm, batch), atol=ATOL, rtol=0)
    again = load_peft(tiny_model("bert"), out, plugins=types)
    torch.testing.assert_close(_logits(again, batch), _logits(pm, batch), atol=ATOL, rtol=0)


def test_a_module_type_without_peft_export_is_refused_by_name(plugins, tmp_path):
    lora = type(plugins.peft_modules.get("lora"))
    # a LoRA-like type that keeps PeftModuleType's default: no native peft form
    plain = type("Plain", (lora,), {"name": "plain_lora", "peft_export": PeftModuleType.peft_export})()
    types = _Types(plugins, plain)
    pm = _build(plugins, types, "plain_lora", [4, 1])
    assert peft_refusal(pm, types) == "peft cannot represent its plain_lora modules"
    assert choose_format(pm, types) == ("peft-bipeft", "peft cannot represent its plain_lora modules")
    with pytest.raises(StructureError,
                       match=r"cannot represent this structure's plain_lora modules natively; .*format='peft-bipeft'"):
        export(pm, tmp_path / "x", format="peft", plugins=types)
    out = export_bipeft(pm, tmp_path / "b", plugins=types)
    assert json.loads((out / "export.json").read_text())["peft_cannot_represent"] == ["plain_lora modules"]


class _Skewed:
    """A LoRA whose peft form is changed by ``change(record, second)``
    (``second``: the record is the key projection's, the second module)."""

    def __init__(self, plugins, name, change):
        self.inner, self.name, self.change = plugins.peft_modules.get("lora"), name, change

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def peft_export(self, spec, rank, module, model):
        record = self.inner.peft_export(spec, rank, module, model)
        return self.change(record, record.target.endswith(".key"))


@pytest.mark.parametrize(("change", "match"), [
    (lambda r, second: attrs.evolve(r, config={**r.config, "bias": "all" if second else "none"}),
     r"field 'bias' differs \('none' on .*query', 'all' on .*key'\)"),
    (lambda r, second: attrs.evolve(r, peft_type="IA3" if second else "LORA"),
     r"two peft tuner types \(LORA for skewed:.*query, IA3 for skewed:.*key\)"),
    (lambda r, second: attrs.evolve(r, peft_type="NOT_A_TUNER"), "peft tuner type 'NOT_A_TUNER'"),
    (lambda r, second: attrs.evolve(r, config={**r.config, "no_such_field": 1}), "does not take the fields"),
    (lambda r, second: attrs.evolve(r, weights={"lora_A.weight": "lora_X"}), "names weight 'lora_X'"),
    (lambda r, second: attrs.evolve(r, target=r.target.replace(".key", ".query")), "two modules on"),
    (lambda r, second: r.config, "must return a bipeft_core.types.PeftExport"),
])
def test_records_that_one_peft_config_cannot_hold_are_refused(plugins, tmp_path, change, match):
    skewed = _Skewed(plugins, "skewed", change)
    types = _Types(plugins, skewed)
    pm = _build(plugins, types, "skewed", [4, 1])
    with pytest.raises(StructureError, match=match):
        export_peft(pm, tmp_path / "p", plugins=types)
    assert not (tmp_path / "p").exists()


def test_peft_export_record_checks_its_fields():
    with pytest.raises(StructureError, match="peft_type is ''"):
        PeftExport(peft_type="", target="x", config={})
    with pytest.raises(StructureError, match="target is ''"):
        PeftExport(peft_type="LORA", target="", config={})
    with pytest.raises(StructureError, match=r"patterns name \['r'\]"):
        PeftExport(peft_type="LORA", target="x", config={}, patterns={"r": "rank_pattern"})


def test_missing_peft_gives_install_hint(plugins, tmp_path, monkeypatch):
    pm = _lora_model("bert", plugins, [4, 1])
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    with pytest.raises(BipeftError, match=r"pip install 'bipeft\[peft\]'"):
        export_peft(pm, tmp_path / "p")
    assert not (tmp_path / "p").exists()


class _Halves(ExportFormat):
    """A third-party format: the trainable tensors halved on disk, doubled back on load."""

    name = "halves"
    auto_preference = 99
    library_name = "bipeft"
    weights_file = "halves.safetensors"

    def refusal(self, peft_model, registry):
        return "no full fine-tuning" if peft_model.structure.full else None

    def prepare(self, peft_model, *, registry, base_model_name_or_path, plugin_modules=()):
        from bipeft_core.formats import save_tensors

        state = {k: v / 2 for k, v in peft_model.trainable_state_dict().items()}
        return ExportFiles(write=lambda path: save_tensors(state, path / self.weights_file, {"format": "pt"}),
                           weights=self.weights_file, extra={"halved": True})

    def to_trainable_state(self, state, peft_model, registry):
        return {k: v * 2 for k, v in state.items()}


class _HalvesPlugin:
    @hookimpl
    def bipeft_register_export_formats(self, registry):
        registry.add(_Halves())


def test_a_plugin_export_format_is_chosen_written_and_read_back(tmp_path):
    from bipeft_core.plugins import load_plugins

    mine = load_plugins([_HalvesPlugin()])
    assert "halves" in format_names(mine) and "peft" in format_names(mine)
    pm = _lora_model("bert", mine, [4, 1])
    assert choose_format(pm, mine) == ("halves", None)  # the highest auto_preference that holds it
    out = export(pm, tmp_path / "h", plugins=mine)
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "halves" and info["halved"] is True and "halves.safetensors" in info["files"]
    assert (out / "structure.json").is_file() and (out / "README.md").is_file()
    batch = tiny_batch(pm.model)
    loaded = load_peft(tiny_model("bert"), out, plugins=mine)
    torch.testing.assert_close(_logits(loaded, batch), _logits(pm, batch), atol=ATOL, rtol=0)
    # without the plugin the folder is refused by its format's name, and so is the format itself
    with pytest.raises(StructureError, match=r"export format 'halves', which no loaded plugin provides"):
        load_peft(tiny_model("bert"), out, plugins=plugins_without_halves())
    with pytest.raises(BipeftError, match=r"unknown export format 'halves'; use one of auto, .*bipeft"):
        export(pm, tmp_path / "x", format="halves", plugins=plugins_without_halves())
    assert not (tmp_path / "x").exists()


def plugins_without_halves():
    from bipeft_core.plugins import load_plugins

    return load_plugins()


def test_the_export_format_contract_catches_a_format_that_does_not_read_back(tmp_path):
    from bipeft_core.plugins import load_plugins
    from bipeft_core.testing import ExportFormatContract, export_structures

    class _Forgetful(_Halves):
        name = "forgetful"

        def to_trainable_state(self, state, peft_model, registry):
            return dict(state)  # forgets to double the halved tensors back

    class _ForgetfulPlugin:
        @hookimpl
        def bipeft_register_export_formats(self, registry):
            registry.add(_Forgetful())

    loaded = load_plugins([_ForgetfulPlugin()])
    contract = ExportFormatContract()
    structures = export_structures(loaded)
    with pytest.raises(AssertionError):
        contract.test_refusal_agrees_with_prepare_and_a_refused_export_writes_nothing(
            _Forgetful(), loaded, structures, "lora", tmp_path)
    # the honest format passes the same check
    honest = load_plugins([_HalvesPlugin()])
    contract.test_refusal_agrees_with_prepare_and_a_refused_export_writes_nothing(
        _Halves(), honest, export_structures(honest), "mixed", tmp_path / "ok")
