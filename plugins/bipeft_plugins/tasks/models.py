"""The Hugging Face models of the text tasks: the model family
(:func:`model_family`: ``encoder``, ``seq2seq`` or ``decoder``), the task head
a model gets for a task (``AutoModelForSequenceClassification`` with the
task's outputs, or ``AutoModelForSeq2SeqLM`` for text-to-text models), and
building (:func:`build_model`) or loading (:func:`load_model`) such
a model, seeded without touching the global generator.

A task is read through the contract (:class:`bipeft_core.tasks.Task`:
``kind``, ``label_names``, ``num_labels``), so these work for any task that
declares them."""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any, Literal

from bipeft_core.errors import SpecError
from bipeft_core.tasks import Task

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["Family", "build_model", "config_of", "inner_model", "load_model", "model_family"]

Family = Literal["encoder", "seq2seq", "decoder"]


def inner_model(model: Any) -> Any:
    """The transformers model inside wrappers that hold it as ``.model``
    (bipeft's Supernet and PeftModel) or behind ``get_base_model()`` (peft)."""
    from transformers import PretrainedConfig

    current = model
    for _ in range(8):
        if isinstance(getattr(current, "config", None), PretrainedConfig):
            return current
        if callable(getattr(current, "get_base_model", None)):
            current = current.get_base_model()
        elif getattr(current, "model", None) is not None and getattr(current, "model", None) is not current:
            current = current.model
        else:
            break
    return current


def config_of(model_or_config: Any) -> Any:
    """The transformers config of a model (seen through the wrappers
    :func:`inner_model` knows), or the config itself; :class:`SpecError` for
    anything without one."""
    from transformers import PretrainedConfig

    if isinstance(model_or_config, PretrainedConfig):
        return model_or_config
    config = getattr(inner_model(model_or_config), "config", None)
    if not isinstance(config, PretrainedConfig):
        raise SpecError(
            f"cannot tell the family of {type(model_or_config).__name__}: it has no transformers "
            "config (nor wraps a model that has one as .model); pass a transformers model (or its config)"
        )
    return config


def model_family(model: Any) -> Family:
    """``"encoder"``, ``"seq2seq"`` or ``"decoder"`` for a transformers model
    (or config): encoder-decoder configs are ``seq2seq``; model types that
    have a causal-LM class and no masked-LM class (GPT-2, Llama, ...) are
    ``decoder``; the rest (BERT, RoBERTa, MiniLM, ...) are ``encoder``."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = config_of(model)
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    mtype = getattr(config, "model_type", "")
    if mtype in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mtype not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "decoder"
    return "encoder"


def _configure_head(config: Any, task: Task) -> Any:
    """A copy of ``config`` with the head ``task`` needs: its outputs and
    labels, its problem type, and an EOS pad id for a decoder without one."""
    config = copy.deepcopy(config)
    config.num_labels = task.num_labels
    if task.kind == "classification":
        config.id2label = dict(enumerate(task.label_names))
        config.label2id = {n: i for i, n in enumerate(task.label_names)}
        config.problem_type = "single_label_classification"
    elif task.kind == "regression":
        config.problem_type = "regression"
    else:
        config.problem_type = None
    if model_family(config) == "decoder" and getattr(config, "pad_token_id", None) is None:
        eos = getattr(config, "eos_token_id", None)
        config.pad_token_id = eos[0] if isinstance(eos, (list, tuple)) else eos
    return config


def build_model(config: Any, task: Task, *, seed: int = 0) -> nn.Module:
    """A randomly initialised model for ``task`` from a transformers config:
    ``AutoModelForSeq2SeqLM`` for encoder-decoder configs (T5), else
    ``AutoModelForSequenceClassification`` with the task's number of labels
    (``problem_type="regression"`` for regression tasks; one score per
    candidate for choice tasks). Decoders without a ``pad_token_id`` get
    their EOS id. The weights are drawn from ``torch.manual_seed(seed)``
    without touching the global generator."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model_family(config) == "seq2seq":
            return AutoModelForSeq2SeqLM.from_config(config)
        return AutoModelForSequenceClassification.from_config(_configure_head(config, task))


def load_model(name_or_path: str | os.PathLike[str], task: Task, *, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Like :func:`build_model` with pretrained weights from
    ``name_or_path`` (a local folder, or a hub id when online); a new task
    head is initialised from ``seed``. ``kwargs`` go to ``from_pretrained``."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(name_or_path, **{k: kwargs[k] for k in ("revision", "trust_remote_code")
                                                          if k in kwargs})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if model_family(config) == "seq2seq":
            return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
        kwargs.setdefault("ignore_mismatched_sizes", True)
        return AutoModelForSequenceClassification.from_pretrained(
            name_or_path, config=_configure_head(config, task), **kwargs
        )
