"""The text tasks: :class:`TextTask`, the concrete task that the GLUE and
SuperGLUE tasks (and a third party's text task) subclass, and
:class:`PreparedTextTask`, a text task bound to a tokenizer and a model.

A :class:`TextTask` says where one dataset's files are and how to read them
(:meth:`TextTask.read_split`, written for its file format with the readers
of :mod:`bipeft_plugins.tasks.readers`), which fields and labels it has, how
to split it (the S3Delta protocol, :func:`~bipeft_plugins.tasks.readers.s3delta_split`;
docs/tasks.md) and which ``evaluate`` metric module scores it. It implements
the task contract (:class:`bipeft_core.tasks.Task`): :meth:`TextTask.load`,
:meth:`TextTask.load_model`, :meth:`TextTask.prepare` and
:meth:`TextTask.compute_metrics`.

:meth:`TextTask.prepare` (:func:`prepare_text_task`) binds a task to a
tokenizer and a model of one of three families
(:func:`~bipeft_plugins.tasks.models.model_family`): ``encoder`` (BERT,
RoBERTa, MiniLM with a sequence-classification head), ``seq2seq`` (T5, text
to text, scored by rank classification over label words) and ``decoder``
(GPT-2, Llama with a sequence-classification head). The
:class:`PreparedTextTask` it returns tokenizes the splits and provides
``collate``, ``loss``, ``predict`` and ``evaluate``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from bipeft_core.errors import DataError, SpecError
from bipeft_core.tasks import PreparedTask, Task, squash_name
from bipeft_plugins.tasks.models import Family, build_model, config_of, inner_model, load_model, model_family
from bipeft_plugins.tasks.readers import DATA_DIR_ENV, cap_rows, resolve_data_dir, s3delta_split

if TYPE_CHECKING:  # pragma: no cover
    import datasets
    import torch
    from torch import nn

__all__ = ["PreparedTextTask", "TextTask", "prepare_text_task"]

_MAX_TARGET_LENGTH = 64
_MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "labels")


# -- the task --------------------------------------------------------------------------


def _default_hub_splits() -> dict[str, str]:
    return {"train": "train", "validation": "validation"}


@attrs.frozen(kw_only=True)
class TextTask(Task):
    """A text task: one dataset, where its files are, its fields, labels,
    split protocol, metric and input formats; the implementation of the task
    contract (:class:`bipeft_core.tasks.Task`) for text models.
    ``benchmark``, ``folder`` and ``files`` have no default (beside the
    contract's ``name`` and ``primary_metric``).

    Subclasses implement :meth:`read_split` for their file format (the
    built-ins: ``bipeft_plugins.tasks.glue`` and ``.super_glue``) and may
    override the text formats. ``kind`` is ``classification``
    (``label_names`` are the classes, the ``label`` column their index),
    ``regression`` (a float ``label``) or ``choice`` (pick one of several
    candidate strings per example; see :meth:`choices`).
    """

    benchmark: str
    """Sub-folder of the data folder that holds this task's folder."""
    folder: str
    """Task folder inside the benchmark folder (matched case-insensitively,
    ignoring ``-``, ``_`` and spaces)."""
    files: Mapping[str, str]
    """File name per original split: ``train`` and ``validation``."""
    metric: str = ""
    """The ``evaluate`` module: a path to a metric script, or a hub name;
    empty: no metric (scoring raises :class:`SpecError`)."""
    metric_config: str | None = None
    """The metric module's config name (``None``: its default)."""
    max_length: int = 128
    """Tokens per input, the default of :meth:`prepare`."""
    split_protocol: Literal["halve", "holdout"] = "halve"
    """How the original splits become train / validation / test
    (:func:`s3delta_split`)."""
    holdout_size: int = 2000
    """Training rows moved to validation by the ``holdout`` protocol."""
    group_by: str | None = None
    """Column that keeps rows together when a split is halved (``None``: rows
    are halved one by one)."""
    t5_prefix: str = ""
    """The first word of the T5 input (none by default)."""
    t5_fields: tuple[str, ...] = ()
    """Fields in the T5 input, in order: ``"<prefix> <field>: <value> ..."``
    (default: ``input_fields``)."""
    t5_label_words: tuple[str, ...] | None = None
    """Target words per class for T5 (default: ``label_names``)."""
    regression_grid: tuple[float, float, float] | None = None
    """Regression targets as text for T5: (low, high, step); the prediction
    is the best-scoring of these values. A regression task needs it for
    text-to-text models only; ``None`` by default."""
    hub: tuple[str, str | None] = ("", None)
    """``datasets.load_dataset`` arguments for the hub fallback (an empty
    path: no hub dataset)."""
    hub_splits: Mapping[str, str] = attrs.field(factory=_default_hub_splits)
    """The hub dataset's split per original split (default: ``train`` and
    ``validation``)."""
    file_format: str = ""
    """A sentence on the file format, shown in errors (empty by default)."""
    data_layout: str = ""
    """The layout of the whole data folder the task's plugin reads, shown in
    the errors about that folder; empty: this task's :meth:`layout` alone."""
    description: str = ""
    """One line on the task, for listings."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.split_protocol not in ("halve", "holdout"):
            raise SpecError(
                f"task {self.name!r}: split_protocol {self.split_protocol!r} is not 'halve' or 'holdout'"
            )
        if self.holdout_size < 1 or self.max_length < 2:
            raise SpecError(
                f"task {self.name!r}: holdout_size ({self.holdout_size}) must be >= 1 and max_length "
                f"({self.max_length}) >= 2"
            )
        missing = {"train", "validation"} - set(self.files)
        if missing:
            raise SpecError(f"task {self.name!r}: files={dict(self.files)!r} lacks {sorted(missing)}")

    # -- facts ---------------------------------------------------------------------------
    @property
    def is_regression(self) -> bool:
        """Whether the task's label is a value (``kind == "regression"``)."""
        return self.kind == "regression"

    @property
    def label_words(self) -> tuple[str, ...]:
        """The T5 target strings scored by rank classification: one per class,
        or the regression grid written like ``"3.8"``; empty for choice tasks."""
        if self.kind == "classification":
            return tuple(self.t5_label_words or self.label_names)
        if self.kind == "regression":
            lo, hi, step = self._grid()
            n = int(round((hi - lo) / step))
            return tuple(self._format_value(lo + i * step) for i in range(n + 1))
        return ()

    def _grid(self) -> tuple[float, float, float]:
        if self.regression_grid is None:
            raise SpecError(
                f"task {self.name!r} is a regression task without a regression_grid, which a text-to-text "
                "model needs; set regression_grid=(low, high, step), the values it scores as text"
            )
        return self.regression_grid

    def _format_value(self, value: float) -> str:
        lo, _, step = self._grid()
        snapped = lo + round((value - lo) / step) * step
        decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
        return f"{snapped:.{decimals}f}"

    def layout(self, root: Path | str = "<data_dir>") -> str:
        """Where this task's files go under ``root``, and their format."""
        folder = Path(root) / self.benchmark / self.folder
        names = " and ".join(str(folder / f) for f in self.files.values())
        return f"task {self.name} reads {names}" + (f" ({self.file_format})" if self.file_format else "")

    def _data_folder_help(self) -> str:
        """The data-folder layout shown in errors: the plugin's, else this task's."""
        return self.data_layout or self.layout()

    # -- reading ---------------------------------------------------------------------------
    def read_split(self, path: Path, split: str) -> list[dict[str, Any]]:
        """The rows of one original split (``train`` or ``validation``) read
        from ``path``, as dicts with the columns of :meth:`features`. Raises
        :class:`DataError` naming the file for a missing file or column."""
        raise NotImplementedError(
            f"task {self.name!r} ({type(self).__name__}) does not implement read_split(); "
            "subclass TextTask and implement it for its file format"
        )

    def features(self) -> datasets.Features:
        """The columns of the loaded splits: the text fields, ``label`` and
        ``idx`` (the row's index in its original file)."""
        import datasets

        cols: dict[str, Any] = {f: datasets.Value("string") for f in self.input_fields}
        if self.kind == "classification":
            cols["label"] = datasets.ClassLabel(names=list(self.label_names))
        elif self.kind == "regression":
            cols["label"] = datasets.Value("float32")
        cols["idx"] = datasets.Value("int64")
        return datasets.Features(cols)

    def from_hub(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A row of the hub's dataset in this task's columns."""
        return {k: row[k] for k in self.features()}

    def folder_path(self, root: Path) -> Path:
        """This task's folder under ``root`` (the task folder name matched
        case-insensitively); :class:`DataError` if it is missing."""
        bench = root / self.benchmark
        exact = bench / self.folder
        if exact.is_dir():
            return exact
        if bench.is_dir():
            for child in sorted(bench.iterdir()):
                if child.is_dir() and squash_name(child.name.lower()) == squash_name(self.folder.lower()):
                    return child
        whole = f" The data folder is laid out as:\n{self.data_layout}" if self.data_layout else ""
        raise DataError(f"missing folder {str(exact)!r} for task {self.name}: {self.layout(root)}.{whole}")

    def load(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        seed: int = 42,
        max_train_examples: int | None = None,
    ) -> datasets.DatasetDict:
        """The ``train``, ``validation`` and ``test`` splits of this task under
        the S3Delta protocol (:func:`s3delta_split`), seeded.

        The data come from ``data_dir``, else the folder named by
        ``BIPEFT_DATA_DIR``, else the Hugging Face hub (``self.hub``).
        ``max_train_examples`` caps the training split (:func:`cap_rows`).
        """
        import datasets

        root = resolve_data_dir(data_dir, layout=self._data_folder_help())
        if root is None:
            train_rows, val_rows = self._hub_rows()
        else:
            folder = self.folder_path(root)
            train_rows = self.read_split(folder / self.files["train"], "train")
            val_rows = self.read_split(folder / self.files["validation"], "validation")
        train, val, test = s3delta_split(
            train_rows,
            val_rows,
            protocol=self.split_protocol,
            seed=seed,
            holdout_size=self.holdout_size,
            group_key=self.group_by,
        )
        train = cap_rows(train, max_train_examples, seed=seed)
        feats = self.features()
        return datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_list(train, features=feats),
                "validation": datasets.Dataset.from_list(val, features=feats),
                "test": datasets.Dataset.from_list(test, features=feats),
            }
        )

    def _hub_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        import datasets

        path, config = self.hub
        if not path:
            raise DataError(
                f"task {self.name} has no local data folder and no hub dataset: pass data_dir=... (bipeft: --data-dir DIR) or set "
                f"{DATA_DIR_ENV}; {self.layout()}"
            )
        where = f"datasets.load_dataset({path!r}, {config!r})"
        try:
            dd = datasets.load_dataset(path, config)
            train = [self.from_hub(r) for r in dd[self.hub_splits["train"]]]
            val = [self.from_hub(r) for r in dd[self.hub_splits["validation"]]]
        except Exception as e:  # network, missing dataset, changed columns: one message
            raise DataError(
                f"task {self.name} has no local data folder (pass data_dir=... (bipeft: --data-dir DIR) or set "
                f"{DATA_DIR_ENV} to a folder laid out as:\n{self._data_folder_help()}\n) and loading it from "
                f"the Hugging Face hub with {where} failed: {type(e).__name__}: {e}"
            ) from e
        return train, val

    # -- inputs ----------------------------------------------------------------------------
    def encoder_text(self, example: Mapping[str, Any]) -> tuple[str, str | None]:
        """The text (or text pair) a classification model reads."""
        texts = [str(example[f]) for f in self.input_fields]
        if len(texts) == 1:
            return texts[0], None
        if len(texts) == 2:
            return texts[0], texts[1]
        return texts[0], " ".join(texts[1:])

    def t5_text(self, example: Mapping[str, Any]) -> str:
        """The T5 input: ``"<prefix> field: value field: value"`` (T5's
        format for classification benchmarks)."""
        parts = [self.t5_prefix] if self.t5_prefix else []
        for f in self.t5_fields or self.input_fields:
            parts.append(f"{f}: {example[f]}")
        return " ".join(parts)

    def t5_target(self, example: Mapping[str, Any]) -> str:
        """The T5 target text of an example (its label word, value or the
        first gold choice)."""
        if self.kind == "classification":
            return self.label_words[int(example["label"])]
        if self.kind == "regression":
            return self._format_value(float(example["label"]))
        gold = self.gold_choices(example)
        return self.choices(example)[gold[0]] if gold else ""

    def parse_label_word(self, word: str) -> float | int:
        """The label (class index or value) of a T5 label string."""
        if self.kind == "regression":
            return float(word)
        return self.label_words.index(word)

    def choice_text(self, example: Mapping[str, Any], choice: str) -> tuple[str, str | None]:
        """The text pair an encoder or decoder scores for one candidate."""
        raise NotImplementedError(f"task {self.name!r} is not a choice task")

    # -- scoring ---------------------------------------------------------------------------
    def metric_inputs(self, predictions: Sequence[Any], rows: Any) -> tuple[list[Any], list[Any]]:
        """``(predictions, references)`` in the form the metric module takes.
        ``predictions`` are class indices, values or candidate indices, one
        per row of ``rows`` (a dataset with this task's columns)."""
        return list(predictions), list(rows["label"])

    def compute_metrics(self, predictions: Sequence[Any], rows: Any) -> dict[str, float]:
        """The metric values (fractions, not percentages) for ``predictions``
        against ``rows``, the primary metric first."""
        preds, refs = self.metric_inputs(predictions, rows)
        module = _metric_module(self.metric, self.metric_config)
        module.add_batch(predictions=preds, references=refs)
        result = module.compute()
        if result is None or self.primary_metric not in result:
            raise KeyError(
                f"the metric {self.metric!r} ({self.metric_config}) of task {self.name} returned "
                f"{result!r}, without its primary metric {self.primary_metric!r}"
            )
        out = {self.primary_metric: float(result[self.primary_metric])}
        out.update({k: float(v) for k, v in result.items() if k != self.primary_metric})
        return out

    # -- models ----------------------------------------------------------------------------
    def build_model(self, config: Any, *, seed: int = 0) -> nn.Module:
        """A randomly initialised model for this task from a transformers
        config (:func:`~bipeft_plugins.tasks.models.build_model`)."""
        return build_model(config, self, seed=seed)

    def load_model(self, name_or_path: str | os.PathLike[str], *, seed: int = 0, **kwargs: Any) -> nn.Module:
        """A pretrained transformers model with this task's head
        (:func:`~bipeft_plugins.tasks.models.load_model`)."""
        return load_model(name_or_path, self, seed=seed, **kwargs)

    def prepare(
        self,
        splits: Mapping[str, Any],
        tokenizer: Any,
        model: nn.Module,
        *,
        max_length: int | None = None,
    ) -> PreparedTextTask:
        """This task tokenized for ``model`` (:func:`prepare_text_task`)."""
        return prepare_text_task(self, splits, tokenizer, model, max_length=max_length)


def _metric_module(path: str, config_name: str | None) -> Any:
    """A fresh evaluate module (a few milliseconds once the script is in the
    modules cache); fresh, so a failed call leaves no batches behind."""
    import evaluate

    if not path:
        raise SpecError("this task names no metric module; set TextTask.metric to an evaluate script path")
    return evaluate.load(path, config_name, keep_in_memory=True)


# -- prepared tasks --------------------------------------------------------------------


def _pad(seqs: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    import torch

    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out


def _device_of(model: nn.Module) -> torch.device:
    import torch

    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@attrs.define(kw_only=True, eq=False)
class PreparedTextTask(PreparedTask):
    """A text task bound to a tokenizer and a model family: tokenized splits
    and the functions a training loop needs (the contract's
    :class:`bipeft_core.tasks.PreparedTask`). Build it with
    :meth:`TextTask.prepare` (:func:`prepare_text_task`).

    The tokenized splits keep the task's columns beside the model features
    (``input_ids``, ...), so they can be scored without the raw splits.
    ``collate`` turns a list of rows into a batch of tensors with dynamic
    padding; ``model(**prepared.model_inputs(batch))`` runs the model, but
    :meth:`loss` and :meth:`predict` are the ones to use: they also handle
    choice tasks and T5's rank classification.
    """

    task: TextTask
    family: Family
    tokenizer: Any
    max_length: int
    train: datasets.Dataset | None
    validation: datasets.Dataset | None
    test: datasets.Dataset | None
    pad_token_id: int
    use_token_type_ids: bool
    label_word_ids: list[list[int]]
    """Tokenized T5 label words (empty for other families and choice tasks)."""

    @property
    def primary_metric(self) -> str:
        """The task's primary metric, the key :meth:`evaluate` returns first."""
        return self.task.primary_metric

    @property
    def splits(self) -> dict[str, datasets.Dataset]:
        """The prepared splits by name (those that are not ``None``)."""
        return {
            n: d
            for n, d in (("train", self.train), ("validation", self.validation), ("test", self.test))
            if d is not None
        }

    # -- tokenizing --------------------------------------------------------------------
    def _pairs(self, texts: Sequence[tuple[str, str | None]]) -> dict[str, list[list[int]]]:
        if not texts:
            empty: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": []}
            if self.use_token_type_ids:
                empty["token_type_ids"] = []
            return empty
        firsts = [a for a, _ in texts]
        seconds = [b for _, b in texts]
        has_pair = any(b is not None for b in seconds)
        if has_pair and self.family == "decoder" and getattr(self.tokenizer, "sep_token", None) is None:
            seconds = ["\n" + (b or "") for b in seconds]
        enc = self.tokenizer(
            firsts,
            [b or "" for b in seconds] if has_pair else None,
            truncation=True,
            max_length=self.max_length,
        )
        out = {"input_ids": list(enc["input_ids"]), "attention_mask": list(enc["attention_mask"])}
        if self.use_token_type_ids:
            out["token_type_ids"] = list(enc.get("token_type_ids") or [[0] * len(x) for x in enc["input_ids"]])
        return out

    def _targets(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        enc = self.tokenizer(text_target=list(texts), truncation=True, max_length=_MAX_TARGET_LENGTH)
        return list(enc["input_ids"])

    def encode(self, rows: datasets.Dataset, *, drop_unlabelled: bool = False) -> datasets.Dataset:
        """Tokenize a split of this task (columns as :meth:`TextTask.load` gives):
        the task's columns plus the model features. ``drop_unlabelled`` drops
        choice rows with no correct candidate (for training)."""
        task = self.task
        examples = rows.to_list()
        if drop_unlabelled and task.kind == "choice":
            keep = [i for i, ex in enumerate(examples) if task.gold_choices(ex)]
            if len(keep) < len(examples):
                rows = rows.select(keep)
                examples = [examples[i] for i in keep]
        cols: dict[str, list[Any]] = {}
        if task.kind == "choice":
            choices = [task.choices(ex) for ex in examples]
            cols["choice_gold"] = [task.gold_choices(ex) for ex in examples]
            if self.family == "seq2seq":
                cols.update(self._pairs([(task.t5_text(ex), None) for ex in examples]))
                cols["target_ids"] = self._targets([task.t5_target(ex) for ex in examples])
                flat = self._targets([c for cs in choices for c in cs])
                cols["choice_target_ids"] = _regroup(flat, [len(cs) for cs in choices])
            else:
                flat_pairs = [task.choice_text(ex, c) for ex, cs in zip(examples, choices) for c in cs]
                counts = [len(cs) for cs in choices]
                for key, values in self._pairs(flat_pairs).items():
                    cols[f"choice_{key}"] = _regroup(values, counts)
        else:
            if self.family == "seq2seq":
                cols.update(self._pairs([(task.t5_text(ex), None) for ex in examples]))
                cols["target_ids"] = self._targets([task.t5_target(ex) for ex in examples])
            else:
                cols.update(self._pairs([task.encoder_text(ex) for ex in examples]))
        # an explicit fingerprint: otherwise datasets hashes every new column (slow)
        from datasets.fingerprint import generate_random_fingerprint

        out = rows
        for key, values in cols.items():
            if key in out.column_names:
                out = out.remove_columns(key, new_fingerprint=generate_random_fingerprint())
            out = out.add_column(key, values, new_fingerprint=generate_random_fingerprint())
        return out

    # -- batches -----------------------------------------------------------------------
    def collate(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """A batch of tensors from rows of a tokenized split, padded to the
        longest row. Keys: ``input_ids``, ``attention_mask``
        (``token_type_ids`` for BERT-type encoders) and ``labels``, plus
        ``choice_counts`` / ``choice_gold`` for choice tasks and
        ``choice_labels`` for T5 choice tasks; T5's ``labels`` are the target
        tokens (``-100`` padded) and its class or value is ``task_label``."""
        import torch

        feats = list(features)
        batch: dict[str, torch.Tensor] = {}
        task = self.task
        if task.kind == "choice":
            counts = [len(f[_choice_key(self.family)]) for f in feats]
            gold = torch.zeros(sum(counts), dtype=torch.float32)
            offset = 0
            for f, n in zip(feats, counts):
                for g in f["choice_gold"]:
                    gold[offset + int(g)] = 1.0
                offset += n
            batch["choice_counts"] = torch.tensor(counts, dtype=torch.long)
            batch["choice_gold"] = gold
            if self.family == "seq2seq":
                batch["input_ids"] = _pad([f["input_ids"] for f in feats], self.pad_token_id)
                batch["attention_mask"] = _pad([f["attention_mask"] for f in feats], 0)
                batch["labels"] = _pad([f["target_ids"] for f in feats], -100)
                batch["choice_labels"] = _pad([c for f in feats for c in f["choice_target_ids"]], -100)
            else:
                batch["input_ids"] = _pad([c for f in feats for c in f["choice_input_ids"]], self.pad_token_id)
                batch["attention_mask"] = _pad([c for f in feats for c in f["choice_attention_mask"]], 0)
                if self.use_token_type_ids:
                    batch["token_type_ids"] = _pad([c for f in feats for c in f["choice_token_type_ids"]], 0)
            return batch
        batch["input_ids"] = _pad([f["input_ids"] for f in feats], self.pad_token_id)
        batch["attention_mask"] = _pad([f["attention_mask"] for f in feats], 0)
        if self.use_token_type_ids and self.family != "seq2seq":
            batch["token_type_ids"] = _pad([f["token_type_ids"] for f in feats], 0)
        dtype = torch.float32 if task.is_regression else torch.long
        label = torch.tensor([f["label"] for f in feats], dtype=dtype)
        if self.family == "seq2seq":
            batch["labels"] = _pad([f["target_ids"] for f in feats], -100)
            batch["task_label"] = label
        else:
            batch["labels"] = label
        return batch

    def model_inputs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keys of ``batch`` that the model's ``forward`` takes."""
        return {k: v for k, v in batch.items() if k in _MODEL_INPUT_KEYS}

    def dataloader(
        self, split: str | datasets.Dataset, *, batch_size: int = 32, shuffle: bool = False, seed: int = 0
    ) -> torch.utils.data.DataLoader:
        """A ``DataLoader`` over a split with :meth:`collate`; a shuffled one
        draws its order from its own generator seeded with ``seed``."""
        import torch

        ds = self._dataset(split)
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        return torch.utils.data.DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, collate_fn=self.collate, generator=gen
        )

    # -- model calls -------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The training loss of a batch: cross-entropy (classification), MSE
        (regression), cross-entropy over each example's candidates (choice,
        encoder and decoder) or the sequence-to-sequence LM loss on the target
        words (T5)."""
        import torch.nn.functional as F

        batch = _to_device(batch, _device_of(model))
        if self.family == "seq2seq":
            return model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
            ).loss
        logits = model(**self.model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits
        if self.task.kind == "classification":
            return F.cross_entropy(logits.float(), batch["labels"])
        if self.task.kind == "regression":
            return F.mse_loss(logits.float().squeeze(-1), batch["labels"].float())
        scores, gold = _group(logits.float()[:, 0], batch["choice_counts"], batch["choice_gold"])
        gold_scores = scores.masked_fill(gold <= 0, float("-inf"))
        has_gold = gold.sum(-1) > 0
        per_example = scores.logsumexp(-1) - gold_scores.logsumexp(-1)
        return per_example[has_gold].mean() if bool(has_gold.any()) else scores.sum() * 0.0

    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Predictions for a batch: class indices (long), values (float,
        regression) or candidate indices (long, choice). T5 scores every
        label string (or candidate) by its summed log-likelihood and takes
        the best; it never generates freely."""
        import torch

        batch = _to_device(batch, _device_of(model))
        if self.family != "seq2seq":
            logits = model(**self.model_inputs({k: v for k, v in batch.items() if k != "labels"})).logits
            if self.task.kind == "classification":
                return logits.argmax(-1)
            if self.task.kind == "regression":
                return logits.float().squeeze(-1)
            scores, _ = _group(logits.float()[:, 0], batch["choice_counts"], batch["choice_gold"])
            return scores.argmax(-1)
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        b = input_ids.shape[0]
        if self.task.kind == "choice":
            counts = batch["choice_counts"]
            owner = torch.repeat_interleave(torch.arange(b, device=input_ids.device), counts)
            flat = _score_candidates(model, input_ids, mask, batch["choice_labels"], owner)
            scores, _ = _group(flat, counts, batch["choice_gold"])
            return scores.argmax(-1)
        words = _pad(self.label_word_ids, -100).to(input_ids.device)
        c = words.shape[0]
        owner = torch.arange(b, device=input_ids.device).repeat_interleave(c)
        flat = _score_candidates(model, input_ids, mask, words.repeat(b, 1), owner)
        best = flat.view(b, c).argmax(-1)
        if self.task.kind == "regression":
            values = torch.tensor(
                [float(self.task.parse_label_word(w)) for w in self.task.label_words], device=best.device
            )
            return values[best]
        return best

    def _dataset(self, split: str | datasets.Dataset | Sequence[Mapping[str, Any]]) -> datasets.Dataset:
        import datasets

        if isinstance(split, str):
            ds = self.splits.get(split)
            if ds is None:
                raise KeyError(f"no split {split!r} in this prepared task; it has {sorted(self.splits)}")
            return ds
        if not isinstance(split, datasets.Dataset):
            split = datasets.Dataset.from_list([dict(row) for row in split])
        feature_key = _choice_key(self.family) if self.task.kind == "choice" else "input_ids"
        if feature_key in split.column_names:
            return split
        return self.encode(split)

    def evaluate(
        self,
        model: nn.Module,
        split: str | datasets.Dataset | Sequence[Mapping[str, Any]] = "validation",
        *,
        batch_size: int = 64,
    ) -> dict[str, float]:
        """The task's metrics on a split (``"validation"``, ``"test"``, ...) or
        a dataset (raw or tokenized; a ``datasets.Dataset`` or a list of row
        dicts), primary metric first. The model runs in
        eval mode under ``torch.no_grad()``; each submodule's train/eval mode
        is restored afterwards."""
        import torch

        ds = self._dataset(split)
        if len(ds) == 0:
            raise DataError(f"cannot evaluate task {self.task.name} on an empty split")
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        preds: list[Any] = []
        try:
            with torch.no_grad():
                for start in range(0, len(ds), batch_size):
                    chunk = ds[start : start + batch_size]
                    rows = [dict(zip(chunk, values)) for values in zip(*chunk.values())]
                    preds.extend(self.predict(model, self.collate(rows)).cpu().tolist())
        finally:
            for module, was_training in modes:
                module.training = was_training
        return self.task.compute_metrics(preds, ds)


def _choice_key(family: str) -> str:
    return "choice_target_ids" if family == "seq2seq" else "choice_input_ids"


def _regroup(flat: Sequence[Any], counts: Sequence[int]) -> list[list[Any]]:
    out, i = [], 0
    for n in counts:
        out.append(list(flat[i : i + n]))
        i += n
    return out


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items()}


def _group(flat: torch.Tensor, counts: torch.Tensor, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-candidate values into ``(examples, max candidates)``, padded with
    ``-inf`` (scores) and 0 (gold)."""
    import torch

    b = counts.shape[0]
    width = int(counts.max()) if b else 0
    scores = torch.full((b, max(width, 1)), float("-inf"), dtype=flat.dtype, device=flat.device)
    gold_out = torch.zeros((b, max(width, 1)), dtype=gold.dtype, device=flat.device)
    offset = 0
    for i, n in enumerate(counts.tolist()):
        scores[i, :n] = flat[offset : offset + n]
        gold_out[i, :n] = gold[offset : offset + n]
        offset += n
    return scores, gold_out


def _score_candidates(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    owner: torch.Tensor,
    *,
    max_logits: int = 2**25,
) -> torch.Tensor:
    """Summed log-likelihood of each candidate target (rows of ``labels``,
    ``-100`` padded) given the input of example ``owner[i]``. The encoder runs
    once per example; the decoder in chunks that keep the logits under
    ``max_logits`` floats."""
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    get_encoder: Callable[[], Any] | None = getattr(inner_model(model), "get_encoder", None)
    hidden = None
    if get_encoder is not None:
        hidden = get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)[0]
    vocab = int(getattr(config_of(model), "vocab_size", 32_000) or 32_000)
    rows_per_chunk = max(1, max_logits // max(1, labels.shape[1] * vocab))
    out = []
    for start in range(0, labels.shape[0], rows_per_chunk):
        idx = owner[start : start + rows_per_chunk]
        lab = labels[start : start + rows_per_chunk]
        if hidden is not None:
            res = model(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden[idx]),
                attention_mask=attention_mask[idx],
                labels=lab,
            )
        else:
            res = model(input_ids=input_ids[idx], attention_mask=attention_mask[idx], labels=lab)
        logp = torch.log_softmax(res.logits.float(), dim=-1)
        valid = lab != -100
        tok = logp.gather(-1, lab.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        out.append((tok * valid).sum(-1))
    return torch.cat(out) if out else torch.zeros(0, device=input_ids.device)


def prepare_text_task(
    task: TextTask,
    splits: Mapping[str, datasets.Dataset],
    tokenizer: Any,
    model: nn.Module,
    *,
    max_length: int | None = None,
) -> PreparedTextTask:
    """Tokenize ``splits`` (as :meth:`TextTask.load` returns them) for ``model``
    and return a :class:`PreparedTextTask`.

    ``max_length`` defaults to the task's (:attr:`TextTask.max_length`).
    Encoders and decoders read the task's text (pair); T5 reads
    ``task.t5_text`` and is trained on ``task.t5_target``. A decoder's
    ``model.config.pad_token_id`` is set to the padding id used here (the
    tokenizer's pad token, else the model's, else EOS).
    """
    family = model_family(model)
    config = config_of(model)
    length = int(max_length or task.max_length)
    if length < 2:
        raise SpecError(f"max_length must be at least 2 tokens, got {max_length!r}")
    pad = getattr(tokenizer, "pad_token_id", None)
    if family == "decoder":
        if pad is None:
            pad = getattr(config, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        if pad is None:
            raise SpecError(
                "the decoder's tokenizer has no pad or EOS token and its config no pad_token_id; "
                "set tokenizer.pad_token (e.g. to tokenizer.eos_token)"
            )
        if getattr(config, "pad_token_id", None) != pad:
            config.pad_token_id = pad
    elif pad is None:
        raise SpecError(
            f"the tokenizer {type(tokenizer).__name__} has no pad token; set tokenizer.pad_token "
            "before preparing the task"
        )
    if family != "seq2seq" and int(getattr(config, "num_labels", 0)) != task.num_labels:
        raise SpecError(
            f"the model's head has {getattr(config, 'num_labels', None)} output(s) but task {task.name} "
            f"needs {task.num_labels}; build it with task.build_model(config) or task.load_model(path) "
            "(bipeft_core.tasks.load_task_model(path, task))"
        )
    use_tt = (
        family == "encoder"
        and int(getattr(config, "type_vocab_size", 0) or 0) >= 2
        and "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    )
    prepared = PreparedTextTask(
        task=task,
        family=family,
        tokenizer=tokenizer,
        max_length=length,
        train=None,
        validation=None,
        test=None,
        pad_token_id=int(pad),
        use_token_type_ids=use_tt,
        label_word_ids=[],
    )
    if family == "seq2seq" and task.kind != "choice":
        prepared.label_word_ids = prepared._targets(list(task.label_words))
    unknown = set(splits) - {"train", "validation", "test"}
    if unknown:
        raise DataError(f"unknown split(s) {sorted(unknown)}; a task has 'train', 'validation' and 'test'")
    for name, ds in splits.items():
        setattr(prepared, name, prepared.encode(ds, drop_unlabelled=name == "train"))
    return prepared
