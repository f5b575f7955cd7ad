"""Settings for large models: the backbone's dtype and loading options
(``[model]``), gradient accumulation, bfloat16 autocast and gradient
checkpointing (``[train]``, or per stage) in the search and the re-train."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bipeft_core import Pipeline, load_plugins
from bipeft_core.errors import SpecError, TrainingError
from bipeft_core.spec import ModelSpec, PipelineSpec, TrainSpec
from bipeft_core.testing import tiny_model
from bipeft_core.testing import toy_examples as synthetic
from bipeft_core.training import enable_gradient_checkpointing, train_model


def test_train_table_sets_both_stages_and_round_trips():
    spec = PipelineSpec.from_dict({"budget": "0.1%", "train": {"grad_accum_steps": 4, "mixed_precision": "bf16",
                                                               "gradient_checkpointing": True},
                                   "retrain": {"grad_accum_steps": 1}})
    assert (spec.search_settings.accum, spec.search_settings.bf16, spec.search_settings.gradient_checkpointing) == \
        (4, True, True)
    assert spec.retrain_settings.accum == 1 and spec.retrain_settings.bf16  # a stage's own value wins
    assert PipelineSpec.from_dict(spec.to_dict()) == spec
    assert "grad_accum_steps" not in PipelineSpec.from_dict({"budget": "0.1%"}).to_dict()["search"]
    with pytest.raises(SpecError, match=r"\[train\] holds the settings both stages share"):
        PipelineSpec.from_dict({"budget": "0.1%", "train": {"lr": 1e-3}})
    with pytest.raises(SpecError, match="mixed_precision = 'fp16'"):
        PipelineSpec.from_dict({"budget": "0.1%", "train": {"mixed_precision": "fp16"}})
    with pytest.raises(SpecError, match="grad_accum_steps"):
        TrainSpec(grad_accum_steps=0)


def test_model_dtype_and_loading_options():
    spec = ModelSpec(dtype="bfloat16", revision="main", trust_remote_code=False, attn_implementation="eager")
    kwargs = spec.load_kwargs()
    assert kwargs.pop("dtype", kwargs.pop("torch_dtype", None)) is torch.bfloat16
    assert kwargs == {"revision": "main", "trust_remote_code": False, "attn_implementation": "eager"}
    assert ModelSpec().load_kwargs() == {}
    with pytest.raises(SpecError, match="model.dtype = 'int8'"):
        PipelineSpec.from_dict({"budget": "0.1%", "model": {"dtype": "int8"}})


def test_a_model_folder_loads_in_the_dtype_asked_for(tmp_path, plugins):
    from bipeft_core.tasks import get_task, load_task_model

    tiny_model("llama").save_pretrained(tmp_path / "m")
    task = get_task("rte", plugins)
    model = load_task_model(tmp_path / "m", task, **ModelSpec(dtype="bfloat16").load_kwargs())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# -- gradient accumulation ----------------------------------------------------------------------


def _regression():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g)
    return [{"x": x[i], "y": x[i].sum(-1, keepdim=True)} for i in range(32)]


def _fit(settings):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    out = train_model(model, list(model.parameters()), _regression(), settings=settings,
                      collate=lambda f: {k: torch.stack([d[k] for d in f]) for k in f[0]},
                      loss=lambda m, b: nn.functional.mse_loss(m(b["x"]), b["y"]))
    return model, out


def test_accumulating_two_half_batches_is_one_whole_batch():
    whole, out_whole = _fit(TrainSpec(epochs=2, batch_size=8, lr=1e-2, clip_norm=1e9))
    halves, out_halves = _fit(TrainSpec(epochs=2, batch_size=4, grad_accum_steps=2, lr=1e-2, clip_norm=1e9))
    assert out_whole["steps"] == out_halves["steps"] == 8  # 32 examples / 8 per step, 2 epochs
    for a, b in zip(whole.parameters(), halves.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # and it is not the same as two steps of half batches
    plain, out_plain = _fit(TrainSpec(epochs=2, batch_size=4, lr=1e-2, clip_norm=1e9))
    assert out_plain["steps"] == 16
    assert not torch.allclose(next(plain.parameters()), next(whole.parameters()), atol=1e-4)


def _search_pipe(**train):
    return Pipeline(budget=1500, trigger={"name": "budget_stability", "warmup_epochs": 0.5, "max_triggers": 8,
                                          "window": 3, "spread": False, "fresh": False},
                    search_settings={"epochs": 6, "batch_size": 16, "lr": 1e-3, **train},
                    retrain_settings={"epochs": 1, "batch_size": 16, **train},
                    plugins=load_plugins(entry_points=False))


def test_search_with_accumulation_takes_whole_steps_and_keeps_the_budget():
    train = synthetic(192)
    plain = _search_pipe().search(tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                                  train)
    accum = _search_pipe(batch_size=8, grad_accum_steps=2).search(
        tiny_model("bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), train)
    assert accum.count <= accum.budget == 1500 and accum.budget_met
    # the same number of weight steps per epoch as whole batches of 16
    assert [h["epoch"] for h in accum.history[:12]] == [h["epoch"] for h in plain.history[:12]]
    assert abs(accum.history[0]["loss"] - plain.history[0]["loss"]) < 1e-4  # the same first step's mean loss


# -- bfloat16 and gradient checkpointing on a Llama-style model ---------------------------------


def test_llama_in_bfloat16_searches_and_retrains_with_checkpointing():
    train = synthetic(160)
    pipe = _search_pipe(mixed_precision="bf16", gradient_checkpointing=True)
    model = tiny_model("llama").to(torch.bfloat16)
    result = pipe.search(model, train)
    assert result.count <= result.budget == 1500 and result.budget_met
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    fresh = tiny_model("llama").to(torch.bfloat16)
    retrained = pipe.retrain(fresh, result.structure, train)
    assert retrained.peft_params == result.count
    assert fresh.model.gradient_checkpointing  # the backbone recomputes its activations
    # PEFT modules train in float32 beside the bfloat16 backbone, and learnt something
    peft_params = list(retrained.model.peft.parameters())
    assert peft_params and {p.dtype for p in peft_params} == {torch.float32}
    assert any(p.abs().sum() > 0 for p in peft_params)


def test_checkpointing_a_model_that_cannot_is_refused():
    with pytest.raises(TrainingError, match="does not support it"):
        enable_gradient_checkpointing(nn.Linear(2, 2), TrainSpec(gradient_checkpointing=True))
    enable_gradient_checkpointing(nn.Linear(2, 2), TrainSpec())  # off: nothing to do


# -- a plain transformers.Trainer re-trains a searched structure ---------------------------------


def test_plain_trainer_retrains_a_structure_with_its_defaults(plugins, tmp_path):
    """bipeft's model takes the usual keyword inputs: Trainer's column removal
    keeps them (and drops the others), evaluates, checkpoints and resumes."""
    import inspect

    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    from bipeft_core.structure import Structure
    from bipeft_core.targets import find_target_map

    def build():
        model = tiny_model("bert")
        specs = plugins.spaces.get("s2").modules(model, find_target_map(model, plugins.target_maps),
                                                  plugins.peft_modules)
        choices = {s.index: (s.ranks[0] if s.ranks else None) for s in specs if s.type in ("lora", "lnfit")}
        torch.manual_seed(0)
        return Structure.from_choices(specs, choices, space="s2").build(model, plugins.peft_modules)

    pm = build()
    assert {"input_ids", "attention_mask", "labels"} <= set(inspect.signature(pm.forward).parameters)
    g = torch.Generator().manual_seed(0)
    rows = {"input_ids": torch.randint(5, 100, (24, 7), generator=g).tolist(), "attention_mask": [[1] * 7] * 24,
            "labels": torch.randint(0, 2, (24,), generator=g).tolist(), "sentence": ["some text"] * 24}
    data = datasets.Dataset.from_dict(rows)  # "sentence" is a column the model does not take

    # transformers 5 always writes safetensors and no longer takes the argument
    if "save_safetensors" in inspect.signature(transformers.TrainingArguments).parameters:
        kw_safetensors = {"save_safetensors": True}
    else:
        kw_safetensors = {}

    def trainer(model, steps, **kw):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "t"), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2,
            report_to=[], save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2,
            logging_steps=1, use_cpu=True, **kw_safetensors, **kw)
        return transformers.Trainer(model=model, args=args, train_dataset=data, eval_dataset=data)

    before = {k: v.clone() for k, v in pm.trainable_state_dict().items()}
    t = trainer(pm, 4)
    t.train()
    assert "eval_loss" in t.evaluate()
    after = pm.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("peft."))
    # resuming from the step-2 checkpoint ends where the uninterrupted run ended
    resumed = build()
    trainer(resumed, 4).train(resume_from_checkpoint=str(tmp_path / "t" / "checkpoint-2"))
    for k, v in resumed.trainable_state_dict().items():
        torch.testing.assert_close(v, after[k], atol=1e-6, rtol=0)


def test_the_accelerate_config_mixed_precision_is_honoured_unless_the_spec_says(monkeypatch):
    from bipeft_core.training import precision

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with precision(TrainSpec(), "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with precision(TrainSpec(mixed_precision="no"), "cpu"):  # the spec wins
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(TrainingError, match="fp16"):
        precision(TrainSpec(), "cpu")
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    with precision(TrainSpec(), "cpu"):
        assert not torch.is_autocast_enabled("cpu")
