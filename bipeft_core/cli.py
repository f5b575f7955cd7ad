"""The ``bipeft`` command.

    bipeft run --task stsb                       # embedded default: MiniLM, S2, BIPEFT at 0.1 %
    bipeft run --spec spec.toml --out runs/x     # a spec, flags override single fields
    bipeft run --resume --out runs/x             # continue an interrupted run
    bipeft run ... --overwrite --out runs/x      # start the run in runs/x afresh
    bipeft search ... / bipeft retrain RUN / bipeft show RUN / bipeft export RUN [--format peft]
    bipeft plugins / bipeft --version

Everything a run needs is checked before its folder is written. Errors in
the input (and files that cannot be read or written) end with one line,
``bipeft: error: ...``, and exit status 2; an interrupted run prints the
command that resumes it and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from bipeft_core.errors import BipeftError

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Printer:
    """Human output, ``--quiet`` (only the final summary) or ``--jsonl``
    (one JSON object per event on stdout)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def info(self, text: str) -> None:
        if self.mode == "normal":
            print(text, flush=True)

    def event(self, kind: str, /, **data: Any) -> None:
        if self.mode == "jsonl":
            print(json.dumps({"event": kind, **data}, default=str), flush=True)

    def summary(self, text: str, data: dict[str, Any]) -> None:
        if self.mode == "jsonl":
            self.event("summary", **data)
        else:
            print(text, flush=True)


# -- building the pipeline from --spec and flags -------------------------------------------


def _parse_value(text: str) -> Any:
    from bipeft_core.tomlio import TOMLDecodeError, loads

    try:
        return loads(f"v = {text}")["v"]
    except TOMLDecodeError:
        return text


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key; a search component given by name (``optimizer =
    "iterative"``) becomes a table ``{name = ...}`` so its parameters can be set."""
    from bipeft_core.spec import COMPONENT_KINDS

    keys = dotted.split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        if i == 1 and keys[0] == "search" and k in COMPONENT_KINDS and isinstance(node.get(k), str):
            node[k] = {"name": node[k]}
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise BipeftError(f"--set {dotted}: {k} is not a table")
    node[keys[-1]] = value


#: The options that change the spec, as (attribute, flag).
SPEC_FLAGS = (("spec", "--spec"), ("task", "--task"), ("model", "--model"), ("budget", "--budget"),
              ("space", "--space"), ("epochs", "--epochs"), ("seed", "--seed"), ("max_train", "--max-train"),
              ("train_file", "--train-file"), ("validation_file", "--validation-file"), ("test_file", "--test-file"),
              ("text_columns", "--text-columns"), ("label_column", "--label-column"), ("metric", "--metric"),
              ("task_kind", "--task-kind"), ("dataset", "--dataset"), ("budgets", "--budgets"), ("set", "--set"))

#: The own-data options, as (attribute, key of the spec's [data] table).
DATA_FLAGS = (("train_file", "train_file"), ("validation_file", "validation_file"), ("test_file", "test_file"),
              ("text_columns", "text_columns"), ("label_column", "label_column"), ("metric", "metric"),
              ("task_kind", "kind"), ("dataset", "dataset"))


def _given_flags(args: argparse.Namespace) -> list[str]:
    """The spec flags given on the command line, as the user wrote them."""
    out: list[str] = []
    for attr, flag in SPEC_FLAGS:
        value = getattr(args, attr, None)
        if value is None or value == []:
            continue
        out.extend(f"{flag} {v}" for v in value) if isinstance(value, list) else out.append(f"{flag} {value}")
    return out


def build_spec(args: argparse.Namespace, base: dict[str, Any] | None = None, plugins: Any = None) -> dict[str, Any]:
    """The spec dict of the command line: ``--spec`` (else ``base``, else the
    default spec of ``--task``, see :func:`bipeft_core.runner.default_spec`)
    with the flags applied."""
    from bipeft_core.runner import default_spec
    from bipeft_core.spec import COMPONENT_KINDS, read_spec_file

    if base is not None and not args.spec:
        data = json.loads(json.dumps(base))  # a deep copy
    elif args.spec:
        data = read_spec_file(args.spec)
        if isinstance(data.get("budget"), (str, int)):
            data["budget"] = {"value": data["budget"]}
    else:
        if not args.task and not getattr(args, "train_file", None) and not getattr(args, "dataset", None):
            raise BipeftError("give a task (--task stsb), your own data (--train-file FILE --text-columns a,b "
                              "--label-column y) or a spec (--spec FILE)")
        data = default_spec(args.task or None, plugins)
    from_default = not args.spec and base is None
    default_optimizer = _component_name(data.get("search", {}).get("optimizer")) if from_default else None
    if args.task:
        _set(data, "model.task", args.task)
    if args.model:
        _set(data, "model.name_or_path", args.model)
    for attr, key in DATA_FLAGS:
        value = getattr(args, attr, None)
        if value is not None:
            if attr == "text_columns":
                value = [c.strip() for c in str(value).split(",") if c.strip()]
            _set(data, f"data.{key}", os.path.abspath(str(value)) if attr.endswith("_file") else value)
    if args.budget:
        data["budget"] = {"value": args.budget}
    if getattr(args, "budgets", None):
        values = [b.strip() for b in str(args.budgets).split(",") if b.strip()]
        data["budget"] = {"value": values[0], "budgets": values}
    if args.space:
        _set(data, "space.name", args.space)
    for table in ("search", "retrain"):
        if args.epochs is not None:
            _set(data, f"{table}.epochs", args.epochs)
        if args.seed is not None:
            _set(data, f"{table}.seed", args.seed)
        if args.max_train is not None:
            _set(data, f"{table}.max_train_examples", args.max_train)
    user_keys = set()
    for item in args.set or ():
        if "=" not in item:
            raise BipeftError(f"--set {item!r}: write KEY=VALUE, e.g. --set search.lr=1e-3")
        key, value = item.split("=", 1)
        user_keys.add(key.strip())
        _set(data, key.strip(), _parse_value(value.strip()))
    if from_default and _component_name(data.get("search", {}).get("optimizer")) != default_optimizer:
        # another optimizer than the default's: the default's components were chosen for its
        # optimizer, so only those the user set stay
        for kind in COMPONENT_KINDS[1:]:
            if not any(key == f"search.{kind}" or key.startswith(f"search.{kind}.") for key in user_keys):
                data["search"].pop(kind, None)
    return data


def _component_name(value: Any) -> str | None:
    """The registered name of a spec's component value (a name or a table)."""
    return value.get("name") if isinstance(value, dict) else value


