"""Metrics shipped with bipeft as ``evaluate`` modules.

The hub's metric scripts cannot always be fetched (offline machines, CI), so
bipeft ships its own: each ``<name>.py`` beside this file is an ``evaluate``
metric script, loaded from its local path with ``evaluate.load(path)``. A
local path never touches the network, so this works with
``HF_HUB_OFFLINE=1`` and ``HF_EVALUATE_OFFLINE=1``.

>>> m = load_metric("glue", "mrpc")
>>> m.add_batch(predictions=[1, 0, 1], references=[1, 1, 1])
>>> sorted(m.compute().items())
[('accuracy', 0.6666666666666666), ('f1', 0.8)]

Scripts: ``accuracy``, ``f1``, ``matthews_correlation``, ``pearsonr``,
``spearmanr``, and the combined task metrics ``glue`` and ``super_glue``
(config = task, e.g. ``load_metric("glue", "stsb")`` gives Pearson and
Spearman, or ``load_metric("super_glue/multirc")``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bipeft_core.errors import UnknownNameError

__all__ = ["METRICS", "METRICS_DIR", "load_metric", "metric_path"]

#: The folder holding the metric scripts.
METRICS_DIR = Path(__file__).resolve().parent

#: The shipped metric scripts, by name.
METRICS: tuple[str, ...] = (
    "accuracy",
    "f1",
    "matthews_correlation",
    "pearsonr",
    "spearmanr",
    "glue",
    "super_glue",
)

_ALIASES = {
    "acc": "accuracy",
    "matthews": "matthews_correlation",
    "mcc": "matthews_correlation",
    "pearson": "pearsonr",
    "spearman": "spearmanr",
    "superglue": "super_glue",
    "super-glue": "super_glue",
}


def metric_path(name: str) -> Path:
    """The path of the shipped script for metric ``name`` (``"glue"``,
    ``"pearson"``, ...)."""
    key = str(name).strip().lower().replace("-", "_") if isinstance(name, str) else name
    key = _ALIASES.get(key, key)
    if key not in METRICS:
        raise UnknownNameError(
            f"unknown metric {name!r}; the shipped metrics are {', '.join(METRICS)} "
            "(or pass evaluate.load a path or hub name yourself)"
        )
    return METRICS_DIR / f"{key}.py"


def load_metric(name: str, config_name: str | None = None, **kwargs: Any) -> Any:
    """An ``evaluate.EvaluationModule`` from the shipped script ``name``.

    ``name`` may carry the config after a slash (``"glue/mrpc"``,
    ``"superglue/cb"``). ``kwargs`` go to ``evaluate.load``;
    ``keep_in_memory`` defaults to ``True`` so no prediction cache file is
    written.
    """
    import evaluate

    if isinstance(name, str) and "/" in name and config_name is None:
        name, _, config_name = name.partition("/")
    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(metric_path(name)), config_name, **kwargs)
