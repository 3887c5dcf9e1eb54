"""Boxes from the sound itself (`--boxes auto`): where a stereo recording puts its sources.

Per source (a separated stem, one waveform per channel) and per video frame's time window:

- horizontal position from the interaural level difference: with a constant-power pan law
  (left gain cos(x pi / 2), right sin(x pi / 2), x in [0, 1] from left to right) the pan angle is
  atan2(rms_right, rms_left), so x = atan2(rms_R, rms_L) * 2 / pi; the ILD in dB is
  20 log10(rms_R / rms_L);
- presence: the frame's loudness (RMS over both channels) above `presence` x the source's
  loudest frame;
- size from loudness relative to the loudest source (`source_level`: the 90th percentile of
  its frame loudness over the frames where it is present): the
  box side is `max_side` x that ratio, at least `min_side` (a quieter source is smaller,
  i.e. farther away);
- smoothing: x is a loudness-weighted moving average over `smooth_s` seconds of present frames;
  frames where a source is silent hold its nearest estimate.

The vertical position is not in a stereo signal: boxes are centred vertically. A mono recording
has no level difference: its sources are spread left to right in order (`spread` note). The
result is keyframed `mosaic.Boxes` (one keyframe per frame) that the mosaic already understands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from maestro_jax.mosaic import Boxes

MONO_NOTE = "mono audio: no level difference between channels; sources spread left to right"


@dataclasses.dataclass(frozen=True)
class AutoLayout:
    """boxes: one keyframed `Boxes` per source; x [K, F] smoothed centres; present bool [K, F];
    side [K]; ild_db [K, F] (0 for mono); note: '' or why the layout is a fallback."""

    boxes: tuple[Boxes, ...]
    x: np.ndarray
    present: np.ndarray
    side: np.ndarray
    ild_db: np.ndarray
    note: str

    def per_frame(self) -> np.ndarray:
        """float [K, F, 4] boxes (x0, y0, x1, y1)."""
        f = self.x.shape[1]
        return np.stack([b.per_frame(f) for b in self.boxes])

    def to_json(self) -> dict:
        return {
            "note": self.note,
            "x": np.round(self.x, 4).tolist(),
            "present": self.present.tolist(),
            "side": np.round(self.side, 4).tolist(),
            "ild_db": np.round(self.ild_db, 2).tolist(),
        }


def frame_rms(wave: np.ndarray, sr: int, num_frames: int, seconds: float) -> np.ndarray:
    """[C, F] RMS of each channel over frame f's window [f, f + 1) * seconds / num_frames."""
    wave = np.asarray(wave, np.float64)
    if wave.ndim == 1:
        wave = wave[None]
    edges = np.round(np.arange(num_frames + 1) * seconds / num_frames * sr).astype(np.int64)
    edges = np.minimum(edges, wave.shape[1])
    c = np.concatenate([np.zeros((wave.shape[0], 1)), np.cumsum(wave * wave, axis=1)], axis=1)
    cnt = np.maximum(edges[1:] - edges[:-1], 1)
    return np.sqrt(np.maximum(c[:, edges[1:]] - c[:, edges[:-1]], 0.0) / cnt)


def source_level(loud: np.ndarray, presence: float = 0.1) -> float:
    """A source's loudness: the 90th percentile of its frame RMS [F] over the frames where it is
    present (above `presence` x its loudest frame); 0 when silent."""
    loud = np.asarray(loud, np.float64)
    on = loud > presence * max(float(loud.max(initial=0.0)), 1e-12)
    return float(np.percentile(loud[on], 90)) if on.any() else 0.0


