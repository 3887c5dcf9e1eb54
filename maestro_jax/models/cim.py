"""Condition injection module (CIM): Maestro's Perceiver resampler (`AudioResampler`).

Maps the ImageBind audio trunk tokens of one 2 s clip (CLS + 228 patches, 229 x 768) to N_Q
audio tokens of the text-context width (10 x 1024). Paper section 3.2; docs/method.md, "Audio tokens (the CIM)"
and docs/models.md, "CIM (Perceiver resampler)"; the original is `scripts/evaluation/audio_resampler.py` of
kuai-lab/eaai25_complex_A2V (an IP-Adapter `Resampler` without positional embeddings).

    latents (1, N_Q, dim)                               (learned, init N(0, 1) / sqrt(dim))
    x = proj_in(media)                                  Linear(embed_dim -> dim, bias)
    depth x:
      latents += to_out(attn(q = to_q(norm2(latents)),
                             k, v = to_kv(concat(norm1(x), norm2(latents)))))   no biases
      latents += fc2(gelu_exact(fc1(norm(latents))))    FF, no biases
    out = norm_out(proj_out(latents))                   Linear(dim -> output_dim, bias), LN

Every LayerNorm is torch's default, eps 1e-5; q and k are each scaled by dim_head^-1/4 before
the product (the original does this for fp16 range), softmax in float32.

Public API: `CIMConfig` (`.release()`, `.from_torch_kwargs`), `CIM(cfg)`:
`CIM(cfg).apply({'params': p}, tokens [..., T, embed_dim]) -> [..., N_Q, output_dim]` for any
leading dims (e.g. [N_A, S, 229, 768] -> [N_A, S, 10, 1024]); `init_shapes(cfg)`,
`param_count(cfg)`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.models.presets import PresetConfig
from maestro_jax.nn.attention import dot_product_attention, merge_heads, split_heads
from maestro_jax.nn.layers import Dense, LayerNorm, gelu_exact

LN_EPS = 1e-5  # torch nn.LayerNorm default, every LN of the CIM
RELEASE_PARAMS = 71_092_224


@dataclasses.dataclass(frozen=True)
class CIMConfig(PresetConfig):
    """`AudioResampler` constructor arguments; defaults are the released CIM (both call sites
    build depth 6; the class default of 4 is never used)."""

    dim: int = 1024
    depth: int = 6
    heads: int = 12
    dim_head: int = 64
    num_queries: int = 10
    embed_dim: int = 768
    output_dim: int = 1024
    ff_mult: int = 4
    # The original multiplies the latents by video_length (frame-wise queries); 1 in the release.
    video_length: int = 1
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @classmethod
    def release(cls, **overrides: Any) -> CIMConfig:
        """The released CIM: 71,092,224 params (`perceiver.pth`)."""
        return cls.from_preset("release", **overrides)

    @classmethod
    def from_torch_kwargs(cls, kw: Mapping[str, Any], **overrides: Any) -> CIMConfig:
        """From `AudioResampler(**kw)` (a fixture's `constructor_kwargs`)."""
        names = {"embedding_dim": "embed_dim"}
        known = {f.name for f in dataclasses.fields(cls)}
        args = {}
        for k, v in kw.items():
            k = names.get(k, k)
            if k not in known:
                raise ValueError(f"unknown AudioResampler argument {k!r}")
            args[k] = v
        if args.get("video_length") is None:
            args["video_length"] = 1
        return cls(**{**args, **overrides})

    @property
    def num_latents(self) -> int:
        return self.num_queries * self.video_length

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dtype"] = jnp.dtype(self.dtype).name
        return d


CIMConfig._presets = {
    "release": {},
    # narrower resamplers (set embed_dim / output_dim to the encoders' widths): runlocal tests
    # and the toy world
    "tiny": dict(dim=32, depth=1, heads=2, dim_head=16, ff_mult=2),
    "toy": dict(dim=64, depth=2, heads=4, dim_head=16, ff_mult=2),
}
CIMConfig._folder_key = "cim"
CIMConfig._folder_fallback = ("config",)
CIMConfig._dtype_object = True


class PerceiverAttention(nn.Module):
    """Latents attend to concat(media, latents); `to_kv` packs k then v (no biases)."""

    dim: int
    heads: int
    dim_head: int
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, latents: jax.Array) -> jax.Array:
        """x: [B, T, dim] media; latents: [B, Q, dim] -> [B, Q, dim] (the residual update)."""
        inner = self.heads * self.dim_head
        x = LayerNorm(LN_EPS, name="norm1")(x)
        latents = LayerNorm(LN_EPS, name="norm2")(latents)
        q = Dense(inner, use_bias=False, dtype=self.dtype, name="to_q")(latents)
        kv_in = jnp.concatenate([x, latents], axis=1)
        kv = Dense(2 * inner, use_bias=False, dtype=self.dtype, name="to_kv")(kv_in)
        k, v = jnp.split(kv, 2, axis=-1)
        # q and k each scaled by dh^-1/4 (the original's fp16-safe split of dh^-1/2)
        s = 1.0 / math.sqrt(math.sqrt(self.dim_head))
        q = split_heads(q * s, self.heads)
        k = split_heads(k * s, self.heads)
        v = split_heads(v, self.heads)
        out = dot_product_attention(q, k, v, scale=1.0, impl=self.attn_impl)
        return Dense(self.dim, use_bias=False, dtype=self.dtype, name="to_out")(merge_heads(out))


