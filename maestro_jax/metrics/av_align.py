"""AV-Align (TempoTokens `av_align.py`; Maestro paper section 4.5): audio onsets vs optical-flow peaks.

Facts: docs/models.md, "AV-Align" (protocol: docs/method.md, "Evaluation" > "AV-Align");
fixture `av_align`.

- **Audio peaks**: the waveform at 22050 Hz mono (`librosa.load` semantics: channel mean, soxr_hq
  resampling), `librosa.onset.onset_strength` and `onset_detect` with their defaults (hop 512),
  times = frame * 512 / 22050.
- **Video peaks**: frames to gray, OpenCV Farneback `calcOpticalFlowFarneback(prev, next, None,
  0.5, 3, 15, 3, 5, 1.2, 0)`, mean flow magnitude per pair; the trajectory is [flow(0, 1)] +
  [flow(i - 1, i) for i = 1..T-1] (T values, the first pair counted twice). Peaks are strict
  interior local maxima `a[i-1] < a[i] > a[i+1]`, at time i / fps.
- **Score**: each audio peak a, in order, hits the first video peak v with v - 1/fps < a < v + 1/fps;
  score = hits / (|A| + |V| - hits), averaged over videos.

Two rules (`rule=`):
- `'2023'` (TempoTokens `34d9502`, what older papers ran): no flow floor, and one video peak can
  absorb several audio peaks, so a score can exceed 1 (fixture pair p3: 1.5).
- `'2025'` (`bf0b1e3`): peaks also need flow >= 0.1, and each video peak is used at most once:
  the score is then an IoU in [0, 1].

Choices where the original is silent or broken:
- Both peak lists empty: the original divides by zero. Here the score is `both_empty` (default
  1.0: a still, silent clip agrees with itself, the usual convention for the IoU of two empty
  sets); pass `float('nan')` to leave such videos out, and `mean_score` reports how many it skipped.
- Audio longer than the video (generation conditions on a clip that may be longer than the frames
  written): with `match_duration=True` (default) the waveform is cut to the video's real duration
  T / fps before the onset analysis, so onsets after the last frame do not count as misses. The
  fixture's pairs have equal durations, so this does not change them.
- Frames: `av_align_score` takes RGB by default (`channel_order='bgr'` for OpenCV-decoded frames):
  the gray conversion weighs R and B differently.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

SR = 22050  # librosa.load default
HOP = 512  # onset_strength / frames_to_time default
FLOW_FLOOR_2025 = 0.1
RULES = ("2023", "2025")

# How the two scoring rules read (for reports).
AV_2023_NOTE = (
    "2023 rule (TempoTokens 34d9502): one flow peak may absorb several audio onsets, so a raw "
    "per-video score can exceed 1; for comparison with published numbers only"
)
AV_2025_NOTE = "2025 rule: each flow peak matched at most once, flow >= 0.1; an IoU in [0, 1]"


# ----------------------------------------------------------------------------- media
def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Every frame of a video file as uint8 [T, H, W, 3] RGB, and its fps (imageio-ffmpeg)."""
    import imageio_ffmpeg

    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"video not found: {path}")
    with warnings.catch_warnings():
        # ffmpeg is started with fork+exec; JAX's "fork is incompatible with threads" warning
        # does not apply to a child that immediately execs.
        warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
        gen = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
        meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in gen]
    if not frames:
        raise ValueError(f"{path} has no video frames")
    return np.stack(frames), float(meta["fps"])


def _extract_audio_track(video_path: str) -> tuple[np.ndarray, int]:
    """The audio stream of a video file, decoded by ffmpeg to float32 wav at its native rate."""
    import imageio_ffmpeg
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "audio.wav")
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-i", video_path, "-vn"]
        cmd += ["-acodec", "pcm_f32le", wav]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not os.path.exists(wav):
            raise ValueError(
                f"could not read an audio track from {video_path} (pass audio_path): "
                f"{res.stderr.strip()[:300]}"
            )
        y, sr = sf.read(wav, dtype="float32", always_2d=True)
    return y, int(sr)


