"""Search spaces as data, target maps and backbone discovery: what S1 and S2
yield on each architecture, the T5-large count of the paper, user-defined
spaces and target maps, and the errors for what does not fit."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from bipeft_plugins.target_maps import BERT
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bipeft_core.errors import SearchSpaceError, TargetError, UnknownNameError
from bipeft_core.space import DeclarativeSpace, check_ranks
from bipeft_core.supernet import Supernet
from bipeft_core.targets import ROLES, TargetMap, backbone_param_count, find_target_map
from bipeft_core.testing import TINY_FAMILIES, load_module_plugins, tiny_batch, tiny_model

HEADS = ("classifier", "score", "pooler", "lm_head")


@pytest.fixture(scope="module")
def plugins():
    """Module/target-map/space built-ins only (see tests/test_modules.py)."""
    return load_module_plugins()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _apply(plugins, model, space, target_map=None):
    tm = find_target_map(model, plugins.target_maps, target_map)
    if isinstance(space, str):
        space = plugins.spaces.get(space)
    return space.modules(model, tm, plugins.peft_modules)


def _tally(specs):
    out = {}
    for s in specs:
        out[s.type] = out.get(s.type, 0) + 1
    return out


# -- the shipped spaces ---------------------------------------------------------------------


def test_shipped_spaces(plugins):
    assert {"s1", "s2"} <= set(plugins.spaces.names())
    s1, s2 = plugins.spaces.get("s1"), plugins.spaces.get("s2")
    assert [e.type for e in s1.entries] == ["serial_adapter", "parallel_adapter", "prefix"]
    assert [e.type for e in s2.entries] == ["lora", "adapter_lr", "bitfit", "lnfit"]
    assert s1.ranks == s2.ranks == (1, 4, 8)
    assert DeclarativeSpace.from_dict(s2.to_dict()) == s2


def test_t5_large_shaped_s2_yields_916_modules_on_the_meta_device(plugins):
    """The paper's count: 384 matrix + 532 vector modules, never materialised."""
    from transformers import T5Config, T5ForConditionalGeneration

    with torch.device("meta"):
        model = T5ForConditionalGeneration(T5Config(d_model=1024, d_kv=64, d_ff=4096, num_layers=24, num_heads=16,
                                                    vocab_size=32128))
    assert all(p.is_meta for p in model.parameters())
    specs = _apply(plugins, model, "s2")
    assert len(specs) == 916
    assert sum(s.is_matrix for s in specs) == 384
    assert sum(not s.is_matrix for s in specs) == 532
    assert _tally(specs) == {"lora": 288, "adapter_lr": 96, "bitfit": 24 * 8 + 24 * 9 + 2, "lnfit": 24 * 2 + 24 * 3 + 2}
    lora = next(s for s in specs if s.type == "lora")
    assert lora.counts == (2048, 8192, 16384)  # r · (1024 + 1024)
    assert all(p.is_meta for p in model.parameters())
    assert backbone_param_count(model) == 737_668_096  # shared embedding and tied LM head counted once


