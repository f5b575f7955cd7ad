"""Reporting: the structure table, reading results back from JSON (bipeft_core.report), and the PNG
plots (bipeft_core.plots, the one module that imports matplotlib)."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path

import attrs
import pytest
import torch

import bipeft_core
from bipeft_core import BipeftError, Pipeline, Structure, load_plugins
from bipeft_core.plots import PlotDependencyError, plot_search, plot_structure, write_report
from bipeft_core.report import (
    ResultFileError,
    ResultNotFoundError,
    load_result,
    result_from_dict,
    structure_layout,
    structure_table,
    write_text_report,
)
from bipeft_core.state import SearchResult, TriggerEvent
from bipeft_core.targets import find_target_map
from bipeft_core.testing import tiny_model
from bipeft_core.testing import toy_examples as synthetic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ON_COLOUR = (0xF2, 0x8E, 0x2B)  # the heatmap's colour for a kept vector module
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib (bipeft[plots]) is not installed")





@pytest.fixture(scope="module")
def result() -> SearchResult:
    """A real BIPEFT search on a tiny BERT (about a second)."""
    pipe = Pipeline(budget=1500, trigger={"name": "budget_stability", "warmup_epochs": 0.5, "max_triggers": 20},
                    search_settings={"epochs": 4, "batch_size": 16, "lr": 1e-3},
                    plugins=load_plugins(entry_points=False))
    r = pipe.search(tiny_model("bert"), synthetic(192))
    assert r.trace and r.history and r.structure.entries
    return r


def specs_for(family: str, space: str = "s2", **kw):
    pl = load_plugins(entry_points=False)
    model = tiny_model(family, **kw)
    return pl.spaces.get(space).modules(model, find_target_map(model, pl.target_maps), pl.peft_modules)


def pick(specs, type_: str, position: str, site_part: str):
    found = [s for s in specs if s.type == type_ and s.position == position and site_part in dict(s.sites)["target"]]
    assert len(found) == 1, (type_, position, site_part, found)
    return found[0]


def parse_table(text: str) -> tuple[str, list[str], dict[str, list[str]]]:
    """(head line, column names, {row name: cells}); columns are separated by two or more spaces."""
    lines = text.splitlines()
    head, header = lines[0], re.split(r"\s{2,}", lines[1].strip())
    rows = {}
    for line in lines[2:]:
        if not line.strip() or set(line.replace(" ", "")) == {"-"} or line.startswith("@r"):
            continue
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = cells
    return head, header, rows


def read_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    from matplotlib.image import imread

    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


def has_colour(img, rgb, tol=3) -> bool:
    px = (img[:, :, :3] * 255).round()
    return bool((abs(px - torch.tensor(rgb).numpy()) <= tol).all(axis=2).any())


# -- the table ------------------------------------------------------------------------------


def test_table_of_a_hand_built_structure_has_hand_computed_totals():
    specs = specs_for("bert")
    choices = {
        pick(specs, "lora", "attn_q", "layer.0.").index: 8,  # 8 * (32 + 32) = 512
        pick(specs, "lora", "ffn_in", "layer.1.").index: 1,  # 1 * (32 + 64) = 96
        pick(specs, "bitfit", "norm", "layer.0.attention.output.LayerNorm").index: None,  # 32
        pick(specs, "bitfit", "norm", "layer.0.output.LayerNorm").index: None,  # 32
        pick(specs, "lnfit", "norm", "embeddings.LayerNorm").index: None,  # 32
    }
    s = Structure.from_choices(specs, choices, budget=1000, backbone_params=37696)
    head, header, rows = parse_table(structure_table(s))
    assert head.startswith("5 modules, 704 parameters of a budget of 1,000 (70.4%, 296 under)")
    assert header == ["layer", "bitfit", "lnfit", "lora", "modules", "params"]
    assert list(rows) == ["embeddings.LayerNorm", "encoder.layer.0", "encoder.layer.1", "modules", "params"]
    assert rows["embeddings.LayerNorm"] == ["embeddings.LayerNorm", "-", "norm", "-", "1", "32"]
    # the two norms of a layer are told apart, in model order
    assert rows["encoder.layer.0"] == ["encoder.layer.0", "norm(attention) norm(output)", "-", "attn_q@8", "3", "576"]
    assert rows["encoder.layer.1"] == ["encoder.layer.1", "-", "-", "ffn_in@1", "1", "96"]
    assert rows["modules"] == ["modules", "2", "1", "2", "5"]
    assert rows["params"] == ["params", "64", "32", "608", "704"]
    # a budget argument overrides the structure's own; over budget is said plainly
    assert "OVER by 104" in structure_table(s, budget=600).splitlines()[0]


def test_table_of_a_search_result_lists_every_layer_type_and_rank(result):
    st = result.structure
    text = structure_table(st, result.budget)
    head, header, rows = parse_table(text)
    types = sorted({e.spec.type for e in st.entries})
    assert header == ["layer", *types, "modules", "params"]
    assert f"{result.count:,} parameters of a budget of {result.budget:,}" in head
    by_layer = st.by_layer()
    for layer in {e.spec.layer for e in st.entries}:
        cells = rows[layer]
        assert cells[-1] == f"{by_layer[layer]:,}"
        assert int(cells[-2]) == sum(1 for e in st.entries if e.spec.layer == layer)
        for t in types:
            entries = [e for e in st.entries if e.spec.layer == layer and e.spec.type == t]
            cell = cells[1 + types.index(t)]
            tokens = [] if cell == "-" else cell.split(" ")
            assert sorted(tok.rpartition("@")[2] for tok in tokens if "@" in tok) == sorted(
                str(e.rank) for e in entries if e.rank is not None)
            assert sum("@" not in tok for tok in tokens) == sum(e.rank is None for e in entries)
    by_type = st.by_type()
    assert rows["params"][1:] == [f"{by_type[t]:,}" for t in types] + [f"{st.count():,}"]
    assert rows["modules"][1:] == [str(sum(e.spec.type == t for e in st.entries)) for t in types] + [
        str(len(st.entries))]


def test_layers_are_in_model_order_and_positions_are_qualified_only_where_a_layer_has_two():
    specs = specs_for("t5", layers=2)
    everything = Structure.from_choices(specs, {s.index: (s.ranks[0] if s.is_matrix else None) for s in specs})
    lay = structure_layout(everything)
    assert lay.layers == ("encoder.block.0", "encoder.block.1", "encoder.final_layer_norm",
                          "decoder.block.0", "decoder.block.1", "decoder.final_layer_norm")
    lora = [lay.labels[c] for c in lay.columns if c[0] == "lora"]
    # ffn_out sits in layer.1 of encoder blocks and layer.2 of decoder blocks: still one column
    assert lora == ["attn_q", "attn_k", "attn_v", "attn_o", "ffn_in", "ffn_out"]
    norms = [lay.labels[c] for c in lay.columns if c[0] == "lnfit"]
    assert norms == ["norm", "norm(layer.0)", "norm(layer.1)", "norm(layer.2)"]

    llama = specs_for("llama")
    s = Structure.from_choices(llama, {x.index: (4 if x.is_matrix else None) for x in llama
                                       if x.position in ("ffn_in", "norm") and "layers.0" in x.layer})
    text = structure_table(s)
    assert "ffn_in(gate_proj)@4 ffn_in(up_proj)@4" in text
    assert "norm(input_layernorm) norm(post_attention_layernorm)" in text


def test_table_of_block_modules_full_and_empty_structures():
    specs = specs_for("bert", "s1")
    s = Structure.from_choices(specs, {x.index: 8 for x in specs if x.position == "block"})
    head, header, rows = parse_table(structure_table(s))
    assert header == ["layer", "parallel_adapter", "prefix", "modules", "params"]
    assert rows["encoder.layer.0"][1:3] == ["@8", "@8"]
    full = Structure(entries=(), full=True, backbone_params=37696, budget=1000)
    assert "full fine-tuning" in structure_table(full) and "37,696 parameters" in structure_table(full)
    empty = Structure(entries=(), budget=1000)
    assert "no module is kept" in structure_table(empty)
    assert "0 parameters of a budget of 1,000" in structure_table(empty)


# -- JSON round trip ------------------------------------------------------------------------


def test_json_round_trip_gives_an_equal_result(result, tmp_path):
    d = json.loads(json.dumps(result.to_dict()))
    back = result_from_dict(d)
    assert back.structure == result.structure
    assert back.trace == result.trace and all(isinstance(e, TriggerEvent) for e in back.trace)
    assert all(isinstance(e.pruned, tuple) and isinstance(e.fixed, tuple) for e in back.trace)
    assert back.history == result.history
    assert back == result
    path = tmp_path / "search_result.json"
    path.write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    assert load_result(path) == result
    assert load_result(tmp_path) == result  # a run folder stands for its search_result.json


def test_round_trip_of_a_result_without_history_or_trace(result):
    bare = attrs.evolve(result, history=(), trace=(), extra={"note": [1, 2]})
    assert result_from_dict(json.loads(json.dumps(bare.to_dict()))) == bare


def _corrupt(d: dict, how: str) -> object:
    d = json.loads(json.dumps(d))
    if how == "not an object":
        return [d]
    if how == "structure file":
        return d["structure"]
    if how == "no count":
        del d["count"]
    elif how == "edited count":
        d["count"] += 1
    elif how == "count is text":
        d["count"] = "many"
    elif how == "trace step missing":
        del d["trace"][0]["step"]
    elif how == "trace pruned missing":
        del d["trace"][0]["pruned"]
    elif how == "trace fixed malformed":
        d["trace"][0]["fixed"] = [["only-an-id"]]
    elif how == "history row":
        d["history"][0] = 3
    elif how == "bad rank":
        entry = next(e for e in d["structure"]["entries"] if e["rank"] is not None)
        entry["rank"] = 3
    return d


@pytest.mark.parametrize("how, message", [
    ("not an object", "not an object"),
    ("structure file", "is a structure"),
    ("no count", "has no 'count'"),
    ("edited count", "'count' is"),
    ("count is text", "'count' is 'many', expected int"),
    ("trace pruned missing", "trace[0]: no 'pruned'"),
    ("trace step missing", "trace[0]: no 'step'"),
    ("trace fixed malformed", "trace[0]"),
    ("history row", "history[0]"),
    ("bad rank", "its structure is invalid"),
])
def test_invalid_result_dicts_are_clear_errors(result, how, message):
    with pytest.raises(ResultFileError, match=re.escape(message)) as info:
        result_from_dict(_corrupt(result.to_dict(), how))
    assert isinstance(info.value, BipeftError)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("", "is empty"),
    ("truncated", "not valid JSON"),
    (b"\xff\xfe\x00garbage", "is not UTF-8 text"),
])
def test_missing_or_corrupt_result_files_are_clear_errors(result, tmp_path, content, message):
    path = tmp_path / "search_result.json"
    if content == "truncated":
        text = json.dumps(result.to_dict())
        path.write_text(text[: len(text) // 2], encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(BipeftError, match=re.escape(message)) as info:
        load_result(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ResultNotFoundError if content is None else ResultFileError)


def test_a_folder_without_a_result_is_a_clear_error(tmp_path):
    with pytest.raises(ResultNotFoundError, match="has no search_result.json"):
        load_result(tmp_path)


# -- plots ----------------------------------------------------------------------------------

@needs_matplotlib
def test_plots_of_a_bipeft_result_are_valid_pngs(result, tmp_path):
    search = read_png(plot_search(result, tmp_path / "search.png"))
    # three panels (size, modules, loss): taller than wide-ish, and a sensible size
    assert 600 <= search.shape[1] <= 2000 and 500 <= search.shape[0] <= 2000
    heat = read_png(plot_structure(result.structure, tmp_path / "sub" / "heat.png"))
    assert 400 <= heat.shape[1] <= 4400 and 250 <= heat.shape[0] <= 4400
    assert has_colour(heat, ON_COLOUR)  # the structure keeps vector modules


@needs_matplotlib
def test_plots_of_results_with_little_or_no_history(result, tmp_path):
    empty = attrs.evolve(result, history=(), trace=())
    read_png(plot_search(empty, tmp_path / "empty.png"))
    # a baseline's history: a loss and a module count only, triggers without sizes on the curve
    partial = attrs.evolve(result, history=tuple({"step": r["step"], "loss": r["loss"], "remaining": r["remaining"]}
                                                 for r in result.history))
    read_png(plot_search(partial, tmp_path / "partial.png"))
    no_steps = attrs.evolve(result, history=tuple({"loss": r["loss"]} for r in result.history), trace=())
    read_png(plot_search(no_steps, tmp_path / "no_steps.png"))


@needs_matplotlib
def test_heatmap_colours_ranks_and_vector_modules_apart(tmp_path):
    specs = specs_for("bert")
    only_ranks = Structure.from_choices(specs, {x.index: 4 for x in specs if x.type == "lora"})
    img = read_png(plot_structure(only_ranks, tmp_path / "ranks.png"))
    assert not has_colour(img, ON_COLOUR)
    only_vectors = Structure.from_choices(specs, {x.index: None for x in specs if x.type == "lnfit"})
    img = read_png(plot_structure(only_vectors, tmp_path / "vectors.png"))
    assert has_colour(img, ON_COLOUR)
    for s, name in [(Structure(entries=()), "empty"), (Structure(entries=(), full=True, backbone_params=10), "full")]:
        read_png(plot_structure(s, tmp_path / f"{name}.png"))


@needs_matplotlib
def test_write_report_writes_the_table_and_both_plots(result, tmp_path):
    paths = write_report(result, tmp_path / "report")
    assert [p.name for p in paths] == ["structure.txt", "search_progress.png", "structure_heatmap.png"]
    text = paths[0].read_text(encoding="utf-8")
    assert structure_table(result.structure, result.budget) in text
    assert f"strategy {result.strategy}" in text
    for p in paths[1:]:
        read_png(p)


def test_missing_matplotlib_is_a_clear_error(result, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(PlotDependencyError, match=re.escape("bipeft[plots]")):
        plot_structure(result.structure, tmp_path / "x.png")
    with pytest.raises(PlotDependencyError):
        plot_search(result, tmp_path / "x.png")
    with pytest.raises(PlotDependencyError):
        write_report(result, tmp_path / "r")
    assert (tmp_path / "r" / "structure.txt").is_file()  # the text is written before the plots
    assert not (tmp_path / "x.png").exists()
    # reading results and the text report need no matplotlib
    text = write_text_report(result, tmp_path / "t").read_text(encoding="utf-8")
    assert text.startswith(f"strategy {result.strategy}") and structure_table(result.structure, result.budget) in text


def _imports(path):
    """(module name, at module level) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, id(node) in top))
    return out


