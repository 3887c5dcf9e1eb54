"""Attention Mosaic (paper Sec. 3.3): conditioning contexts, boxes, Object Locating and Mosaic
Denoising.

Maestro edits every spatial cross-attention of the video UNet's *conditional* branch: Object
Locating for the first N_D DDIM steps, then Mosaic Denoising. The unconditional branch is never
edited. Modules:

- `contexts`: C_merge and C_sep from the null text embedding and the CIM's audio tokens;
- `boxes`: one box per source (static or keyframed), presets, checks, rasterisation per
  attention resolution;
- `edit`: `MosaicOptions`, the Object Locating logit edit and `MosaicEdit` (the `AttnEdit`
  pytree the UNet receives).

How the sampler builds and uses the edits::

    c_merge, c_sep = build_contexts(null_emb, audio_tokens, num_frames, token_offset=1)
    locate_boxes, mosaic_boxes = preset("LR")            # or parse_layout(...) / Boxes(...)
    locate_edit, mosaic_edit = make_phase_edits(
        locate_boxes, mosaic_boxes,
        c_merge=c_merge, c_sep=c_sep, null_emb=null_emb, n_q=audio_tokens.shape[2],
        resolutions=unet_resolutions((40, 64)), num_frames=num_frames,
        edit_rows=cfg_edit_rows(batch, batch), options=MosaicOptions(),
    )
    # steps 0..N_D-1: unet(..., attn_edit=locate_edit); steps N_D..T-1: attn_edit=mosaic_edit

Batch layout: the UNet runs B batch entries of F frames as B*F rows (row b*F + f). With
classifier-free guidance in one forward, `edit_rows[b]` is True for the conditional entries and
False for the unconditional ones; unedited rows get plain attention over the context the UNet
passes (bitwise the same as `dot_product_attention`), whatever the mode. For edited rows the edit
uses its own stored contexts (C_merge for locating, C_sep^i for the mosaic) and ignores the
passed context rows, so the sampler may pass C_merge (or anything of that shape) there.
`edit_rows` is static: the plain attention runs on the unedited rows only and the edit on the
edited rows only (no work is computed and thrown away).

The public names of the three modules are re-exported here.
"""

from maestro_jax.mosaic.boxes import (
    BACKGROUNDS,
    CELL_RULES,
    PRESETS,
    Boxes,
    BoxTuple,
    Raster,
    Resolution,
    as_boxes,
    cfg_edit_rows,
    check_boxes,
    parse_box,
    parse_boxes,
    parse_layout,
    preset,
    rasterize,
    unet_resolutions,
)
from maestro_jax.mosaic.contexts import (
    CONTEXT_LEN,
    build_contexts,
    column_sources,
    context_capacity,
    segment_of_frame,
)
from maestro_jax.mosaic.edit import (
    LOCATE_SPACES,
    MODES,
    MosaicEdit,
    MosaicOptions,
    locate_column_map,
    locate_logits,
    locate_probs,
    make_edit,
    make_phase_edits,
)

__all__ = [
    "BACKGROUNDS", "CELL_RULES", "CONTEXT_LEN", "LOCATE_SPACES", "MODES", "PRESETS", "BoxTuple",
    "Boxes", "MosaicEdit", "MosaicOptions", "Raster", "Resolution", "as_boxes", "build_contexts",
    "cfg_edit_rows", "check_boxes", "column_sources", "context_capacity", "locate_column_map",
    "locate_logits", "locate_probs", "make_edit", "make_phase_edits", "parse_box", "parse_boxes",
    "parse_layout", "preset", "rasterize", "segment_of_frame", "unet_resolutions",
]  # fmt: skip
