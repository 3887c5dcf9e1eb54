"""OpenCLIP text transformer (ViT-H-14's text tower) as Stable Diffusion 2.x and VideoCrafter2
run it (docs/models.md, "OpenCLIP ViT-H-14 text tower"; fixture `openclip_text`).

    x = token_embedding[tokens] + positional_embedding          # [N, L, W]
    for block in blocks[:n]:                                    # pre-LN, causal additive mask
        x = x + out_proj(MHA(ln_1(x)))                          # packed in_proj -> q, k, v
        x = x + c_proj(gelu_exact(c_fc(ln_2(x))))
    y = ln_final(x)                                             # [N, L, W]

'penultimate' (SD 2.x / VideoCrafter2 / Maestro) runs blocks 0..n-2, 'last' all n. LayerNorm eps
is 1e-5 (torch's default; Flax's is 1e-6) and GELU is the exact erf form (no `quick_gelu` in the
ViT-H-14 config). There is no key-padding mask: all 77 states are returned and used, and the
positions after EOT attend to the zero-id pad tokens before them.

The pooled output (open_clip `encode_text`: ln_final of the last block, the state at the EOT
position = argmax id, `@ text_projection`) is provided for completeness; the video models do not
use it.

Parameters are float32; `dtype` is the compute dtype. Shapes: N prompts, L = 77 positions,
W = width.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.models.presets import PresetConfig
from maestro_jax.nn.attention import IMPLS, dot_product_attention, merge_heads, split_heads
from maestro_jax.nn.layers import Dense, LayerNorm, gelu_exact

LAYERS = ("penultimate", "last")


@dataclasses.dataclass(frozen=True)
class ClipTextConfig(PresetConfig):
    """Text tower hyperparameters (open_clip `CLIPTextCfg` names).

    Attributes:
      vocab_size, context_length: 49408 and 77 for every CLIP model here.
      width, heads, layers: transformer size; `layers` is the number of blocks the params hold.
      mlp_ratio: c_fc width = mlp_ratio * width.
      embed_dim: columns of `text_projection` (pooled output); None = no projection (HF
        `CLIPTextModel`).
      trimmed: how many final blocks of the original tower the params leave out. The SD 2.x
        diffusers `text_encoder` is the 24-block tower cut to 23 blocks (trimmed=1), so there
        'penultimate' runs all 23 blocks and 'last' is unavailable.
      ln_eps: LayerNorm eps (torch default 1e-5).
      dtype: compute dtype (params stay float32).
      attn_impl: attention implementation (see `maestro_jax.nn.attention`); the causal mask is
        an additive bias, so 'cudnn' falls back to 'xla' with a warning.
    """

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1024
    heads: int = 16
    layers: int = 24
    mlp_ratio: float = 4.0
    embed_dim: int | None = 1024
    trimmed: int = 0
    ln_eps: float = 1e-5
    dtype: str = "float32"
    attn_impl: str = "xla"

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.layers < 1 or self.trimmed < 0:
            raise ValueError(
                f"need layers >= 1 and trimmed >= 0, got {self.layers}, {self.trimmed}"
            )
        if self.trimmed and self.embed_dim is not None:
            raise ValueError("a trimmed tower has no pooled output: set embed_dim=None")
        if self.attn_impl not in IMPLS:
            raise ValueError(f"attn_impl {self.attn_impl!r} is not one of {IMPLS}")
        jnp.dtype(self.dtype)  # raises on an unknown dtype name

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    def blocks_for(self, layer: str) -> int:
        """How many of the held blocks `layer` runs ('penultimate' or 'last')."""
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
        n = self.layers + self.trimmed - (1 if layer == "penultimate" else 0)
        if not 0 <= n <= self.layers:
            raise ValueError(
                f"layer {layer!r} needs {n} blocks but these params hold {self.layers} "
                f"(the original tower's last {self.trimmed} block(s) were cut off)"
            )
        return n

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# `from_folder` reads the top level of config.json (the text folders store the fields there).
ClipTextConfig._presets = {
    # OpenCLIP ViT-H-14 text tower (`model_configs/ViT-H-14.json`): 1024 wide, 16 heads, 24
    # blocks, MLP 4096, embed_dim 1024. As stored in VideoCrafter2's and SD 2.x's LDM checkpoints.
    "vit_h14": {},
    # The same tower in the SD 2.x diffusers `text_encoder/` form: 23 blocks, no projection.
    "vit_h14_hf": dict(layers=23, embed_dim=None, trimmed=1),
    # The `openclip_text` fixture's configuration: width 64, 4 heads, 3 blocks, embed_dim 32.
    "tiny": dict(width=64, heads=4, layers=3, embed_dim=32),
}


def vit_h14(**overrides: Any) -> ClipTextConfig:
    """OpenCLIP ViT-H-14 text tower (preset 'vit_h14')."""
    return ClipTextConfig.from_preset("vit_h14", **overrides)


def vit_h14_hf(**overrides: Any) -> ClipTextConfig:
    """The SD 2.x diffusers `text_encoder/` form of it (preset 'vit_h14_hf')."""
    return ClipTextConfig.from_preset("vit_h14_hf", **overrides)


def tiny(**overrides: Any) -> ClipTextConfig:
    """The `openclip_text` fixture's configuration (preset 'tiny')."""
    return ClipTextConfig.from_preset("tiny", **overrides)


