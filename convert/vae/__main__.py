"""python -m convert.vae SRC OUT [--format auto|ldm|diffusers] [--ldm_config FILE]
[--trust_pickle]: an AutoencoderKL checkpoint -> an orbax params folder (see `convert.vae`)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from absl import flags

from convert import cli
from convert.common import ConversionError, load_state_dict
from convert.vae import config_from_diffusers, convert_vae
from maestro_jax.models.vae import VAEConfig

for _held in (cli.FORMAT, cli.LDM_CONFIG, cli.TRUST_PICKLE):
    flags.declare_key_flag(_held.name)


def _format(src: Path, sd) -> str:
    if cli.FORMAT.value != "auto":
        return cli.FORMAT.value
    if src.is_dir() or any(".up_blocks." in k or ".mid_block." in k for k in sd):
        return "diffusers"
    return "ldm"


def main(argv: list[str]) -> int:
    src, out = cli.positionals(argv, "src", "out")
    cli.reject_unused(cli.FORMAT, cli.LDM_CONFIG, cli.TRUST_PICKLE)
    config = Path(cli.LDM_CONFIG.value) if cli.LDM_CONFIG.value else None
    for p in (src, config):
        if p is not None and not p.exists():
            return cli.error(f"{p} does not exist", 2)
    try:
        sd = load_state_dict(src, dtype=None, trust_pickle=cli.TRUST_PICKLE.value)
        fmt = _format(src, sd)
        if config is not None:
            c = json.loads(config.read_text())
            c = c.get("params", c)
            cfg = VAEConfig.from_ldm(c["ddconfig"], c["embed_dim"])
        elif fmt == "diffusers":
            cfg = config_from_diffusers(src)
        else:
            cfg = VAEConfig.sd()
        params = convert_vae(sd, cfg, fmt)
    except ConversionError as e:
        return cli.error(f"{src}: {e}")
    del sd
    from maestro_jax.checkpoints import save_params

    meta = {"model": "AutoencoderKL", "vae": cfg.to_dict(), "format": fmt, "source": str(src)}
    save_params(out, params, meta, compress=False)
    n = sum(int(np.size(v)) for v in jax.tree.leaves(params))
    print(f"wrote {out} ({n:,} params)")
    return 0


if __name__ == "__main__":
    cli.run(main)
