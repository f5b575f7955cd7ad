"""A causal language-model task on the user's text: next-token loss on a
text column, perplexity as the metric (lower is better), for decoder models
(GPT-2, Llama, ...) loaded with ``AutoModelForCausalLM``. Made from the
spec's ``[data]`` table with ``kind = "causal_lm"`` (``bipeft run
--train-file notes.jsonl --text-columns text --task-kind causal_lm``;
docs/own-data.md). The language-model head stays frozen, as a tied head
is; the search puts its modules in the backbone."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from bipeft_core.errors import DataError, SpecError
from bipeft_core.tasks import PreparedTask, Task
from bipeft_plugins.tasks.files import _source_rows, make_splits, source_of
from bipeft_plugins.tasks.readers import cap_rows

__all__ = ["CausalLMTask", "PreparedCausalLM", "causal_lm_task"]


@attrs.frozen(kw_only=True)
class CausalLMTask(Task):
    """Next-token prediction on ``text_column`` of the user's files."""

    train_file: str
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    source: Mapping[str, Any] = attrs.field(factory=dict)
    """The ``[data]`` table the task was made from (its files or dataset)."""
    max_length: int = 128
    kind: str = "language_modeling"  # type: ignore[assignment]
    greater_is_better: bool = False

    def _rows(self, which: str) -> list[dict[str, Any]] | None:
        raw = _source_rows(source_of(self), which, [self.text_column])
        if raw is None:
            return None
        rows = [{"text": "" if r[self.text_column] is None else str(r[self.text_column]), "idx": n}
                for n, r in enumerate(raw)]
        rows = [r for r in rows if r["text"].strip()]
        if not rows:
            raise DataError(f"the {which} split of {self.train_file!r}: every {self.text_column!r} value is empty; "
                            "a language-model task needs text")
        return rows

    def load(self, data_dir: str | os.PathLike[str] | None = None, *, seed: int = 42,
             max_train_examples: int | None = None) -> Any:
        import datasets

        train, val, test = make_splits(self._rows("train") or [], self._rows("validation"), self._rows("test"),
                                       seed=seed, source=self.train_file)
        train = cap_rows(train, max_train_examples, seed=seed)
        feats = self.features()
        return datasets.DatasetDict({name: datasets.Dataset.from_list(rows, features=feats)
                                     for name, rows in (("train", train), ("validation", val), ("test", test))})

    def features(self) -> Any:
        import datasets

        return datasets.Features({"text": datasets.Value("string"), "idx": datasets.Value("int64")})

    def compute_metrics(self, predictions: Sequence[Any], rows: Any) -> dict[str, float]:
        """``predictions``: per row, ``(summed next-token loss, tokens)``;
        perplexity is ``exp`` of the token-weighted mean loss."""
        total = sum(float(p[0]) for p in predictions)
        tokens = sum(int(p[1]) for p in predictions)
        if tokens == 0:
            raise DataError(f"task {self.name}: no token to score (every text is one token or empty)")
        mean = total / tokens
        return {"perplexity": math.exp(min(mean, 50.0)), "loss": mean}

    def load_model(self, name_or_path: str | os.PathLike[str], *, seed: int = 0, **kwargs: Any) -> nn.Module:
        from transformers import AutoModelForCausalLM

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)

    def prepare(self, splits: Mapping[str, Any], tokenizer: Any, model: nn.Module, *,
                max_length: int | None = None) -> PreparedCausalLM:
        return PreparedCausalLM(self, splits, tokenizer, max_length or self.max_length)


class PreparedCausalLM(PreparedTask):
    """The task tokenized: each text truncated to ``max_length`` tokens;
    batches padded on the right with the labels of the padding at -100."""

    def __init__(self, task: CausalLMTask, splits: Mapping[str, Any], tokenizer: Any, max_length: int) -> None:
        self.task = task
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise SpecError("the tokenizer has neither a pad nor an end-of-text token; set tokenizer.pad_token")
        self.pad_id = int(pad)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.splits = {name: self._encode(rows) for name, rows in splits.items()}
        self.train = self.splits.get("train")
        self.validation = self.splits.get("validation")
        self.test = self.splits.get("test")

    def _encode(self, rows: Any) -> list[dict[str, Any]]:
        texts = list(rows["text"]) if hasattr(rows, "column_names") else [r["text"] for r in rows]
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, add_special_tokens=True)
        return [{"input_ids": ids} for ids in enc["input_ids"] if len(ids) >= 2]

    @property
    def primary_metric(self) -> str:
        return "perplexity"

    @property
    def greater_is_better(self) -> bool:
        return False

    def collate(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, :n] = torch.tensor(f["input_ids"])
            mask[i, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def loss(self, model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
        device = next(p.device for p in model.parameters())
        return model(**{k: v.to(device) for k, v in batch.items()}).loss

    def _summed(self, model: nn.Module, batch: Mapping[str, Any]) -> list[tuple[float, int]]:
        import torch.nn.functional as F

        device = next(p.device for p in model.parameters())
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        target = batch["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), target, ignore_index=-100, reduction="none")
        counts = (target != -100).sum(-1)
        return [(float(s), int(c)) for s, c in zip(nll.sum(-1), counts)]

    def evaluate(self, model: nn.Module, split: Any = "validation", *, batch_size: int = 64) -> dict[str, float]:
        if isinstance(split, str):
            rows = self.splits[split]
        else:  # rows of a prepared split (as the training loop passes them), or raw rows with "text"
            rows = list(split)
            if rows and "input_ids" not in rows[0]:
                rows = self._encode(rows)
        if not rows:
            raise DataError(f"cannot evaluate task {self.task.name} on an empty split")
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        scored: list[tuple[float, int]] = []
        try:
            with torch.no_grad():
                for start in range(0, len(rows), batch_size):
                    scored.extend(self._summed(model, self.collate(rows[start:start + batch_size])))
        finally:
            for module, was_training in modes:
                module.training = was_training
        return self.task.compute_metrics(scored, rows)


def causal_lm_task(data: Mapping[str, Any]) -> CausalLMTask:
    """The :class:`CausalLMTask` of a ``[data]`` table with ``kind = "causal_lm"``."""
    columns = tuple(data.get("text_columns") or ("text",))
    if len(columns) != 1:
        raise SpecError(f"[data] text_columns = {list(columns)}: a language-model task reads one text column")
    metric = data.get("metric")
    if metric not in (None, "perplexity"):
        raise SpecError(f"[data] metric = {metric!r}: a language-model task is scored by perplexity")
    train_file = str(data.get("train_file") or f"{data.get('dataset')}[{data.get('train_split') or 'train'}]")
    _source_rows(data, "train", list(columns))  # the file (or dataset) and its column, checked now
    name = data.get("name") or (Path(train_file).stem if data.get("train_file") else
                                str(data["dataset"]).rstrip("/").split("/")[-1])
    return CausalLMTask(name=str(name), primary_metric="perplexity", source=dict(data),
                        train_file=train_file, validation_file=data.get("validation_file"),
                        test_file=data.get("test_file"), text_column=columns[0], input_fields=("text",))
