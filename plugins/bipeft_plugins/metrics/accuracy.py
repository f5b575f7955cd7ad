"""Accuracy: the fraction of predictions equal to their reference (an ``evaluate`` metric script shipped with bipeft)."""

import datasets
import evaluate

from ._functions import accuracy

_DESCRIPTION = "Accuracy: the fraction of predictions that equal their reference."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
Returns:
    accuracy (float): in [0, 1].
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"accuracy": accuracy(predictions, references)}
