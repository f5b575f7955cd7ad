"""Exports that the Hugging Face stack loads: every module type of S1 and S2,
alone and mixed, on BERT, T5 and Llama-style tiny models, through
``peft.PeftModel.from_pretrained`` and the ``AutoPeftModelFor...`` classes
(native LoRA config or bipeft's registered peft method), the merged format
through ``AutoModelFor...``, the folder's tokenizer and model card, and a
peft-loaded export that keeps training under ``transformers.Trainer``."""

from __future__ import annotations

import json

import pytest
import torch

from bipeft_core.errors import StructureError
from bipeft_core.export import choose_format, export, load_peft, merge_refusal
from bipeft_core.structure import Structure
from bipeft_core.targets import find_target_map
from bipeft_core.testing import tiny_batch, tiny_model

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

ATOL = 1e-5
FAMILIES = ("bert", "t5", "llama")
S1_TYPES = ("serial_adapter", "parallel_adapter", "prefix")
S2_TYPES = ("lora", "adapter_lr", "bitfit", "lnfit")
AUTO = {"bert": "AutoPeftModelForSequenceClassification", "llama": "AutoPeftModelForSequenceClassification",
        "t5": "AutoPeftModelForSeq2SeqLM"}
AUTO_PLAIN = {"bert": "AutoModelForSequenceClassification", "llama": "AutoModelForSequenceClassification",
              "t5": "AutoModelForSeq2SeqLM"}


def _space_specs(model, plugins, space):
    tmap = find_target_map(model, plugins.target_maps)
    return plugins.spaces.get(space).modules(model, tmap, plugins.peft_modules)


def _build(plugins, family, space, types, *, per_type=2, seed=1):
    """A trained-looking structure on a tiny ``family`` model: the first
    ``per_type`` modules of each of ``types`` in ``space``, at their middle
    candidate rank, every weight and the task head away from its initial
    value."""
    model = tiny_model(family)
    specs = _space_specs(model, plugins, space)
    choices = {}
    for t in types:
        of_type = [s for s in specs if s.type == t][:per_type]
        assert of_type, f"space {space} has no {t} module on {family}"
        for s in of_type:
            choices[s.index] = s.ranks[len(s.ranks) // 2] if s.ranks else None
    structure = Structure.from_choices(specs, choices, space=space)
    torch.manual_seed(0)
    pm = structure.build(model, plugins.peft_modules)
    g = torch.Generator().manual_seed(seed)
    params = dict(pm.model.named_parameters())
    with torch.no_grad():
        for p in pm.peft.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for n in pm.head_names:
            params[n].add_(torch.randn(params[n].shape, generator=g) * 0.3)
    return pm


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def _saved_base(family, tmp_path):
    folder = tmp_path / f"base-{family}"
    tiny_model(family).save_pretrained(folder)
    return folder


# -- every module type, alone, through peft ------------------------------------------------------


@pytest.mark.parametrize("mtype", S2_TYPES + S1_TYPES)
def test_each_module_type_loads_in_peft_with_equal_logits(plugins, tmp_path, mtype):
    space = "s2" if mtype in S2_TYPES else "s1"
    pm = _build(plugins, "bert", space, [mtype])
    batch = tiny_batch(pm.model)
    want = _logits(pm, batch)
    assert not torch.allclose(want, _logits(tiny_model("bert"), batch), atol=1e-3)

    fmt, why = choose_format(pm, plugins)
    assert fmt == ("peft" if mtype == "lora" else "peft-bipeft"), why
    out = export(pm, tmp_path / "e", plugins=plugins)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == ("LORA" if mtype == "lora" else "BIPEFT")
    assert config["task_type"] == "SEQ_CLS"
    assert config["modules_to_save"] == ["bert.pooler", "classifier"]

    loaded = peft.PeftModel.from_pretrained(tiny_model("bert"), out)
    torch.testing.assert_close(_logits(loaded, batch), want, atol=ATOL, rtol=0)
    back = load_peft(tiny_model("bert"), out, plugins=plugins)
    assert back.structure == pm.structure
    torch.testing.assert_close(_logits(back, batch), want, atol=ATOL, rtol=0)


# -- mixed structures on three families, through AutoPeftModelFor... ------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("space", ["s1", "s2"])
def test_mixed_structure_loads_with_auto_peft_class(plugins, tmp_path, family, space):
    types = S2_TYPES if space == "s2" else S1_TYPES
    pm = _build(plugins, family, space, types)
    batch = tiny_batch(pm.model)
    want = _logits(pm, batch)
    base = _saved_base(family, tmp_path)

    out = export(pm, tmp_path / "e", base_model_name_or_path=str(base), plugins=plugins)
    info = json.loads((out / "export.json").read_text())
    assert info["format"] == "peft-bipeft" and info["task_type"] == AUTO[family].replace(
        "AutoPeftModelFor", "").replace("SequenceClassification", "SEQ_CLS").replace("Seq2SeqLM", "SEQ_2_SEQ_LM")
    auto = getattr(peft, AUTO[family])
    loaded = auto.from_pretrained(out)
    torch.testing.assert_close(_logits(loaded, batch), want, atol=ATOL, rtol=0)
    # peft's own disable switch removes every bipeft module's contribution
    with loaded.disable_adapter():
        off = _logits(loaded, batch)
    assert not torch.allclose(off, want, atol=1e-4)


def test_peft_saves_the_layout_bipeft_writes(plugins, tmp_path):
    """peft's own save_pretrained of a loaded bipeft adapter writes the same
    keys and values: the two layouts are one."""
    from safetensors.torch import load_file

    pm = _build(plugins, "bert", "s2", S2_TYPES)
    out = export(pm, tmp_path / "e", format="peft-bipeft", plugins=plugins)
    loaded = peft.PeftModel.from_pretrained(tiny_model("bert"), out)
    loaded.save_pretrained(tmp_path / "again")
    ours, theirs = load_file(out / "adapter_model.safetensors"), load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], atol=0, rtol=0)


