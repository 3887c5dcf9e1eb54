"""STFT / ISTFT exactly as AudioSep's ResUNet30 configures torchlibrosa, on `jnp.fft`.

torchlibrosa computes both transforms as Conv1d layers holding windowed DFT matrices (12.59 M
fixed values in the checkpoint); here they are an rfft / irfft with the same framing, window and
normalisation (docs/models.md, "AudioSep" > "STFT"; fixture `stft/`):

- n_fft = win = 2048, hop 320, **periodic** Hann (librosa `get_window('hann', 2048,
  fftbins=True)` = `torch.hann_window(2048)`), center with **reflect** padding of n_fft // 2.
  Frames T = 1 + N // hop, bins F = n_fft // 2 + 1 = 1025.
- ISTFT: irfft (the imaginary parts of DC and Nyquist are ignored, as in any irfft), window,
  overlap-add, divide by the overlap-added squared window clamped at 1e-11, drop the first
  n_fft // 2 samples and keep `length`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

N_FFT = 2048
HOP = 320
WSS_CLAMP = 1e-11  # torchlibrosa ISTFT: clamp of the overlap-added squared window
MAG_CLAMP = 1e-10  # AudioSep spectrogram_phase / magphase: clamp of re^2 + im^2


def hann_periodic(n: int) -> np.ndarray:
    """Periodic Hann window of length n (float64): 0.5 - 0.5 cos(2 pi k / n)."""
    k = np.arange(n, dtype=np.float64)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * k / n)


def num_frames(length: int, hop: int = HOP) -> int:
    """Frames of a centred STFT of `length` samples: 1 + length // hop."""
    return 1 + length // hop


def stft(x: jax.Array, n_fft: int = N_FFT, hop: int = HOP) -> tuple[jax.Array, jax.Array]:
    """Centred, reflect-padded STFT with a periodic Hann window.

    Args:
      x: [..., N] float waveform; N > n_fft // 2 (reflect padding needs it).
    Returns:
      (real, imag), each [..., T, n_fft // 2 + 1] float32 with T = 1 + N // hop.
    """
    n = x.shape[-1]
    pad = n_fft // 2
    if n <= pad:
        raise ValueError(f"STFT needs more than {pad} samples for reflect padding, got {n}")
    xf = x.astype(jnp.float32)
    widths = [(0, 0)] * (x.ndim - 1) + [(pad, pad)]
    xp = jnp.pad(xf, widths, mode="reflect")
    t = num_frames(n, hop)
    idx = np.arange(t)[:, None] * hop + np.arange(n_fft)[None, :]  # [T, n_fft], static
    frames = xp[..., idx] * jnp.asarray(hann_periodic(n_fft), jnp.float32)
    spec = jnp.fft.rfft(frames, n=n_fft, axis=-1)
    return jnp.real(spec).astype(jnp.float32), jnp.imag(spec).astype(jnp.float32)


def overlap_add(frames: jax.Array, hop: int) -> jax.Array:
    """Overlap-add [..., T, W] frames at stride `hop` -> [..., (T - 1) * hop + W].

    Each frame is zero-padded to a multiple of `hop` and cut into `hop`-long pieces; piece j of
    frame t lands on block t + j, so the sum is `ceil(W / hop)` shifted adds (no scatter).
    """
    *lead, t, w = frames.shape
    k = -(-w // hop)
    fr = jnp.pad(frames, [(0, 0)] * len(lead) + [(0, 0), (0, k * hop - w)])
    fr = fr.reshape(*lead, t, k, hop)
    out = jnp.zeros((*lead, t + k - 1, hop), frames.dtype)
    for j in range(k):
        out = out.at[..., j : j + t, :].add(fr[..., :, j, :])
    return out.reshape(*lead, (t + k - 1) * hop)[..., : (t - 1) * hop + w]


def istft(
    real: jax.Array, imag: jax.Array, length: int, n_fft: int = N_FFT, hop: int = HOP
) -> jax.Array:
    """Inverse of `stft` (torchlibrosa ISTFT / torch.istft with center=True, length=N).

    Args:
      real, imag: [..., T, n_fft // 2 + 1].
      length: N, the number of output samples.
    Returns:
      [..., N] float32.
    """
    t = real.shape[-2]
    if real.shape != imag.shape or real.shape[-1] != n_fft // 2 + 1:
        raise ValueError(f"istft wants real/imag [..., T, {n_fft // 2 + 1}], got {real.shape}")
    if (t - 1) * hop + n_fft // 2 < length:
        raise ValueError(f"{t} frames cannot give {length} samples at hop {hop}")
    spec = jax.lax.complex(real.astype(jnp.float32), imag.astype(jnp.float32))
    frames = jnp.fft.irfft(spec, n=n_fft, axis=-1).astype(jnp.float32)
    win = hann_periodic(n_fft)
    y = overlap_add(frames * jnp.asarray(win, jnp.float32), hop)
    # The squared-window sum depends only on T: computed once in numpy (float64 -> float32).
    wss = np.zeros((t - 1) * hop + n_fft)
    for i in range(t):
        wss[i * hop : i * hop + n_fft] += win**2
    wss = np.maximum(wss, WSS_CLAMP).astype(np.float32)
    y = y / jnp.asarray(wss)
    start = n_fft // 2
    return y[..., start : start + length]


def magphase_from_complex(
    real: jax.Array, imag: jax.Array, eps: float = MAG_CLAMP
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """AudioSep `spectrogram_phase`: mag = sqrt(clamp(re^2 + im^2, eps)), cos = re/mag,
    sin = im/mag."""
    mag = jnp.sqrt(jnp.maximum(real * real + imag * imag, eps))
    return mag, real / mag, imag / mag