def _pipeline(args: argparse.Namespace, plugins: Any) -> Any:
    from bipeft_core.pipeline import Pipeline

    return Pipeline.from_dict(build_spec(args, plugins=plugins), plugins=plugins,
                              source=args.spec or "command line")


def _default_out(pipeline: Any) -> Path:
    task = (pipeline.model.task or pipeline.data.name
            or (Path(pipeline.data.train_file).stem if pipeline.data.given else "task")).replace("/", "-")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    budget = str(pipeline.budget).replace("%", "pct")
    return Path("runs") / f"{task}-{pipeline.optimizer.name}-{budget}-s{pipeline.search_settings.seed}-{stamp}"


# -- commands ------------------------------------------------------------------------------


def _event_plugin(printer: Printer) -> Any:
    from bipeft_core.hookspecs import hookimpl

    class Events:
        name = "cli-events"

        @hookimpl
        def bipeft_on_trigger(self, event, state):
            printer.event("trigger", **event.to_dict())

        @hookimpl
        def bipeft_after_search(self, result):
            printer.event("search_done", count=result.count, budget=result.budget, wall_time=result.wall_time,
                          triggers=len(result.trace))

    return Events()


def _summary_text(s: dict[str, Any]) -> str:
    if s.get("curve"):
        return _summary_lines(s) + f"\ncurve: {s['curve']} (and curve.png)"
    return _summary_lines(s)


def _summary_lines(s: dict[str, Any]) -> str:
    lines = [f"{s['task']} with {s['strategy']}: {s['peft_params']:,} PEFT parameters "
             f"({100 * s['ratio_of_backbone']:.4f}% of {s['backbone_params']:,}; budget {s['budget']:,}"
             f"{'' if s['budget_met'] else ', NOT met'})"]
    if "test" in s:
        metric = s["metric"]
        test = s["test"] or {}
        lines.append(f"test {metric} {test.get(metric, float('nan')):.4f}  "
                     + "  ".join(f"{k} {v:.4f}" for k, v in test.items() if k != metric))
        lines.append(f"search {s['search_time']:.1f}s, re-train {s['retrain_time']:.1f}s, "
                     f"search/re-train {s['search_retrain_ratio']:.2f}")
    else:
        lines.append(f"search {s['search_time']:.1f}s")
    return "\n".join(lines)