def test_native_lora_export_has_task_type_and_loads_with_auto_class(plugins, tmp_path):
    pm = _build(plugins, "llama", "s2", ["lora"], per_type=3)
    batch = tiny_batch(pm.model)
    want = _logits(pm, batch)
    base = _saved_base("llama", tmp_path)
    out = export(pm, tmp_path / "e", base_model_name_or_path=str(base), plugins=plugins)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    loaded = peft.AutoPeftModelForSequenceClassification.from_pretrained(out)
    torch.testing.assert_close(_logits(loaded, batch), want, atol=ATOL, rtol=0)


# -- merged ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "types"), [("bert", ["lora", "bitfit", "lnfit"]), ("llama", ["lora", "lnfit"]),
                                               ("t5", ["lora", "lnfit"])])
def test_merged_export_loads_as_plain_transformers_model(plugins, tmp_path, family, types):
    pm = _build(plugins, family, "s2", types)
    batch = tiny_batch(pm.model)
    want = _logits(pm, batch)
    assert merge_refusal(pm, plugins) is None
    out = export(pm, tmp_path / "m", format="merged", plugins=plugins)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    merged = getattr(transformers, AUTO_PLAIN[family]).from_pretrained(out)
    assert not [m for m in merged.modules() if m._forward_hooks]  # a plain model: no bipeft hook
    torch.testing.assert_close(_logits(merged, batch), want, atol=ATOL, rtol=0)
    # the bipeft model is unchanged by the export
    torch.testing.assert_close(_logits(pm, batch), want, atol=0, rtol=0)
    with pytest.raises(StructureError, match="merged export"):
        load_peft(tiny_model(family), out, plugins=plugins)


@pytest.mark.parametrize(("family", "types", "named"), [
    ("bert", ["lora", "adapter_lr"], "adapter_lr:"),
    ("bert", ["serial_adapter"], "serial_adapter:"),
    ("bert", ["prefix"], "prefix:"),
    ("llama", ["bitfit"], "has no bias"),
])
def test_unmergeable_modules_are_refused_by_name(plugins, tmp_path, family, types, named):
    space = "s2" if set(types) <= set(S2_TYPES) else "s1"
    pm = _build(plugins, family, space, types)
    why = merge_refusal(pm, plugins)
    assert why is not None and named in why
    with pytest.raises(StructureError, match="cannot merge") as err:
        export(pm, tmp_path / "m", format="merged", plugins=plugins)
    assert named in str(err.value) and "peft-bipeft" in str(err.value)
    assert not (tmp_path / "m").exists()


def test_peft_merge_and_unload_of_a_bipeft_adapter(plugins, tmp_path):
    pm = _build(plugins, "bert", "s2", ["lora", "bitfit", "lnfit"])
    batch = tiny_batch(pm.model)
    want = _logits(pm, batch)
    out = export(pm, tmp_path / "e", format="peft-bipeft", plugins=plugins)
    merged = peft.PeftModel.from_pretrained(tiny_model("bert"), out).merge_and_unload()
    assert type(merged).__name__ == "BertForSequenceClassification"
    torch.testing.assert_close(_logits(merged, batch), want, atol=ATOL, rtol=0)


# -- the folder -----------------------------------------------------------------------------------


def _tiny_tokenizer(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(40)]]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))


