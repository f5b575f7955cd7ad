"""Training utilities shared by every strategy and the re-train: seeded
splits and loaders, the learning-rate schedule, and a plain training loop
with best-epoch selection."""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from bipeft_core.errors import TrainingError

__all__ = ["default_collate", "default_loss", "enable_gradient_checkpointing", "epoch_listener", "groups",
           "linear_schedule", "make_loader", "precision", "progress_bar", "split_halves", "train_model"]

_EPOCH_LISTENERS: contextvars.ContextVar[tuple[Callable[[int, dict[str, Any]], None], ...]] = \
    contextvars.ContextVar("bipeft_epoch_listeners", default=())


@contextlib.contextmanager
def epoch_listener(listener: Callable[[int, dict[str, Any]], None] | None) -> Iterator[None]:
    """Within the block, every :func:`train_model` also calls
    ``listener(epoch, record)`` after each epoch (with ``on_epoch``); the
    CLI uses it to report a re-train's epochs. ``None`` adds nothing."""
    if listener is None:
        yield
        return
    token = _EPOCH_LISTENERS.set((*_EPOCH_LISTENERS.get(), listener))
    try:
        yield
    finally:
        _EPOCH_LISTENERS.reset(token)


def precision(settings: Any, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """The context of a forward pass and its loss: bfloat16 autocast when
    ``settings.mixed_precision == "bf16"``, else nothing. A spec that leaves
    it unset takes the mixed precision of the user's ``accelerate`` config
    (``accelerate launch --mixed_precision`` / ``accelerate config``, which
    the launcher passes as ``ACCELERATE_MIXED_PRECISION``)."""
    mode = getattr(settings, "mixed_precision", None)
    if mode is None:
        mode = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        if mode == "fp16":
            raise TrainingError("the accelerate config asks for fp16 mixed precision, which bipeft does not use "
                                "(its losses need bfloat16's range); choose bf16 in accelerate config, or set "
                                "train.mixed_precision = \"no\" to ignore it")
    if mode == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def enable_gradient_checkpointing(model: torch.nn.Module, settings: Any) -> None:
    """Turn on transformers' gradient checkpointing of the backbone inside
    ``model`` (a bipeft model or supernet, or the backbone itself) when
    ``settings.gradient_checkpointing``; non-reentrant, so the frozen
    backbone's checkpointed layers still pass gradients to the PEFT modules
    hooked inside them. :class:`TrainingError` for a backbone without it."""
    if not getattr(settings, "gradient_checkpointing", None):
        return
    inner: Any = model
    for _ in range(4):
        if hasattr(inner, "gradient_checkpointing_enable"):
            break
        inner = getattr(inner, "model", None)
    if inner is None or not getattr(inner, "supports_gradient_checkpointing", False):
        raise TrainingError(f"gradient_checkpointing is on, but the model ({type(model).__name__}) does not support "
                            "it (a transformers model whose class sets supports_gradient_checkpointing); turn "
                            "it off (train.gradient_checkpointing = false)")
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def groups(iterator: Any, size: int, count: int) -> Iterator[list[Any]]:
    """``count`` items of ``iterator`` in lists of ``size`` (the last may be
    shorter): the batches each optimiser step of a gradient accumulation sums."""
    it = iter(iterator)
    while count > 0:
        group = [next(it) for _ in range(min(size, count))]
        count -= len(group)
        yield group


def progress_bar(ctx_or_flag: Any, *, total: int, desc: str, initial: int = 0) -> Any:
    """A tqdm bar on stderr (a no-op one unless progress is on)."""
    from tqdm.auto import tqdm

    enabled = ctx_or_flag if isinstance(ctx_or_flag, bool) else bool(getattr(ctx_or_flag, "progress", False))
    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, dynamic_ncols=True,
                leave=False)


