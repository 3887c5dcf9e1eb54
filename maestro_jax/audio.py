"""Audio front end: decoding, resampling, mixing, ImageBind's Kaldi fbank, clip sampling,
SpecAugment.

Maestro pipeline step 2 (spec `maestro.md`, "Encode"): each source is cut into S clips of 2 s
at 16 kHz, and each clip becomes a normalised 128-bin log-mel filterbank of 204 frames, the input
of the ImageBind audio trunk. The numerics follow `audio_models.md` section 1.1 (ImageBind's
`waveform2melspec` = torchaudio `compliance.kaldi.fbank` + torchvision `Normalize`) and the clip
times section 1.2 (pytorchvideo `ConstantClipsPerVideoSampler`, both the PyPI 0.1.5 rule the
Maestro release ran with and the fixed upstream rule).

Dimension names: C audio channels, N samples, S clips, T fbank frames, M = 128 mel bins.

Host-side parts (decoding, resampling, clip times as exact fractions) use NumPy; the fbank and
SpecAugment are pure, jittable JAX functions.
"""

from __future__ import annotations

import functools
import math
import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# --- ImageBind / Kaldi constants (audio_models.md 1.1) -------------------------------------------
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

SOUNDFILE_EXTS = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".au", ".w64", ".caf"}


class AudioLoadError(ValueError):
    """An audio file could not be decoded (unreadable, no audio stream, or empty)."""


# ==================================================================================================
# Decoding, resampling, mixing, writing
# ==================================================================================================


def resample(x: np.ndarray, sr_in: int, sr_out: int, quality: str = "VHQ") -> np.ndarray:
    """Resample [C, N] (or [N]) audio from `sr_in` to `sr_out` Hz with soxr (per channel).

    VHQ is what the `imagebind_fbank` fixture used to make its 16 kHz inputs. ImageBind itself
    uses torchaudio's sinc resampler; neither is bit-equal to the other (audio_models.md 1.1).
    """
    x = np.asarray(x, np.float32)
    if sr_in <= 0 or sr_out <= 0:
        raise ValueError(f"sample rates must be positive, got {sr_in} -> {sr_out}")
    if int(sr_in) == int(sr_out):
        return x.copy()
    import soxr

    if x.ndim == 1:
        return soxr.resample(x, sr_in, sr_out, quality=quality).astype(np.float32)
    if x.ndim != 2:
        raise ValueError(f"resample expects [C, N] or [N] audio, got shape {x.shape}")
    # soxr wants [N, C] (frames by channels).
    y = soxr.resample(np.ascontiguousarray(x.T), sr_in, sr_out, quality=quality)
    return np.ascontiguousarray(np.asarray(y, np.float32).reshape(-1, x.shape[0]).T)


_LAYOUT_CHANNELS = {
    "mono": 1,
    "stereo": 2,
    "downmix": 2,
    "2.1": 3,
    "3.0": 3,
    "3.0(back)": 3,
    "3.1": 4,
    "4.0": 4,
    "quad": 4,
    "quad(side)": 4,
    "4.1": 5,
    "5.0": 5,
    "5.0(side)": 5,
    "5.1": 6,
    "5.1(side)": 6,
    "6.0": 6,
    "6.1": 7,
    "7.0": 7,
    "7.1": 8,
    "7.1(wide)": 8,
    "octagonal": 8,
}


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run without Python's fork() warning (JAX's threads exist in the parent, but
    the child only exec()s ffmpeg)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        return subprocess.run(cmd, **kwargs)


