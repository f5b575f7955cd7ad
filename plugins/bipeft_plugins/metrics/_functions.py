"""The arithmetic behind the shipped metric scripts, in plain numpy.

The ``evaluate`` scripts beside this file are thin wrappers around these
functions, so the numbers can be checked (and reused) without going through
``evaluate``. Each function follows the scikit-learn / scipy definition it is
named after, including the edge cases: an F1 or a Matthews correlation whose
denominator is zero is 0.0 (scikit-learn's default), and a Pearson or
Spearman correlation of a constant input is NaN (as scipy returns).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "f1",
    "glue_scores",
    "matthews_correlation",
    "multirc_scores",
    "normalize_answer",
    "pearsonr",
    "rankdata",
    "record_scores",
    "spearmanr",
    "super_glue_scores",
]

GLUE_CONFIGS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli")
SUPER_GLUE_CONFIGS = ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "axb")


def _pair(predictions: Any, references: Any, *, dtype: Any = None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(predictions, dtype=dtype)
    r = np.asarray(references, dtype=dtype)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(
            f"predictions and references must be 1-D and of the same length, got shapes "
            f"{p.shape} and {r.shape}"
        )
    return p, r


def accuracy(predictions: Any, references: Any) -> float:
    """Fraction of positions where ``predictions == references``."""
    p, r = _pair(predictions, references)
    if p.size == 0:
        raise ValueError("accuracy of zero examples is undefined: pass at least one prediction")
    return float(np.mean(p == r))


def _f1_from_counts(tp: float, fp: float, fn: float) -> float:
    den = 2 * tp + fp + fn
    return 0.0 if den == 0 else float(2 * tp / den)


def f1(predictions: Any, references: Any, *, average: str = "binary", pos_label: Any = 1) -> float:
    """F1 score as ``sklearn.metrics.f1_score`` computes it.

    ``average``: ``"binary"`` (``pos_label`` against the rest), ``"macro"``
    (unweighted mean over the labels present in either input), ``"micro"``
    or ``"weighted"`` (by each label's support in ``references``).
    """
    p, r = _pair(predictions, references)
    if average == "binary":
        return _f1_from_counts(
            float(np.sum((p == pos_label) & (r == pos_label))),
            float(np.sum((p == pos_label) & (r != pos_label))),
            float(np.sum((p != pos_label) & (r == pos_label))),
        )
    labels = np.unique(np.concatenate([r, p]))
    tps = np.array([np.sum((p == c) & (r == c)) for c in labels], dtype=np.float64)
    fps = np.array([np.sum((p == c) & (r != c)) for c in labels], dtype=np.float64)
    fns = np.array([np.sum((p != c) & (r == c)) for c in labels], dtype=np.float64)
    if average == "micro":
        return _f1_from_counts(tps.sum(), fps.sum(), fns.sum())
    per_class = np.array([_f1_from_counts(*c) for c in zip(tps, fps, fns)])
    if average == "macro":
        return float(per_class.mean()) if per_class.size else 0.0
    if average == "weighted":
        support = tps + fns
        return 0.0 if support.sum() == 0 else float(np.sum(per_class * support) / support.sum())
    raise ValueError(f"unknown average {average!r} for f1; use 'binary', 'macro', 'micro' or 'weighted'")


def matthews_correlation(predictions: Any, references: Any) -> float:
    """Matthews correlation coefficient, binary or multiclass (the
    multiclass form of ``sklearn.metrics.matthews_corrcoef``); 0.0 when it
    is undefined (a constant input)."""
    p, r = _pair(predictions, references)
    labels, inverse = np.unique(np.concatenate([r, p]), return_inverse=True)
    k = labels.size
    n = p.size
    confusion = np.zeros((k, k), dtype=np.float64)
    np.add.at(confusion, (inverse[:n], inverse[n:]), 1.0)
    t_sum = confusion.sum(axis=1)
    p_sum = confusion.sum(axis=0)
    n_correct = np.trace(confusion)
    n_samples = p_sum.sum()
    cov_ytyp = n_correct * n_samples - np.dot(t_sum, p_sum)
    cov_ypyp = n_samples**2 - np.dot(p_sum, p_sum)
    cov_ytyt = n_samples**2 - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


def pearsonr(predictions: Any, references: Any) -> float:
    """Pearson's r (scipy's computation); NaN when either input is constant
    or has fewer than two values."""
    x, y = _pair(predictions, references, dtype=np.float64)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return float("nan")
    xm = x - x.mean()
    ym = y - y.mean()
    # scale before the norm so that large values do not overflow (as scipy does)
    xmax = np.max(np.abs(xm))
    ymax = np.max(np.abs(ym))
    if xmax == 0 or ymax == 0:
        return float("nan")
    nx = xmax * np.linalg.norm(xm / xmax)
    ny = ymax * np.linalg.norm(ym / ymax)
    if nx == 0 or ny == 0:  # constant up to rounding of the mean
        return float("nan")
    r = float(np.dot(xm / nx, ym / ny))
    return max(-1.0, min(1.0, r))


def rankdata(values: Any) -> np.ndarray:
    """Ranks from 1, ties given their average rank (``scipy.stats.rankdata``)."""
    a = np.asarray(values)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    starts = np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [a.size]]) - 1
    avg = (first + last) / 2.0 + 1.0
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def spearmanr(predictions: Any, references: Any) -> float:
    """Spearman's rho: Pearson's r of the average ranks."""
    x, y = _pair(predictions, references, dtype=np.float64)
    if x.size < 2:
        return float("nan")
    return pearsonr(rankdata(x), rankdata(y))


# -- SuperGLUE's grouped metrics ------------------------------------------------------


def multirc_scores(predictions: Sequence[Mapping[str, Any]], references: Sequence[int]) -> dict[str, float]:
    """MultiRC: ``f1_a`` (binary F1 over every answer option), ``exact_match``
    (fraction of questions with all their options right) and ``f1_m`` (mean
    per-question macro F1), as the SuperGLUE metric computes them.

    ``predictions`` are ``{"idx": {"paragraph", "question", "answer"},
    "prediction": 0 or 1}``; ``references`` the 0/1 labels.
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"got {len(predictions)} MultiRC predictions for {len(references)} references"
        )
    by_question: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for pred, label in zip(predictions, references):
        key = (int(pred["idx"]["paragraph"]), int(pred["idx"]["question"]))
        by_question.setdefault(key, []).append((int(pred["prediction"]), int(label)))
    f1s, ems = [], []
    for pairs in by_question.values():
        qp, ql = zip(*pairs)
        f1s.append(f1(qp, ql, average="macro"))
        ems.append(float(all(a == b for a, b in pairs)))
    flat_preds = [int(p["prediction"]) for p in predictions]
    return {
        "f1_a": f1(flat_preds, [int(r) for r in references]),
        "exact_match": float(np.mean(ems)) if ems else 0.0,
        "f1_m": float(np.mean(f1s)) if f1s else 0.0,
    }


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, squeeze
    whitespace (the SQuAD / ReCoRD normalisation)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(truth).split()
    common = Counter(pred_tokens) & Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def record_scores(
    predictions: Sequence[Mapping[str, Any]], references: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """ReCoRD: token ``f1`` and ``exact_match`` of each predicted entity
    against the best-matching gold answer, averaged over queries.

    ``predictions`` are ``{"idx": {"passage", "query"}, "prediction_text"}``;
    ``references`` are ``{"idx": {"passage", "query"}, "answers": [...]}``.
    """
    gold: dict[tuple[int, int], list[str]] = {}
    for ref in references:
        gold[(int(ref["idx"]["passage"]), int(ref["idx"]["query"]))] = list(ref["answers"])
    if not predictions:
        raise ValueError("ReCoRD scores of zero predictions are undefined")
    f1_total = em_total = 0.0
    for pred in predictions:
        key = (int(pred["idx"]["passage"]), int(pred["idx"]["query"]))
        if key not in gold:
            raise ValueError(f"ReCoRD prediction for passage/query {key} has no reference with that idx")
        answers = gold[key]
        text = str(pred["prediction_text"])
        if answers:
            em_total += max(float(normalize_answer(text) == normalize_answer(a)) for a in answers)
            f1_total += max(_token_f1(text, a) for a in answers)
    n = len(predictions)
    return {"f1": f1_total / n, "exact_match": em_total / n}


# -- the combined task metrics, primary metric first ----------------------------------


def glue_scores(config_name: str, predictions: Iterable[Any], references: Iterable[Any]) -> dict[str, float]:
    """The GLUE figures of one task, the paper's primary metric first:
    CoLA Matthews; MRPC and QQP F1 then accuracy; STS-B Pearson then
    Spearman; every other task accuracy."""
    preds, refs = list(predictions), list(references)
    if config_name == "cola":
        return {"matthews_correlation": matthews_correlation(preds, refs)}
    if config_name == "stsb":
        return {"pearson": pearsonr(preds, refs), "spearmanr": spearmanr(preds, refs)}
    if config_name in ("mrpc", "qqp"):
        return {"f1": f1(preds, refs), "accuracy": accuracy(preds, refs)}
    if config_name in GLUE_CONFIGS:
        return {"accuracy": accuracy(preds, refs)}
    raise KeyError(f"unknown GLUE config {config_name!r}; use one of {', '.join(GLUE_CONFIGS)}")


def super_glue_scores(config_name: str, predictions: Iterable[Any], references: Iterable[Any]) -> dict[str, float]:
    """The SuperGLUE figures of one task, the paper's primary metric first:
    CB accuracy then macro F1; MultiRC ``f1_a``, ``exact_match``, ``f1_m``;
    ReCoRD ``f1`` then ``exact_match``; AX-b Matthews; every other task
    accuracy."""
    preds, refs = list(predictions), list(references)
    if config_name == "cb":
        return {"accuracy": accuracy(preds, refs), "f1": f1(preds, refs, average="macro")}
    if config_name == "multirc":
        return multirc_scores(preds, refs)
    if config_name == "record":
        return record_scores(preds, refs)
    if config_name == "axb":
        return {"matthews_correlation": matthews_correlation(preds, refs)}
    if config_name in SUPER_GLUE_CONFIGS:
        return {"accuracy": accuracy(preds, refs)}
    raise KeyError(f"unknown SuperGLUE config {config_name!r}; use one of {', '.join(SUPER_GLUE_CONFIGS)}")