def test_only_the_plots_module_imports_matplotlib_and_only_when_drawing():
    core = Path(bipeft_core.__file__).parent
    users = sorted(f.name for f in core.rglob("*.py")
                   if any(m.split(".")[0] == "matplotlib" for m, _ in _imports(f)))
    assert users == ["plots.py"]
    assert not [m for m, at_top in _imports(core / "plots.py") if m.split(".")[0] == "matplotlib" and at_top]
    assert not [m for m, _ in _imports(core / "report.py") if m == "bipeft_core.plots"]  # one direction only


def test_sites_sharing_a_position_are_ordered_as_in_the_model_not_by_name():
    specs = specs_for("bert")
    first = pick(specs, "bitfit", "norm", "layer.0.attention.output.LayerNorm")
    second = pick(specs, "bitfit", "norm", "layer.0.output.LayerNorm")
    # rename the sites so that the alphabetical order is the reverse of the model order
    zeta = attrs.evolve(first, sites=(("target", "bert.encoder.layer.0.zeta.LayerNorm"),))
    alpha = attrs.evolve(second, sites=(("target", "bert.encoder.layer.0.alpha.LayerNorm"),))
    s = Structure.from_choices({first.index: zeta, second.index: alpha}, {first.index: None, second.index: None})
    assert "norm(zeta) norm(alpha)" in structure_table(s)
