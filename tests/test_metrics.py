"""The metric scripts shipped in bipeft_plugins.metrics, through evaluate's API,
against scikit-learn and scipy."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings

import evaluate
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from bipeft_plugins.metrics import METRICS, METRICS_DIR, load_metric, metric_path
from bipeft_plugins.metrics import _functions as fn
from hypothesis import given
from hypothesis import strategies as st

from bipeft_core.errors import UnknownNameError

# -- strategies ------------------------------------------------------------------------


@st.composite
def label_pairs(draw, *, n_classes: int = 2, min_size: int = 1, max_size: int = 60):
    """Predictions and references of one length, with classes 0..n_classes-1."""
    n = draw(st.integers(min_size, max_size))
    labels = st.integers(0, n_classes - 1)
    return draw(st.lists(labels, min_size=n, max_size=n)), draw(st.lists(labels, min_size=n, max_size=n))


@st.composite
def value_pairs(draw, *, min_size: int = 2, max_size: int = 60):
    """Two float lists of one length; values on a coarse grid, so ties happen."""
    n = draw(st.integers(min_size, max_size))
    coarse = st.integers(-50, 50).map(lambda k: k / 4)
    fine = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    values = draw(st.sampled_from([coarse, fine]))
    return draw(st.lists(values, min_size=n, max_size=n)), draw(st.lists(values, min_size=n, max_size=n))


@st.composite
def batch_cuts(draw, n: int):
    """Cut points splitting n rows into add_batch calls."""
    cuts = draw(st.lists(st.integers(0, n), max_size=4))
    return sorted(set(cuts))


def _through_evaluate(module, preds, refs, cuts, **kwargs):
    bounds = [0, *cuts, len(preds)]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            module.add_batch(predictions=preds[a:b], references=refs[a:b])
    return module.compute(**kwargs)


def _same(ours: float, theirs: float, tol: float = 1e-9) -> None:
    if math.isnan(theirs):
        assert math.isnan(ours), f"expected NaN, got {ours}"
    else:
        assert ours == pytest.approx(theirs, abs=tol), (ours, theirs)


@pytest.fixture(scope="module")
def modules():
    return {name: load_metric(name) for name in ("accuracy", "f1", "matthews_correlation", "pearsonr", "spearmanr")}


# -- property tests against scikit-learn / scipy ---------------------------------------------


@given(data=st.data())
def test_accuracy_matches_sklearn(modules, data):
    preds, refs = data.draw(label_pairs(n_classes=3))
    cuts = data.draw(batch_cuts(len(preds)))
    out = _through_evaluate(modules["accuracy"], preds, refs, cuts)
    _same(out["accuracy"], sklearn.metrics.accuracy_score(refs, preds))


@given(data=st.data(), average=st.sampled_from(["binary", "macro", "micro", "weighted"]))
def test_f1_matches_sklearn(modules, data, average):
    n_classes = 2 if average == "binary" else 4
    preds, refs = data.draw(label_pairs(n_classes=n_classes))
    cuts = data.draw(batch_cuts(len(preds)))
    out = _through_evaluate(modules["f1"], preds, refs, cuts, average=average)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = sklearn.metrics.f1_score(refs, preds, average=average, zero_division=0.0)
    _same(out["f1"], expected)


@given(data=st.data(), n_classes=st.integers(2, 4))
def test_matthews_matches_sklearn(modules, data, n_classes):
    preds, refs = data.draw(label_pairs(n_classes=n_classes))
    cuts = data.draw(batch_cuts(len(preds)))
    out = _through_evaluate(modules["matthews_correlation"], preds, refs, cuts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = sklearn.metrics.matthews_corrcoef(refs, preds)
    _same(out["matthews_correlation"], expected)


@given(data=st.data())
def test_pearson_matches_scipy(modules, data):
    preds, refs = data.draw(value_pairs())
    cuts = data.draw(batch_cuts(len(preds)))
    out = _through_evaluate(modules["pearsonr"], preds, refs, cuts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = float(scipy.stats.pearsonr(preds, refs)[0])
    _same(out["pearsonr"], expected, tol=1e-7)


@given(data=st.data())
def test_spearman_matches_scipy(modules, data):
    preds, refs = data.draw(value_pairs())
    cuts = data.draw(batch_cuts(len(preds)))
    out = _through_evaluate(modules["spearmanr"], preds, refs, cuts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = float(scipy.stats.spearmanr(preds, refs)[0])
    _same(out["spearmanr"], expected, tol=1e-7)


@given(values=st.lists(st.integers(-5, 5), min_size=1, max_size=40))
def test_rankdata_matches_scipy(values):
    np.testing.assert_allclose(fn.rankdata(values), scipy.stats.rankdata(values, method="average"))


@given(data=st.data())
def test_glue_configs_match_sklearn_and_scipy(data):
    preds, refs = data.draw(label_pairs(n_classes=2, min_size=2))
    mrpc = load_metric("glue", "mrpc").compute(predictions=preds, references=refs)
    assert list(mrpc) == ["f1", "accuracy"]  # the paper's metric first
    cola = load_metric("glue/cola").compute(predictions=preds, references=refs)
    assert list(cola) == ["matthews_correlation"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same(mrpc["f1"], sklearn.metrics.f1_score(refs, preds, zero_division=0.0))
        _same(mrpc["accuracy"], sklearn.metrics.accuracy_score(refs, preds))
        _same(cola["matthews_correlation"], sklearn.metrics.matthews_corrcoef(refs, preds))
    xs, ys = data.draw(value_pairs())
    stsb = load_metric("glue", "stsb").compute(predictions=xs, references=ys)
    assert list(stsb) == ["pearson", "spearmanr"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same(stsb["pearson"], float(scipy.stats.pearsonr(xs, ys)[0]), tol=1e-7)
        _same(stsb["spearmanr"], float(scipy.stats.spearmanr(xs, ys)[0]), tol=1e-7)


@pytest.mark.parametrize("config", ["sst2", "mnli", "qnli", "rte"])
def test_glue_accuracy_configs(config):
    out = load_metric("glue", config).compute(predictions=[0, 1, 2, 1], references=[0, 1, 1, 1])
    assert out == {"accuracy": 0.75}


@given(data=st.data())
def test_super_glue_cb_is_accuracy_then_macro_f1(data):
    preds, refs = data.draw(label_pairs(n_classes=3))
    out = load_metric("super_glue", "cb").compute(predictions=preds, references=refs)
    assert list(out) == ["accuracy", "f1"]
    _same(out["accuracy"], sklearn.metrics.accuracy_score(refs, preds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same(out["f1"], sklearn.metrics.f1_score(refs, preds, average="macro", zero_division=0.0))


@st.composite
def multirc_rows(draw):
    """MultiRC answer rows: (paragraph, question, answer idx, prediction, label)."""
    rows = []
    answer = 0
    for p in range(draw(st.integers(1, 3))):
        for q in range(draw(st.integers(1, 3))):
            for _ in range(draw(st.integers(1, 4))):
                rows.append((p, q, answer, draw(st.integers(0, 1)), draw(st.integers(0, 1))))
                answer += 1
    return rows


@given(rows=multirc_rows())
def test_super_glue_multirc_matches_sklearn(rows):
    preds = [{"idx": {"paragraph": p, "question": q, "answer": a}, "prediction": y} for p, q, a, y, _ in rows]
    refs = [label for *_, label in rows]
    module = load_metric("super_glue/multirc")
    module.add_batch(predictions=preds[: len(preds) // 2], references=refs[: len(refs) // 2])
    module.add_batch(predictions=preds[len(preds) // 2 :], references=refs[len(refs) // 2 :])
    out = module.compute()
    assert list(out) == ["f1_a", "exact_match", "f1_m"]
    groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for p, q, _, y, label in rows:
        groups.setdefault((p, q), []).append((y, label))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f1_m = np.mean(
            [sklearn.metrics.f1_score([b for _, b in g], [a for a, _ in g], average="macro") for g in groups.values()]
        )
        f1_a = sklearn.metrics.f1_score(refs, [y for _, _, _, y, _ in rows], zero_division=0.0)
    em = np.mean([all(a == b for a, b in g) for g in groups.values()])
    _same(out["f1_a"], f1_a)
    _same(out["exact_match"], float(em))
    _same(out["f1_m"], float(f1_m))


def test_super_glue_record_f1_and_exact_match():
    idx = [{"passage": 0, "query": i} for i in range(3)]
    preds = [
        {"idx": idx[0], "prediction_text": "The Eiffel Tower!"},  # exact after normalising
        {"idx": idx[1], "prediction_text": "Paris France"},  # half the tokens of 'Paris'
        {"idx": idx[2], "prediction_text": "London"},  # wrong
    ]
    refs = [
        {"idx": idx[0], "answers": ["eiffel tower", "Tower"]},
        {"idx": idx[1], "answers": ["Paris"]},
        {"idx": idx[2], "answers": ["Berlin"]},
    ]
    out = load_metric("super_glue", "record").compute(predictions=preds, references=refs)
    assert list(out) == ["f1", "exact_match"]
    assert out["exact_match"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx((1.0 + 2 * 0.5 * 1.0 / 1.5 + 0.0) / 3)


def test_normalize_answer():
    assert fn.normalize_answer("  The  Cat's, a   hat! ") == "cats hat"


@pytest.mark.parametrize("config", ["boolq", "copa", "rte", "wic"])
def test_super_glue_accuracy_configs(config):
    out = load_metric("super_glue", config).compute(predictions=[1, 1, 0], references=[1, 0, 0])
    assert out == {"accuracy": pytest.approx(2 / 3)}


# -- loading ------------------------------------------------------------------------------


def test_every_shipped_script_loads_through_evaluate_load():
    for name in METRICS:
        path = metric_path(name)
        assert path.parent == METRICS_DIR and path.is_file()
        config = {"glue": "rte", "super_glue": "rte"}.get(name)
        module = evaluate.load(str(path), config, keep_in_memory=True)
        assert isinstance(module, evaluate.EvaluationModule)
        assert module.name == name


def test_aliases_and_unknown_names():
    assert metric_path("pearson") == METRICS_DIR / "pearsonr.py"
    assert metric_path("MCC") == METRICS_DIR / "matthews_correlation.py"
    assert metric_path("superglue") == METRICS_DIR / "super_glue.py"
    with pytest.raises(UnknownNameError, match="bleu.*accuracy, f1"):
        metric_path("bleu")


def test_unknown_config_names_the_known_ones():
    with pytest.raises(KeyError, match="mrcp.*mrpc"):
        load_metric("glue", "mrcp")
    with pytest.raises(KeyError, match="wsc.*multirc"):
        load_metric("super_glue", "wsc")


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="same length"):
        fn.accuracy([1, 0], [1])


def test_loads_offline_in_a_fresh_process(tmp_path):
    """evaluate.load on the shipped scripts needs no network: run it with the
    hub switched off and a fresh module cache."""
    code = (
        "import json\n"
        "from bipeft_plugins.metrics import load_metric\n"
        "m = load_metric('glue', 'mrpc')\n"
        "m.add_batch(predictions=[1, 0, 1], references=[1, 1, 1])\n"
        "print(json.dumps(m.compute()))\n"
    )
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_EVALUATE_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        HF_MODULES_CACHE=str(tmp_path / "modules"),
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"f1": 0.8, "accuracy": pytest.approx(2 / 3)}
    # evaluate copied the script and the helper it imports into the fresh modules cache
    copied = {p.name for p in (tmp_path / "modules").rglob("*.py")}
    assert {"glue.py", "_functions.py"} <= copied
