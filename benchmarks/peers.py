"""The peers a user would pick instead of a search, run through Hugging Face
``peft`` itself: ``LoraConfig`` (r=8 on query and value) and ``AdaLoraConfig``
(on query and value, the largest target rank whose count fits the budget).

They use bipeft's data, splits, task head, training loop (``train_model``:
AdamW, linear decay with warm-up, clipping, best epoch on validation) and
evaluation, so a row differs from bipeft's rows in the PEFT method alone.
The loss is the model's own (``outputs.loss``), so that AdaLoRA adds its
orthogonality regulariser as peft intends.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

#: peft's module names for the query and value projections, per model type.
QV_TARGETS = {"bert": ["query", "value"], "roberta": ["query", "value"], "t5": ["q", "v"],
              "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"],
              "qwen2": ["q_proj", "v_proj"]}


def qv_linears(model: torch.nn.Module, names: list[str]) -> list[torch.nn.Module]:
    out = [m for n, m in model.named_modules() if n.split(".")[-1] in names and hasattr(m, "weight")]
    if not out:
        raise ValueError(f"no modules named {names} in {type(model).__name__}; give the targets for this model")
    return out


def adalora_target_rank(model: torch.nn.Module, targets: list[str], budget: int) -> tuple[int, int]:
    """The largest AdaLoRA target rank (average rank per target matrix) whose
    final count ``r·Σ(in + out + 1)`` fits ``budget``, and that count. At
    least 1: if rank 1 already exceeds the budget, rank 1 is used and the row
    reports its count above the budget."""
    per_rank = sum(m.weight.shape[0] + m.weight.shape[1] + 1 for m in qv_linears(model, targets))
    r = max(1, budget // per_rank)
    return r, r * per_rank


def kept_count(peft_model: torch.nn.Module) -> int:
    """AdaLoRA's count after its rank allocation: the ranks whose singular
    value ``lora_E`` is non-zero, each ``in + out + 1`` parameters."""
    total = 0
    for module in peft_model.modules():
        e = getattr(module, "lora_E", None)
        if not isinstance(e, torch.nn.ParameterDict):
            continue
        for key, values in e.items():
            kept = int((values.detach() != 0).sum())
            a, b = module.lora_A[key], module.lora_B[key]
            total += kept * (a.shape[1] + b.shape[0] + 1)
    return total


def run_peer(kind: str, *, task_name: str, budget_value: str, seed: int, epochs: int,
             max_train: int | None, data_dir: str | None, recipe: dict[str, Any],
             progress: bool = False) -> dict[str, Any]:
    """Train and evaluate one peft row; returns the same summary keys as a bipeft run."""
    import peft
    from transformers import AutoTokenizer

    from bipeft_core import load_plugins
    from bipeft_core.budget import Budget
    from bipeft_core.runner import default_model_path
    from bipeft_core.spec import TrainSpec
    from bipeft_core.targets import backbone_param_count, head_module_names
    from bipeft_core.tasks import get_task, load_task_model, prepare_task
    from bipeft_core.training import train_model

    plugins = load_plugins()
    task = get_task(task_name, plugins)
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = load_task_model(path, task, seed=seed)
    splits = task.load(data_dir, seed=seed, max_train_examples=max_train)
    prepared = prepare_task(task, splits, tokenizer, model)
    backbone = backbone_param_count(model)
    budget = Budget.parse(budget_value).resolve(backbone)
    heads = head_module_names(model)
    targets = QV_TARGETS.get(model.config.model_type)
    if targets is None:
        raise ValueError(f"no query/value names known for model type {model.config.model_type!r}")
    settings = TrainSpec(epochs=epochs, seed=seed, max_train_examples=max_train, **recipe)
    train = list(prepared.train)[: max_train or None]
    steps = math.ceil(len(train) / settings.batch_size) * epochs
    info: dict[str, Any] = {}
    if kind == "peft_lora":
        config = peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                                 modules_to_save=heads, bias="none")
    elif kind == "peft_adalora":
        target_r, count = adalora_target_rank(model, targets, budget)
        init_r = max(8, math.ceil(1.5 * target_r))
        config = peft.AdaLoraConfig(init_r=init_r, target_r=target_r, lora_alpha=8, lora_dropout=0.0,
                                    target_modules=targets, modules_to_save=heads, total_step=steps,
                                    tinit=int(0.1 * steps), tfinal=int(0.2 * steps), deltaT=10)
        info.update(target_r=target_r, init_r=init_r, target_count=count)
    else:
        raise ValueError(f"unknown peer {kind!r}; use peft_lora or peft_adalora")
    from bipeft_core.distributed import Dist

    torch.manual_seed(seed)
    pm = peft.get_peft_model(model, config).to(Dist().device())
    trainable = [p for p in pm.parameters() if p.requires_grad]
    # the PEFT weights; the heads' trainable copies (modules_to_save) are not counted, as in bipeft's rows
    trained_peft = sum(p.numel() for n, p in pm.named_parameters() if p.requires_grad and "lora_" in n)

    def loss(m, batch):
        return m(**prepared.model_inputs(batch)).loss

    on_step = None
    if kind == "peft_adalora":
        def on_step(global_step: int) -> None:
            pm.base_model.update_and_allocate(global_step)

    # AdaLoRA meets its rank budget only once its allocation ends (at 80 % of the steps): an earlier
    # epoch's state holds more ranks than the budget, so only a state within the budget may be the best
    eligible = (lambda m: kept_count(m) <= budget) if kind == "peft_adalora" else None
    started = time.perf_counter()
    out = train_model(pm, trainable, train, settings=settings, collate=prepared.collate, loss=loss,
                      evaluate=lambda m: prepared.evaluate(m, "validation"), progress=progress, on_step=on_step,
                      eligible=eligible)
    wall = time.perf_counter() - started
    best = out["epochs"][out["best_epoch"]]
    validation = {k: v for k, v in best.items() if k not in ("epoch", "train_loss", "eligible")}
    test = prepared.evaluate(pm, "test")
    count = kept_count(pm) if kind == "peft_adalora" else trained_peft
    return {
        "task": task.name, "strategy": kind, "peft_params": count, "peft_params_trained": trained_peft,
        "budget": budget, "backbone_params": backbone, "ratio_of_backbone": count / backbone,
        "budget_met": count <= budget, "search_time": 0.0, "metric": prepared.primary_metric, "test": test,
        "validation": validation, "retrain_time": wall, "search_retrain_ratio": 0.0,
        "retrain_step_time": out["step_time"], "epochs": out["epochs"], "best_epoch": out["best_epoch"],
        "peft_version": peft.__version__, **info,
    }
