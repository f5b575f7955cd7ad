"""AutoPEFT (Zhou et al. 2024): multi-objective Bayesian optimisation of
(validation metric, parameter count) over a space's module sizes and a
per-layer on/off switch, each candidate trained and evaluated
(docs/baselines.md). Uses Optuna's multi-objective TPE sampler
(``pip install bipeft[autopeft]``).
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import torch

from bipeft_core.checkpoint import CheckpointError
from bipeft_core.errors import BipeftError
from bipeft_core.hookspecs import hookimpl
from bipeft_core.interfaces import Optimizer
from bipeft_core.loop import SearchCheckpoints, build_result
from bipeft_core.training import train_model

__all__ = ["RECORD_KEYS", "SAMPLERS", "AutoPEFT"]

SAMPLERS = ("tpe", "nsga2", "random")
#: the keys of a trial record besides its metric
RECORD_KEYS = ("trial", "sizes", "layers", "count", "choices", "repeat_of", "pareto")


def _metric_name(record: dict[str, Any]) -> str:
    return next(k for k in record if k not in RECORD_KEYS)


@attrs.define(kw_only=True)
class AutoPEFT(Optimizer):
    """Each trial picks, per module type, a size from ``{off} ∪ ranks`` and,
    per layer, on/off; trains that configuration for ``trial_epochs`` epochs
    (bipeft's own loop, weights shared with the supernet and reset before
    every trial) and scores it on the validation split. Returns the best
    configuration within the budget; the Pareto front and every trial are in
    ``SearchResult.extra``.

    With a checkpoint manager in the context (a run folder), every finished
    trial is saved; a resumed search replays the saved trials through the
    sampler without training them (checking that it proposes the same
    configurations) and trains only the rest, so it ends where an
    uninterrupted search would. A proposal that switches on the same modules
    as an earlier trial is not trained again: trials are seeded, so it takes
    the earlier score (its record says ``repeat_of``)."""

    name = "autopeft"
    components = ()
    budgeted = False
    trials: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    trial_epochs: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    sampler: str = attrs.field(default="tpe", validator=attrs.validators.in_(SAMPLERS))
    startup_trials: int = attrs.field(default=4, validator=attrs.validators.ge(1))

    def _optuna(self):
        try:
            import optuna
        except ImportError:
            raise BipeftError("the autopeft strategy needs Optuna: pip install 'bipeft[autopeft]'") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna

    def search(self, ctx) -> Any:
        if ctx.evaluate is None:
            raise BipeftError("autopeft scores every candidate on validation data: pass validation examples "
                              "and a task (or evaluate_fn=) to Pipeline.search")
        optuna = self._optuna()
        s, sn = ctx.settings, ctx.supernet
        started = time.perf_counter()
        types = sorted({m.type for m in ctx.specs})
        layers = sorted({m.layer for m in ctx.specs}, key=lambda x: min(m.index for m in ctx.specs if m.layer == x))
        options = {t: [0] + sorted({r for m in ctx.specs if m.type == t for r in (m.ranks or (1,))}) for t in types}
        samplers = {
            "tpe": lambda: optuna.samplers.TPESampler(seed=s.seed, n_startup_trials=self.startup_trials),
            "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=s.seed),
            "random": lambda: optuna.samplers.RandomSampler(seed=s.seed),
        }
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=samplers[self.sampler]())
        initial = {id(p): p.detach().clone() for p in sn.peft_parameters() + list(sn.head_params)}
        params = sn.peft_parameters() + list(sn.head_params)
        trial_settings = attrs.evolve(s, epochs=self.trial_epochs)
        records: list[dict[str, Any]] = []
        checkpoints = SearchCheckpoints(ctx, self.name)  # saved after each trial
        done: list[dict[str, Any]] = []
        data = checkpoints.load()
        if data is not None:
            done = data["trials"]
            started -= data["elapsed"]
        for number in range(self.trials):
            trial = study.ask()
            size = {t: trial.suggest_categorical(f"size_{t}", options[t]) for t in types}
            on = {layer: trial.suggest_categorical(f"layer_{k}", [0, 1]) for k, layer in enumerate(layers)}
            choices = {m.index: (size[m.type] if m.is_matrix else None) for m in ctx.specs
                       if size[m.type] and on[m.layer]}
            count = sum(ctx.specs[i].count(r) for i, r in choices.items())
            if number < len(done):  # a finished trial of the interrupted search: replayed, not trained
                record = done[number]
                if record["choices"] != choices:
                    raise CheckpointError(
                        f"autopeft: trial {number} of the checkpoint chose other modules than the sampler "
                        "chooses now (another Optuna version or sampler?); start the search in a new folder")
                study.tell(trial, [record[_metric_name(record)], float(count)])
                records.append(record)
                continue
            same = next((r for r in records if r["choices"] == choices), None)
            if same is not None:  # the same modules as an earlier trial: training is seeded, so is its score
                metric_name = _metric_name(same)
                metric, repeat = same[metric_name], {"repeat_of": same.get("repeat_of", same["trial"])}
            else:
                with torch.no_grad():
                    for p in params:
                        p.copy_(initial[id(p)])
                    sn.fixed_rank.fill_(-1)
                    for i, r in choices.items():
                        if r is not None:
                            sn.fixed_rank[i] = r
                sn.set_gates(None, enabled=torch.tensor([i in choices for i in range(len(ctx.specs))]))
                torch.manual_seed(s.seed)
                out = train_model(sn, params, ctx.train, settings=trial_settings, collate=ctx.collate,
                                  loss=ctx.loss, evaluate=ctx.evaluate, dist=ctx.dist)
                best = out["epochs"][out["best_epoch"]]
                metric_name = next(k for k in best if k not in ("epoch", "train_loss"))
                metric, repeat = float(best[metric_name]), {}
            study.tell(trial, [metric, float(count)])
            records.append({"trial": trial.number, "sizes": size, "layers": [on[x] for x in layers],
                            "count": count, metric_name: metric, "choices": choices, **repeat})
            checkpoints.save({"trials": records, "elapsed": time.perf_counter() - started})
        front = {t.number for t in study.best_trials}
        within = [r for r in records if r["count"] <= ctx.budget and "repeat_of" not in r]
        key = _metric_name(records[0])
        pick = max(within, key=lambda r: (r[key], -r["count"])) if within else min(records, key=lambda r: r["count"])
        repeats = sum("repeat_of" in r for r in records)
        notes = [f"autopeft: {self.trials} trials ({self.trials - repeats} trained; {repeats} repeated an earlier "
                 f"trial's modules and took its score); picked trial {pick['trial']} ({key} {pick[key]:.4f}, "
                 f"{pick['count']:,} parameters)"]
        if not within:
            notes.append("no trial fitted the budget: the smallest one is reported")
        for r in records:
            r["pareto"] = r["trial"] in front
            r["choices"] = {str(k): v for k, v in r["choices"].items()}
        with torch.no_grad():
            sn.fixed_rank.fill_(-1)
        return build_result(ctx, self.name, {int(k): v for k, v in pick["choices"].items()}, started, repair=False,
                            notes=notes, extra={"trials": records, "pareto": [r for r in records if r["pareto"]]})


@hookimpl
def bipeft_register_strategies(registry):
    registry.add(AutoPEFT)


