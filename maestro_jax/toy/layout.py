"""Layout fine-tuning of the toy T2V (`configs/toy.py:t2v_layout`): region-masked
cross-attention per batch entry (`LayoutEdit`) and the slot contexts it attends to
(`layout_slots`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from maestro_jax import mosaic
from maestro_jax.nn.attention import dot_product_attention


@struct.dataclass
class LayoutEdit:
    """Region-masked cross-attention for the toy T2V's layout fine-tuning (`t2v_layout`): the
    query cells of batch entry b attend only to the context of their slot, as Mosaic Denoising
    does at generation, but with a layout per entry (an `AttnEdit`).

    slots: [B, S, L, D] contexts; assigns: per resolution [B, h*w] int32 slot of each cell."""

    slots: jax.Array
    assigns: tuple[jax.Array, ...]
    resolutions: tuple[tuple[int, int], ...] = struct.field(pytree_node=False)
    num_frames: int = struct.field(pytree_node=False, default=1)

    def __call__(self, q, context, project_kv, *, scale, hw):
        ri = self.resolutions.index((int(hw[0]), int(hw[1])))
        b, s = self.slots.shape[:2]
        f = self.num_frames
        k, v = project_kv(self.slots)  # [B, S, L, H, dh]

        def rows(x):  # [B, S, ...] -> [S, B*F, ...] (row b*F + f)
            x = jnp.broadcast_to(x[:, None], (b, f, *x.shape[1:]))
            return jnp.moveaxis(x.reshape(b * f, *x.shape[2:]), 1, 0)

        outs = jax.vmap(lambda kk, vv: dot_product_attention(q, kk, vv, scale=scale))(
            rows(k), rows(v)
        )  # [S, B*F, T, H, dh]
        slot = jnp.repeat(self.assigns[ri], f, axis=0)  # [B*F, T]
        sel = slot[None] == jnp.arange(s, dtype=slot.dtype)[:, None, None]
        return jnp.sum(jnp.where(sel[..., None, None], outs, 0), axis=0)


def layout_slots(
    captions: Any,
    null_ctx: np.ndarray,
    caps: list[str],
    cls: np.ndarray,
    boxes: np.ndarray,
    use: np.ndarray,
    resolutions: tuple[tuple[int, int], ...],
    n_q: int,
    token_offset: int = 1,
    merge: np.ndarray | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-entry slot contexts and cell assignments for `LayoutEdit`.

    Slots of entry b: K object contexts (the null embedding with columns [o, o + n_q) taken from
    the class label's own embedding: exactly C_sep's layout, with the text the CIM is trained
    to reproduce), then the null embedding (cells in no box: Mosaic Denoising's 'null'
    background), then the plain context: the caption's embedding, or with merge[b] C_merge
    (every object's label columns side by side in the null embedding, `mosaic.build_contexts`:
    the context of Object Locating and of vanilla generation). Entries without use[b] send every
    cell to the plain slot; the others are rasterised like `mosaic.rasterize` (centre cells,
    smaller box first) at every resolution. Returns (slots float32 [B, K + 2, L, D], per
    resolution int32 [B, h*w])."""
    from maestro_jax.toy import world as tw

    b, k = cls.shape
    labels = tw.labels()
    slots = np.broadcast_to(null_ctx, (b, k + 2, *null_ctx.shape)).copy()
    slots[:, k + 1] = captions(caps)
    assigns = [np.full((b, h * w), k + 1, np.int32) for h, w in resolutions]
    merge = np.zeros(b, bool) if merge is None else np.asarray(merge, bool)
    cols = slice(token_offset, token_offset + n_q)
    for i in np.nonzero(use | merge)[0]:
        on = np.nonzero(cls[i] >= 0)[0]
        if on.size == 0:
            continue
        toks = captions([labels[int(cls[i, j])] for j in on])[:, cols]  # [K_i, N_Q, D]
        if not use[i]:
            c_merge, _ = mosaic.build_contexts(null_ctx, toks[:, None], 1, token_offset)
            slots[i, k + 1] = np.asarray(c_merge[0])
            continue
        slots[i, on, cols] = toks
        for r, hw in enumerate(resolutions):
            try:
                ras = mosaic.rasterize(
                    [tuple(float(v) for v in boxes[i, j]) for j in on], hw, 1, background="null"
                )
            except ValueError:  # a box too thin for this grid: the entry trains plainly
                for a in assigns:
                    a[i] = k + 1
                break
            a = ras.assign[0].reshape(-1)  # 0..len(on)-1 boxes, len(on) = none
            assigns[r][i] = np.where(a < on.size, on[np.minimum(a, on.size - 1)], k)
    return slots.astype(np.float32), assigns