def load_audio(path: str | os.PathLike, sr: int = SR) -> np.ndarray:
    """`librosa.load(path)` semantics: soundfile float32, channel mean, soxr_hq resampling to `sr`.
    Returns float32 [N]."""
    import soundfile as sf

    path = str(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"audio not found: {path}")
    y, native = sf.read(path, dtype="float32", always_2d=True)  # [N, channels]
    return to_analysis_rate(y, native, sr)


def to_analysis_rate(audio: np.ndarray, sr: int, target_sr: int = SR) -> np.ndarray:
    """audio [N] or [N, channels] at `sr` -> float32 mono [N'] at `target_sr` (channel mean in
    float32, then librosa's soxr_hq resampler, as `librosa.load` does)."""
    import librosa

    y = np.asarray(audio, np.float32)
    if y.ndim == 2:
        y = np.mean(y.T, axis=0)  # librosa.to_mono on [channels, N]
    elif y.ndim != 1:
        raise ValueError(f"audio must be [N] or [N, channels], got shape {y.shape}")
    if sr != target_sr:
        y = librosa.resample(y, orig_sr=sr, target_sr=target_sr, res_type="soxr_hq")
    return np.ascontiguousarray(y, np.float32)


# ----------------------------------------------------------------------------- audio peaks
def audio_onsets(y: np.ndarray, sr: int = SR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Onset envelope (float32 [F]), onset frames (int64) and onset times (float64 s) of mono `y`
    with librosa's defaults (hop 512), as TempoTokens' `detect_audio_peaks`."""
    import librosa

    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"audio must be a non-empty mono waveform [N], got shape {y.shape}")
    env = librosa.onset.onset_strength(y=y, sr=sr)
    frames = librosa.onset.onset_detect(onset_envelope=env, sr=sr)
    times = librosa.frames_to_time(frames, sr=sr)
    return env, np.asarray(frames, np.int64), np.asarray(times, np.float64)


# ----------------------------------------------------------------------------- video peaks
def flow_trajectory(frames: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """Mean Farneback flow magnitude per frame, float64 [T]: [flow(0,1)] + [flow(i-1,i)].

    frames: uint8 [T, H, W, 3] (RGB, or BGR with channel_order='bgr'), T >= 2.
    """
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"frames must be uint8 [T, H, W, 3], got {frames.dtype} of shape {frames.shape}"
        )
    if frames.shape[0] < 2:
        raise ValueError(f"optical flow needs at least 2 frames, got {frames.shape[0]}")
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    code = cv2.COLOR_RGB2GRAY if channel_order == "rgb" else cv2.COLOR_BGR2GRAY
    gray = [cv2.cvtColor(np.ascontiguousarray(f), code) for f in frames]

    def mag(a: np.ndarray, b: np.ndarray) -> float:
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        m = cv2.magnitude(flow[..., 0], flow[..., 1])
        return float(cv2.mean(m)[0])

    # One OpenCV thread: with several, the row stripes of Farneback's blur are split per call
    # and the ~1e-8 flow of identical frames varies, which makes spurious peaks on static clips
    # (seen on a loaded 2-core machine). Restored after, as it is process-wide.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        traj = [mag(gray[0], gray[1])]
        traj += [mag(gray[i - 1], gray[i]) for i in range(1, len(gray))]
    finally:
        cv2.setNumThreads(threads)
    return np.asarray(traj, np.float64)


def _check_rule(rule: str) -> str:
    rule = str(rule)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    return rule


def video_peaks(flow: np.ndarray, fps: float, rule: str = "2025") -> np.ndarray:
    """Times (s, float64) i / fps of the strict interior local maxima of `flow`; under '2025' a
    peak also needs flow >= 0.1."""
    rule = _check_rule(rule)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    a = [float(v) for v in flow]
    out = []
    for i in range(1, len(a) - 1):
        if a[i - 1] < a[i] > a[i + 1] and (rule == "2023" or a[i] >= FLOW_FLOOR_2025):
            out.append(i / fps)
    return np.asarray(out, np.float64)


def match_score(
    audio_peaks: Sequence[float],
    video_peaks_s: Sequence[float],
    fps: float,
    rule: str = "2025",
    both_empty: float = 1.0,
) -> tuple[float, int]:
    """(score, hits): hits / (|A| + |V| - hits) with the window +-1/fps (strict)."""
    rule = _check_rule(rule)
    hits = 0
    used: set[int] = set()
    for a in audio_peaks:
        for j, v in enumerate(video_peaks_s):
            if rule == "2025" and j in used:
                continue
            if v - 1 / fps < a < v + 1 / fps:
                hits += 1
                used.add(j)
                break
    den = len(audio_peaks) + len(video_peaks_s) - hits
    if den == 0:
        return float(both_empty), 0
    return hits / den, hits


# ----------------------------------------------------------------------------- scores
@dataclasses.dataclass
class AVAlignResult:
    """Everything one video's AV-Align computes; `scores[rule]`, `video_peaks[rule]`."""

    scores: dict[str, float]
    hits: dict[str, int]
    audio_peaks: np.ndarray
    video_peaks: dict[str, np.ndarray]
    flow: np.ndarray
    onset_env: np.ndarray
    onset_frames: np.ndarray
    fps: float
    audio_seconds: float
    video_seconds: float


def av_align_details(
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray,
    sr: int,
    *,
    channel_order: str = "rgb",
    match_duration: bool = True,
    both_empty: float = 1.0,
) -> AVAlignResult:
    """AV-Align of one video under both rules (the flow and the onsets are computed once).

    frames: uint8 [T, H, W, 3]; fps: the video's frame rate; audio: [N] or [N, channels] at `sr`.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    y = to_analysis_rate(audio, sr, SR)
    t = np.asarray(frames).shape[0]
    video_seconds = t / fps
    if match_duration:
        n = int(round(video_seconds * SR))
        if y.shape[0] > n:
            y = y[:n]
    env, onset_frames, a_peaks = audio_onsets(y, SR)
    flow = flow_trajectory(frames, channel_order)
    scores, hits, v_peaks = {}, {}, {}
    for rule in RULES:
        v_peaks[rule] = video_peaks(flow, fps, rule)
        scores[rule], hits[rule] = match_score(a_peaks, v_peaks[rule], fps, rule, both_empty)
    return AVAlignResult(
        scores, hits, a_peaks, v_peaks, flow, env, onset_frames, fps, y.shape[0] / SR, video_seconds
    )


def av_align_score(
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray,
    sr: int,
    rule: str = "2025",
    **kwargs,
) -> float:
    """AV-Align of one video: frames uint8 [T, H, W, 3] RGB at `fps`, audio [N] (or [N, ch]) at `sr`.
    Keyword options as `av_align_details`."""
    rule = _check_rule(rule)
    return av_align_details(frames, fps, audio, sr, **kwargs).scores[rule]


def av_align_files(
    video_path: str | os.PathLike,
    audio_path: str | os.PathLike | None = None,
    rule: str | None = "2025",
    **kwargs,
) -> float | AVAlignResult:
    """AV-Align of a video file with a wav file (or, if `audio_path` is None, the video's own
    audio track). Returns the score under `rule`, or the full `AVAlignResult` for rule=None."""
    import soundfile as sf

    frames, fps = read_video(video_path)
    if audio_path is None:
        audio, sr = _extract_audio_track(str(video_path))
    else:
        if not os.path.exists(audio_path):
            raise FileNotFoundError(f"audio not found: {audio_path}")
        audio, sr = sf.read(str(audio_path), dtype="float32", always_2d=True)
    res = av_align_details(frames, fps, audio, int(sr), **kwargs)
    return res if rule is None else res.scores[_check_rule(rule)]


def mean_score(scores: Iterable[float]) -> tuple[float, int, int]:
    """(mean over videos, number averaged, number skipped as NaN) — report all three."""
    s = np.asarray(list(scores), np.float64)
    ok = ~np.isnan(s)
    n = int(ok.sum())
    return (float(s[ok].mean()) if n else float("nan")), n, int((~ok).sum())
