"""Every contract of ``bipeft_core.testing`` against every built-in: the PEFT
module types, the sensitivity estimator, the trigger, the two selectors (one
by one and together in the stateful budget-invariant test), the optimizers
at a small budget, and the tasks on the shared data (BIPEFT_DATA_DIR).

The built-ins are taken from the registries by name, as a plugin's tests
would take its own; a final group checks that every registered built-in has
its contract class here, and that the contracts fail on broken components."""

from __future__ import annotations

import pytest
from bipeft_plugins.exports import MergedFormat, PeftFormat, PeftMethodFormat
from hypothesis import HealthCheck, Phase, settings

from bipeft_core import DimensionSelector, ModuleSelector, hookimpl, load_plugins
from bipeft_core.formats import BipeftFormat
from bipeft_core.testing import (
    TINY_FAMILIES,
    BudgetInvariantsContract,
    DimensionSelectorContract,
    ExportFormatContract,
    ModuleSelectorContract,
    OptimizerContract,
    PeftModuleTypeContract,
    SensitivityEstimatorContract,
    TaskContract,
    TriggerContract,
)

PLUGINS = load_plugins(entry_points=False)
STRATEGIES = PLUGINS.strategies


# -- PEFT module types ---------------------------------------------------------------------


class TestLoRA(PeftModuleTypeContract):
    module_type = "lora"


class TestAdapterLR(PeftModuleTypeContract):
    module_type = "adapter_lr"


class TestBitFit(PeftModuleTypeContract):
    module_type = "bitfit"


class TestLNFit(PeftModuleTypeContract):
    module_type = "lnfit"


class TestSerialAdapter(PeftModuleTypeContract):
    module_type = "serial_adapter"


class TestParallelAdapter(PeftModuleTypeContract):
    module_type = "parallel_adapter"


class TestPrefix(PeftModuleTypeContract):
    module_type = "prefix"
    families = tuple(f for f in TINY_FAMILIES if f != "gpt2")  # GPT-2's fused attention has no attn_q


# -- strategy components -------------------------------------------------------------------


class TestGradWeightCos(SensitivityEstimatorContract):
    estimator = STRATEGIES.sensitivity.get("grad_weight_cos")


class TestGradWeightCosTrainOverMax(SensitivityEstimatorContract):
    """PrunePEFT's default: ``I_tr/N`` at the largest rank."""

    estimator = STRATEGIES.sensitivity.get("grad_weight_cos")
    params = {"criterion": "train", "normalizer": "max"}


class TestBudgetStability(TriggerContract):
    trigger = STRATEGIES.trigger.get("budget_stability")


class TestBudgetStabilityManyTriggers(TriggerContract):
    trigger = STRATEGIES.trigger.get("budget_stability")
    params = {"window": 2, "span_fraction": 0.6}


class TestBudgetStabilityPaperRule(TriggerContract):
    trigger = STRATEGIES.trigger.get("budget_stability")
    params = {"window": 2, "spread": False, "fresh": False, "max_triggers": 5}


class TestBudgetStabilityWarmupEpochs(TriggerContract):
    trigger = STRATEGIES.trigger.get("budget_stability")
    params = {"window": 2, "warmup_epochs": 2.5}


class TestBudgetGuided(ModuleSelectorContract):
    module_selector = STRATEGIES.module_selector.get("budget_guided")


class TestBudgetGuidedWithoutKeepProbability(ModuleSelectorContract):
    module_selector = STRATEGIES.module_selector.get("budget_guided")
    params = {"keep_prob_until": 0}


class TestStabilityKL(DimensionSelectorContract):
    dimension_selector = STRATEGIES.dimension_selector.get("stability_kl")


class TestBIPEFTSelectionBudgetInvariants(BudgetInvariantsContract):
    module_selector = STRATEGIES.module_selector.get("budget_guided")
    dimension_selector = STRATEGIES.dimension_selector.get("stability_kl")


class TestPruningOnlyBudgetInvariants(BudgetInvariantsContract):
    """PrunePEFT's selection: modules only, ranks left at argmax β."""

    module_selector = STRATEGIES.module_selector.get("budget_guided")


# -- optimizers, at a small budget -----------------------------------------------------------


class TestIterative(OptimizerContract):
    optimizer = "iterative"


class TestS3Delta(OptimizerContract):
    optimizer = "s3delta"


class TestPrunePEFT(OptimizerContract):
    optimizer = {"name": "prunepeft", "rounds": 2}


