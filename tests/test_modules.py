"""PEFT module types: the contract every registered type keeps (from
``bipeft_core.testing``), exact parameter counts, and what each built-in
type computes, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from bipeft_plugins.modules.bitfit import BitFit, BitFitModule
from bipeft_plugins.modules.lora import LoRA, LoRAModule
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bipeft_core.errors import TargetError
from bipeft_core.hookspecs import hookimpl
from bipeft_core.space import DeclarativeSpace, Shape
from bipeft_core.structure import Structure
from bipeft_core.supernet import Supernet
from bipeft_core.targets import TargetMap, find_target_map
from bipeft_core.testing import (
    TINY_FAMILIES,
    check_count_function,
    check_peft_module_type,
    discrete_spec,
    load_module_plugins,
    module_specs,
    rank_sets,
    shapes,
    synthetic_sites,
    synthetic_spec,
    tiny_batch,
    tiny_model,
)

# Loaded at collection time so that every registered type gets its own test ids.
# Module tests load only the module / target-map / space built-ins, so a broken
# strategy or task plugin cannot fail them.
PLUGINS = load_module_plugins()
TYPES = PLUGINS.peft_modules.names()
BUILTIN_TYPES = ("adapter_lr", "bitfit", "lnfit", "lora", "parallel_adapter", "prefix", "serial_adapter")


@pytest.fixture(scope="module")
def plugins():
    return PLUGINS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and a second one only waits
    for a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _specs(plugins, model, space):
    tm = find_target_map(model, plugins.target_maps)
    if isinstance(space, str):
        space = plugins.spaces.get(space)
    return space.modules(model, tm, plugins.peft_modules)


def test_every_builtin_type_is_registered(plugins):
    assert set(BUILTIN_TYPES) <= set(TYPES)
    kinds = {n: plugins.peft_modules.get(n).kind for n in BUILTIN_TYPES}
    assert kinds == {"adapter_lr": "matrix", "bitfit": "vector", "lnfit": "vector", "lora": "matrix",
                     "parallel_adapter": "matrix", "prefix": "matrix", "serial_adapter": "matrix"}
    assert plugins.peft_modules.get("parallel_adapter").roles == ("ffn_in", "ffn_out")
    assert plugins.peft_modules.get("prefix").roles == ("attn_q", "attn_o")


# -- exact counts ------------------------------------------------------------------------


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=20)
@given(data=st.data())
def test_count_function_equals_discrete_module_numel(plugins, name, data):
    """The pure count function equals ``sum(p.numel())`` of the discrete
    module at every rank, and the supernet module holds the count at the
    largest rank, over drawn widths and rank sets."""
    mtype = plugins.peft_modules.get(name)
    spec = data.draw(module_specs(mtype, max_features=96, max_rank=12))
    check_count_function(mtype, spec)


def _expected_count(name: str, shape: Shape, r: int) -> int:
    i, o = shape.in_features, shape.out_features
    if name == "lora":
        return r * (i + o)
    if name == "adapter_lr":
        b = max(1, o // 32)
        return 2 * r * (o + b) + b + o
    if name in ("bitfit", "lnfit"):
        return o
    if name == "serial_adapter":
        return 2 * r * o + r + o
    if name == "parallel_adapter":
        return r * i + r + r * o + o
    if name == "prefix":
        return r * (i + o) + 1
    raise AssertionError(name)


@pytest.mark.parametrize("name", BUILTIN_TYPES)
@settings(max_examples=50)
@given(shape=shapes(max_features=4096), rank=st.integers(1, 64))
def test_count_formulas_as_documented(plugins, name, shape, rank):
    """The formulas of docs/modules/<type>.md."""
    mtype = plugins.peft_modules.get(name)
    r = rank if mtype.kind == "matrix" else None
    assert mtype.param_count(shape, r) == _expected_count(name, shape, rank)


@settings(max_examples=30)
@given(ranks=rank_sets(min_rank=2, max_rank=9, max_size=3))
def test_rank_sets_strategy_draws_valid_sets(ranks):
    assert list(ranks) == sorted(set(ranks)) and all(2 <= r <= 9 for r in ranks) and 1 <= len(ranks) <= 3


@settings(max_examples=30)
@given(shape=shapes(min_features=8, max_features=64, multiple_of=8))
def test_shapes_strategy_respects_bounds(shape):
    for n in (shape.in_features, shape.out_features):
        assert 8 <= n <= 64 and n % 8 == 0


def test_count_check_rejects_a_wrong_count(plugins):
    class Miscounted(LoRA):
        name = "lora_miscounted"

        def param_count(self, shape, rank, **options):
            return super().param_count(shape, rank) + 1

    lora = plugins.peft_modules.get("lora")
    good = synthetic_spec(lora, synthetic_sites(lora, d_model=16, in_features=16, out_features=8), (1, 4))
    check_count_function(lora, good)
    bad_type = Miscounted()
    bad = synthetic_spec(bad_type, synthetic_sites(bad_type, d_model=16, in_features=16, out_features=8), (1, 4))
    with pytest.raises(AssertionError, match="holds"):
        check_count_function(bad_type, bad)


# -- the contract, for every registered type on every family --------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("name", TYPES)
def test_module_type_contract(plugins, name, family):
    if name == "prefix" and family == "gpt2":
        with pytest.raises(TargetError, match="attn_q"):
            check_peft_module_type(name, plugins, family=family)
        return
    report = check_peft_module_type(name, plugins, family=family)
    assert report["modules"] >= 1


def _plugin_with(*types):
    class _Plugin:
        name = "broken_" + types[0].name

        @hookimpl
        def bipeft_register_peft_modules(self, registry):
            for t in types:
                registry.add(t)

    return _Plugin()


class _NonZeroLoRAModule(LoRAModule):
    def __init__(self, spec, ranks, **options):
        super().__init__(spec, ranks, **options)
        nn.init.normal_(self.lora_B)


class _NonZeroLoRA(LoRA):
    name = "lora_nonzero"

    def supernet(self, spec, model):
        return _NonZeroLoRAModule(spec, spec.ranks)


class _TrailingSliceModule(LoRAModule):
    def delta(self, x, output):
        r = self.rank
        return F.linear(F.linear(x, self.w(self.lora_A)[-r:]), self.w(self.lora_B)[:, -r:])


class _TrailingSliceLoRA(LoRA):
    name = "lora_trailing"

    def supernet(self, spec, model):
        return _TrailingSliceModule(spec, spec.ranks)


class _UngatedBitFitModule(BitFitModule):
    def gated(self, t):  # ignores the gate
        return t

    def _apply_gate(self, delta, like):
        return delta.to(like.dtype)


class _UngatedBitFit(BitFit):
    name = "bitfit_ungated"

    def supernet(self, spec, model):
        return _UngatedBitFitModule(spec)


class _NonLinearGateModule(BitFitModule):
    def delta(self, x, output):  # g·(2 − g): right at 0 and 1, with a gradient at 0, wrong in between
        b = self.gated(self.w(self.bias))
        return b if self.gate is None else b * (2 - self.gate)


class _NonLinearGateBitFit(BitFit):
    name = "bitfit_nonlinear_gate"

    def supernet(self, spec, model):
        return _NonLinearGateModule(spec)


class _AlwaysOnModule(BitFitModule):
    def _register(self, model):
        def hook(_mod, args, kwargs, output):
            self.calls += 1
            return output + self._apply_gate(self.delta(None, output), output)

        self._hook(model, self.spec.site("target"), hook)


class _AlwaysOnBitFit(BitFit):
    name = "bitfit_always_on"

    def supernet(self, spec, model):
        return _AlwaysOnModule(spec)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (_NonZeroLoRA(), "zero-initialised supernet changes the output"),
        (_TrailingSliceLoRA(), "outside the leading slices|outside its leading slice"),
        (_UngatedBitFit(), "gate of 0"),
        (_NonLinearGateBitFit(), "gate of 0.5"),
        (_AlwaysOnBitFit(), "switched-off"),
    ],
    ids=lambda v: getattr(v, "name", "msg"),
)
def test_contract_catches_a_broken_third_party_type(broken, message):
    """A third-party type registered through a plugin runs the same checks,
    and a type that breaks the contract fails them."""
    plugins = load_module_plugins([_plugin_with(broken)])
    assert broken.name in plugins.peft_modules
    with pytest.raises(AssertionError, match=message):
        check_peft_module_type(broken.name, plugins, family="bert")


# -- what each type computes --------------------------------------------------------------


def _one(specs, type_, site_suffix):
    found = [s for s in specs if s.type == type_ and s.sites[0][1].endswith(site_suffix)]
    assert found, (type_, site_suffix)
    return found[0]


def _discrete(plugins, model, spec, rank=None):
    rank = rank if spec.is_matrix else None
    mod = plugins.peft_modules.get(spec.type).discrete(discrete_spec(spec, rank), model, rank)
    return mod.attach(model)


@pytest.mark.parametrize(
    ("family", "site"),
    [("bert", "attention.output.LayerNorm"), ("bert", "embeddings.LayerNorm"),
     ("t5", "block.0.layer.1.layer_norm"), ("t5", "decoder.final_layer_norm"),
     ("llama", "layers.0.input_layernorm"), ("llama", "model.norm")],
)
def test_lnfit_adds_delta_times_normalised_input(plugins, family, site):
    """LN(x) + δ·x̂, computed by hand for LayerNorm (BERT) and RMS norms
    (T5, Llama)."""
    model = tiny_model(family, layers=1)
    spec = _one(_specs(plugins, model, "s2"), "lnfit", site)
    norm = model.get_submodule(spec.site())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=g))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=g))
    module = _discrete(plugins, model, spec)
    delta = torch.randn(module.scale.shape, generator=g)
    with torch.no_grad():
        module.scale.copy_(delta)
    x = 3 * torch.randn(2, 5, spec.shape.out_features, generator=g) + 1
    if isinstance(norm, nn.LayerNorm):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        xhat = (x - mu) / torch.sqrt(var + norm.eps)
        ln = xhat * norm.weight + norm.bias
    else:
        assert "RMSNorm" in type(norm).__name__ or type(norm).__name__ == "T5LayerNorm"
        xhat = x / torch.sqrt((x**2).mean(-1, keepdim=True) + norm.variance_epsilon)
        ln = norm.weight * xhat
    with torch.no_grad():
        out = norm(x)
        torch.testing.assert_close(out, ln + delta * xhat, rtol=1e-5, atol=1e-5)
        module.gate = torch.zeros(())
        torch.testing.assert_close(norm(x), ln, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "site", "has_bias"),
    [("t5", "SelfAttention.q", False), ("t5", "DenseReluDense.wo", False), ("llama", "self_attn.q_proj", False),
     ("llama", "mlp.down_proj", False), ("bert", "attention.self.query", True), ("gpt2", "attn.c_attn", True),
     ("bert", "output.LayerNorm", True)],
)
def test_bitfit_adds_to_the_output_with_or_without_a_layer_bias(plugins, family, site, has_bias):
    model = tiny_model(family, layers=1)
    spec = _one(_specs(plugins, model, "s2"), "bitfit", site)
    layer = model.get_submodule(spec.site())
    assert (getattr(layer, "bias", None) is not None) == has_bias
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, spec.shape.in_features, generator=g)
    with torch.no_grad():
        before = layer(x)
        module = _discrete(plugins, model, spec)
        v = torch.randn(spec.shape.out_features, generator=g)
        module.bias.copy_(v)
        torch.testing.assert_close(layer(x), before + v)
        module.gate = torch.zeros(())  # gating it off keeps the layer's own bias
        assert torch.equal(layer(x), before)
    assert sum(p.numel() for p in module.parameters()) == spec.shape.out_features


def _randomise(module, seed=5, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_lora_output_by_hand(plugins, family):
    model = tiny_model(family, layers=1)
    site = "attention.self.query" if family == "bert" else "attn.c_attn"
    spec = _one(_specs(plugins, model, "s2"), "lora", site)
    layer = model.get_submodule(spec.site())
    module = plugins.peft_modules.get("lora").supernet(spec, model).attach(model)
    _randomise(module)
    x = torch.randn(2, 3, spec.shape.in_features)
    with torch.no_grad():
        module.enabled = False
        base = layer(x)
        module.enabled = True
        for r in spec.ranks:
            module.rank = r
            expected = base + (x @ module.lora_A[:r].T) @ module.lora_B[:, :r].T
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_lora_scale_option(plugins):
    space = DeclarativeSpace.from_dict({"name": "scaled", "modules": [
        {"type": "lora", "targets": ["attn_v"], "options": {"scale": 2.0}}]})
    model = tiny_model("bert", layers=1)
    (spec,) = _specs(plugins, model, space)
    assert spec.option_dict() == {"scale": 2.0}
    layer = model.get_submodule(spec.site())
    module = plugins.peft_modules.get("lora").supernet(spec, model).attach(model)
    _randomise(module)
    x = torch.randn(2, 3, spec.shape.in_features)
    with torch.no_grad():
        module.enabled = False
        base = layer(x)
        module.enabled = True
        expected = base + 2.0 * (x @ module.lora_A.T) @ module.lora_B.T
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_adapter_lr_output_by_hand(plugins):
    model = tiny_model("bert", layers=1, hidden=64)
    spec = _one(_specs(plugins, model, "s2"), "adapter_lr", "layer.0.output.dense")
    assert spec.shape.get("bottleneck") == 2  # max(1, 64 // 32)
    layer = model.get_submodule(spec.site())
    module = plugins.peft_modules.get("adapter_lr").supernet(spec, model).attach(model)
    _randomise(module)
    x = torch.randn(2, 3, layer.in_features)
    with torch.no_grad():
        module.enabled = False
        y = layer(x)
        module.enabled = True
        for r in spec.ranks:
            module.rank = r
            m = module
            h = F.gelu((y @ m.down_v[:r].T) @ m.down_u[:, :r].T + m.down_bias)
            expected = y + (h @ m.up_v[:r].T) @ m.up_u[:, :r].T + m.up_bias
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_serial_adapter_output_by_hand(plugins):
    model = tiny_model("llama", layers=1)
    spec = _one(_specs(plugins, model, "s1"), "serial_adapter", "mlp.down_proj")
    layer = model.get_submodule(spec.site())
    module = plugins.peft_modules.get("serial_adapter").supernet(spec, model).attach(model)
    _randomise(module)
    x = torch.randn(2, 3, layer.in_features)
    with torch.no_grad():
        module.enabled = False
        y = layer(x)
        module.enabled = True
        for r in spec.ranks:
            module.rank = r
            m = module
            expected = y + F.gelu(y @ m.down[:r].T + m.down_bias[:r]) @ m.up[:, :r].T + m.up_bias
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_parallel_adapter_reads_ffn_input_and_adds_to_ffn_output(plugins):
    """Llama: the FFN input is the shared input of gate_proj and up_proj; the
    adapter's output is added to down_proj's output."""
    model = tiny_model("llama", layers=1).eval()
    (spec,) = [s for s in _specs(plugins, model, "s1") if s.type == "parallel_adapter"]
    assert dict(spec.sites) == {"ffn_in": "model.layers.0.mlp.gate_proj", "ffn_out": "model.layers.0.mlp.down_proj"}
    mlp = model.model.layers[0].mlp
    module = plugins.peft_modules.get("parallel_adapter").supernet(spec, model).attach(model)
    _randomise(module)
    x = torch.randn(2, 3, model.config.hidden_size)
    with torch.no_grad():
        module.enabled = False
        base = mlp(x)
        module.enabled = True
        for r in spec.ranks:
            module.rank = r
            m = module
            expected = base + F.gelu(x @ m.down[:r].T + m.down_bias[:r]) @ m.up[:, :r].T + m.up_bias
            torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-6)
            assert m._x is None  # the captured input is not kept after the forward


@pytest.mark.parametrize(("family", "scaled"), [("bert", True), ("t5", False)])
def test_prefix_attends_to_its_tokens_by_hand(plugins, family, scaled):
    """Queries attend to the prefix through a softmax over the prefix alone;
    the result, times the learned gate, is added to the context entering the
    output projection (scaled by 1/sqrt(d_head) except in T5)."""
    model = tiny_model(family, layers=1).eval()
    spec = [s for s in _specs(plugins, model, "s1") if s.type == "prefix"][0]
    q_layer = model.get_submodule(spec.site("attn_q"))
    o_layer = model.get_submodule(spec.site("attn_o"))
    module = plugins.peft_modules.get("prefix").supernet(spec, model).attach(model)
    _randomise(module, std=0.5)
    seen = {}
    q_layer.register_forward_hook(lambda _m, _a, out: seen.__setitem__("q", out))
    o_layer.register_forward_pre_hook(lambda _m, args: seen.__setitem__("ctx", args[0]))
    batch = tiny_batch(model)
    heads = 4
    with torch.no_grad():
        module.enabled = False
        model(**batch)
        ctx0 = seen["ctx"]
        module.enabled = True
        for r in spec.ranks:
            module.rank = r
            model(**batch)
            q = seen["q"]
            b, length, width = q.shape
            dh = width // heads
            qh = q.reshape(b, length, heads, dh).transpose(1, 2)  # (b, H, L, dh)
            kh = module.prefix_k[:r].reshape(r, heads, dh).transpose(0, 1)  # (H, r, dh)
            vh = module.prefix_v[:r].reshape(r, heads, -1).transpose(0, 1)
            scores = qh @ kh.transpose(-1, -2)
            if scaled:
                scores = scores / math.sqrt(dh)
            att = (scores.softmax(-1) @ vh).transpose(1, 2).reshape(b, length, -1)
            torch.testing.assert_close(seen["ctx"], ctx0 + module.prefix_gate * att, rtol=1e-5, atol=1e-6)


def test_prefix_is_refused_for_gpt2_with_a_clear_error(plugins):
    model = tiny_model("gpt2", layers=1)
    with pytest.raises(TargetError, match=r"'prefix'.*attn_q"):
        _specs(plugins, model, "s1")


def test_prefix_needs_the_number_of_heads(plugins):
    """A user model without a config (custom target map) cannot take prefix tuning."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(8, 8)
            self.o = nn.Linear(8, 8)

        def forward(self, x):
            return self.o(self.q(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block()])

        def forward(self, x):
            return self.blocks[0](x)

    tm = TargetMap.from_dict({"name": "toy", "blocks": [r"blocks\.\d+"], "roles": {"attn_q": "q", "attn_o": "o"}})
    space = DeclarativeSpace.from_dict({"name": "p", "modules": [{"type": "prefix"}]})
    net = Net()
    specs = space.modules(net, tm, plugins.peft_modules)
    with pytest.raises(TargetError, match="num_attention_heads"):
        Supernet(net, specs, plugins.peft_modules)


