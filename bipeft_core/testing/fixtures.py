"""Fixtures for testing bipeft and its plugins: tiny random-weight models of
each supported family and a learnable toy task for them, a plugin that
interrupts a search, synthetic positions and specs for module types, and a
synthetic supernet and search state on which the strategy contracts drive
sensitivity estimators, triggers and selectors without a backbone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import attrs
import torch
from torch import nn

from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import PeftModuleType
from bipeft_core.modules import PeftModule
from bipeft_core.state import SearchState
from bipeft_core.supernet import Supernet
from bipeft_core.types import ModuleSpec, Shape, Site, check_ranks

__all__ = [
    "TINY_FAMILIES",
    "InterruptAt",
    "discrete_spec",
    "load_module_plugins",
    "search_spec",
    "synthetic_model",
    "synthetic_products",
    "synthetic_search_specs",
    "synthetic_sites",
    "synthetic_spec",
    "synthetic_state",
    "synthetic_step",
    "synthetic_supernet",
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
    cfg: Any
    if family == "bert":
        cfg = T.BertConfig(**_kw(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                 num_attention_heads=4, intermediate_size=2 * hidden, num_labels=num_labels,
                                 pad_token_id=0, **overrides))
        return T.BertForSequenceClassification(cfg)
    if family == "roberta":
        cfg = T.RobertaConfig(**_kw(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                    num_attention_heads=4, intermediate_size=2 * hidden, num_labels=num_labels,
                                    pad_token_id=1, **overrides))
        return T.RobertaForSequenceClassification(cfg)
    if family == "t5":
        cfg = T.T5Config(**_kw(vocab_size=vocab_size, d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden,
                               num_layers=layers, num_decoder_layers=layers, num_heads=4, pad_token_id=0,
                               decoder_start_token_id=0, **overrides))
        return T.T5ForConditionalGeneration(cfg)
    if family == "gpt2":
        cfg = T.GPT2Config(**_kw(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4,
                                 num_labels=num_labels, pad_token_id=0, **overrides))
        return T.GPT2ForSequenceClassification(cfg)
    if family == "llama":
        cfg = T.LlamaConfig(**_kw(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                  num_labels=num_labels, pad_token_id=0, **overrides))
        return T.LlamaForSequenceClassification(cfg)
    raise ValueError(f"unknown tiny model family {family!r}; one of {TINY_FAMILIES}")


def _kw(**kwargs: Any) -> dict[str, Any]:
    """Config keywords as one mapping: transformers 5 declares its configs'
    fields, and the common ones (``num_labels``, ``pad_token_id``) are the
    base class's, which a type checker does not see in each signature."""
    return kwargs


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
    config: Any = model.config
    vocab = int(config.vocab_size)
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(config, "is_encoder_decoder", False):
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


# -- a synthetic search: specs, supernet and state without a backbone -----------------------


def search_spec(index: int, kind: str, in_features: int, out_features: int,
                ranks: Sequence[int] = (1, 4, 8)) -> ModuleSpec:
    """One searchable module for the strategy contracts: a ``matrix`` module
    whose count at rank ``r`` is ``r·(in + out)`` (a LoRA's), or a
    ``vector`` module of ``out`` parameters (a BitFit's). Its one site is
    ``layer.<index>``, which no backbone has: it is read, never attached."""
    if kind not in ("matrix", "vector"):
        raise ValueError(f"search_spec: kind {kind!r} is not 'matrix' or 'vector'")
    if kind == "matrix":
        ranks = check_ranks(list(ranks), f"search_spec {index}")
        counts = tuple(r * (in_features + out_features) for r in ranks)
    else:
        ranks, counts = (), (out_features,)
    return ModuleSpec(
        index=index, id=f"synthetic:{kind}.{index}", type="synthetic", kind=kind, position="target",
        layer=f"layer.{index // 4}", sites=(("target", f"layer.{index}"),),
        shape=Shape(in_features=in_features, out_features=out_features), ranks=tuple(ranks), counts=counts,
    )


def synthetic_search_specs(n_matrix: int = 6, n_vector: int = 4, *, ranks: Sequence[int] = (1, 4, 8),
                           seed: int = 0) -> list[ModuleSpec]:
    """``n_matrix`` matrix and ``n_vector`` vector modules (interleaved) of
    widths drawn from 8 to 64 with ``seed``: a small search space for the
    strategy contracts (see :func:`search_spec`)."""
    g = torch.Generator().manual_seed(seed)
    kinds = ["matrix"] * n_matrix + ["vector"] * n_vector
    order = torch.randperm(len(kinds), generator=g).tolist()
    specs = []
    for index, k in enumerate(order):
        fin, fout = (8 * int(w) for w in torch.randint(1, 9, (2,), generator=g))
        specs.append(search_spec(index, kinds[k], fin, fout, ranks))
    return specs


