"""The benchmark harness: its grid follows the protocol, its report computes
what it says, and the peft peers count what they train."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from bipeft_core.distributed import Dist
from bipeft_core.spec import TrainSpec
from bipeft_core.testing import tiny_model
from bipeft_core.training import train_model

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


grid = _load("grid")


def test_protocol_grid_has_the_cells_of_the_notes():
    cells = grid.protocol_cells(grid.TASKS, grid.BUDGETS, grid.METHODS, grid.SEEDS)
    ids = [grid.cell_id(**c) for c in cells]
    assert len(ids) == len(set(ids))
    # seed 42: 5 tasks x (5 budgeted methods x 2 budgets + 5 fixed-size methods)
    assert sum(c["seed"] == 42 for c in cells) == 5 * (5 * 2 + 5)
    extra = [c for c in cells if c["seed"] != 42]
    # seeds 43, 44: STS-B, MRPC, CoLA x (5 budgeted at 0.1 % + peft LoRA), and SST-2 x the four compared methods;
    # seeds 45, 46: STS-B, MRPC, CoLA, SST-2 x (BIPEFT, S3Delta, PrunePEFT, peft LoRA)
    four = {"bipeft", "s3delta", "prunepeft", "peft_lora"}
    assert len(extra) == 2 * 3 * 6 + 2 * 4 + 2 * 4 * 4
    assert {c["task"] for c in extra} == {"stsb", "mrpc", "cola", "sst2"}
    assert {c["method"] for c in extra if c["task"] == "sst2" or c["seed"] > 44} == four
    assert {c["seed"] for c in extra} == {43, 44, 45, 46}
    assert {c["budget"] for c in extra} == {"0.1%", None}
    assert {c["method"] for c in extra if c["budget"] is None} == {"peft_lora"}
    assert not any(c["method"] in ("lora", "bitfit", "lnfit", "full") for c in extra)
    # the ablation variants are named on the command line, seeds 42-44 on STS-B and CoLA; a candidate for
    # the default (the max normaliser) seeds 42-44 on all four compared tasks
    variants = grid.protocol_cells(grid.TASKS, ("0.1%",), grid.VARIANTS, grid.SEEDS)
    candidates = len(grid.DEFAULT_CANDIDATES)
    assert len(variants) == (len(grid.VARIANTS) - candidates) * (5 + 2 * 2) + candidates * (5 + 4 * 2)
    assert {c["seed"] for c in variants if c["task"] == "sst2"} == {42, 43, 44}
    assert {c["method"] for c in variants if c["task"] == "sst2" and c["seed"] == 43} == {"bipeft_norm_max"}
    # seed 42 runs first, so one pass over the grid finishes before the extra seeds
    first_extra = next(i for i, c in enumerate(cells) if c["seed"] != 42)
    assert all(c["seed"] == 42 for c in cells[:first_extra])
    assert "stsb-b0.1-bipeft-s42" in ids and "sst2-fixed-full-s42" in ids


def test_restricted_grid():
    cells = grid.protocol_cells(("stsb",), ("0.1%",), ("bipeft", "bitfit"), (42,))
    assert [grid.cell_id(**c) for c in cells] == ["stsb-b0.1-bipeft-s42", "stsb-fixed-bitfit-s42"]


def _cell(method, seed, score, budget="0.1%", ratio=0.4, **extra):
    return {"task_key": "stsb", "budget_value": budget, "method": method, "seed": seed, "metric": "pearson",
            "test": {"pearson": score}, "peft_params": 20000, "ratio_of_backbone": 20000 / 22565376,
            "budget_met": True, "search_time": 10.0 * ratio, "retrain_time": 10.0, "search_retrain_ratio": ratio,
            "peak_rss_mb": 900.0 + seed, "search_pass_start": None, "search_pass_end": None,
            "retrain_step_time": 0.8, "max_train": None, "train_epochs": 3, **extra}


def test_aggregate_means_and_sample_std_over_seeds():
    rows = grid.aggregate([_cell("bipeft", 42, 0.80), _cell("bipeft", 43, 0.84), _cell("bipeft", 44, 0.82),
                           _cell("bitfit", 42, 0.83, budget=None, ratio=1e-6, search_steps=0, strategy="manual"),
                           _cell("autopeft", 42, 0.75, ratio=1.8, search_steps=0, strategy="autopeft")])
    by = {r["method"]: r for r in rows}
    assert by["bipeft"]["mean"] == pytest.approx(82.0)
    assert by["bipeft"]["std"] == pytest.approx(2.0)
    assert by["bipeft"]["seeds"] == [42, 43, 44]
    assert by["bipeft"]["peak_rss_mb"] == 944.0
    assert by["bitfit"]["std"] is None and by["bitfit"]["budget"] == "fixed"
    table = "\n".join(grid.table(rows))
    assert "82.00 ± 2.00" in table and "| – | BitFit | 83.00 |" in table
    # BitFit ran no search step: its search time and ratio read "–", not 0.0 and 0.00
    bitfit = next(line for line in table.splitlines() if "BitFit" in line).split("|")
    assert [c.strip() for c in bitfit[8:11]] == ["–", "10.0", "–"]
    bipeft = next(line for line in table.splitlines() if "BIPEFT" in line).split("|")
    assert [c.strip() for c in bipeft[8:11]] == ["4.0", "10.0", "0.40"]
    # AutoPEFT searches by trials (no supernet steps): its search is shown
    autopeft = next(line for line in table.splitlines() if "AutoPEFT" in line).split("|")
    assert [c.strip() for c in autopeft[8:11]] == ["18.0", "10.0", "1.80"]


def test_targets_say_met_and_missed_from_the_figures():
    rows = grid.aggregate([
        _cell("bipeft", 42, 0.84, ratio=0.3, search_pass_start=1.0, search_pass_end=0.7),
        _cell("s3delta", 42, 0.85, ratio=0.9), _cell("prunepeft", 42, 0.80, ratio=0.2),
        _cell("lora", 42, 0.83, budget=None)])
    text = "\n".join(grid.targets(rows))
    # ratio 0.3 is <= 0.5 but not below PrunePEFT's 0.2
    assert "BIPEFT search/re-train 0.30" in text and "PrunePEFT 0.20): **missed**" in text
    assert "BIPEFT average 84.00 vs S3Delta 85.00 over stsb: **missed**" in text
    assert "BIPEFT average 84.00 vs LoRA r=8 (q,v) 83.00 over stsb: **met**" in text
    assert "1.000 s at the start, 0.700 s at the end of the search (-30%): **falls**" in text
    seeds = grid.aggregate([_cell("bipeft", 43, 0.84, ratio=1.1), _cell("bipeft", 42, 0.83, ratio=0.7)])
    # the mean hides a seed whose search ran its whole epochs: each seed's ratio is given, in seed order
    assert "BIPEFT search/re-train 0.90 (seeds: 0.70, 1.10) (≤ 0.5" in "\n".join(grid.targets(seeds))
    flat = grid.aggregate([_cell("bipeft", 42, 0.84, ratio=0.3, search_pass_start=0.472, search_pass_end=0.466)])
    assert "(-1%): **about flat**" in "\n".join(grid.targets(flat))  # 1 % is noise, not the pruning's effect


def test_step_figures_per_pass():
    history = [{"step_time": t} for t in (5.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0)]
    figures = grid._step_figures(history, "iterative")
    assert figures == {"search_pass_start": 1.0, "search_pass_end": 0.5}
    assert grid._step_figures(history, "apet") == {"search_pass_start": None, "search_pass_end": None}


def test_report_writes_tables_from_cells(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    for c in (_cell("bipeft", 42, 0.84, versions={"torch": "2.13.0", "datasets": "5.0.1"}),
              _cell("apet", 42, 0.70, versions={"torch": "2.13.0", "datasets": "4.8.5"})):
        (cells / f"{c['method']}.json").write_text(json.dumps(c))
    (cells / "late.json").write_text(json.dumps(_cell("bipeft", 43, 0.85, cell="stsb-b0.1-bipeft-s43", search_steps=270,
                                                      triggers=1, notes=["the epochs ran out with 19 triggers left"],
                                                      versions={"torch": "2.13.0", "datasets": "5.0.1"})))
    (cells / "lora.json").write_text(json.dumps(_cell("lora", 42, 0.83, budget=None, cell="stsb-fixed-lora-s42",
                                                      search_steps=0, strategy="manual", notes=["manual lora: no search"],
                                                      versions={"torch": "2.13.0", "datasets": "5.0.1"})))
    rows = grid.write_report(tmp_path, "python benchmarks/grid.py --tasks stsb")
    assert len(rows) == 3
    text = (tmp_path / "README.md").read_text()
    assert ("## Searches that ended with a note\n\n- stsb-b0.1-bipeft-s43: the epochs ran out with 19 triggers left "
            "(270 steps, triggers fired: 1, search/re-train 0.40)\n") in text
    assert "stsb-fixed-lora-s42" not in text  # a method with no search has no search to note
    assert "python benchmarks/grid.py --tasks stsb" in text and "| 0.1 % | APET | 70.00 |" in text
    assert json.loads((tmp_path / "results.json").read_text())[0]["method"] == "bipeft"
    # the machine line names every library version the cells ran with, not only the last cell's
    assert "torch 2.13.0, datasets 4.8.5 (1 cells) / 5.0.1 (3 cells)" in text  # cells in file-name order


def test_unknown_method_is_refused(capsys):
    with pytest.raises(SystemExit):
        grid.main(["--methods", "bipeft,lorax", "--list"])
    assert "unknown method lorax" in capsys.readouterr().err


def test_warmup_is_at_most_a_third_of_the_epochs():
    def warmup(epochs, spec_warmup=1):
        spec = {"search": {"trigger": {"name": "budget_stability", "warmup_epochs": spec_warmup}}}
        grid.fit_warmup(spec, epochs)
        return spec["search"]["trigger"]["warmup_epochs"]

    assert warmup(1) == 0.3333  # SST-2's single epoch: not the whole search
    assert (warmup(3), warmup(5), warmup(15)) == (1, 1, 1)  # the spec's 1 epoch where it is a third or less
    assert warmup(15, spec_warmup=4) == 4
    no_trigger = {"search": {"optimizer": "prunepeft"}}
    grid.fit_warmup(no_trigger, 1)
    assert no_trigger == {"search": {"optimizer": "prunepeft"}}


def test_help_prints(capsys):
    # argparse expands %-formats in help texts: the quick settings hold "0.1%", which must not break --help
    with pytest.raises(SystemExit) as exc:
        grid.main(["--help"])
    assert exc.value.code == 0
    assert "'0.1%'" in capsys.readouterr().out


peft = pytest.importorskip("peft")
peers = _load("peers")


def test_adalora_target_rank_is_the_largest_that_fits():
    model = tiny_model("bert", hidden=32, layers=2)
    per_rank = 4 * (32 + 32 + 1)  # query and value of 2 layers
    assert peers.adalora_target_rank(model, ["query", "value"], 3 * per_rank + 5) == (3, 3 * per_rank)
    assert peers.adalora_target_rank(model, ["query", "value"], 10) == (1, per_rank)
    with pytest.raises(ValueError, match="no modules named"):
        peers.adalora_target_rank(model, ["q_proj"], 1000)


def test_adalora_kept_count_follows_its_singular_values():
    model = tiny_model("bert", hidden=32, layers=2)
    config = peft.AdaLoraConfig(init_r=4, target_r=2, target_modules=["query", "value"], total_step=10)
    pm = peft.get_peft_model(model, config)
    per_rank = 32 + 32 + 1
    with torch.no_grad():
        for module in pm.modules():
            e = getattr(module, "lora_E", None)
            if isinstance(e, torch.nn.ParameterDict):
                e["default"].fill_(1.0)
    assert peers.kept_count(pm) == 4 * 4 * per_rank
    with torch.no_grad():
        first = next(m for m in pm.modules() if isinstance(getattr(m, "lora_E", None), torch.nn.ParameterDict))
        first.lora_E["default"][:3] = 0.0
    assert peers.kept_count(pm) == (4 * 4 - 3) * per_rank


def test_train_model_calls_on_step_and_times_steps():
    model = torch.nn.Linear(3, 1)
    data = [{"x": torch.randn(3), "y": torch.randn(1)} for _ in range(10)]
    seen = []

    def loss(m, b):
        return torch.nn.functional.mse_loss(m(b["x"]), b["y"])

    def collate(rows):
        return {"x": torch.stack([r["x"] for r in rows]), "y": torch.stack([r["y"] for r in rows])}

    out = train_model(model, list(model.parameters()), data, settings=TrainSpec(epochs=2, batch_size=4),
                      collate=collate, loss=loss, on_step=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6]
    assert out["steps"] == 6 and out["step_time"] > 0


def test_device_override(monkeypatch):
    monkeypatch.setenv("BIPEFT_DEVICE", "meta")
    assert Dist().device() == torch.device("meta")
    monkeypatch.delenv("BIPEFT_DEVICE")
    assert Dist().device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_timing_script_runs_the_three_searches_on_a_tiny_t5(tmp_path, monkeypatch):
    monkeypatch.setenv("BIPEFT_DEVICE", "cpu")
    timing = _load("timing")
    assert timing.main(["--backbone", "tiny", "--examples", "32", "--length", "8", "--batch-size", "8",
                        "--epochs", "1", "--budget", "5%", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "timing.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["bipeft", "s3delta", "prunepeft"]
    for r in data["rows"]:
        assert 0 < r["peft_params"] <= r["budget"]
        assert r["search_s"] > 0 and r["retrain_s"] > 0
    assert "| bipeft |" in (tmp_path / "timing.md").read_text()


def test_retrain_with_nothing_to_train_says_so():
    from bipeft_core import Pipeline, TrainingError, load_plugins
    from bipeft_core.structure import Structure

    timing = _load("timing")
    model = timing.build_t5(timing.TINY, 0)  # a tied LM head: no trainable head
    pipe = Pipeline(budget="1%", space="s2", plugins=load_plugins())
    with pytest.raises(TrainingError, match="nothing to train"):
        pipe.retrain(model, Structure.from_choices([], {}), timing.synthetic(8, 4, 128, 0),
                     loss_fn=timing.loss_fn)


def test_a_finished_cell_of_other_epochs_is_not_skipped_silently(tmp_path, capsys):
    """Cell names carry no epoch count: a --epochs run into a folder holding the
    protocol's cells would skip them as done and mix the two in one table."""
    (tmp_path / "cells").mkdir()
    cell = _cell("bipeft", 42, 0.15, task_key="cola", train_epochs=3)
    (tmp_path / "cells" / "cola-b0.1-bipeft-s42.json").write_text(json.dumps(cell))
    args = ["--tasks", "cola", "--budgets", "0.1%", "--methods", "bipeft", "--seeds", "42", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        grid.main(args + ["--epochs", "15", "--list"])
    err = capsys.readouterr().err
    assert "train_epochs=3" in err and "train_epochs=15" in err and "own --out" in err
    assert grid.main(args + ["--list"]) == 0  # the protocol's own epochs: the cell counts as done
    assert "done  cola-b0.1-bipeft-s42" in capsys.readouterr().out


def test_a_budget_the_method_cannot_meet_is_recorded_not_retried(tmp_path, monkeypatch, capsys):
    """S3Delta's rank-1 space holds fewer parameters than 0.5 % of MiniLM: the
    cell is kept as done with the reason, listed apart, and not in the table."""
    from bipeft_core.errors import BudgetError

    def whole_space(cell, **kw):
        raise BudgetError("the budget of 112,826 parameters holds the whole space (86,448 at the largest ranks)")

    monkeypatch.setattr(grid, "run_cell", whole_space)
    cell = {"task": "cola", "budget": "0.5%", "method": "s3delta", "seed": 42}
    assert grid.main(["--cell", json.dumps(cell), "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "cells" / "cola-b0.5-s3delta-s42.json").read_text())
    assert "holds the whole space" in saved["not_run"] and saved["train_epochs"] == 3
    (tmp_path / "cells" / "bipeft.json").write_text(json.dumps(_cell("bipeft", 42, 0.84)))
    rows = grid.write_report(tmp_path, "python benchmarks/grid.py --tasks cola")
    assert [r["method"] for r in rows] == ["bipeft"]
    text = (tmp_path / "README.md").read_text()
    assert "## Cells the method cannot run" in text and "- cola-b0.5-s3delta-s42: the budget of 112,826" in text
    # a rerun counts it as done instead of failing on it again
    args = ["--tasks", "cola", "--budgets", "0.5%", "--methods", "s3delta", "--seeds", "42", "--out", str(tmp_path)]
    capsys.readouterr()
    assert grid.main(args + ["--list"]) == 0
    assert "done  cola-b0.5-s3delta-s42" in capsys.readouterr().out


def test_curve_and_transfer_cells_and_their_tables(tmp_path):
    """Issue 15's evidence cells: a curve cell at the smallest budget, transfer
    cells only between different tasks, separate searches at the curve's other
    budgets on seeds 42-44; the report pairs each with its counterpart."""
    cells = grid.protocol_cells(grid.TASKS, ("0.1%",), (grid.CURVE, *grid.TRANSFER), grid.SEEDS)
    ids = {grid.cell_id(**c) for c in cells}
    assert {c["seed"] for c in cells} == {42, 43, 44}
    assert "stsb-b0.05-bipeft_curve-s44" in ids and "mrpc-b0.05-bipeft_curve-s42" not in ids
    assert "cola-b0.1-transfer_stsb-s43" in ids and "cola-b0.1-transfer_cola-s43" not in ids
    assert len(cells) == 2 * 3 + 3 * 2 * 3
    separate = grid.protocol_cells(("cola",), grid.CURVE_BUDGETS, ("bipeft", "s3delta"), (43,))
    assert [grid.cell_id(**c) for c in separate] == ["cola-b0.05-bipeft-s43", "cola-b0.1-bipeft-s43",
                                                     "cola-b0.2-bipeft-s43", "cola-b0.1-s3delta-s43"]
    folder = tmp_path / "cells"
    folder.mkdir()
    for seed, (small, mid, ours_mid) in {42: (0.80, 0.84, 0.83), 43: (0.81, 0.85, 0.83)}.items():
        curve = [{"budget_value": b, "metric": m, "params": p} for b, m, p in
                 zip(grid.CURVE_BUDGETS, (small, mid, 0.86), (11000, 22400, 45000))]
        for name, cell in {f"c{seed}": _cell(grid.CURVE, seed, small, budget="0.05%", curve=curve, search_time=6.0,
                                             search_steps=270),
                           f"b{seed}": _cell("bipeft", seed, ours_mid, search_time=5.0, search_steps=85),
                           f"t{seed}": _cell("transfer_cola", seed, ours_mid - 0.02, strategy="fixed"),
                           f"l{seed}": _cell("peft_lora", seed, ours_mid + 0.01, budget=None)}.items():
            (folder / f"{name}.json").write_text(json.dumps(cell))
    grid.write_report(tmp_path)
    text = (tmp_path / "README.md").read_text()
    # the curve's 0.1 % point (84, 85) against the separate search (83, 83): +1.50, seeds 42 and 43
    assert "| stsb | 0.1% | 42,43 | 84.50 ± 0.71 | 22,400 | 83.00 ± 0.00 | 20,000 | +1.50 [-4.85, +7.85] |" in text
    assert "| stsb | 0.2% | 42,43 | 86.00 ± 0.00 | 45,000 | – | – | – |" in text
    assert "stsb s42 1.20 (270 against 85 steps), stsb s43 1.20" in text
    assert "| stsb | cola | 42,43 | 81.00 ± 0.00 | 83.00 ± 0.00 | -2.00 [-2.00, -2.00] | 84.00 ± 0.00 | -3.00" in text


def _structured(method, seed, score, lora, adapter):
    entries = [{"type": "lora", "count": lora, "rank": 8, "layer": "encoder.layer.0"},
               {"type": "adapter_lr", "count": adapter, "rank": 1, "layer": "encoder.layer.5"},
               {"type": "bitfit", "count": 100, "rank": None, "layer": "embeddings.LayerNorm"}]
    return _cell(method, seed, score, structure={"entries": entries})


def test_share_score_correlates_type_shares_with_the_metric_over_bipeft_structures():
    # LoRA share rises with the score, Adapter-LR share falls; a rival's structure is left out
    cells = [_structured("bipeft", 42, 0.80, 100, 900), _structured("bipeft", 43, 0.82, 400, 600),
             _structured("transfer_cola", 42, 0.84, 700, 300), _structured("bipeft_k6", 42, 0.86, 900, 100),
             _structured("s3delta", 42, 0.10, 900, 100)]
    lines = grid.share_score_lines(cells)
    assert lines[0].startswith("| task | cells | r(adapter_lr share, metric) | r(bitfit share, metric) | "
                               "r(lora share, metric) | r(rank ≥ 4 share, metric) | r(mean layer, metric) |")
    row = lines[2].split("|")
    assert row[1].strip() == "stsb" and row[2].strip() == "4"
    adapter, bitfit, lora, big, depth = (float(x) if x.strip() != "–" else None for x in row[3:8])
    assert adapter < -0.9 and lora > 0.9 and big == lora
    # the deeper (layer 5) Adapter-LR holds more where the score is lower; the embeddings' BitFit has no depth
    assert depth < -0.9
    assert bitfit is None  # every structure gives BitFit the same share: no correlation to speak of
    # fewer than four structures say nothing
    assert grid.share_score_lines(cells[:3]) == []


def test_cell_spec_gives_the_curve_its_budgets_and_every_cell_the_recipe():
    data, source = grid.cell_spec({"task": "cola", "budget": "0.05%", "method": grid.CURVE, "seed": 43})
    assert source is None
    assert data["budget"] == {"value": "0.05%", "budgets": list(grid.CURVE_BUDGETS), "references": False}
    assert data["search"]["seed"] == data["retrain"]["seed"] == 43
    assert data["search"]["epochs"] == grid.TASKS["cola"][1]
    single, _ = grid.cell_spec({"task": "cola", "budget": "0.1%", "method": "bipeft", "seed": 42},
                               overrides=("bipeft:search.trigger.max_triggers=4", "s3delta:search.seed=1"))
    assert single["budget"] == {"value": "0.1%"}
    assert single["search"]["trigger"]["max_triggers"] == 4 and single["search"]["seed"] == 42
    with pytest.raises(ValueError, match="work folder"):
        grid.cell_spec({"task": "cola", "budget": "0.1%", "method": "transfer_stsb", "seed": 42})


@pytest.mark.parametrize("method", grid.VARIANTS)
def test_every_variant_spec_is_a_valid_pipeline_with_a_label(method):
    """A variant named on the grid's command line builds (its spec file
    exists and every field is known), and its report row has a label."""
    from bipeft_core.pipeline import Pipeline

    data, _ = grid.cell_spec({"task": "cola", "budget": "0.1%", "method": method, "seed": 43})
    pipeline = Pipeline.from_dict(data, source=method)
    assert pipeline.search_settings.seed == 43 and pipeline.optimizer.name == "iterative"
    assert method in grid.LABELS and (method in grid.ABLATIONS or method in grid.RIVALS)  # a report row


def test_curve_cost_rotates_the_searches_and_divides_by_each_single_search(tmp_path, monkeypatch):
    cost = _load("curve_cost")
    seconds = {("bipeft", "0.1%"): 100.0, ("bipeft", "0.05%"): 110.0, (grid.CURVE, "0.05%"): 121.0}
    calls = []

    def fake(task, method, budget, seed, folder, data_dir, max_train, epochs):
        calls.append((method, budget, seed, max_train))
        return {"wall": 1.0, "search_time": seconds[method, budget], "steps": 120, "count": 1, "budget": 1,
                "curve_points": 2 if method == grid.CURVE else 0}

    monkeypatch.setattr(cost, "run_search", fake)
    assert cost.main(["--task", "cola", "--seeds", "42,43", "--work", str(tmp_path / "w"),
                      "--out", str(tmp_path / "o")]) == 0
    assert calls[0][3] == 64  # the untimed warm-up search
    assert [c[:2] for c in calls[1:4]] == [("bipeft", "0.1%"), ("bipeft", "0.05%"), (grid.CURVE, "0.05%")]
    assert [c[:2] for c in calls[4:7]] == [("bipeft", "0.05%"), (grid.CURVE, "0.05%"), ("bipeft", "0.1%")]
    doc = json.loads((tmp_path / "o" / "curve_cost-cola.json").read_text())
    assert [r["ratio_to_single_0.1"] for r in doc["rows"]] == pytest.approx([1.21, 1.21])
    assert [r["ratio_to_single_0.05"] for r in doc["rows"]] == pytest.approx([1.1, 1.1])
    text = (tmp_path / "o" / "curve_cost-cola.md").read_text()
    assert "Largest ratio to the single 0.1 % search: 1.21 (meets the 1.5x bar)" in text


def test_reseed_spec_keeps_the_recipe_and_replaces_the_search_by_the_stored_structure(tmp_path):
    reseed = _load("reseed")
    cell = {"task_key": "stsb", "budget_value": "0.1%", "train_epochs": 3, "max_train": None}
    data = reseed.fixed_spec(cell, tmp_path / "s.json", 45)
    assert data["search"]["optimizer"] == {"name": "fixed", "structure": str(tmp_path / "s.json")}
    assert not {"sensitivity", "trigger", "module_selector", "dimension_selector"} & set(data["search"])
    assert data["retrain"]["seed"] == 45 and data["retrain"]["epochs"] == 3
    ours, _ = grid.cell_spec({"task": "stsb", "budget": "0.1%", "method": "bipeft", "seed": 45})
    assert {k: v for k, v in data["retrain"].items()} == ours["retrain"]
    assert reseed.fixed_spec(cell, tmp_path / "s.json", 45, max_train=64)["retrain"]["max_train_examples"] == 64


def test_budget_use_target_excuses_only_cells_where_nothing_fits():
    from bipeft_core.loop import REFILL_NOTE

    def cell(name, params, notes=(), refill_log=()):
        return {"cell": name, "method": "bipeft", "budget": 1000, "peft_params": params,
                "budget_use": params / 1000, "notes": list(notes), "refill_log": list(refill_log)}

    full = cell("a", 990)
    noted = cell("b", 950, notes=[REFILL_NOTE.format(left=50, least=64)])
    old = cell("c", 960, refill_log=["added bitfit:x (+8)"])
    (line,) = grid.budget_use_lines([full, noted, old])
    assert "**met**" in line and "b: 50 left, smallest addition +64" in line and "c: 40 left after 1 re-fill" in line
    # a note whose smallest addition would fit, or a short cell with no re-fill at all, misses the target
    wrong = cell("d", 900, notes=[REFILL_NOTE.format(left=100, least=64)])
    bare = cell("e", 900)
    (line,) = grid.budget_use_lines([full, wrong, bare])
    assert "**missed on d, e**" in line
