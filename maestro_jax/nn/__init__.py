"""Building blocks shared by every model: attention dispatcher, norms, activations, embeddings."""

from maestro_jax.nn.attention import AttnEdit, dot_product_attention, merge_heads, split_heads
from maestro_jax.nn.layers import (
    GEGLU,
    Dense,
    GroupNorm,
    LayerNorm,
    gelu_exact,
    group_norm,
    layer_norm,
    timestep_embedding,
)

__all__ = [
    "AttnEdit",
    "Dense",
    "GEGLU",
    "GroupNorm",
    "LayerNorm",
    "dot_product_attention",
    "gelu_exact",
    "group_norm",
    "layer_norm",
    "merge_heads",
    "split_heads",
    "timestep_embedding",
]
