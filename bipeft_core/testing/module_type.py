"""The contract of :class:`~bipeft_core.interfaces.PeftModuleType`.

Each rule is a function of a :class:`ModuleTypeProbe` (the type put at every
position of a one-block tiny model of one family) that raises
``AssertionError`` naming what broke. :func:`check_peft_module_type` runs
them all in order; :class:`PeftModuleTypeContract` runs each as a test of its
own, per family, for a plugin author to subclass::

    from bipeft_core.testing import PeftModuleTypeContract

    class TestMyType(PeftModuleTypeContract):
        module_type = MyType()
        extra_plugins = [my_plugin]      # or leave empty: the type is registered for the test
        families = ("bert", "t5", "llama")
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import pytest
import torch
from hypothesis import given, settings
from torch import nn

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.modules import PeftModule, get_submodule
from bipeft_core.structure import Structure
from bipeft_core.supernet import Supernet, trainable_head_parameters
from bipeft_core.targets import ROLES, find_target_map
from bipeft_core.testing._common import expect
from bipeft_core.testing.fixtures import (
    TINY_FAMILIES,
    discrete_spec,
    load_module_plugins,
    synthetic_model,
    tiny_batch,
    tiny_model,
)
from bipeft_core.testing.strategies import module_specs
from bipeft_core.types import ModuleSpec

__all__ = [
    "MODULE_TYPE_RULES",
    "ModuleTypeProbe",
    "PeftModuleTypeContract",
    "check_count_function",
    "check_counts",
    "check_detach_hooks",
    "check_discrete_model",
    "check_gates",
    "check_peft_module_type",
    "check_positions",
    "check_rank_mask",
    "check_switch_off",
    "check_trainable_parameters",
    "check_weight_entanglement",
    "check_zero_initialisation",
]

_HEADS = ("classifier", "score", "pooler")


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _logits(output: Any) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


def check_count_function(mtype: PeftModuleType, spec: ModuleSpec, *, model: nn.Module | None = None) -> None:
    """The count function of ``mtype`` is exact for ``spec``: at every
    candidate rank it gives an ``int`` equal to the spec's count and to
    ``sum(p.numel())`` of the discrete module at that rank; the supernet module
    holds exactly the count at the largest rank. ``model`` is only passed to
    the constructors (default :func:`synthetic_model`)."""
    model = model if model is not None else synthetic_model()
    opts = spec.option_dict()
    ranks: tuple[int | None, ...] = spec.ranks if spec.is_matrix else (None,)
    expect(len(spec.counts) == len(ranks), f"{spec.id}: {len(spec.counts)} counts for ranks {ranks}")
    for rank, count in zip(ranks, spec.counts):
        pure = mtype.param_count(spec.shape, rank, **opts)
        expect(isinstance(pure, numbers.Integral) and not isinstance(pure, bool),
               f"{mtype.name}.param_count returned {pure!r} ({type(pure).__name__}), not a whole number")
        expect(pure == count, f"{spec.id}: param_count at rank {rank} is {pure}, the spec says {count}")
        module = mtype.discrete(discrete_spec(spec, rank), model, rank)
        n = _numel(module)
        expect(n == pure, f"{spec.id}: discrete module at rank {rank} holds {n} parameters, "
                          f"param_count says {pure} (shape {spec.shape})")
    n = _numel(mtype.supernet(spec, model))
    expect(n == spec.max_count, f"{spec.id}: supernet module holds {n} parameters, the count at the "
                                f"largest rank {spec.max_rank} is {spec.max_count}")


def _space_for(mtype: PeftModuleType, ranks: Sequence[int], options: Mapping[str, Any] | None) -> Any:
    from bipeft_core.space import DeclarativeSpace

    entry: dict[str, Any] = {"type": mtype.name, "options": dict(options or {})}
    if len(mtype.roles) == 1:
        entry["targets"] = list(ROLES)
    return DeclarativeSpace.from_dict({"name": "contract", "ranks": list(ranks), "modules": [entry]},
                                      source=f"contract space for {mtype.name!r}")


@attrs.define(eq=False)
class ModuleTypeProbe:
    """One module type put at every position it takes (every role for a
    single-role type) in a one-block :func:`tiny_model` of one family: the
    model, a batch, the specs, and the frozen backbone's output on the batch.
    Owns that model; each rule attaches its own supernet to it and detaches
    it again (:meth:`supernet`)."""

    mtype: PeftModuleType
    registry: Any
    family: str
    seed: int
    model: nn.Module
    batch: dict[str, torch.Tensor]
    target_map: Any
    specs: list[ModuleSpec]
    reference: torch.Tensor

    @classmethod
    def build(cls, mtype: PeftModuleType | str, plugins: Any, *, family: str = "bert",
              ranks: Sequence[int] = (1, 2, 4), options: Mapping[str, Any] | None = None,
              seed: int = 0) -> ModuleTypeProbe:
        """``mtype`` (registered in ``plugins.peft_modules``) at every position
        of a one-block model of ``family``. Raises
        :class:`~bipeft_core.errors.TargetError` if it takes no position there."""
        registry = plugins.peft_modules
        name = mtype if isinstance(mtype, str) else mtype.name
        resolved = registry.get(name)
        model = tiny_model(family, layers=1, seed=seed).eval()
        batch = tiny_batch(model, seed=seed)
        target_map = find_target_map(model, plugins.target_maps)
        specs = _space_for(resolved, ranks, options).modules(model, target_map, registry)
        with torch.no_grad():
            reference = _logits(model(**batch)).clone()
        return cls(mtype=resolved, registry=registry, family=family, seed=seed, model=model, batch=batch,
                   target_map=target_map, specs=specs, reference=reference)

    @property
    def name(self) -> str:
        return self.mtype.name

    @property
    def where(self) -> str:
        return f"{self.name} ({self.family})"

    @property
    def candidates(self) -> tuple[int | None, ...]:
        """The candidate ranks (``(None,)`` for a vector type)."""
        return self.specs[0].ranks if self.mtype.kind == "matrix" and self.specs else (None,)

    def output(self, model: nn.Module | None = None) -> torch.Tensor:
        return _logits((model if model is not None else self.model)(**self.batch))

    @contextlib.contextmanager
    def supernet(self, *, random: bool = False) -> Iterator[Supernet]:
        """A fresh supernet of the specs on the probe's model (weights from
        ``torch.manual_seed(seed)``; with ``random``, every PEFT weight drawn
        from a normal of scale 0.1 instead), detached when the block ends."""
        torch.manual_seed(self.seed)
        self.model.zero_grad(set_to_none=True)
        net = Supernet(self.model, self.specs, self.registry)
        try:
            if random:
                g = torch.Generator().manual_seed(self.seed)
                with torch.no_grad():
                    for p in net.peft_parameters():
                        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            yield net
        finally:
            net.detach_hooks()
            self.model.zero_grad(set_to_none=True)

    def direction(self) -> torch.Tensor:
        """A fixed random direction in output space: the loss of a backward pass."""
        g = torch.Generator().manual_seed(self.seed + 1)
        return torch.randn(self.reference.shape, generator=g)

    def outputs_by_rank(self, net: Supernet) -> dict[int | None, torch.Tensor]:
        """The supernet's output with every module at each candidate rank."""
        out = {}
        with torch.no_grad():
            for rank in self.candidates:
                _set_rank(net, rank)
                out[rank] = self.output(net)
        return out

    def report(self) -> dict[str, Any]:
        return {"family": self.family, "type": self.name, "modules": len(self.specs),
                "ids": [s.id for s in self.specs]}