def from_open_clip_config(model_cfg: dict[str, Any], **overrides: Any) -> ClipTextConfig:
    """From an open_clip model config dict (`{"embed_dim", "text_cfg": {...}}`)."""
    t = model_cfg["text_cfg"]
    if t.get("quick_gelu") or model_cfg.get("quick_gelu"):
        raise ValueError("quick_gelu text towers are not supported (ViT-H-14 uses exact GELU)")
    cfg = ClipTextConfig(
        vocab_size=t.get("vocab_size", 49408),
        context_length=t.get("context_length", 77),
        width=t.get("width", 512),
        heads=t.get("heads", 8),
        layers=t.get("layers", 12),
        mlp_ratio=t.get("mlp_ratio", 4.0),
        embed_dim=model_cfg["embed_dim"],
    )
    return dataclasses.replace(cfg, **overrides)


def causal_bias(length: int) -> jax.Array:
    """[L, L] additive mask: 0 on and below the diagonal, -inf above (open_clip `attn_mask`)."""
    return jnp.where(jnp.tril(jnp.ones((length, length), bool)), 0.0, -jnp.inf).astype(jnp.float32)


class SelfAttention(nn.Module):
    """`nn.MultiheadAttention` with its packed in_proj split into q/k/v projections."""

    config: ClipTextConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        """x: [N, L, W]; bias: [L, L] additive. Returns [N, L, W]."""
        c = self.config
        dt = jnp.dtype(c.dtype)
        q, k, v = (
            split_heads(Dense(c.width, dtype=dt, name=f"{n}_proj")(x), c.heads) for n in "qkv"
        )
        # scale 1/sqrt(head_dim), as nn.MultiheadAttention
        o = dot_product_attention(q, k, v, bias=bias[None, None], impl=c.attn_impl)
        return Dense(c.width, dtype=dt, name="out_proj")(merge_heads(o))


class Mlp(nn.Module):
    """c_fc -> exact (erf) GELU -> c_proj."""

    config: ClipTextConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        dt = jnp.dtype(c.dtype)
        h = Dense(c.mlp_width, dtype=dt, name="c_fc")(x)
        return Dense(c.width, dtype=dt, name="c_proj")(gelu_exact(h))


class ResidualBlock(nn.Module):
    """open_clip `ResidualAttentionBlock` (pre-LN, exact GELU, no layer scale)."""

    config: ClipTextConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        c = self.config
        x = x + SelfAttention(c, name="attn")(LayerNorm(c.ln_eps, name="ln_1")(x), bias)
        return x + Mlp(c, name="mlp")(LayerNorm(c.ln_eps, name="ln_2")(x))