def _expected_s2(family, layers):
    """(matrix, vector) modules of S2 per the target maps' documented roles."""
    if family in ("bert", "roberta"):  # 6 linears; 2 norms; embedding LayerNorm
        return 8 * layers, 10 * layers + 2
    if family == "t5":  # encoder and decoder blocks; cross-attention norm; two final norms
        return 8 * 2 * layers, 10 * layers + 12 * layers + 4
    if family == "gpt2":  # fused c_attn, c_proj, c_fc, mlp.c_proj; ln_1, ln_2; ln_f
        return 6 * layers, 8 * layers + 2
    if family == "llama":  # q, k, v, o, gate, up, down; two RMS norms; final norm
        return 9 * layers, 11 * layers + 2
    raise AssertionError(family)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_s2_positions_per_family(plugins, family):
    model = tiny_model(family, layers=2)
    specs = _apply(plugins, model, "s2")
    matrix, vector = _expected_s2(family, 2)
    assert (sum(s.is_matrix for s in specs), sum(not s.is_matrix for s in specs)) == (matrix, vector)
    assert [s.index for s in specs] == list(range(len(specs)))
    assert len({s.id for s in specs}) == len(specs)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    anchors = [order[s.sites[0][1]] for s in specs]
    assert anchors == sorted(anchors)  # in module order
    for s in specs:
        assert s.counts == tuple(
            plugins.peft_modules.get(s.type).param_count(s.shape, r) for r in (s.ranks or (None,)))
        if s.is_matrix:
            assert s.ranks == (1, 4, 8) and s.max_count == s.counts[-1]
        else:
            assert s.ranks == () and len(s.counts) == 1


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_s1_positions_per_family(plugins, family):
    model = tiny_model(family, layers=2)
    if family == "gpt2":
        with pytest.raises(TargetError, match=r"module type 'prefix' finds no position"):
            _apply(plugins, model, "s1")
        return
    specs = _apply(plugins, model, "s1")
    blocks = 4 if family == "t5" else 2
    assert _tally(specs) == {"serial_adapter": blocks, "parallel_adapter": blocks, "prefix": blocks}
    for s in specs:
        if s.type == "serial_adapter":
            assert s.position == "ffn_out"
        else:
            assert s.position == "block" and {r for r, _ in s.sites} == set(
                plugins.peft_modules.get(s.type).roles)


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("space", ["s1", "s2"])
def test_heads_are_never_positions(plugins, family, space):
    model = tiny_model(family, layers=1)
    try:
        specs = _apply(plugins, model, space)
    except TargetError:
        assert (family, space) == ("gpt2", "s1")
        return
    head_names = [n for n, _ in model.named_modules() if n and n.split(".")[-1] in HEADS]
    assert head_names  # every tiny model has a head
    for s in specs:
        for _, name in s.sites:
            assert not set(name.split(".")) & set(HEADS), s.id
            assert not any(name == h or name.startswith(h + ".") for h in head_names), s.id


def test_a_pattern_that_names_a_head_still_finds_no_head(plugins):
    model = tiny_model("bert", layers=1)
    tm = TargetMap.from_dict({
        "name": "greedy", "blocks": [r"encoder\.layer\.\d+"], "roles": {"attn_q": r"attention\.self\.query"},
        "global_roles": {"attn_o": r"classifier|pooler\.dense|dense"},
    })
    names = [s.name for s in tm.find(model)]
    assert "bert.encoder.layer.0.attention.self.query" in names
    assert not [n for n in names if "classifier" in n or "pooler" in n]


# -- target map choices (docs/targets.md) -------------------------------------------------


def _sites(plugins, model):
    return find_target_map(model, plugins.target_maps).find(model)


def test_bert_embedding_layernorm_is_a_norm_position(plugins):
    sites = _sites(plugins, tiny_model("bert", layers=1))
    emb = [s for s in sites if s.name == "bert.embeddings.LayerNorm"]
    assert len(emb) == 1 and emb[0].role == "norm" and emb[0].kind == "norm"
    assert emb[0].layer == "embeddings.LayerNorm"


def test_llama_ffn_in_is_gate_and_up_proj(plugins):
    sites = _sites(plugins, tiny_model("llama", layers=1))
    ffn_in = sorted(s.name for s in sites if s.role == "ffn_in")
    assert ffn_in == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    norms = sorted(s.name for s in sites if s.role == "norm")
    assert norms == ["model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.norm"]


def test_gpt2_fused_c_attn_is_attn_qkv(plugins):
    sites = _sites(plugins, tiny_model("gpt2", layers=1))
    (qkv,) = [s for s in sites if s.role == "attn_qkv"]
    assert qkv.name == "transformer.h.0.attn.c_attn" and (qkv.in_features, qkv.out_features) == (32, 96)
    assert qkv.kind == "linear"  # a Conv1D, read as a linear (weight is (in, out))
    assert not [s for s in sites if s.role in ("attn_q", "attn_k", "attn_v")]


