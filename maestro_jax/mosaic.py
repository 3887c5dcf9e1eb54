"""Attention Mosaic: conditioning contexts, boxes, Object Locating and Mosaic Denoising.

Maestro (Kim et al., EAAI 2025; `../shared/spec/maestro.md` steps 4-5, "Boxes", "Object
Locating", "Mosaic Denoising") edits every spatial cross-attention of the video UNet's
*conditional* branch:

- steps k < N_D: **Object Locating** (TrailBlazer-style, the reference release): the logits over
  the merged context C_merge are weakened outside the source's box and strengthened by a
  Gaussian inside it;
- steps k >= N_D: **Mosaic Denoising**: the queries of the cells assigned to source i attend to
  the keys/values of C_sep^i only, and the per-source outputs are put back in place.

Everything that depends on boxes is rasterised once per attention resolution, on the host and
before the sampling loop, into arrays with static shapes. `MosaicEdit` carries them down the UNet
as an explicit pytree argument (the `AttnEdit` protocol of `maestro_jax.nn.attention`); changing
box values never retraces.

How the sampler builds and uses the edits
-----------------------------------------
::

    c_merge, c_sep = build_contexts(null_emb, audio_tokens, num_frames, token_offset=1)
    locate_boxes, mosaic_boxes = preset("LR")            # or parse_layout(...) / Boxes(...)
    locate_edit, mosaic_edit = make_phase_edits(
        locate_boxes, mosaic_boxes,
        c_merge=c_merge, c_sep=c_sep, null_emb=null_emb, n_q=audio_tokens.shape[2],
        resolutions=unet_resolutions((40, 64)), num_frames=num_frames,
        edit_rows=cfg_edit_rows(batch, batch),          # [cond rows..., uncond rows...]
    )
    # steps 0..N_D-1: unet(..., attn_edit=locate_edit); steps N_D..T-1: attn_edit=mosaic_edit

Batch layout: the UNet runs B batch entries of F frames as B*F rows (row b*F + f). With
classifier-free guidance in one forward, `edit_rows[b]` is True for the conditional entries and
False for the unconditional ones; unedited rows get plain attention over the context the UNet
passes (bitwise the same as `dot_product_attention`), whatever the mode. For edited rows the edit
uses its own stored contexts (C_merge for locating, C_sep^i for the mosaic) and ignores the
passed context rows, so the sampler may pass C_merge (or anything of that shape) there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.nn.attention import (
    attend_with_logits,
    attention_logits,
    dot_product_attention,
)

MODES = ("locate", "mosaic", "none")
CELL_RULES = ("centre", "release")
BACKGROUNDS = ("nearest", "merge", "null")
LOCATE_SPACES = ("logits", "probs")
CONTEXT_LEN = 77

BoxTuple = tuple[float, float, float, float]  # (left, top, right, bottom), fractions of the frame
Resolution = tuple[int, int]  # (h, w) of an attention layer's token grid


# ---------------------------------------------------------------------------------------------
# Contexts (maestro.md step 4)


def context_capacity(n_q: int, token_offset: int = 1, length: int = CONTEXT_LEN) -> int:
    """How many sources fit in one context: floor((length - token_offset) / n_q)."""
    return (length - token_offset) // n_q


def segment_of_frame(num_frames: int, num_segments: int) -> np.ndarray:
    """Audio segment used by each frame: floor(f * S / F), [F] int."""
    return (np.arange(num_frames) * num_segments) // num_frames


def build_contexts(
    null_emb: jax.Array,
    audio_tokens: jax.Array,
    num_frames: int,
    token_offset: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Per-frame conditioning contexts with the audio tokens written into the null embedding.

    Args:
      null_emb: [L, D] text embedding of "" (L = 77).
      audio_tokens: [N_A, S, N_Q, D] CIM tokens per source and 2 s segment.
      num_frames: F; frame f uses segment floor(f * S / F).
      token_offset: o, first audio column (1 in the release: the start token stays).
    Returns:
      C_merge [F, L, D]: source i at columns [o + i*N_Q, o + (i+1)*N_Q) (i from 0);
      C_sep [N_A, F, L, D]: source i at columns [o, o + N_Q), null embedding elsewhere.
    """
    null_emb = jnp.asarray(null_emb)
    audio_tokens = jnp.asarray(audio_tokens)
    if null_emb.ndim != 2:
        raise ValueError(f"null_emb must be [L, D], got shape {null_emb.shape}")
    if audio_tokens.ndim != 4:
        raise ValueError(f"audio_tokens must be [N_A, S, N_Q, D], got shape {audio_tokens.shape}")
    length, dim = null_emb.shape
    n_a, n_seg, n_q, d_a = audio_tokens.shape
    if d_a != dim:
        raise ValueError(f"audio token width {d_a} != null embedding width {dim}")
    if num_frames < 1 or n_seg < 1 or n_a < 1 or n_q < 1:
        raise ValueError(
            f"need num_frames, S, N_A, N_Q >= 1, got {num_frames}, {n_seg}, {n_a}, {n_q}"
        )
    if not 0 <= token_offset < length:
        raise ValueError(f"token_offset {token_offset} must lie in [0, {length})")
    cap = context_capacity(n_q, token_offset, length)
    if n_a > cap:
        raise ValueError(
            f"{n_a} audio sources do not fit in a {length}-token context: with N_Q={n_q} and "
            f"token_offset={token_offset} at most floor(({length} - {token_offset}) / {n_q}) = "
            f"{cap} sources fit"
        )
    dtype = jnp.result_type(null_emb.dtype, audio_tokens.dtype)
    per_frame = audio_tokens.astype(dtype)[:, segment_of_frame(num_frames, n_seg)]  # [N,F,NQ,D]
    base = jnp.broadcast_to(null_emb.astype(dtype), (num_frames, length, dim))
    merged = jnp.transpose(per_frame, (1, 0, 2, 3)).reshape(num_frames, n_a * n_q, dim)
    c_merge = base.at[:, token_offset : token_offset + n_a * n_q].set(merged)
    c_sep = (
        jnp.broadcast_to(base, (n_a, num_frames, length, dim))
        .at[:, :, token_offset : token_offset + n_q]
        .set(per_frame)
    )
    return c_merge, c_sep