def _apply_resume_flags(args: argparse.Namespace, run: Any, plugins: Any) -> None:
    """``--resume`` with spec flags: apply them when they change only stages
    not started yet, else refuse naming the flags (never ignore them)."""
    from bipeft_core.pipeline import Pipeline

    given = _given_flags(args)
    if not given:
        return
    old = run.pipeline.to_dict()
    new_pipe = Pipeline.from_dict(build_spec(args, base=old, plugins=plugins), plugins=plugins, source=" ".join(given))
    new = new_pipe.to_dict()
    changed = [t for t in ("model", "budget", "space", "search", "retrain") if old.get(t) != new.get(t)]
    if not changed:
        return
    blocked = []
    if set(changed) & {"model", "budget", "space", "search"}:
        if run.stage_done("search"):
            blocked.append("the search is finished")
        elif (run.folder / "search").exists():
            blocked.append("the search has a checkpoint")
    if set(changed) & {"model", "retrain"}:
        if run.stage_done("retrain"):
            blocked.append("the re-train is finished")
        elif (run.folder / "retrain" / "checkpoint.pt").exists():
            blocked.append("the re-train has a checkpoint")
    if blocked:
        raise BipeftError(
            f"--resume continues {run.folder} as it was specified, but {', '.join(given)} change"
            f"{'s' if len(given) == 1 else ''} its {', '.join(f'[{t}]' for t in changed)} and "
            f"{' and '.join(blocked)}; drop those flags to resume, or start afresh with the new values: "
            f"bipeft {args.command} ... --overwrite --out {run.folder}")
    run.update_spec(new_pipe)
    logging.getLogger("bipeft.cli").info(
        "applied %s to the stages not started yet (%s)", ", ".join(given), ", ".join(changed))


