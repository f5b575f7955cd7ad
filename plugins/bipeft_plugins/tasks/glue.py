"""The GLUE tasks: the reader of GLUE's TSV files (:class:`GlueTask`) and the
eight task definitions, with their folders, columns, labels, metrics, split
protocols, short names and default epochs.

Label orders follow the Hugging Face ``glue`` dataset, so local files and the
hub give the same label indices. T5 formats follow T5's GLUE preprocessing
(``"rte sentence1: ... sentence2: ..."``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from bipeft_core.errors import DataError
from bipeft_plugins.metrics import metric_path
from bipeft_plugins.tasks._formats import DATA_LAYOUT, NLI2, class_index, format_help
from bipeft_plugins.tasks.readers import read_tsv
from bipeft_plugins.tasks.text import TextTask

__all__ = ["GLUE", "GLUE_TASKS", "GlueTask"]


def _glue_files() -> dict[str, str]:
    return {"train": "train.tsv", "validation": "dev.tsv"}


@attrs.frozen(kw_only=True)
class GlueTask(TextTask):
    """A GLUE task read from its TSV files.

    ``columns`` maps each field of the task (the text fields and ``label``)
    to its header column. Headerless files (CoLA) give ``positions`` instead:
    field → column number.
    """

    columns: Mapping[str, str] = attrs.field(factory=dict)
    positions: Mapping[str, int] = attrs.field(factory=dict)
    benchmark: str = "glue"
    files: Mapping[str, str] = attrs.field(factory=_glue_files)
    primary_metric: str = "accuracy"
    file_format: str = "GLUE TSV: tab-separated, a header row, no quoting"
    data_layout: str = DATA_LAYOUT

    def read_split(self, path: Path, split: str) -> list[dict[str, Any]]:
        help_text = format_help(self, path)
        out: list[dict[str, Any]] = []
        if self.positions:
            width = max(self.positions.values()) + 1
            raw = read_tsv(path, header=False, n_columns=width, expected=help_text)
            records = [{field: row[i] for field, i in self.positions.items()} for row in raw]  # type: ignore[index]
        else:
            raw = read_tsv(path, columns=list(self.columns.values()), expected=help_text)
            records = [{field: row[col] for field, col in self.columns.items()} for row in raw]  # type: ignore[index]
        for n, rec in enumerate(records):
            row: dict[str, Any] = {f: rec[f] for f in self.input_fields}
            where = f"{str(path)!r} data row {n + 1}"  # 1-based, as a reader counts
            if self.kind == "regression":
                try:
                    row["label"] = float(rec["label"])
                except ValueError:
                    raise DataError(
                        f"{where}: score {rec['label']!r} is not a number; task {self.name} "
                        "needs a float score column. " + help_text
                    ) from None
            else:
                row["label"] = class_index(self, rec["label"], where)
            row["idx"] = n
            out.append(row)
        return out


_GLUE_METRIC = str(metric_path("glue"))


def _glue(short: str, **kw: Any) -> GlueTask:
    """The GLUE task ``glue/<short>``; a bare ``short`` names it too."""
    kw.setdefault("t5_prefix", short)
    return GlueTask(
        name=f"glue/{short}",
        aliases=(short,),
        metric=_GLUE_METRIC,
        metric_config=short,
        max_length=128,
        hub=("nyu-mll/glue", short),
        **kw,
    )


#: The GLUE tasks, in the order of the GLUE paper.
GLUE: tuple[GlueTask, ...] = (
    _glue(
        "cola",
        folder="CoLA",
        label_names=("unacceptable", "acceptable"),
        input_fields=("sentence",),
        primary_metric="matthews_correlation",
        epochs=3,
        positions={"label": 1, "sentence": 3},
        file_format="GLUE TSV without a header row: source, label (0/1), author's mark, sentence; no quoting",
        description="Corpus of Linguistic Acceptability: is the sentence grammatical?",
    ),
    _glue(
        "sst2",
        folder="SST-2",
        label_names=("negative", "positive"),
        input_fields=("sentence",),
        epochs=1,
        columns={"sentence": "sentence", "label": "label"},
        split_protocol="holdout",
        description="Stanford Sentiment Treebank: sentence polarity.",
    ),
    _glue(
        "mrpc",
        folder="MRPC",
        label_names=("not_equivalent", "equivalent"),
        input_fields=("sentence1", "sentence2"),
        primary_metric="f1",
        epochs=5,
        columns={"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
        description="Microsoft Research Paraphrase Corpus: are the sentences paraphrases?",
    ),
    _glue(
        "qqp",
        folder="QQP",
        label_names=("not_duplicate", "duplicate"),
        input_fields=("question1", "question2"),
        primary_metric="f1",
        columns={"question1": "question1", "question2": "question2", "label": "is_duplicate"},
        split_protocol="holdout",
        description="Quora Question Pairs: do the questions ask the same?",
    ),
    _glue(
        "stsb",
        folder="STS-B",
        kind="regression",
        input_fields=("sentence1", "sentence2"),
        primary_metric="pearson",
        epochs=3,
        regression_grid=(0.0, 5.0, 0.2),
        columns={"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
        description="Semantic Textual Similarity Benchmark: similarity score 0-5.",
    ),
    _glue(
        "mnli",
        folder="MNLI",
        label_names=("entailment", "neutral", "contradiction"),
        input_fields=("premise", "hypothesis"),
        t5_fields=("hypothesis", "premise"),
        columns={"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
        files={"train": "train.tsv", "validation": "dev_matched.tsv"},
        hub_splits={"train": "train", "validation": "validation_matched"},
        split_protocol="holdout",
        description="Multi-Genre NLI (test = validation_matched; mismatched unused).",
    ),
    _glue(
        "qnli",
        folder="QNLI",
        label_names=NLI2,
        input_fields=("question", "sentence"),
        columns={"question": "question", "sentence": "sentence", "label": "label"},
        split_protocol="holdout",
        description="Question NLI (from SQuAD): does the sentence answer the question?",
    ),
    _glue(
        "rte",
        folder="RTE",
        label_names=NLI2,
        input_fields=("sentence1", "sentence2"),
        epochs=5,
        columns={"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
        description="Recognizing Textual Entailment (GLUE copy).",
    ),
)

#: The GLUE task names (registry keys ``glue/<name>``), in the order of the GLUE paper.
GLUE_TASKS: tuple[str, ...] = tuple(t.name.partition("/")[2] for t in GLUE)
