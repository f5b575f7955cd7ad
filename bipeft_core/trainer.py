"""The BIPEFT search inside a user's own ``transformers.Trainer``
(docs/trainer.md).

Trainer does the weight steps, with the user's model, datasets, collator
and ``TrainingArguments``; :class:`BipeftSearchCallback` does the rest of a
search step around each of them, as :class:`~bipeft_core.loop.SearchLoop`
does in bipeft's own loop: the architecture step on a batch of a held-out
dataset before it (``on_step_begin``), the module products of the weight
gradients before the optimiser step (``on_pre_optimizer_step``), and the
sensitivity update, the trigger and the selections after it
(``on_step_end``). The searched structure, repaired (and re-filled) to the
budget as the CLI's, is :meth:`BipeftSearch.result`; it re-trains with a
plain Trainer (``Structure.build``; docs/large-models.md).

    search = BipeftSearch(model, budget="0.1%", arch_dataset=held_out, data_collator=collator)
    trainer = Trainer(model=search.model, args=args, train_dataset=train, data_collator=collator,
                      callbacks=[search.callback])
    trainer.train()
    structure = search.result().structure

or in one call: :func:`search_with_trainer`. A Trainer checkpoint holds the
search's own state (``bipeft_search.pt`` beside Trainer's files), so
``trainer.train(resume_from_checkpoint=...)`` continues the search.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from bipeft_core.errors import SpecError
from bipeft_core.loop import LoopOptimizer, SearchLoop, load_trainable_state, trainable_state
from bipeft_core.state import SearchContext, SearchResult, SearchState, TriggerEvent
from bipeft_core.training import make_loader

__all__ = ["STATE_FILE", "BipeftSearch", "BipeftSearchCallback", "search_with_trainer"]

STATE_FILE = "bipeft_search.pt"


def _hf_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    loss = out["loss"] if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is None:
        raise SpecError("the model returned no loss for a batch of the architecture dataset; its batches need "
                        "the labels (a 'labels' column), as Trainer's do")
    return loss


class _TrainerLoop(SearchLoop):
    """A :class:`SearchLoop` whose weight steps Trainer takes."""

    def begin(self, *, arch_data: Any, collate: Any, batch_size: int, steps_per_epoch: int, total_steps: int,
              epochs: int) -> None:
        s, sn, strategy = self.settings, self.supernet, self.strategy
        self.arch_optimizer = strategy.arch_optimizer(sn)
        self.accum = 1
        self._loader_b = None
        if self.arch_optimizer is not None:
            if arch_data is None or len(arch_data) == 0:
                raise SpecError(f"strategy {strategy.name!r} trains architecture logits on held-out data; give "
                                "BipeftSearch an arch_dataset (a split of the training data the weights do not see)")
            self._loader_b = make_loader(_model_columns(arch_data, sn), batch_size, collate, seed=s.seed + 1,
                                         shuffle=True)
        self.weights = sn.peft_parameters() + list(sn.head_params)
        self.epochs = epochs
        self.state = SearchState(supernet=sn, specs=self.specs, budget=self.budget,
                                 steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        strategy.prepare(self)
        self._reset_components()
        self._next_b = self._batches_b() if self._loader_b is not None else None
        self.started = time.perf_counter()
        self._pending: dict[str, Any] = {}

    def _arch_grads(self, on: bool) -> None:
        for p in self.supernet.arch_parameters():
            p.requires_grad_(on)

    def step_begin(self, epoch: int) -> None:
        sn, strategy, comps = self.supernet, self.strategy, self.components
        self._cursor.epoch = epoch
        sn.train()
        loss_b, val_products = None, None
        trigger: Any = comps.get("trigger")
        if self._next_b is not None and (strategy.warmup_arch or not self.selecting or trigger.warmed_up(self.state)):
            self._arch_grads(True)
            try:
                loss_b, val_products = self._arch_step([self._next_b()])
            finally:
                self._arch_grads(False)
        sn.zero_grad(set_to_none=True)
        strategy.weight_gates(self)
        self._pending = {"loss_b": loss_b, "val": val_products, "t0": time.perf_counter(), "train": None}

    def pre_optimizer(self) -> None:
        if "sensitivity" in self.components:
            self._pending["train"] = self.supernet.module_products()

    def step_end(self, loss: float | None) -> bool:
        """After Trainer's optimiser step; whether the search is done (its triggers spent)."""
        sn, state, comps, strategy = self.supernet, self.state, self.components, self.strategy
        sens = comps.get("sensitivity")
        if sens is not None and self._pending.get("train") is not None:
            sens.observe(train=self._pending["train"], val=self._pending["val"] or [None] * len(self.specs),
                         active=~sn.pruned, sizes=sn.effective_counts())
        state.step += 1
        self._read_scores()
        if self.selecting:
            trigger = comps["trigger"]
            if "dimension_selector" in comps and trigger.warmed_up(state):
                comps["dimension_selector"].observe(state)
            if trigger.should_fire(state):
                self.trace.append(self._fire())
        loss_b = self._pending.get("loss_b")
        record = strategy.history_record(self, loss=float("nan") if loss is None else loss,
                                         arch_loss=None if loss_b is None else float(loss_b))
        record["step_time"] = time.perf_counter() - self._pending.get("t0", time.perf_counter())
        self.history.append(record)
        return bool(self.selecting and strategy.stop_when_spent and state.triggers_left <= 0)

    # -- Trainer checkpoints ----------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        return {
            "supernet": trainable_state(self.supernet),
            "opt_a": None if self.arch_optimizer is None else self.arch_optimizer.state_dict(),
            "components": {kind: comp.state_dict() for kind, comp in self.components.items()},
            "optimizer_state": self.strategy.state_dict(), "state": self.state.state_dict(),
            "cursor": {"arch_steps": self._cursor.arch_steps, "gen_b_state": self._cursor.gen_b_state,
                       "b_consumed": self._cursor.b_consumed},
            "trace": [e.to_dict() for e in self.trace], "history": self.history,
            "rng": {"gates": self.gate_generator.get_state()},
        }

    def restore(self, data: dict[str, Any]) -> None:
        load_trainable_state(self.supernet, data["supernet"])
        if self.arch_optimizer is not None and data["opt_a"] is not None:
            self.arch_optimizer.load_state_dict(data["opt_a"])
        for kind, comp in self.components.items():
            comp.load_state_dict(data["components"][kind])
        self.strategy.load_state_dict(data["optimizer_state"])
        self.state.load_state_dict(data["state"])
        self._read_scores()
        cur = data["cursor"]
        self._cursor.arch_steps, self._cursor.gen_b_state, self._cursor.b_consumed = (
            cur["arch_steps"], cur["gen_b_state"], cur["b_consumed"])
        self.trace = [TriggerEvent.from_dict(e) for e in data["trace"]]
        self.history = list(data["history"])
        self.gate_generator.set_state(data["rng"]["gates"])
        self._next_b = self._batches_b() if self._loader_b is not None else None


