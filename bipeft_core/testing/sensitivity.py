"""The contract of :class:`~bipeft_core.interfaces.SensitivityEstimator`,
as pytest tests a plugin author subclasses::

    from bipeft_core.testing import SensitivityEstimatorContract

    class TestMyEstimator(SensitivityEstimatorContract):
        estimator = MyEstimator          # a class or any factory
        params = {"beta": 0.9}           # what a spec would pass it

The estimator observes the products a search would give it (from
:func:`~bipeft_core.testing.fixtures.synthetic_products`, on a synthetic
search whose modules get pruned as it goes), with the per-module sizes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from bipeft_core.interfaces import SensitivityEstimator
from bipeft_core.testing._common import build, expect, scores_of, through_checkpoint
from bipeft_core.testing.fixtures import (
    synthetic_products,
    synthetic_search_specs,
    synthetic_state,
    synthetic_step,
)
from bipeft_core.types import ModuleSpec

__all__ = ["SensitivityEstimatorContract", "sensitivity_feed"]


def sensitivity_feed(specs: list[ModuleSpec], steps: int, *, seed: int = 0, prune_every: int = 3,
                     ) -> list[dict[str, Any]]:
    """The keyword arguments of ``steps`` calls of
    :meth:`SensitivityEstimator.observe` in a synthetic search over ``specs``:
    training and validation products, the ``active`` mask (one more module
    pruned every ``prune_every`` steps, the least scored) and the ``sizes``
    of :meth:`Supernet.effective_counts` as the logits move."""
    whole = sum(s.max_count for s in specs)
    state = synthetic_state(specs, max(1, whole // 3), seed=seed)
    g = torch.Generator().manual_seed(seed)
    sn = state.supernet
    feed = []
    for t in range(steps):
        synthetic_step(state, g)
        unpruned = torch.nonzero(~sn.pruned).flatten().tolist()
        if t % prune_every == prune_every - 1 and len(unpruned) > 1:
            sn.pruned[min(unpruned, key=lambda i: (float(scores_of(state)[i]), i))] = True
        feed.append({
            "train": synthetic_products(specs, g), "val": synthetic_products(specs, g),
            "active": (~sn.pruned).clone(), "sizes": {k: v.clone() for k, v in sn.effective_counts().items()},
        })
    return feed


def _check_scores(est: SensitivityEstimator, n: int, when: str) -> torch.Tensor:
    scores = est.scores
    who = type(est).__name__
    expect(isinstance(scores, torch.Tensor), f"{who}.scores {when} is a {type(scores).__name__}, not a tensor")
    expect(scores.shape == (n,), f"{who}.scores {when} has shape {tuple(scores.shape)}; one score per module "
                                 f"({n}) is the contract")
    expect(scores.is_floating_point(), f"{who}.scores {when} is {scores.dtype}, not a float tensor")
    expect(bool(torch.isfinite(scores).all()), f"{who}.scores {when} is not finite: {scores.tolist()}")
    return scores.detach().clone()


class SensitivityEstimatorContract:
    """What every sensitivity estimator keeps: one finite float score per
    module, from ``reset`` on; pruned (inactive) modules keep their score;
    observing products moves the scores of active modules; the same inputs
    give the same scores; and ``state_dict`` survives a checkpoint and
    resumes the scores bit for bit, as does ``reset`` start afresh."""

    estimator: ClassVar[Any] = None
    """The estimator's class, or any callable that returns a fresh one."""
    params: ClassVar[Mapping[str, Any]] = {}
    """Keyword arguments for :attr:`estimator`."""
    steps: ClassVar[int] = 12
    """Observations per synthetic search."""
    n_matrix: ClassVar[int] = 6
    n_vector: ClassVar[int] = 4

    def make_estimator(self) -> SensitivityEstimator:
        """A fresh estimator (override for anything :attr:`estimator` and
        :attr:`params` cannot express)."""
        return build(type(self).estimator, self.params, "estimator")

    def specs(self, seed: int = 0) -> list[ModuleSpec]:
        return synthetic_search_specs(self.n_matrix, self.n_vector, seed=seed)

    def _observed(self, est: SensitivityEstimator, specs: list[ModuleSpec], feed: list[dict[str, Any]],
                  ) -> list[torch.Tensor]:
        """Observe every step of ``feed``; the scores after each."""
        out = []
        for i, kw in enumerate(feed):
            est.observe(**kw)
            out.append(_check_scores(est, len(specs), f"after observation {i + 1}"))
        return out

    def test_is_a_sensitivity_estimator(self) -> None:
        est = self.make_estimator()
        expect(isinstance(est, SensitivityEstimator), f"{est!r} does not subclass SensitivityEstimator")
        expect(isinstance(type(est).name, str) and bool(type(est).name), f"{type(est).__name__} has no name")

    def test_one_finite_float_score_per_module(self) -> None:
        specs = self.specs()
        est = self.make_estimator()
        est.reset(specs)
        _check_scores(est, len(specs), "after reset")
        self._observed(est, specs, sensitivity_feed(specs, self.steps))

    def test_inactive_modules_keep_their_scores(self) -> None:
        specs = self.specs(1)
        est = self.make_estimator()
        est.reset(specs)
        for i, kw in enumerate(sensitivity_feed(specs, self.steps, seed=1, prune_every=2)):
            before = _check_scores(est, len(specs), f"before observation {i + 1}")
            est.observe(**kw)
            after = _check_scores(est, len(specs), f"after observation {i + 1}")
            off = ~kw["active"]
            expect(torch.equal(before[off], after[off]),
                   f"{type(est).__name__}: observation {i + 1} changed the score of pruned modules "
                   f"{torch.nonzero(off & (before != after)).flatten().tolist()}")

    def test_observing_products_moves_the_scores(self) -> None:
        specs = self.specs(2)
        est = self.make_estimator()
        est.reset(specs)
        start = _check_scores(est, len(specs), "after reset")
        scores = self._observed(est, specs, sensitivity_feed(specs, self.steps, seed=2))
        expect(not torch.equal(start, scores[-1]),
               f"{type(est).__name__}: {self.steps} observations of nonzero products left every score as it was")

    def test_same_inputs_same_scores(self) -> None:
        specs = self.specs(3)
        feed = sensitivity_feed(specs, self.steps, seed=3)
        runs = []
        for _ in range(2):
            est = self.make_estimator()
            est.reset(specs)
            runs.append(self._observed(est, specs, copy.deepcopy(feed)))
        for i, (a, b) in enumerate(zip(*runs)):
            expect(torch.equal(a, b), f"two fresh estimators given the same inputs score differently after "
                                      f"observation {i + 1}")

    def test_state_dict_round_trip_resumes_bit_for_bit(self) -> None:
        specs = self.specs(4)
        feed = sensitivity_feed(specs, self.steps, seed=4)
        half = len(feed) // 2
        first = self.make_estimator()
        first.reset(specs)
        self._observed(first, specs, feed[:half])
        saved = through_checkpoint(first.state_dict(), f"{type(first).__name__}.state_dict()")
        resumed = self.make_estimator()
        resumed.reset(specs)  # a resumed search resets, then loads
        resumed.load_state_dict(saved)
        expect(torch.equal(_check_scores(first, len(specs), "when saved"),
                           _check_scores(resumed, len(specs), "when loaded")),
               f"{type(first).__name__}: the scores loaded from state_dict differ from the saved ones")
        a = self._observed(first, specs, feed[half:])
        b = self._observed(resumed, specs, copy.deepcopy(feed[half:]))
        for i, (x, y) in enumerate(zip(a, b)):
            expect(torch.equal(x, y), f"{type(first).__name__}: {i + 1} observations after a resume the scores "
                                      "differ from the uninterrupted estimator's")

    def test_reset_starts_afresh(self) -> None:
        specs = self.specs(5)
        feed = sensitivity_feed(specs, self.steps, seed=5)
        used = self.make_estimator()
        used.reset(specs)
        self._observed(used, specs, feed)
        used.reset(specs)
        fresh = self.make_estimator()
        fresh.reset(specs)
        expect(torch.equal(_check_scores(used, len(specs), "after a second reset"),
                           _check_scores(fresh, len(specs), "after reset")),
               f"{type(used).__name__}: reset of a used estimator does not give a fresh one's scores")
        for i, (x, y) in enumerate(zip(self._observed(used, specs, feed),
                                      self._observed(fresh, specs, copy.deepcopy(feed)))):
            expect(torch.equal(x, y), f"{type(used).__name__}: after reset, observation {i + 1} scores differently "
                                      "from a fresh estimator's")
