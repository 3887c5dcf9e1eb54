"""Long toy scenes (12 s by default) whose sources start and stop, and stereo rendering.

New functions over `maestro_jax.toy.world` (whose clips, batches and weights stay as they are):

- `long_scene`: K distinct objects in K non-overlapping boxes; object k sounds only inside its
  span [on_k, off_k) (at least `min_span` seconds, starting in the first half), its stem the
  world's sound of its class over the whole length, gated to the span (20 ms ramps). A frame
  draws an object only when the frame's centre lies in its span, with the world's size rule
  (radius from the loudness envelope).
- `stereo_stems`: each object panned by its x position (constant-power law: left gain
  cos(x pi / 2), right sin(x pi / 2)), its loudness set by its size relative to the largest: the
  layout is in the sound, so boxes can be estimated from it (`maestro_jax.audio.layout`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from maestro_jax.audio import layout
from maestro_jax.toy import batches as toy_batches
from maestro_jax.toy import world as tw

LONG_SECONDS = 12.0


@dataclasses.dataclass(frozen=True, eq=False)
class LongScene:
    """classes [K]; boxes float32 [K, 4] (x0, y0, x1, y1); spans float [K, 2] seconds; stems
    float32 [K, N] mono at `world.SR`; envs float32 [K, F] (0 where silent); frames uint8
    [F, RES, RES, 3] (the truth video at `world.FPS`); seed: the sampler seed of its job."""

    classes: tuple[int, ...]
    boxes: np.ndarray
    spans: np.ndarray
    stems: np.ndarray
    envs: np.ndarray
    frames: np.ndarray
    background: int
    seed: int

    @property
    def present(self) -> np.ndarray:
        """bool [K, F]: whether frame f's centre lies in object k's span (it is drawn)."""
        return span_frames(self.spans, self.envs.shape[1])

    @property
    def sizes(self) -> np.ndarray:
        return np.array([tw._fit_size(c, b) for c, b in zip(self.classes, self.boxes)])


def _gate(n: int, sr: int, on: float, off: float, ramp: float = 0.02) -> np.ndarray:
    t = np.arange(n) / float(sr)
    return np.clip(np.minimum(t - on, off - t) / ramp, 0.0, 1.0)


def long_scene(
    rng: np.random.Generator, k: int, seconds: float = LONG_SECONDS, min_span: float = 5.0
) -> LongScene:
    """A random `seconds`-long scene of k objects whose sources start and stop."""
    if not 1 <= k <= tw.NUM_CLASSES:
        raise ValueError(f"k must lie in [1, {tw.NUM_CLASSES}], got {k}")
    if not 0 < min_span <= seconds:
        raise ValueError(f"min_span must lie in (0, {seconds}], got {min_span}")
    classes = tuple(int(c) for c in rng.choice(tw.NUM_CLASSES, k, replace=False))
    boxes = toy_batches.random_boxes(rng, k)
    n = int(round(seconds * tw.SR))
    frames_n = tw.num_frames_for(seconds)
    stems = np.zeros((k, n), np.float32)
    envs = np.zeros((k, frames_n), np.float32)
    spans = np.zeros((k, 2))
    for i, c in enumerate(classes):
        wave, _ = tw.object_sound(c, rng, seconds)
        on = float(rng.uniform(0.0, max(0.0, min(seconds / 2, seconds - min_span))))
        off = float(rng.uniform(min(on + min_span, seconds), seconds))
        spans[i] = on, off
        stems[i] = wave * _gate(n, tw.SR, on, off)
        envs[i] = tw._frame_rms(stems[i], frames_n, tw.SR)
    bg = int(rng.integers(len(tw.BACKGROUNDS)))
    tex = int(rng.integers(2**31))
    centers = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    sizes = np.array([tw._fit_size(c, b) for c, b in zip(classes, boxes)], np.float32)
    # frame by frame, an object is drawn only inside its span
    cls = np.where(span_frames(spans, frames_n).T, np.array(classes)[None], -1)  # [F, K]
    frames = tw.render_arrays(
        cls, np.broadcast_to(centers, (frames_n, k, 2)).astype(np.float32),
        np.broadcast_to(sizes, (frames_n, k)), np.full(frames_n, bg), np.full(frames_n, tex),
        envs.T[:, :, None].copy(), tw.RES,
    )[:, 0]  # fmt: skip
    return LongScene(classes, boxes, spans, stems, envs, frames, bg, int(rng.integers(2**31)))


def span_frames(spans: np.ndarray, frames: int) -> np.ndarray:
    """bool [K, F]: frame f's centre (f + 0.5) / FPS lies in span k."""
    t = (np.arange(frames) + 0.5) / tw.FPS
    return (t[None] >= spans[:, :1]) & (t[None] < spans[:, 1:])


def make_long_scenes(n: int, k: int = 2, seed: int = 0, **kw) -> list[LongScene]:
    """n scenes, scene i a function of (seed, k, i) only."""
    return [long_scene(np.random.default_rng([int(seed), 12, k, i]), k, **kw) for i in range(n)]


def stereo_stems(stems: np.ndarray, boxes: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """float32 [K, 2, N]: stem k panned by its box's centre x (constant power) and scaled to an
    level (`audio.layout.source_level` of its frame RMS) of 0.1 x its size / the largest size."""
    stems = np.asarray(stems, np.float32)
    x = 0.5 * (np.asarray(boxes)[:, 0] + np.asarray(boxes)[:, 2])
    seconds = stems.shape[1] / tw.SR
    frames = tw.num_frames_for(seconds)
    rms = np.array(
        [layout.source_level(layout.frame_rms(s, tw.SR, frames, seconds)[0]) for s in stems]
    )
    gain = 0.1 / np.maximum(rms, 1e-12) * np.asarray(sizes, np.float64) / float(np.max(sizes))
    lr = np.stack([np.cos(x * np.pi / 2), np.sin(x * np.pi / 2)], axis=1) * gain[:, None]
    return (stems[:, None, :] * lr[:, :, None]).astype(np.float32)
