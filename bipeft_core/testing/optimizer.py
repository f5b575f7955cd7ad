"""The contract of :class:`~bipeft_core.interfaces.Optimizer` (a strategy's
whole search), as pytest tests a plugin author subclasses::

    from bipeft_core.testing import OptimizerContract

    class TestMyStrategy(OptimizerContract):
        optimizer = {"name": "my_strategy", "rounds": 2}   # what a spec's search.optimizer holds
        extra_plugins = [my_plugin]

A component plugin runs the contract through an optimizer that uses it::

    class TestIterativeWithMySelector(OptimizerContract):
        optimizer = "iterative"
        components = {"module_selector": "my_selector"}
        extra_plugins = [my_plugin]

The search runs through :class:`bipeft_core.Pipeline` on a
:func:`~bipeft_core.testing.fixtures.tiny_model` and the toy task (with toy
validation data and its accuracy as the evaluation), twice with the same
seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import pytest
import torch

from bipeft_core.interfaces import Optimizer, SearchSpace
from bipeft_core.state import SearchResult
from bipeft_core.targets import backbone_param_count, find_target_map
from bipeft_core.testing._common import expect
from bipeft_core.testing.fixtures import tiny_model, toy_accuracy, toy_examples

__all__ = ["OptimizerContract", "Searched"]

_KINDS = ("sensitivity", "trigger", "module_selector", "dimension_selector")


@attrs.frozen
class Searched:
    """Two searches of one pipeline with one seed, and what they ran on."""

    pipeline: Any
    first: SearchResult
    second: SearchResult
    optimizer: Optimizer
    specs: tuple[Any, ...]
    """The space's modules on the tiny model, as the optimizer adapted it."""
    backbone_params: int
    budget: int


