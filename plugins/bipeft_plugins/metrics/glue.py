"""The GLUE task metrics, primary metric first (an ``evaluate`` metric script shipped with bipeft)."""

import datasets
import evaluate

from ._functions import GLUE_CONFIGS, glue_scores

_DESCRIPTION = (
    "GLUE metrics by task (the config name): cola -> matthews_correlation; mrpc, qqp -> f1, accuracy; "
    "stsb -> pearson, spearmanr; sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli -> accuracy. "
    "The paper's primary metric comes first. Values are fractions, not percentages."
)
_KWARGS = """
Args:
    predictions: predicted labels (int), or values (float) for stsb.
    references: true labels (int), or values (float) for stsb.
"""


class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in GLUE_CONFIGS:
            raise KeyError(
                f"unknown GLUE config {self.config_name!r}; load the metric with one of: {', '.join(GLUE_CONFIGS)}"
            )
        kind = "float64" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Value(kind), "references": datasets.Value(kind)}
            ),
        )

    def _compute(self, predictions, references):
        return glue_scores(self.config_name, predictions, references)
