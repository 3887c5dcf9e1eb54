"""One attention dispatcher for every model, layout [B, T, heads, head_dim].

Implementations:
- `xla`: einsum + float32 softmax; runs everywhere and is the parity reference.
- `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` on NVIDIA GPUs when the shapes
  and dtype allow (bf16/fp16, head_dim a multiple of 8 up to 128, no custom bias edits). When it
  cannot run, it falls back to `xla` with a warning, once per reason: it never silently differs.
- `splash`: the Pallas TPU splash (flash) attention kernel, through `jax.shard_map` under a mesh
  (`maestro_jax.nn.splash`: padding, block sizes, sharding). On other backends the same kernel
  runs in Pallas interpret mode (slow: for tests). With a bias it falls back to `xla` with a
  warning, once per reason.
- `auto`: chosen per call from the backend and the shapes (`choose_impl`): `splash` on TPU when
  there is no bias and at least `splash.AUTO_MIN_KV` (128) keys, `cudnn` on GPU when it can run,
  `xla` otherwise. At VideoCrafter2's full size on TPU: spatial self-attention at 2560, 640 and
  160 tokens -> splash; at 40 tokens (5x8), temporal attention (16 frames) and cross-attention
  (77 keys) -> xla. On GPU in bf16/fp16: cudnn everywhere; in float32 and on CPU: xla, so
  'auto' is bit-identical to 'xla' on CPU. Each platform's choice is staged with
  `lax.platform_dependent`, so a program exported from a CPU host for TPU (`jax.export`) holds
  the splash kernel. Model configs keep 'xla' as their default (the parity reference, the same
  numbers on every backend); 'auto' is opt-in.
- `chunked`: `xla` with the queries taken `CHUNK_LOGITS_BYTES` of float32 logits at a time
  (`lax.map` over query chunks) when one call's logits would be larger; below that it is `xla`
  itself. Each query row's softmax is over all keys either way, so only the working memory
  changes: on a CPU, VideoCrafter2's first-level self-attention at 320x512 (16 frames, CFG) has
  4.2 GB of logits per layer.

Attention *edits* (Attention Mosaic) do not live here: a cross-attention layer that receives an
`AttnEdit` hands it the queries and its key/value projections (see `AttnEdit`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from maestro_jax.nn import splash

IMPLS = ("xla", "cudnn", "splash", "chunked", "auto")
CHUNK_LOGITS_BYTES = 1 << 29  # 'chunked': float32 logits of one query chunk, at most
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


def _chunked(q, k, v, scale, bias):
    """`_xla` over query chunks of at most `CHUNK_LOGITS_BYTES` of logits (a divisor of Tq, so
    no padding), one chunk at a time; `_xla` itself when the whole call fits."""
    b, tq, h, d = q.shape
    rows = max(1, CHUNK_LOGITS_BYTES // (4 * b * h * k.shape[1]))
    if rows >= tq:
        return _xla(q, k, v, scale, bias)
    size = max(c for c in range(1, rows + 1) if tq % c == 0)
    n = tq // size
    qs = jnp.moveaxis(q.reshape(b, n, size, h, d), 1, 0)  # [n, B, size, H, D]
    if bias is not None and bias.ndim >= 2 and bias.shape[-2] == tq:
        bias = jnp.moveaxis(bias.reshape(*bias.shape[:-2], n, size, bias.shape[-1]), -3, 0)
        out = jax.lax.map(lambda qb: _xla(qb[0], k, v, scale, qb[1]), (qs, bias))
    else:
        out = jax.lax.map(lambda qc: _xla(qc, k, v, scale, bias), qs)
    return jnp.moveaxis(out, 0, 1).reshape(b, tq, h, d)


def _cudnn_reason(q, k, v, bias, backend: str | None = None) -> str | None:
    backend = backend or jax.default_backend()
    if backend != "gpu":
        return f"backend is {backend}"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"dtype {q.dtype} (cuDNN fused attention needs bf16/fp16)"
    dh = q.shape[-1]
    if dh % 8 or dh > 128:
        return f"head_dim {dh}"
    if bias is not None:
        return "an additive bias"
    return None


def choose_impl(impl: str, q, k, v, bias=None, backend: str | None = None) -> str:
    """The implementation `dot_product_attention` runs for `impl` ('auto' resolved; the others
    as given). q, k, v: arrays or ShapeDtypeStructs [B, T, H, D]; backend defaults to JAX's."""
    if impl not in IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {IMPLS}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if (
        backend == "tpu"
        and k.shape[1] >= splash.AUTO_MIN_KV
        and splash.unsupported_reason(q, k, v, bias) is None
    ):
        return "splash"
    if backend == "gpu" and _cudnn_reason(q, k, v, bias, backend) is None:
        return "cudnn"
    return "xla"


