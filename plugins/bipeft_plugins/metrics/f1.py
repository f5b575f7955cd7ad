"""F1 score, binary or averaged over classes (an ``evaluate`` metric script shipped with bipeft)."""

import datasets
import evaluate

from ._functions import f1

_DESCRIPTION = "F1 = 2 * precision * recall / (precision + recall), as scikit-learn's f1_score computes it."
_KWARGS = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): true labels.
    average (str): 'binary' (default; pos_label against the rest), 'macro', 'micro' or 'weighted'.
    pos_label (int): the positive class for average='binary' (default 1).
Returns:
    f1 (float): in [0, 1]; 0.0 where it is undefined (no positive predictions or references).
"""


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, average="binary", pos_label=1):
        return {"f1": f1(predictions, references, average=average, pos_label=pos_label)}