def test_attach_is_idempotent_and_detach_removes_the_hooks(plugins):
    model = tiny_model("bert", layers=1).eval()
    spec = _one(_specs(plugins, model, "s2"), "bitfit", "attention.self.query")
    module = _discrete(plugins, model, spec)
    module.attach(model)  # a second attach replaces the first hooks
    batch = tiny_batch(model)
    with torch.no_grad():
        model(**batch)
        assert module.calls == 1
        module.detach()
        model(**batch)
    assert module.calls == 1


def test_discrete_model_from_every_type_counts_exactly(plugins):
    """S1 and S2 together on T5 (every built-in type): the discrete model at
    mixed ranks holds exactly the structure's count."""
    model = tiny_model("t5", layers=1)
    specs = _specs(plugins, model, "s2") + _specs(plugins, model, "s1")
    choices = {i: (s.ranks[i % len(s.ranks)] if s.is_matrix else None) for i, s in enumerate(specs)}
    structure = Structure.from_choices(specs, choices)
    assert {e.spec.type for e in structure.entries} == set(BUILTIN_TYPES)
    built = structure.build(tiny_model("t5", layers=1), plugins.peft_modules)
    assert built.peft_parameter_count() == structure.count() == sum(s.count(choices[i]) for i, s in enumerate(specs))
