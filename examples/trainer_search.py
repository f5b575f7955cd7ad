"""A BIPEFT search inside a plain transformers.Trainer, then a re-train of the
searched structure with another plain Trainer.

    python examples/trainer_search.py                 # a tiny random BERT and random data: seconds, offline
    python examples/trainer_search.py --model PATH    # your model folder (a sequence classifier)

Trainer takes the weight steps with its own optimiser, schedule and data
order; bipeft's callback takes the architecture steps on a held-out split,
updates the sensitivities and prunes at each trigger, until the structure
fits the budget. docs/trainer.md explains each step.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
import transformers
from datasets import Dataset

from bipeft_core import Pipeline, default_plugins
from bipeft_core.trainer import search_with_trainer


def tiny_model() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def random_data(n: int, seed: int) -> Dataset:
    """Token ids whose first token decides the label: learnable, offline."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (n, 12), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 12] * n,
                              "labels": (ids[:, 0] > 66).long().tolist()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a local sequence-classification model folder (default: a tiny random BERT)")
    ap.add_argument("--budget", default="3000", help="parameter budget (a count, or a share like 0.1%%)")
    ap.add_argument("--epochs", type=float, default=4)
    args = ap.parse_args()

    model = (transformers.AutoModelForSequenceClassification.from_pretrained(args.model) if args.model
             else tiny_model())
    train, held_out = random_data(192, 0), random_data(96, 1)
    pipeline = Pipeline.from_dict({"budget": args.budget, "search": {"batch_size": 16, "lr": 1e-3}},
                                  source="examples/trainer_search.py")
    with tempfile.TemporaryDirectory() as out:
        training_args = transformers.TrainingArguments(
            output_dir=out, num_train_epochs=args.epochs, per_device_train_batch_size=16, learning_rate=1e-3,
            report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True)
        result = search_with_trainer(model, training_args, train, held_out, pipeline=pipeline)
        print(f"searched inside Trainer: {len(result.structure.entries)} modules, {result.count:,} parameters "
              f"for a budget of {result.budget:,} ({len(result.trace)} triggers, {len(result.history)} steps)")

        # the structure re-trains with a plain Trainer
        fresh = tiny_model() if not args.model else \
            transformers.AutoModelForSequenceClassification.from_pretrained(args.model)
        retrain_model = result.structure.build(fresh, default_plugins().peft_modules)
        retrain_args = transformers.TrainingArguments(
            output_dir=out, num_train_epochs=args.epochs, per_device_train_batch_size=16, learning_rate=1e-3,
            report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="epoch", use_cpu=True, seed=0,
            disable_tqdm=True)
        trainer = transformers.Trainer(model=retrain_model, args=retrain_args, train_dataset=train,
                                       eval_dataset=held_out)
        trainer.train()
        print(f"re-trained with a plain Trainer: eval loss {trainer.evaluate()['eval_loss']:.4f}")
    print(f"final parameter count {result.count:,} / budget {result.budget:,}")
    return 0 if result.count <= result.budget else 1


if __name__ == "__main__":
    raise SystemExit(main())
