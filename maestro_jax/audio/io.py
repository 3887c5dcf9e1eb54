"""Audio files: decoding (soundfile, or the bundled ffmpeg for everything else), resampling
(soxr), mixing stems, writing WAVs atomically.

Dimension names: C audio channels, N samples. Host-side NumPy only.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maestro_jax.files import chmod_default

SOUNDFILE_EXTS = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".au", ".w64", ".caf"}


class AudioLoadError(ValueError):
    """An audio file could not be decoded (unreadable, no audio stream, or empty)."""


# ==================================================================================================
# Decoding, resampling, mixing, writing
# ==================================================================================================


def resample(x: np.ndarray, sr_in: int, sr_out: int, quality: str = "VHQ") -> np.ndarray:
    """Resample [C, N] (or [N]) audio from `sr_in` to `sr_out` Hz with soxr (per channel).

    VHQ is what the `imagebind_fbank` fixture used to make its 16 kHz inputs. ImageBind itself
    uses torchaudio's sinc resampler; neither is bit-equal to the other (docs/models.md, "Audio front end").
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
    chmod_default(tmp)  # mkstemp makes 0600: the file gets the mode the umask allows
    try:
        sf.write(tmp, np.ascontiguousarray(audio.T), int(sr), subtype=subtype, format="WAV")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
