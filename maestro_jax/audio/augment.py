"""SpecAugment (Park et al. 2019) of ImageBind log-mel clips: the augmented view A' of the CIM's
training loss (paper Sec. 3.2, Eq. 2). Pure, jittable JAX.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# ==================================================================================================
# SpecAugment (docs/method.md, "Training the CIM": A' = SpecAugment(A))
# ==================================================================================================


def _time_warp(u: jax.Array, x: jax.Array, w: int) -> jax.Array:
    """Piecewise-linear time warp of x [M, T] (Park et al. 2019) from two uniforms u [2]: an
    anchor w0 in [w + 1, T - w - 2] moves to w0 + delta, delta in [-w, w]; both sides are
    stretched linearly (linear interpolation along time) and the ends stay fixed."""
    t = x.shape[-1]
    w0 = (w + 1) + jnp.floor(u[0] * (t - 2 * w - 2))
    dest = w0 + jnp.floor(u[1] * (2 * w + 1)) - w
    last = jnp.float32(t - 1)
    tt = jnp.arange(t, dtype=jnp.float32)
    src = jnp.where(tt <= dest, tt * w0 / dest, w0 + (tt - dest) * (last - w0) / (last - dest))
    src = jnp.clip(src, 0.0, last)
    lo = jnp.floor(src).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, t - 1)
    frac = src - lo.astype(jnp.float32)
    return x[:, lo] * (1.0 - frac) + x[:, hi] * frac


def _band_mask(u: jax.Array, size: int, width: int) -> jax.Array:
    """torchaudio `mask_along_axis` sampling from uniforms u [count, 2]: per band, v = u0 * width,
    start = floor(u1 * (size - v)), masked [start, start + floor(v)). Returns bool [size]."""
    v = u[:, 0] * width
    start = jnp.floor(u[:, 1] * (size - v))
    end = start + jnp.floor(v)
    idx = jnp.arange(size)[None, :]
    return jnp.any((idx >= start[:, None]) & (idx < end[:, None]), axis=0)


@functools.partial(jax.jit, static_argnames=("shape",))
def _uniforms(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    # Its own jit, cached by shape only: threefry takes ~1 s to compile on CPU, so SpecAugment
    # configurations with the same number of draws share it.
    return jax.random.uniform(key, shape, jnp.float32)


@functools.partial(
    jax.jit,
    static_argnames=(
        "time_warp",
        "freq_masks",
        "freq_width",
        "time_masks",
        "time_width",
        "mask_value",
    ),
)
def _spec_augment_apply(
    u_all: jax.Array,
    flat: jax.Array,
    *,
    time_warp: int,
    freq_masks: int,
    freq_width: int,
    time_masks: int,
    time_width: int,
    mask_value: str | float,
) -> jax.Array:
    m, t = flat.shape[-2:]

    def one(u, x):
        if time_warp > 0 and t > 2 * time_warp + 2:
            x = _time_warp(u[:2], x, time_warp)
        fill = jnp.mean(x) if mask_value == "mean" else jnp.asarray(mask_value, x.dtype)
        mask = jnp.zeros((m, t), bool)
        if freq_masks > 0 and freq_width > 0:
            uf = u[2 : 2 + 2 * freq_masks].reshape(freq_masks, 2)
            mask = mask | _band_mask(uf, m, freq_width)[:, None]
        if time_masks > 0 and time_width > 0:
            ut = u[2 + 2 * freq_masks :].reshape(time_masks, 2)
            mask = mask | _band_mask(ut, t, time_width)[None, :]
        return jnp.where(mask, fill.astype(x.dtype), x)

    return jax.vmap(one)(u_all, flat)


def spec_augment(
    key: jax.Array,
    mel: jax.Array,
    *,
    time_warp: int = 20,
    freq_masks: int = 2,
    freq_width: int = 27,
    time_masks: int = 2,
    time_width: int = 40,
    mask_value: str | float = "mean",
) -> jax.Array:
    """SpecAugment of log-mel spectrograms [..., M, T] (M mel bins, T frames): a pure function
    of `key` (same key, same output; jittable, the options are static); every leading index gets
    its own draw.

    Order: time warp (if T > 2 * time_warp + 2; anchor and shift in [-W, W] frames, linear
    interpolation along time), then `freq_masks` frequency bands of width uniform in
    [0, freq_width) and `time_masks` time bands of width in [0, time_width) (torchaudio
    `FrequencyMasking`/`TimeMasking` sampling). Masked cells are set to the example's mean after
    warping (torchaudio `SpecAugment(zero_masking=False)`, its default: on the normalised
    ImageBind input 0.0 is not silence, the mean is neutral) or to the number `mask_value`.
    Defaults: the LibriSpeech policy's F = 27, mF = 2, mT = 2, with W = 20 and T = 40 frames
    sized for 2 s / 204-frame clips (the paper gives no values).
    """
    mel = jnp.asarray(mel)
    if mel.ndim < 2:
        raise ValueError(f"spec_augment expects [..., M, T], got shape {mel.shape}")
    if mask_value != "mean" and not isinstance(mask_value, int | float):
        raise ValueError(f"mask_value must be 'mean' or a number, got {mask_value!r}")
    lead = mel.shape[:-2]
    m, t = mel.shape[-2:]
    flat = mel.reshape((-1, m, t))
    # Per example: [warp 2 | freq masks 2 * mF | time masks 2 * mT] uniforms.
    u_all = _uniforms(key, (flat.shape[0], 2 + 2 * freq_masks + 2 * time_masks))
    out = _spec_augment_apply(
        u_all,
        flat,
        time_warp=time_warp,
        freq_masks=freq_masks,
        freq_width=freq_width,
        time_masks=time_masks,
        time_width=time_width,
        mask_value=mask_value,
    )
    return out.reshape(lead + (m, t))