def column_sources(
    num_sources: int, n_q: int, token_offset: int = 1, length: int = CONTEXT_LEN
) -> np.ndarray:
    """[L] int: the source whose audio tokens sit in each C_merge column, num_sources if none."""
    cols = np.full(length, num_sources, np.int32)
    for i in range(num_sources):
        cols[token_offset + i * n_q : token_offset + (i + 1) * n_q] = i
    return cols


# ---------------------------------------------------------------------------------------------
# Boxes


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


def preset(name: str) -> tuple[tuple[Boxes, ...], tuple[Boxes, ...]]:
    """Reference-release layouts for two sources: (locating boxes, mosaic regions)."""
    if name not in PRESETS:
        raise ValueError(f"unknown box preset {name!r}; known: {sorted(PRESETS)}")
    loc, mos = PRESETS[name]
    return tuple(Boxes.static(b) for b in loc), tuple(Boxes.static(b) for b in mos)


def parse_layout(spec: str | Sequence[str]) -> tuple[tuple[Boxes, ...], tuple[Boxes, ...]]:
    """A preset name ('LR', 'TD'), or per-source box strings (a sequence, or one string with
    sources separated by '/'): -> (locating boxes, mosaic boxes); custom layouts use the same
    boxes for both phases."""
    if isinstance(spec, str):
        if spec.strip() in PRESETS:
            return preset(spec.strip())
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


# ---------------------------------------------------------------------------------------------
# Object Locating (pure functions; the fixture checks these)