def _check_device(value: str | None) -> None:
    """``--device``: checked, then handed to the library as ``BIPEFT_DEVICE``."""
    if value is None:
        return
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise BipeftError(f"--device {value!r}: give cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BipeftError(f"--device {value!r}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BipeftError(f"--device {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    os.environ["BIPEFT_DEVICE"] = value


def _epoch_reporter(printer: Printer, total: int) -> Any:
    def on_epoch(epoch: int, record: dict[str, Any]) -> None:
        printer.event("retrain_epoch", **record)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in record.items()
                          if k not in ("epoch", "eligible") and isinstance(v, (int, float)))
        printer.info(f"re-train epoch {epoch + 1}/{total}: {shown}")

    return on_epoch


def cmd_run(args: argparse.Namespace, printer: Printer, stages=("search", "retrain")) -> int:
    from bipeft_core.plugins import load_plugins
    from bipeft_core.runner import Run, check_interval

    command = args.command
    check_interval(args.checkpoint_every)
    _check_device(args.device)
    plugins = load_plugins([_event_plugin(printer)])
    data = None
    if args.resume:
        if not args.out:
            raise BipeftError(f"--resume needs the run folder: bipeft {command} --resume --out RUN_FOLDER")
        if args.overwrite:
            raise BipeftError("--resume continues a run and --overwrite starts it afresh; give one of them")
        run = Run.open(args.out, plugins=plugins)
        _apply_resume_flags(args, run, plugins)
        printer.info(f"resuming {run.folder}: done so far: "
                     f"{', '.join(k for k, v in run.info['stages'].items() if v.get('done')) or 'nothing'}")
    else:
        pipeline = _pipeline(args, plugins)
        folder = Path(args.out) if args.out else _default_out(pipeline)
        Run.check_folder(folder, pipeline, overwrite=args.overwrite, command=command)  # before loading anything
        data = Run.prepare(pipeline, data_dir=args.data_dir)
        run = Run.create(folder, pipeline, argv=sys.argv, overwrite=args.overwrite)
        printer.info(f"run folder {run.folder}")
    return _execute(args, printer, run, data, stages)


def _execute(args: argparse.Namespace, printer: Printer, run: Any, data: Any, stages: tuple[str, ...]) -> int:
    command = args.command if args.command in ("run", "search") else "run"
    printer.event("start", folder=str(run.folder), spec=run.pipeline.to_dict())
    try:
        summary = run.execute(data_dir=args.data_dir, progress=printer.mode == "normal", stages=stages,
                              checkpoint_every=args.checkpoint_every, data=data,
                              on_stage=lambda stage, _: printer.info(f"{stage} done"),
                              on_epoch=_epoch_reporter(printer, run.pipeline.retrain_settings.epochs))
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: bipeft {command} --resume --out {run.folder}", file=sys.stderr)
        return EXIT_INTERRUPTED
    printer.summary(_summary_text(summary), summary)
    return 0


def cmd_transfer(args: argparse.Namespace, printer: Printer) -> int:
    from bipeft_core.plugins import load_plugins
    from bipeft_core.runner import transfer_pipeline, transfer_run

    _check_device(args.device)
    plugins = load_plugins([_event_plugin(printer)])
    pipeline = transfer_pipeline(args.result, args.task, model=args.model, epochs=args.epochs, seed=args.seed,
                                 plugins=plugins)
    folder = Path(args.out) if args.out else _default_out(pipeline)
    run, data = transfer_run(pipeline, folder, data_dir=args.data_dir, overwrite=args.overwrite, argv=sys.argv)
    printer.info(f"run folder {run.folder}: the structure of {args.result} re-trained on {pipeline.model.task}")
    args.checkpoint_every, args.resume = 50, False
    return _execute(args, printer, run, data, ("search", "retrain"))


def cmd_retrain(args: argparse.Namespace, printer: Printer) -> int:
    from bipeft_core.runner import Run

    _check_device(args.device)
    run = Run.open(args.result)
    if not run.stage_done("search"):
        raise BipeftError(f"{run.folder} has no finished search; finish it with bipeft search --resume --out "
                          f"{run.folder} (or bipeft run --resume --out {run.folder})")
    try:
        summary = run.execute(data_dir=args.data_dir, progress=printer.mode == "normal",
                              on_epoch=_epoch_reporter(printer, run.pipeline.retrain_settings.epochs))
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: bipeft retrain {run.folder}", file=sys.stderr)
        return EXIT_INTERRUPTED
    printer.summary(_summary_text(summary), summary)
    return 0


def _result_path(path: Path) -> Path:
    return path / "search_result.json" if path.is_dir() else path


def cmd_show(args: argparse.Namespace, printer: Printer) -> int:
    from bipeft_core.plots import PlotDependencyError, write_report
    from bipeft_core.report import STRUCTURE_TEXT, load_result, structure_table

    path = Path(args.result)
    result = load_result(_result_path(path))
    if printer.mode == "jsonl":
        printer.event("result", **result.to_dict())
    else:
        print(f"strategy {result.strategy}: search {result.wall_time:.1f}s, {len(result.trace)} triggers"
              + ("; " + "; ".join(result.notes) if result.notes else ""))
        print(structure_table(result.structure, result.budget))
        for c in (result.extra or {}).get("curve", []):
            from bipeft_core.structure import Structure

            print(f"\nbudget {c['budget']:,} (from step {c['step']}, {c['source']}):")
            print(structure_table(Structure.from_dict(c["structure"]), c["budget"]))
    if not args.no_plots:
        folder = Path(args.plots) if args.plots else (path if path.is_dir() else path.parent)
        try:
            for written in write_report(result, folder):
                printer.info(f"wrote {written}")
        except PlotDependencyError as exc:
            if args.plots:  # plots asked for by name: their absence is an error
                raise
            # the table is printed and structure.txt written; the plots are optional
            print(f"bipeft: note: no plots ({exc}); wrote {folder / STRUCTURE_TEXT}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace, printer: Printer) -> int:
    from safetensors.torch import load_file

    from bipeft_core.export import choose_format, export
    from bipeft_core.runner import Run, check_model_path, default_model_id, default_model_path
    from bipeft_core.structure import Structure
    from bipeft_core.tasks import load_task_model, task_of

    run = Run.open(args.result)
    weights = run.folder / "retrain" / "adapter.safetensors"
    if not weights.is_file():
        raise BipeftError(f"{run.folder} has no re-trained weights ({weights}); run the re-train first: "
                          f"bipeft retrain {run.folder}")
    pipe = run.pipeline
    plugins = pipe.get_plugins()
    given = pipe.model.name_or_path
    model_path = check_model_path(given or default_model_path(plugins))
    task = task_of(pipe, plugins)
    model = load_task_model(model_path, task, **pipe.model.load_kwargs())
    structure = Structure.load(run.folder / "structure.json")
    peft_model = structure.build(model, plugins.peft_modules)
    try:
        peft_model.load_trainable_state_dict(load_file(str(weights)))
    except Exception as exc:
        raise BipeftError(f"{weights} could not be read ({exc}); the file is corrupt: re-train with "
                          f"bipeft retrain {run.folder}") from None
    fmt = args.format or "auto"
    why = None
    if fmt == "auto":
        fmt, why = choose_format(peft_model, plugins)
    out = Path(args.out) if args.out else run.folder / f"export-{fmt}"
    base = args.base_model or given or default_model_id(plugins) or model_path
    try:
        written = export(peft_model, out, format=fmt, base_model_name_or_path=base, overwrite=args.overwrite,
                         plugins=plugins, tokenizer=_run_tokenizer(model_path),
                         card=_card_facts(run, pipe, task, model_path))
    except BipeftError as exc:
        raise BipeftError(_cli_words(str(exc))) from None
    if args.format not in (None, "auto"):
        chosen = ""
    elif why is None:
        chosen = " (chosen by --format auto: native peft holds this structure exactly)"
    else:
        chosen = f" (chosen by --format auto, as native peft cannot hold this structure: {_cli_words(why)})"
    printer.info(f"exported in the {fmt} format{chosen} to {written}")
    printer.event("exported", format=fmt, path=str(written), chosen=args.format in (None, "auto"), why=why)
    return 0


def _run_tokenizer(model_path: str) -> Any:
    """The tokenizer the run used (saved into the export), or ``None`` when
    it cannot be loaded (the export then says so on its model card only by
    its absence)."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError):
        return None


def _card_facts(run: Any, pipe: Any, task: Any, model_path: str) -> dict[str, Any]:
    """What the export's model card says about the run: task, test metric,
    budget, search settings, and the path the run loaded the model from."""
    facts: dict[str, Any] = {"task": task.name, "resolved_base_model": model_path,
                             "pipeline_tag": "text-classification"}
    try:
        metrics = json.loads((run.folder / "retrain" / "metrics.json").read_text(encoding="utf-8"))
        name = metrics.get("primary_metric")
        test = metrics.get("test") or {}
        value = test.get(name) if isinstance(test, dict) else None
        if name and value is not None:
            facts.update(metric=name, metric_value=float(value))
    except (OSError, ValueError):
        pass
    try:
        result = json.loads((run.folder / "search_result.json").read_text(encoding="utf-8"))
        facts["budget"] = int(result["budget"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    optimizer = pipe.optimizer
    facts["search"] = {
        "strategy": optimizer.name if optimizer is not None else "?",
        "space": pipe.space.name or pipe.space.file,
        "budget (as given)": str(pipe.budget),
        "search epochs": pipe.search_settings.epochs,
        "re-train epochs": pipe.retrain_settings.epochs,
        "seed": pipe.search_settings.seed,
    }
    return facts


def _cli_words(message: str) -> str:
    """A library message with its Python keyword arguments as the CLI's flags."""
    for python, flag in (("format='bipeft'", "--format bipeft"), ("format='peft'", "--format peft"),
                         ("format='peft-bipeft'", "--format peft-bipeft"), ("format='merged'", "--format merged"),
                         ("format='auto'", "--format auto"),
                         ("overwrite=True", "--overwrite")):
        message = message.replace(python, flag)
    return message


def cmd_plugins(args: argparse.Namespace, printer: Printer) -> int:
    from bipeft_core.plugins import load_plugins

    plugins = load_plugins()
    rows = []
    for kind, registry in plugins.registries().items():
        for e in registry.entries():
            rows.append({"kind": kind, "name": e.name, "plugin": e.provider, "distribution": e.distribution})
    if printer.mode == "jsonl":
        for r in rows:
            printer.event("plugin", **r)
        return 0
    widths = [max(len(str(r[k])) for r in rows + [dict(kind="kind", name="name", plugin="plugin",
                                                        distribution="distribution")])
              for k in ("kind", "name", "plugin", "distribution")]
    header = ("kind", "name", "plugin", "distribution")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in zip(header, widths)).rstrip())
    return 0