def _peft(module: nn.Module, where: str) -> PeftModule:
    """``module`` as the :class:`PeftModule` a module type's forms must be."""
    expect(isinstance(module, PeftModule), f"{where} is a {type(module).__name__}, not a "
                                           "bipeft_core.modules.PeftModule")
    assert isinstance(module, PeftModule)
    return module


def _modules(net: Supernet) -> list[PeftModule]:
    """The supernet's modules, in spec order."""
    return [_peft(m, f"the supernet form of {spec.id}") for m, spec in zip(net.peft, net.specs)]


def _set_rank(net: Supernet, rank: int | None) -> None:
    for m in _modules(net):
        m.reset_controls()
        if rank is not None and m.max_rank is not None:
            m.rank = rank


def _leading_slices(spec: ModuleSpec | None, supernet: nn.Module, discrete: nn.Module) -> dict[str, tuple[slice, ...]]:
    """Per parameter name: the leading slice of the supernet tensor that the
    discrete module's tensor of that name corresponds to (weight
    entanglement: rank ``d`` uses the leading ``d`` units)."""
    sup = dict(supernet.named_parameters())
    dis = dict(discrete.named_parameters())
    where = spec.id if spec is not None else type(supernet).__name__
    expect(set(sup) == set(dis), f"{where}: supernet parameters {sorted(sup)} and discrete parameters "
                                 f"{sorted(dis)} differ")
    out = {}
    for k, p in dis.items():
        q = sup[k]
        expect(p.dim() == q.dim() and all(a <= b for a, b in zip(p.shape, q.shape)),
               f"{where}: discrete {k} {tuple(p.shape)} is not a leading slice of the supernet's {tuple(q.shape)}")
        out[k] = tuple(slice(0, a) for a in p.shape)
    return out


