"""Helpers for testing bipeft and its plugins: tiny random-weight models of
each supported family, and contract checks every PEFT module type must pass.

Plugin authors can run the same checks on their own module types::

    from bipeft_core.testing import check_peft_module_type, load_module_plugins

    plugins = load_module_plugins([my_plugin])
    for family in ("bert", "t5", "llama"):
        check_peft_module_type("my_type", plugins, family=family)

and property-test their count function with the hypothesis strategies
(:func:`module_specs`, :func:`shapes`, :func:`rank_sets`)::

    @given(spec=module_specs(my_type, max_features=64, max_rank=8))
    def test_count(spec):
        check_count_function(my_type, spec)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import attrs
import torch
from torch import nn

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.modules import PeftModule, get_submodule
from bipeft_core.targets import ROLES
from bipeft_core.types import ModuleSpec, Shape, Site, check_ranks

__all__ = [
    "TINY_FAMILIES",
    "InterruptAt",
    "check_count_function",
    "check_peft_module_type",
    "discrete_spec",
    "load_module_plugins",
    "module_specs",
    "rank_sets",
    "shapes",
    "synthetic_model",
    "synthetic_sites",
    "synthetic_spec",
    "tiny_batch",
    "tiny_model",
    "toy_accuracy",
    "toy_examples",
]

TINY_FAMILIES = ("bert", "roberta", "t5", "gpt2", "llama")


def tiny_model(family: str, *, vocab_size: int = 128, num_labels: int = 2, hidden: int = 32,
               layers: int = 2, seed: int = 0, **overrides: Any) -> nn.Module:
    """A randomly initialised model of ``family`` with a task head: sequence
    classification for encoders and decoders, conditional generation for T5.
    Never touches the hub."""
    import transformers as T

    torch.manual_seed(seed)
    if family == "bert":
        cfg = T.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=4, intermediate_size=2 * hidden, num_labels=num_labels,
                           pad_token_id=0, **overrides)
        return T.BertForSequenceClassification(cfg)
    if family == "roberta":
        cfg = T.RobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=4, intermediate_size=2 * hidden, num_labels=num_labels,
                              pad_token_id=1, **overrides)
        return T.RobertaForSequenceClassification(cfg)
    if family == "t5":
        cfg = T.T5Config(vocab_size=vocab_size, d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden,
                         num_layers=layers, num_decoder_layers=layers, num_heads=4, pad_token_id=0,
                         decoder_start_token_id=0, **overrides)
        return T.T5ForConditionalGeneration(cfg)
    if family == "gpt2":
        cfg = T.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4,
                           num_labels=num_labels, pad_token_id=0, **overrides)
        return T.GPT2ForSequenceClassification(cfg)
    if family == "llama":
        cfg = T.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                            num_labels=num_labels, pad_token_id=0, **overrides)
        return T.LlamaForSequenceClassification(cfg)
    raise ValueError(f"unknown tiny model family {family!r}; one of {TINY_FAMILIES}")


def toy_examples(n: int, *, length: int = 8, seed: int = 0, flip: bool = False,
                 t5: bool = False) -> list[dict[str, torch.Tensor]]:
    """A learnable toy task for the tiny models (vocabulary 128): the label is
    whether the first token is in the upper half. ``flip`` inverts the labels
    (a process that sees other data); ``t5`` gives each label as two target
    tokens (``10 + label``, end of sequence) for a text-to-text model."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(2, 128, (length,), generator=g)
        label = int(ids[0] > 64) ^ int(flip)
        row = {"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long)}
        row["labels"] = torch.tensor([10 + label, 1]) if t5 else torch.tensor(label)
        rows.append(row)
    return rows


def toy_accuracy(model: nn.Module, rows: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Accuracy of a sequence classifier on :func:`toy_examples` (one batch)."""
    model.eval()
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return {"accuracy": float((logits.argmax(-1) == batch["labels"]).float().mean())}


class InterruptAt:
    """A plugin that raises ``error`` after search step ``step`` (to test
    checkpoints and resume)."""

    name = "interrupt"

    def __init__(self, step: int, error: type[BaseException] = KeyboardInterrupt) -> None:
        self.step, self.error = step, error

    @hookimpl
    def bipeft_after_step(self, state: Any, control: Any) -> None:
        if state.step == self.step:
            raise self.error


def tiny_batch(model: nn.Module, *, batch: int = 2, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs for :func:`tiny_model` (with decoder inputs for T5)."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "is_encoder_decoder", False):
        out["decoder_input_ids"] = torch.randint(2, vocab, (batch, 3), generator=g)
    return out


# -- plugins for module tests ------------------------------------------------------------

#: Built-ins that module tests need besides the PEFT module types.
_MODULE_TEST_PLUGINS = ("target_maps", "spaces")


def load_module_plugins(plugins: Sequence[object] = (), *, entry_points: bool = False) -> Any:
    """:func:`bipeft_core.plugins.load_plugins` with only the built-ins that
    provide PEFT module types, target maps and search spaces (strategies and
    tasks left out), plus ``plugins`` (e.g. a third-party module type)."""
    from bipeft_core.plugins import BUILTIN_PLUGINS, load_plugins

    keep = {n for n, mod in BUILTIN_PLUGINS.items() if mod.startswith("bipeft_plugins.modules.")}
    keep |= set(_MODULE_TEST_PLUGINS)
    return load_plugins(plugins, disable=[n for n in BUILTIN_PLUGINS if n not in keep], entry_points=entry_points)


# -- synthetic positions ----------------------------------------------------------------


class _SyntheticModel(nn.Module):
    """Stands in for a backbone where a module type only reads its config."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_attention_heads=heads, model_type="synthetic")


def synthetic_model(*, heads: int = 1) -> nn.Module:
    """An empty module with a ``config`` (``num_attention_heads=heads``), to
    build modules from synthetic specs without a real backbone."""
    return _SyntheticModel(heads)


def _role_shape(role: str, d: int, f: int) -> tuple[str, int, int]:
    if role == "norm":
        return "norm", d, d
    if role == "attn_qkv":
        return "linear", d, 3 * d
    if role == "ffn_in":
        return "linear", d, f
    if role == "ffn_out":
        return "linear", f, d
    return "linear", d, d


def synthetic_sites(
    mtype: PeftModuleType, *, d_model: int, inner: int | None = None,
    in_features: int | None = None, out_features: int | None = None,
) -> dict[str, Site]:
    """Sites for one module of ``mtype`` in a made-up block of width
    ``d_model`` (FFN width ``inner``). A single-role type gets one site
    (``in_features`` → ``out_features`` for a linear, ``d_model`` for a
    norm); a multi-role type gets one linear per role, shaped as in a
    transformer block (``ffn_in``: d → inner, ``ffn_out``: inner → d, attention
    projections d → d)."""
    inner = inner if inner is not None else 2 * d_model
    sites: dict[str, Site] = {}
    for order, role in enumerate(mtype.roles):
        if len(mtype.roles) == 1:
            if mtype.site_kind == "norm":
                site_role, kind, fin, fout = "norm", "norm", d_model, d_model
            else:
                site_role, kind = "ffn_in", "linear"
                fin = in_features if in_features is not None else d_model
                fout = out_features if out_features is not None else d_model
        else:
            site_role = role
            kind, fin, fout = _role_shape(role, d_model, inner)
        sites[role] = Site(name=f"block.{site_role}", role=site_role, layer="block", kind=kind,
                           in_features=fin, out_features=fout, order=order)
    return sites


def synthetic_spec(
    mtype: PeftModuleType, sites: Mapping[str, Site], ranks: Sequence[int] = (),
    *, options: Mapping[str, Any] | None = None, index: int = 0,
) -> ModuleSpec:
    """The :class:`ModuleSpec` a space would yield for ``mtype`` at ``sites``
    (shape and counts from the type's own functions, as
    :meth:`DeclarativeSpace.modules` computes them)."""
    options = dict(options or {})
    shape = mtype.shape(dict(sites), **options)
    if mtype.kind == "matrix":
        ranks = check_ranks(list(ranks), f"synthetic {mtype.name} spec")
        counts = tuple(int(mtype.param_count(shape, r, **options)) for r in ranks)
    else:
        ranks = ()
        counts = (int(mtype.param_count(shape, None, **options)),)
    multi = len(mtype.roles) > 1
    anchor = "block" if multi else next(iter(sites.values())).name
    return ModuleSpec(
        index=index, id=f"{mtype.name}:{anchor}", type=mtype.name, kind=mtype.kind,
        position="block" if multi else next(iter(sites.values())).role, layer="block",
        sites=tuple((r, s.name) for r, s in sites.items()), shape=shape, ranks=tuple(ranks),
        counts=counts, options=options,
    )


def discrete_spec(spec: ModuleSpec, rank: int | None) -> ModuleSpec:
    """``spec`` narrowed to one rank, as a structure builds its discrete form."""
    if rank is None:
        return spec
    return attrs.evolve(spec, ranks=(rank,), counts=(spec.count(rank),))


# -- hypothesis strategies --------------------------------------------------------------

try:
    from hypothesis import strategies as st

    _composite = st.composite
except ImportError:  # pragma: no cover - hypothesis is a test extra

    def _composite(fn: Callable[..., Any]) -> Callable[..., Any]:
        def missing(*args: Any, **kwargs: Any) -> Any:
            raise ImportError(f"bipeft_core.testing.{fn.__name__} needs hypothesis: pip install 'bipeft[test]'")

        return missing


def _multiples(draw: Any, lo: int, hi: int, multiple_of: int) -> int:
    lo_k = max(1, -(-lo // multiple_of))
    hi_k = max(lo_k, hi // multiple_of)
    return multiple_of * draw(st.integers(lo_k, hi_k))


@_composite
def rank_sets(draw: Any, *, min_rank: int = 1, max_rank: int = 16, min_size: int = 1,
              max_size: int = 4) -> tuple[int, ...]:
    """Valid candidate rank sets: distinct whole numbers in
    ``[min_rank, max_rank]``, sorted ascending."""
    if min_rank < 1:
        raise ValueError(f"candidate ranks are >= 1, got min_rank={min_rank}")
    max_size = min(max_size, max_rank - min_rank + 1)
    values = draw(st.lists(st.integers(min_rank, max_rank), min_size=min(min_size, max_size),
                           max_size=max_size, unique=True))
    return tuple(sorted(values))


@_composite
def shapes(draw: Any, *, min_features: int = 1, max_features: int = 256, multiple_of: int = 1) -> Shape:
    """:class:`Shape` values (in and out features drawn independently, each
    a multiple of ``multiple_of``)."""
    return Shape(in_features=_multiples(draw, min_features, max_features, multiple_of),
                 out_features=_multiples(draw, min_features, max_features, multiple_of))


@_composite
def module_specs(
    draw: Any, mtype: PeftModuleType, *, min_features: int = 1, max_features: int = 128,
    multiple_of: int = 1, min_rank: int = 1, max_rank: int = 16, max_ranks: int = 4,
    options: Mapping[str, Any] | None = None,
) -> ModuleSpec:
    """Specs of ``mtype`` at synthetic positions (see :func:`synthetic_sites`)
    with drawn widths and candidate ranks; counts from the type's own
    function."""
    d = _multiples(draw, min_features, max_features, multiple_of)
    inner = _multiples(draw, min_features, max_features, multiple_of)
    fin = _multiples(draw, min_features, max_features, multiple_of)
    fout = _multiples(draw, min_features, max_features, multiple_of)
    sites = synthetic_sites(mtype, d_model=d, inner=inner, in_features=fin, out_features=fout)
    ranks = draw(rank_sets(min_rank=min_rank, max_rank=max_rank, max_size=max_ranks)) if mtype.kind == "matrix" else ()
    return synthetic_spec(mtype, sites, ranks, options=options)


# -- contract checks ----------------------------------------------------------------------


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


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
    _expect(len(spec.counts) == len(ranks), f"{spec.id}: {len(spec.counts)} counts for ranks {ranks}")
    for rank, count in zip(ranks, spec.counts):
        pure = mtype.param_count(spec.shape, rank, **opts)
        _expect(isinstance(pure, numbers.Integral) and not isinstance(pure, bool),
                f"{mtype.name}.param_count returned {pure!r} ({type(pure).__name__}), not a whole number")
        _expect(pure == count, f"{spec.id}: param_count at rank {rank} is {pure}, the spec says {count}")
        module = mtype.discrete(discrete_spec(spec, rank), model, rank)
        n = _numel(module)
        _expect(n == pure, f"{spec.id}: discrete module at rank {rank} holds {n} parameters, "
                           f"param_count says {pure} (shape {spec.shape})")
    n = _numel(mtype.supernet(spec, model))
    _expect(n == spec.max_count, f"{spec.id}: supernet module holds {n} parameters, the count at the "
                                 f"largest rank {spec.max_rank} is {spec.max_count}")


def _space_for(mtype: PeftModuleType, ranks: Sequence[int], options: Mapping[str, Any] | None) -> Any:
    from bipeft_core.space import DeclarativeSpace

    entry: dict[str, Any] = {"type": mtype.name, "options": dict(options or {})}
    if len(mtype.roles) == 1:
        entry["targets"] = list(ROLES)
    return DeclarativeSpace.from_dict({"name": "contract", "ranks": list(ranks), "modules": [entry]},
                                      source=f"contract space for {mtype.name!r}")


def check_peft_module_type(
    mtype: PeftModuleType | str, plugins: Any, *, family: str = "bert", ranks: Sequence[int] = (1, 2, 4),
    options: Mapping[str, Any] | None = None, seed: int = 0,
) -> dict[str, Any]:
    """The contract every PEFT module type must keep, checked on a one-block
    :func:`tiny_model` of ``family`` with the type put at every position it
    takes (every role for a single-role type):

    * no position is a task head;
    * the count function is exact: pure count == spec count == the discrete
      module's ``numel`` at every rank, and the supernet module holds the
      count at the largest rank;
    * weight entanglement: the discrete module at rank ``d`` has the
      supernet's parameter names, each tensor a *leading slice* of the
      supernet's, ``count(d)`` entries in all; the supernet at rank ``d``
      reads nothing else (with every other entry set to NaN its output does
      not change), gets no gradient elsewhere, and computes what the discrete
      module does with those slices;
    * zero initialisation: the supernet with every module on (mode
      ``all_on``) and a discrete model built from a structure give exactly
      the frozen backbone's outputs;
    * only PEFT weights (and the task head) require grad, and no backbone
      parameter gets a gradient;
    * every module computes once per forward; the rank mask of a candidate
      at the largest rank gives the output at that rank;
    * a module switched off is never computed and changes nothing; a gate of
      0 removes the module's whole output yet passes a straight-through
      gradient to the gate, and ``detach_weights`` keeps gradients from its
      weights.

    ``mtype`` must be registered in ``plugins.peft_modules`` (load your
    plugin with ``load_plugins(plugins=[...])``). Raises ``AssertionError``
    on a broken contract and :class:`~bipeft_core.errors.TargetError` if the
    type takes no position in ``family`` (as prefix-tuning in GPT-2). Returns
    a small report: the family, the number of modules and their ids.
    """
    from bipeft_core.structure import Structure
    from bipeft_core.supernet import Supernet
    from bipeft_core.targets import find_target_map

    registry = plugins.peft_modules
    name = mtype if isinstance(mtype, str) else mtype.name
    mtype = registry.get(name)
    model = tiny_model(family, layers=1, seed=seed).eval()
    batch = tiny_batch(model, seed=seed)
    target_map = find_target_map(model, plugins.target_maps)
    specs = _space_for(mtype, ranks, options).modules(model, target_map, registry)
    _expect(len(specs) > 0, f"{name}: no module in {family}")
    for spec in specs:
        _expect(spec.type == name, f"{spec.id}: type {spec.type!r}, expected {name!r}")
        _expect(spec.kind == mtype.kind, f"{spec.id}: kind {spec.kind!r}, the type says {mtype.kind!r}")
        for role, site in spec.sites:
            _expect(not target_map.is_head(site), f"{spec.id}: site {site} ({role}) is a task head")
        check_count_function(mtype, spec, model=model)

    with torch.no_grad():
        reference = _logits(model(**batch)).clone()

    # -- supernet at initialisation: exactly the backbone ---------------------------------
    torch.manual_seed(seed)
    net = Supernet(model, specs, registry)
    head = {id(p) for p in net.head_params}
    peft = {id(p) for p in net.peft_parameters()}
    for pname, p in model.named_parameters():
        if id(p) not in head:
            _expect(not p.requires_grad, f"backbone parameter {pname} requires grad")
    _expect(all(p.requires_grad for p in net.peft_parameters()), f"{name}: a PEFT weight does not require grad")
    _expect(peft.isdisjoint({id(p) for p in model.parameters()}),
            f"{name}: a PEFT module holds a backbone parameter")
    net.configure("all_on")
    before = [m.calls for m in net.peft]
    with torch.no_grad():
        out = _logits(net(**batch))
    _expect(torch.equal(out, reference), f"{name} ({family}): the zero-initialised supernet changes the output "
                                         f"(max diff {(out - reference).abs().max().item():.3g})")
    _expect(all(m.calls - b == 1 for m, b in zip(net.peft, before)),
            f"{name}: a module did not compute exactly once in one forward")

    # -- random weights: slices, gradients, rank masks, switches, gates -----------------
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.peft_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    probe = torch.randn(reference.shape, generator=g)
    candidates: tuple[int | None, ...] = specs[0].ranks if mtype.kind == "matrix" else (None,)
    by_rank: dict[int | None, torch.Tensor] = {}
    for rank in candidates:
        net.zero_grad(set_to_none=True)
        _set_rank(net, rank)
        out = _logits(net(**batch))
        (out * probe).sum().backward()
        by_rank[rank] = out.detach()
        _expect(not torch.equal(by_rank[rank], reference),
                f"{name} ({family}): modules with random weights leave the output unchanged")
        for pname, p in model.named_parameters():
            if id(p) not in head:
                _expect(p.grad is None, f"backbone parameter {pname} got a gradient")
        _expect(net.alpha.grad is None and net.beta.grad is None,
                "architecture logits got a gradient in all_on mode")
        discrete = [mtype.discrete(discrete_spec(s, rank), model, rank) for s in specs]
        learning = 0
        for spec, m, d in zip(specs, net.peft, discrete):
            slices = _leading_slices(spec, m, d)
            n = sum(_slice_numel(p, slices[k]) for k, p in m.named_parameters())
            _expect(n == spec.count(rank), f"{spec.id}: the leading slices at rank {rank} hold {n} entries, "
                                           f"the count is {spec.count(rank)}")
            grads = 0
            for k, p in m.named_parameters():
                if p.grad is None:
                    continue
                outside = p.grad.clone()
                outside[slices[k]] = 0
                _expect(not outside.any(), f"{spec.id}: at rank {rank}, {k} gets a gradient outside its "
                                           "leading slice")
                grads += int(p.grad.any())
            learning += grads > 0
        # some modules may not change the loss at all (a bias on attention keys shifts every score of a
        # query alike), but most must
        _expect(learning > 0, f"{name} ({family}): at rank {rank} no module's weights get a gradient")
        # the supernet at this rank reads only the slices, and they are the discrete module's weights
        saved = [p.detach().clone() for p in net.peft_parameters()]
        with torch.no_grad():
            for m, d in zip(net.peft, discrete):
                slices = _leading_slices(None, m, d)
                own = dict(m.named_parameters())
                for k, p in d.named_parameters():
                    p.copy_(own[k][slices[k]])
                    poisoned = torch.full_like(own[k], float("nan"))
                    poisoned[slices[k]] = own[k][slices[k]]
                    own[k].copy_(poisoned)
            out = _logits(net(**batch))
            _expect(torch.allclose(out, by_rank[rank], rtol=1e-5, atol=1e-6),
                    f"{name} ({family}): at rank {rank} the supernet reads weights outside the leading slices "
                    "(NaN there changes its output)")
            for p, s in zip(net.peft_parameters(), saved):
                p.copy_(s)
            net.detach_hooks()
            for d in discrete:
                d.attach(model)
            out = _logits(model(**batch))
            for d in discrete:
                d.detach()
            for m in net.peft:
                m.attach(model)
        _expect(torch.allclose(out, by_rank[rank], rtol=1e-4, atol=1e-5),
                f"{name} ({family}): the discrete modules at rank {rank} with the supernet's leading slices "
                f"give another output (max diff {(out - by_rank[rank]).abs().max().item():.3g})")
    net.zero_grad(set_to_none=True)

    if mtype.kind == "matrix":
        max_rank = specs[0].max_rank
        for rank in candidates:
            mask = torch.zeros(max_rank)
            mask[:rank] = 1.0
            before = [m.calls for m in net.peft]
            for m in net.peft:
                m.reset_controls()
                m.rank_mask = mask
            with torch.no_grad():
                out = _logits(net(**batch))
            _expect(all(m.calls - b == 1 for m, b in zip(net.peft, before)),
                    f"{name}: with a rank mask a module did not compute exactly once")
            _expect(torch.allclose(out, by_rank[rank], rtol=1e-4, atol=1e-5),
                    f"{name} ({family}): the rank mask of rank {rank} at rank {max_rank} does not give the "
                    f"output at rank {rank} (max diff {(out - by_rank[rank]).abs().max().item():.3g})")

    before = [m.calls for m in net.peft]
    for m in net.peft:
        m.reset_controls()
        m.enabled = False
    with torch.no_grad():
        out = _logits(net(**batch))
    _expect(torch.equal(out, reference), f"{name} ({family}): switched-off modules change the output")
    _expect(all(m.calls == b for m, b in zip(net.peft, before)), f"{name}: a switched-off module was computed")

    gates = [torch.zeros((), requires_grad=True) for _ in net.peft]
    for m, gate in zip(net.peft, gates):
        m.reset_controls()
        m.gate = gate
        m.detach_weights = True
    out = _logits(net(**batch))
    _expect(torch.equal(out.detach(), reference), f"{name} ({family}): a gate of 0 leaves part of the output")
    (out * probe).sum().backward()
    for spec, m, gate in zip(specs, net.peft, gates):
        # connected and finite; it may be exactly 0 where the module cannot change the loss (a bias on
        # attention keys shifts every score of a query alike)
        _expect(gate.grad is not None and bool(torch.isfinite(gate.grad)),
                f"{spec.id}: a gate of 0 gets no straight-through gradient ({gate.grad})")
        _expect(all(p.grad is None or not p.grad.any() for p in m.parameters()),
                f"{spec.id}: weights got a gradient with detach_weights")
    _expect(any(bool(gate.grad != 0) for gate in gates),
            f"{name} ({family}): no gate of 0 gets a nonzero straight-through gradient")
    net.zero_grad(set_to_none=True)
    # the gate scales a single-site module's contribution linearly (a type that folds the gate
    # into a small tensor must not apply it twice, or to part of its delta only)
    for spec, m in zip(specs, net.peft):
        if type(m)._register is not PeftModule._register:
            continue
        seen: list[torch.Tensor] = []
        handle = get_submodule(model, spec.site("target")).register_forward_hook(
            lambda _m, _a, out, seen=seen: seen.append(out.detach().clone()))
        try:
            for other in net.peft:
                other.reset_controls()
                other.enabled = other is m
            for g in (0.0, 0.5, 1.0):
                m.gate = torch.tensor(g)
                with torch.no_grad():
                    net(**batch)
        finally:
            handle.remove()
        s0, s_half, s1 = seen[-3], seen[-2], seen[-1]
        _expect(torch.allclose(s_half - s0, 0.5 * (s1 - s0), rtol=1e-4, atol=1e-6),
                f"{spec.id}: a gate of 0.5 does not scale the module's contribution by 0.5")
    top = candidates[-1]
    for m in net.peft:
        m.reset_controls()
        m.gate = torch.ones(())
    with torch.no_grad():
        out = _logits(net(**batch))
    _expect(torch.allclose(out, by_rank[top], rtol=1e-5, atol=1e-6),
            f"{name} ({family}): a gate of 1 changes the module's output")
    net.detach_hooks()
    with torch.no_grad():
        out = _logits(model(**batch))
    _expect(torch.equal(out, reference), f"{name}: detach_hooks leaves a module attached")

    # -- discrete form, from a structure, on a fresh backbone ---------------------------
    mid = candidates[len(candidates) // 2]
    structure = Structure.from_choices(specs, {i: mid for i in range(len(specs))})
    fresh = tiny_model(family, layers=1, seed=seed).eval()
    peft_model = structure.build(fresh, registry)
    n = peft_model.peft_parameter_count()
    _expect(n == structure.count(), f"{name} ({family}): discrete model holds {n} PEFT parameters, "
                                    f"the structure counts {structure.count()}")
    out = _logits(peft_model(**batch))
    _expect(torch.equal(out.detach(), reference), f"{name} ({family}): the zero-initialised discrete model "
                                                  "changes the output")
    (out * probe).sum().backward()
    fresh_head = {id(p) for p in fresh.parameters() if p.requires_grad}
    for pname, p in fresh.named_parameters():
        if id(p) not in fresh_head:
            _expect(p.grad is None, f"discrete model: backbone parameter {pname} got a gradient")
    _expect(all(p.requires_grad for p in peft_model.peft.parameters()), "discrete PEFT weights are frozen")
    _expect(fresh_head == {id(p) for _, p in _heads(fresh)},
            "discrete model: something besides the task head requires grad in the backbone")
    return {"family": family, "type": name, "modules": len(specs), "ids": [s.id for s in specs]}


def _set_rank(net: Any, rank: int | None) -> None:
    for m in net.peft:
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
    _expect(set(sup) == set(dis), f"{where}: supernet parameters {sorted(sup)} and discrete parameters "
                                  f"{sorted(dis)} differ")
    out = {}
    for k, p in dis.items():
        q = sup[k]
        _expect(p.dim() == q.dim() and all(a <= b for a, b in zip(p.shape, q.shape)),
                f"{where}: discrete {k} {tuple(p.shape)} is not a leading slice of the supernet's {tuple(q.shape)}")
        out[k] = tuple(slice(0, a) for a in p.shape)
    return out


def _slice_numel(p: torch.Tensor, index: tuple[slice, ...]) -> int:
    return p[index].numel()


def _heads(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    from bipeft_core.supernet import trainable_head_parameters

    return trainable_head_parameters(model, ("classifier", "score", "pooler"))
