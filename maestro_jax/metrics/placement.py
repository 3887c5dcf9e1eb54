"""Placement: does each sound source appear inside its own box? A detector-free measure.

Maestro places source i in box B^i (Attention Mosaic). The paper shows placement qualitatively;
to measure it without an object detector (no detector covers VGGSound's 309 classes, and a
detector would add its own class vocabulary and errors), this module scores each box by what the
generator itself was asked to put there: the box's **own audio stem**.

**Crop IA contrast** (`placement_from_similarity`, `placement_from_media`). For box k (source
s_k) and every stem s, sim[k, s] = mean over frames of cos(ImageBind vision embedding of the box
crop, ImageBind audio embedding of stem s) — IA restricted to the box. A box is *placed* when its
own stem wins: argmax_s sim[k, s] == s_k. Reported: accuracy (fraction of placed boxes), margin
(mean of sim[k, s_k] - max over other stems), and the number of boxes. Why a contrast between
stems on the same crop rather than the raw crop IA: absolute ImageBind cosines differ by class and
by crop size (a small crop of sky scores differently from a full frame), so a threshold on raw IA
is not comparable across boxes; comparing stems on the *same* crop cancels the crop's baseline and
asks only "is this region about this sound rather than the other ones?". Chance level is 1 / S
for S sources; it needs S >= 2.

Crops: pixels whose centres lie inside the box (the same rule the mosaic uses for latent cells),
i.e. columns floor(l W + 0.5) ... ceil(r W - 0.5) - 1, at least one pixel; each crop is resized
to `crop_size` x `crop_size` (bicubic) so a moving box gives one uniform batch and the whole box
content reaches the embedder (its own centre crop would cut a non-square box).

**Box colour accuracy** (`box_color_accuracy`): the same decision for synthetic worlds where each
class has a known colour (toy data, unit tests): per frame, the mean colour inside box k is
assigned to the nearest class colour; accuracy over (box, frame) pairs and the margin (distance
to the nearest other class colour minus distance to the own colour, in 0..255 units).

Boxes are frame-relative (left, top, right, bottom) in [0, 1], [K, 4] for the whole clip or
[K, T, 4] per frame (docs/method.md, "Boxes").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from maestro_jax.metrics.ia import cosine


@dataclasses.dataclass(frozen=True)
class PlacementResult:
    accuracy: float  # fraction of boxes (or box-frames) whose own source / class wins
    margin: float  # mean (own - best other) similarity, or colour-distance margin
    n: int  # number of decisions averaged (boxes, or box-frames)
    correct: np.ndarray  # [n] bool per decision


def _boxes_per_frame(boxes: np.ndarray, t: int) -> np.ndarray:
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim == 2 and boxes.shape[-1] == 4:
        boxes = np.broadcast_to(boxes[:, None], (boxes.shape[0], t, 4))
    if boxes.ndim != 3 or boxes.shape[1:] != (t, 4):
        raise ValueError(f"boxes must be [K, 4] or [K, T={t}, 4], got shape {boxes.shape}")
    l, tp, r, b = (boxes[..., i] for i in range(4))
    if np.any(r <= l) or np.any(b <= tp) or np.any(boxes < 0) or np.any(boxes > 1):
        raise ValueError(
            "boxes must be (left, top, right, bottom) in [0, 1] with left<right, top<bottom"
        )
    return boxes


def box_pixel_range(lo: float, hi: float, n: int) -> tuple[int, int]:
    """[start, stop) of the pixels (of n) whose centres (i + 0.5) / n lie in [lo, hi]; at least 1."""
    start = int(np.floor(lo * n + 0.5))
    stop = int(np.ceil(hi * n - 0.5))
    start = min(max(start, 0), n - 1)
    stop = max(min(stop, n), start + 1)
    return start, stop


def crop_boxes(frames: np.ndarray, boxes: np.ndarray, crop_size: int = 224) -> np.ndarray:
    """frames uint8 [T, H, W, 3], boxes [K, 4] | [K, T, 4] -> crops uint8 [K, T, S, S, 3]."""
    import cv2

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    t, h, w, _ = frames.shape
    boxes = _boxes_per_frame(boxes, t)
    out = np.empty((boxes.shape[0], t, crop_size, crop_size, 3), frames.dtype)
    for k in range(boxes.shape[0]):
        for i in range(t):
            x0, x1 = box_pixel_range(boxes[k, i, 0], boxes[k, i, 2], w)
            y0, y1 = box_pixel_range(boxes[k, i, 1], boxes[k, i, 3], h)
            crop = np.ascontiguousarray(frames[i, y0:y1, x0:x1])
            out[k, i] = cv2.resize(crop, (crop_size, crop_size), interpolation=cv2.INTER_CUBIC)
    return out


def placement_from_similarity(sim: np.ndarray, own: Sequence[int]) -> PlacementResult:
    """sim [K, S]: box k's crop vs stem s; own [K]: each box's source index."""
    sim = np.asarray(sim, np.float64)
    own = np.asarray(own, np.int64)
    if sim.ndim != 2 or own.shape != (sim.shape[0],):
        raise ValueError(f"sim must be [K, S] and own [K], got {sim.shape} and {own.shape}")
    k, s = sim.shape
    if s < 2:
        raise ValueError("placement compares stems: it needs at least 2 sources")
    if np.any(own < 0) or np.any(own >= s):
        raise ValueError(f"own source indices must be in [0, {s}), got {own.tolist()}")
    own_sim = sim[np.arange(k), own]
    others = sim.copy()
    others[np.arange(k), own] = -np.inf
    margin = own_sim - others.max(axis=1)
    correct = margin > 0  # ties count as not placed
    return PlacementResult(float(correct.mean()), float(margin.mean()), k, correct)


def crop_stem_similarity(crop_emb: np.ndarray, stem_emb: np.ndarray) -> np.ndarray:
    """crop_emb [K, T, D] (per box, per frame), stem_emb [S, D] -> sim [K, S] = mean over frames
    of the cosine."""
    crop_emb = np.asarray(crop_emb)
    stem_emb = np.asarray(stem_emb)
    if crop_emb.ndim != 3 or stem_emb.ndim != 2 or crop_emb.shape[-1] != stem_emb.shape[-1]:
        raise ValueError(
            f"want crop_emb [K, T, D], stem_emb [S, D]: {crop_emb.shape}, {stem_emb.shape}"
        )
    return cosine(crop_emb[:, :, None, :], stem_emb[None, None]).mean(axis=1)


def placement_from_media(
    frames: np.ndarray,
    boxes: np.ndarray,
    stems: Sequence[np.ndarray],
    embed_vision: Callable[[np.ndarray], np.ndarray],
    embed_audio: Callable[[np.ndarray], np.ndarray],
    box_sources: Sequence[int] | None = None,
    crop_size: int = 224,
) -> PlacementResult:
    """Crop-IA placement of one video: box k belongs to stem box_sources[k] (default: k)."""
    k = np.asarray(boxes).shape[0]
    own = np.arange(k) if box_sources is None else np.asarray(box_sources)
    crops = crop_boxes(frames, boxes, crop_size)  # [K, T, S, S, 3]
    crop_emb = np.stack([np.asarray(embed_vision(c)) for c in crops])  # [K, T, D]
    stem_emb = np.stack([np.asarray(embed_audio(w)) for w in stems])  # [S, D]
    if stem_emb.ndim != 2:
        raise ValueError("embed_audio must return one [D] embedding per stem (use the clip mean)")
    return placement_from_similarity(crop_stem_similarity(crop_emb, stem_emb), own)


def box_color_accuracy(
    frames: np.ndarray,
    boxes: np.ndarray,
    class_colors: np.ndarray,
    box_classes: Sequence[int],
) -> PlacementResult:
    """Synthetic worlds: per frame, is the mean colour inside box k nearest to the colour of its
    class box_classes[k]? frames [T, H, W, 3], boxes [K, 4] | [K, T, 4], class_colors [C, 3]
    (same channel order and 0..255 range as the frames)."""
    frames = np.asarray(frames, np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    colors = np.asarray(class_colors, np.float64)
    own = np.asarray(box_classes, np.int64)
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.shape[0] < 2:
        raise ValueError(f"class_colors must be [C >= 2, 3], got shape {colors.shape}")
    t, h, w, _ = frames.shape
    boxes = _boxes_per_frame(boxes, t)
    if own.shape != (boxes.shape[0],) or np.any(own < 0) or np.any(own >= colors.shape[0]):
        raise ValueError(f"box_classes must be [K={boxes.shape[0]}] indices into class_colors")
    margins, correct = [], []
    for k in range(boxes.shape[0]):
        for i in range(t):
            x0, x1 = box_pixel_range(boxes[k, i, 0], boxes[k, i, 2], w)
            y0, y1 = box_pixel_range(boxes[k, i, 1], boxes[k, i, 3], h)
            mean = frames[i, y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
            dist = np.linalg.norm(colors - mean, axis=1)
            d_own = dist[own[k]]
            d_other = np.delete(dist, own[k]).min()
            margins.append(d_other - d_own)
            correct.append(d_other > d_own)
    correct = np.asarray(correct)
    return PlacementResult(float(correct.mean()), float(np.mean(margins)), correct.size, correct)


# ---------------------------------------------------------------------------------------------
# Colour placement (worlds whose classes have flat colours: the toy world)

COLOUR_OUTCOMES = ("correct", "other", "elsewhere", "absent")


def check_unit_boxes(boxes: np.ndarray) -> None:
    """ValueError unless boxes [..., 4] are (x0, y0, x1, y1) in [0, 1] with x0 < x1, y0 < y1."""
    if (
        np.any(boxes < 0)
        or np.any(boxes > 1)
        or np.any(boxes[:, 2] <= boxes[:, 0])
        or np.any(boxes[:, 3] <= boxes[:, 1])
    ):
        raise ValueError(f"boxes must be (x0, y0, x1, y1) in [0, 1] with x0 < x1, y0 < y1: {boxes}")


def colour_placement(
    frames: np.ndarray,
    boxes: np.ndarray,
    classes: Sequence[int],
    colors: np.ndarray,
    tau: float = 90.0,
    min_frac: float = 0.08,
) -> np.ndarray:
    """bool [K, T]: is class classes[k] the object drawn in box k in frame t? For worlds whose
    classes have flat colours (the toy world: `maestro_jax.toy.world.OBJECT_COLORS`).

    frames [T, H, W, 3] RGB 0..255 (uint8 or float); boxes [K, 4] or [K, T, 4] (x0, y0, x1, y1)
    in [0, 1], pixels as `box_pixel_range`; colors [C, 3] RGB of the classes. Each pixel votes
    for its nearest class colour if within `tau` (Euclidean RGB); the box's prediction is the
    class with most votes if those reach `min_frac` of the box's pixels, else none (never
    correct).
    """
    return colour_placement_outcomes(frames, boxes, classes, colors, tau, min_frac) == 0


def colour_placement_outcomes(
    frames: np.ndarray,
    boxes: np.ndarray,
    classes: Sequence[int],
    colors: np.ndarray,
    tau: float = 90.0,
    min_frac: float = 0.08,
) -> np.ndarray:
    """int [K, T]: what box k shows in frame t, an index into `COLOUR_OUTCOMES`:

    0 correct: its own class wins the box (`colour_placement`); 1 other: another class wins it;
    2 elsewhere: no class wins it, and its own class is drawn elsewhere in the frame (at least
    as many pixels as a win would need); 3 absent: no class wins it, and its own class is not
    drawn in the frame. Arguments as `colour_placement`."""
    frames = np.asarray(frames, np.float32)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {frames.shape}")
    t, h, w, _ = frames.shape
    classes = [int(c) for c in classes]
    k = len(classes)
    boxes = np.asarray(boxes, np.float64)
    colors = np.asarray(colors, np.float32)
    n_cls = colors.shape[0]
    if boxes.ndim == 2:
        if boxes.shape != (k, 4):
            raise ValueError(f"boxes must be [{k}, 4] or [{k}, {t}, 4], got shape {boxes.shape}")
        boxes = np.broadcast_to(boxes[:, None], (k, t, 4))
    elif boxes.shape != (k, t, 4):
        raise ValueError(f"boxes must be [{k}, 4] or [{k}, {t}, 4], got shape {boxes.shape}")
    check_unit_boxes(boxes.reshape(-1, 4))
    d2 = np.square(frames[..., None, :] - colors).sum(-1)  # [T, H, W, C]
    near = np.argmin(d2, axis=-1)
    vote = np.where(np.min(d2, axis=-1) <= tau * tau, near, -1)
    in_frame = np.stack([(vote == c).sum(axis=(1, 2)) for c in range(n_cls)], -1)  # [T, C]
    out = np.zeros((k, t), np.int32)
    for j in range(k):
        for f in range(t):
            x0, x1 = box_pixel_range(boxes[j, f, 0], boxes[j, f, 2], w)
            y0, y1 = box_pixel_range(boxes[j, f, 1], boxes[j, f, 3], h)
            v = vote[f, y0:y1, x0:x1].ravel()
            counts = np.bincount(v[v >= 0], minlength=n_cls)
            best = int(np.argmax(counts))
            need = min_frac * v.size
            if counts[best] >= need:
                out[j, f] = 0 if best == classes[j] else 1
            else:
                out[j, f] = 2 if in_frame[f, classes[j]] >= need else 3
    return out
