"""The BIPEFT search inside a user's transformers.Trainer: Trainer takes the
weight steps, the callback the architecture steps, sensitivity, triggers and
selections; the result keeps the budget, and its structure re-trains with a
plain Trainer; a Trainer checkpoint resumes the search."""

from __future__ import annotations

import pytest
import torch

from bipeft_core import Pipeline, load_plugins
from bipeft_core.testing import tiny_model
from bipeft_core.trainer import STATE_FILE, BipeftSearch, search_with_trainer

datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, 8), generator=g)
    labels = (ids[:, 0] > 50).long()  # learnable: the first token decides
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * n,
                                       "labels": labels.tolist(), "text": ["unused"] * n})


def _pipe():
    return Pipeline(budget=1500, trigger={"name": "budget_stability", "warmup_epochs": 0.5, "max_triggers": 6,
                                          "window": 2, "spread": False, "fresh": False},
                    search_settings={"epochs": 4, "batch_size": 8, "lr": 1e-3},
                    plugins=load_plugins(entry_points=False))


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "t"), num_train_epochs=4, per_device_train_batch_size=8,
                learning_rate=1e-3, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, seed=0)
    base.update(kw)
    return transformers.TrainingArguments(**base)


def test_search_inside_trainer_keeps_the_budget_and_retrains_with_a_plain_trainer(tmp_path):
    train, held = _data(96, 0), _data(48, 1)
    result = search_with_trainer(tiny_model("bert"), _args(tmp_path), train, held, pipeline=_pipe())
    assert result.count <= result.budget == 1500 and result.budget_met
    assert len(result.trace) == 6 and result.trace[-1].triggers_left == 0  # every trigger fired inside Trainer
    assert result.structure.count() == result.count and result.history
    # the structure re-trains with a plain Trainer, its modules and task head only
    plugins = load_plugins(entry_points=False)
    model = result.structure.build(tiny_model("bert"), plugins.peft_modules)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    transformers.Trainer(model=model, args=_args(tmp_path / "re", num_train_epochs=1), train_dataset=train).train()
    assert model.peft_parameter_count() == result.count
    assert any(not torch.equal(v, model.trainable_state_dict()[k]) for k, v in before.items())


def test_a_trainer_checkpoint_resumes_the_search(tmp_path):
    train, held = _data(96, 0), _data(48, 1)
    full = search_with_trainer(tiny_model("bert"), _args(tmp_path / "a"), train, held, pipeline=_pipe())

    # the same search, saved at step 12 and stopped there ...
    class StopAt(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 12:
                control.should_save = control.should_training_stop = True
            return control

    first = BipeftSearch(tiny_model("bert"), arch_dataset=held, pipeline=_pipe())
    t = transformers.Trainer(model=first.model, args=_args(tmp_path / "b", save_strategy="steps", save_steps=1000),
                             train_dataset=train, callbacks=[first.callback, StopAt()])
    t.train()
    assert (tmp_path / "b" / "t" / "checkpoint-12" / STATE_FILE).is_file()
    # ... resumed by a new Trainer from that checkpoint, ends with the same structure
    second = BipeftSearch(tiny_model("bert"), arch_dataset=held, pipeline=_pipe())
    t2 = transformers.Trainer(model=second.model, args=_args(tmp_path / "b", save_strategy="no"),
                              train_dataset=train, callbacks=[second.callback])
    t2.train(resume_from_checkpoint=str(tmp_path / "b" / "t" / "checkpoint-12"))
    resumed = second.result()
    assert resumed.structure == full.structure
    assert [e.step for e in resumed.trace] == [e.step for e in full.trace]
