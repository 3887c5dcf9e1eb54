"""AudioSep's text-queried separator: ResUNet30 with additive FiLM, channels-last.

Follows `Audio-AGI/AudioSep@944583f` `models/resunet.py` + `models/base.py`
(docs/models.md, "AudioSep"; fixture `audiosep_resunet/`):

    mixture [Bm, N] --STFT--> |X|, cos, sin [Bm, T, 1025]
    |X| --bn0 (1025 bins as channels)--> zero-pad T to a multiple of 32, drop bin 1024
        --pre_conv 1x1--> [Bm, Tp, 1024, 32] --broadcast to the B queries-->
    6 x encoder (ConvBlockRes + avg-pool) -> conv_block7a -> 6 x decoder (ConvTranspose k=s,
    concat [up, skip], ConvBlockRes) -> after_conv 1x1 (3 mask channels)
    -> |M| = sigmoid(c0), angle(M) = angle(tanh c1, tanh c2)
    -> |Y| = relu(|X| |M|), angle(Y) = angle(X) + angle(M) --ISTFT--> [B, N]

Inside the UNet arrays are [B, T, F, C] (time, frequency, channels). Every BatchNorm runs in
inference mode with running statistics (eps 1e-5). **BatchNorm state**: `scale`/`bias` are in
the `params` collection, the running `mean`/`var` in the `batch_stats` collection (as in
`flax.linen.BatchNorm`), so the variables of a separator are `{'params', 'batch_stats'}` and
fine-tuning with `params` alone leaves the statistics untouched.

FiLM (`film.<block>-><sub>->betaK` in the checkpoint) is additive only: each Linear(512 -> C)
lives in the block it conditions (`encoder_block1/conv_block1/beta1`) and its output is broadcast
over T and F and added after the BatchNorm. The decoder blocks' `beta2` is computed (and sown for
inspection) but unused, exactly as in the original; their `bn2` is not built at all.

The mixture is transformed once and broadcast over queries: `mixture` may have batch 1 with a
condition batch of Q (several text queries of one file in one forward).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.models.stft import HOP, MAG_CLAMP, N_FFT, istft, magphase_from_complex, stft
from maestro_jax.nn.layers import Dense

BN_EPS = 1e-5  # torch BatchNorm2d default, AudioSep does not change it
LEAKY_SLOPE = 0.01  # F.leaky_relu_ default
SAMPLE_RATE = 32000
FULL_CHANNELS = (32, 64, 128, 256, 384, 384)  # ResUNet30_Base, hard-coded there
HIGHEST = jax.lax.Precision.HIGHEST


def leaky_relu(x: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, x, LEAKY_SLOPE * x)


BN_MOMENTUM = 0.1  # torch BatchNorm2d default: running = 0.9 running + 0.1 batch


class BatchNormInference(nn.Module):
    """BatchNorm with running statistics (torch `eval()`): (x - mean) / sqrt(var + eps) * scale
    + bias over the last axis. `scale`, `bias` in `params`; `mean`, `var` in `batch_stats`.

    Training (torch `train()`): when the caller makes `batch_stats` mutable
    (`apply(..., mutable=["batch_stats"])`), the batch's own mean and biased variance over every
    axis but the last normalise x, and the running statistics move towards the batch's (momentum
    0.1, unbiased variance), as torch does. Inference never passes it mutable."""

    eps: float = BN_EPS
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean_v = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        var_v = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        mean, var = mean_v.value, var_v.value
        if self.is_mutable_collection("batch_stats") and not self.is_initializing():
            xf = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            n = max(int(np.prod([x.shape[a] for a in axes])), 2)
            mean_v.value = (1 - BN_MOMENTUM) * mean_v.value + BN_MOMENTUM * mean
            var_v.value = (1 - BN_MOMENTUM) * var_v.value + BN_MOMENTUM * var * n / (n - 1)
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias
        return y.astype(self.dtype)


def _conv3x3(features: int, name: str, dtype) -> nn.Conv:
    return nn.Conv(
        features,
        (3, 3),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        precision=HIGHEST,
        name=name,
    )


def avg_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """avg_pool2d with kernel = stride on [B, T, F, C] (T, F divisible by the window)."""
    b, t, f, c = x.shape
    pt, pf = window
    return x.reshape(b, t // pt, pt, f // pf, pf, c).mean(axis=(2, 4))


class ConvTransposeNoOverlap(nn.Module):
    """ConvTranspose2d with kernel = stride, no bias: every input pixel writes its own
    kernel-sized output patch, out[t*kh + i, f*kw + j, o] = sum_c x[t, f, c] W[i, j, c, o].

    The param `kernel` is [kh, kw, C_in, C_out] (torch (C_in, C_out, kh, kw) transposed, no
    spatial flip)."""

    features: int
    stride: tuple[int, int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.stride
        b, t, f, c = x.shape
        fan_in = c * kh * kw
        kernel = self.param(
            "kernel",
            nn.initializers.normal(stddev=math.sqrt(2.0 / fan_in)),
            (kh, kw, c, self.features),
            jnp.float32,
        )
        y = jnp.einsum(
            "btfc,hwco->bthfwo", x.astype(self.dtype), kernel.astype(self.dtype), precision=HIGHEST
        )
        return y.reshape(b, t * kh, f * kw, self.features)


class FilmBeta(nn.Module):
    """FiLM β: Linear(condition -> C), broadcast as [B, 1, 1, C]."""

    features: int

    @nn.compact
    def __call__(self, condition: jax.Array) -> jax.Array:
        beta = Dense(self.features, name="dense")(condition)
        self.sow("intermediates", "beta", beta)
        return beta[:, None, None, :]


class ConvBlockRes(nn.Module):
    """BN1 -> +β1 -> LeakyReLU -> conv3x3 -> BN2 -> +β2 -> LeakyReLU -> conv3x3, plus a shortcut
    (1x1 conv with bias when C_in != C_out, else identity). x: [B, T, F, C_in]."""

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, condition: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        b1 = FilmBeta(cin, name="beta1")(condition)
        b2 = FilmBeta(self.features, name="beta2")(condition)
        h = leaky_relu(BatchNormInference(dtype=self.dtype, name="bn1")(x) + b1)
        h = _conv3x3(self.features, "conv1", self.dtype)(h)
        h = leaky_relu(BatchNormInference(dtype=self.dtype, name="bn2")(h) + b2)
        h = _conv3x3(self.features, "conv2", self.dtype)(h)
        if cin != self.features:
            x = Dense(self.features, dtype=self.dtype, name="shortcut")(x)
        return x + h


class EncoderBlock(nn.Module):
    """ConvBlockRes then avg-pool (kernel = stride). Returns (pooled, pre-pool skip)."""

    features: int
    pool: tuple[int, int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, condition: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = ConvBlockRes(self.features, self.dtype, name="conv_block1")(x, condition)
        return avg_pool(h, self.pool), h


class DecoderBlock(nn.Module):
    """BN1 -> +β1 -> LeakyReLU -> ConvTranspose (k = s) -> concat [up, skip] -> ConvBlockRes.

    The original also owns `bn2` and a FiLM `beta2` that its forward never reads; β2 is computed
    here (so every FiLM output of the checkpoint can be checked) and then dropped."""

    features: int
    up: tuple[int, int]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array, condition: jax.Array) -> jax.Array:
        cin = x.shape[-1]
        b1 = FilmBeta(cin, name="beta1")(condition)
        FilmBeta(cin, name="beta2")(condition)  # unused in the original's forward too
        h = leaky_relu(BatchNormInference(dtype=self.dtype, name="bn1")(x) + b1)
        h = ConvTransposeNoOverlap(self.features, self.up, self.dtype, name="conv1")(h)
        h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)
        return ConvBlockRes(self.features, self.dtype, name="conv_block2")(h, condition)


def mask_to_spectrum(
    logits: jax.Array, mag: jax.Array, cos_in: jax.Array, sin_in: jax.Array
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """AudioSep `feature_maps_to_wav` up to the ISTFT.

    Args:
      logits: [B, T, F, 3] mask logits (c0 -> |M|, c1 -> r, c2 -> i).
      mag, cos_in, sin_in: [B or 1, T, F] the mixture's |X| and phase.
    Returns:
      (real, imag) [B, T, F] of Y, and the mask {'mag', 'cos', 'sin'} [B, T, F].
    """
    logits = logits.astype(jnp.float32)
    mask_mag = jax.nn.sigmoid(logits[..., 0])
    r = jnp.tanh(logits[..., 1])
    i = jnp.tanh(logits[..., 2])
    # torchlibrosa magphase: cos = r / clamp(|(r, i)|, 1e-10)
    norm = jnp.maximum(jnp.sqrt(r * r + i * i), MAG_CLAMP)
    mask_cos, mask_sin = r / norm, i / norm
    out_cos = cos_in * mask_cos - sin_in * mask_sin
    out_sin = sin_in * mask_cos + cos_in * mask_sin
    out_mag = jax.nn.relu(mag * mask_mag)
    mask = {"mag": mask_mag, "cos": mask_cos, "sin": mask_sin}
    return out_mag * out_cos, out_mag * out_sin, mask


class ResUNet30(nn.Module):
    """AudioSep `ResUNet30(input_channels=1, output_channels=1, condition_size=512)`.

    Attributes:
      channels: encoder widths (the original hard-codes `FULL_CHANNELS`); a smaller tuple gives
        the tiny test/runlocal separator with the same topology.
      dtype: compute dtype of the UNet (STFT, mask and ISTFT stay float32).
    """

    channels: Sequence[int] = FULL_CHANNELS
    n_fft: int = N_FFT
    hop: int = HOP
    dtype: jnp.dtype = jnp.float32

    @property
    def time_downsample(self) -> int:
        return 2 ** (len(self.channels) - 1)

    @nn.compact
    def __call__(self, mixture: jax.Array, condition: jax.Array) -> jax.Array:
        """Separate.

        Args:
          mixture: [Bm, N] float waveform at 32 kHz, Bm = B or 1 (then shared by all queries).
          condition: [B, D] query embeddings (D = 512 for CLAP).
        Returns:
          [B, N] float32 separated waveforms.
        """
        if mixture.ndim != 2 or condition.ndim != 2:
            raise ValueError(
                f"want mixture [Bm, N] and condition [B, D], got {mixture.shape}, {condition.shape}"
            )
        bm, n = mixture.shape
        b = condition.shape[0]
        if bm not in (1, b):
            raise ValueError(f"mixture batch {bm} must be 1 or the condition batch {b}")
        if len(self.channels) != 6:
            raise ValueError(f"ResUNet30 has 6 encoder levels, got channels={self.channels}")
        real, imag = stft(mixture, self.n_fft, self.hop)
        mag, cos_in, sin_in = magphase_from_complex(real, imag)  # [Bm, T, F]
        self.sow("intermediates", "stft_mag", mag)
        self.sow("intermediates", "stft_cos", cos_in)
        self.sow("intermediates", "stft_sin", sin_in)
        t = mag.shape[1]

        x = BatchNormInference(dtype=self.dtype, name="bn0")(mag)  # the F bins are channels
        tp = -(-t // self.time_downsample) * self.time_downsample
        x = jnp.pad(x, ((0, 0), (0, tp - t), (0, 0)))[:, :, :-1]  # [Bm, Tp, F - 1]
        x = Dense(self.channels[0], dtype=self.dtype, name="pre_conv")(x[..., None])
        x = jnp.broadcast_to(x, (b, *x.shape[1:]))  # [B, Tp, F - 1, C0]

        pools = [(2, 2)] * (len(self.channels) - 1) + [(1, 2)]
        skips = []
        for k, (c, p) in enumerate(zip(self.channels, pools, strict=True)):
            x, skip = EncoderBlock(c, p, self.dtype, name=f"encoder_block{k + 1}")(x, condition)
            skips.append(skip)
        x, _ = EncoderBlock(self.channels[-1], (1, 1), self.dtype, name="conv_block7a")(
            x, condition
        )
        self.sow("intermediates", "out_conv_block7a", x)
        for k, (c, up) in enumerate(zip(self.channels[::-1], pools[::-1], strict=True)):
            x = DecoderBlock(c, up, self.dtype, name=f"decoder_block{k + 1}")(
                x, skips[-1 - k], condition
            )
        logits = Dense(3, dtype=self.dtype, name="after_conv")(x)  # [B, Tp, F - 1, 3]
        self.sow("intermediates", "out_after_conv", logits)
        logits = jnp.pad(logits, ((0, 0), (0, 0), (0, 1), (0, 0)))[:, :t]
        out_real, out_imag, mask = mask_to_spectrum(logits, mag, cos_in, sin_in)
        for k, v in mask.items():
            self.sow("intermediates", f"mask_{k}", v)
        return istft(out_real, out_imag, n, self.n_fft, self.hop)


# ----------------------------------------------------------------------------- long audio
def chunk_starts(n: int, chunk: int, hop: int) -> list[int]:
    """Starts k * hop of the chunks covering [0, n); the last chunk is [start, n), possibly
    shorter than `chunk`, never padded."""
    starts = [0]
    while starts[-1] + chunk < n:
        starts.append(starts[-1] + hop)
    return starts


def chunk_weights(n: int, chunk: int, starts: list[int], fade: int) -> np.ndarray:
    """Cross-fade weights [K, n] (zero outside each chunk) for `chunked_apply`.

    Boundary j (between chunks j-1 and j) sits in the middle of their overlap; there the weight
    passes linearly from chunk j-1 to chunk j over `fade` samples (a hard switch for fade 0).
    Chunk k's weight is rise_k * (1 - rise_{k+1}); the ramps of a regular grid never touch, so
    the weights sum to exactly 1 at every sample.
    """
    t = np.arange(n, dtype=np.float64) + 0.5
    rises = [np.ones(n)]
    for j in range(1, len(starts)):
        centre = 0.5 * (starts[j] + starts[j - 1] + chunk)
        if fade:
            rises.append(np.clip((t - (centre - 0.5 * fade)) / fade, 0.0, 1.0))
        else:
            rises.append((t >= centre).astype(np.float64))
    rises.append(np.zeros(n))
    return np.stack([rises[k] * (1.0 - rises[k + 1]) for k in range(len(starts))])


def chunked_apply(
    fn: Callable[[np.ndarray], np.ndarray | jax.Array],
    mixture: np.ndarray,
    chunk: int,
    overlap: int,
    fade: int | None = None,
) -> np.ndarray:
    """Overlap-add chunked inference, correct for any length.

    Args:
      fn: maps a [L] waveform to [Q, L]; called with L = chunk and, for the last chunk, with the
        remaining length (at most two shapes, so at most two compiles).
      mixture: [N].
      chunk, overlap, fade: samples, 0 <= fade <= overlap, 2 * overlap <= chunk (fade defaults
        to overlap). If N <= chunk the whole file goes through `fn` in one pass (AudioSep's
        `chunk_inference`, by contrast, returns zeros for inputs of 5 s or less).
    Returns:
      [Q, N] float32. Chunks start at k * (chunk - overlap); the last one stops at N (no zero
      padding, so the file's end is seen exactly as in a whole-file pass, and it is longer than
      `overlap`). Adjacent chunks are cross-faded over `fade` samples in the middle of their
      overlap (`chunk_weights`), so every kept sample is at least (overlap - fade) / 2 from the
      edge of the chunk it comes from, except at the file's own ends.
    """
    mixture = np.asarray(mixture, np.float32)
    n = mixture.shape[-1]
    fade = overlap if fade is None else fade
    if not (0 <= fade <= overlap and 2 * overlap <= chunk):
        raise ValueError(
            f"need 0 <= fade <= overlap <= chunk / 2, got chunk={chunk}, overlap={overlap}, "
            f"fade={fade}"
        )
    if n <= chunk:
        return np.asarray(fn(mixture), np.float32)
    starts = chunk_starts(n, chunk, chunk - overlap)
    weights = chunk_weights(n, chunk, starts, fade)
    out = None
    for k, s in enumerate(starts):
        e = min(s + chunk, n)
        y = np.asarray(fn(mixture[s:e]), np.float64)
        if out is None:
            out = np.zeros((y.shape[0], n), np.float64)
        out[:, s:e] += y * weights[k, s:e]
    return out.astype(np.float32)