def effective_impl(impl: str, q, k, v, bias=None, backend: str | None = None) -> str:
    """What runs on `backend` for `impl`: 'auto' resolved (`choose_impl`), and 'splash' /
    'cudnn' where they cannot run the `xla` they fall back to."""
    impl = choose_impl(impl, q, k, v, bias, backend)
    backend = backend or jax.default_backend()
    if impl == "splash" and splash.unsupported_reason(q, k, v, bias) is not None:
        return "xla"
    if impl == "cudnn" and _cudnn_reason(q, k, v, bias, backend) is not None:
        return "xla"
    return impl


@dataclasses.dataclass(frozen=True)
class AttentionCall:
    """One `dot_product_attention` call seen while tracing (`recorded_calls`)."""

    impl: str
    q: jax.ShapeDtypeStruct
    k: jax.ShapeDtypeStruct
    has_bias: bool

    def resolved(self, backend: str) -> str:
        bias = jax.ShapeDtypeStruct((1,), jnp.float32) if self.has_bias else None
        return effective_impl(self.impl, self.q, self.k, self.k, bias, backend)


_RECORDERS: list[list[AttentionCall]] = []


@contextlib.contextmanager
def recorded_calls() -> Iterator[list[AttentionCall]]:
    """Collect every `dot_product_attention` call traced inside the block (shapes as traced:
    per example under vmap), e.g. to report which implementation each site gets on a platform
    without running it."""
    calls: list[AttentionCall] = []
    _RECORDERS.append(calls)
    try:
        yield calls
    finally:
        _RECORDERS.remove(calls)


@functools.cache
def cudnn_traceable() -> bool:
    """Whether this host can trace cuDNN fused attention (JAX checks for cuDNN while tracing
    it, so a CPU-only host cannot stage it even for a CUDA export)."""
    x = jax.ShapeDtypeStruct((1, 8, 1, 64), jnp.bfloat16)
    try:
        jax.eval_shape(lambda q: jax.nn.dot_product_attention(q, q, q, implementation="cudnn"), x)
    except Exception:  # RuntimeError("cuDNN is not detected.") and kin
        return False
    return True


def _auto(q, k, v, scale, bias):
    """'auto' as one program: the implementation of each platform (`choose_impl`) staged with
    `lax.platform_dependent`, so only the branch of the platform the program is lowered for
    reaches the compiler (on CPU: `_xla` alone, bitwise; `jax.export(..., platforms=['tpu'])`
    from any host: the splash kernel where a TPU runs it)."""
    on_tpu = choose_impl("auto", q, k, v, bias, backend="tpu")
    on_gpu = choose_impl("auto", q, k, v, bias, backend="gpu")
    branches = {}
    if on_tpu == "splash":
        branches["tpu"] = lambda q, k, v: splash.splash_attention(
            q, k, v, scale=scale, interpret=False
        )
    if on_gpu == "cudnn":
        if cudnn_traceable():
            branches["cuda"] = lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, scale=scale, implementation="cudnn"
            )
        else:
            _warn_once("cuDNN is not available on this host: 'auto' stages xla for CUDA")
    if not branches:
        return _xla(q, k, v, scale, bias)
    return jax.lax.platform_dependent(
        q, k, v, default=lambda q, k, v: _xla(q, k, v, scale, None), **branches
    )


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
      impl: one of `IMPLS` ('auto': see `choose_impl`).
    Returns:
      [B, Tq, H, D] in q's dtype.
    """
    if impl not in IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {IMPLS}")
    for calls in _RECORDERS:
        sds = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
        calls.append(AttentionCall(impl, sds(q), sds(k), bias is not None))
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if impl == "auto":
        return _auto(q, k, v, scale, bias)
    if impl == "cudnn":
        reason = _cudnn_reason(q, k, v, bias)
        if reason is None:
            return jax.nn.dot_product_attention(q, k, v, scale=scale, implementation="cudnn")
        _warn_once(f"cudnn attention unavailable ({reason}); falling back to xla")
    elif impl == "splash":
        reason = splash.unsupported_reason(q, k, v, bias)
        if reason is None:
            if jax.default_backend() != "tpu":
                _warn_once(
                    f"splash attention on {jax.default_backend()} runs the Pallas kernel in "
                    "interpret mode (slow; meant for tests)"
                )
            return splash.splash_attention(q, k, v, scale=scale)
        _warn_once(f"splash attention unavailable ({reason}); falling back to xla")
    elif impl == "chunked":
        return _chunked(q, k, v, scale, bias)
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