def _ffmpeg_probe(path: Path) -> tuple[int, int]:
    """(sample rate, channels) of the first audio stream, from ffmpeg's stream listing."""
    proc = _run(
        [_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
    )
    info = proc.stderr
    m = re.search(r"Stream #\S+.*?: Audio: (.*)", info)
    if m is None:
        last = info.strip().splitlines()[-1] if info.strip() else "no output"
        if "Invalid data" in info or "could not find codec" in info.lower():
            raise AudioLoadError(f"cannot decode audio file {path}: {last}")
        raise AudioLoadError(f"no audio stream in {path} (ffmpeg: {last})")
    desc = m.group(1)
    rate = re.search(r"(\d+) Hz", desc)
    if rate is None:
        raise AudioLoadError(f"cannot read the sample rate of {path} from ffmpeg: {desc!r}")
    channels = 2  # ffmpeg downmixes/upmixes to whatever -ac we ask for
    fields = [f.strip() for f in desc.split(",")]
    for f in fields:
        if f in _LAYOUT_CHANNELS:
            channels = _LAYOUT_CHANNELS[f]
            break
        cm = re.fullmatch(r"(\d+) channels.*", f)
        if cm:
            channels = int(cm.group(1))
            break
    return int(rate.group(1)), channels


def _load_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of any ffmpeg-readable file (mp3, mp4, mkv, ...) to
    float32 [C, N] through a pipe."""
    sr, channels = _ffmpeg_probe(path)
    cmd = [
        _ffmpeg_exe(),
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-f",
        "f32le",
        "-acodec",
        "pcm_f32le",
        "-ac",
        str(channels),
        "-ar",
        str(sr),
        "pipe:1",
    ]
    proc = _run(cmd, capture_output=True)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioLoadError(
            f"ffmpeg failed to decode {path}: {msg[-1] if msg else proc.returncode}"
        )
    data = np.frombuffer(proc.stdout, dtype="<f4")
    data = data[: (data.size // channels) * channels]
    return np.ascontiguousarray(data.reshape(-1, channels).T.astype(np.float32)), sr


def load_audio(
    path: str | os.PathLike, sr: int | None = None, mono: bool = False
) -> tuple[np.ndarray, int]:
    """Read an audio file (or the audio track of a video) as float32 [C, N] and its rate.

    WAV/FLAC/OGG/AIFF go through soundfile (integer PCM scaled like `torchaudio.load`:
    int16 / 32768, so values lie in [-1, 1)); MP3, AAC, video containers (mp4, mkv, webm, ...)
    and anything soundfile rejects are decoded by imageio-ffmpeg's ffmpeg to f32le PCM through
    a pipe (lossy decoders may overshoot [-1, 1] slightly; nothing is clipped).

    Args:
      path: the file.
      sr: if given, resample to this rate with soxr (`resample`).
      mono: average the channels to [1, N].
    Returns:
      (audio [C, N] float32, sample rate).
    Raises:
      FileNotFoundError: the file does not exist.
      AudioLoadError: unreadable, no audio stream, or no samples (the message names the file).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"audio file not found: {path}")
    if not path.is_file():
        raise AudioLoadError(f"not a regular file: {path}")
    if path.stat().st_size == 0:
        raise AudioLoadError(f"audio file is empty (0 bytes): {path}")

    audio = None
    native_sr = 0
    sf_error = None
    if path.suffix.lower() in SOUNDFILE_EXTS:
        import soundfile as sf

        try:
            data, native_sr = sf.read(str(path), dtype="float32", always_2d=True)
            audio = np.ascontiguousarray(data.T)
        except Exception as e:  # libsndfile rejects it: let ffmpeg try (e.g. WAV with mp3 data)
            sf_error = e
    if audio is None:
        try:
            audio, native_sr = _load_ffmpeg(path)
        except AudioLoadError as e:
            if sf_error is not None:
                raise AudioLoadError(f"{e}; soundfile also failed: {sf_error}") from e
            raise
    if audio.size == 0 or audio.shape[-1] == 0:
        raise AudioLoadError(f"audio file has no samples: {path}")
    if mono and audio.shape[0] > 1:
        audio = audio.mean(axis=0, keepdims=True, dtype=np.float32)
    if sr is not None and int(sr) != int(native_sr):
        audio = resample(audio, native_sr, int(sr))
        native_sr = int(sr)
    return audio.astype(np.float32, copy=False), int(native_sr)


def mix_stems(
    stems: Sequence[np.ndarray],
    gains_db: Sequence[float] | None = None,
    peak: float | None = None,
) -> np.ndarray:
    """Sum single-source stems into a mixture.

    Args:
      stems: [C_i, N_i] (or [N_i]) arrays at one sample rate. Shorter stems are zero-padded at
        the end to the longest; a mono stem is broadcast to the others' channel count.
      gains_db: optional gain per stem in dB (amplitude factor 10 ** (g / 20)).
      peak: if given and the mixture's max |sample| exceeds it, scale the whole mixture down to
        exactly `peak` (e.g. 0.99) to avoid clipping; a quieter mixture is left unchanged.
    Returns:
      mixture [C, max N_i] float32.
    """
    if len(stems) == 0:
        raise ValueError("mix_stems needs at least one stem")
    arrs = [np.atleast_2d(np.asarray(s, np.float32)) for s in stems]
    for i, a in enumerate(arrs):
        if a.ndim != 2:
            raise ValueError(f"stem {i} must be [C, N] or [N], got shape {a.shape}")
    if gains_db is not None:
        if len(gains_db) != len(arrs):
            raise ValueError(f"got {len(gains_db)} gains for {len(arrs)} stems")
        arrs = [a * np.float32(10.0 ** (g / 20.0)) for a, g in zip(arrs, gains_db)]
    chans = {a.shape[0] for a in arrs} - {1}
    if len(chans) > 1:
        raise ValueError(f"stems have incompatible channel counts {sorted(chans)}")
    c = chans.pop() if chans else 1
    n = max(a.shape[1] for a in arrs)
    mix = np.zeros((c, n), np.float32)
    for a in arrs:
        mix[:, : a.shape[1]] += a  # a [1, N] broadcasts over channels
    if peak is not None:
        if peak <= 0:
            raise ValueError(f"peak must be positive, got {peak}")
        m = float(np.max(np.abs(mix))) if mix.size else 0.0
        if m > peak:
            mix *= np.float32(peak / m)
    return mix


def write_wav(path: str | os.PathLike, audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> None:
    """Write [C, N] (or [N]) audio as a WAV file atomically (temp file in the same folder, then
    `os.replace`), so a reader never sees a half-written file. PCM subtypes clip to [-1, 1]."""
    import soundfile as sf

    path = Path(path)
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ValueError(f"write_wav expects [C, N] or [N] audio, got shape {audio.shape}")
    if subtype.startswith("PCM"):
        audio = np.clip(audio, -1.0, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        sf.write(tmp, np.ascontiguousarray(audio.T), int(sr), subtype=subtype, format="WAV")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ==================================================================================================
# Kaldi-compatible fbank (ImageBind's waveform2melspec), audio_models.md 1.1
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

    Steps (audio_models.md 1.1; `kaldi.fbank(htk_compat=True, use_energy=False,
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
# Clip sampling (pytorchvideo ConstantClipsPerVideoSampler), audio_models.md 1.2
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
    """Audio segment s = floor(f * S / N_F) that video frame f uses (maestro.md, Pipeline 4).
    Works on Python ints and integer arrays."""
    return (f * num_segments) // num_frames


# ==================================================================================================
# SpecAugment (maestro.md, Training: A' = SpecAugment(A))
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