def test_t5_cross_attention_linears_excluded_but_its_layernorm_included(plugins):
    sites = _sites(plugins, tiny_model("t5", layers=1))
    names = {s.name for s in sites}
    assert not [n for n in names if "EncDecAttention" in n]
    assert "decoder.block.0.layer.1.layer_norm" in names  # the cross-attention block's norm
    assert {"encoder.final_layer_norm", "decoder.final_layer_norm"} <= names
    assert "decoder.block.0.layer.2.DenseReluDense.wi" in names  # the decoder FFN is layer 2


@pytest.mark.parametrize(("model_type", "expected"), [
    ("bert", "bert"), ("roberta", "bert"), ("t5", "t5"), ("mt5", "t5"), ("gpt2", "gpt2"),
    ("llama", "llama"), ("mistral", "llama"), ("qwen2", "llama"),
])
def test_target_map_chosen_by_model_type(plugins, model_type, expected):
    model = nn.Module()
    model.config = SimpleNamespace(model_type=model_type)
    assert find_target_map(model, plugins.target_maps).name == expected


def test_unknown_model_type_asks_for_a_target_map(plugins):
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(TargetError, match=r"TargetMap\.from_dict"):
        find_target_map(model, plugins.target_maps)


# -- user-defined target maps and spaces ---------------------------------------------------


class ToyBlock(nn.Module):
    def __init__(self, d=8, f=16):
        super().__init__()
        self.mix = nn.Linear(d, d)
        self.up = nn.Linear(d, f)
        self.down = nn.Linear(f, d)
        self.ln = nn.LayerNorm(d)

    def forward(self, x):
        x = x + self.mix(x)
        return self.ln(x + self.down(torch.relu(self.up(x))))


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([ToyBlock(), ToyBlock()])
        self.final_ln = nn.LayerNorm(8)
        self.classifier = nn.Linear(8, 3)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.classifier(self.final_ln(x))


TOY_MAP = {
    "name": "toy",
    "blocks": [r"blocks\.\d+"],
    "roles": {"attn_o": "mix", "ffn_in": "up", "ffn_out": "down", "norm": "ln"},
    "global_roles": {"norm": "final_ln"},
}


def test_user_target_map_for_a_custom_architecture(plugins):
    torch.manual_seed(0)
    net = ToyNet().eval()
    tm = TargetMap.from_dict(TOY_MAP)
    assert TargetMap.from_dict(tm.to_dict()) == tm
    specs = _apply(plugins, net, "s2", target_map=tm)
    # per block: LoRA on mix, up, down; Adapter-LR on mix, down; BitFit on 3 linears + ln; LNFit on ln
    assert _tally(specs) == {"lora": 6, "adapter_lr": 4, "bitfit": 9, "lnfit": 3}
    assert not [s for s in specs if "classifier" in s.id]
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        ref = net(x)
    supernet = Supernet(net, specs, plugins.peft_modules)
    supernet.configure("all_on")
    with torch.no_grad():
        assert torch.equal(supernet(x), ref)
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    # S1 without prefix: serial and parallel adapters on the toy blocks
    s1 = DeclarativeSpace.from_dict({"name": "s1_no_prefix", "modules": [
        {"type": "serial_adapter", "targets": ["ffn_out"]}, {"type": "parallel_adapter"}]})
    specs = _apply(plugins, ToyNet(), s1, target_map=tm)
    assert _tally(specs) == {"serial_adapter": 2, "parallel_adapter": 2}
    par = next(s for s in specs if s.type == "parallel_adapter")
    assert dict(par.sites) == {"ffn_in": "blocks.0.up", "ffn_out": "blocks.0.down"}
    assert (par.shape.in_features, par.shape.out_features) == (8, 8)


