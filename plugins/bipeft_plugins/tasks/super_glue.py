"""The SuperGLUE tasks: the reader of SuperGLUE's JSON Lines files
(:class:`SuperGlueTask`), the task classes with their own structure (WiC,
COPA, MultiRC, ReCoRD) and the seven task definitions, with their folders,
labels, metrics, split protocols and short names.

Label orders follow the Hugging Face ``super_glue`` dataset, so local files
and the hub give the same label indices. T5 formats follow T5's
preprocessing, with the long context last where a task has one (BoolQ,
MultiRC, ReCoRD) so that truncation keeps the question.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from bipeft_core.errors import DataError
from bipeft_core.tasks import TaskKind
from bipeft_plugins.metrics import metric_path
from bipeft_plugins.tasks._formats import DATA_LAYOUT, NLI2, class_index, format_help
from bipeft_plugins.tasks.readers import read_jsonl
from bipeft_plugins.tasks.text import TextTask

__all__ = [
    "SUPERGLUE",
    "SUPERGLUE_TASKS",
    "COPATask",
    "MultiRCTask",
    "ReCoRDTask",
    "SuperGlueTask",
    "WiCTask",
]


def _super_glue_files() -> dict[str, str]:
    return {"train": "train.jsonl", "validation": "val.jsonl"}


@attrs.frozen(kw_only=True)
class SuperGlueTask(TextTask):
    """A SuperGLUE classification task read from its JSONL files (one object
    per line with the text fields, ``label`` and ``idx``)."""

    file_format: str = "SuperGLUE JSON Lines: one object per line"
    benchmark: str = "superglue"
    files: Mapping[str, str] = attrs.field(factory=_super_glue_files)
    primary_metric: str = "accuracy"
    max_length: int = 256
    data_layout: str = DATA_LAYOUT

    def required_keys(self) -> list[str]:
        """The keys every JSON object of the task's files must have."""
        return [*self.input_fields, "label"]

    def read_split(self, path: Path, split: str) -> list[dict[str, Any]]:
        expected = format_help(self, path)
        objs = read_jsonl(path, keys=self.required_keys(), expected=expected)
        return [self.convert(obj, n, f"{str(path)!r} line {n + 1}") for n, obj in enumerate(objs)]

    def convert(self, obj: Mapping[str, Any], n: int, where: str) -> dict[str, Any]:
        """The row of object number ``n`` (0-based) of a file; ``where``
        names its line for errors."""
        row: dict[str, Any] = {f: obj[f] for f in self.input_fields}
        row["label"] = class_index(self, obj["label"], where)
        row["idx"] = int(obj.get("idx", n))
        return row


@attrs.frozen(kw_only=True)
class WiCTask(SuperGlueTask):
    """WiC: does ``word`` mean the same in both sentences? The encoder reads
    ``"<word>: <sentence1>"`` paired with ``sentence2``."""

    def encoder_text(self, example: Mapping[str, Any]) -> tuple[str, str | None]:
        return f"{example['word']}: {example['sentence1']}", str(example["sentence2"])


@attrs.frozen(kw_only=True)
class COPATask(SuperGlueTask):
    """COPA: which of two choices is the cause (or effect) of the premise.
    A choice task: each choice is scored, the best is the prediction."""

    kind: TaskKind = "choice"
    label_names: tuple[str, ...] = ("choice1", "choice2")
    input_fields: tuple[str, ...] = ("premise", "choice1", "choice2", "question")
    t5_fields: tuple[str, ...] = ("choice1", "choice2", "premise", "question")

    def features(self) -> Any:
        import datasets

        cols: dict[str, Any] = {f: datasets.Value("string") for f in self.input_fields}
        cols["label"] = datasets.ClassLabel(names=list(self.label_names))
        cols["idx"] = datasets.Value("int64")
        return datasets.Features(cols)

    def convert(self, obj: Mapping[str, Any], n: int, where: str) -> dict[str, Any]:
        row = super().convert(obj, n, where)
        if row["question"] not in ("cause", "effect"):
            raise DataError(f"{where}: COPA question {row['question']!r} must be 'cause' or 'effect'")
        return row

    def choices(self, example: Mapping[str, Any]) -> list[str]:
        return [str(example["choice1"]), str(example["choice2"])]

    def gold_choices(self, example: Mapping[str, Any]) -> list[int]:
        label = example.get("label")
        return [] if label is None or int(label) < 0 else [int(label)]

    def choice_text(self, example: Mapping[str, Any], choice: str) -> tuple[str, str | None]:
        ask = "What was the cause?" if example["question"] == "cause" else "What happened as a result?"
        return str(example["premise"]), f"{ask} {choice}"