def _frozen_backbone_grads(probe: ModuleTypeProbe, head: set[int], where: str) -> None:
    for pname, p in probe.model.named_parameters():
        if id(p) not in head:
            expect(p.grad is None, f"{where}backbone parameter {pname} got a gradient")


# -- the rules ----------------------------------------------------------------------------


def check_positions(probe: ModuleTypeProbe) -> None:
    """The type takes at least one position; every spec is of its type and
    kind; no position is a task head."""
    expect(len(probe.specs) > 0, f"{probe.name}: no module in {probe.family}")
    for spec in probe.specs:
        expect(spec.type == probe.name, f"{spec.id}: type {spec.type!r}, expected {probe.name!r}")
        expect(spec.kind == probe.mtype.kind, f"{spec.id}: kind {spec.kind!r}, the type says {probe.mtype.kind!r}")
        for role, site in spec.sites:
            expect(not probe.target_map.is_head(site), f"{spec.id}: site {site} ({role}) is a task head")


def check_counts(probe: ModuleTypeProbe) -> None:
    """The count function is exact at every position (:func:`check_count_function`)."""
    for spec in probe.specs:
        check_count_function(probe.mtype, spec, model=probe.model)


def check_trainable_parameters(probe: ModuleTypeProbe) -> None:
    """In a supernet only PEFT weights (and the task head) require grad, and
    no PEFT module holds a backbone parameter."""
    with probe.supernet() as net:
        head = {id(p) for p in net.head_params}
        for pname, p in probe.model.named_parameters():
            if id(p) not in head:
                expect(not p.requires_grad, f"backbone parameter {pname} requires grad")
        expect(all(p.requires_grad for p in net.peft_parameters()),
               f"{probe.name}: a PEFT weight does not require grad")
        expect({id(p) for p in net.peft_parameters()}.isdisjoint({id(p) for p in probe.model.parameters()}),
               f"{probe.name}: a PEFT module holds a backbone parameter")


def check_zero_initialisation(probe: ModuleTypeProbe) -> None:
    """The supernet at initialisation, every module on (``all_on``), gives
    exactly the frozen backbone's output, each module computed once."""
    with probe.supernet() as net:
        net.configure("all_on")
        before = [m.calls for m in _modules(net)]
        with torch.no_grad():
            out = probe.output(net)
        expect(torch.equal(out, probe.reference),
               f"{probe.where}: the zero-initialised supernet changes the output "
               f"(max diff {(out - probe.reference).abs().max().item():.3g})")
        expect(all(m.calls - b == 1 for m, b in zip(_modules(net), before)),
               f"{probe.name}: a module did not compute exactly once in one forward")


