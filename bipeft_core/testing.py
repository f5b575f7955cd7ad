"""Helpers for testing bipeft and its plugins: tiny random-weight models of
each supported family, and contract checks every PEFT module type must pass.

Plugin authors can run the same checks on their own module types::

    from bipeft_core.testing import check_peft_module_type, tiny_model
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["TINY_FAMILIES", "tiny_batch", "tiny_model"]

TINY_FAMILIES = ("bert", "roberta", "t5", "gpt2", "llama")


def tiny_model(family: str, *, vocab_size: int = 128, num_labels: int = 2, hidden: int = 32,
               layers: int = 2, seed: int = 0, **overrides: Any) -> nn.Module:
    """A randomly initialised model of ``family`` with a task head: sequence
    classification for encoders and decoders, conditional generation for T5.
    Never touches the hub."""
    import transformers as T

    torch.manual_seed(seed)
    if family == "bert":
        cfg = T.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                           num_attention_heads=4, intermediate_size=2 * hidden, num_labels=num_labels,
                           pad_token_id=0, **overrides)
        return T.BertForSequenceClassification(cfg)
    if family == "roberta":
        cfg = T.RobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=4, intermediate_size=2 * hidden, num_labels=num_labels,
                              pad_token_id=1, **overrides)
        return T.RobertaForSequenceClassification(cfg)
    if family == "t5":
        cfg = T.T5Config(vocab_size=vocab_size, d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden,
                         num_layers=layers, num_decoder_layers=layers, num_heads=4, pad_token_id=0,
                         decoder_start_token_id=0, **overrides)
        return T.T5ForConditionalGeneration(cfg)
    if family == "gpt2":
        cfg = T.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4,
                           num_labels=num_labels, pad_token_id=0, **overrides)
        return T.GPT2ForSequenceClassification(cfg)
    if family == "llama":
        cfg = T.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                            num_labels=num_labels, pad_token_id=0, **overrides)
        return T.LlamaForSequenceClassification(cfg)
    raise ValueError(f"unknown tiny model family {family!r}; one of {TINY_FAMILIES}")


def tiny_batch(model: nn.Module, *, batch: int = 2, length: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs for :func:`tiny_model` (with decoder inputs for T5)."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(2, vocab, (batch, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.config, "is_encoder_decoder", False):
        out["decoder_input_ids"] = torch.randint(2, vocab, (batch, 3), generator=g)
    return out