class BipeftSearch:
    """A search of ``pipeline`` (a :class:`~bipeft_core.Pipeline`; default:
    the default spec, BIPEFT on S2, with ``budget``) on ``model``, driven by
    a Trainer. :attr:`model` (the supernet, which takes the backbone's
    keyword inputs) goes to Trainer as its model and :attr:`callback` into
    its callbacks. ``arch_dataset``: the held-out examples of the
    architecture steps (the training set's other half in bipeft's own loop;
    give a split the weights do not train on), collated with
    ``data_collator`` in batches of the search's ``batch_size`` (Trainer's
    ``per_device_train_batch_size`` when the callback starts). Only the
    PEFT weights and the task head have ``requires_grad``, so the optimiser
    Trainer builds trains exactly them; the architecture logits step with
    the strategy's own optimiser."""

    def __init__(self, model: torch.nn.Module, *, budget: Any = "0.1%", arch_dataset: Any = None,
                 data_collator: Any = None, pipeline: Any = None, plugins: Any = None) -> None:
        from bipeft_core.pipeline import Pipeline
        from bipeft_core.run import search_context

        if pipeline is None:
            from bipeft_core.runner import default_spec

            spec = default_spec(None, plugins)
            spec["budget"] = {"value": budget}
            pipeline = Pipeline.from_dict(spec, plugins=plugins, source="BipeftSearch")
        self.pipeline = pipeline
        strategy = pipeline.build_component("optimizer", pipeline.get_plugins())
        if not isinstance(strategy, LoopOptimizer):
            raise SpecError(f"optimizer {strategy.name!r} does not search through bipeft's step loop, so it cannot "
                            "run inside Trainer; use a gradient-based strategy (iterative, s3delta, prunepeft)")
        self.ctx: SearchContext = search_context(pipeline, model, (), loss_fn=_hf_loss,
                                                 collate_fn=data_collator or _default_hf_collate,
                                                 device=next(model.parameters()).device)
        self.loop = _TrainerLoop(self.ctx.components["optimizer"], self.ctx)
        self.loop._arch_grads(False)  # Trainer's optimiser must not take the architecture logits
        self.arch_dataset = arch_dataset
        self.callback = BipeftSearchCallback(self)
        self._result: SearchResult | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.ctx.supernet

    def result(self) -> SearchResult:
        """The searched structure, repaired (and re-filled) to the budget;
        built once, after training (the supernet's hooks are then removed)."""
        if self._result is None:
            self._result = self.loop._result()
            self.ctx.supernet.detach_hooks()
        return self._result