def check_weight_entanglement(probe: ModuleTypeProbe) -> None:
    """Weight entanglement, with random weights, at every candidate rank
    ``d``: the output changes; no backbone parameter and no architecture
    logit gets a gradient; the discrete module at ``d`` has the supernet's
    parameter names, each tensor a leading slice of the supernet's,
    ``count(d)`` entries in all; gradients stay inside those slices (and most
    modules get one); the supernet reads nothing else (NaN elsewhere leaves
    its output unchanged) and computes what the discrete modules do with
    those slices."""
    model, specs, mtype = probe.model, probe.specs, probe.mtype
    direction = probe.direction()
    with probe.supernet(random=True) as net:
        head = {id(p) for p in net.head_params}
        for rank in probe.candidates:
            net.zero_grad(set_to_none=True)
            _set_rank(net, rank)
            out = probe.output(net)
            (out * direction).sum().backward()
            at_rank = out.detach()
            expect(not torch.equal(at_rank, probe.reference),
                   f"{probe.where}: modules with random weights leave the output unchanged")
            _frozen_backbone_grads(probe, head, "")
            expect(net.alpha.grad is None and net.beta.grad is None,
                   "architecture logits got a gradient in all_on mode")
            discrete = [_peft(mtype.discrete(discrete_spec(s, rank), model, rank), f"the discrete form of {s.id}")
                        for s in specs]
            learning = 0
            for spec, m, d in zip(specs, _modules(net), discrete):
                slices = _leading_slices(spec, m, d)
                n = sum(p[slices[k]].numel() for k, p in m.named_parameters())
                expect(n == spec.count(rank), f"{spec.id}: the leading slices at rank {rank} hold {n} entries, "
                                              f"the count is {spec.count(rank)}")
                grads = 0
                for k, p in m.named_parameters():
                    if p.grad is None:
                        continue
                    outside = p.grad.clone()
                    outside[slices[k]] = 0
                    expect(not outside.any(), f"{spec.id}: at rank {rank}, {k} gets a gradient outside its "
                                              "leading slice")
                    grads += int(p.grad.any())
                learning += grads > 0
            # some modules may not change the loss at all (a bias on attention keys shifts every score of a
            # query alike), but most must
            expect(learning > 0, f"{probe.where}: at rank {rank} no module's weights get a gradient")
            saved = [p.detach().clone() for p in net.peft_parameters()]
            with torch.no_grad():
                for m, d in zip(_modules(net), discrete):
                    slices = _leading_slices(None, m, d)
                    own = dict(m.named_parameters())
                    for k, p in d.named_parameters():
                        p.copy_(own[k][slices[k]])
                        poisoned = torch.full_like(own[k], float("nan"))
                        poisoned[slices[k]] = own[k][slices[k]]
                        own[k].copy_(poisoned)
                out = probe.output(net)
                expect(torch.allclose(out, at_rank, rtol=1e-5, atol=1e-6),
                       f"{probe.where}: at rank {rank} the supernet reads weights outside the leading slices "
                       "(NaN there changes its output)")
                for p, s in zip(net.peft_parameters(), saved):
                    p.copy_(s)
                net.detach_hooks()
                for d in discrete:
                    d.attach(model)
                out = probe.output()
                for d in discrete:
                    d.detach()
                for m in _modules(net):
                    m.attach(model)
            expect(torch.allclose(out, at_rank, rtol=1e-4, atol=1e-5),
                   f"{probe.where}: the discrete modules at rank {rank} with the supernet's leading slices "
                   f"give another output (max diff {(out - at_rank).abs().max().item():.3g})")


def check_rank_mask(probe: ModuleTypeProbe) -> None:
    """A matrix type at its largest rank with the rank mask of a candidate
    ``d`` computes once and gives its output at rank ``d`` (nothing to check
    for a vector type)."""
    if probe.mtype.kind != "matrix":
        return
    with probe.supernet(random=True) as net:
        by_rank = probe.outputs_by_rank(net)
        max_rank = int(probe.specs[0].max_rank or 0)
        for rank in probe.candidates:
            assert rank is not None
            mask = torch.zeros(max_rank)
            mask[:rank] = 1.0
            before = [m.calls for m in _modules(net)]
            for m in _modules(net):
                m.reset_controls()
                m.rank_mask = mask
            with torch.no_grad():
                out = probe.output(net)
            expect(all(m.calls - b == 1 for m, b in zip(_modules(net), before)),
                   f"{probe.name}: with a rank mask a module did not compute exactly once")
            expect(torch.allclose(out, by_rank[rank], rtol=1e-4, atol=1e-5),
                   f"{probe.where}: the rank mask of rank {rank} at rank {max_rank} does not give the "
                   f"output at rank {rank} (max diff {(out - by_rank[rank]).abs().max().item():.3g})")


def check_switch_off(probe: ModuleTypeProbe) -> None:
    """A module switched off (``enabled = False``) is never computed and
    changes nothing, whatever its weights."""
    with probe.supernet(random=True) as net:
        before = [m.calls for m in _modules(net)]
        for m in _modules(net):
            m.reset_controls()
            m.enabled = False
        with torch.no_grad():
            out = probe.output(net)
        expect(torch.equal(out, probe.reference), f"{probe.where}: switched-off modules change the output")
        expect(all(m.calls == b for m, b in zip(_modules(net), before)), f"{probe.name}: a switched-off module was computed")