class FeedForward(nn.Module):
    """LN -> Linear(dim, mult*dim, no bias) -> exact GELU -> Linear(mult*dim, dim, no bias)."""

    dim: int
    mult: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = LayerNorm(LN_EPS, name="norm")(x)
        h = Dense(self.dim * self.mult, use_bias=False, dtype=self.dtype, name="fc1")(h)
        return Dense(self.dim, use_bias=False, dtype=self.dtype, name="fc2")(gelu_exact(h))


class CIM(nn.Module):
    """The Perceiver resampler. Input [..., T, embed_dim] -> output [..., N_Q, output_dim]."""

    config: CIMConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg = self.config
        if tokens.ndim < 2 or tokens.shape[-1] != cfg.embed_dim:
            raise ValueError(
                f"CIM wants audio tokens [..., T, {cfg.embed_dim}] (ImageBind audio trunk "
                f"output, T = 229); got {tuple(tokens.shape)}"
            )
        lead, t = tokens.shape[:-2], tokens.shape[-2]
        x = tokens.reshape(-1, t, cfg.embed_dim).astype(cfg.dtype)
        b = x.shape[0]
        latents0 = self.param(
            "latents",
            nn.initializers.normal(cfg.dim**-0.5),
            (1, cfg.num_latents, cfg.dim),
            jnp.float32,
        )
        latents = jnp.broadcast_to(latents0.astype(cfg.dtype), (b, cfg.num_latents, cfg.dim))
        x = Dense(cfg.dim, dtype=cfg.dtype, name="proj_in")(x)
        for i in range(cfg.depth):
            latents = latents + PerceiverAttention(
                cfg.dim, cfg.heads, cfg.dim_head, cfg.dtype, cfg.attn_impl, name=f"attn_{i}"
            )(x, latents)
            latents = latents + FeedForward(cfg.dim, cfg.ff_mult, cfg.dtype, name=f"ff_{i}")(
                latents
            )
        out = Dense(cfg.output_dim, dtype=cfg.dtype, name="proj_out")(latents)
        out = LayerNorm(LN_EPS, name="norm_out")(out)
        return out.reshape(*lead, cfg.num_latents, cfg.output_dim)


def init_shapes(cfg: CIMConfig, tokens: int = 229) -> Any:
    """Params tree of ShapeDtypeStructs (`jax.eval_shape`, nothing allocated)."""
    x = jax.ShapeDtypeStruct((1, tokens, cfg.embed_dim), jnp.float32)
    return jax.eval_shape(lambda x: CIM(cfg).init(jax.random.key(0), x), x)["params"]


def param_count(cfg: CIMConfig) -> int:
    return sum(math.prod(p.shape) for p in jax.tree.leaves(init_shapes(cfg)))
