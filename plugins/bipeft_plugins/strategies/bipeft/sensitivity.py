"""BIPEFT's sensitivity estimator ``grad_weight_cos`` (docs/algorithm.md,
Eq. 1–4), and the cosine the trigger and the dimension selector share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import torch

from bipeft_core.interfaces import SensitivityEstimator
from bipeft_core.types import ModuleSpec

__all__ = ["CRITERIA", "NORMALIZERS", "GradWeightCos", "cosine"]

CRITERIA = ("cos", "train", "val", "sum", "cos_sum")
NORMALIZERS = ("expected", "live", "max")


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The cosine of two flat tensors; 0 when either is zero (never NaN)."""
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 0.0
    return float(torch.dot(a, b) / (na * nb))


@attrs.define(kw_only=True)
class GradWeightCos(SensitivityEstimator):
    """Eq. 1–4: ``S = I_tr/N + cos·I_val/N`` smoothed by an EMA.

    ``criterion``: ``cos`` (the paper's), ``train`` (``I_tr/N``), ``val``
    (``I_val/N``), ``sum`` (``(I_tr + I_val)/N``), ``cos_sum``
    (``cos·(I_tr + I_val)/N``).

    ``normalizer``: what ``N`` is. ``max`` (the paper's): the module's size
    at its largest candidate rank, whatever rank it runs at. ``expected``:
    its expected size under the dimension weights (``Σ_c w̃_c·N(d_c)``, the
    fixed rank's size once fixed). ``live``: its size at the rank the weight
    step ran it at. A vector module's ``N`` is its one count under all
    three. ``expected`` and ``live`` compare a low-rank LoRA fairly with a
    BitFit vector: the products of unused rank slices are zero, so ``max``
    understates a matrix module's importance per parameter it really
    carries (docs/search.md has the measurement that chose the default).
    """

    name = "grad_weight_cos"
    beta: float = attrs.field(default=0.85, validator=[attrs.validators.ge(0.0), attrs.validators.lt(1.0)])
    criterion: str = attrs.field(default="cos", validator=attrs.validators.in_(CRITERIA))
    normalizer: str = attrs.field(default="expected", validator=attrs.validators.in_(NORMALIZERS))
    _ema: torch.Tensor = attrs.field(init=False, factory=lambda: torch.zeros(0, dtype=torch.float64))
    _n: torch.Tensor = attrs.field(init=False, factory=lambda: torch.zeros(0, dtype=torch.float64))

    def reset(self, modules: Sequence[ModuleSpec]) -> None:
        self._ema = torch.zeros(len(modules), dtype=torch.float64)
        self._n = torch.tensor([float(m.max_count) for m in modules], dtype=torch.float64)

    def score_of(self, train: Sequence[torch.Tensor | None] | None,
                 val: Sequence[torch.Tensor | None] | None, n: float) -> float:
        """``S_t(m)`` of one module from its per-tensor products."""
        i_tr = sum(float(t.abs().sum()) for t in (train or ()) if t is not None)
        i_val = sum(float(t.abs().sum()) for t in (val or ()) if t is not None)
        if self.criterion == "train":
            return i_tr / n
        if self.criterion == "val":
            return i_val / n
        if self.criterion == "sum":
            return (i_tr + i_val) / n
        cos = 0.0
        if train and val:
            sims = [(cosine(a.flatten().double(), b.flatten().double()) if a is not None and b is not None else 0.0)
                    for a, b in zip(train, val)]
            cos = sum(sims) / len(sims)
        if self.criterion == "cos_sum":
            return cos * (i_tr + i_val) / n
        return i_tr / n + cos * i_val / n

    def observe(self, *, train, val, active, sizes=None) -> None:
        n = self._n
        if self.normalizer != "max":
            if sizes is None or self.normalizer not in sizes:
                raise TypeError(
                    f"grad_weight_cos with normalizer = {self.normalizer!r} needs the per-module sizes, which "
                    "the caller of observe() did not pass; pass sizes= (the search loop does), or use "
                    "normalizer = 'max'")
            n = sizes[self.normalizer].double()
        b = self.beta
        for i in torch.nonzero(active).flatten().tolist():
            s = self.score_of(train[i], val[i], float(n[i]))
            self._ema[i] = b * self._ema[i] + (1 - b) * s

    @property
    def scores(self) -> torch.Tensor:
        return self._ema

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self._ema.clone()}

    def load_state_dict(self, state) -> None:
        self._ema = state["ema"].clone().to(torch.float64)
