"""ToyWorld: a procedural miniature audio-visual world in which every Maestro stage trains on CPU.

A *scene* holds K = 0..4 sound objects (each class at most once) over one of 3 backgrounds. A
clip lasts `SECONDS` = 4 s of 16 kHz audio and `NUM_FRAMES` = 8 frames of `RES` x `RES` = 32 x 32
RGB at `FPS` = 2 (frame f shows the time window [f / FPS, (f + 1) / FPS)).

Sound objects (`OBJECTS`, label = caption word pair; colour in RGB 0..255):

  ===============  ==============  =========  ===============================================
  label            colour          shape      sound
  ===============  ==============  =========  ===============================================
  red disc         (220, 40, 40)   disc       880 Hz beeps (+ octave), gated on/off at a
                                              random 2-4 Hz rate and phase, in active frames
  blue square      (40, 80, 230)   square     110 Hz hum + 3 harmonics under a slow sin^2
                                              amplitude swell (period 2-3.5 s)
  green triangle   (40, 200, 60)   triangle   band-passed (2-4 kHz) noise bursts, one at a
                                              random time (0.15-0.35 s long) per active frame
  yellow ring      (235, 215, 40)  ring       rising 500 -> 1500 Hz chirps (0.3-0.4 s), one
                                              per active frame, repeated
  ===============  ==============  =========  ===============================================

"Active frames" are a random 3..5 of the 8 half-second windows (the others are silent), so every
class has clearly varying loudness over a clip. Each stem is scaled to a random peak in
[0.3, 0.5].

Backgrounds (`BACKGROUNDS`; all low-saturation, every pixel farther than 90 RGB units from every
object colour): "night" (dark navy vertical gradient; faint cricket hiss: 4.5-7 kHz noise
pulsed at ~20 Hz), "sand" (beige with grey speckle texture; wind: low-passed noise with a slow
swell), "room" (mid grey, slight gradient; faint 50 Hz mains hum with harmonics). Ambient audio
peaks at ~0.05, well below the objects.

Visuals: each object is drawn in its flat class colour (antialiased edges) centred at
`centers[k]`, with radius `size * (0.55 + 0.45 * env[f]) * res` in frame f, where `env` is the
object's *loudness envelope*: the per-frame RMS of its stem over the frame's window, normalised
to max 1 (`object_sound`). Objects grow when loud and shrink when quiet, so audio timing is
visible and learnable. Later objects are drawn over earlier ones.

Captions: object labels in scene order joined by " and ", then " on <background>", e.g.
"red disc and blue square on sand"; without background "red disc and blue square"; an empty
scene is captioned by its background alone ("night") or "".

Batches for the trainers (`image_batch`, `video_batch`, `separation_batch`) are vectorised numpy;
`write_cim_dataset` writes single-object clips in the `data.prepare` on-disk format;
`demo_job` bundles a fixed toy mixture with boxes; `placement` scores colour-based placement of
each class inside its box. Everything is seeded by a `numpy.random.Generator` and deterministic.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SR = 16000
SECONDS = 4.0
NUM_FRAMES = 8
FPS = 2.0
RES = 32

# Envelopes for training batches come from the amplitude envelope at this control rate (the
# carrier has near-constant power, so frame RMS of the envelope = frame RMS of the wave, up to
# a constant that normalisation removes); this skips synthesising audio nobody listens to.
_CONTROL_SR = 1000
_MAX_SIZE = 0.22
_MIN_SIZE = 0.12


@dataclasses.dataclass(frozen=True)
class ObjectClass:
    name: str
    label: str
    color: tuple[int, int, int]
    shape: str
    sound: str


@dataclasses.dataclass(frozen=True)
class Background:
    name: str
    label: str
    color: tuple[int, int, int]  # mean colour (the rendering adds gradient / texture)
    texture: str
    ambient: str


OBJECTS: tuple[ObjectClass, ...] = (
    ObjectClass("red_disc", "red disc", (220, 40, 40), "disc", "beeps"),
    ObjectClass("blue_square", "blue square", (40, 80, 230), "square", "hum"),
    ObjectClass("green_triangle", "green triangle", (40, 200, 60), "triangle", "noise_bursts"),
    ObjectClass("yellow_ring", "yellow ring", (235, 215, 40), "ring", "chirps"),
)
BACKGROUNDS: tuple[Background, ...] = (
    Background("night", "night", (21, 27, 59), "gradient", "crickets"),
    Background("sand", "sand", (196, 178, 148), "speckle", "wind"),
    Background("room", "room", (128, 128, 128), "flat", "hum50"),
)
OBJECT_COLORS = np.array([o.color for o in OBJECTS], np.float32)
_NUM_OBJ = len(OBJECTS)


def labels() -> list[str]:
    """Object labels in class order."""
    return [o.label for o in OBJECTS]


# ==================================================================================================
# Audio
# ==================================================================================================


def _num_frames(seconds: float) -> int:
    t = int(round(seconds * FPS))
    if not np.isfinite(seconds) or t < 1:
        raise ValueError(f"seconds must give at least one frame at {FPS} fps, got {seconds}")
    return t


def _check_cls(cls: int) -> int:
    if int(cls) != cls or not 0 <= cls < _NUM_OBJ:
        raise ValueError(f"object class must be an int in [0, {_NUM_OBJ}), got {cls!r}")
    return int(cls)


def _active_frames(rng: np.random.Generator, t: int) -> np.ndarray:
    """bool [T]: the frames in which a gated class sounds (3..5 of 8; at least one)."""
    lo = max(1, int(round(t * 3 / 8)))
    hi = max(lo, min(t - 1, int(round(t * 5 / 8)))) if t > 1 else 1
    k = int(rng.integers(lo, hi + 1))
    mask = np.zeros(t, bool)
    mask[rng.choice(t, k, replace=False)] = True
    return mask


def _draw_params(cls: int, rng: np.random.Generator, t: int) -> dict:
    p: dict = {"cls": cls, "T": t, "peak": float(rng.uniform(0.3, 0.5))}
    if cls == 0:
        p.update(active=_active_frames(rng, t), rate=rng.uniform(2, 4), phase=rng.uniform())
    elif cls == 1:
        p.update(period=rng.uniform(2.0, 3.5), phase=rng.uniform(0, np.pi))
        p["hphase"] = rng.uniform(0, 2 * np.pi, 4)
    elif cls == 2:
        dur = rng.uniform(0.15, 0.35, t)
        p.update(active=_active_frames(rng, t), dur=dur, offset=rng.uniform(0, 1, t) * (0.5 - dur))
    else:
        p.update(active=_active_frames(rng, t), dur=rng.uniform(0.3, 0.4, t))
        p["offset"] = rng.uniform(0, 0.1, t)
    return p


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average (via cumsum) that softens gate edges (no clicks)."""
    if width <= 1:
        return x
    c = np.concatenate([[0.0], np.cumsum(x)])
    n = x.size
    i = np.arange(n)
    lo = np.clip(i - width // 2, 0, n)
    hi = np.clip(i - width // 2 + width, 0, n)
    return (c[hi] - c[lo]) / width


def _local_time(p: dict, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frame index, time since the frame's event start) per sample."""
    fi = np.minimum((t * FPS).astype(np.int64), p["T"] - 1)
    return fi, t - fi / FPS - p["offset"][fi]


def _amplitude(p: dict, t: np.ndarray, sr: float) -> np.ndarray:
    """The slow amplitude envelope of a class sound (float64, same length as t)."""
    cls = p["cls"]
    if cls == 1:
        return np.sin(np.pi * t / p["period"] + p["phase"]) ** 2
    fi = np.minimum((t * FPS).astype(np.int64), p["T"] - 1)
    if cls == 0:
        gate = np.mod(p["rate"] * t + p["phase"], 1.0) < 0.5
        return _smooth((p["active"][fi] & gate).astype(np.float64), int(round(0.008 * sr)))
    fi, tau = _local_time(p, t)
    dur = p["dur"][fi]
    inside = p["active"][fi] & (tau >= 0) & (tau < dur)
    if cls == 2:
        shape = 0.4 + 0.6 * np.exp(-4.0 * np.clip(tau, 0, None) / dur)
        return _smooth(inside * shape, int(round(0.01 * sr)))
    ramp = np.clip(np.minimum(tau, dur - tau) / 0.02, 0, 1)
    return inside * ramp


def _bandpass_noise(rng: np.random.Generator, n: int, sr: float, lo: float, hi: float):
    """Unit-RMS Gaussian noise limited to [lo, hi] Hz (raised-cosine edges), by inverse rFFT."""
    nf = n // 2 + 1
    f = np.arange(nf) * (sr / n)
    edge = max(50.0, 0.1 * (hi - lo))
    m = np.clip(np.minimum(f - (lo - edge), (hi + edge) - f) / edge, 0, 1)
    m = 0.5 - 0.5 * np.cos(np.pi * m)
    spec = np.zeros(nf, np.complex128)
    nz = np.nonzero(m)[0]
    spec[nz] = m[nz] * (rng.standard_normal(nz.size) + 1j * rng.standard_normal(nz.size))
    x = np.fft.irfft(spec, n)
    return x / max(float(np.sqrt(np.mean(x * x))), 1e-12)


def _carrier(p: dict, t: np.ndarray, sr: float, rng: np.random.Generator) -> np.ndarray:
    cls = p["cls"]
    if cls == 0:
        return np.sin(2 * np.pi * 880.0 * t) + 0.25 * np.sin(2 * np.pi * 1760.0 * t)
    if cls == 1:
        amps = (1.0, 0.5, 0.35, 0.2)
        return sum(
            a * np.sin(2 * np.pi * 110.0 * (h + 1) * t + p["hphase"][h]) for h, a in enumerate(amps)
        )
    if cls == 2:
        return _bandpass_noise(rng, t.size, sr, 2000.0, 4000.0)
    fi, tau = _local_time(p, t)
    dur = p["dur"][fi]
    return np.sin(2 * np.pi * (500.0 * tau + 1000.0 * tau * tau / (2 * dur)))


def _frame_rms(x: np.ndarray, t: int, sr: float) -> np.ndarray:
    """Normalised (max 1) RMS of x over the windows [f / FPS, (f + 1) / FPS)."""
    edges = np.minimum(np.round(np.arange(t + 1) * sr / FPS).astype(np.int64), x.size)
    c = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
    cnt = np.maximum(edges[1:] - edges[:-1], 1)
    rms = np.sqrt(np.maximum(c[edges[1:]] - c[edges[:-1]], 0) / cnt)
    m = rms.max() if rms.size else 0.0
    return (rms / m if m > 0 else rms).astype(np.float32)


def object_sound(
    cls: int, rng: np.random.Generator, seconds: float = SECONDS, sr: int = SR
) -> tuple[np.ndarray, np.ndarray]:
    """One object's stem: (wave float32 [round(seconds * sr)] with peak in [0.3, 0.5],
    frame_env float32 [round(seconds * FPS)] in [0, 1]: the normalised RMS of the wave over each
    frame's window [f / FPS, (f + 1) / FPS); it drives the object's size in the frames)."""
    cls = _check_cls(cls)
    t_frames = _num_frames(seconds)
    if sr <= 0:
        raise ValueError(f"sr must be positive, got {sr}")
    n = int(round(seconds * sr))
    p = _draw_params(cls, rng, t_frames)
    t = np.arange(n) / float(sr)
    w = _amplitude(p, t, sr) * _carrier(p, t, sr, rng)
    peak = float(np.max(np.abs(w))) if n else 0.0
    if peak > 0:
        w *= p["peak"] / peak
    return w.astype(np.float32), _frame_rms(w, t_frames, sr)


def _object_envelope(cls: int, rng: np.random.Generator, t_frames: int) -> np.ndarray:
    """float32 [T]: an envelope with the distribution of object_sound's, without the audio."""
    p = _draw_params(cls, rng, t_frames)
    t = np.arange(int(round(t_frames / FPS * _CONTROL_SR))) / float(_CONTROL_SR)
    return _frame_rms(_amplitude(p, t, _CONTROL_SR), t_frames, _CONTROL_SR)


def ambient_sound(
    bg: int, rng: np.random.Generator, seconds: float = SECONDS, sr: int = SR
) -> np.ndarray:
    """float32 [round(seconds * sr)]: the background's quiet ambience (peak 0.04..0.06)."""
    if int(bg) != bg or not 0 <= bg < len(BACKGROUNDS):
        raise ValueError(f"background must be an int in [0, {len(BACKGROUNDS)}), got {bg!r}")
    if not np.isfinite(seconds) or seconds <= 0 or sr <= 0:
        raise ValueError(f"need seconds > 0 and sr > 0, got {seconds}, {sr}")
    n = int(round(seconds * sr))
    t = np.arange(n) / float(sr)
    if bg == 0:  # crickets: high hiss pulsed at ~20 Hz in short trills
        hiss = _bandpass_noise(rng, n, sr, 4500.0, min(7000.0, 0.45 * sr))
        pulse = (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(18, 25) * t)) ** 2
        trill = np.mod(rng.uniform(1, 2) * t + rng.uniform(), 1.0) < 0.4
        w = hiss * (0.3 + 0.7 * pulse * trill)
    elif bg == 1:  # wind: low-passed noise with a slow swell
        w = _bandpass_noise(rng, n, sr, 20.0, 400.0)
        w *= 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.2, 0.4) * t + rng.uniform(0, 6.3))
    else:  # room: 50 Hz mains hum
        ph = rng.uniform(0, 2 * np.pi, 3)
        w = sum(
            a * np.sin(2 * np.pi * 50 * (h + 1) * t + ph[h]) for h, a in enumerate((1, 0.4, 0.15))
        )
        w = w + 0.05 * rng.standard_normal(n)
    peak = float(np.max(np.abs(w))) if n else 0.0
    if peak > 0:
        w = w * (0.05 * rng.uniform(0.8, 1.2) / peak)
    return np.asarray(w, np.float32)


