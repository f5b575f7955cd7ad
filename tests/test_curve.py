"""Several budgets from one search: the search runs down to the smallest
budget and records the structure of each larger one on its way, each
repaired and re-filled to its budget as a search at that budget is."""

from __future__ import annotations

import pytest

from bipeft_core import Pipeline, load_plugins
from bipeft_core.structure import Structure
from bipeft_core.testing import tiny_model
from bipeft_core.testing import toy_examples as synthetic


def _pipe(**kw):
    return Pipeline(trigger={"name": "budget_stability", "warmup_epochs": 0.5, "max_triggers": 10, "window": 2,
                             "spread": False, "fresh": False},
                    search_settings={"epochs": 6, "batch_size": 16, "lr": 1e-3},
                    retrain_settings={"epochs": 1, "batch_size": 16}, plugins=load_plugins(entry_points=False), **kw)


def test_one_search_records_a_structure_per_budget():
    train = synthetic(192)
    result = _pipe(budget=1500, budgets=["3000", "6000"]).search(tiny_model("bert"), train)
    assert result.budget == 1500 and result.count <= 1500
    curve = result.extra["curve"]
    assert [c["budget"] for c in curve] == [3000, 6000]
    previous_step = None
    for c in curve:
        structure = Structure.from_dict(c["structure"])
        assert structure.count() == c["count"] <= c["budget"] and c["budget_met"]
        assert c["count"] >= 0.97 * c["budget"] or c["refill_log"] == []  # re-filled wherever something fits
        if c["source"] == "first fit":  # a larger budget is fitted no later than a smaller one
            assert previous_step is None or c["step"] <= previous_step
            previous_step = c["step"]
    assert any(c["source"] == "first fit" for c in curve)
    # the main result is what a search with only the smallest budget gives
    single = _pipe(budget=1500).search(tiny_model("bert"), train)
    assert single.structure == result.structure


def test_the_smallest_budget_leads_whatever_the_order():
    spec = Pipeline.from_dict({"budget": {"budgets": ["6000", "1500", "3000"]}}, plugins=load_plugins(entry_points=False))
    train = synthetic(96)
    result = _pipe(budget=spec.budget, budgets=spec.budgets).search(tiny_model("bert"), train)
    assert result.budget == 1500 and [c["budget"] for c in result.extra["curve"]] == [3000, 6000]


def test_cli_budgets_write_the_curve_with_reference_points(tiny_model_dir, data_dir, tmp_path, capsys):
    import json

    from bipeft_core import cli

    out = tmp_path / "curve-run"
    args = ["run", "--task", "rte", "--model", str(tiny_model_dir), "--out", str(out), "--max-train", "64",
            "--epochs", "1", "--budgets", "2000,4000", "--data-dir", str(data_dir),
            "--set", "search.batch_size=8", "--set", "retrain.batch_size=8",
            "--set", 'search.trigger={name="budget_stability",warmup_epochs=0.25,max_triggers=6,window=2,'
                     'spread=false,fresh=false}']
    assert cli.main(args) == 0
    assert "curve:" in capsys.readouterr().out
    curve = json.loads((out / "curve.json").read_text())
    assert [e["budget"] for e in curve["entries"]] == [2000, 4000]
    for e in curve["entries"]:
        assert 0 < e["params"] <= e["budget"] and e["metric"] is not None
    assert [r["name"] for r in curve["reference"]] == ["lora r=1", "lora r=2", "lora r=4", "lora r=8", "bitfit"]
    assert curve["reference"][0]["params"] < curve["reference"][3]["params"]  # r=1 holds fewer than r=8
    assert (out / "curve" / "4000" / "metrics.json").is_file()
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:  # the plot needs bipeft[plots]; curve.json does not
        assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["show", str(out), "--no-plots"]) == 0
    assert "budget 4,000 (from step" in capsys.readouterr().out


def test_references_false_round_trips_and_needs_budgets():
    from bipeft_core.errors import SpecError

    plugins = load_plugins(entry_points=False)
    spec = Pipeline.from_dict({"budget": {"budgets": ["1500", "3000"], "references": False}}, plugins=plugins)
    assert spec.curve_references is False
    assert spec.to_dict()["budget"] == {"value": 1500, "budgets": [1500, 3000], "references": False}
    assert Pipeline.from_dict(spec.to_dict(), plugins=plugins).curve_references is False
    assert "references" not in Pipeline.from_dict({"budget": {"budgets": ["1500"]}}, plugins=plugins).to_dict()["budget"]
    with pytest.raises(SpecError, match="references is for a curve"):
        Pipeline.from_dict({"budget": {"value": "1500", "references": False}}, plugins=plugins)
    with pytest.raises(SpecError, match="give true or false"):
        Pipeline.from_dict({"budget": {"budgets": ["1500"], "references": "no"}}, plugins=plugins)


def test_cli_curve_without_reference_points(tiny_model_dir, data_dir, tmp_path):
    import json

    from bipeft_core import cli

    out = tmp_path / "curve-run"
    args = ["run", "--task", "rte", "--model", str(tiny_model_dir), "--out", str(out), "--max-train", "64",
            "--epochs", "1", "--budgets", "2000,4000", "--data-dir", str(data_dir),
            "--set", "budget.references=false", "--set", "search.batch_size=8", "--set", "retrain.batch_size=8",
            "--set", 'search.trigger={name="budget_stability",warmup_epochs=0.25,max_triggers=6,window=2,'
                     'spread=false,fresh=false}']
    assert cli.main(args) == 0
    curve = json.loads((out / "curve.json").read_text())
    assert [e["budget"] for e in curve["entries"]] == [2000, 4000] and curve["reference"] == []
    assert not (out / "curve" / "reference").exists()