class _Unattached(PeftModule):
    """A supernet module that attaches nowhere and holds no weights: the
    selectors and triggers read only the supernet's logits and buffers."""

    def _register(self, model: nn.Module) -> None:
        return None


class _UnattachedModules:
    """Stands in for the module-type registry of a synthetic supernet."""

    def get(self, name: str) -> _UnattachedModules:
        return self

    def supernet(self, spec: ModuleSpec, model: nn.Module) -> PeftModule:
        return _Unattached(spec, spec.ranks)


def synthetic_supernet(specs: Sequence[ModuleSpec], *, seed: int = 0, logit_std: float = 1.0) -> Supernet:
    """A real :class:`~bipeft_core.supernet.Supernet` over ``specs`` (e.g.
    :func:`synthetic_search_specs`) on an empty backbone: its modules hold
    no weights and attach nowhere, but its logits (drawn with ``seed``, of
    standard deviation ``logit_std``), candidate tables, ``pruned`` and
    ``fixed_rank`` are the ones a search reads and writes."""
    return Supernet(synthetic_model(), specs, _UnattachedModules(), heads=(),
                    generator=torch.Generator().manual_seed(seed), logit_init_std=logit_std)


def synthetic_state(specs: Sequence[ModuleSpec], budget: int, *, steps_per_epoch: int = 8, epochs: int = 4,
                    seed: int = 0, logit_std: float = 1.0) -> SearchState:
    """A :class:`~bipeft_core.state.SearchState` at step 0 of a search of
    ``epochs × steps_per_epoch`` weight steps over a :func:`synthetic_supernet`,
    as the search loop sets it up: ``expected_sizes`` the largest
    counts, ``scores`` drawn with ``seed`` (uniform in [0, 1)), no trigger
    reset yet (``triggers_left`` 0)."""
    supernet = synthetic_supernet(specs, seed=seed, logit_std=logit_std)
    state = SearchState(supernet=supernet, specs=list(specs), budget=int(budget), steps_per_epoch=steps_per_epoch,
                        total_steps=steps_per_epoch * epochs)
    state.expected_sizes = state.max_counts()
    state.scores = torch.rand(len(specs), generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return state


@torch.no_grad()
def synthetic_step(state: SearchState, generator: torch.Generator, *, logit_scale: float = 0.3,
                   score_mix: float = 0.2) -> None:
    """One simulated weight step on ``state``: the logits a search still
    steps move by normal noise of scale ``logit_scale`` (α of unpruned
    modules; β of unpruned matrix modules whose rank is not fixed, as the
    search loop freezes the others), the scores of unpruned modules
    drift towards fresh uniform draws by ``score_mix`` (a new tensor, as an
    estimator's update would give), and ``state.step`` advances."""
    sn = state.supernet
    n = len(state.specs)
    live = ~sn.pruned
    searching = live & sn.is_matrix & (sn.fixed_rank < 0)
    sn.alpha.add_(live[:, None] * logit_scale * torch.randn(sn.alpha.shape, generator=generator))
    sn.beta.add_(searching[:, None] * logit_scale * torch.randn(sn.beta.shape, generator=generator))
    fresh = torch.rand(n, generator=generator, dtype=torch.float64)
    old = state.scores if state.scores is not None else torch.zeros(n, dtype=torch.float64)
    state.scores = torch.where(live, (1 - score_mix) * old + score_mix * fresh, old)
    state.step += 1


def synthetic_products(specs: Sequence[ModuleSpec], generator: torch.Generator, *, missing: float = 0.15,
                       ) -> list[list[torch.Tensor | None] | None]:
    """Per module, what :meth:`Supernet.module_products` gives a sensitivity
    estimator: one product tensor per weight tensor (a module has one or
    two, shaped from its spec, the same at every call), each ``None`` with
    probability ``missing`` (no gradient), and the whole module ``None``
    with that probability (not computed)."""
    out: list[list[torch.Tensor | None] | None] = []
    for spec in specs:
        if float(torch.rand((), generator=generator)) < missing:
            out.append(None)
            continue
        shapes: list[tuple[int, ...]] = [(spec.shape.out_features,)]
        if spec.is_matrix:
            shapes = [(spec.max_rank or 1, spec.shape.in_features), (spec.shape.out_features, spec.max_rank or 1)]
        prods: list[torch.Tensor | None] = []
        for shape in shapes:
            t = torch.randn(shape, generator=generator) * torch.rand((), generator=generator)
            prods.append(None if float(torch.rand((), generator=generator)) < missing else t)
        out.append(prods)
    return out