class TestAPET(OptimizerContract):
    optimizer = "apet"


class TestAutoPEFT(OptimizerContract):
    optimizer = {"name": "autopeft", "trials": 3, "startup_trials": 1, "sampler": "random"}
    search_settings = {"epochs": 1, "batch_size": 16, "lr": 1e-3}


class TestManual(OptimizerContract):
    optimizer = {"name": "manual", "method": "lora"}


class TestFullFineTuning(OptimizerContract):
    optimizer = "full"


def _saved_structure() -> str:
    """A structure on the contract's tiny BERT in S2 (two LoRA modules and a
    BitFit), saved where optimizer 'fixed' reads it."""
    import tempfile

    from bipeft_core.structure import Structure
    from bipeft_core.targets import find_target_map
    from bipeft_core.testing import tiny_model

    model = tiny_model("bert")
    specs = PLUGINS.spaces.get("s2").modules(model, find_target_map(model, PLUGINS.target_maps), PLUGINS.peft_modules)
    lora = [s for s in specs if s.type == "lora"][:2]
    bitfit = [s for s in specs if s.type == "bitfit"][:1]
    choices = {**{s.index: s.ranks[0] for s in lora}, **{s.index: None for s in bitfit}}
    path = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    Structure.from_choices(specs, choices, space="s2", model_type="bert").save(path)
    return path


class TestFixed(OptimizerContract):
    optimizer = {"name": "fixed", "structure": _saved_structure()}


# -- tasks, on the shared data -----------------------------------------------------------------


def _task_contract(name: str) -> type:
    cls = type(f"TestTask_{name.replace('/', '_')}", (TaskContract,), {"task": name, "__module__": __name__})
    return pytest.mark.data(cls)


TASK_CONTRACTS = {name: _task_contract(name) for name in PLUGINS.tasks.names()}
globals().update({cls.__name__: cls for cls in TASK_CONTRACTS.values()})


# -- every built-in has its contract ---------------------------------------------------------


def _contracts(base: type) -> list[type]:
    return [v for k, v in globals().items() if k.startswith("Test") and isinstance(v, type) and issubclass(v, base)]


def _names(classes: list[type], attribute: str) -> set[str]:
    out = set()
    for cls in classes:
        value = getattr(cls, attribute)
        out.add(value if isinstance(value, str) else value["name"] if isinstance(value, dict) else value.name)
    return out


def test_every_builtin_has_its_contract_class():
    assert _names(_contracts(PeftModuleTypeContract), "module_type") >= set(PLUGINS.peft_modules.names())
    assert _names(_contracts(SensitivityEstimatorContract), "estimator") >= set(STRATEGIES.sensitivity.names())
    assert _names(_contracts(TriggerContract), "trigger") >= set(STRATEGIES.trigger.names())
    assert _names(_contracts(ModuleSelectorContract), "module_selector") >= set(STRATEGIES.module_selector.names())
    assert (_names(_contracts(DimensionSelectorContract), "dimension_selector")
            >= set(STRATEGIES.dimension_selector.names()))
    assert _names(_contracts(OptimizerContract), "optimizer") >= set(STRATEGIES.optimizer.names())
    assert set(TASK_CONTRACTS) == set(PLUGINS.tasks.names())


# -- the contracts fail on broken components -------------------------------------------------

_FAIL_FAST = settings(max_examples=200, deadline=None, phases=[Phase.generate], database=None,
                      suppress_health_check=list(HealthCheck))


class _PrunesAgain(ModuleSelector):
    """Returns every module, pruned or not."""

    name = "prunes_again"

    def select(self, state):
        return list(range(len(state.specs)))


class _Unprunes(ModuleSelector):
    """Undoes the pruning itself."""

    name = "unprunes"

    def select(self, state):
        state.supernet.pruned.zero_()
        unpruned = [i for i in range(len(state.specs)) if not bool(state.pruned[i])]
        return unpruned[:1]


class _Refixes(DimensionSelector):
    """Fixes every matrix module at its smallest rank, fixed already or not."""

    name = "refixes"

    def select(self, state):
        return {i: s.ranks[0] for i, s in enumerate(state.specs) if s.is_matrix and not bool(state.pruned[i])}


class _OffCandidate(DimensionSelector):
    """Fixes ranks that are not candidates."""

    name = "off_candidate"

    def select(self, state):
        return {i: s.ranks[-1] + 1 for i, s in enumerate(state.specs)
                if s.is_matrix and not bool(state.pruned[i]) and int(state.fixed_rank[i]) < 0}


