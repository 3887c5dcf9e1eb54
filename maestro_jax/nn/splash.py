"""Splash attention (the Pallas TPU flash-attention kernel) behind `dot_product_attention`.

The kernel is `jax.experimental.pallas.ops.tpu.splash_attention` (the same module and API in
JAX 0.10.2 and 0.11.x). Around it:

- Layout: the kernel takes one batch element as [heads, T, head_dim]; [B, T, H, D] is
  transposed to [B, H, T, D] and the kernel is `jax.vmap`-ed over B.
- Scale: the kernel applies none; q is multiplied by `scale` (in float32, then cast back; for
  head_dim 64 the scale 1/8 is a power of two, so this is exact in every dtype).
- Padding: the kv length is padded with zeros to a multiple of 128 (the kernel's lane width,
  its smallest kv block) and the padded keys are masked out by a static mask, so the result is
  that of unpadded attention; q is padded to its block multiple (16 when one block holds it all,
  else 128) and the padded query rows are sliced off. See `plan`.
- Numerics: logits, softmax statistics and the output accumulator are float32 in the kernel
  whatever the input dtype (float32 or bfloat16); the output is cast to q's dtype.
- Backend: `jax.lax.platform_dependent` lowers the compiled Mosaic kernel on TPU and the same
  kernel in Pallas interpret mode anywhere else, so CPU tests run this code path and a TPU
  export (`jax.export(..., platforms=['tpu'])`) from a CPU host holds the real kernel.
- Sharding: under a mesh set with `jax.set_mesh` (read back with
  `jax.sharding.get_abstract_mesh`), the kernel runs inside `jax.shard_map`: the batch is split
  over the mesh's batch axes ('data', 'fsdp') that divide it, the heads over the axes left
  ('model', 'tensor', 'fsdp') that divide them; other axes see a replicated copy. A Mosaic
  kernel cannot be partitioned by XLA, so a multi-device TPU program must set the mesh (the
  deprecated `with mesh:` context is not seen). Inside a `shard_map` the manual axes are
  already split (the kernel sees the local shard; the mesh's other axes are handled as above);
  that shard_map needs check_vma=False (else: XLA, with a warning).

Training works too: the kernel's backward pass uses the same block sizes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

LANES = 128  # TPU lane width: kv blocks are multiples of it
MAX_BLOCK = 512  # largest q / kv block
Q_SUBLANES = 16  # a q that fits one block is padded to this multiple (bf16 sublane tile)
# 'auto' picks splash on TPU only from this many keys on: shorter kv (the 16-frame temporal
# attention, the 77-token cross-attention, the 5x8 level) would be padded to 128 lanes, i.e.
# several times the work of XLA's einsum, while their logits are small enough for XLA anyway.
# An unmeasured starting point: a TPU benchmark should set it.
AUTO_MIN_KV = 128
BATCH_AXES = ("data", "fsdp")
HEAD_AXES = ("model", "tensor", "fsdp")
DTYPES = (jnp.float32, jnp.bfloat16)


@functools.cache
def _kernel_module() -> tuple[Any, str | None]:
    """(splash_attention module, None) or (None, why it cannot be imported)."""
    try:
        from jax.experimental.pallas.ops.tpu import splash_attention as sa
    except Exception as e:  # ImportError, or a jaxlib without Pallas TPU support
        return None, f"jax {jax.__version__} has no usable splash_attention module ({e})"
    missing = [
        n
        for n in ("make_splash_mha", "BlockSizes", "MultiHeadMask", "FullMask", "NumpyMask")
        if not hasattr(sa, n)
    ]
    if missing:
        return None, f"jax {jax.__version__}'s splash_attention lacks {', '.join(missing)}"
    return sa, None


def _varying_axes(x) -> frozenset:
    """Mesh axes x varies over inside a `shard_map` with check_vma=True (empty elsewhere and for
    ShapeDtypeStructs): `typeof(x).mat.varying` in JAX 0.10 / 0.11, `.vma` before."""
    if not isinstance(x, jax.Array):
        return frozenset()
    t = jax.typeof(x)
    mat = getattr(t, "mat", None)
    return frozenset((getattr(mat, "varying", None) if mat is not None else None)
                     or getattr(t, "vma", None) or ())  # fmt: skip


def unsupported_reason(q, k, v, bias) -> str | None:
    """Why splash cannot compute this attention (None: it can). Shapes [B, T, H, D]."""
    if bias is not None:
        return "an additive bias (the splash kernel takes no logits bias)"
    _, why = _kernel_module()
    if why is not None:
        return why
    if not (q.dtype == k.dtype == v.dtype) or jnp.dtype(q.dtype) not in DTYPES:
        return f"dtypes q {q.dtype}, k {k.dtype}, v {v.dtype} (splash takes float32 or bfloat16)"
    if q.ndim != 4 or k.shape[:3] != v.shape[:3] or q.shape[2] != k.shape[2]:
        return f"shapes q {q.shape}, k {k.shape}, v {v.shape}"
    if q.shape[1] == 0 or k.shape[1] == 0:
        return "an empty sequence"
    if any(_varying_axes(x) for x in (q, k, v)):
        return "inside a jax.shard_map with check_vma=True (Pallas kernels need check_vma=False)"
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Padded lengths and block sizes of one (q length, kv length)."""

    q_len: int
    kv_len: int
    q_pad: int
    kv_pad: int
    block_q: int
    block_kv: int


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _largest_block(n: int) -> int:
    """The largest multiple of LANES that divides n (itself a multiple) and is <= MAX_BLOCK."""
    return max(b for b in range(LANES, MAX_BLOCK + 1, LANES) if n % b == 0)