def _model_columns(data: Any, model: torch.nn.Module) -> list[dict[str, Any]]:
    """The examples of ``data`` with only the columns the model's forward
    takes (as Trainer drops the others from its own batches)."""
    import inspect

    try:
        names = set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        names = set()
    names |= {"label", "labels", "label_ids"}
    rows = [dict(r) for r in data]
    return [{k: v for k, v in r.items() if k in names} for r in rows] if names else rows


def _default_hf_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    from transformers import default_data_collator

    return default_data_collator(features)


def _callback_base() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError:  # pragma: no cover - transformers is a dependency
        return object
    return TrainerCallback


class BipeftSearchCallback(_callback_base()):  # type: ignore[misc]
    """The Trainer callback of a :class:`BipeftSearch` (see the module docstring)."""

    def __init__(self, search: BipeftSearch) -> None:
        self.search = search
        self._began = False
        self._last_loss: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        loop = self.search.loop
        steps = int(state.max_steps)
        epochs = max(1, int(math.ceil(float(args.num_train_epochs)))) if args.max_steps <= 0 else \
            max(1, int(math.ceil(steps / max(1, _steps_per_epoch(state, args, kwargs)))))
        loop.begin(arch_data=self.search.arch_dataset, collate=self.search.ctx.collate,
                   batch_size=args.per_device_train_batch_size,
                   steps_per_epoch=_steps_per_epoch(state, args, kwargs), total_steps=steps, epochs=epochs)
        self._began = True
        if state.global_step > 0:  # resumed from a Trainer checkpoint: the search's state is beside it
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            if not path.is_file():
                raise SpecError(f"Trainer resumes at step {state.global_step}, but {str(path)!r} (the search's "
                                "state) is missing: resume from a checkpoint of this search")
            loop.restore(torch.load(path, weights_only=False))
        return control

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.search.loop.step_begin(int(state.epoch or 0))
        return control

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.search.loop.pre_optimizer()
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> Any:
        if logs and "loss" in logs:
            self._last_loss = float(logs["loss"])
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.search.loop.step_end(self._last_loss):
            control.should_training_stop = True
            control.should_save = True
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(self.search.loop.payload(), folder / STATE_FILE)
        return control


def _steps_per_epoch(state: Any, args: Any, kwargs: dict[str, Any]) -> int:
    loader = kwargs.get("train_dataloader")
    if loader is not None:
        try:
            return max(1, math.ceil(len(loader) / max(1, args.gradient_accumulation_steps)))
        except TypeError:
            pass
    return max(1, int(state.max_steps / max(1.0, float(args.num_train_epochs))))


def search_with_trainer(model: torch.nn.Module, args: Any, train_dataset: Any, arch_dataset: Any, *,
                        budget: Any = "0.1%", data_collator: Any = None, pipeline: Any = None,
                        **trainer_kwargs: Any) -> SearchResult:
    """The whole search in one call: a :class:`BipeftSearch` on ``model``,
    a ``transformers.Trainer`` with ``args`` on ``train_dataset`` (the weight
    steps) and the callback, ``trainer.train()``, and the result."""
    from transformers import Trainer

    search = BipeftSearch(model, budget=budget, arch_dataset=arch_dataset, data_collator=data_collator,
                          pipeline=pipeline)
    trainer = Trainer(model=search.model, args=args, train_dataset=train_dataset, data_collator=data_collator,
                      callbacks=[search.callback, *trainer_kwargs.pop("callbacks", [])], **trainer_kwargs)
    trainer.train()
    return search.result()