class OptimizerContract:
    """What every optimizer keeps, on a search of a tiny model: it declares
    the component kinds it uses and registered defaults for them; it returns
    a :class:`SearchResult` of its own name, for the resolved budget and
    backbone; the result's ``count`` is its structure's exact count (each
    entry a module of the space at a candidate rank, each count the module
    type's own), which a model built from the structure holds; a budgeted
    optimizer stays within the budget; and the same seed gives the same
    result."""

    optimizer: ClassVar[str | Mapping[str, Any]] = ""
    """The optimizer as a spec's ``search.optimizer`` names it: a registered
    name, or ``{"name": ..., **params}``."""
    components: ClassVar[Mapping[str, Any]] = {}
    """Spec values for the other components (``sensitivity``, ``trigger``,
    ``module_selector``, ``dimension_selector``); the optimizer's defaults
    for the rest."""
    extra_plugins: ClassVar[Sequence[object]] = ()
    entry_points: ClassVar[bool] = False
    """Load installed plugins (entry-point group ``bipeft``) too."""
    budget: ClassVar[int | str] = 1500
    space: ClassVar[str] = "s2"
    family: ClassVar[str] = "bert"
    examples: ClassVar[int] = 64
    validation_examples: ClassVar[int] = 32
    """Toy validation examples, scored by :func:`toy_accuracy` for an
    optimizer that evaluates candidates (``SearchContext.evaluate``)."""
    search_settings: ClassVar[Mapping[str, Any]] = {"epochs": 2, "batch_size": 16, "lr": 1e-3}
    seed: ClassVar[int] = 0

    @classmethod
    def load_contract_plugins(cls) -> Any:
        from bipeft_core.plugins import load_plugins

        return load_plugins(list(cls.extra_plugins), entry_points=cls.entry_points)

    @classmethod
    def make_pipeline(cls, plugins: Any) -> Any:
        """The pipeline under test (override for anything the class
        attributes cannot express)."""
        from bipeft_core import Pipeline

        unknown = set(cls.components) - set(_KINDS)
        expect(not unknown, f"components {sorted(unknown)} are not among {_KINDS}")
        return Pipeline(budget=cls.budget, space=cls.space, optimizer=cls.optimizer,
                        search_settings=dict(cls.search_settings), plugins=plugins, **dict(cls.components))

    @pytest.fixture(scope="class")
    @classmethod
    def searched(cls) -> Searched:
        plugins = cls.load_contract_plugins()
        pipeline = cls.make_pipeline(plugins)
        train = toy_examples(cls.examples, seed=cls.seed)
        validation = toy_examples(cls.validation_examples, seed=cls.seed + 1)

        def evaluate(model: Any) -> dict[str, float]:
            return toy_accuracy(model, validation)

        first, second = (pipeline.search(tiny_model(cls.family), train, validation, seed=cls.seed,
                                         evaluate_fn=evaluate) for _ in range(2))
        optimizer = pipeline.build_component("optimizer")
        model = tiny_model(cls.family)
        target_map = find_target_map(model, plugins.target_maps)
        space = optimizer.adapt_space(pipeline.resolved_space())
        specs = tuple(space.modules(model, target_map, plugins.peft_modules))
        total = backbone_param_count(model, target_map)
        return Searched(pipeline=pipeline, first=first, second=second, optimizer=optimizer, specs=specs,
                        backbone_params=total, budget=pipeline.budget.resolve(total))

    def test_declares_its_components_and_their_defaults(self) -> None:
        plugins = self.load_contract_plugins()
        pipeline = self.make_pipeline(plugins)
        opt = pipeline.build_component("optimizer")
        who = type(opt).__name__
        expect(isinstance(opt, Optimizer), f"{opt!r} does not subclass Optimizer")
        expect(isinstance(type(opt).name, str) and bool(type(opt).name), f"{who} has no name")
        used = tuple(opt.components)
        expect(set(used) <= set(_KINDS), f"{who}.components = {used}; the kinds are {_KINDS}")
        defaults = dict(opt.default_components)
        expect(set(defaults) <= set(used), f"{who}.default_components names {sorted(set(defaults) - set(used))}, "
                                           f"which it does not use ({used})")
        expect(isinstance(opt.budgeted, bool), f"{who}.budgeted = {opt.budgeted!r}, not a bool")
        expect(isinstance(opt.selects, bool), f"{who}.selects = {opt.selects!r}, not a bool")
        for kind in defaults:
            built = pipeline.build_component(kind)
            expect(built is not None, f"{who}'s default {kind} {defaults[kind]!r} builds nothing")
        space = opt.adapt_space(pipeline.resolved_space())
        expect(isinstance(space, SearchSpace), f"{who}.adapt_space returned {space!r}, not a SearchSpace")

    def test_returns_a_search_result_of_its_own(self, searched: Searched) -> None:
        r, opt = searched.first, searched.optimizer
        expect(isinstance(r, SearchResult), f"{type(opt).__name__}.search returned {r!r}, not a SearchResult")
        expect(r.strategy == type(opt).name, f"the result names strategy {r.strategy!r}, not {type(opt).name!r}")
        expect(r.budget == searched.budget, f"the result's budget is {r.budget}, the resolved budget "
                                            f"{searched.budget}")
        expect(r.backbone_params == searched.backbone_params,
               f"the result's backbone has {r.backbone_params:,} parameters, the model {searched.backbone_params:,}")
        expect(isinstance(r.steps, int) and r.steps >= 0, f"the result's steps = {r.steps!r}")

    def test_count_is_the_structure_exact_count(self, searched: Searched) -> None:
        r = searched.first
        plugins = searched.pipeline.get_plugins()
        expect(r.count == r.structure.count(),
               f"result.count = {r.count:,} but its structure counts {r.structure.count():,}")
        if r.structure.full:
            return
        r.structure.verify(plugins.peft_modules)  # every entry's count is its type's count function's
        space = {s.id: s for s in searched.specs}
        for e in r.structure.entries:
            expect(e.spec.id in space, f"{e.spec.id} is not a module of the space {searched.pipeline.space}")
            s = space[e.spec.id]
            expect((e.spec.ranks, e.spec.counts) == (s.ranks, s.counts),
                   f"{e.spec.id}: the structure's candidates {e.spec.ranks} / counts {e.spec.counts} are not the "
                   f"space's {s.ranks} / {s.counts}")
        torch.manual_seed(0)
        built = r.structure.build(tiny_model(self.family), plugins.peft_modules)
        expect(built.peft_parameter_count() == r.count,
               f"a model built from the structure holds {built.peft_parameter_count():,} PEFT parameters, "
               f"the result counts {r.count:,}")

    def test_budgeted_search_stays_within_the_budget(self, searched: Searched) -> None:
        r = searched.first
        expect(r.budget_met == (r.count <= r.budget),
               f"budget_met = {r.budget_met} for {r.count:,} parameters and a budget of {r.budget:,}")
        if searched.optimizer.budgeted:
            expect(r.count <= r.budget, f"{type(searched.optimizer).__name__} returned {r.count:,} parameters, "
                                        f"over its budget of {r.budget:,}")

    def test_same_seed_same_result(self, searched: Searched) -> None:
        a, b = searched.first, searched.second
        expect(a.structure == b.structure, "two searches with one seed returned different structures:\n"
                                           f"{a.structure.summary()}\n{b.structure.summary()}")
        expect((a.count, a.steps, [e.step for e in a.trace]) == (b.count, b.steps, [e.step for e in b.trace]),
               f"two searches with one seed differ: count {a.count} / {b.count}, steps {a.steps} / {b.steps}, "
               f"trigger steps {[e.step for e in a.trace]} / {[e.step for e in b.trace]}")
