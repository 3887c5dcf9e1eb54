"""python -m convert.unet --kind vc2|sd21 SRC OUT [--format auto|ldm|diffusers] [--ldm_config FILE]
[--trust_pickle]: one UNet checkpoint -> an orbax params folder (see `convert.unet`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from convert import cli
from convert.common import ConversionError, load_state_dict
from convert.unet import detect_format, diffusers_path, load_unet_params
from maestro_jax.models.unet import UNetConfig

_KIND = flags.DEFINE_enum("kind", None, ["vc2", "sd21"], "which UNet the checkpoint holds")
for _held in (cli.FORMAT, cli.LDM_CONFIG, cli.TRUST_PICKLE):
    flags.declare_key_flag(_held.name)


def _peek_format(src: Path, trust_pickle: bool) -> str:
    src = diffusers_path(src)
    if src.is_dir():
        return "diffusers"
    if src.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(src), "np") as f:
            return detect_format(dict.fromkeys(f.keys()))
    return detect_format(load_state_dict(src, dtype=None, trust_pickle=trust_pickle))


def main(argv: list[str]) -> int:
    src, out = cli.positionals(argv, "src", "out")
    cli.reject_unused(cli.FORMAT, cli.LDM_CONFIG, cli.TRUST_PICKLE)
    if _KIND.value is None:
        raise app.UsageError("--kind vc2|sd21 is required")
    from maestro_jax.checkpoints import save_params

    if not src.exists():
        return cli.error(f"{src} does not exist", 2)
    ldm_params = None
    if cli.LDM_CONFIG.value is not None:
        with open(cli.LDM_CONFIG.value) as f:
            ldm_params = json.load(f)
        ldm_params = ldm_params.get("params", ldm_params)
    fmt = cli.FORMAT.value
    try:
        if _KIND.value == "vc2":
            if fmt == "diffusers":
                return cli.error("VideoCrafter2 has no diffusers format", 2)
            kind, fmt = "vc2", "ldm"
            cfg = UNetConfig.from_ldm_vc(ldm_params) if ldm_params else UNetConfig.vc2()
        else:
            if fmt == "auto":
                fmt = _peek_format(src, cli.TRUST_PICKLE.value)
            kind = f"sd21_{fmt}"
            cfg = UNetConfig.from_ldm_sd(ldm_params) if ldm_params else UNetConfig.sd21()
        params = load_unet_params(src, kind, cfg, trust_pickle=cli.TRUST_PICKLE.value)
    except ConversionError as e:
        return cli.error(str(e))
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    meta = {"unet": dataclasses.asdict(cfg), "kind": kind, "format": fmt, "source": str(src)}
    save_params(out, params, meta, compress=False)
    print(f"wrote {out}: {kind}, {n:,} params")
    return 0


if __name__ == "__main__":
    cli.run(main)