def test_user_space_from_toml_without_python(plugins, tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('''
name = "Mine"
description = "LoRA on q and v at ranks 2 and 6, BitFit on norms"
ranks = [2, 6]

[[modules]]
type = "lora"
targets = ["attn_q", "attn_v"]

[[modules]]
type = "serial_adapter"
targets = ["ffn_out"]
ranks = [3]

[[modules]]
type = "bitfit"
targets = ["norm"]
''', encoding="utf-8")
    space = DeclarativeSpace.from_toml(path)
    assert space.name == "mine" and space.ranks == (2, 6)
    model = tiny_model("bert", layers=2).eval()
    specs = _apply(plugins, model, space)
    assert _tally(specs) == {"lora": 4, "serial_adapter": 2, "bitfit": 5}
    lora = [s for s in specs if s.type == "lora"]
    assert {s.position for s in lora} == {"attn_q", "attn_v"}
    assert all(s.ranks == (2, 6) and s.counts == (2 * 64, 6 * 64) for s in lora)
    serial = [s for s in specs if s.type == "serial_adapter"]
    assert all(s.ranks == (3,) and s.counts == (2 * 3 * 32 + 3 + 32,) for s in serial)
    batch = tiny_batch(model)
    with torch.no_grad():
        ref = model(**batch).logits
        supernet = Supernet(model, specs, plugins.peft_modules)
        supernet.configure("all_on")
        assert torch.equal(supernet(**batch).logits, ref)


def test_with_ranks(plugins):
    s2 = plugins.spaces.get("s2").with_ranks([8, 2])
    assert s2.ranks == (2, 8)
    specs = _apply(plugins, tiny_model("bert", layers=1), s2)
    assert all(s.ranks == (2, 8) for s in specs if s.is_matrix)
    with pytest.raises(SearchSpaceError, match="rank 0"):
        s2.with_ranks([0, 4])


# -- errors ---------------------------------------------------------------------------------


def test_model_without_matching_layers(plugins):
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(TargetError, match="finds no position") as exc:
        _apply(plugins, model, "s2", target_map=BERT)
    assert "Sequential" in str(exc.value) and "TargetMap.from_dict" in str(exc.value)


def test_custom_target_map_that_matches_nothing(plugins):
    tm = TargetMap.from_dict({"name": "nothing", "blocks": [r"no_such_block\.\d+"],
                              "roles": {"attn_q": "q"}})
    with pytest.raises(TargetError, match="'nothing'"):
        _apply(plugins, tiny_model("bert", layers=1), "s2", target_map=tm)


def test_entry_that_finds_no_position_is_named(plugins):
    """One entry of a space without a site in this model fails, naming it."""
    space = DeclarativeSpace.from_dict({"name": "qkv", "modules": [
        {"type": "lora", "targets": ["attn_q"]}, {"type": "bitfit", "targets": ["attn_qkv"]}]})
    with pytest.raises(TargetError, match=r"'bitfit'.*attn_qkv"):
        _apply(plugins, tiny_model("bert", layers=1), space)


@st.composite
def rank_lists_with_a_bad_value(draw, *, min_bad=-5, max_good=10, max_size=5):
    """Rank lists holding at least one value <= 0 (built, not filtered)."""
    good = draw(st.lists(st.integers(1, max_good), max_size=max_size - 1))
    bad = draw(st.integers(min_bad, 0))
    at = draw(st.integers(0, len(good)))
    return good[:at] + [bad] + good[at:]


@settings(max_examples=40)
@given(ranks=rank_lists_with_a_bad_value())
def test_rank_sets_with_zero_or_negative_values_are_refused(ranks):
    with pytest.raises(SearchSpaceError, match=r"rank -?\d+ is not allowed"):
        DeclarativeSpace.from_dict({"name": "bad", "ranks": ranks, "modules": [{"type": "lora", "targets": ["attn_q"]}]})
    with pytest.raises(SearchSpaceError, match=r"rank -?\d+ is not allowed"):
        DeclarativeSpace.from_dict({"name": "bad", "modules": [{"type": "lora", "targets": ["attn_q"], "ranks": ranks}]})


@pytest.mark.parametrize(("ranks", "message"), [
    ([], "empty"), ([1, 4, 4], "repeat"), ([1.5], "not a whole number"), (["4"], "not a whole number"),
    ([True], "not a whole number"), (4, "must be a list"), ("1,4", "must be a list"),
])
def test_other_bad_rank_sets(ranks, message):
    with pytest.raises(SearchSpaceError, match=message):
        check_ranks(ranks, "test")


def test_ranks_are_sorted():
    assert check_ranks([8, 1, 4], "test") == (1, 4, 8)


def test_unknown_module_type_in_a_space_file_lists_the_known_types(plugins, tmp_path):
    path = tmp_path / "typo.toml"
    path.write_text('name = "typo"\n[[modules]]\ntype = "lorra"\ntargets = ["attn_q"]\n', encoding="utf-8")
    space = DeclarativeSpace.from_toml(path)
    with pytest.raises(SearchSpaceError, match="unknown module type 'lorra'") as exc:
        _apply(plugins, tiny_model("bert", layers=1), space)
    for name in plugins.peft_modules.names():
        assert name in str(exc.value)
    with pytest.raises(SearchSpaceError, match="lorra"):
        space.check(plugins.peft_modules)


def test_unknown_role_in_a_space(tmp_path):
    path = tmp_path / "role.toml"
    path.write_text('name = "role"\n[[modules]]\ntype = "lora"\ntargets = ["attn_query"]\n', encoding="utf-8")
    with pytest.raises(SearchSpaceError, match="unknown target role") as exc:
        DeclarativeSpace.from_toml(path)
    for role in ROLES:
        assert role in str(exc.value)


def test_unknown_role_in_a_target_map():
    with pytest.raises(TargetError, match="unknown role 'ffn_mid'"):
        TargetMap.from_dict({"name": "x", "blocks": ["b"], "roles": {"ffn_mid": "m"}})


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "x", "blocks": ["b"]}, "needs 'roles'"),
    ({"name": "x", "blocks": ["b"], "roles": {}, "heds": []}, "unknown target map field"),
    ({"name": "x", "blocks": ["b"], "roles": {"attn_q": "q(("}}, "not a valid regular expression"),
])
def test_bad_target_maps(data, message):
    with pytest.raises(TargetError, match=re.escape(message) if "(" in message else message):
        TargetMap.from_dict(data)