# -- the parser ----------------------------------------------------------------------------


def _spec_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("spec and overrides")
    g.add_argument("--spec", help="a TOML pipeline spec (docs/specs.md); without it the embedded default is used")
    g.add_argument("--task", help="task name, e.g. stsb, mrpc, glue/rte, superglue/cb")
    g.add_argument("--model", help="a local model folder or a hub id (default: MiniLM from bipeft[demo])")
    g.add_argument("--train-file", help="your own data instead of --task: a CSV, JSON or JSON Lines file "
                                        "(docs/own-data.md)")
    g.add_argument("--dataset", help="own data from any datasets.load_dataset source (a hub id, a local dataset "
                                     "folder, ...) instead of --train-file; splits: --set data.train_split=...")
    g.add_argument("--validation-file", help="own data: the validation file (default: split from the training file)")
    g.add_argument("--test-file", help="own data: the test file (default: split from what is given)")
    g.add_argument("--text-columns", help="own data: one or two text columns, comma-separated (default: text)")
    g.add_argument("--label-column", help="own data: the label column (default: label)")
    g.add_argument("--metric", help="own data: accuracy, f1, matthews_correlation, pearsonr or spearmanr "
                                    "(default: accuracy, or pearsonr for numeric labels)")
    g.add_argument("--task-kind", choices=("auto", "classification", "regression", "causal_lm"),
                   help="own data: what the label is (default auto: regression when the labels are numbers "
                        "with fractions); causal_lm: next-token prediction on the text column, perplexity")
    g.add_argument("--budget", help="e.g. 0.1%%, 1.39bp, 22565")
    g.add_argument("--budgets", help="several budgets from one search, e.g. 0.05%%,0.1%%,0.2%%: re-trains each "
                                     "and writes curve.json and curve.png (docs/budgets.md)")
    g.add_argument("--space", help="search space name (s1, s2, ...)")
    g.add_argument("--epochs", type=int, help="search and re-train epochs")
    g.add_argument("--seed", type=int, help="seed of the search and the re-train")
    g.add_argument("--max-train", type=int, help="cap the training examples (quick runs)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one spec field, e.g. --set search.trigger.max_triggers=50 (repeatable)")
    p.add_argument("--out", help="the run folder (default: runs/<task>-<optimizer>-<budget>-<seed>-<time>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out (spec flags apply to stages not started yet)")
    p.add_argument("--overwrite", action="store_true",
                   help="start the run in --out afresh, deleting the run folder's earlier contents")
    p.add_argument("--data-dir", help="GLUE/SuperGLUE folder (default: $BIPEFT_DATA_DIR, else the hub)")
    p.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS",
                   help="write a search checkpoint every STEPS steps (also after each trigger and epoch)")
    _device_option(p)


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the GPU when there is one, else the CPU)")