def check_gates(probe: ModuleTypeProbe) -> None:
    """The gate: 0 removes the module's whole output yet passes a finite
    straight-through gradient to the gate (nonzero for some module), and
    ``detach_weights`` keeps gradients from the weights; a single-site
    module's contribution scales linearly with the gate (0.5 gives half);
    a gate of 1 gives the ungated output."""
    model, specs = probe.model, probe.specs
    direction = probe.direction()
    with probe.supernet(random=True) as net:
        top = probe.outputs_by_rank(net)[probe.candidates[-1]]
        gates = [torch.zeros((), requires_grad=True) for _ in _modules(net)]
        for m, gate in zip(_modules(net), gates):
            m.reset_controls()
            m.gate = gate
            m.detach_weights = True
        out = probe.output(net)
        expect(torch.equal(out.detach(), probe.reference), f"{probe.where}: a gate of 0 leaves part of the output")
        (out * direction).sum().backward()
        for spec, m, gate in zip(specs, _modules(net), gates):
            # connected and finite; it may be exactly 0 where the module cannot change the loss (a bias on
            # attention keys shifts every score of a query alike)
            expect(gate.grad is not None and bool(torch.isfinite(gate.grad)),
                   f"{spec.id}: a gate of 0 gets no straight-through gradient ({gate.grad})")
            expect(all(p.grad is None or not p.grad.any() for p in m.parameters()),
                   f"{spec.id}: weights got a gradient with detach_weights")
        expect(any(bool(gate.grad != 0) for gate in gates),
               f"{probe.where}: no gate of 0 gets a nonzero straight-through gradient")
        net.zero_grad(set_to_none=True)
        # the gate scales a single-site module's contribution linearly (a type that folds the gate
        # into a small tensor must not apply it twice, or to part of its delta only)
        for spec, m in zip(specs, _modules(net)):
            if getattr(type(m), "_register", None) is not PeftModule._register:
                continue
            seen: list[torch.Tensor] = []
            handle = get_submodule(model, spec.site("target")).register_forward_hook(
                lambda _m, _a, out, seen=seen: seen.append(out.detach().clone()))
            try:
                for other in _modules(net):
                    other.reset_controls()
                    other.enabled = other is m
                for g in (0.0, 0.5, 1.0):
                    m.gate = torch.tensor(g)
                    with torch.no_grad():
                        net(**probe.batch)
            finally:
                handle.remove()
            s0, s_half, s1 = seen[-3], seen[-2], seen[-1]
            expect(torch.allclose(s_half - s0, 0.5 * (s1 - s0), rtol=1e-4, atol=1e-6),
                   f"{spec.id}: a gate of 0.5 does not scale the module's contribution by 0.5")
        for m in _modules(net):
            m.reset_controls()
            m.gate = torch.ones(())
        with torch.no_grad():
            out = probe.output(net)
        expect(torch.allclose(out, top, rtol=1e-5, atol=1e-6), f"{probe.where}: a gate of 1 changes the module's output")


def check_detach_hooks(probe: ModuleTypeProbe) -> None:
    """``detach_hooks`` leaves no module attached: the backbone gives its
    own output again."""
    with probe.supernet(random=True) as net:
        net.detach_hooks()
        with torch.no_grad():
            out = probe.output()
        expect(torch.equal(out, probe.reference), f"{probe.name}: detach_hooks leaves a module attached")