def plan(q_len: int, kv_len: int) -> Plan:
    """Block sizes that fit the sequence, padding as little as the kernel allows.

    kv: padded to a multiple of 128; blocks the largest multiple of 128 (<= 512) dividing it.
    q: up to 512 tokens, one block of the length padded to 16; longer, padded to a multiple of
    128 with blocks as kv's. VideoCrafter2 at 320x512: 2560 tokens -> blocks 512 x 512, no
    padding; 640 -> 128 x 128, none; 160 -> q 160 in one block, kv 256; 40 -> q 48, kv 128;
    16 frames -> q 16, kv 128; 77 context tokens -> kv 128.
    """
    kv_pad = _round_up(kv_len, LANES)
    if q_len <= MAX_BLOCK:
        q_pad = _round_up(q_len, Q_SUBLANES)
        block_q = q_pad
    else:
        q_pad = _round_up(q_len, LANES)
        block_q = _largest_block(q_pad)
    return Plan(q_len, kv_len, q_pad, kv_pad, block_q, _largest_block(kv_pad))


@functools.lru_cache(maxsize=32)
def _key_padding_mask(p: Plan) -> np.ndarray:
    m = np.zeros((p.q_pad, p.kv_pad), np.bool_)
    m[:, : p.kv_len] = True
    m.flags.writeable = False
    return m


def _make_kernel(p: Plan, heads: int, interpret: bool):
    sa, _ = _kernel_module()
    if p.kv_pad == p.kv_len:
        head_mask = sa.FullMask((p.q_pad, p.kv_pad))
    else:
        head_mask = sa.NumpyMask(_key_padding_mask(p))
    bq, bkv = p.block_q, p.block_kv
    blocks = sa.BlockSizes(
        block_q=bq,
        block_kv=bkv,
        block_kv_compute=bkv,
        block_q_dkv=bq,
        block_kv_dkv=bkv,
        block_kv_dkv_compute=bkv,
        block_q_dq=bq,
        block_kv_dq=bkv,
    )
    return sa.make_splash_mha(
        sa.MultiHeadMask([head_mask] * heads),
        block_sizes=blocks,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _pad_time(x: jax.Array, length: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _local(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """Splash attention on unsharded (or per-shard) arrays: [B, T, H, D] in and out."""
    heads = q.shape[2]
    p = plan(q.shape[1], k.shape[1])
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
    # [B, T, H, D] -> [B, H, T, D], the kernel's per-batch [H, T, D]
    q, k, v = (
        _pad_time(x, n).transpose(0, 2, 1, 3)
        for x, n in ((q, p.q_pad), (k, p.kv_pad), (v, p.kv_pad))
    )

    def run(interpret):
        def f(q, k, v):
            return jax.vmap(_make_kernel(p, heads, interpret))(q, k, v)

        return f

    out = jax.lax.platform_dependent(q, k, v, tpu=run(False), default=run(True))
    return out.transpose(0, 2, 1, 3)[:, : p.q_len]


def mesh_axes(
    axis_sizes: dict[str, int], batch: int, heads: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(batch axes, head axes) of a mesh {name: size} for `batch` rows and `heads` heads.

    Greedy, in the order of BATCH_AXES then HEAD_AXES: an axis joins when the product of the
    sizes taken so far still divides the dimension. Size-1 axes are left out."""

    def take(names, n, used):
        out, prod = [], 1
        for a in names:
            size = axis_sizes.get(a, 1)
            if a in used or size <= 1 or n % (prod * size):
                continue
            out.append(a)
            prod *= size
        return tuple(out)

    b = take(BATCH_AXES, batch, ())
    return b, take(HEAD_AXES, heads, b)


def _spec_entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, scale: float) -> jax.Array:
    """softmax(q k^T * scale) v by the splash kernel; q [B, Tq, H, D], k/v [B, Tk, H, D].

    Call `unsupported_reason` first (`dot_product_attention` does)."""
    mesh = jax.sharding.get_abstract_mesh()
    sizes = {} if mesh.empty else dict(zip(mesh.axis_names, mesh.axis_sizes))
    for a in mesh.manual_axes:  # inside a shard_map: those are split already
        sizes.pop(a, None)
    if math.prod(sizes.values()) == 1:
        return _local(q, k, v, scale=scale)
    b_axes, h_axes = mesh_axes(sizes, q.shape[0], q.shape[2])
    spec = P(_spec_entry(b_axes), None, _spec_entry(h_axes), None)
    f = jax.shard_map(
        functools.partial(_local, scale=scale),
        mesh=mesh,
        in_specs=(spec, spec, spec),
        out_specs=spec,
        axis_names=frozenset(sizes),
        check_vma=False,
    )
    return f(q, k, v)
