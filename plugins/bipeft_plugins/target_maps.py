"""Built-in target maps: where the roles sit in T5, BERT/RoBERTa, GPT-2 and
Llama-style decoders (Llama, Mistral, Qwen2).

Choices documented in docs/targets.md: BERT's embedding LayerNorm is a
``norm`` position (so "every LayerNorm" holds, as for T5's final norms);
Llama's ``ffn_in`` is both ``gate_proj`` and ``up_proj``; GPT-2's fused
``c_attn`` is the role ``attn_qkv``; T5's cross-attention linears are never
positions, its cross-attention LayerNorm is.
"""

from __future__ import annotations

from bipeft_core.hookspecs import hookimpl
from bipeft_core.targets import TargetMap

T5 = TargetMap(
    name="t5",
    model_types=("t5", "mt5", "umt5"),
    blocks=(r"(?:encoder|decoder)\.block\.\d+",),
    roles={
        "attn_q": r"layer\.0\.SelfAttention\.q",
        "attn_k": r"layer\.0\.SelfAttention\.k",
        "attn_v": r"layer\.0\.SelfAttention\.v",
        "attn_o": r"layer\.0\.SelfAttention\.o",
        "ffn_in": r"layer\.\d+\.DenseReluDense\.wi(?:_0|_1)?",
        "ffn_out": r"layer\.\d+\.DenseReluDense\.wo",
        "norm": r"layer\.\d+\.layer_norm",
    },
    global_roles={"norm": r"(?:encoder|decoder)\.final_layer_norm"},
)

BERT = TargetMap(
    name="bert",
    model_types=("bert", "roberta", "xlm-roberta", "electra", "camembert"),
    blocks=(r"encoder\.layer\.\d+",),
    roles={
        "attn_q": r"attention\.self\.query",
        "attn_k": r"attention\.self\.key",
        "attn_v": r"attention\.self\.value",
        "attn_o": r"attention\.output\.dense",
        "ffn_in": r"intermediate\.dense",
        "ffn_out": r"output\.dense",
        "norm": (r"attention\.output\.LayerNorm", r"output\.LayerNorm"),
    },
    global_roles={"norm": r"embeddings\.LayerNorm"},
)

GPT2 = TargetMap(
    name="gpt2",
    model_types=("gpt2",),
    blocks=(r"h\.\d+",),
    roles={
        "attn_qkv": r"attn\.c_attn",
        "attn_o": r"attn\.c_proj",
        "ffn_in": r"mlp\.c_fc",
        "ffn_out": r"mlp\.c_proj",
        "norm": (r"ln_1", r"ln_2"),
    },
    global_roles={"norm": r"ln_f"},
)

LLAMA = TargetMap(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3"),
    blocks=(r"layers\.\d+",),
    roles={
        "attn_q": r"self_attn\.q_proj",
        "attn_k": r"self_attn\.k_proj",
        "attn_v": r"self_attn\.v_proj",
        "attn_o": r"self_attn\.o_proj",
        "ffn_in": (r"mlp\.gate_proj", r"mlp\.up_proj"),
        "ffn_out": r"mlp\.down_proj",
        "norm": (r"input_layernorm", r"post_attention_layernorm"),
    },
    global_roles={"norm": r"norm"},
)

BUILTIN_TARGET_MAPS = (T5, BERT, GPT2, LLAMA)


@hookimpl
def bipeft_register_target_maps(registry):
    for target_map in BUILTIN_TARGET_MAPS:
        registry.add(target_map)