def test_folder_holds_tokenizer_card_and_base_model_as_given(plugins, tmp_path):
    pm = _build(plugins, "bert", "s2", S2_TYPES)
    tok = _tiny_tokenizer(tmp_path)
    card = {"task": "stsb", "metric": "pearson", "metric_value": 0.8123, "budget": 5000,
            "search": {"strategy": "bipeft", "epochs": 3}, "resolved_base_model": "/abs/site-packages/minilm"}
    out = export(pm, tmp_path / "e", base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2",
                 tokenizer=tok, card=card, plugins=plugins)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "structure.json", "export.json",
            "tokenizer_config.json"} <= names
    # the vocabulary itself: vocab.txt (transformers 4) or tokenizer.json (transformers 5 saves only that)
    assert names & {"vocab.txt", "tokenizer.json"}
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth"))]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    info = json.loads((out / "export.json").read_text())
    assert info["resolved_base_model"] == "/abs/site-packages/minilm"
    text = (out / "README.md").read_text()
    header = text.split("---")[1]
    assert 'base_model: "sentence-transformers/all-MiniLM-L6-v2"' in header
    assert "library_name: peft" in header and '- "bipeft"' in header and '- "stsb"' in header
    assert "type: \"pearson\"" in header and "value: 0.8123" in header
    for part in ("AutoPeftModelForSequenceClassification", "import bipeft_core", "Test pearson: 0.8123",
                 f"{pm.structure.count():,} trainable parameters", "budget of 5,000", "| strategy | bipeft |",
                 "lnfit"):
        assert part in text, part
    assert transformers.AutoTokenizer.from_pretrained(out)("w1 w2")["input_ids"] == tok("w1 w2")["input_ids"]


def test_overwrite_replaces_an_export_of_another_format(plugins, tmp_path):
    pm = _build(plugins, "bert", "s2", ["lora", "bitfit"])
    out = export(pm, tmp_path / "e", format="merged", plugins=plugins)
    with pytest.raises(Exception, match="not empty"):
        export(pm, out, format="peft-bipeft", plugins=plugins)
    (out / "notes.txt").write_text("mine")
    export(pm, out, format="peft-bipeft", overwrite=True, plugins=plugins)
    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" not in names and "config.json" not in names and "notes.txt" in names
    assert json.loads((out / "export.json").read_text())["format"] == "peft-bipeft"


# -- training on after loading --------------------------------------------------------------------


def test_peft_loaded_export_keeps_training_with_trainer(plugins, tmp_path):
    datasets = pytest.importorskip("datasets")
    pm = _build(plugins, "bert", "s2", S2_TYPES)
    out = export(pm, tmp_path / "e", plugins=plugins)
    model = peft.PeftModel.from_pretrained(tiny_model("bert"), out, is_trainable=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("bipeft_modules" in n for n in trainable)
    assert all("bipeft_modules" in n or "modules_to_save" in n for n in trainable), sorted(trainable)[:5]
    g = torch.Generator().manual_seed(0)
    data = datasets.Dataset.from_dict({"input_ids": torch.randint(5, 100, (16, 7), generator=g).tolist(),
                                       "attention_mask": [[1] * 7] * 16,
                                       "labels": torch.randint(0, 2, (16,), generator=g).tolist()})
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "t"), max_steps=3, per_device_train_batch_size=4,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True,
                                          logging_steps=1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and changed <= trainable
    assert any("bipeft_modules" in n for n in changed)


def test_auto_peft_class_loads_a_head_of_another_width_with_num_labels(plugins, tmp_path):
    """A regression head (one output) on a bare backbone: the card's snippet
    passes ``num_labels``, which AutoPeftModel hands to the base model."""
    model = tiny_model("bert", num_labels=1)
    specs = _space_specs(model, plugins, "s2")
    choices = {s.index: (s.ranks[0] if s.ranks else None) for s in specs if s.type in ("lora", "bitfit")}
    pm = Structure.from_choices(specs, choices, space="s2").build(model, plugins.peft_modules)
    with torch.no_grad():
        for p in pm.peft.parameters():
            p.add_(0.2)
    batch = tiny_batch(pm.model)
    want = _logits(pm, batch)
    base = tmp_path / "backbone"  # a bare backbone, as on the hub: no task head of its own
    tiny_model("bert").bert.save_pretrained(base)
    out = export(pm, tmp_path / "e", base_model_name_or_path=str(base), plugins=plugins)
    assert 'from_pretrained("<this folder>", num_labels=1)' in (out / "README.md").read_text()
    loaded = peft.AutoPeftModelForSequenceClassification.from_pretrained(out, num_labels=1)
    torch.testing.assert_close(_logits(loaded, batch), want, atol=ATOL, rtol=0)