@pytest.mark.parametrize(
    ("module_selector", "dimension_selector", "message"),
    [
        (_PrunesAgain, None, "already pruned"),
        (_Unprunes, None, "changed supernet.pruned"),
        (None, _Refixes, "a fixed rank never changes"),
        (None, _OffCandidate, "not one of its candidates"),
    ],
    ids=["prunes-again", "unprunes", "refixes", "off-candidate"],
)
def test_the_stateful_test_catches_a_broken_selector(module_selector, dimension_selector, message):
    contract = type("Broken", (BudgetInvariantsContract,), {"module_selector": module_selector,
                                                             "dimension_selector": dimension_selector})()
    with pytest.raises(AssertionError, match=message):
        contract.run_budget_invariants(_FAIL_FAST)


def test_the_selector_contract_catches_an_unpruning_selector():
    contract = type("Broken", (ModuleSelectorContract,), {"module_selector": _Unprunes})()
    with pytest.raises(AssertionError, match="changed supernet.pruned"):
        contract.test_selections_are_valid_and_leave_the_structure_to_the_optimizer()


class _ForgetfulKL(STRATEGIES.dimension_selector.get("stability_kl")):
    """Drops its snapshots from its state_dict."""

    def state_dict(self):
        return {"betas": [], "dims": []}


def test_the_round_trip_check_catches_a_forgetful_state_dict():
    contract = type("Broken", (DimensionSelectorContract,), {"dimension_selector": _ForgetfulKL})()
    with pytest.raises(AssertionError, match="resumed after event"):
        contract.test_state_dict_round_trip_resumes_bit_for_bit()


class _EagerTrigger(STRATEGIES.trigger.get("budget_stability")):
    """Fires at every step, warm-up or not."""

    def should_fire(self, state):
        return state.triggers_left > 0


def test_the_trigger_contract_catches_a_firing_during_the_warm_up():
    contract = type("Broken", (TriggerContract,), {"trigger": _EagerTrigger, "params": {"warmup_epochs": 2}})()
    with pytest.raises(AssertionError, match="during its warm-up|before its warmup_epochs"):
        contract.test_never_fires_during_its_warm_up_nor_beyond_its_triggers()


class _ScoresPrunedModules(STRATEGIES.sensitivity.get("grad_weight_cos")):
    """Updates every module's score, pruned or not."""

    def observe(self, *, train, val, active, sizes=None):
        super().observe(train=train, val=val, active=active | True, sizes=sizes)


def test_the_sensitivity_contract_catches_scores_of_pruned_modules():
    contract = type("Broken", (SensitivityEstimatorContract,), {"estimator": _ScoresPrunedModules})()
    with pytest.raises(AssertionError, match="changed the score of pruned modules"):
        contract.test_inactive_modules_keep_their_scores()


class _OverBudget(STRATEGIES.optimizer.get("apet")):
    """Keeps every module at its largest rank, whatever the budget."""

    name = "over_budget"

    def search(self, ctx):
        from bipeft_core.state import SearchResult
        from bipeft_core.structure import Structure

        choices = {i: (s.ranks[-1] if s.is_matrix else None) for i, s in enumerate(ctx.specs)}
        structure = Structure.from_choices(ctx.specs, choices)
        return SearchResult(structure=structure, count=structure.count(), budget=ctx.budget,
                            backbone_params=ctx.backbone_params, strategy=self.name,
                            budget_met=structure.count() <= ctx.budget)


class _OverBudgetPlugin:
    name = "over_budget"

    @hookimpl
    def bipeft_register_strategies(self, registry):
        registry.add(_OverBudget)


class TestTheOptimizerContractCatchesAnOverBudgetSearch(OptimizerContract):
    optimizer = "over_budget"
    extra_plugins = [_OverBudgetPlugin()]

    def test_budgeted_search_stays_within_the_budget(self, searched):
        with pytest.raises(AssertionError, match="over its budget"):
            super().test_budgeted_search_stays_within_the_budget(searched)


# -- export formats ---------------------------------------------------------------------------


class TestBipeftFormat(ExportFormatContract):
    export_format = BipeftFormat


class TestPeftFormat(ExportFormatContract):
    export_format = PeftFormat
    requires = ("peft",)


class TestPeftMethodFormat(ExportFormatContract):
    export_format = PeftMethodFormat
    requires = ("peft",)


class TestMergedFormat(ExportFormatContract):
    export_format = MergedFormat