@attrs.frozen(kw_only=True)
class MultiRCTask(SuperGlueTask):
    """MultiRC: one row per answer option (is it correct?), read from the
    nested paragraph → questions → answers JSONL. Halved by paragraph."""

    label_names: tuple[str, ...] = ("False", "True")
    input_fields: tuple[str, ...] = ("paragraph", "question", "answer")
    t5_fields: tuple[str, ...] = ("question", "answer", "paragraph")
    group_by: str | None = "paragraph_idx"

    def features(self) -> Any:
        import datasets

        cols: dict[str, Any] = {f: datasets.Value("string") for f in self.input_fields}
        cols["label"] = datasets.ClassLabel(names=list(self.label_names))
        for key in ("idx", "paragraph_idx", "question_idx", "answer_idx"):
            cols[key] = datasets.Value("int64")
        return datasets.Features(cols)

    def read_split(self, path: Path, split: str) -> list[dict[str, Any]]:
        expected = (
            "Each line is a paragraph: {idx, passage: {text, questions: [{question, idx, "
            "answers: [{text, idx, label}]}]}}. " + format_help(self, path)
        )
        objs = read_jsonl(path, keys=["idx", "passage"], expected=expected)
        rows: list[dict[str, Any]] = []
        for lineno, obj in enumerate(objs, start=1):
            where = f"{str(path)!r} line {lineno}"
            try:
                passage = obj["passage"]
                text = passage["text"]
                for q in passage["questions"]:
                    for a in q["answers"]:
                        rows.append(
                            {
                                "paragraph": text,
                                "question": q["question"],
                                "answer": a["text"],
                                "label": class_index(self, a["label"], where),
                                "idx": len(rows),
                                "paragraph_idx": int(obj["idx"]),
                                "question_idx": int(q["idx"]),
                                "answer_idx": int(a["idx"]),
                            }
                        )
            except (KeyError, TypeError) as e:
                raise DataError(f"{where} lacks the field {e} of the MultiRC structure. {expected}") from None
        return rows

    def from_hub(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "paragraph": row["paragraph"],
            "question": row["question"],
            "answer": row["answer"],
            "label": int(row["label"]),
            "idx": int(row["idx"]["answer"]),
            "paragraph_idx": int(row["idx"]["paragraph"]),
            "question_idx": int(row["idx"]["question"]),
            "answer_idx": int(row["idx"]["answer"]),
        }

    def encoder_text(self, example: Mapping[str, Any]) -> tuple[str, str | None]:
        return str(example["paragraph"]), f"{example['question']} {example['answer']}"

    def metric_inputs(self, predictions: Sequence[Any], rows: Any) -> tuple[list[Any], list[Any]]:
        preds = [
            {
                "idx": {"paragraph": int(p), "question": int(q), "answer": int(a)},
                "prediction": int(pred),
            }
            for pred, p, q, a in zip(
                predictions, rows["paragraph_idx"], rows["question_idx"], rows["answer_idx"]
            )
        ]
        return preds, [int(x) for x in rows["label"]]


