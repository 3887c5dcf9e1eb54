"""Maestro CIM `perceiver.pth` -> Flax params of `maestro_jax.models.cim.CIM`.

    python -m convert.cim perceiver.pth OUT [--torch_config config.json] [--trust_pickle]

The released file is the bare `AudioResampler.state_dict()` (keys `latents`, `proj_in.*`,
`proj_out.*`, `norm_out.*`, `layers.i.0.{norm1,norm2,to_q,to_kv,to_out}`, `layers.i.1.{0,1,3}`;
see the `cim_resampler` fixture README). One leading `module.` (a DDP wrapper) is stripped
defensively. The depth is read from the checkpoint's `layers.N` keys; every other size must match
the release config (`CIMConfig.release()`), strictly.

`verify_cim_resampler(fixture_dir)` checks the port against the `cim_resampler` fixture.
`convert_file` is what the command (`convert/cim/__main__.py`) runs.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from convert.common import (
    ConversionError,
    Table,
    apply_table,
    identity,
    linear,
    load_full_keys,
    load_state_dict,
    strip_prefix_if_all,
)
from maestro_jax.models import cim as cim_lib


def _ln(flax: str, torch: str) -> Table:
    return {
        f"{flax}/scale": (f"{torch}.weight", identity),
        f"{flax}/bias": (f"{torch}.bias", identity),
    }


def cim_table(cfg: cim_lib.CIMConfig) -> Table:
    t: Table = {
        "latents": ("latents", identity),
        "proj_in/kernel": ("proj_in.weight", linear),
        "proj_in/bias": ("proj_in.bias", identity),
        "proj_out/kernel": ("proj_out.weight", linear),
        "proj_out/bias": ("proj_out.bias", identity),
    }
    t |= _ln("norm_out", "norm_out")
    for i in range(cfg.depth):
        a, f, p = f"attn_{i}", f"ff_{i}", f"layers.{i}"
        t |= _ln(f"{a}/norm1", f"{p}.0.norm1")
        t |= _ln(f"{a}/norm2", f"{p}.0.norm2")
        t[f"{a}/to_q/kernel"] = (f"{p}.0.to_q.weight", linear)
        t[f"{a}/to_kv/kernel"] = (f"{p}.0.to_kv.weight", linear)  # rows: k then v
        t[f"{a}/to_out/kernel"] = (f"{p}.0.to_out.weight", linear)
        # FeedForward = Sequential(LayerNorm, Linear, GELU, Linear): indices 0, 1, 3
        t |= _ln(f"{f}/norm", f"{p}.1.0")
        t[f"{f}/fc1/kernel"] = (f"{p}.1.1.weight", linear)
        t[f"{f}/fc2/kernel"] = (f"{p}.1.3.weight", linear)
    return t


def strip_module_prefix(sd: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Drop one leading `module.` if every key has it (a DDP-wrapped save)."""
    return strip_prefix_if_all(sd, "module.")


def depth_of(sd: Mapping[str, np.ndarray]) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.", k))}
    if not idx or idx != set(range(max(idx) + 1)):
        raise ConversionError(f"checkpoint layers.N indices are not 0..N-1: {sorted(idx)}")
    return max(idx) + 1


def convert(sd: Mapping[str, np.ndarray], cfg: cim_lib.CIMConfig) -> dict:
    """State dict -> CIM params (numpy float32). Raises ConversionError naming every bad key."""
    target = cim_lib.init_shapes(cfg)
    return apply_table(sd, cim_table(cfg), target)


def check_full_keys(
    full_keys: Mapping[str, tuple[int, ...]] | str | Path, cfg: cim_lib.CIMConfig | None = None
) -> None:
    """Shape-only strict check of a full key list (the fixture's `full_keys.json`)."""
    if not isinstance(full_keys, Mapping):
        full_keys = load_full_keys(full_keys)
    cfg = cfg or cim_lib.CIMConfig.release()
    fake = {k: np.broadcast_to(np.float32(0), s) for k, s in full_keys.items()}
    apply_table(fake, cim_table(cfg), cim_lib.init_shapes(cfg), shapes_only=True)


def _fixture_config(fixture_dir: Path) -> cim_lib.CIMConfig:
    with open(fixture_dir / "config.json") as f:
        return cim_lib.CIMConfig.from_torch_kwargs(json.load(f)["constructor_kwargs"])


def verify_cim_resampler(fixture_dir: Path) -> list:
    """`out_latents`: relative L2 <= 1e-5 and, per the fixture README, max |error| <= 2e-5."""
    from convert.verify import Check

    fixture_dir = Path(fixture_dir)
    cfg = _fixture_config(fixture_dir)
    params = convert(load_state_dict(fixture_dir / "state_dict.safetensors"), cfg)
    io = np.load(fixture_dir / "io.npz")
    out = np.asarray(jax.jit(cim_lib.CIM(cfg).apply)({"params": params}, io["in_x"]))
    ref = io["out_latents"]
    return [
        Check("out_latents", out, ref, tol=1e-5, metric="rel_l2"),
        Check("out_latents[max_abs]", out, ref, tol=2e-5, metric="max_abs"),
    ]


def convert_file(
    src: str | Path,
    out: str | Path,
    cfg: cim_lib.CIMConfig | None = None,
    *,
    trust_pickle: bool = False,
) -> dict:
    """`perceiver.pth` (or a .safetensors of it) -> the params folder OUT; returns its
    config.json. `cfg` None: the release sizes with the checkpoint's depth."""
    from maestro_jax.checkpoints import save_params

    sd = strip_module_prefix(load_state_dict(src, dtype=None, trust_pickle=trust_pickle))
    if cfg is None:
        cfg = dataclasses.replace(cim_lib.CIMConfig.release(), depth=depth_of(sd))
    params = convert(sd, cfg)
    del sd
    config = {"model": "cim", "cim": cfg.to_dict(), "source": str(src)}
    save_params(out, params, config, compress=False)
    config["parameters"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return config
