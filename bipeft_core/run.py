"""Running a pipeline: the search and the re-train (called through
:meth:`bipeft_core.Pipeline.search` and :meth:`~bipeft_core.Pipeline.retrain`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from bipeft_core.budget import format_count
from bipeft_core.errors import BudgetError
from bipeft_core.spec import COMPONENT_KINDS
from bipeft_core.state import SearchContext, SearchResult
from bipeft_core.structure import PeftModel, Structure
from bipeft_core.supernet import Supernet
from bipeft_core.targets import backbone_param_count, find_target_map
from bipeft_core.training import default_collate, default_loss, train_model

__all__ = ["RetrainResult", "check_budget", "retrain", "search", "search_context"]


def check_budget(specs, budget: int) -> None:
    """A budget below the smallest module, or at least the whole space, is an error."""
    smallest = min(min(s.counts) for s in specs)
    whole = sum(s.max_count for s in specs)
    if budget < smallest:
        raise BudgetError(
            f"the budget of {format_count(budget)} parameters is below the smallest module of the space "
            f"({format_count(smallest)}); raise the budget to at least {format_count(smallest)}"
        )
    if budget >= whole:
        raise BudgetError(
            f"the budget of {format_count(budget)} parameters holds the whole space "
            f"({format_count(whole)} at the largest ranks), so there is nothing to search; lower the "
            "budget or use a larger space"
        )


def search(pipeline: Any, model: nn.Module, train: Sequence[Any], validation: Sequence[Any] | None = None, *,
           task: Any = None, loss_fn: Callable | None = None, collate_fn: Callable | None = None,
           evaluate_fn: Callable | None = None, target_map: Any = None, device: Any = None,
           progress: bool = False, checkpoint_dir: Any = None, checkpoint_every: int = 50,
           resume: bool = False) -> SearchResult:
    """Search a structure for ``model`` on ``train`` (a sequence of examples
    that ``collate_fn`` turns into a batch; ``task`` = a PreparedTask gives
    collate, loss and evaluation). With ``checkpoint_dir`` the search writes
    a checkpoint every ``checkpoint_every`` steps, after each trigger and at
    each epoch end; ``resume=True`` continues from it."""
    ctx = search_context(pipeline, model, train, validation, task=task, loss_fn=loss_fn, collate_fn=collate_fn,
                         evaluate_fn=evaluate_fn, target_map=target_map, device=device, progress=progress,
                         checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume)
    components, supernet, dist, plugins = ctx.components, ctx.supernet, ctx.dist, pipeline.get_plugins()
    result = components["optimizer"].search(ctx)
    supernet.detach_hooks()
    dist.check_same("final structure", torch.tensor(sorted(e.spec.index for e in result.structure.entries)),
                    torch.tensor([e.rank or 0 for e in result.structure.entries]))
    if dist.is_main:
        plugins.hook.bipeft_after_search(result=result)
    return result


def search_context(pipeline: Any, model: nn.Module, train: Sequence[Any], validation: Sequence[Any] | None = None,
                   *, task: Any = None, loss_fn: Callable | None = None, collate_fn: Callable | None = None,
                   evaluate_fn: Callable | None = None, target_map: Any = None, device: Any = None,
                   progress: bool = False, checkpoint_dir: Any = None, checkpoint_every: int = 50,
                   resume: bool = False) -> SearchContext:
    """What a search of ``pipeline`` on ``model`` needs (the arguments as
    :func:`search`'s): the space's modules on the model, the resolved and
    checked budget, the components, and the supernet built on the model."""
    from bipeft_core.checkpoint import CheckpointManager

    plugins = pipeline.get_plugins()
    settings = pipeline.search_settings
    torch.manual_seed(settings.seed)
    tm = find_target_map(model, plugins.target_maps, _target_map(pipeline, plugins, target_map))
    components = {kind: pipeline.build_component(kind, plugins) for kind in COMPONENT_KINDS}
    space = components["optimizer"].adapt_space(pipeline.resolved_space())
    specs = space.modules(model, tm, plugins.peft_modules)
    total = backbone_param_count(model, tm)
    resolved = sorted({b.resolve(total) for b in (pipeline.budget, *getattr(pipeline, "budgets", ()))})
    budget, curve = resolved[0], tuple(resolved[1:])
    if components["optimizer"].budgeted:
        check_budget(specs, budget)
        if curve:
            check_budget(specs, curve[-1])
    train, collate_fn, loss_fn, evaluate_fn = _training_functions(
        task, settings, train, validation, collate_fn, loss_fn, evaluate_fn)
    from bipeft_core.distributed import setup

    dist = setup()
    device = torch.device(device) if device is not None else dist.device()
    supernet = Supernet(model, specs, plugins.peft_modules, heads=tm.heads,
                        generator=torch.Generator().manual_seed(settings.seed)).to(device)
    return SearchContext(
        supernet=supernet, specs=specs, budget=budget, backbone_params=total, components=components,
        settings=settings, train=train, collate=collate_fn, loss=loss_fn,
        hook=plugins.hook, validation=validation, evaluate=evaluate_fn, space_name=space.name,
        model_type=getattr(model.config, "model_type", ""), device=device, progress=progress,
        checkpoint=CheckpointManager(checkpoint_dir, every=checkpoint_every) if checkpoint_dir else None,
        resume=resume, dist=dist, curve_budgets=curve,
    )


@attrs.frozen(kw_only=True)
class RetrainResult:
    model: PeftModel
    epochs: tuple[dict[str, float], ...]
    best_epoch: int
    validation: dict[str, float]
    test: dict[str, float] | None
    wall_time: float
    peft_params: int
    step_time: float | None = None
    """Median seconds of one training step (evaluation excluded)."""


def retrain(pipeline: Any, model: nn.Module, structure: Structure, train: Sequence[Any],
            validation: Sequence[Any] | None = None, test: Sequence[Any] | None = None, *, task: Any = None,
            loss_fn: Callable | None = None, collate_fn: Callable | None = None,
            evaluate_fn: Callable | None = None, target_map: Any = None, progress: bool = False,
            checkpoint: str | os.PathLike[str] | None = None) -> RetrainResult:
    """Train the structure's discrete model from fresh weights on the full
    training set; pick the best epoch on ``validation``; evaluate on ``test``.
    ``checkpoint``: a file that keeps the training state after each epoch;
    when it exists, training continues after its last epoch (see
    :func:`bipeft_core.training.train_model`)."""
    plugins = pipeline.get_plugins()
    settings = pipeline.retrain_settings
    torch.manual_seed(settings.seed)
    tm = find_target_map(model, plugins.target_maps, _target_map(pipeline, plugins, target_map))
    peft_model = structure.build(model, plugins.peft_modules, heads=[h for h in tm.heads])
    train, collate_fn, loss_fn, evaluate_fn = _training_functions(
        task, settings, train, validation, collate_fn, loss_fn, evaluate_fn)
    from bipeft_core.distributed import setup

    dist = setup()
    peft_model.to(dist.device())
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if not params:
        from bipeft_core.errors import TrainingError

        raise TrainingError(
            f"nothing to train: the structure has {len(structure.entries)} modules and the model no trainable "
            "task head (a tied LM head is not one); search with a larger budget, or a space whose smallest "
            "module fits the budget")
    out = train_model(peft_model, params, train, settings=settings, collate=collate_fn,
                      loss=loss_fn, evaluate=evaluate_fn, progress=progress and dist.is_main,
                      maximize=bool(getattr(task, "greater_is_better", True)),
                      dist=dist, checkpoint=checkpoint)
    wall = out["wall_time"]
    best = out["epochs"][out["best_epoch"]]
    val_metrics = {k: v for k, v in best.items() if k not in ("epoch", "train_loss")}
    test_metrics = None
    if test is not None and task is not None:
        test_metrics = task.evaluate(peft_model, test, batch_size=settings.eval_batch_size)
    return RetrainResult(model=peft_model, epochs=tuple(out["epochs"]), best_epoch=out["best_epoch"],
                         validation=val_metrics, test=test_metrics, wall_time=wall,
                         peft_params=peft_model.peft_parameter_count(), step_time=out["step_time"])


def _training_functions(task, settings, train, validation, collate_fn, loss_fn, evaluate_fn):
    """The examples (capped), collate, loss and evaluation to use: explicit
    functions first, then the prepared task's, then the defaults."""
    if task is not None:
        collate_fn = collate_fn or task.collate
        loss_fn = loss_fn or task.loss
        if evaluate_fn is None and validation is not None:
            def evaluate_fn(m, data=validation):
                return task.evaluate(m, data, batch_size=settings.eval_batch_size)
    train = list(train)
    if settings.max_train_examples is not None:
        train = train[: settings.max_train_examples]
    return train, collate_fn or default_collate, loss_fn or default_loss, evaluate_fn


def _target_map(pipeline: Any, plugins: Any, override: Any) -> Any:
    if override is not None:
        return override
    tm = pipeline.model.target_map
    if tm is None:
        return None
    if isinstance(tm, str):
        return plugins.target_maps.get(tm)
    from bipeft_core.targets import TargetMap

    return tm if isinstance(tm, TargetMap) else TargetMap.from_dict(tm)
