"""One attention dispatcher for every model, layout [B, T, heads, head_dim].

Implementations:
- `xla`: einsum + float32 softmax; runs everywhere and is the parity reference.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` on NVIDIA GPUs when the shapes
  and dtype allow (bf16/fp16, head_dim a multiple of 8 up to 128, no custom bias edits). When it
  cannot run, it falls back to `xla` with a warning, once per reason: it never silently differs.
- `splash`: reserved for TPU splash attention through `jax.shard_map` (not written yet: it runs
  `xla` with a warning).

Attention *edits* (Attention Mosaic) do not live here: a cross-attention layer that receives an
`AttnEdit` hands it the queries and its key/value projections (see `AttnEdit`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Protocol

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn", "splash")
_log = logging.getLogger(__name__)


@functools.cache
def _warn_once(msg: str) -> None:
    _log.warning(msg)


def split_heads(x: jax.Array, heads: int) -> jax.Array:
    """[B, T, heads*dh] -> [B, T, heads, dh]."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def merge_heads(x: jax.Array) -> jax.Array:
    """[B, T, heads, dh] -> [B, T, heads*dh]."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def attention_logits(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """Scaled logits in float32, [B, heads, Tq, Tk], with HIGHEST matmul precision."""
    return (
        jnp.einsum(
            "bqhd,bkhd->bhqk",
            q,
            k,
            preferred_element_type=jnp.float32,
            precision=jax.lax.Precision.HIGHEST,
        )
        * scale
    )


def attend_with_logits(logits: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(logits) @ v. logits [B, heads, Tq, Tk] (float32), v [B, Tk, heads, dh]."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", p, v, precision=jax.lax.Precision.HIGHEST)


def _xla(q, k, v, scale, bias):
    logits = attention_logits(q, k, scale)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    return attend_with_logits(logits, v)


def _cudnn_reason(q, k, v, bias) -> str | None:
    if jax.default_backend() != "gpu":
        return f"backend is {jax.default_backend()}"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"dtype {q.dtype} (cuDNN fused attention needs bf16/fp16)"
    dh = q.shape[-1]
    if dh % 8 or dh > 128:
        return f"head_dim {dh}"
    if bias is not None:
        return "an additive bias"
    return None


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    scale: float | None = None,
    bias: jax.Array | None = None,
    impl: str = "xla",
) -> jax.Array:
    """softmax(q k^T * scale + bias) v with a float32 softmax.

    Args:
      q: [B, Tq, H, D]; k, v: [B, Tk, H, D].
      scale: defaults to D ** -0.5.
      bias: optional additive logits bias broadcastable to [B, H, Tq, Tk].
      impl: one of `IMPLS`.
    Returns:
      [B, Tq, H, D] in q's dtype.
    """
    if impl not in IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {IMPLS}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if impl == "cudnn":
        reason = _cudnn_reason(q, k, v, bias)
        if reason is None:
            return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
        _warn_once(f"cudnn attention unavailable ({reason}); falling back to xla")
    elif impl == "splash":
        # The TPU splash kernel (through jax.shard_map) belongs to the performance work (issue
        # 10) and is not written yet: same numbers through xla, with a warning, never a crash.
        _warn_once("splash attention is not implemented yet; using xla (same result, slower)")
    return _xla(q, k, v, scale, bias)


class AttnEdit(Protocol):
    """An edit of a cross-attention layer (Attention Mosaic), passed down the UNet explicitly.

    A spatial cross-attention layer that receives an edit calls it instead of plain attention:

        out = edit(q, context, project_kv, scale=scale, hw=(h, w))

    q: [B, h*w, heads, dh] queries of this layer; context: [B, L, Dc] the layer's context;
    project_kv(ctx) maps any [..., L, Dc] context to (k, v), each [..., L, heads, dh], with this
    layer's own to_k/to_v; hw: the spatial size of this layer's tokens. Returns [B, h*w, heads, dh].
    Implementations are pytrees (flax.struct dataclasses) so they pass through jit and scan.
    """

    def __call__(
        self,
        q: jax.Array,
        context: jax.Array,
        project_kv: Any,
        *,
        scale: float,
        hw: tuple[int, int],
    ) -> jax.Array: ...