@attrs.frozen(kw_only=True)
class ReCoRDTask(SuperGlueTask):
    """ReCoRD: fill ``@placeholder`` in the query with one of the passage's
    entities. One row per query; a choice task over the entities. The
    passage's ``@highlight`` markers become ``- `` (as the hub's loader does)."""

    kind: TaskKind = "choice"
    input_fields: tuple[str, ...] = ("passage", "query")
    max_length: int = 512
    split_protocol: Literal["halve", "holdout"] = "holdout"

    def features(self) -> Any:
        import datasets

        return datasets.Features(
            {
                "passage": datasets.Value("string"),
                "query": datasets.Value("string"),
                "entities": datasets.Sequence(datasets.Value("string")),
                "answers": datasets.Sequence(datasets.Value("string")),
                "idx": datasets.Value("int64"),
                "passage_idx": datasets.Value("int64"),
                "query_idx": datasets.Value("int64"),
            }
        )

    def read_split(self, path: Path, split: str) -> list[dict[str, Any]]:
        expected = (
            "Each line is a passage: {idx, passage: {text, entities: [{start, end}]}, "
            "qas: [{idx, query, answers: [{start, end, text}]}]}. " + format_help(self, path)
        )
        objs = read_jsonl(path, keys=["idx", "passage", "qas"], expected=expected)
        rows: list[dict[str, Any]] = []
        for lineno, obj in enumerate(objs, start=1):
            where = f"{str(path)!r} line {lineno}"
            try:
                raw_text = obj["passage"]["text"]
                entities = sorted({raw_text[e["start"] : e["end"] + 1] for e in obj["passage"]["entities"]})
                text = raw_text.replace("@highlight\n", "- ")
                for qa in obj["qas"]:
                    rows.append(
                        {
                            "passage": text,
                            "query": qa["query"],
                            "entities": entities,
                            "answers": sorted({a["text"] for a in qa.get("answers", [])}),
                            "idx": len(rows),
                            "passage_idx": int(obj["idx"]),
                            "query_idx": int(qa["idx"]),
                        }
                    )
            except (KeyError, TypeError) as e:
                raise DataError(f"{where} lacks the field {e} of the ReCoRD structure. {expected}") from None
        return rows

    def from_hub(self, row: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "passage": row["passage"],
            "query": row["query"],
            "entities": list(row["entities"]),
            "answers": list(row["answers"]),
            "idx": int(row["idx"]["query"]),
            "passage_idx": int(row["idx"]["passage"]),
            "query_idx": int(row["idx"]["query"]),
        }

    def choices(self, example: Mapping[str, Any]) -> list[str]:
        return [str(e) for e in example["entities"]]

    def gold_choices(self, example: Mapping[str, Any]) -> list[int]:
        answers = set(example["answers"])
        return [i for i, e in enumerate(example["entities"]) if e in answers]

    def choice_text(self, example: Mapping[str, Any], choice: str) -> tuple[str, str | None]:
        return str(example["passage"]), str(example["query"]).replace("@placeholder", choice)

    def t5_text(self, example: Mapping[str, Any]) -> str:
        entities = ", ".join(example["entities"])
        return f"record query: {example['query']} entities: {entities} passage: {example['passage']}"

    def t5_target(self, example: Mapping[str, Any]) -> str:
        gold = self.gold_choices(example)
        if gold:
            return self.choices(example)[gold[0]]
        return str(example["answers"][0]) if example["answers"] else ""

    def metric_inputs(self, predictions: Sequence[Any], rows: Any) -> tuple[list[Any], list[Any]]:
        preds, refs = [], []
        for pred, ents, answers, p, q in zip(
            predictions, rows["entities"], rows["answers"], rows["passage_idx"], rows["query_idx"]
        ):
            idx = {"passage": int(p), "query": int(q)}
            text = ents[int(pred)] if ents and 0 <= int(pred) < len(ents) else ""
            preds.append({"idx": idx, "prediction_text": text})
            refs.append({"idx": dict(idx), "answers": list(answers)})
        return preds, refs


_SUPERGLUE_METRIC = str(metric_path("super_glue"))
_BOOL = ("False", "True")


def _superglue(cls: type[SuperGlueTask], short: str, *, bare: bool = True, **kw: Any) -> SuperGlueTask:
    """The SuperGLUE task ``superglue/<short>``; a bare ``short`` names it
    too unless ``bare=False`` (a name GLUE has as well: the GLUE task keeps it)."""
    kw.setdefault("t5_prefix", short)
    return cls(
        name=f"superglue/{short}",
        aliases=(short,) if bare else (),
        metric=_SUPERGLUE_METRIC,
        metric_config=short,
        hub=("aps/super_glue", short),
        **kw,
    )


#: The SuperGLUE tasks.
SUPERGLUE: tuple[SuperGlueTask, ...] = (
    _superglue(
        SuperGlueTask,
        "boolq",
        folder="BoolQ",
        label_names=_BOOL,
        input_fields=("question", "passage"),
        description="Boolean Questions: yes/no question about a passage.",
    ),
    _superglue(
        SuperGlueTask,
        "cb",
        folder="CB",
        label_names=("entailment", "contradiction", "neutral"),
        input_fields=("premise", "hypothesis"),
        t5_fields=("hypothesis", "premise"),
        description="CommitmentBank: three-way entailment (reported with macro F1 beside accuracy).",
    ),
    _superglue(
        COPATask,
        "copa",
        folder="COPA",
        description="Choice of Plausible Alternatives: the more plausible cause or effect.",
    ),
    _superglue(
        MultiRCTask,
        "multirc",
        folder="MultiRC",
        primary_metric="f1_a",
        description="Multi-Sentence Reading Comprehension: is each answer option correct?",
    ),
    _superglue(
        ReCoRDTask,
        "record",
        folder="ReCoRD",
        primary_metric="f1",
        description="Reading Comprehension with Commonsense Reasoning: the entity that fills the query.",
    ),
    _superglue(
        SuperGlueTask,
        "rte",
        bare=False,
        folder="RTE",
        label_names=NLI2,
        input_fields=("premise", "hypothesis"),
        t5_fields=("hypothesis", "premise"),
        description="Recognizing Textual Entailment (SuperGLUE copy).",
    ),
    _superglue(
        WiCTask,
        "wic",
        folder="WiC",
        label_names=_BOOL,
        input_fields=("word", "sentence1", "sentence2"),
        t5_fields=("sentence1", "sentence2", "word"),
        description="Words in Context: does the word mean the same in both sentences?",
    ),
)

#: The SuperGLUE task names (registry keys ``superglue/<name>``).
SUPERGLUE_TASKS: tuple[str, ...] = tuple(t.name.partition("/")[2] for t in SUPERGLUE)
