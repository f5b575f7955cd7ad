"""The supernet: zero-initialised outputs, what gets gradients in each mode,
what a pruned or sampled-off module costs, the rank mask of the dimension
stage, and the Gumbel gates."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from bipeft_core.errors import TargetError
from bipeft_core.space import DeclarativeSpace
from bipeft_core.supernet import MODES, Supernet, gumbel_hard
from bipeft_core.targets import find_target_map
from bipeft_core.testing import TINY_FAMILIES, load_module_plugins, tiny_batch, tiny_model

HEAD_PARAMS = {
    "bert": {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"},
    "roberta": {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                "classifier.out_proj.bias"},
    "t5": set(),  # T5 scores label words with its tied LM head, which stays frozen
    "gpt2": {"score.weight"},
    "llama": {"score.weight"},
}


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


def _specs(plugins, model, space):
    if isinstance(space, str):
        space = plugins.spaces.get(space)
    return space.modules(model, find_target_map(model, plugins.target_maps), plugins.peft_modules)


def _build(plugins, family, space="s2", layers=1, randomise=False, seed=0):
    model = tiny_model(family, layers=layers, seed=seed).eval()
    batch = tiny_batch(model)
    with torch.no_grad():
        ref = model(**batch).logits.clone()
    specs = _specs(plugins, model, space)
    torch.manual_seed(seed)
    net = Supernet(model, specs, plugins.peft_modules)
    if randomise:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in net.peft_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net, batch, ref


def _forward(net, batch, **configure):
    net.configure(**configure)
    return net(**batch).logits


def _flops(net, batch):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(**batch)
    return counter.get_total_flops()


# -- zero initialisation -----------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("space", ["s1", "s2"])
def test_zero_initialised_supernet_is_exactly_the_backbone(plugins, family, space):
    if (family, space) == ("gpt2", "s1"):
        model = tiny_model("gpt2", layers=1)
        with pytest.raises(TargetError, match=r"'prefix' finds no position.*\['attn_q', 'attn_o'\]"):
            _specs(plugins, model, "s1")
        return
    net, batch, ref = _build(plugins, family, space, layers=2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        out = _forward(net, batch, mode="all_on")
        assert torch.equal(out, ref)
        assert all(m.calls == 1 for m in net.peft)
        for mode in ("weight", "binary", "dimension", "eval"):  # gates or masks: still the backbone
            assert torch.equal(_forward(net, batch, mode=mode, temperature=5.0, generator=g), ref), mode


# -- gradients -------------------------------------------------------------------------------


def _check_gradients(net, batch, family, mode, generator):
    model = net.model
    net.zero_grad(set_to_none=True)
    out = _forward(net, batch, mode=mode, temperature=5.0, generator=generator)
    if out.requires_grad:  # T5 with every module skipped has nothing to train
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    else:
        assert family == "t5" and mode == "weight"
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == HEAD_PARAMS[family], (mode, grads ^ HEAD_PARAMS[family])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == HEAD_PARAMS[family]
    if family == "t5":
        assert model.lm_head.weight is model.shared.weight and not model.shared.weight.requires_grad
    alpha, beta = net.alpha.grad, net.beta.grad
    if mode == "binary":
        assert alpha is not None and alpha.abs().sum() > 0 and beta is None
    elif mode == "dimension":
        assert alpha is None and beta is not None
        assert (beta[net.is_matrix].abs().sum(-1) > 0).all()  # every matrix module's β
        assert not beta[~net.is_matrix].any()  # vector modules have no rank
    else:
        assert alpha is None and beta is None
    return [any(p.grad is not None and p.grad.any() for p in m.parameters()) for m in net.peft]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_gradients_reach_only_peft_weights_logits_and_head(plugins, family):
    net, batch, _ = _build(plugins, family, randomise=True)
    assert all(p.requires_grad for p in net.peft_parameters())
    assert net.alpha.requires_grad and net.beta.requires_grad
    g = torch.Generator().manual_seed(1)
    for mode in ("weight", "binary", "dimension", "all_on"):
        with_grad = _check_gradients(net, batch, family, mode, g)
        if mode in ("dimension", "all_on"):
            # every module learns, but for a bias on attention keys, which shifts every score of a
            # query alike: its gradient is zero up to rounding
            key_bias = [s.type == "bitfit" and s.position == "attn_k" for s in net.specs]
            assert all(w or k for w, k in zip(with_grad, key_bias)), mode
    # binary mode: a module sampled off runs with detached weights, so only its gate learns
    with torch.no_grad():
        net.alpha[:, 0], net.alpha[:, 1] = 50.0, -50.0  # every module sampled off
    with_grad = _check_gradients(net, batch, family, "binary", g)
    assert not any(with_grad)
    assert (net.alpha.grad.abs().sum(-1) > 0).sum() >= len(net) // 2
    # weight mode: a module sampled off is skipped and keeps no gradient (no optimiser step)
    with_grad = _check_gradients(net, batch, family, "weight", g)
    assert not any(with_grad) and all(m.calls > 0 for m in net.peft)


def test_weight_mode_grads_only_the_modules_sampled_on(plugins):
    net, batch, _ = _build(plugins, "bert", randomise=True)
    keep = torch.arange(len(net)) % 3 != 0
    with torch.no_grad():
        net.alpha[:, 1] = torch.where(keep, 50.0, -50.0)
        net.alpha[:, 0] = -net.alpha[:, 1]
    gates = net.configure("weight", temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gates.detach(), keep.float())
    net(**batch).logits.sum().backward()
    for m, k in zip(net.peft, keep.tolist()):
        assert all((p.grad is not None) == k for p in m.parameters())


# -- pruned and sampled-off modules cost nothing -------------------------------------------


def test_pruned_modules_cost_nothing(plugins):
    net, batch, ref = _build(plugins, "bert", randomise=True)
    net.configure("all_on")
    all_on = _flops(net, batch)
    net.pruned[:] = True
    net.configure("all_on")
    before = [m.calls for m in net.peft]
    pruned = _flops(net, batch)
    assert [m.calls for m in net.peft] == before  # no module computed
    with torch.no_grad():
        assert torch.equal(net(**batch).logits, ref)  # random weights, yet nothing added
    net.detach_hooks()
    assert pruned == _flops(net.model, batch) < all_on  # exactly the backbone's FLOPs


def test_pruning_one_lora_removes_exactly_its_flops(plugins):
    net, batch, _ = _build(plugins, "bert", randomise=True)
    net.configure("all_on")
    all_on = _flops(net, batch)
    i = next(i for i, s in enumerate(net.specs) if s.type == "lora" and s.position == "attn_q")
    spec = net.specs[i]
    net.pruned[i] = True
    net.configure("all_on")
    tokens = batch["input_ids"].numel()
    lora_flops = 2 * tokens * spec.max_rank * (spec.shape.in_features + spec.shape.out_features)
    assert all_on - _flops(net, batch) == lora_flops
    assert net.peft[i].enabled is False


@pytest.mark.parametrize("family", ["bert", "t5", "llama"])
def test_modules_sampled_off_in_weight_mode_are_skipped(plugins, family):
    net, batch, _ = _build(plugins, family, space="s2" if family != "llama" else "s1", randomise=True)
    n = len(net)
    keep = torch.arange(n) % 2 == 0
    with torch.no_grad():
        net.alpha[:, 1] = torch.where(keep, 50.0, -50.0)  # beyond any Gumbel noise
        net.alpha[:, 0] = -net.alpha[:, 1]
    before = [m.calls for m in net.peft]
    net.configure("weight", temperature=5.0, generator=torch.Generator().manual_seed(0))
    weight_flops = _flops(net, batch)
    calls = [m.calls - b for m, b in zip(net.peft, before)]
    assert calls == [int(k) for k in keep.tolist()]
    net.configure("eval")  # keep = argmax α: the same modules, at the same ranks
    assert weight_flops == _flops(net, batch)
    # sampled off costs what pruned costs
    with torch.no_grad():
        net.alpha[:, 0], net.alpha[:, 1] = -50.0, 50.0
    net.pruned[:] = ~keep
    net.configure("weight", temperature=5.0, generator=torch.Generator().manual_seed(0))
    assert weight_flops == _flops(net, batch)
    net.pruned[:] = False
    net.configure("weight", temperature=5.0, generator=torch.Generator().manual_seed(0))
    assert weight_flops < _flops(net, batch)


def test_binary_mode_computes_modules_sampled_off_unless_sampled_only(plugins):
    net, batch, _ = _build(plugins, "bert", randomise=True)
    with torch.no_grad():
        net.alpha[:, 0], net.alpha[:, 1] = 50.0, -50.0
    g = torch.Generator().manual_seed(0)
    before = [m.calls for m in net.peft]
    gates = net.configure("binary", temperature=5.0, generator=g)
    assert not gates.detach().any()
    with torch.no_grad():
        net(**batch)
    assert all(m.calls - b == 1 and m.detach_weights for m, b in zip(net.peft, before))
    net.configure("binary", temperature=5.0, generator=g, gate_gradient="sampled_only")
    before = [m.calls for m in net.peft]
    with torch.no_grad():
        net(**batch)
    assert all(m.calls == b for m, b in zip(net.peft, before))


def test_eval_mode_is_deterministic(plugins):
    net, batch, _ = _build(plugins, "bert", randomise=True)
    with torch.no_grad():
        net.alpha.normal_(generator=torch.Generator().manual_seed(3))
        net.beta.normal_(generator=torch.Generator().manual_seed(4))
    assert net.configure("eval") is None
    keep = (net.alpha[:, 1] > net.alpha[:, 0]).tolist()
    ranks = net.argmax_rank().tolist()
    for m, k, r in zip(net.peft, keep, ranks):
        assert m.enabled == k and m.gate is None
        if m.max_rank is not None:
            assert m.rank == r
    with torch.no_grad():
        first = net(**batch).logits
        net.configure("eval")
        assert torch.equal(net(**batch).logits, first)


# -- dimension mode -------------------------------------------------------------------------


def test_dimension_mode_computes_once_at_the_largest_rank_with_the_rank_mask(plugins):
    net, batch, _ = _build(plugins, "t5", randomise=True)
    with torch.no_grad():
        net.beta.normal_(generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(6)
    state = g.get_state()
    before = [m.calls for m in net.peft]
    assert net.configure("dimension", temperature=2.0, generator=g) is None
    with torch.no_grad():
        mixed = net(**batch).logits
    assert all(m.calls - b == 1 for m, b in zip(net.peft, before))  # once, not once per candidate
    sample = gumbel_hard(net.masked_beta(), 2.0, torch.Generator().set_state(state))
    sampled_rank = (sample.detach() * net.cand_ranks).sum(-1).long()
    for i, m in enumerate(net.peft):
        assert m.enabled and m.gate is None
        if m.max_rank is None:
            assert m.rank_mask is None
            continue
        assert m.rank == m.max_rank
        expected = torch.zeros(m.max_rank)
        expected[: int(sampled_rank[i])] = 1.0
        assert torch.equal(m.rank_mask.detach(), expected)
    # the same output as running each module at its sampled rank
    for i, m in enumerate(net.peft):
        m.reset_controls()
        if m.max_rank is not None:
            m.rank = int(sampled_rank[i])
    with torch.no_grad():
        torch.testing.assert_close(net(**batch).logits, mixed, rtol=1e-5, atol=1e-6)


def test_dimension_mode_with_fixed_and_pruned_modules(plugins):
    net, batch, _ = _build(plugins, "bert", randomise=True)
    lora = [i for i, s in enumerate(net.specs) if s.type == "lora"]
    fixed, pruned = lora[0], lora[1]
    net.fixed_rank[fixed] = 4
    net.pruned[pruned] = True
    net.configure("dimension", temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert net.peft[fixed].rank == 4 and net.peft[fixed].rank_mask is None
    assert not net.peft[pruned].enabled
    before = net.peft[pruned].calls
    net(**batch).logits.sum().backward()
    assert net.peft[pruned].calls == before
    assert not net.beta.grad[fixed].any() and not net.beta.grad[pruned].any()
    assert net.beta.grad[lora[2]].any()


def test_dimension_mode_sampled_only_runs_at_the_sampled_rank(plugins):
    net, batch, _ = _build(plugins, "bert", randomise=True)
    g = torch.Generator().manual_seed(2)
    state = g.get_state()
    net.configure("dimension", temperature=1.0, generator=g, gate_gradient="sampled_only")
    sample = gumbel_hard(net.masked_beta(), 1.0, torch.Generator().set_state(state)).detach()
    for i, m in enumerate(net.peft):
        if m.max_rank is not None:
            r = int((sample[i] * net.cand_ranks[i]).sum())
            assert m.rank == r and torch.equal(m.rank_mask.detach()[:r], torch.ones(r))


def test_modules_with_their_own_rank_sets(plugins):
    """An entry with fewer candidates: β of the missing ones is never chosen."""
    space = DeclarativeSpace.from_dict({"name": "mixed", "ranks": [1, 4, 8], "modules": [
        {"type": "lora", "targets": ["attn_q"], "ranks": [2]}, {"type": "lora", "targets": ["attn_v"]}]})
    model = tiny_model("bert", layers=1)
    specs = _specs(plugins, model, space)
    net = Supernet(model, specs, plugins.peft_modules)
    q = next(i for i, s in enumerate(specs) if s.position == "attn_q")
    assert net.cand_valid[q].tolist() == [True, False, False]
    with torch.no_grad():
        net.beta[q] = torch.tensor([-10.0, 10.0, 10.0])
    assert int(net.argmax_rank()[q]) == 2
    for seed in range(5):
        net.configure("dimension", temperature=1.0, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(net.peft[q].rank_mask.detach(), torch.ones(2))


# -- Gumbel gates ---------------------------------------------------------------------------


def test_same_generator_seed_gives_the_same_gates(plugins):
    net, _, _ = _build(plugins, "bert")
    a = net.configure("binary", temperature=5.0, generator=torch.Generator().manual_seed(11)).detach()
    b = net.configure("binary", temperature=5.0, generator=torch.Generator().manual_seed(11)).detach()
    c = net.configure("binary", temperature=5.0, generator=torch.Generator().manual_seed(12)).detach()
    assert torch.equal(a, b) and not torch.equal(a, c)
    # two supernets built with the same generator seed have the same logits
    other, _, _ = _build(plugins, "bert")
    assert torch.equal(other.alpha, net.alpha) and torch.equal(other.beta, net.beta)
    assert other.alpha.abs().max() < 0.01  # 1e-3 · N(0, 1)


@st.composite
def logit_rows(draw, *, max_rows=6, max_candidates=4, scale=10.0):
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(2, max_candidates))
    values = draw(st.lists(st.floats(-scale, scale, allow_nan=False), min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(values, dtype=torch.float32).reshape(rows, cols)


@settings(max_examples=40)
@given(logits=logit_rows(), tau=st.floats(0.1, 10.0), seed=st.integers(0, 2**31 - 1))
def test_hard_gumbel_samples_are_exactly_one_hot_with_straight_through_gradients(logits, tau, seed):
    logits = logits.clone().requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    state = g.get_state()
    hard = gumbel_hard(logits, tau, g)
    values = hard.detach()
    assert ((values == 0) | (values == 1)).all()
    assert torch.equal(values.sum(-1), torch.ones(len(values)))
    weights = torch.randn(values.shape, generator=torch.Generator().manual_seed(seed + 1))
    (hard * weights).sum().backward()
    # straight through: the gradient of the soft sample with the same noise
    soft_logits = logits.detach().clone().requires_grad_(True)
    u = torch.rand(logits.shape, generator=torch.Generator().set_state(state))
    noise = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    soft = ((soft_logits + noise) / tau).softmax(-1)
    assert torch.equal(values.argmax(-1), soft.detach().argmax(-1))
    (soft * weights).sum().backward()
    torch.testing.assert_close(logits.grad, soft_logits.grad)
    # the hard sample does not depend on the temperature (same noise)
    assert torch.equal(gumbel_hard(logits, tau * 3, torch.Generator().set_state(state)).detach(), values)


def test_hard_softmax_without_noise_is_the_argmax():
    logits = torch.tensor([[0.2, -1.0], [3.0, 3.5], [0.0, 0.1]])
    assert torch.equal(gumbel_hard(logits, 1.0, None, noise=False), torch.tensor([[1.0, 0], [0, 1], [0, 1]]))


def test_gumbel_keep_frequency_is_the_softmax_probability():
    """Gumbel-max: argmax(logits + noise) is distributed as softmax(logits),
    as torch.nn.functional.gumbel_softmax samples it."""
    logits = torch.tensor([0.0, 1.0]).expand(20000, 2)
    ours = gumbel_hard(logits, 5.0, torch.Generator().manual_seed(0))[:, 1].mean().item()
    torch.manual_seed(0)
    torchs = torch.nn.functional.gumbel_softmax(logits, tau=5.0, hard=True)[:, 1].mean().item()
    p = torch.softmax(torch.tensor([0.0, 1.0]), -1)[1].item()
    assert abs(ours - p) < 0.015 and abs(torchs - p) < 0.015


def test_unknown_mode(plugins):
    net, _, _ = _build(plugins, "bert")
    assert set(MODES) == {"weight", "binary", "dimension", "eval", "all_on", "joint"}
    with pytest.raises(ValueError, match="unknown supernet mode 'search'"):
        net.configure("search")
