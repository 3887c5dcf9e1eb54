"""Conditioning contexts of Attention Mosaic (paper Sec. 3.3): the CIM's audio tokens written into
the null text embedding.

C_merge [F, 77, D] holds every source's N_Q tokens side by side (vanilla conditioning and Object
Locating); C_sep^i [F, 77, D] holds source i's alone (Mosaic Denoising). Frame f uses the audio
segment floor(f * S / F).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

CONTEXT_LEN = 77


def context_capacity(n_q: int, token_offset: int = 1, length: int = CONTEXT_LEN) -> int:
    """How many sources fit in one context: floor((length - token_offset) / n_q)."""
    return (length - token_offset) // n_q


def segment_of_frame(num_frames: int, num_segments: int) -> np.ndarray:
    """Audio segment used by each frame: floor(f * S / F), [F] int."""
    return (np.arange(num_frames) * num_segments) // num_frames


def build_contexts(
    null_emb: jax.Array,
    audio_tokens: jax.Array,
    num_frames: int,
    token_offset: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Per-frame conditioning contexts with the audio tokens written into the null embedding.

    Args:
      null_emb: [L, D] text embedding of "" (L = 77).
      audio_tokens: [N_A, S, N_Q, D] CIM tokens per source and 2 s segment.
      num_frames: F; frame f uses segment floor(f * S / F).
      token_offset: o, first audio column (1 in the release: the start token stays).
    Returns:
      C_merge [F, L, D]: source i at columns [o + i*N_Q, o + (i+1)*N_Q) (i from 0);
      C_sep [N_A, F, L, D]: source i at columns [o, o + N_Q), null embedding elsewhere.
    """
    null_emb = jnp.asarray(null_emb)
    audio_tokens = jnp.asarray(audio_tokens)
    if null_emb.ndim != 2:
        raise ValueError(f"null_emb must be [L, D], got shape {null_emb.shape}")
    if audio_tokens.ndim != 4:
        raise ValueError(f"audio_tokens must be [N_A, S, N_Q, D], got shape {audio_tokens.shape}")
    length, dim = null_emb.shape
    n_a, n_seg, n_q, d_a = audio_tokens.shape
    if d_a != dim:
        raise ValueError(f"audio token width {d_a} != null embedding width {dim}")
    if num_frames < 1 or n_seg < 1 or n_a < 1 or n_q < 1:
        raise ValueError(
            f"need num_frames, S, N_A, N_Q >= 1, got {num_frames}, {n_seg}, {n_a}, {n_q}"
        )
    if not 0 <= token_offset < length:
        raise ValueError(f"token_offset {token_offset} must lie in [0, {length})")
    cap = context_capacity(n_q, token_offset, length)
    if n_a > cap:
        raise ValueError(
            f"{n_a} audio sources do not fit in a {length}-token context: with N_Q={n_q} and "
            f"token_offset={token_offset} at most floor(({length} - {token_offset}) / {n_q}) = "
            f"{cap} sources fit"
        )
    dtype = jnp.result_type(null_emb.dtype, audio_tokens.dtype)
    per_frame = audio_tokens.astype(dtype)[:, segment_of_frame(num_frames, n_seg)]  # [N,F,NQ,D]
    base = jnp.broadcast_to(null_emb.astype(dtype), (num_frames, length, dim))
    merged = jnp.transpose(per_frame, (1, 0, 2, 3)).reshape(num_frames, n_a * n_q, dim)
    c_merge = base.at[:, token_offset : token_offset + n_a * n_q].set(merged)
    c_sep = (
        jnp.broadcast_to(base, (n_a, num_frames, length, dim))
        .at[:, :, token_offset : token_offset + n_q]
        .set(per_frame)
    )
    return c_merge, c_sep


def column_sources(
    num_sources: int, n_q: int, token_offset: int = 1, length: int = CONTEXT_LEN
) -> np.ndarray:
    """[L] int: the source whose audio tokens sit in each C_merge column, num_sources if none."""
    cols = np.full(length, num_sources, np.int32)
    for i in range(num_sources):
        cols[token_offset + i * n_q : token_offset + (i + 1) * n_q] = i
    return cols