def _smooth(x: np.ndarray, weight: np.ndarray, width: int) -> np.ndarray:
    """Weighted moving average over `width` frames; frames of zero weight nearby hold the
    nearest weighted value."""
    f = x.size
    out = np.empty(f)
    have = np.nonzero(weight > 0)[0]
    for i in range(f):
        lo, hi = max(0, i - width // 2), min(f, i + width // 2 + 1)
        w = weight[lo:hi]
        if w.sum() > 0:
            out[i] = float(np.sum(w * x[lo:hi]) / w.sum())
        elif have.size:
            out[i] = x[have[np.argmin(np.abs(have - i))]]
        else:
            out[i] = 0.5
    return out


def estimate_layout(
    stems: Sequence[np.ndarray],
    sr: int | Sequence[int],
    num_frames: int,
    seconds: float,
    *,
    smooth_s: float = 2.0,
    presence: float = 0.1,
    max_side: float = 0.5,
    min_side: float = 0.25,
) -> AutoLayout:
    """Keyframed boxes of K sources from their stems ([C, N] each, C = 2 for stereo, 1 mono; at
    rate `sr`, or one rate per stem) over `num_frames` frames spanning `seconds`."""
    if not stems:
        raise ValueError("no stems to place")
    chans = {np.asarray(s).shape[0] if np.ndim(s) == 2 else 1 for s in stems}
    if len(chans) != 1 or chans.pop() not in (1, 2):
        raise ValueError("auto boxes need every stem mono or every stem stereo (2 channels)")
    rates = [int(sr)] * len(stems) if np.ndim(sr) == 0 else [int(r) for r in sr]
    rms = np.stack([frame_rms(s, r, num_frames, seconds) for s, r in zip(stems, rates)])
    k = rms.shape[0]
    loud = np.sqrt(np.mean(rms * rms, axis=1))  # [K, F]
    peak = loud.max(axis=1, keepdims=True)
    present = loud > presence * np.maximum(peak, 1e-12)
    level = np.array([source_level(loud[i], presence) for i in range(k)])
    rel = level / max(float(level.max()), 1e-12)
    side = np.clip(max_side * rel, min_side, max_side)
    width = max(1, int(round(smooth_s * num_frames / seconds)))
    if rms.shape[1] == 1:
        note = MONO_NOTE
        x = np.repeat(((np.arange(k) + 0.5) / k)[:, None], num_frames, axis=1)
        ild = np.zeros((k, num_frames))
    else:
        note = ""
        eps = 1e-9
        raw = np.arctan2(rms[:, 1], rms[:, 0]) * 2 / np.pi  # [K, F]
        ild = 20 * np.log10((rms[:, 1] + eps) / (rms[:, 0] + eps))
        x = np.stack([_smooth(raw[i], loud[i] * present[i], width) for i in range(k)])
    boxes = []
    pos = np.arange(num_frames) / (num_frames - 1) if num_frames > 1 else np.zeros(1)
    for i in range(k):
        half = side[i] / 2
        cx = np.clip(x[i], half, 1 - half)
        kfs = [(float(p), (c - half, 0.5 - half, c + half, 0.5 + half)) for p, c in zip(pos, cx)]
        boxes.append(Boxes.keyframed(kfs))
    return AutoLayout(tuple(boxes), x, present, side, ild, note)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (x0, y0, x1, y1) over the last axis (broadcast)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda z: (z[..., 2] - z[..., 0]) * (z[..., 3] - z[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-12)


def is_auto(boxes) -> bool:
    """Whether a job's boxes ask for a layout from the sound ('auto')."""
    return isinstance(boxes, str) and boxes.strip().lower() == "auto"


def spread_boxes(k: int, side: float = 0.4) -> tuple[Boxes, ...]:
    """k static boxes side by side, left to right, vertically centred."""
    w = min(side, 1.0 / k)
    out = []
    for i in range(k):
        c = (i + 0.5) / k
        out.append(Boxes.static((c - w / 2, 0.5 - side / 2, c + w / 2, 0.5 + side / 2)))
    return tuple(out)


def separate_channels(separator, wave: np.ndarray, sr: int, queries, query_embeddings=None):
    """Each channel of a mixture [C, N] separated on its own: ([K stems [C, N']], rate)."""
    from maestro_jax.audio import io, separation

    ssr = separator.config.sample_rate
    per_channel = [
        separation.separate_mixture(separator, io.resample(w[None], sr, ssr)[0], queries,
                                    query_embeddings)
        for w in np.asarray(wave, np.float32)
    ]  # fmt: skip
    k = len(per_channel[0])
    return [np.stack([np.asarray(ch[i]) for ch in per_channel]) for i in range(k)], ssr
