"""Initial weights of the toy T2V: the spatial layers from the 2D T2I (VideoCrafter's recipe),
or every tensor from an earlier T2V export (the layout fine-tuning)."""

from __future__ import annotations

from typing import Any

import flax
import jax
import numpy as np


def spatial_name_map(src_top: list[str]) -> dict[str, str]:
    """2D UNet layer names -> the 3D UNet's: in each block the 3D UNet inserts a
    TemporalTransformer after every SpatialTransformer, shifting the later layers by one
    (e.g. 2D middle_block_2, a ResBlock, is 3D middle_block_3). A layer is a SpatialTransformer
    when it has `proj_in`; `src_top` lists the 2D names with that marker as 'name:st'."""
    import re

    blocks: dict[str, list[tuple[int, bool]]] = {}
    for item in src_top:
        name, _, kind = item.partition(":")
        m = re.fullmatch(r"(input_blocks_\d+|output_blocks_\d+|middle_block)_(\d+)", name)
        if m:
            blocks.setdefault(m.group(1), []).append((int(m.group(2)), kind == "st"))
    out = {}
    for block, layers in blocks.items():
        shift = 0
        for j, is_st in sorted(layers):
            out[f"{block}_{j}"] = f"{block}_{j + shift}"
            shift += int(is_st)
    return out


def overlay_spatial(params: Any, src: Any) -> tuple[Any, int]:
    """Copy the 2D UNet's tensors into the 3D UNet where path (after `spatial_name_map`) and
    shape agree (VideoCrafter's recipe: spatial weights from the image model)."""
    flat = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, params))
    sflat = flax.traverse_util.flatten_dict(src)
    names = spatial_name_map([f"{k}:st" if "proj_in" in v else k for k, v in src.items()])
    n = 0
    for k, v in sflat.items():
        k3 = (names.get(k[0], k[0]),) + k[1:]
        if k3 in flat and tuple(flat[k3].shape) == tuple(np.shape(v)):
            flat[k3] = np.asarray(v, np.float32)
            n += 1
    if n == 0:
        raise ValueError("init_from: no tensor of the source matches the 3D UNet")
    return flax.traverse_util.unflatten_dict(flat), n


def same_tree(params: Any, src: Any, where: str) -> Any:
    """`src` as the initial weights of a model whose tree is `params` (same paths and shapes)."""
    flat = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, params))
    sflat = flax.traverse_util.flatten_dict(src)
    bad = sorted(
        "/".join(k) for k in flat.keys() ^ sflat.keys()
    ) + sorted(
        "/".join(k) for k in flat.keys() & sflat.keys()
        if tuple(np.shape(sflat[k])) != tuple(flat[k].shape)
    )  # fmt: skip
    if bad:
        raise ValueError(
            f"init_from={where!r} is a video model of another shape ({len(bad)} tensors differ, "
            f"e.g. {bad[:3]}); set config.unet like the model it was trained with"
        )
    return flax.traverse_util.unflatten_dict(
        {k: np.asarray(v, np.float32) for k, v in sflat.items()}
    )
