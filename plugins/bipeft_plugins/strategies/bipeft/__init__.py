"""BIPEFT's strategies (docs/algorithm.md §3–8), one module each:

* ``sensitivity.py``: ``grad_weight_cos``, the sensitivity from
  weight-gradient products (Eq. 1–4);
* ``trigger.py``: ``budget_stability``, the budget-aware trigger (Eq. 5);
* ``selectors.py``: ``budget_guided``, binary module selection (Eq. 6–8),
  and ``stability_kl``, rank (dimension) selection (Eq. 9–10);
* ``iterative.py``: ``iterative``, the optimizer that alternates the binary
  and dimension stages on the shared search loop (:mod:`bipeft_core.loop`).

This package is the built-in plugin ``bipeft``.
"""

from __future__ import annotations

from bipeft_core.hookspecs import hookimpl
from bipeft_plugins.strategies.bipeft.iterative import Iterative
from bipeft_plugins.strategies.bipeft.selectors import BudgetGuided, StabilityKL, expected_sizes
from bipeft_plugins.strategies.bipeft.sensitivity import GradWeightCos
from bipeft_plugins.strategies.bipeft.trigger import BudgetStability

__all__ = ["BudgetGuided", "BudgetStability", "GradWeightCos", "Iterative", "StabilityKL", "expected_sizes"]


@hookimpl
def bipeft_register_strategies(registry):
    for cls in (GradWeightCos, BudgetStability, BudgetGuided, StabilityKL, Iterative):
        registry.add(cls)
