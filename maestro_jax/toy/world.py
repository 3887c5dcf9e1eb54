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

This module defines the world: its classes, backgrounds, sounds (`object_sound`,
`ambient_sound`, `mixture`), scenes and their rendering. `maestro_jax.toy.batches` draws the
trainers' batches, the CIM dataset, the demo job and random layouts from it; colour-based
placement is `maestro_jax.metrics.placement.colour_placement` with `OBJECT_COLORS`. Everything
is seeded by a `numpy.random.Generator` and deterministic.
"""

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from maestro_jax.metrics.placement import check_unit_boxes

SR = 16000
SECONDS = 4.0
NUM_FRAMES = 8
FPS = 2.0
RES = 32

# Envelopes for training batches come from the amplitude envelope at this control rate (the
# carrier has near-constant power, so frame RMS of the envelope = frame RMS of the wave, up to
# a constant that normalisation removes); this skips synthesising audio nobody listens to.
_CONTROL_SR = 1000
MAX_SIZE = 0.22
MIN_SIZE = 0.12


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
NUM_CLASSES = len(OBJECTS)


def labels() -> list[str]:
    """Object labels in class order."""
    return [o.label for o in OBJECTS]


# ==================================================================================================
# Audio
# ==================================================================================================


def num_frames_for(seconds: float) -> int:
    t = int(round(seconds * FPS))
    if not np.isfinite(seconds) or t < 1:
        raise ValueError(f"seconds must give at least one frame at {FPS} fps, got {seconds}")
    return t


def _check_cls(cls: int) -> int:
    if int(cls) != cls or not 0 <= cls < NUM_CLASSES:
        raise ValueError(f"object class must be an int in [0, {NUM_CLASSES}), got {cls!r}")
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
    t_frames = num_frames_for(seconds)
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


def object_envelope(cls: int, rng: np.random.Generator, t_frames: int) -> np.ndarray:
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
        if len(set(self.objects)) != k or any(not 0 <= int(c) < NUM_CLASSES for c in self.objects):
            raise ValueError(
                f"objects must be distinct classes in [0, {NUM_CLASSES}): {self.objects}"
            )
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


def render_arrays(cls, centers, sizes, bg, seeds, envs, res: int) -> np.ndarray:
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
    return render_arrays(
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
    return caption_of(scene.objects, scene.background, with_background)


def caption_of(objects: Sequence[int], background: int, with_background: bool) -> str:
    objs = " and ".join(OBJECTS[int(c)].label for c in objects)
    if not with_background:
        return objs
    bg = BACKGROUNDS[int(background)].label
    return f"{objs} on {bg}" if objs else bg


SHAPE_EXTENT = {"disc": 1.0, "ring": 1.0, "square": 0.85, "triangle": 1.126}  # half-width / r


def check_boxes(boxes, k: int) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    if boxes.shape != (k, 4):
        raise ValueError(f"boxes must be [{k}, 4] (x0, y0, x1, y1), got shape {boxes.shape}")
    check_unit_boxes(boxes)
    return boxes


def _fit_size(cls: int, box: np.ndarray) -> float:
    """Largest base radius (<= 0.22) whose full-size shape stays inside the box."""
    half = 0.5 * min(box[2] - box[0], box[3] - box[1])
    return float(min(MAX_SIZE, half / SHAPE_EXTENT[OBJECTS[cls].shape]))


def sample_scene(
    rng: np.random.Generator, num_objects: int, boxes: np.ndarray | None = None
) -> tuple[Scene, np.ndarray, np.ndarray]:
    """(scene, stems float32 [K, N], ambient float32 [N]) for K = num_objects distinct random
    classes over a random background, SECONDS long. Centres uniform in [0.2, 0.8]^2 and sizes in
    [0.12, 0.22], unless boxes [K, 4] (x0, y0, x1, y1) are given: then each object is centred in
    its box and as large as fits (at most 0.22). envs are the stems' loudness envelopes."""
    k = int(num_objects)
    if k != num_objects or not 0 <= k <= NUM_CLASSES:
        raise ValueError(f"num_objects must be an int in [0, {NUM_CLASSES}], got {num_objects!r}")
    if boxes is not None:
        boxes = check_boxes(boxes, k)
    objs = [int(c) for c in rng.choice(NUM_CLASSES, k, replace=False)]
    bg = int(rng.integers(len(BACKGROUNDS)))
    seed = int(rng.integers(2**31))
    if boxes is None:
        centers = rng.uniform(0.2, 0.8, (k, 2))
        sizes = rng.uniform(MIN_SIZE, MAX_SIZE, k)
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
