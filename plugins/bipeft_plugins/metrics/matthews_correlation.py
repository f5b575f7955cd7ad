"""Matthews correlation coefficient (an ``evaluate`` metric script shipped with bipeft)."""

import datasets
import evaluate

from ._functions import matthews_correlation

_DESCRIPTION = (
    "Matthews correlation coefficient, binary or multiclass (scikit-learn's matthews_corrcoef); "
    "0.0 where it is undefined."
)
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
Returns:
    matthews_correlation (float): in [-1, 1].
"""


class MatthewsCorrelation(evaluate.Metric):
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
        return {"matthews_correlation": matthews_correlation(predictions, references)}