def locate_column_map(
    locate_map: jax.Array, n_q: int, token_offset: int = 1, length: int = CONTEXT_LEN
) -> tuple[jax.Array, np.ndarray]:
    """Spread per-source maps over the C_merge columns.

    Args:
      locate_map: [N, F, T] (M_i per frame and cell, T = h*w).
    Returns:
      col_map [F, T, L] (M_i on the audio columns of source i, 0 elsewhere) and audio_cols [L]
      bool (static numpy: the columns holding audio tokens).
    """
    n = locate_map.shape[0]
    cols = column_sources(n, n_q, token_offset, length)
    ext = jnp.concatenate([locate_map, jnp.zeros_like(locate_map[:1])], axis=0)
    return jnp.transpose(ext[cols], (1, 2, 0)), cols < n


def locate_logits(
    logits: jax.Array,
    col_map: jax.Array,
    audio_cols: np.ndarray | jax.Array,
    smax: jax.Array,
    *,
    strengthen_scale: float | jax.Array = 0.5,
    weaken_scale: float | jax.Array = 0.05,
) -> jax.Array:
    """The Object Locating edit of pre-softmax logits (release `dd_core`, spatial branch).

    On the audio columns only: S <- S * weaken where M == 0, then S <- S + strengthen * (max(S) M).
    Args:
      logits: [..., T, L] float32 S = q k^T * scale.
      col_map: broadcastable to logits, M per column (`locate_column_map`).
      audio_cols: [L] bool.
      smax: max(S) over the whole logit tensor of the layer call (before the edit), broadcastable.
    """
    weak = audio_cols & (col_map == 0)
    edited = jnp.where(weak, logits * weaken_scale, logits) + strengthen_scale * (smax * col_map)
    return jnp.where(audio_cols, edited, logits)


def locate_probs(
    probs: jax.Array,
    col_map: jax.Array,
    audio_cols: np.ndarray | jax.Array,
    pmax: jax.Array,
    *,
    strengthen_scale: float | jax.Array = 0.5,
    weaken_scale: float | jax.Array = 0.05,
) -> jax.Array:
    """The paper's Eq. (8) variant (`locate_space='probs'`): the same edit after the softmax.

    P = softmax(S); on the audio columns P <- P * weaken where M == 0, then
    P <- P + strengthen * (max(P) M) with max(P) over the whole tensor of the layer call; then
    negative entries are clipped to 0 and every row renormalised to sum 1 (a negative map, the
    other sources' Gaussians, would otherwise give negative attention weights).
    """
    weak = audio_cols & (col_map == 0)
    edited = jnp.where(weak, probs * weaken_scale, probs) + strengthen_scale * (pmax * col_map)
    edited = jnp.maximum(jnp.where(audio_cols, edited, probs), 0.0)
    total = jnp.sum(edited, axis=-1, keepdims=True)
    return edited / jnp.maximum(total, jnp.finfo(edited.dtype).tiny)


# ---------------------------------------------------------------------------------------------
# The AttnEdit


ProjectKV = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