def _output_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """-q/--jsonl, accepted before and after the command (after it they
    keep the value given before unless given again)."""
    mode = p.add_mutually_exclusive_group()
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    mode.add_argument("-q", "--quiet", action="store_true", help="print only the final summary", **default)
    mode.add_argument("--jsonl", action="store_true", help="print events as JSON lines (for scripts)", **default)


def build_parser() -> argparse.ArgumentParser:
    from bipeft_core._version import __version__

    parser = argparse.ArgumentParser(prog="bipeft", description="Budget-guided search for PEFT structures.")
    parser.add_argument("--version", action="version", version=f"bipeft {__version__}")
    _output_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, **kw)
        _output_options(p, top=False)
        return p

    p = add("run", help="search, re-train and evaluate")
    _spec_options(p)
    p = add("search", help="search only (re-train later with bipeft retrain)")
    _spec_options(p)
    p = add("retrain", help="re-train and evaluate the structure of a finished search")
    p.add_argument("result", help="a run folder")
    p.add_argument("--data-dir", help="GLUE/SuperGLUE folder (default: $BIPEFT_DATA_DIR)")
    _device_option(p)
    p = add("show", help="print a result's structure and write its plots")
    p.add_argument("result", help="a run folder or a search_result.json")
    p.add_argument("--plots", help="folder for the PNG plots (default: beside the result)")
    p.add_argument("--no-plots", action="store_true", help="print the table only")
    p = add("export", help="export the re-trained model (peft, merged or bipeft format)")
    p.add_argument("result", help="a run folder with a finished re-train")
    p.add_argument("--format", default="auto",
                   help="auto (default: native peft when it holds the structure exactly, else bipeft's "
                        "registered peft method), peft, peft-bipeft, merged (modules folded into the weights: "
                        "a plain transformers model), bipeft (bipeft's own), or a format an installed plugin adds")
    p.add_argument("--base-model", help="the base model the export names (base_model_name_or_path); default: "
                                        "the run's model as its spec gives it")
    p.add_argument("--out", help="the export folder (default: RUN/export-<format>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p = add("transfer", help="re-train a run's searched structure on another task (or backbone of its family)")
    p.add_argument("result", help="the run folder whose structure.json to re-train")
    p.add_argument("--task", required=True, help="the task to re-train on (e.g. mrpc)")
    p.add_argument("--model", help="another backbone of the same family whose layers map one to one "
                                   "(default: the run's)")
    p.add_argument("--out", help="the new run folder (default: under runs/)")
    p.add_argument("--epochs", type=int, help="re-train epochs (default: the task's)")
    p.add_argument("--seed", type=int, help="re-train seed (default: the run's)")
    p.add_argument("--overwrite", action="store_true", help="replace a run folder in --out")
    p.add_argument("--data-dir", help="GLUE/SuperGLUE folder (default: $BIPEFT_DATA_DIR)")
    _device_option(p)
    add("plugins", help="list every registered module type, strategy, space, target map and task")
    return parser


class _LogHandler(logging.Handler):
    """The library's ``bipeft`` log records on stderr (``--jsonl``: as
    ``log`` events on stdout)."""

    def __init__(self, printer: Printer) -> None:
        super().__init__(logging.INFO if printer.mode == "normal" else logging.WARNING)
        self.printer = printer

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.printer.mode == "jsonl":
            self.printer.event("log", level=record.levelname.lower(), logger=record.name, message=message)
        elif record.levelno >= logging.WARNING:
            print(f"bipeft: {record.levelname.lower()}: {message}", file=sys.stderr, flush=True)
        else:
            print(message, file=sys.stderr, flush=True)


def _os_error(exc: OSError) -> str:
    """One line for a file that cannot be read or written: the path, why, the fix."""
    import errno

    path = exc.filename if exc.filename is not None else ""
    why = exc.strerror or str(exc)
    fixes = {
        errno.EACCES: "choose a place you may write to, or change its permissions",
        errno.EPERM: "choose a place you may write to, or change its permissions",
        errno.EROFS: "the file system is read-only; choose another place",
        errno.ENOSPC: "the disk is full; free space or choose another place",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
        errno.EISDIR: "the path is a folder; give a file",
        errno.EEXIST: "the path exists; choose another",
        errno.ENOENT: "check the path",
    }
    fix = fixes.get(exc.errno or 0, "check the path and its permissions")
    return f"{str(path)!r}: {why}; {fix}" if path else f"{why}; {fix}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    printer = Printer("quiet" if args.quiet else "jsonl" if args.jsonl else "normal")
    handler = _LogHandler(printer)
    library_logger = logging.getLogger("bipeft")
    library_logger.addHandler(handler)
    previous_level = library_logger.level
    library_logger.setLevel(logging.INFO)
    previous_device = os.environ.get("BIPEFT_DEVICE")
    try:
        return _main(args, printer)
    finally:
        library_logger.removeHandler(handler)
        library_logger.setLevel(previous_level)
        if previous_device is None:  # --device holds for this command only
            os.environ.pop("BIPEFT_DEVICE", None)
        else:
            os.environ["BIPEFT_DEVICE"] = previous_device


def _main(args: argparse.Namespace, printer: Printer) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # "Some weights ... newly initialized" is expected here: the task head is new
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
    commands = {
        "run": lambda: cmd_run(args, printer),
        "search": lambda: cmd_run(args, printer, stages=("search",)),
        "retrain": lambda: cmd_retrain(args, printer),
        "show": lambda: cmd_show(args, printer),
        "export": lambda: cmd_export(args, printer),
        "transfer": lambda: cmd_transfer(args, printer),
        "plugins": lambda: cmd_plugins(args, printer),
    }
    try:
        return commands[args.command]()
    except BipeftError as exc:
        print(f"bipeft: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UnicodeDecodeError as exc:  # the readers name their file; this is the last resort
        print(f"bipeft: error: a file is not UTF-8 text ({exc.reason} at byte {exc.start}); "
              "convert it to UTF-8", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"bipeft: error: {_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
