"""Boxes of Attention Mosaic: one box per source, static or keyframed over the clip, presets (LR,
TD, ...), checks, and their rasterisation onto each attention layer's token grid (which cells a
source owns, and Object Locating's Gaussian maps).

Box coordinates are fractions of the frame, (left, top, right, bottom). Rasterisation happens
once per attention resolution, on the host, before sampling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

CELL_RULES = ("centre", "release")
BACKGROUNDS = ("nearest", "merge", "null")

BoxTuple = tuple[float, float, float, float]  # (left, top, right, bottom), fractions of the frame
Resolution = tuple[int, int]  # (h, w) of an attention layer's token grid


def _as_box(box: Any) -> BoxTuple:
    try:
        vals = tuple(float(c) for c in box)
    except (TypeError, ValueError) as e:
        raise ValueError(f"a box must be 4 numbers (left, top, right, bottom), got {box!r}") from e
    if len(vals) != 4:
        raise ValueError(f"a box must be 4 numbers (left, top, right, bottom), got {box!r}")
    return vals  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Boxes:
    """The box of ONE source over the clip: static or keyframed.

    `keyframes` is a sequence of (position, (left, top, right, bottom)); positions are fractions
    of the clip in [0, 1] (0 = first frame, 1 = last frame), strictly increasing. Frame f of F sits
    at position f / (F - 1) (0 when F = 1); its box interpolates the keyframes linearly per
    coordinate and holds the first/last keyframe outside their range. Coordinates are checked
    (with the source index in the message) by `check_boxes`, which every builder calls.
    """

    keyframes: tuple[tuple[float, BoxTuple], ...]

    def __post_init__(self):
        try:
            kfs = tuple((float(p), _as_box(b)) for p, b in self.keyframes)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"keyframes must be (position, (left, top, right, bottom)) pairs: {e}"
            ) from e
        if not kfs:
            raise ValueError("Boxes needs at least one keyframe")
        pos = [p for p, _ in kfs]
        if any(not 0.0 <= p <= 1.0 for p in pos):
            raise ValueError(f"keyframe positions must lie in [0, 1], got {pos}")
        if any(b <= a for a, b in zip(pos, pos[1:])):
            raise ValueError(f"keyframe positions must be strictly increasing, got {pos}")
        object.__setattr__(self, "keyframes", kfs)

    @classmethod
    def static(cls, box: Sequence[float]) -> Boxes:
        return cls(((0.0, _as_box(box)),))

    @classmethod
    def keyframed(cls, keyframes: Sequence[tuple[float, Sequence[float]]]) -> Boxes:
        return cls(tuple((p, _as_box(b)) for p, b in keyframes))

    @property
    def is_static(self) -> bool:
        return len(self.keyframes) == 1

    def per_frame(self, num_frames: int) -> np.ndarray:
        """[F, 4] float64 boxes (left, top, right, bottom) of each frame."""
        kp = np.array([p for p, _ in self.keyframes])
        kb = np.array([b for _, b in self.keyframes])
        t = np.arange(num_frames) / (num_frames - 1) if num_frames > 1 else np.zeros(1)
        return np.stack([np.interp(t, kp, kb[:, c]) for c in range(4)], axis=-1)


def as_boxes(x: Boxes | Sequence[float] | str) -> Boxes:
    """A `Boxes`, a static 4-tuple or a string (see `parse_boxes`) -> `Boxes`."""
    if isinstance(x, Boxes):
        return x
    if isinstance(x, str):
        return parse_boxes(x)
    return Boxes.static(x)


def parse_box(s: str) -> BoxTuple:
    """'0,.3,.5,.7' -> (0.0, 0.3, 0.5, 0.7) (left, top, right, bottom)."""
    parts = [p.strip() for p in s.split(",")]
    try:
        vals = tuple(float(p) for p in parts)
    except ValueError as e:
        raise ValueError(f"cannot parse box {s!r}: expected 'left,top,right,bottom'") from e
    if len(vals) != 4:
        raise ValueError(f"cannot parse box {s!r}: expected 4 numbers, got {len(vals)}")
    return vals  # type: ignore[return-value]


def parse_boxes(s: str) -> Boxes:
    """One source: 'l,t,r,b' (static) or 'pos:l,t,r,b;pos:l,t,r,b;...' (keyframed, pos in [0,1]).

    Example: '0:0,.3,.5,.7;1:.5,.3,1,.7' moves the box from the left half to the right half.
    """
    s = s.strip()
    if ":" not in s:
        return Boxes.static(parse_box(s))
    kfs = []
    for item in s.split(";"):
        pos, _, box = item.partition(":")
        try:
            p = float(pos)
        except ValueError as e:
            raise ValueError(f"cannot parse keyframe {item!r}: expected 'pos:l,t,r,b'") from e
        kfs.append((p, parse_box(box)))
    return Boxes.keyframed(kfs)


_LR_LOCATE = ((0.0, 0.3, 0.5, 0.7), (0.5, 0.3, 1.0, 0.7))
_LR_MOSAIC = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0))
_TD = ((0.0, 0.0, 1.0, 0.4), (0.0, 0.4, 1.0, 1.0))
PRESETS: dict[str, tuple[tuple[BoxTuple, ...], tuple[BoxTuple, ...]]] = {
    "LR": (_LR_LOCATE, _LR_MOSAIC),
    "TD": (_TD, _TD),
}


BOX_SYNTAX = "one 'left,top,right,bottom' per source, sources separated by '/'"


def preset(name: str) -> tuple[tuple[Boxes, ...], tuple[Boxes, ...]]:
    """Reference-release layouts for two sources: (locating boxes, mosaic regions). Names are
    case-insensitive ('lr' = 'LR')."""
    key = name.strip().upper()
    if key not in PRESETS:
        raise ValueError(
            f"unknown box preset {name!r}: the presets are {', '.join(sorted(PRESETS))} "
            f"(two sources), or give {BOX_SYNTAX}"
        )
    loc, mos = PRESETS[key]
    return tuple(Boxes.static(b) for b in loc), tuple(Boxes.static(b) for b in mos)


def parse_layout(spec: str | Sequence[str]) -> tuple[tuple[Boxes, ...], tuple[Boxes, ...]]:
    """A preset name ('LR', 'TD'), or per-source box strings (a sequence, or one string with
    sources separated by '/'): -> (locating boxes, mosaic boxes); custom layouts use the same
    boxes for both phases."""
    if isinstance(spec, str):
        if not any(ch.isdigit() for ch in spec):  # a name, not numbers: a preset
            return preset(spec)
        spec = spec.split("/")
    boxes = tuple(parse_boxes(s) for s in spec)
    return boxes, boxes


# ---------------------------------------------------------------------------------------------
# Rasterisation


def _axis_cells(lo: float, hi: float, n: int, cell_rule: str) -> np.ndarray:
    """[n] bool: the cells of one axis that the interval [lo, hi) covers.

    'centre': cell i is covered iff its centre (i + 0.5) / n lies in [lo, hi).
    'release': cells [int((lo + .01) n), int((hi - .01) n)) (TrailBlazer's BoundingBox).
    """
    if cell_rule == "centre":
        c = (np.arange(n) + 0.5) / n
        return (c >= lo) & (c < hi)
    a, b = int((lo + 0.01) * n), int((hi - 0.01) * n)
    idx = np.arange(n)
    return (idx >= a) & (idx < b)


def _axis_gaussian(
    covered: np.ndarray, lo: float, hi: float, n: int, cell_rule: str, sigma_divisor: float
) -> np.ndarray:
    """[n] float64 1-D Gaussian profile over the covered cells (max 1), zero elsewhere.

    'centre': cell-index coordinates, centred on the box centre (lo + hi) / 2 * n - 0.5, sigma =
      (hi - lo) * n / sigma_divisor (the box extent in cells).
    'release': TrailBlazer's grid linspace(0, m, m) over the m covered cells (step m / (m - 1)),
      centred at int(m / 2), sigma = m / sigma_divisor.
    """
    idx = np.nonzero(covered)[0]
    out = np.zeros(n)
    m = idx.size
    if m == 0:
        return out
    if cell_rule == "centre":
        x = idx.astype(np.float64)
        centre = (lo + hi) / 2 * n - 0.5
        sigma = (hi - lo) * n / sigma_divisor
    else:
        x = np.linspace(0.0, m, m)
        centre = float(int(m / 2))
        sigma = m / sigma_divisor
    g = np.exp(-((x - centre) ** 2) / (2 * sigma**2))
    out[idx] = g / g.max()
    return out


@dataclasses.dataclass(frozen=True)
class Raster:
    """Boxes of N sources rasterised at one attention resolution (h, w), F frames (numpy).

    masks: [N, F, h, w] bool, the cells each box covers (`cell_rule`).
    gaussians: [N, F, h, w] float32, g(B_i): 2-D Gaussian over the box cells, peak 1, 0 outside.
    locate_map: [N, F, h, w] float32, M_i = g(B_i) - sum_{j != i} g(B_j).
    assign: [F, h, w] int32 mosaic assignment: the source index, or N for background cells
      (only with background 'merge' / 'null').
    """

    masks: np.ndarray
    gaussians: np.ndarray
    locate_map: np.ndarray
    assign: np.ndarray


def check_boxes(
    boxes: Sequence[Boxes],
    resolutions: Sequence[Resolution],
    num_frames: int,
    cell_rule: str = "centre",
    what: str = "box",
) -> None:
    """Raise a ValueError naming the source and box when a box is invalid: coordinates outside
    [0, 1], left >= right, top >= bottom, or (on any frame) no cell covered at the coarsest
    attention resolution (and at every other listed one)."""
    if cell_rule not in CELL_RULES:
        raise ValueError(f"cell_rule {cell_rule!r} is not one of {CELL_RULES}")
    if not boxes:
        raise ValueError(f"no {what}es given (need one per audio source)")
    if not resolutions:
        raise ValueError("no attention resolutions given")
    for i, b in enumerate(boxes):
        if not isinstance(b, Boxes):
            raise ValueError(f"{what} of source {i} is a {type(b).__name__}, not Boxes")
        for pos, (l, t, r, bo) in b.keyframes:
            where = f"{what} of source {i} (left, top, right, bottom)={(l, t, r, bo)}"
            if b.is_static is False:
                where += f" at keyframe position {pos}"
            if not all(0.0 <= c <= 1.0 for c in (l, t, r, bo)):
                raise ValueError(f"{where}: coordinates must lie in [0, 1]")
            if l >= r:
                raise ValueError(f"{where}: left must be < right")
            if t >= bo:
                raise ValueError(f"{where}: top must be < bottom")
    by_size = sorted({tuple(int(v) for v in hw) for hw in resolutions}, key=lambda x: x[0] * x[1])
    for h, w in by_size:
        for i, b in enumerate(boxes):
            for f, (l, t, r, bo) in enumerate(b.per_frame(num_frames)):
                rows = _axis_cells(t, bo, h, cell_rule)
                cols = _axis_cells(l, r, w, cell_rule)
                if not rows.any() or not cols.any():
                    box = tuple(round(float(c), 6) for c in (l, t, r, bo))
                    coarse = "the coarsest " if (h, w) == by_size[0] else ""
                    raise ValueError(
                        f"{what} of source {i} {box} (frame {f}) covers no latent cell at "
                        f"{coarse}attention resolution {h}x{w} (cell rule {cell_rule!r}); "
                        f"make it larger"
                    )


def rasterize(
    boxes: Sequence[Boxes | Sequence[float] | str],
    hw: Resolution,
    num_frames: int,
    *,
    cell_rule: str = "centre",
    sigma_divisor: float = 3.0,
    background: str = "nearest",
) -> Raster:
    """Rasterise per-source boxes at one attention resolution (host-side numpy, static shapes).

    Cells: 'centre' (default) covers cell (y, x) iff (x + .5) / w in [left, right) and
    (y + .5) / h in [top, bottom); 'release' uses TrailBlazer's int((l + .01) w) rule.
    Mosaic assignment: a cell inside one box -> that source; inside several -> the smallest box
    (continuous area, then lowest index); inside none -> `background`: 'nearest' = the box
    nearest by Euclidean distance (in cells) from the cell centre to the box rectangle (ties:
    smaller area, lower index), 'merge' / 'null' -> N (attend to C_merge / the null embedding).
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background {background!r} is not one of {BACKGROUNDS}")
    if not sigma_divisor > 0:
        raise ValueError(f"sigma_divisor must be > 0, got {sigma_divisor}")
    h, w = int(hw[0]), int(hw[1])
    boxes = tuple(as_boxes(b) for b in boxes)
    check_boxes(boxes, [(h, w)], num_frames, cell_rule)
    n = len(boxes)
    per_frame = np.stack([b.per_frame(num_frames) for b in boxes])  # [N, F, 4]
    masks = np.zeros((n, num_frames, h, w), bool)
    gauss = np.zeros((n, num_frames, h, w))
    for i in range(n):
        for f in range(num_frames):
            l, t, r, bo = per_frame[i, f]
            rows = _axis_cells(t, bo, h, cell_rule)
            cols = _axis_cells(l, r, w, cell_rule)
            masks[i, f] = rows[:, None] & cols[None, :]
            gy = _axis_gaussian(rows, t, bo, h, cell_rule, sigma_divisor)
            gx = _axis_gaussian(cols, l, r, w, cell_rule, sigma_divisor)
            gauss[i, f] = gy[:, None] * gx[None, :]  # separable; peak exactly 1
    locate_map = 2.0 * gauss - gauss.sum(0, keepdims=True)

    # Mosaic assignment, in priority order (smaller area first, then lower index).
    area = (per_frame[..., 2] - per_frame[..., 0]) * (per_frame[..., 3] - per_frame[..., 1])
    cy = (np.arange(h) + 0.5)[None, :, None]
    cx = (np.arange(w) + 0.5)[None, None, :]
    assign = np.zeros((num_frames, h, w), np.int32)
    for f in range(num_frames):
        order = np.lexsort((np.arange(n), area[:, f]))  # primary: area, then index
        l, t, r, bo = (per_frame[order, f, c][:, None, None] for c in range(4))
        dx = np.maximum(np.maximum(l * w - cx, cx - r * w), 0.0)
        dy = np.maximum(np.maximum(t * h - cy, cy - bo * h), 0.0)
        cost = np.where(masks[order, f], -1.0, np.hypot(dx, dy))  # covered cells first
        best = order[np.argmin(cost, axis=0)]  # argmin: first (= highest priority) on ties
        if background != "nearest":
            best = np.where(masks[:, f].any(0), best, n)
        assign[f] = best
    return Raster(masks, gauss.astype(np.float32), locate_map.astype(np.float32), assign)


def unet_resolutions(latent_hw: Resolution, num_levels: int = 4) -> tuple[Resolution, ...]:
    """Token grids of the UNet's SpatialTransformers: (h, w), then halved (ceil) per level.
    VideoCrafter2 at 320x512: latent (40, 64) -> (40, 64), (20, 32), (10, 16), (5, 8)."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    out = []
    for _ in range(num_levels):
        out.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    return tuple(out)


def cfg_edit_rows(num_cond: int, num_uncond: int = 0, cond_first: bool = True) -> np.ndarray:
    """[B] bool edit_rows for a CFG batch laid out as [cond..., uncond...] (or the reverse)."""
    rows = [True] * num_cond + [False] * num_uncond
    return np.array(rows if cond_first else rows[::-1], bool)