class ClipTextTransformer(nn.Module):
    """The text tower. Call it for one layer's states; `encode_all` computes everything (and
    is the method to `init` with, since a 'penultimate' call never touches the last block)."""

    config: ClipTextConfig

    def setup(self):
        c = self.config
        self.token_embedding = nn.Embed(
            c.vocab_size,
            c.width,
            dtype=jnp.dtype(c.dtype),
            param_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(0.02),
        )
        self.positional_embedding = self.param(
            "positional_embedding", nn.initializers.normal(0.01), (c.context_length, c.width)
        )
        self.resblocks = [ResidualBlock(c) for _ in range(c.layers)]  # resblocks_0, ...
        self.ln_final = LayerNorm(c.ln_eps)
        if c.embed_dim is not None:
            self.text_projection = self.param(
                "text_projection", nn.initializers.normal(c.width**-0.5), (c.width, c.embed_dim)
            )

    def _check_tokens(self, tokens: jax.Array) -> None:
        c = self.config
        if tokens.ndim != 2 or not 1 <= tokens.shape[1] <= c.context_length:
            raise ValueError(f"tokens must be [N, L<={c.context_length}], got {tokens.shape}")
        if not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")

    def _run(self, tokens: jax.Array, n_blocks: int) -> list[jax.Array]:
        """Residual stream after the embedding and after each of the first n_blocks blocks."""
        self._check_tokens(tokens)
        length = tokens.shape[1]
        x = self.token_embedding(tokens)
        x = x + self.positional_embedding[:length].astype(x.dtype)
        bias = causal_bias(length)
        states = [x]
        for block in self.resblocks[:n_blocks]:
            x = block(x, bias)
            states.append(x)
        return states

    def __call__(self, tokens: jax.Array, layer: str = "penultimate") -> jax.Array:
        """tokens [N, L] int ids -> [N, L, W] = ln_final(residual stream after `layer`)."""
        return self.ln_final(self._run(tokens, self.config.blocks_for(layer))[-1])

    def pooled(self, tokens: jax.Array) -> jax.Array:
        """open_clip `encode_text` (unnormalised): [N, embed_dim]."""
        y = self(tokens, layer="last")
        return self._pool(y, tokens)

    def _pool(self, y: jax.Array, tokens: jax.Array) -> jax.Array:
        if self.config.embed_dim is None:
            raise ValueError("this config has no text_projection (embed_dim=None)")
        eot = y[jnp.arange(y.shape[0]), jnp.argmax(tokens, axis=-1)]  # EOT has the largest id
        return jnp.matmul(
            eot, self.text_projection.astype(eot.dtype), precision=jax.lax.Precision.HIGHEST
        )

    def encode_all(self, tokens: jax.Array) -> dict[str, jax.Array]:
        """Every output in one pass (touches every parameter):

        block_states [layers, N, L, W] (residual stream after each block, before ln_final),
        'penultimate' / 'last' [N, L, W] where available, 'pooled' [N, embed_dim] where available.
        """
        c = self.config
        states = self._run(tokens, c.layers)
        out = {"block_states": jnp.stack(states[1:])}
        for layer in LAYERS:
            n = c.layers + c.trimmed - (1 if layer == "penultimate" else 0)
            if n <= c.layers:
                out[layer] = self.ln_final(states[n])
        if c.embed_dim is not None:
            out["pooled"] = self._pool(out["last"], tokens)
        return out


# ----------------------------------------------------------------------------- helpers
def _dummy_tokens(config: ClipTextConfig) -> jax.Array:
    return jnp.zeros((1, config.context_length), jnp.int32)


def init_params(config: ClipTextConfig, rng: jax.Array) -> dict:
    """Random params (every leaf, including the last block and text_projection)."""
    m = ClipTextTransformer(config)
    # jitted: eager initialisation of the 49408-row embedding dispatches op by op and is slow.
    init = jax.jit(
        lambda r: m.init(r, _dummy_tokens(config), method=ClipTextTransformer.encode_all)
    )
    return init(rng)["params"]


def abstract_params(config: ClipTextConfig) -> dict:
    """The params tree as ShapeDtypeStructs (no allocation): the converters' target."""
    return jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0))


@functools.partial(jax.jit, static_argnames=("config", "layer"))
def encode_tokens(
    params: dict, tokens: jax.Array, config: ClipTextConfig, layer: str = "penultimate"
) -> jax.Array:
    """Jitted `ClipTextTransformer(config)(tokens, layer)`: [N, L] ids -> [N, L, W]."""
    return ClipTextTransformer(config).apply({"params": params}, tokens, layer=layer)


def encode_text(
    params: dict,
    config: ClipTextConfig,
    tokenizer: Any,
    texts: str | Sequence[str],
    layer: str = "penultimate",
) -> jax.Array:
    """Prompts -> text-encoder context [N, 77, W] (what the UNets cross-attend to).

    Args:
      tokenizer: a `ClipTokenizer` (any callable mapping texts to [N, 77] ids works).
      texts: one prompt or N prompts.
      layer: 'penultimate' for SD 2.x / VideoCrafter2 / Maestro.
    """
    config.blocks_for(layer)  # a bad layer fails before tokenizing
    tokens = np.asarray(tokenizer(texts))
    return encode_tokens(params, jnp.asarray(tokens, jnp.int32), config, layer)


def null_embedding(
    params: dict, config: ClipTextConfig, tokenizer: Any, layer: str = "penultimate"
) -> jax.Array:
    """The empty prompt's context [77, W]: the unconditional / null context of VideoCrafter2
    (`uncond_type: empty_seq`) and of every Maestro context (`""` -> [SOT, EOT, 0 x 75])."""
    return encode_text(params, config, tokenizer, [""], layer)[0]