def check_discrete_model(probe: ModuleTypeProbe) -> None:
    """A structure of every position at a middle candidate rank, built on a
    fresh backbone, holds exactly the structure's count, gives the backbone's
    output at initialisation, and trains nothing but its modules and the task
    head."""
    name, family, specs, candidates = probe.name, probe.family, probe.specs, probe.candidates
    mid = candidates[len(candidates) // 2]
    structure = Structure.from_choices(specs, {i: mid for i in range(len(specs))})
    fresh = tiny_model(family, layers=1, seed=probe.seed).eval()
    peft_model = structure.build(fresh, probe.registry)
    n = peft_model.peft_parameter_count()
    expect(n == structure.count(), f"{name} ({family}): discrete model holds {n} PEFT parameters, "
                                   f"the structure counts {structure.count()}")
    out = probe.output(peft_model)
    expect(torch.equal(out.detach(), probe.reference), f"{name} ({family}): the zero-initialised discrete model "
                                                       "changes the output")
    (out * probe.direction()).sum().backward()
    fresh_head = {id(p) for p in fresh.parameters() if p.requires_grad}
    for pname, p in fresh.named_parameters():
        if id(p) not in fresh_head:
            expect(p.grad is None, f"discrete model: backbone parameter {pname} got a gradient")
    expect(all(p.requires_grad for p in peft_model.peft.parameters()), "discrete PEFT weights are frozen")
    expect(fresh_head == {id(p) for _, p in trainable_head_parameters(fresh, _HEADS)},
           "discrete model: something besides the task head requires grad in the backbone")


#: Every rule, in the order :func:`check_peft_module_type` runs them.
MODULE_TYPE_RULES: tuple[Callable[[ModuleTypeProbe], None], ...] = (
    check_positions,
    check_counts,
    check_trainable_parameters,
    check_zero_initialisation,
    check_weight_entanglement,
    check_rank_mask,
    check_switch_off,
    check_gates,
    check_detach_hooks,
    check_discrete_model,
)


def check_peft_module_type(
    mtype: PeftModuleType | str, plugins: Any, *, family: str = "bert", ranks: Sequence[int] = (1, 2, 4),
    options: Mapping[str, Any] | None = None, seed: int = 0,
) -> dict[str, Any]:
    """The contract every PEFT module type must keep, checked on a one-block
    :func:`tiny_model` of ``family`` with the type put at every position it
    takes (every role for a single-role type): every rule of
    :data:`MODULE_TYPE_RULES`, in order:

    * no position is a task head;
    * the count function is exact: pure count == spec count == the discrete
      module's ``numel`` at every rank, and the supernet module holds the
      count at the largest rank;
    * only PEFT weights (and the task head) require grad, and no backbone
      parameter gets a gradient;
    * zero initialisation: the supernet with every module on (mode
      ``all_on``) gives exactly the frozen backbone's outputs, every module
      computing once per forward;
    * weight entanglement: the discrete module at rank ``d`` has the
      supernet's parameter names, each tensor a *leading slice* of the
      supernet's, ``count(d)`` entries in all; the supernet at rank ``d``
      reads nothing else (with every other entry set to NaN its output does
      not change), gets no gradient elsewhere, and computes what the discrete
      module does with those slices;
    * the rank mask of a candidate at the largest rank gives the output at
      that rank;
    * a module switched off is never computed and changes nothing; a gate of
      0 removes the module's whole output yet passes a straight-through
      gradient to the gate, a gate scales the output linearly, and
      ``detach_weights`` keeps gradients from its weights;
    * ``detach_hooks`` leaves the backbone as it was; a discrete model built
      from a structure holds the structure's count and gives the backbone's
      output at initialisation.

    ``mtype`` must be registered in ``plugins.peft_modules`` (load your
    plugin with ``load_plugins(plugins=[...])``). Raises ``AssertionError``
    on a broken contract and :class:`~bipeft_core.errors.TargetError` if the
    type takes no position in ``family`` (as prefix-tuning in GPT-2). Returns
    a small report: the family, the number of modules and their ids.
    """
    probe = ModuleTypeProbe.build(mtype, plugins, family=family, ranks=ranks, options=options, seed=seed)
    for rule in MODULE_TYPE_RULES:
        rule(probe)
    return probe.report()


# -- the contract class ---------------------------------------------------------------------

def _registering(mtype: PeftModuleType) -> object:
    class _Registers:
        name = f"contract-{mtype.name}"

        @hookimpl
        def bipeft_register_peft_modules(self, registry: Any) -> None:
            registry.add(mtype)

    return _Registers()


class PeftModuleTypeContract:
    """The :class:`PeftModuleType` contract as pytest tests: subclass it in a
    ``Test...`` class and set :attr:`module_type`. Every rule of
    :func:`check_peft_module_type` is a test of its own, run on each of
    :attr:`families`; the count function is also property-tested over
    drawn shapes and rank sets."""

    module_type: ClassVar[PeftModuleType | str]
    """The type under test: an instance, or the name it is registered under
    by :attr:`extra_plugins`."""
    extra_plugins: ClassVar[Sequence[object]] = ()
    """Plugins to load besides the built-in module types, target maps and
    spaces. An instance in :attr:`module_type` that none of them registers
    is registered for the test."""
    families: ClassVar[Sequence[str]] = TINY_FAMILIES
    """The tiny model families to check on (the type must take a position
    in each)."""
    ranks: ClassVar[Sequence[int]] = (1, 2, 4)
    options: ClassVar[Mapping[str, Any] | None] = None
    """Options a space passes the type (``[[modules]] options``)."""
    max_features: ClassVar[int] = 96
    max_rank: ClassVar[int] = 12

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if "family" in metafunc.fixturenames:
            metafunc.parametrize("family", list(self.families), scope="class")

    @pytest.fixture(scope="class")
    @classmethod
    def contract_plugins(cls) -> Any:
        """The plugins the contract loads: built-in module types, target maps
        and spaces, :attr:`extra_plugins`, and the type if none registers it."""
        plugins = load_module_plugins(list(cls.extra_plugins))
        mtype = cls.module_type
        if not isinstance(mtype, str) and mtype.name not in plugins.peft_modules:
            plugins = load_module_plugins([*cls.extra_plugins, _registering(mtype)])
        return plugins

    @pytest.fixture(scope="class")
    @classmethod
    def resolved_type(cls, contract_plugins: Any) -> PeftModuleType:
        mtype = cls.module_type
        return contract_plugins.peft_modules.get(mtype if isinstance(mtype, str) else mtype.name)

    @pytest.fixture(scope="class")
    @classmethod
    def probe(cls, contract_plugins: Any, resolved_type: PeftModuleType, family: str) -> ModuleTypeProbe:
        return ModuleTypeProbe.build(resolved_type, contract_plugins, family=family, ranks=cls.ranks,
                                     options=cls.options)

    # -- what the type declares ---------------------------------------------------------
    def test_declares_name_kind_roles_and_site_kind(self, resolved_type: PeftModuleType) -> None:
        t = resolved_type
        expect(isinstance(t.name, str) and bool(t.name), f"{t!r}: name {t.name!r} is not a non-empty string")
        expect(t.kind in ("matrix", "vector"), f"{t.name}: kind {t.kind!r} is not 'matrix' or 'vector'")
        expect(isinstance(t.roles, tuple) and len(t.roles) >= 1 and all(isinstance(r, str) for r in t.roles),
               f"{t.name}: roles {t.roles!r} is not a non-empty tuple of role names")
        expect(len(set(t.roles)) == len(t.roles), f"{t.name}: roles {t.roles!r} repeat a role")
        expect(t.site_kind in ("linear", "norm", "any"), f"{t.name}: site_kind {t.site_kind!r} is not "
                                                         "'linear', 'norm' or 'any'")

    def test_count_function_is_exact_over_drawn_shapes(self, resolved_type: PeftModuleType) -> None:
        # a @given function of its own per test: hypothesis refuses one test method run by several classes
        @settings(deadline=None)
        @given(spec=module_specs(resolved_type, max_features=self.max_features, max_rank=self.max_rank,
                                 options=self.options))
        def count_is_exact(spec: ModuleSpec) -> None:
            check_count_function(resolved_type, spec)

        count_is_exact()

    # -- the rules, per family ------------------------------------------------------------
    def test_positions(self, probe: ModuleTypeProbe) -> None:
        check_positions(probe)

    def test_count_function_is_exact_at_every_position(self, probe: ModuleTypeProbe) -> None:
        check_counts(probe)

    def test_only_peft_weights_and_the_head_train(self, probe: ModuleTypeProbe) -> None:
        check_trainable_parameters(probe)

    def test_zero_initialisation(self, probe: ModuleTypeProbe) -> None:
        check_zero_initialisation(probe)

    def test_weight_entanglement(self, probe: ModuleTypeProbe) -> None:
        check_weight_entanglement(probe)

    def test_rank_mask(self, probe: ModuleTypeProbe) -> None:
        check_rank_mask(probe)

    def test_switched_off_modules(self, probe: ModuleTypeProbe) -> None:
        check_switch_off(probe)

    def test_gates(self, probe: ModuleTypeProbe) -> None:
        check_gates(probe)

    def test_detach_hooks(self, probe: ModuleTypeProbe) -> None:
        check_detach_hooks(probe)

    def test_discrete_model(self, probe: ModuleTypeProbe) -> None:
        check_discrete_model(probe)