@struct.dataclass
class MosaicEdit:
    """Attention Mosaic edit of a spatial cross-attention (`maestro_jax.nn.attention.AttnEdit`).

    Build it with `make_edit` / `make_phase_edits`. Array fields (pytree leaves):
      c_merge: [F, L, Dc] merged context (Object Locating).
      c_sep: [N_A, F, L, Dc] per-source contexts (Mosaic Denoising).
      c_background: [F, L, Dc] or None, the context of unassigned cells (background 'merge' ->
        C_merge, 'null' -> the null embedding); None with background 'nearest'.
      locate_maps: per resolution (same order as `resolutions`) [N_A, F, h*w] M_i, or None.
      assigns: per resolution [F, h*w] int32 slot (0..N_A-1 sources, N_A background), or None.
      edit_rows: [B] bool, True for the batch entries to edit (CFG conditional rows).
      strengthen_scale, weaken_scale: () float32 (arrays: new values never retrace).
    Static fields: mode ('locate' | 'mosaic' | 'none'), resolutions ((h, w), ...), num_frames,
    n_q, token_offset, locate_space ('logits' | 'probs'), attn_impl (for the plain, unedited
    rows and the per-source attention: 'xla' | 'cudnn' | 'splash').
    """

    c_merge: jax.Array | None
    c_sep: jax.Array | None
    c_background: jax.Array | None
    locate_maps: tuple[jax.Array, ...] | None
    assigns: tuple[jax.Array, ...] | None
    edit_rows: jax.Array
    strengthen_scale: jax.Array
    weaken_scale: jax.Array
    mode: str = struct.field(pytree_node=False, default="none")
    resolutions: tuple[Resolution, ...] = struct.field(pytree_node=False, default=())
    num_frames: int = struct.field(pytree_node=False, default=1)
    n_q: int = struct.field(pytree_node=False, default=0)
    token_offset: int = struct.field(pytree_node=False, default=1)
    locate_space: str = struct.field(pytree_node=False, default="logits")
    attn_impl: str = struct.field(pytree_node=False, default="xla")

    def _res_index(self, hw: Resolution) -> int:
        hw = (int(hw[0]), int(hw[1]))
        if hw not in self.resolutions:
            raise KeyError(
                f"MosaicEdit has no maps for attention resolution {hw}; it was built for "
                f"{self.resolutions} (pass every SpatialTransformer's (h, w) to make_edit)"
            )
        return self.resolutions.index(hw)

    def __call__(
        self,
        q: jax.Array,
        context: jax.Array,
        project_kv: ProjectKV,
        *,
        scale: float,
        hw: Resolution,
    ) -> jax.Array:
        """Edited cross-attention.

        Args:
          q: [B*F, h*w, heads, dh] queries (row b*F + f).
          context: [B*F, L, Dc] the layer's context (used as is by the unedited rows).
          project_kv: ctx [..., L, Dc] -> (k, v), each [..., L, heads, dh].
          scale: logit scale (dh ** -0.5).
          hw: (h, w) of the token grid.
        Returns:
          [B*F, h*w, heads, dh].
        """
        k, v = project_kv(context)
        plain = dot_product_attention(q, k, v, scale=scale, impl=self.attn_impl)
        if self.mode == "none":
            return plain
        ri = self._res_index(hw)
        n_b, n_f = self.edit_rows.shape[0], self.num_frames
        bf, t = q.shape[:2]
        if bf != n_b * n_f or t != hw[0] * hw[1] or context.shape[0] != bf:
            raise ValueError(
                f"MosaicEdit built for B={n_b} x F={n_f} rows at {hw}; got q {q.shape}, "
                f"context {context.shape}"
            )
        if self.mode == "locate":
            edited = self._locate(q, project_kv, scale, ri, n_b, context.dtype)
        elif self.mode == "mosaic":
            edited = self._mosaic(q, project_kv, scale, ri, n_b, context.dtype)
        else:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        rows = jnp.repeat(self.edit_rows, n_f)[:, None, None, None]  # [B*F, 1, 1, 1]
        return jnp.where(rows, edited.astype(plain.dtype), plain)

    def _locate(self, q, project_kv, scale, ri, n_b, ctx_dtype):
        n_f = self.num_frames
        bf, t, heads, _ = q.shape
        ke, ve = project_kv(self.c_merge.astype(ctx_dtype))  # [F, L, H, dh]
        ke = jnp.broadcast_to(ke, (n_b, *ke.shape)).reshape(bf, *ke.shape[1:])
        ve = jnp.broadcast_to(ve, (n_b, *ve.shape)).reshape(bf, *ve.shape[1:])
        logits = attention_logits(q, ke, scale)  # [B*F, H, T, L]
        length = logits.shape[-1]
        col_map, audio = locate_column_map(
            self.locate_maps[ri], self.n_q, self.token_offset, length
        )  # [F, T, L]
        logits = logits.reshape(n_b, n_f, heads, t, length)
        col_map = col_map[None, :, None]  # [1, F, 1, T, L]
        scales = dict(strengthen_scale=self.strengthen_scale, weaken_scale=self.weaken_scale)
        # max over the whole tensor of one sample (the release's conditional pass is one sample
        # of F frames); per batch entry so batching never changes a sample.
        if self.locate_space == "logits":
            smax = jnp.max(logits, axis=(1, 2, 3, 4), keepdims=True)
            logits = locate_logits(logits, col_map, audio, smax, **scales)
            return attend_with_logits(logits.reshape(bf, heads, t, length), ve)
        probs = jax.nn.softmax(logits, axis=-1)
        pmax = jnp.max(probs, axis=(1, 2, 3, 4), keepdims=True)
        probs = locate_probs(probs, col_map, audio, pmax, **scales).reshape(bf, heads, t, length)
        return jnp.einsum(
            "bhqk,bkhd->bqhd", probs.astype(ve.dtype), ve, precision=jax.lax.Precision.HIGHEST
        )

    def _mosaic(self, q, project_kv, scale, ri, n_b, ctx_dtype):
        bf = q.shape[0]
        ctx = self.c_sep
        if self.c_background is not None:
            ctx = jnp.concatenate([ctx, self.c_background[None]], axis=0)
        n_slots = ctx.shape[0]
        ks, vs = project_kv(ctx.astype(ctx_dtype))  # [Ns, F, L, H, dh]

        def rows(x):  # [Ns, F, ...] -> [Ns, B*F, ...] (row b*F + f)
            x = jnp.broadcast_to(x[:, None], (n_slots, n_b, *x.shape[1:]))
            return x.reshape(n_slots, bf, *x.shape[3:])

        # One batched attention over the slots (never a Python loop over sources).
        outs = jax.vmap(
            lambda k, v: dot_product_attention(q, k, v, scale=scale, impl=self.attn_impl)
        )(rows(ks), rows(vs))  # [Ns, B*F, T, H, dh]
        slot = jnp.tile(self.assigns[ri], (n_b, 1))  # [B*F, T]
        sel = slot[None] == jnp.arange(n_slots, dtype=slot.dtype)[:, None, None]
        return jnp.sum(jnp.where(sel[..., None, None], outs, 0), axis=0)


