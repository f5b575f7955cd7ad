"""The built-in tasks: GLUE and SuperGLUE.

Registered through ``bipeft_register_tasks`` as ``glue/<name>`` (cola, sst2,
mrpc, qqp, stsb, mnli, qnli, rte) and ``superglue/<name>`` (boolq, cb, copa,
multirc, record, rte, wic). Each reads the official file format from
``<data_dir>/glue/<TASK>/`` or ``<data_dir>/superglue/<TASK>/`` (see
``docs/tasks.md``), splits by the S3Delta protocol and scores with the
metric scripts shipped in ``bipeft_plugins.metrics``.

Label orders follow the Hugging Face ``glue`` / ``super_glue`` datasets, so
local files and the hub give the same label indices. T5 formats follow T5's
GLUE preprocessing (``"rte sentence1: ... sentence2: ..."``), with the long
context last where a task has one (BoolQ, MultiRC, ReCoRD) so that
truncation keeps the question.
"""

from __future__ import annotations

from bipeft_core.hookspecs import hookimpl
from bipeft_core.tasks import Task
from bipeft_plugins.metrics import metric_path
from bipeft_plugins.tasks._formats import (
    COPATask,
    GlueTask,
    MultiRCTask,
    ReCoRDTask,
    SuperGlueTask,
    WiCTask,
)

__all__ = [
    "COPATask",
    "GLUE",
    "GlueTask",
    "MultiRCTask",
    "ReCoRDTask",
    "SUPERGLUE",
    "SuperGlueTask",
    "TASKS",
    "WiCTask",
    "bipeft_register_tasks",
]

_GLUE_METRIC = str(metric_path("glue"))
_SUPERGLUE_METRIC = str(metric_path("super_glue"))
_NLI2 = ("entailment", "not_entailment")
_BOOL = ("False", "True")


def _glue(short: str, **kw: object) -> GlueTask:
    kw.setdefault("t5_prefix", short)
    return GlueTask(
        name=f"glue/{short}",
        benchmark="glue",
        metric=_GLUE_METRIC,
        metric_config=short,
        max_length=128,
        hub=("nyu-mll/glue", short),
        **kw,  # type: ignore[arg-type]
    )


def _superglue(cls: type[SuperGlueTask], short: str, **kw: object) -> SuperGlueTask:
    kw.setdefault("t5_prefix", short)
    return cls(
        name=f"superglue/{short}",
        metric=_SUPERGLUE_METRIC,
        metric_config=short,
        hub=("aps/super_glue", short),
        **kw,  # type: ignore[arg-type]
    )


GLUE: tuple[Task, ...] = (
    _glue(
        "cola",
        folder="CoLA",
        label_names=("unacceptable", "acceptable"),
        input_fields=("sentence",),
        primary_metric="matthews_correlation",
        positions={"label": 1, "sentence": 3},
        file_format="GLUE TSV without a header row: source, label (0/1), author's mark, sentence; no quoting",
        description="Corpus of Linguistic Acceptability: is the sentence grammatical?",
    ),
    _glue(
        "sst2",
        folder="SST-2",
        label_names=("negative", "positive"),
        input_fields=("sentence",),
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
        label_names=_NLI2,
        input_fields=("question", "sentence"),
        columns={"question": "question", "sentence": "sentence", "label": "label"},
        split_protocol="holdout",
        description="Question NLI (from SQuAD): does the sentence answer the question?",
    ),
    _glue(
        "rte",
        folder="RTE",
        label_names=_NLI2,
        input_fields=("sentence1", "sentence2"),
        columns={"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
        description="Recognizing Textual Entailment (GLUE copy).",
    ),
)

SUPERGLUE: tuple[Task, ...] = (
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
        folder="RTE",
        label_names=_NLI2,
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

#: Every built-in task.
TASKS: tuple[Task, ...] = GLUE + SUPERGLUE


@hookimpl
def bipeft_register_tasks(registry: object) -> None:
    """Register the built-in GLUE and SuperGLUE tasks."""
    for task in TASKS:
        registry.add(task)  # type: ignore[attr-defined]
