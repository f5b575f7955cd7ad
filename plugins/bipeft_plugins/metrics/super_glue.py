"""The SuperGLUE task metrics, primary metric first (an ``evaluate`` metric script shipped with bipeft)."""

import datasets
import evaluate

from ._functions import SUPER_GLUE_CONFIGS, super_glue_scores

_DESCRIPTION = (
    "SuperGLUE metrics by task (the config name): cb -> accuracy, f1 (macro); multirc -> f1_a, exact_match, "
    "f1_m; record -> f1, exact_match; axb -> matthews_correlation; boolq, copa, rte, wic -> accuracy. "
    "The paper's primary metric comes first. Values are fractions, not percentages."
)
_KWARGS = """
Args:
    predictions: predicted labels (int); for multirc dicts {"idx": {"paragraph", "question", "answer"},
        "prediction"}; for record dicts {"idx": {"passage", "query"}, "prediction_text"}.
    references: true labels (int); for record dicts {"idx": {"passage", "query"}, "answers": [str]}.
"""


class SuperGlue(evaluate.Metric):
    def _info(self):
        if self.config_name not in SUPER_GLUE_CONFIGS:
            raise KeyError(
                f"unknown SuperGLUE config {self.config_name!r}; load the metric with one of: "
                f"{', '.join(SUPER_GLUE_CONFIGS)}"
            )
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(self._features()),
        )

    def _features(self):
        if self.config_name == "record":
            idx = {"passage": datasets.Value("int64"), "query": datasets.Value("int64")}
            return {
                "predictions": {"idx": idx, "prediction_text": datasets.Value("string")},
                "references": {"idx": dict(idx), "answers": datasets.Sequence(datasets.Value("string"))},
            }
        if self.config_name == "multirc":
            idx = {
                "answer": datasets.Value("int64"),
                "paragraph": datasets.Value("int64"),
                "question": datasets.Value("int64"),
            }
            return {
                "predictions": {"idx": idx, "prediction": datasets.Value("int64")},
                "references": datasets.Value("int64"),
            }
        return {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}

    def _compute(self, predictions, references):
        return super_glue_scores(self.config_name, predictions, references)