def mixture(stems: np.ndarray, ambient: np.ndarray | None) -> np.ndarray:
    """float32 [N]: sum of stems [K, N] (+ ambient [N]), scaled to peak 0.99 only if louder."""
    stems = np.asarray(stems, np.float32)
    if stems.ndim != 2:
        raise ValueError(f"stems must be [K, N], got shape {stems.shape}")
    out = stems.sum(axis=0, dtype=np.float32)
    if ambient is not None:
        ambient = np.asarray(ambient, np.float32)
        if ambient.shape != out.shape:
            raise ValueError(f"ambient must be [{out.size}], got shape {ambient.shape}")
        out = out + ambient
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > 0.99:
        out = out * np.float32(0.99 / peak)
    return out.astype(np.float32)


# ==================================================================================================
# Scenes and rendering
# ==================================================================================================


@dataclasses.dataclass
class Scene:
    """K objects over a background. objects [K] distinct classes; centers [K, 2] (x, y) in [0, 1];
    sizes [K] base radius / frame side; envs [K, T] per-frame size envelopes in [0, 1]; seed picks
    the background texture offset (render is a pure function of the scene)."""

    objects: list[int]
    centers: np.ndarray
    sizes: np.ndarray
    background: int
    envs: np.ndarray
    seed: int = 0

    def validate(self) -> None:
        k = len(self.objects)
        if len(set(self.objects)) != k or any(not 0 <= int(c) < _NUM_OBJ for c in self.objects):
            raise ValueError(f"objects must be distinct classes in [0, {_NUM_OBJ}): {self.objects}")
        if np.shape(self.centers) != (k, 2) or np.shape(self.sizes) != (k,):
            raise ValueError(
                f"centers must be [{k}, 2] and sizes [{k}], got {np.shape(self.centers)}, "
                f"{np.shape(self.sizes)}"
            )
        if np.ndim(self.envs) != 2 or np.shape(self.envs)[0] != k:
            raise ValueError(f"envs must be [{k}, T], got {np.shape(self.envs)}")
        if not 0 <= int(self.background) < len(BACKGROUNDS):
            raise ValueError(f"background must be in [0, {len(BACKGROUNDS)}): {self.background}")