def split_halves(examples: Sequence[Any], *, seed: int) -> tuple[list[Any], list[Any]]:
    """Two equal halves of the training set (seeded): A trains the weights,
    B the architecture logits (docs/algorithm.md §3)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    if half == 0:
        raise TrainingError(f"the training set has {len(examples)} example(s); the search needs at least 2 "
                            "(it halves them)")
    return [examples[i] for i in order[:half]], [examples[i] for i in order[half: 2 * half]]


def default_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack equal-length features into tensors."""
    out: dict[str, torch.Tensor] = {}
    for key in features[0]:
        values = [f[key] for f in features]
        out[key] = torch.stack([torch.as_tensor(v) for v in values])
    return out


def default_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``model(**batch).loss``: the model's own loss for the labels in the batch."""
    out = model(**batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise TrainingError("the model returned no loss; put the labels in the batch ('labels') "
                            "or pass loss_fn=")
    return loss


def make_loader(examples: Sequence[Any], batch_size: int, collate: Callable, *, seed: int,
                shuffle: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    rows: Any = list(examples)  # a list is a map-style dataset (len and indexing)
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=g)


def linear_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.0):
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0."""
    warm = int(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_model(
    model: torch.nn.Module,
    params: Sequence[torch.nn.Parameter],
    train: Sequence[Any],
    *,
    settings: Any,
    collate: Callable,
    loss: Callable,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = False,
    dist: Any = None,
    on_step: Callable[[int], None] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    eligible: Callable[[torch.nn.Module], bool] | None = None,
    maximize: bool = True,
) -> dict[str, Any]:
    """Train ``params`` of ``model`` with AdamW + linear decay + clipping for
    ``settings.epochs``; after each epoch evaluate and keep the best state
    (by the first metric ``evaluate`` returns). ``on_step(global_step)`` is
    called after each optimiser step, before the gradients are cleared (as
    peft's AdaLoRA needs for ``update_and_allocate``). Returns per-epoch
    metrics, the best epoch, the wall time and the median time of a training
    step (forward, backward and optimiser step; evaluation excluded); the
    best state is loaded back.

    ``maximize``: whether a higher first metric is better (``False`` for
    perplexity and other losses).

    ``eligible(model)``: whether the state at the end of an epoch may be kept
    as the best (each epoch's record says so under ``eligible``); a method
    whose structure changes during training (peft's AdaLoRA reaches its rank
    budget only late in its schedule) passes a budget check, so that the
    state kept is one that meets the budget. When no epoch is eligible the
    last epoch's state stays.

    ``checkpoint``: a file that receives the whole training state after each
    epoch (weights, optimiser, schedule, shuffling and dropout random states,
    the best epoch so far, the per-epoch metrics, the time spent). If the
    file exists when training starts, training continues after its last
    epoch and ends with the same weights and metrics as an uninterrupted
    run; the reported wall time includes the earlier epochs."""
    from bipeft_core.distributed import Dist

    dist = dist or Dist()
    loader = make_loader(dist.shard(train), max(1, settings.batch_size // dist.world), collate, seed=settings.seed,
                         shuffle=True)
    accum = int(getattr(settings, "grad_accum_steps", None) or 1)
    steps_per_epoch = -(-len(loader) // accum)
    device = next((p.device for p in params), torch.device("cpu"))
    enable_gradient_checkpointing(model, settings)
    opt = torch.optim.AdamW(list(params), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = linear_schedule(opt, steps_per_epoch * settings.epochs, settings.warmup_ratio)
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    epochs: list[dict[str, float]] = []
    started = time.perf_counter()
    names = {id(p): n for n, p in model.named_parameters()}
    bar = progress_bar(progress, total=steps_per_epoch * settings.epochs, desc="train")
    step_times: list[float] = []
    global_step = 0
    first_epoch, earlier_time = 0, 0.0
    ckpt = _EpochCheckpoint(checkpoint, names=[names[id(p)] for p in params], settings=settings,
                            steps_per_epoch=steps_per_epoch) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = ckpt.load()
        by_name = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in state["params"].items():
                by_name[n].copy_(v)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        loader.generator.set_state(state["loader_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        best, epochs, step_times = state["best"], state["epochs"], state["step_times"]
        first_epoch, global_step, earlier_time = state["epoch"] + 1, state["global_step"], state["wall_time"]
        bar.update(global_step)
    for epoch in range(first_epoch, settings.epochs):
        model.train()
        total = 0.0
        for step, group in enumerate(groups(loader, accum, len(loader))):
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for batch in group:
                with precision(settings, device):
                    value = loss(model, {k: v.to(device) for k, v in batch.items()})
                if not torch.isfinite(dist.mean(value)):
                    raise TrainingError(f"the loss is {float(value)} at epoch {epoch} step {step}; lower the "
                                        "learning rate (retrain.lr) or check the data")
                (value / len(group)).backward()
                step_loss += float(value.detach()) / len(group)
            dist.all_reduce_grads(params)
            if settings.clip_norm:
                torch.nn.utils.clip_grad_norm_(params, settings.clip_norm)
            opt.step()
            sched.step()
            global_step += 1
            if on_step is not None:
                on_step(global_step)
            total += step_loss
            step_times.append(time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix_str(f"epoch {epoch} loss {step_loss:.4f}", refresh=False)
        record = {"epoch": epoch, "train_loss": total / max(1, steps_per_epoch)}
        if evaluate is not None:
            metrics = evaluate(model)
            record.update(metrics)
            key = next(iter(metrics))
            allowed = True
            if eligible is not None:
                record["eligible"] = allowed = bool(eligible(model))
            better = best is None or (metrics[key] > best[0] if maximize else metrics[key] < best[0])
            if allowed and better:
                best = (metrics[key], epoch, {names[id(p)]: p.detach().clone() for p in params})
        epochs.append(record)
        if ckpt is not None and dist.is_main:
            ckpt.save({"epoch": epoch, "global_step": global_step, "epochs": epochs, "best": best,
                       "step_times": step_times, "wall_time": earlier_time + time.perf_counter() - started,
                       "params": {names[id(p)]: p.detach().cpu() for p in params},
                       "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                       "loader_rng": loader.generator.get_state(), "torch_rng": torch.get_rng_state(),
                       "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None})
        if on_epoch is not None:
            on_epoch(epoch, record)
        for listener in _EPOCH_LISTENERS.get():
            listener(epoch, dict(record))
    bar.close()
    if best is not None:
        by_name = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in best[2].items():
                by_name[n].copy_(v)
    return {"epochs": epochs, "best_epoch": best[1] if best else settings.epochs - 1,
            "wall_time": earlier_time + time.perf_counter() - started, "steps": global_step,
            "step_time": statistics.median(step_times) if step_times else None}


class _EpochCheckpoint:
    """The training state at the end of the last finished epoch, in one file
    written atomically (a kill never leaves half a file), with what it was
    made for, so that a checkpoint of another training is refused."""

    FORMAT = "bipeft-train-checkpoint"

    def __init__(self, path: str | os.PathLike[str], *, names: list[str], settings: Any,
                 steps_per_epoch: int) -> None:
        self.path = Path(path)
        self.made_for = {"params": names, "epochs": settings.epochs, "lr": settings.lr, "seed": settings.seed,
                         "batch_size": settings.batch_size, "steps_per_epoch": steps_per_epoch}

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, payload: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        from bipeft_core.checkpoint import plain

        torch.save(plain({"format": self.FORMAT, "made_for": self.made_for, **payload}, "the training checkpoint"), tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict[str, Any]:
        try:
            from bipeft_core.checkpoint import _first_line, load_safe

            data = load_safe(self.path)
        except Exception as exc:  # a truncated or foreign file raises many kinds
            raise TrainingError(f"the training checkpoint {self.path} is corrupt or not bipeft's "
                                f"({type(exc).__name__}: {_first_line(exc)}); delete it to train from "
                                "the start") from None
        if not isinstance(data, dict) or data.get("format") != self.FORMAT:
            raise TrainingError(f"{self.path} is not a bipeft training checkpoint; delete it to train from "
                                "the start")
        if data["made_for"] != self.made_for:
            diff = sorted(k for k in self.made_for if data["made_for"].get(k) != self.made_for[k])
            raise TrainingError(f"the training checkpoint {self.path} belongs to another training (it differs in "
                                f"{', '.join(diff)}); delete it to train this one from the start")
        return data