def test_multi_role_type_takes_no_targets_and_single_role_type_needs_them(plugins):
    with_targets = DeclarativeSpace.from_dict({"name": "x", "modules": [
        {"type": "parallel_adapter", "targets": ["ffn_in"]}]})
    with pytest.raises(SearchSpaceError, match="remove its targets"):
        with_targets.check(plugins.peft_modules)
    without = DeclarativeSpace.from_dict({"name": "x", "modules": [{"type": "lora"}]})
    with pytest.raises(SearchSpaceError, match="needs targets"):
        without.check(plugins.peft_modules)


@pytest.mark.parametrize(("text", "message"), [
    ('ranks = [1]\n[[modules]]\ntype = "lora"\ntargets = ["attn_q"]\n', "needs a name"),
    ('name = "x"\n', "lists no modules"),
    ('name = "x"\nbudget = 3\n[[modules]]\ntype = "lora"\ntargets = ["attn_q"]\n', "unknown key"),
    ('name = "x"\n[[modules]]\ntype = "lora"\ntarget = ["attn_q"]\n', "unknown key"),
    ('name = "x"\n[[modules]]\ntargets = ["attn_q"]\n', "needs a type"),
    ('name = "x\n', "not valid TOML"),
])
def test_bad_space_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SearchSpaceError, match=message):
        DeclarativeSpace.from_toml(path)


def test_missing_space_file(tmp_path):
    with pytest.raises(SearchSpaceError, match="does not exist"):
        DeclarativeSpace.from_toml(tmp_path / "nope.toml")


def test_unknown_space_name_lists_the_known_ones(plugins):
    with pytest.raises(UnknownNameError, match="s1, s2"):
        plugins.spaces.get("s3")


def test_same_module_twice_at_one_position(plugins):
    space = DeclarativeSpace.from_dict({"name": "dup", "modules": [
        {"type": "lora", "targets": ["attn_q"]}, {"type": "lora", "targets": ["attn_q", "attn_k"]}]})
    with pytest.raises(SearchSpaceError, match="same module twice"):
        _apply(plugins, tiny_model("bert", layers=1), space)


def test_non_candidate_rank_of_a_spec(plugins):
    spec = next(s for s in _apply(plugins, tiny_model("bert", layers=1), "s2") if s.type == "lora")
    assert spec.count(4) == 4 * 64
    with pytest.raises(SearchSpaceError, match="not one of its candidate ranks"):
        spec.count(3)