@functools.lru_cache(maxsize=16)
def _bg_textures(res: int) -> tuple[np.ndarray, np.ndarray]:
    """(base [3, res, res, 3] float32, noise [3, res, res] float32): per-background gradient and
    a fixed texture that a scene's seed rolls."""
    y = (np.arange(res, dtype=np.float32) + 0.5) / res
    x = y[None, :, None]
    y = y[:, None, None]
    night = np.array([12, 16, 40], np.float32) + y * np.array([18, 22, 38], np.float32)
    sand = np.array([196, 178, 148], np.float32) + (x - 0.5) * 10.0
    room = np.full(3, 128, np.float32) + (0.5 - y) * 16.0
    base = np.stack([np.broadcast_to(b, (res, res, 3)) for b in (night, sand, room)])
    g = np.random.default_rng(1234).standard_normal((res, res)).astype(np.float32)
    speck = np.clip(g * 7.0, -14, 14)
    noise = np.stack([np.clip(g * 1.5, -3, 3), speck, np.clip(g, -2, 2)])
    base.setflags(write=False)
    noise.setflags(write=False)
    return base, noise


def _backgrounds(bg: np.ndarray, seeds: np.ndarray, res: int) -> np.ndarray:
    """float32 [B, res, res, 3]."""
    base, noise = _bg_textures(res)
    seeds = np.asarray(seeds, np.int64)
    rows = (np.arange(res)[None] + (seeds % res)[:, None]) % res
    cols = (np.arange(res)[None] + ((seeds // res) % res)[:, None]) % res
    nz = noise[bg[:, None, None], rows[:, :, None], cols[:, None, :]]
    return base[bg] + nz[..., None]


def _coverage(shape: str, dx, dy, r) -> np.ndarray:
    """Antialiased coverage in [0, 1] from a signed distance (pixels): clip(0.5 - d, 0, 1).
    dx, dy [B, 1, H|1, W|1] offsets from the centre; r [B, T, 1, 1] radius in pixels."""
    if shape == "disc":
        d = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "ring":  # outer radius r, inner 0.45 r
        d = np.abs(np.sqrt(dx * dx + dy * dy) - 0.725 * r) - 0.275 * r
    elif shape == "square":
        d = np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    else:  # upward equilateral triangle, circumradius 1.3 r, bounding box centred
        big = 1.3 * r
        qy = dy - 0.25 * big
        qx = 0.8660254 * dx
        d = np.maximum(np.maximum(qy, qx - 0.5 * qy), -qx - 0.5 * qy) - 0.5 * big
    return np.clip(0.5 - d, 0.0, 1.0)


def _render_arrays(cls, centers, sizes, bg, seeds, envs, res: int) -> np.ndarray:
    """cls int [B, K] (-1 = no object), centers [B, K, 2], sizes [B, K], bg [B], seeds [B],
    envs [B, K, T] -> uint8 [B, T, res, res, 3]."""
    cls = np.asarray(cls, np.int64)
    b, k = cls.shape
    t = envs.shape[-1]
    img = np.empty((b, t, res, res, 3), np.float32)
    img[:] = _backgrounds(np.asarray(bg, np.int64), seeds, res)[:, None]
    pix = np.arange(res, dtype=np.float32) + 0.5
    for j in range(k):
        c = cls[:, j]
        alpha = np.zeros((b, t, res, res), np.float32)
        for s in np.unique(c[c >= 0]):
            sel = np.nonzero(c == s)[0]
            cx = (centers[sel, j, 0] * res).astype(np.float32)
            cy = (centers[sel, j, 1] * res).astype(np.float32)
            dx = pix[None, None, None, :] - cx[:, None, None, None]
            dy = pix[None, None, :, None] - cy[:, None, None, None]
            r = (sizes[sel, j, None] * (0.55 + 0.45 * envs[sel, j]) * res).astype(np.float32)
            alpha[sel] = _coverage(OBJECTS[s].shape, dx, dy, r[:, :, None, None])
        if not np.any(c >= 0):
            continue
        col = OBJECT_COLORS[np.maximum(c, 0)][:, None, None, None, :]
        img += alpha[..., None] * (col - img)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def render(scene: Scene, num_frames: int = NUM_FRAMES, res: int = RES) -> np.ndarray:
    """uint8 [num_frames, res, res, 3]: the background, then each object in order (later over
    earlier) in its class colour with radius size * (0.55 + 0.45 * env[f]) * res."""
    scene.validate()
    envs = np.asarray(scene.envs, np.float32)
    if num_frames < 1 or envs.shape[1] < num_frames:
        raise ValueError(f"num_frames must be in [1, {envs.shape[1]}] (envs), got {num_frames}")
    if res < 4:
        raise ValueError(f"res must be >= 4, got {res}")
    k = len(scene.objects)
    return _render_arrays(
        np.asarray(scene.objects, np.int64).reshape(1, k),
        np.asarray(scene.centers, np.float32).reshape(1, k, 2),
        np.asarray(scene.sizes, np.float32).reshape(1, k),
        np.array([scene.background]),
        np.array([scene.seed]),
        envs[None, :, :num_frames],
        res,
    )[0]


def caption(scene: Scene, with_background: bool = True) -> str:
    """'red disc and blue square on sand'; no objects: 'sand' (or '' without background)."""
    return _caption(scene.objects, scene.background, with_background)


def _caption(objects: Sequence[int], background: int, with_background: bool) -> str:
    objs = " and ".join(OBJECTS[int(c)].label for c in objects)
    if not with_background:
        return objs
    bg = BACKGROUNDS[int(background)].label
    return f"{objs} on {bg}" if objs else bg


_SHAPE_EXTENT = {"disc": 1.0, "ring": 1.0, "square": 0.85, "triangle": 1.126}  # half-width / r


def _check_boxes(boxes, k: int) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    if boxes.shape != (k, 4):
        raise ValueError(f"boxes must be [{k}, 4] (x0, y0, x1, y1), got shape {boxes.shape}")
    if (
        np.any(boxes < 0)
        or np.any(boxes > 1)
        or np.any(boxes[:, 2] <= boxes[:, 0])
        or np.any(boxes[:, 3] <= boxes[:, 1])
    ):
        raise ValueError(f"boxes must be (x0, y0, x1, y1) in [0, 1] with x0 < x1, y0 < y1: {boxes}")
    return boxes


def _fit_size(cls: int, box: np.ndarray) -> float:
    """Largest base radius (<= 0.22) whose full-size shape stays inside the box."""
    half = 0.5 * min(box[2] - box[0], box[3] - box[1])
    return float(min(_MAX_SIZE, half / _SHAPE_EXTENT[OBJECTS[cls].shape]))


def sample_scene(
    rng: np.random.Generator, num_objects: int, boxes: np.ndarray | None = None
) -> tuple[Scene, np.ndarray, np.ndarray]:
    """(scene, stems float32 [K, N], ambient float32 [N]) for K = num_objects distinct random
    classes over a random background, SECONDS long. Centres uniform in [0.2, 0.8]^2 and sizes in
    [0.12, 0.22], unless boxes [K, 4] (x0, y0, x1, y1) are given: then each object is centred in
    its box and as large as fits (at most 0.22). envs are the stems' loudness envelopes."""
    k = int(num_objects)
    if k != num_objects or not 0 <= k <= _NUM_OBJ:
        raise ValueError(f"num_objects must be an int in [0, {_NUM_OBJ}], got {num_objects!r}")
    if boxes is not None:
        boxes = _check_boxes(boxes, k)
    objs = [int(c) for c in rng.choice(_NUM_OBJ, k, replace=False)]
    bg = int(rng.integers(len(BACKGROUNDS)))
    seed = int(rng.integers(2**31))
    if boxes is None:
        centers = rng.uniform(0.2, 0.8, (k, 2))
        sizes = rng.uniform(_MIN_SIZE, _MAX_SIZE, k)
    else:
        centers = 0.5 * (boxes[:, :2] + boxes[:, 2:])
        sizes = np.array([_fit_size(c, b) for c, b in zip(objs, boxes)], np.float64)
    n = int(round(SECONDS * SR))
    stems = np.zeros((k, n), np.float32)
    envs = np.zeros((k, NUM_FRAMES), np.float32)
    for i, c in enumerate(objs):
        stems[i], envs[i] = object_sound(c, rng)
    ambient = ambient_sound(bg, rng)
    scene = Scene(
        objs, centers.astype(np.float32).reshape(k, 2), sizes.astype(np.float32), bg, envs, seed
    )
    return scene, stems, ambient


# ==================================================================================================
# Training batches
# ==================================================================================================


def _count_probs(max_objects: int) -> np.ndarray:
    """P(K = 0..max_objects): 0.15, 0.5, and 0.35 spread over 2..max (0.15 / 0.85 for max 1)."""
    if int(max_objects) != max_objects or not 0 <= max_objects <= _NUM_OBJ:
        raise ValueError(f"max_objects must be an int in [0, {_NUM_OBJ}], got {max_objects!r}")
    if max_objects == 0:
        return np.ones(1)
    if max_objects == 1:
        return np.array([0.15, 0.85])
    rest = 0.35 / (max_objects - 1)
    return np.array([0.15, 0.5] + [rest] * (max_objects - 1))


def _object_counts(counts: Sequence[float]) -> np.ndarray:
    """Validated P(K = 0..len-1) for `counts` (normalised)."""
    p = np.asarray(counts, np.float64)
    if p.ndim != 1 or not 2 <= p.size <= _NUM_OBJ + 1 or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(
            f"object counts must be 2..{_NUM_OBJ + 1} non-negative probabilities of K = 0, 1, ... "
            f"objects with a positive sum, got {counts!r}"
        )
    return p / p.sum()


def _separate_centers(rng: np.random.Generator, cls, sizes, tries: int = 40) -> np.ndarray:
    """Centres [B, K, 2] in [0.15, 0.85]^2 drawn one object at a time so that no two objects of
    a scene overlap (distance >= 1.15 (r_i + r_j) with full-size radii; the farthest of `tries`
    candidates when none fits)."""
    b, kmax = cls.shape
    centers = np.zeros((b, kmax, 2))
    for i in range(b):
        for j in range(kmax):
            cand = rng.uniform(0.15, 0.85, (tries, 2))
            if j == 0 or cls[i, j] < 0:
                centers[i, j] = cand[0]
                continue
            prev = centers[i, :j][cls[i, :j] >= 0]
            need = 1.15 * (sizes[i, :j][cls[i, :j] >= 0] + sizes[i, j])
            dist = np.linalg.norm(cand[:, None] - prev[None], axis=-1)  # [tries, prev]
            slack = (dist - need[None]).min(axis=1)
            ok = np.nonzero(slack >= 0)[0]
            centers[i, j] = cand[ok[0]] if ok.size else cand[int(np.argmax(slack))]
    return centers


def _batch_scenes(
    rng: np.random.Generator,
    batch: int,
    max_objects: int,
    t: int,
    counts: Sequence[float] | None = None,
    separate: bool = False,
):
    """Vectorised scene parameters for `batch` scenes (see _render_arrays) + captions pieces.

    counts: P(K = 0, 1, ...) objects (overrides `max_objects`); separate: objects of a scene do
    not overlap (`_separate_centers`). The defaults draw exactly what they always drew."""
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if counts is None:
        probs = _count_probs(max_objects)
        kmax = max(int(max_objects), 1)
    else:
        probs = _object_counts(counts)
        kmax = max(probs.size - 1, 1)
    n_obj = rng.choice(probs.size, batch, p=probs)
    order = np.argsort(rng.random((batch, _NUM_OBJ)), axis=1)[:, :kmax]
    cls = np.where(np.arange(kmax)[None] < n_obj[:, None], order, -1)
    centers = rng.uniform(0.2, 0.8, (batch, kmax, 2))
    sizes = rng.uniform(_MIN_SIZE, _MAX_SIZE, (batch, kmax))
    if separate:
        centers = _separate_centers(rng, cls, sizes)
    bg = rng.integers(len(BACKGROUNDS), size=batch)
    seeds = rng.integers(2**31, size=batch)
    envs = np.zeros((batch, kmax, t), np.float32)
    for i, j in zip(*np.nonzero(cls >= 0)):
        envs[i, j] = _object_envelope(int(cls[i, j]), rng, t)
    return cls, centers, sizes, bg, seeds, envs


def _captions(rng, cls, bg, p_empty_caption: float) -> list[str]:
    if not 0.0 <= p_empty_caption <= 1.0:
        raise ValueError(f"p_empty_caption must be in [0, 1], got {p_empty_caption}")
    with_bg = rng.random(len(bg)) < 0.5
    empty = rng.random(len(bg)) < p_empty_caption
    return [
        "" if e else _caption([c for c in row if c >= 0], g, bool(w))
        for row, g, w, e in zip(cls.tolist(), bg.tolist(), with_bg, empty)
    ]


def image_batch(
    rng: np.random.Generator,
    batch: int,
    res: int = RES,
    max_objects: int = 2,
    p_empty_caption: float = 0.0,
) -> tuple[np.ndarray, list[str]]:
    """(frames uint8 [B, res, res, 3], captions): one random frame of a random scene each."""
    if res < 4:
        raise ValueError(f"res must be >= 4, got {res}")
    cls, centers, sizes, bg, seeds, envs = _batch_scenes(rng, batch, max_objects, NUM_FRAMES)
    f = rng.integers(NUM_FRAMES, size=batch)
    envs = envs[np.arange(batch), :, f][:, :, None]
    frames = _render_arrays(cls, centers, sizes, bg, seeds, envs, res)[:, 0]
    return frames, _captions(rng, cls, bg, p_empty_caption)


def _video_scenes(rng, batch, num_frames, res, max_objects, p_empty_caption, counts, separate):
    """(frames, captions, cls, centers, sizes) of `video_batch` / `video_layout_batch`."""
    if int(num_frames) != num_frames or num_frames < 1 or res < 4:
        raise ValueError(f"need num_frames >= 1 and res >= 4, got {num_frames}, {res}")
    cls, centers, sizes, bg, seeds, envs = _batch_scenes(
        rng, batch, max_objects, int(num_frames), counts, separate
    )
    frames = _render_arrays(cls, centers, sizes, bg, seeds, envs, res)
    return frames, _captions(rng, cls, bg, p_empty_caption), cls, centers, sizes


def video_batch(
    rng: np.random.Generator,
    batch: int,
    num_frames: int = NUM_FRAMES,
    res: int = RES,
    max_objects: int = 2,
    p_empty_caption: float = 0.0,
    counts: Sequence[float] | None = None,
    separate: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """(frames uint8 [B, num_frames, res, res, 3], captions): random scenes whose objects' sizes
    follow their loudness envelopes (num_frames / FPS seconds). counts: P(K = 0, 1, ...)
    objects per scene (default: `max_objects` with 0.15 / 0.5 / 0.35 over 0 / 1 / 2+);
    separate: the objects of a scene never overlap (each one listed in the caption is seen)."""
    out = _video_scenes(rng, batch, num_frames, res, max_objects, p_empty_caption, counts, separate)
    return out[0], out[1]


def object_boxes(
    cls: np.ndarray,
    centers: np.ndarray,
    sizes: np.ndarray,
    rng: np.random.Generator | None = None,
    max_pad: float = 0.4,
) -> np.ndarray:
    """float32 [B, K, 4] (x0, y0, x1, y1) boxes around each object at full size, clipped to
    [0, 1]: the object's half-extent (size x its shape's extent), widened per side pair by a
    random factor in [1, 1 + max_pad] (x and y drawn apart; none without `rng`) so that the
    object sits centred in a box of any aspect, as `sample_scene(boxes=...)` places it. Rows of
    cls == -1 are zeros."""
    cls = np.asarray(cls, np.int64)
    b, k = cls.shape
    ext = np.array([_SHAPE_EXTENT[OBJECTS[max(int(c), 0)].shape] for c in cls.ravel()])
    half = (np.asarray(sizes, np.float64).ravel() * ext).reshape(b, k, 1)
    pad = np.ones((b, k, 2)) if rng is None else 1.0 + rng.uniform(0, max_pad, (b, k, 2))
    c = np.asarray(centers, np.float64)
    boxes = np.concatenate([c - half * pad, c + half * pad], axis=-1)
    boxes = np.clip(boxes, 0.0, 1.0)
    return np.where((cls >= 0)[..., None], boxes, 0.0).astype(np.float32)


def video_layout_batch(
    rng: np.random.Generator,
    batch: int,
    num_frames: int = NUM_FRAMES,
    res: int = RES,
    p_empty_caption: float = 0.0,
    counts: Sequence[float] | None = None,
    separate: bool = True,
    max_pad: float = 0.4,
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """`video_batch` (objects apart by default) with the layout: (frames, captions, cls int
    [B, K] (-1 = none), boxes float32 [B, K, 4] from `object_boxes`)."""
    frames, caps, cls, centers, sizes = _video_scenes(
        rng, batch, num_frames, res, 2, p_empty_caption, counts, separate
    )
    return frames, caps, cls, object_boxes(cls, centers, sizes, rng, max_pad)


def _separation_example(rng: np.random.Generator, seconds: float, sr: int, max_sources: int):
    """(mix [N], target [N], query, stems [K, N], ambient [N]) with target = stems[j] * g and
    mix = (stems.sum(0) + ambient) * g, where g <= 1 is mixture()'s peak scaling."""
    k = int(rng.integers(2, max_sources + 1))
    objs = rng.choice(_NUM_OBJ, k, replace=False)
    stems = np.stack([object_sound(int(c), rng, seconds, sr)[0] for c in objs])
    amb = ambient_sound(int(rng.integers(len(BACKGROUNDS))), rng, seconds, sr)
    j = int(rng.integers(k))
    mix = mixture(stems, amb)
    # mixture() scales a too-loud mix down; scale the target alike so it stays a part of the mix
    raw_peak = float(np.max(np.abs(stems.sum(0) + amb)))
    g = np.float32(0.99 / raw_peak) if raw_peak > 0.99 else np.float32(1.0)
    return mix, stems[j] * g, OBJECTS[int(objs[j])].label, stems, amb


def separation_batch(
    rng: np.random.Generator,
    batch: int,
    seconds: float = SECONDS,
    sr: int = SR,
    max_sources: int = 3,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(mixture float32 [B, N], target float32 [B, N], query labels [B]): each mix has
    2..max_sources distinct objects + a random ambience; the target is the stem of one object
    in the mix (scaled like the mix when mixture() had to scale it down), the query its label."""
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    if int(max_sources) != max_sources or not 2 <= max_sources <= _NUM_OBJ:
        raise ValueError(f"max_sources must be an int in [2, {_NUM_OBJ}], got {max_sources!r}")
    _num_frames(seconds)
    n = int(round(seconds * sr))
    mixes = np.zeros((batch, n), np.float32)
    targets = np.zeros((batch, n), np.float32)
    queries = []
    for i in range(batch):
        mixes[i], targets[i], q, _, _ = _separation_example(rng, seconds, sr, max_sources)
        queries.append(q)
    return mixes, targets, queries


# ==================================================================================================
# Dataset, demo, boxes, placement
# ==================================================================================================


def write_cim_dataset(
    out_dir: str | os.PathLike,
    num_clips: int,
    seed: int = 0,
    num_test: int = 0,
    res: int = RES,
) -> dict[str, int]:
    """Write a `data.prepare`-format dataset of `num_clips` single-object SECONDS-long clips.

    Clip i shows class i % 4 (random position, size, background); label = object label,
    label_index = class, audio = stem + ambience, frames rendered at FPS (8 per clip). Options:
    resolution res, clip_seconds SECONDS, num_segments 2, frames_rule 'release' (2 S = 4 frames
    per record, the 1/4 and 3/4 points of each 2 s segment: rendered frames 1, 3, 5, 7; no rule
    gives 8 frames for 2 segments, 'default' gives 2). The last num_test clips go to split
    'test'. Returns {split: n}.
    """
    from maestro_jax.data.prepare import PrepOptions
    from maestro_jax.data.synthetic import write_clip_dataset

    if int(num_clips) != num_clips or num_clips < 1 or not 0 <= num_test <= num_clips:
        raise ValueError(
            f"need num_clips >= 1 and 0 <= num_test <= num_clips: {num_clips}, {num_test}"
        )
    out_dir = Path(out_dir).absolute()
    opts = PrepOptions(
        resolution=res, frames_rule="release", num_segments=2, clip_seconds=SECONDS, min_seconds=2.0
    )
    opts.validate()
    names = labels()
    rng = np.random.default_rng(seed)

    def clips():
        for i in range(num_clips):
            split = "test" if i >= num_clips - num_test else "train"
            c = i % _NUM_OBJ
            bg = int(rng.integers(len(BACKGROUNDS)))
            stem, env = object_sound(c, rng)
            amb = ambient_sound(bg, rng)
            scene = Scene(
                [c],
                rng.uniform(0.2, 0.8, (1, 2)).astype(np.float32),
                rng.uniform(_MIN_SIZE, _MAX_SIZE, 1).astype(np.float32),
                bg,
                env[None],
                int(rng.integers(2**31)),
            )
            frames = render(scene, NUM_FRAMES, res)
            audio = mixture(stem[None], amb)
            clip_id = f"toyworld_{seed}_{i:05d}"
            yield split, clip_id, c, frames, NUM_FRAMES, FPS, audio

    return write_clip_dataset(
        out_dir,
        opts,
        names,
        "toyworld",
        seed,
        clips(),
        "ToyWorld single-object clips (maestro_jax.toy.world)",
    )


_DEMO_BOXES = {
    1: [[0.25, 0.2, 0.75, 0.8]],
    2: [[0.05, 0.2, 0.45, 0.8], [0.55, 0.2, 0.95, 0.8]],
    3: [[0.02, 0.25, 0.31, 0.75], [0.355, 0.25, 0.645, 0.75], [0.69, 0.25, 0.98, 0.75]],
    4: [[0.05, 0.05, 0.45, 0.45], [0.55, 0.05, 0.95, 0.45], [0.05, 0.55, 0.45, 0.95]]
    + [[0.55, 0.55, 0.95, 0.95]],
}


def demo_job(seed: int = 0, num_sources: int = 2) -> dict:
    """A bundled toy mixture: {'stems' [K, N], 'ambient' [N], 'mixture' [N], 'classes' [K],
    'labels' [K], 'boxes' [K, 4] fixed non-overlapping (2: left / right halves, 3: thirds),
    'background' int}."""
    if num_sources not in _DEMO_BOXES:
        raise ValueError(f"num_sources must be in 1..4, got {num_sources!r}")
    rng = np.random.default_rng(seed)
    boxes = np.array(_DEMO_BOXES[num_sources], np.float32)
    scene, stems, amb = sample_scene(rng, num_sources, boxes)
    return {
        "stems": stems,
        "ambient": amb,
        "mixture": mixture(stems, amb),
        "classes": list(scene.objects),
        "labels": [OBJECTS[c].label for c in scene.objects],
        "boxes": boxes,
        "background": scene.background,
    }


def _overlaps(a: np.ndarray, others: list) -> bool:
    return any(a[0] < o[2] and o[0] < a[2] and a[1] < o[3] and o[1] < a[3] for o in others)


def random_boxes(
    rng: np.random.Generator, k: int, min_size: float = 0.35, max_size: float = 0.5
) -> np.ndarray:
    """float32 [k, 4]: k non-overlapping boxes (x0, y0, x1, y1) in [0, 1], sides in
    [min_size, max_size] (rejection sampling; a jittered grid when that keeps failing)."""
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    if not 0 < min_size <= max_size <= 1:
        raise ValueError(f"need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}")
    for _ in range(50):
        out: list = []
        for _ in range(k):
            for _ in range(100):
                w, h = rng.uniform(min_size, max_size, 2)
                x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
                b = np.array([x0, y0, x0 + w, y0 + h])
                if not _overlaps(b, out):
                    out.append(b)
                    break
            else:
                break
        if len(out) == k:
            return np.array(out, np.float32).reshape(k, 4)
    g = int(np.ceil(np.sqrt(k)))
    cell = 1.0 / g
    if min_size > cell:
        raise ValueError(f"cannot fit {k} boxes of side >= {min_size} in the unit square")
    cells = rng.choice(g * g, k, replace=False)
    out = []
    for c in cells:
        w, h = rng.uniform(min_size, min(max_size, cell), 2)
        x0 = (c % g) * cell + rng.uniform(0, cell - w)
        y0 = (c // g) * cell + rng.uniform(0, cell - h)
        out.append([x0, y0, x0 + w, y0 + h])
    return np.clip(np.array(out, np.float32), 0, 1).reshape(k, 4)


OUTCOMES = ("correct", "other", "elsewhere", "absent")


def placement(
    frames: np.ndarray,
    boxes: np.ndarray,
    classes: Sequence[int],
    tau: float = 90.0,
    min_frac: float = 0.08,
) -> np.ndarray:
    """bool [K, T]: is class classes[k] the object drawn in box k in frame t?

    frames [T, H, W, 3] RGB 0..255 (uint8 or float); boxes [K, 4] or [K, T, 4] (x0, y0, x1, y1)
    in [0, 1], pixels as `maestro_jax.metrics.placement.box_pixel_range`. Each pixel votes for
    its nearest object colour if within `tau` (Euclidean RGB); the box's prediction is the class
    with most votes if those reach `min_frac` of the box's pixels, else none (never correct).
    """
    return placement_outcomes(frames, boxes, classes, tau, min_frac) == 0


def placement_outcomes(
    frames: np.ndarray,
    boxes: np.ndarray,
    classes: Sequence[int],
    tau: float = 90.0,
    min_frac: float = 0.08,
) -> np.ndarray:
    """int [K, T]: what box k shows in frame t, an index into `OUTCOMES`:

    0 correct: its own class wins the box (`placement`); 1 other: another class wins it;
    2 elsewhere: no class wins it, and its own class is drawn elsewhere in the frame (at least
    as many pixels as a win would need); 3 absent: no class wins it, and its own class is not
    drawn in the frame. Arguments as `placement`."""
    from maestro_jax.metrics.placement import box_pixel_range

    frames = np.asarray(frames, np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    t, h, w, _ = frames.shape
    classes = [int(c) for c in classes]
    k = len(classes)
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim == 2:
        _check_boxes(boxes, k)
        boxes = np.broadcast_to(boxes[:, None], (k, t, 4))
    elif boxes.shape != (k, t, 4):
        raise ValueError(f"boxes must be [{k}, 4] or [{k}, {t}, 4], got shape {boxes.shape}")
    else:
        _check_boxes(boxes.reshape(-1, 4), k * t)
    d2 = np.square(frames[..., None, :] - OBJECT_COLORS).sum(-1)  # [T, H, W, C]
    near = np.argmin(d2, axis=-1)
    vote = np.where(np.min(d2, axis=-1) <= tau * tau, near, -1)
    in_frame = np.stack([(vote == c).sum(axis=(1, 2)) for c in range(_NUM_OBJ)], -1)  # [T, C]
    out = np.zeros((k, t), np.int32)
    for j in range(k):
        for f in range(t):
            x0, x1 = box_pixel_range(boxes[j, f, 0], boxes[j, f, 2], w)
            y0, y1 = box_pixel_range(boxes[j, f, 1], boxes[j, f, 3], h)
            v = vote[f, y0:y1, x0:x1].ravel()
            counts = np.bincount(v[v >= 0], minlength=_NUM_OBJ)
            best = int(np.argmax(counts))
            need = min_frac * v.size
            if counts[best] >= need:
                out[j, f] = 0 if best == classes[j] else 1
            else:
                out[j, f] = 2 if in_frame[f, classes[j]] >= need else 3
    return out
