"""The attention edits of Attention Mosaic (paper Sec. 3.3), applied to every spatial
cross-attention of the video UNet's conditional branch:

- steps k < N_D: **Object Locating** (TrailBlazer-style, as the Maestro release does it): the
  logits over C_merge are weakened outside each source's box and strengthened by a Gaussian
  inside it;
- steps k >= N_D: **Mosaic Denoising**: the queries of the cells assigned to source i attend to
  the keys/values of C_sep^i only, and the per-source outputs are put back in place.

`MosaicEdit` carries the rasterised boxes down the UNet as an explicit pytree argument (the
`AttnEdit` protocol of `maestro_jax.nn.attention`); changing box values never retraces. Build it
with `make_edit` / `make_phase_edits` and a `MosaicOptions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.mosaic.boxes import (
    BACKGROUNDS,
    CELL_RULES,
    Boxes,
    Resolution,
    as_boxes,
    check_boxes,
    rasterize,
)
from maestro_jax.mosaic.contexts import CONTEXT_LEN, column_sources, context_capacity
from maestro_jax.nn.attention import (
    attend_with_logits,
    attention_logits,
    dot_product_attention,
)

MODES = ("locate", "mosaic", "none")
LOCATE_SPACES = ("logits", "probs")


@dataclasses.dataclass(frozen=True)
class MosaicOptions:
    """Settings of Attention Mosaic (a generation config's `mosaic` block).

    token_offset: first context column of the audio tokens (1: the start token stays).
    cell_rule: which latent cells a box owns ('centre': the cell centre lies in the box;
      'release': TrailBlazer's int((l + .01) w) .. int((r - .01) w)).
    background: context of cells in no box under Mosaic Denoising ('nearest' box, 'merge' =
      C_merge, 'null' = the null embedding).
    sigma_divisor: Object Locating's Gaussian sigma = box extent / sigma_divisor.
    strengthen_scale, weaken_scale: Object Locating's boost inside a box and damping outside.
    locate_space: where Object Locating edits ('logits', the release; or 'probs').
    """

    token_offset: int = 1
    cell_rule: str = "centre"
    background: str = "nearest"
    sigma_divisor: float = 3.0
    strengthen_scale: float = 0.5
    weaken_scale: float = 0.05
    locate_space: str = "logits"

    def check(self) -> MosaicOptions:
        """Raise ValueError naming the first bad field; returns self."""
        choices = {
            "cell_rule": CELL_RULES, "background": BACKGROUNDS, "locate_space": LOCATE_SPACES,
        }  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"mosaic.{name} = {getattr(self, name)!r} is not one of {allowed}")
        if not 0 <= int(self.token_offset) < CONTEXT_LEN:
            raise ValueError(f"mosaic.token_offset = {self.token_offset} must lie in [0, 77)")
        if not self.sigma_divisor > 0:
            raise ValueError(f"mosaic.sigma_divisor = {self.sigma_divisor} must be > 0")
        for name in ("strengthen_scale", "weaken_scale"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"mosaic.{name} = {getattr(self, name)} must be >= 0")
        return self


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
      strengthen_scale, weaken_scale: () float32 (arrays: new values never retrace).
    Static fields: edit_rows ([B] bools, True for the batch entries to edit: the CFG
    conditional rows), mode ('locate' | 'mosaic' | 'none'), resolutions ((h, w), ...),
    num_frames, n_q, token_offset, locate_space ('logits' | 'probs'), attn_impl (for the plain,
    unedited rows and the per-source attention: 'xla' | 'cudnn' | 'splash' | 'auto'),
    split_rows.

    The rows are split statically (`split_rows`, the default): plain attention runs on the
    unedited rows only and the edit on the edited rows only. split_rows=False computes both
    for every row and selects afterwards (the former behaviour: the same numbers at about
    twice the cross-attention work; kept as the reference of `benchmarks/cfg_split.py`).
    """

    c_merge: jax.Array | None
    c_sep: jax.Array | None
    c_background: jax.Array | None
    locate_maps: tuple[jax.Array, ...] | None
    assigns: tuple[jax.Array, ...] | None
    edit_rows: tuple[bool, ...] = struct.field(pytree_node=False)
    strengthen_scale: jax.Array
    weaken_scale: jax.Array
    mode: str = struct.field(pytree_node=False, default="none")
    resolutions: tuple[Resolution, ...] = struct.field(pytree_node=False, default=())
    num_frames: int = struct.field(pytree_node=False, default=1)
    n_q: int = struct.field(pytree_node=False, default=0)
    token_offset: int = struct.field(pytree_node=False, default=1)
    locate_space: str = struct.field(pytree_node=False, default="logits")
    attn_impl: str = struct.field(pytree_node=False, default="xla")
    split_rows: bool = struct.field(pytree_node=False, default=True)

    def frame_window(self, start: jax.Array | int, length: int) -> MosaicEdit:
        """This edit for frames [start, start + length) only (`start` may be traced): every
        per-frame array sliced on its frame axis, num_frames = length. Object Locating's
        per-sample maximum is then taken over those frames."""

        def cut(x, axis):
            return None if x is None else jax.lax.dynamic_slice_in_dim(x, start, length, axis)

        def cut_all(xs, axis):
            return None if xs is None else tuple(cut(x, axis) for x in xs)

        return self.replace(
            c_merge=cut(self.c_merge, 0),
            c_sep=cut(self.c_sep, 1),
            c_background=cut(self.c_background, 0),
            locate_maps=cut_all(self.locate_maps, 1),
            assigns=cut_all(self.assigns, 0),
            num_frames=int(length),
        )

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
        if self.mode == "none":
            k, v = project_kv(context)
            return dot_product_attention(q, k, v, scale=scale, impl=self.attn_impl)
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        ri = self._res_index(hw)
        n_b, n_f = len(self.edit_rows), self.num_frames
        bf, t = q.shape[:2]
        if bf != n_b * n_f or t != hw[0] * hw[1] or context.shape[0] != bf:
            raise ValueError(
                f"MosaicEdit built for B={n_b} x F={n_f} rows at {hw}; got q {q.shape}, "
                f"context {context.shape}"
            )
        edit = self._locate if self.mode == "locate" else self._mosaic
        if not self.split_rows:
            k, v = project_kv(context)
            plain = dot_product_attention(q, k, v, scale=scale, impl=self.attn_impl)
            edited = edit(q, project_kv, scale, ri, n_b, context.dtype)
            rows = np.repeat(np.asarray(self.edit_rows), n_f)[:, None, None, None]
            return jnp.where(rows, edited.astype(plain.dtype), plain)
        # Runs of consecutive batch entries with the same flag, as static row slices.
        runs, b0 = [], 0
        for b in range(1, n_b + 1):
            if b == n_b or self.edit_rows[b] != self.edit_rows[b0]:
                runs.append((self.edit_rows[b0], b0 * n_f, b * n_f))
                b0 = b

        def take(x, flag):
            parts = [x[r0:r1] for f, r0, r1 in runs if f == flag]
            return parts[0] if len(parts) == 1 else jnp.concatenate(parts)

        out = {}
        if not all(self.edit_rows):
            k, v = project_kv(take(context, False))
            out[False] = dot_product_attention(
                take(q, False), k, v, scale=scale, impl=self.attn_impl
            )
        if any(self.edit_rows):
            n_edit = sum(self.edit_rows)
            out[True] = edit(take(q, True), project_kv, scale, ri, n_edit, context.dtype)
        pieces, at = [], {False: 0, True: 0}
        for f, r0, r1 in runs:
            pieces.append(out[f][at[f] : at[f] + r1 - r0].astype(q.dtype))
            at[f] += r1 - r0
        return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)

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
    options: MosaicOptions = MosaicOptions(),
    attn_impl: str = "xla",
    split_rows: bool = True,
) -> MosaicEdit:
    """Build one phase's `MosaicEdit` (host-side rasterisation; call once, before sampling).

    Args:
      mode: 'locate' (Object Locating, needs the locating boxes), 'mosaic' (Mosaic Denoising,
        needs the mosaic boxes) or 'none' (plain attention; boxes ignored).
      boxes: one `Boxes` (or 4-tuple / string) per source, N_A = c_sep.shape[0] of them.
      c_merge, c_sep: from `build_contexts` ([F, L, Dc], [N_A, F, L, Dc]); null_emb [L, Dc].
      n_q: audio tokens per source (N_Q).
      resolutions: every SpatialTransformer (h, w) of the UNet (`unet_resolutions`).
      num_frames: F; edit_rows: [B] bool, True for the conditional (edited) batch entries.
      options: `MosaicOptions` (token offset as given to `build_contexts`, cell rule,
        background, Object Locating's scales and space).
      attn_impl: attention implementation of the plain and per-source attention.
      split_rows: run the plain and edited attention on their own rows only (see `MosaicEdit`).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    options.check()
    token_offset, background = int(options.token_offset), options.background
    resolutions = tuple((int(h), int(w)) for h, w in resolutions)
    edit_rows = np.asarray(edit_rows, bool)
    if edit_rows.ndim != 1 or edit_rows.size == 0:
        raise ValueError(f"edit_rows must be a non-empty [B] bool vector, got {edit_rows.shape}")
    edit_rows = tuple(bool(r) for r in edit_rows)
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
        edit_rows=edit_rows,
        strengthen_scale=jnp.float32(options.strengthen_scale),
        weaken_scale=jnp.float32(options.weaken_scale),
        mode=mode,
        resolutions=resolutions,
        num_frames=int(num_frames),
        n_q=int(n_q),
        token_offset=int(token_offset),
        locate_space=options.locate_space,
        attn_impl=attn_impl,
        split_rows=bool(split_rows),
    )
    if mode == "none":
        return MosaicEdit(c_background=None, locate_maps=None, assigns=None, **common)
    if boxes is None or len(boxes) != n_a:
        raise ValueError(
            f"{mode} needs one box per audio source: {n_a} sources, "
            f"{0 if boxes is None else len(boxes)} boxes"
        )
    boxes = tuple(as_boxes(b) for b in boxes)
    check_boxes(boxes, resolutions, num_frames, options.cell_rule, what=f"{mode} box")
    rasters = [
        rasterize(
            boxes,
            hw,
            num_frames,
            cell_rule=options.cell_rule,
            sigma_divisor=options.sigma_divisor,
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
    `make_edit`'s (c_merge, c_sep, null_emb, n_q, resolutions, num_frames, edit_rows, options,
    attn_impl)."""
    locate = make_edit("locate", boxes=locate_boxes, **kwargs)
    mosaic = make_edit(
        "mosaic", boxes=locate_boxes if mosaic_boxes is None else mosaic_boxes, **kwargs
    )
    return locate, mosaic
