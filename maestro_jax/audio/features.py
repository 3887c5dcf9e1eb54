"""ImageBind's audio input: Kaldi-compatible log-mel filterbanks and the 2 s clip sampler.

Maestro's encoding step (paper Sec. 3.1): each source is cut into S clips of 2 s at 16 kHz and
each clip becomes a normalised 128-bin log-mel filterbank of 204 frames, the input of the
ImageBind audio trunk. The numerics are ImageBind's `waveform2melspec` (torchaudio
`compliance.kaldi.fbank` + torchvision `Normalize`); the clip times are pytorchvideo's
`ConstantClipsPerVideoSampler`, both the PyPI 0.1.5 rule the Maestro release ran with and the
fixed upstream rule (docs/models.md, "Audio front end").

Dimension names: C audio channels, N samples, S clips, T fbank frames, M = 128 mel bins. Clip
times are exact fractions on the host; the fbank is a pure, jittable JAX function.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.audio.io import resample

# --- ImageBind / Kaldi constants (docs/models.md, "Audio front end") ----------------------------
IMAGEBIND_SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
TARGET_LENGTH = 204  # frames fed to ImageBind (2 s = 198 frames + 6 zero-padded)
FRAME_LENGTH = 400  # 25 ms at 16 kHz
FRAME_SHIFT = 160  # 10 ms at 16 kHz
PADDED_WINDOW = 512  # round_to_power_of_two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
HIGH_FREQ = 8000.0  # kaldi high_freq=0 means Nyquist
# torch.finfo(torch.float32).eps: kaldi's log floor.
LOG_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07
LOG_FLOOR = float(np.log(np.float32(LOG_EPS)))  # -15.942385
MEL_MEAN = -4.268  # torchvision Normalize(mean=-4.268, std=9.138)
MEL_STD = 9.138
CLIP_DURATION = 2.0

# ==================================================================================================
# Kaldi-compatible fbank (ImageBind's waveform2melspec), docs/models.md, "Audio front end"
# ==================================================================================================


def hann_window_symmetric(n: int = FRAME_LENGTH) -> np.ndarray:
    """Kaldi's 'hanning': 0.5 - 0.5 cos(2 pi k / (n - 1)), symmetric (torch periodic=False)."""
    k = np.arange(n, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * k / (n - 1))).astype(np.float32)


def kaldi_mel_banks(
    num_bins: int = NUM_MEL_BINS,
    padded_window: int = PADDED_WINDOW,
    sample_rate: float = IMAGEBIND_SAMPLE_RATE,
    low_freq: float = LOW_FREQ,
    high_freq: float = HIGH_FREQ,
) -> np.ndarray:
    """Kaldi mel triangles as [num_bins, padded_window // 2 + 1] float32 (zero Nyquist column).

    mel(f) = 1127 ln(1 + f / 700); the triangles are linear in mel with edges evenly spaced over
    num_bins + 1 intervals between mel(low) and mel(high). Evaluated in float32 like torchaudio's
    `get_mel_banks` (no VTLN warping).
    """
    f32 = np.float32
    n_fft_bins = padded_window // 2
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high_freq / 700.0)
    delta = f32((mel_high - mel_low) / (num_bins + 1))
    b = np.arange(num_bins, dtype=f32)[:, None]
    left = f32(mel_low) + b * delta
    center = f32(mel_low) + (b + f32(1.0)) * delta
    right = f32(mel_low) + (b + f32(2.0)) * delta
    freq = f32(sample_rate / padded_window) * np.arange(n_fft_bins, dtype=f32)
    mel = (f32(1127.0) * np.log(f32(1.0) + freq / f32(700.0)))[None, :]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = np.maximum(f32(0.0), np.minimum(up, down)).astype(f32)
    return np.pad(banks, ((0, 0), (0, 1)))


_MEL_BANKS = kaldi_mel_banks()
_HANN = hann_window_symmetric()


def num_fbank_frames(num_samples: int) -> int:
    """Kaldi frames with snip_edges: 1 + (N - 400) // 160, or 0 when N < 400."""
    return 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT


