"""The plugin: registers the ``ia3`` module type, the ``excess_share``
module selector and the ``example-ia3`` search space through bipeft's hooks.

Installed, it is found through the entry point ``example`` in group
``bipeft``; uninstalled, pass it in: ``load_plugins(plugins=[plugin])``.
"""

from __future__ import annotations

from typing import Any

from bipeft_core import DeclarativeSpace, hookimpl
from bipeft_example_plugin.excess_share import ExcessShare
from bipeft_example_plugin.ia3 import IA3

#: IA3 on every linear of a block, LoRA on the attention queries and values.
SPACE = {
    "name": "example-ia3",
    "description": "IA3 on every linear layer, LoRA on the attention queries and values",
    "ranks": [1, 4, 8],
    "modules": [
        {"type": "ia3", "targets": ["attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o", "ffn_in", "ffn_out"]},
        {"type": "lora", "targets": ["attn_q", "attn_v", "attn_qkv"]},
    ],
}


@hookimpl
def bipeft_register_peft_modules(registry: Any) -> None:
    registry.add(IA3())


@hookimpl
def bipeft_register_strategies(registry: Any) -> None:
    registry.add(ExcessShare)


@hookimpl
def bipeft_register_search_spaces(registry: Any) -> None:
    registry.add(DeclarativeSpace.from_dict(SPACE, source="bipeft_example_plugin"))
