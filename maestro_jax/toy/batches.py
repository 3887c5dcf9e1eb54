"""Draws from the toy world (`maestro_jax.toy.world`): the training batches of the toy stages
(`image_batch`, `video_batch`, `video_layout_batch`, `separation_batch`), the CIM's single-object
dataset in the `data.prepare` on-disk format (`write_cim_dataset`), the bundled demo job and
random non-overlapping box layouts. Vectorised numpy, seeded by a `numpy.random.Generator`.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from maestro_jax.toy.world import (
    BACKGROUNDS,
    FPS,
    MAX_SIZE,
    MIN_SIZE,
    NUM_CLASSES,
    NUM_FRAMES,
    OBJECTS,
    RES,
    SECONDS,
    SHAPE_EXTENT,
    SR,
    Scene,
    ambient_sound,
    caption_of,
    labels,
    mixture,
    num_frames_for,
    object_envelope,
    object_sound,
    render,
    render_arrays,
    sample_scene,
)

# ==================================================================================================
# Training batches
# ==================================================================================================


def _count_probs(max_objects: int) -> np.ndarray:
    """P(K = 0..max_objects): 0.15, 0.5, and 0.35 spread over 2..max (0.15 / 0.85 for max 1)."""
    if int(max_objects) != max_objects or not 0 <= max_objects <= NUM_CLASSES:
        raise ValueError(f"max_objects must be an int in [0, {NUM_CLASSES}], got {max_objects!r}")
    if max_objects == 0:
        return np.ones(1)
    if max_objects == 1:
        return np.array([0.15, 0.85])
    rest = 0.35 / (max_objects - 1)
    return np.array([0.15, 0.5] + [rest] * (max_objects - 1))


def _object_counts(counts: Sequence[float]) -> np.ndarray:
    """Validated P(K = 0..len-1) for `counts` (normalised)."""
    p = np.asarray(counts, np.float64)
    if p.ndim != 1 or not 2 <= p.size <= NUM_CLASSES + 1 or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(
            f"object counts must be 2..{NUM_CLASSES + 1} non-negative probabilities of K = 0, 1, ... "
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
    """Vectorised scene parameters for `batch` scenes (see render_arrays) + captions pieces.

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
    order = np.argsort(rng.random((batch, NUM_CLASSES)), axis=1)[:, :kmax]
    cls = np.where(np.arange(kmax)[None] < n_obj[:, None], order, -1)
    centers = rng.uniform(0.2, 0.8, (batch, kmax, 2))
    sizes = rng.uniform(MIN_SIZE, MAX_SIZE, (batch, kmax))
    if separate:
        centers = _separate_centers(rng, cls, sizes)
    bg = rng.integers(len(BACKGROUNDS), size=batch)
    seeds = rng.integers(2**31, size=batch)
    envs = np.zeros((batch, kmax, t), np.float32)
    for i, j in zip(*np.nonzero(cls >= 0)):
        envs[i, j] = object_envelope(int(cls[i, j]), rng, t)
    return cls, centers, sizes, bg, seeds, envs


def _captions(rng, cls, bg, p_empty_caption: float) -> list[str]:
    if not 0.0 <= p_empty_caption <= 1.0:
        raise ValueError(f"p_empty_caption must be in [0, 1], got {p_empty_caption}")
    with_bg = rng.random(len(bg)) < 0.5
    empty = rng.random(len(bg)) < p_empty_caption
    return [
        "" if e else caption_of([c for c in row if c >= 0], g, bool(w))
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
    frames = render_arrays(cls, centers, sizes, bg, seeds, envs, res)[:, 0]
    return frames, _captions(rng, cls, bg, p_empty_caption)


def _video_scenes(rng, batch, num_frames, res, max_objects, p_empty_caption, counts, separate):
    """(frames, captions, cls, centers, sizes) of `video_batch` / `video_layout_batch`."""
    if int(num_frames) != num_frames or num_frames < 1 or res < 4:
        raise ValueError(f"need num_frames >= 1 and res >= 4, got {num_frames}, {res}")
    cls, centers, sizes, bg, seeds, envs = _batch_scenes(
        rng, batch, max_objects, int(num_frames), counts, separate
    )
    frames = render_arrays(cls, centers, sizes, bg, seeds, envs, res)
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
    ext = np.array([SHAPE_EXTENT[OBJECTS[max(int(c), 0)].shape] for c in cls.ravel()])
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
    objs = rng.choice(NUM_CLASSES, k, replace=False)
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
    if int(max_sources) != max_sources or not 2 <= max_sources <= NUM_CLASSES:
        raise ValueError(f"max_sources must be an int in [2, {NUM_CLASSES}], got {max_sources!r}")
    num_frames_for(seconds)
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
            c = i % NUM_CLASSES
            bg = int(rng.integers(len(BACKGROUNDS)))
            stem, env = object_sound(c, rng)
            amb = ambient_sound(bg, rng)
            scene = Scene(
                [c],
                rng.uniform(0.2, 0.8, (1, 2)).astype(np.float32),
                rng.uniform(MIN_SIZE, MAX_SIZE, 1).astype(np.float32),
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