@functools.partial(jax.jit, static_argnames=("remove_dc",))
def waveform_to_fbank(wave: jax.Array, remove_dc: bool = True) -> jax.Array:
    """ImageBind's raw Kaldi fbank of one clip: [C, N] at 16 kHz -> [128, T] (natural-log mel).

    Steps (docs/models.md, "Audio front end" > "Waveform to log-mel"; `kaldi.fbank(htk_compat=True, use_energy=False,
    window_type='hanning', num_mel_bins=128, dither=0, frame_length=25, frame_shift=10)`):
    subtract ONE mean over all channels and samples (`remove_dc`; ImageBind's in-place
    `waveform -= waveform.mean()`), keep channel 0, 400-sample frames every 160 samples
    (snip_edges: T = 1 + (N - 400) // 160), per frame: remove the frame mean, pre-emphasis 0.97
    (sample 0 uses itself), symmetric Hann(400), zero-pad to 512, |rfft|^2, 128 Kaldi mel
    triangles over 20-8000 Hz, ln(max(E, 1.1920929e-7)).
    """
    wave = jnp.asarray(wave, jnp.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2:
        raise ValueError(f"waveform_to_fbank expects [C, N] audio, got shape {wave.shape}")
    n = wave.shape[1]
    t = num_fbank_frames(n)
    if t == 0:
        return jnp.zeros((NUM_MEL_BINS, 0), jnp.float32)
    if remove_dc:
        wave = wave - jnp.mean(wave)
    x = wave[0]
    idx = np.arange(t)[:, None] * FRAME_SHIFT + np.arange(FRAME_LENGTH)[None, :]
    frames = x[idx]  # [T, 400]
    frames = frames - jnp.mean(frames, axis=1, keepdims=True)
    prev = jnp.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - jnp.float32(PREEMPHASIS) * prev
    frames = frames * jnp.asarray(_HANN)
    spec = jnp.fft.rfft(frames, n=PADDED_WINDOW, axis=1)  # [T, 257] (zero-pads to 512)
    power = jnp.abs(spec) ** 2  # torch: fft.abs().pow(2)
    mel = jnp.matmul(power, jnp.asarray(_MEL_BANKS).T, precision=jax.lax.Precision.HIGHEST)
    logmel = jnp.log(jnp.maximum(mel, jnp.float32(LOG_EPS)))  # [T, 128]
    return logmel.T


def fbank_to_melspec(
    fbank: jax.Array,
    target_length: int = TARGET_LENGTH,
    mean: float = MEL_MEAN,
    std: float = MEL_STD,
) -> jax.Array:
    """[128, T] raw fbank -> [1, 128, target_length]: right-pad with 0 (log domain) or crop,
    then torchvision Normalize: (x - mean) / std in float32 (a padded frame becomes 0.467)."""
    t = fbank.shape[-1]
    if t < target_length:
        fbank = jnp.pad(fbank, ((0, 0), (0, target_length - t)))
    else:
        fbank = fbank[:, :target_length]
    return ((fbank - jnp.float32(mean)) / jnp.float32(std))[None]


@functools.partial(jax.jit, static_argnames=("remove_dc", "target_length", "mean", "std"))
def waveform_to_melspec(
    wave: jax.Array,
    remove_dc: bool = True,
    target_length: int = TARGET_LENGTH,
    mean: float = MEL_MEAN,
    std: float = MEL_STD,
) -> jax.Array:
    """One clip [C, N] at 16 kHz -> the ImageBind model input [1, 128, 204] (normalised)."""
    return fbank_to_melspec(waveform_to_fbank(wave, remove_dc), target_length, mean, std)


@functools.partial(jax.jit, static_argnames=("remove_dc",))
def waveform_to_fbank_batch(waves: jax.Array, remove_dc: bool = True) -> jax.Array:
    """[S, C, N] equal-length clips -> [S, 128, T]."""
    return jax.vmap(lambda w: waveform_to_fbank(w, remove_dc))(waves)


@functools.partial(jax.jit, static_argnames=("remove_dc", "target_length", "mean", "std"))
def waveform_to_melspec_batch(
    waves: jax.Array,
    remove_dc: bool = True,
    target_length: int = TARGET_LENGTH,
    mean: float = MEL_MEAN,
    std: float = MEL_STD,
) -> jax.Array:
    """[S, C, N] equal-length clips -> [S, 1, 128, 204]."""
    return jax.vmap(lambda w: waveform_to_melspec(w, remove_dc, target_length, mean, std))(waves)


# ==================================================================================================
# Clip sampling (pytorchvideo ConstantClipsPerVideoSampler), docs/models.md, "Clip samplers"
# ==================================================================================================

CLIP_RULES = ("git", "pypi015")


def clip_starts(
    duration: float,
    num_clips: int,
    clip_duration: float = CLIP_DURATION,
    rule: str = "git",
) -> list[tuple[Fraction, Fraction]]:
    """(start, end) seconds of the S clips of `ConstantClipsPerVideoSampler(clip_duration, S)`,
    as exact Fractions (what ImageBind's `get_clip_timepoints` returns).

    rule='git': the fixed upstream rule (pytorchvideo 9368f30, ImageBind's pin): step =
      max(D - d, 0) / max(S - 1, 1): disjoint clips covering the file when D = d * S.
    rule='pypi015': pytorchvideo 0.1.5 from PyPI, which the Maestro release ran: step =
      max(D - d, 0) / S, so the last step seconds are never used and clips may overlap.
    D - d is taken in float64 and then made an exact Fraction, like pytorchvideo does
    (so D = 9.62, S = 2 starts the second clip at sample 60959, not 60960). D < d gives every
    clip = [0, d] (shorter audio is padded later, in the mel domain).
    """
    if rule not in CLIP_RULES:
        raise ValueError(f"unknown clip rule {rule!r}; use one of {CLIP_RULES}")
    if int(num_clips) != num_clips or num_clips < 1:
        raise ValueError(f"num_clips must be a positive integer, got {num_clips}")
    num_clips = int(num_clips)
    if not duration >= 0:
        raise ValueError(f"duration must be >= 0 seconds, got {duration}")
    d = Fraction(clip_duration)
    if isinstance(duration, Fraction):
        max_start = max(duration - d, Fraction(0))
    else:  # float - Fraction is a float in Python: pytorchvideo's arithmetic
        max_start = Fraction(max(float(duration) - float(d), 0.0))
    denom = num_clips if rule == "pypi015" else max(num_clips - 1, 1)
    step = max_start / denom
    return [(step * i, step * i + d) for i in range(num_clips)]


def clip_sample_ranges(
    duration: float,
    num_clips: int,
    sr: int = IMAGEBIND_SAMPLE_RATE,
    clip_duration: float = CLIP_DURATION,
    rule: str = "git",
) -> list[tuple[int, int]]:
    """Sample ranges [int(start * sr), int(end * sr)) of `clip_starts` (exact floor, as ImageBind
    slices). The end may lie past the audio; slicing then gives a shorter clip."""
    return [
        (int(s * sr), int(e * sr)) for s, e in clip_starts(duration, num_clips, clip_duration, rule)
    ]


def num_clips_for(
    duration: float, policy: str = "ceil", clip_duration: float = CLIP_DURATION
) -> int:
    """Number of 2 s clips S for D seconds of audio, at least 1.

    'ceil': ceil(D / d), the paper's S = ceil(L / 2).
    'floor': int(D // d), the release's inference scripts (`inference_2object.py`).
    'round_ceil': ceil(round(D) / d), the release's training script (`train_textencoder.py`).
    """
    if not duration >= 0:
        raise ValueError(f"duration must be >= 0 seconds, got {duration}")
    if policy == "ceil":
        s = math.ceil(Fraction(duration) / Fraction(clip_duration))
    elif policy == "floor":
        s = int(duration // clip_duration)
    elif policy == "round_ceil":
        s = math.ceil(Fraction(round(duration)) / Fraction(clip_duration))
    else:
        raise ValueError(f"unknown policy {policy!r}; use 'ceil', 'floor' or 'round_ceil'")
    return max(1, int(s))


def extract_clips(
    wave: np.ndarray,
    sr: int,
    starts: Sequence[float | Fraction | tuple],
    clip_duration: float = CLIP_DURATION,
) -> list[np.ndarray]:
    """Cut clips [C, int(start * sr) : int(end * sr)] with ImageBind's indexing (end = start +
    clip_duration, exact Fractions). `starts` holds start times or (start, end) pairs (as from
    `clip_starts`). A clip past the end of the audio comes out shorter (padded later by
    `fbank_to_melspec`); returns copies."""
    wave = np.asarray(wave)
    if wave.ndim == 1:
        wave = wave[None]
    out = []
    for st in starts:
        if isinstance(st, tuple | list):
            s, e = Fraction(st[0]), Fraction(st[1])
        else:
            s = Fraction(st)
            e = s + Fraction(clip_duration)
        out.append(np.array(wave[:, int(s * sr) : int(e * sr)]))
    return out


def imagebind_audio_input(
    wave: np.ndarray,
    sr: int,
    num_clips: int,
    rule: str = "git",
    *,
    clip_duration: float = CLIP_DURATION,
    max_seconds: float | None = 10.0,
    dc_leak: bool = True,
    target_length: int = TARGET_LENGTH,
) -> jax.Array:
    """ImageBind's `load_and_transform_audio_data` for one waveform: [C, N] at `sr` ->
    [S, 1, 128, 204] normalised log-mel clips.

    Steps, as in the Maestro release (`change/data.py`):
      1. if max_seconds is set and N >= sr * max_seconds, cut to the first max_seconds (at the
         source rate, before resampling; the release uses 10 s; None keeps everything);
      2. resample to 16 kHz (soxr; the original uses torchaudio's sinc resampler);
      3. clip times from `clip_starts(N16 / 16000, S, clip_duration, rule)`, sliced with
         `int(t * 16000)`;
      4. per clip: DC removal, Kaldi fbank of channel 0, pad/crop to 204, normalise.

    dc_leak=True reproduces ImageBind exactly: each clip is a *view* of one shared waveform and
    `waveform2melspec` subtracts its mean in place, so a clip overlapping an earlier one sees the
    earlier clip's mean already removed from the overlap (fixture README, surprise 1). This only
    matters when clips overlap (pypi015 with D < 2S + 2, or D < 2 s). dc_leak=False processes
    every clip from a fresh copy.
    """
    wave = np.asarray(wave, np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    if wave.ndim != 2 or wave.shape[1] == 0 or wave.shape[0] == 0:
        raise ValueError(f"imagebind_audio_input expects non-empty [C, N] audio, got {wave.shape}")
    if max_seconds is not None:
        cut = int(max_seconds * sr)
        if wave.shape[1] >= cut:
            wave = wave[:, :cut]
    wave = resample(wave, sr, IMAGEBIND_SAMPLE_RATE)  # a copy even at 16 kHz
    duration = wave.shape[1] / IMAGEBIND_SAMPLE_RATE
    ranges = clip_sample_ranges(
        duration, num_clips, IMAGEBIND_SAMPLE_RATE, clip_duration=clip_duration, rule=rule
    )
    clips = []
    for a, b in ranges:
        if dc_leak:
            view = wave[:, a:b]  # numpy view: the subtraction writes into `wave`
            if view.size:
                view -= view.mean(dtype=np.float32)
            clips.append(view.copy())
        else:
            clip = wave[:, a:b].copy()
            if clip.size:
                clip -= clip.mean(dtype=np.float32)
            clips.append(clip)
    if any(c.shape[1] == 0 for c in clips):
        raise ValueError(f"a clip of {ranges} is empty for audio of {wave.shape[1]} samples")
    # Batch clips of equal length (normally all of them) through one jitted call.
    out: list = [None] * len(clips)
    by_len: dict[int, list[int]] = {}
    for i, c in enumerate(clips):
        by_len.setdefault(c.shape[1], []).append(i)
    for idxs in by_len.values():
        mel = waveform_to_melspec_batch(
            np.stack([clips[i] for i in idxs]), remove_dc=False, target_length=target_length
        )
        for j, i in enumerate(idxs):
            out[i] = mel[j]
    return jnp.stack(out)


def segment_for_frame(f, num_frames: int, num_segments: int):
    """Audio segment s = floor(f * S / N_F) that video frame f uses (docs/method.md, "Frame-to-segment mapping").
    Works on Python ints and integer arrays."""
    return (f * num_segments) // num_frames