def make_edit(
    mode: str,
    *,
    boxes: Sequence[Boxes | Sequence[float] | str] | None,
    c_merge: jax.Array,
    c_sep: jax.Array,
    null_emb: jax.Array,
    n_q: int,
    resolutions: Sequence[Resolution],
    num_frames: int,
    edit_rows: Sequence[bool] | np.ndarray | jax.Array,
    token_offset: int = 1,
    cell_rule: str = "centre",
    background: str = "nearest",
    sigma_divisor: float = 3.0,
    strengthen_scale: float = 0.5,
    weaken_scale: float = 0.05,
    locate_space: str = "logits",
    attn_impl: str = "xla",
) -> MosaicEdit:
    """Build one phase's `MosaicEdit` (host-side rasterisation; call once, before sampling).

    Args:
      mode: 'locate' (Object Locating, needs the locating boxes), 'mosaic' (Mosaic Denoising,
        needs the mosaic boxes) or 'none' (plain attention; boxes ignored).
      boxes: one `Boxes` (or 4-tuple / string) per source, N_A = c_sep.shape[0] of them.
      c_merge, c_sep: from `build_contexts` ([F, L, Dc], [N_A, F, L, Dc]); null_emb [L, Dc].
      n_q: audio tokens per source (N_Q); token_offset: as given to `build_contexts`.
      resolutions: every SpatialTransformer (h, w) of the UNet (`unet_resolutions`).
      num_frames: F; edit_rows: [B] bool, True for the conditional (edited) batch entries.
      cell_rule, background, sigma_divisor: see `rasterize`;
      strengthen_scale, weaken_scale, locate_space: Object Locating (maestro.md options).
      attn_impl: attention implementation of the plain and per-source attention.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    if locate_space not in LOCATE_SPACES:
        raise ValueError(f"locate_space {locate_space!r} is not one of {LOCATE_SPACES}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background {background!r} is not one of {BACKGROUNDS}")
    resolutions = tuple((int(h), int(w)) for h, w in resolutions)
    edit_rows = np.asarray(edit_rows, bool)
    if edit_rows.ndim != 1 or edit_rows.size == 0:
        raise ValueError(f"edit_rows must be a non-empty [B] bool vector, got {edit_rows.shape}")
    c_merge, c_sep, null_emb = jnp.asarray(c_merge), jnp.asarray(c_sep), jnp.asarray(null_emb)
    n_a = c_sep.shape[0]
    if c_merge.shape[0] != num_frames or c_sep.shape[1:] != c_merge.shape:
        raise ValueError(
            f"contexts do not match num_frames={num_frames}: C_merge {c_merge.shape}, "
            f"C_sep {c_sep.shape} (expected [F, L, D] and [N_A, F, L, D])"
        )
    if n_a > context_capacity(n_q, token_offset, c_merge.shape[1]):
        raise ValueError(f"{n_a} sources with N_Q={n_q} do not fit in {c_merge.shape[1]} columns")
    common = dict(
        c_merge=c_merge,
        c_sep=c_sep,
        edit_rows=jnp.asarray(edit_rows),
        strengthen_scale=jnp.float32(strengthen_scale),
        weaken_scale=jnp.float32(weaken_scale),
        mode=mode,
        resolutions=resolutions,
        num_frames=int(num_frames),
        n_q=int(n_q),
        token_offset=int(token_offset),
        locate_space=locate_space,
        attn_impl=attn_impl,
    )
    if mode == "none":
        return MosaicEdit(c_background=None, locate_maps=None, assigns=None, **common)
    if boxes is None or len(boxes) != n_a:
        raise ValueError(
            f"{mode} needs one box per audio source: {n_a} sources, "
            f"{0 if boxes is None else len(boxes)} boxes"
        )
    boxes = tuple(as_boxes(b) for b in boxes)
    check_boxes(boxes, resolutions, num_frames, cell_rule, what=f"{mode} box")
    rasters = [
        rasterize(
            boxes,
            hw,
            num_frames,
            cell_rule=cell_rule,
            sigma_divisor=sigma_divisor,
            background=background,
        )
        for hw in resolutions
    ]
    if mode == "locate":
        maps = tuple(jnp.asarray(r.locate_map.reshape(n_a, num_frames, -1)) for r in rasters)
        return MosaicEdit(c_background=None, locate_maps=maps, assigns=None, **common)
    bg = None
    if background == "merge":
        bg = c_merge
    elif background == "null":
        bg = jnp.broadcast_to(null_emb.astype(c_merge.dtype), c_merge.shape)
    assigns = tuple(jnp.asarray(r.assign.reshape(num_frames, -1)) for r in rasters)
    return MosaicEdit(c_background=bg, locate_maps=None, assigns=assigns, **common)


def make_phase_edits(
    locate_boxes: Sequence[Boxes | Sequence[float] | str],
    mosaic_boxes: Sequence[Boxes | Sequence[float] | str] | None = None,
    **kwargs: Any,
) -> tuple[MosaicEdit, MosaicEdit]:
    """(locate_edit, mosaic_edit) for the two sampling phases: steps k < N_D use the first,
    steps k >= N_D the second. `mosaic_boxes` defaults to `locate_boxes`; `kwargs` are
    `make_edit`'s (c_merge, c_sep, null_emb, n_q, resolutions, num_frames, edit_rows, options)."""
    locate = make_edit("locate", boxes=locate_boxes, **kwargs)
    mosaic = make_edit(
        "mosaic", boxes=locate_boxes if mosaic_boxes is None else mosaic_boxes, **kwargs
    )
    return locate, mosaic


__all__ = [
    "BACKGROUNDS",
    "CELL_RULES",
    "LOCATE_SPACES",
    "MODES",
    "PRESETS",
    "Boxes",
    "MosaicEdit",
    "Raster",
    "as_boxes",
    "build_contexts",
    "cfg_edit_rows",
    "check_boxes",
    "column_sources",
    "context_capacity",
    "locate_column_map",
    "locate_logits",
    "locate_probs",
    "make_edit",
    "make_phase_edits",
    "parse_box",
    "parse_boxes",
    "parse_layout",
    "preset",
    "rasterize",
    "segment_of_frame",
    "unet_resolutions",
]
