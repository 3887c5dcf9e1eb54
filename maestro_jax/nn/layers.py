"""Norms with explicit eps, exact GELU, GEGLU and sinusoidal timestep embeddings.

Every eps is a required argument: the originals use 1e-5 (torch default) or 1e-6 in specific
places, while Flax defaults to 1e-6 (docs/models.md, "Conventions" > "Flax defaults that differ from PyTorch"). Statistics are
always computed in float32 with the two-pass variance, like torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype | type


def gelu_exact(x: jax.Array) -> jax.Array:
    """GELU with erf (torch `nn.GELU()` default). Flax/JAX default to the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


def layer_norm(x: jax.Array, scale, bias, eps: float) -> jax.Array:
    """LayerNorm over the last axis, float32 statistics, output in x's dtype."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


def group_norm(
    x: jax.Array, num_groups: int, scale, bias, eps: float, reduce_axes: Sequence[int] | None = None
) -> jax.Array:
    """GroupNorm on a channels-last array.

    Args:
      x: [B, ..., C]. Statistics pool over `reduce_axes` (default: every axis between the batch
        axis and the channel axis) and over the C // num_groups channels of each group.
      reduce_axes: the non-channel axes to pool over. VideoCrafter's temporal modules pool over
        frames too: pass x as [B, F, H, W, C] with the default axes (1, 2, 3).
    """
    c = x.shape[-1]
    if c % num_groups:
        raise ValueError(f"GroupNorm: {c} channels are not divisible into {num_groups} groups")
    xf = x.astype(jnp.float32)
    xg = xf.reshape(*x.shape[:-1], num_groups, c // num_groups)
    if reduce_axes is None:
        reduce_axes = tuple(range(1, x.ndim - 1))
    axes = tuple(reduce_axes) + (x.ndim,)  # + the within-group channel axis
    mean = jnp.mean(xg, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
    y = ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with a required eps (params `scale`, `bias`, float32)."""

    eps: float
    use_bias: bool = True
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = (
            self.param("scale", nn.initializers.ones, (d,), jnp.float32) if self.use_scale else None
        )
        bias = (
            self.param("bias", nn.initializers.zeros, (d,), jnp.float32) if self.use_bias else None
        )
        return layer_norm(x, scale, bias, self.eps)


class GroupNorm(nn.Module):
    """GroupNorm with a required eps, channels-last; see `group_norm` for `reduce_axes`."""

    eps: float
    num_groups: int = 32
    reduce_axes: tuple[int, ...] | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return group_norm(x, self.num_groups, scale, bias, self.eps, self.reduce_axes)


class Dense(nn.Dense):
    """nn.Dense with float32 params and the compute dtype set by the caller.

    `precision` defaults to HIGHEST so float32 parity runs are exact on every backend (TPU/GPU
    would otherwise use bf16/TF32 passes); bf16 compute is unaffected.
    """

    param_dtype: Dtype = jnp.float32
    precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST


class GEGLU(nn.Module):
    """GEGLU feed-forward input: `proj` Linear(C, 2*inner); first half value, second half gate.

    value * gelu_exact(gate), as in LDM/VideoCrafter `GEGLU` (exact erf GELU).
    """

    inner: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Dense(2 * self.inner, dtype=self.dtype, name="proj")(x)
        value, gate = jnp.split(h, 2, axis=-1)
        return value * gelu_exact(gate)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal embedding [cos, sin] of (possibly fractional) timesteps, as LDM computes it.

    freqs = exp(-ln(max_period) * i / half), args = float32(t) * freqs, output [cos(args), sin(args)]
    (cos first; diffusers flip_sin_to_cos=True, shift 0). Computed in float32 in the original's
    order so that t = 981 rounds the same way.

    Args:
      t: [B] timesteps (int or float).
    Returns:
      [B, dim] float32.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
    return emb
