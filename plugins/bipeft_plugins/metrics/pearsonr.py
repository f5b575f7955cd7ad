"""Pearson correlation coefficient (an ``evaluate`` metric script shipped with bipeft)."""

import datasets
import evaluate

from ._functions import pearsonr

_DESCRIPTION = "Pearson's r between predictions and references (scipy.stats.pearsonr's statistic)."
_KWARGS = """
Args:
    predictions (list of float): predicted values.
    references (list of float): true values.
Returns:
    pearsonr (float): in [-1, 1]; NaN when either input is constant.
"""


class Pearsonr(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"pearsonr": pearsonr(predictions, references)}
