"""The architecture adapter table: where the parts an intervention needs (decoder layers, attention and
MLP blocks and their projections, the sublayer outputs added to the residual stream) live in each model
family, keyed by `config.model_type`."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class ArchAdapter:
    """Where the parts an intervention needs live in one model family (paths below the causal LM)."""

    layers: str  # the ModuleList of decoder layers
    attn: str  # attention block inside a layer
    attn_out_proj: str  # attention output projection inside a layer (its input = per-head outputs)
    mlp: str  # MLP block inside a layer
    mlp_down_proj: str  # MLP down projection inside a layer (its input = gated neuron activations)
    # The modules whose outputs are added to the residual stream (the sublayer outputs): the attention
    # and MLP blocks themselves, or the norms after them in families that normalise sublayer outputs.
    attn_residual: str = "self_attn"
    mlp_residual: str = "mlp"
    final_norm: str = "model.norm"  # the norm after the last layer (its output: the post-norm last hidden state)


_LLAMA_LIKE = ArchAdapter(
    layers="model.layers",
    attn="self_attn",
    attn_out_proj="self_attn.o_proj",
    mlp="mlp",
    mlp_down_proj="mlp.down_proj",
)

# Gemma 2 / 3 normalise each sublayer's output before the residual add.
_GEMMA2_LIKE = ArchAdapter(
    layers="model.layers",
    attn="self_attn",
    attn_out_proj="self_attn.o_proj",
    mlp="mlp",
    mlp_down_proj="mlp.down_proj",
    attn_residual="post_attention_layernorm",
    mlp_residual="post_feedforward_layernorm",
)

# One table, keyed by `config.model_type`; every family here uses a SwiGLU MLP and o_proj.
ADAPTERS: dict[str, ArchAdapter] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA2_LIKE,
    "gemma3_text": _GEMMA2_LIKE,
}


def adapter_for(model) -> ArchAdapter:
    model_type = model.config.model_type
    if model_type not in ADAPTERS:
        raise UserError(
            f"model type {model_type!r} has no architecture adapter; supported: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]
