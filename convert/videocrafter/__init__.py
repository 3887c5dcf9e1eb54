"""VideoCrafter2 `model.ckpt` -> one folder of Flax params for `maestro_jax.generate`.

    python -m convert.videocrafter checkpoints/base_512_v2/model.ckpt ckpt/vc2

The checkpoint holds the UNet (`model.diffusion_model.*`), the VAE (`first_stage_model.*`), the
OpenCLIP text tower (`cond_stage_model.model.*`) and the schedule buffers; it is read once and
written as OUT/unet, OUT/vae and OUT/text (orbax params + config.json each; see `convert.unet`,
`convert.vae`, `convert.clip_text`). Every key is accounted for: each part is converted strictly
and the schedule buffers are checked against `Schedule.vc2()`. Reading `.ckpt` needs torch
(`pip install -e .[convert]`); a `.safetensors` export does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from convert.clip_text import convert_state_dict as convert_text
from convert.common import ConversionError, load_state_dict, select_prefix
from convert.unet import convert_unet
from convert.vae import convert_vae
from maestro_jax.checkpoints import save_params
from maestro_jax.models import clip_text as ct
from maestro_jax.models.unet import UNetConfig
from maestro_jax.models.vae import VAEConfig

PARTS = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.model.")
SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "scale_arr",
)  # fmt: skip


def check_schedule(sd: Mapping[str, np.ndarray]) -> None:
    """The checkpoint's own schedule buffers must be the one the sampler uses."""
    from maestro_jax.diffusion import Schedule

    if "alphas_cumprod" not in sd:
        return
    ours = np.asarray(Schedule.vc2().alphas_cumprod, np.float64)
    theirs = np.asarray(sd["alphas_cumprod"], np.float64)
    if theirs.shape != ours.shape or np.abs(theirs - ours).max() > 1e-6:
        raise ConversionError("alphas_cumprod in the checkpoint differs from VideoCrafter2's")


def convert_videocrafter(
    sd: Mapping[str, np.ndarray],
    out: str | Path,
    unet_config: UNetConfig | None = None,
    vae_config: VAEConfig | None = None,
    text_config: ct.ClipTextConfig | None = None,
    source: str = "",
    trained_frames: int = 16,
) -> Path:
    """Convert all three parts of a VC2-style state dict and write OUT/{unet,vae,text}.

    `trained_frames` (16 for VideoCrafter2's `temporal_length`) is recorded so generation can
    refuse another frame count with a clear message."""
    unet_config = unet_config or UNetConfig.vc2()
    vae_config = vae_config or VAEConfig.sd()
    text_config = text_config or ct.vit_h14()
    stray = sorted(k for k in sd if not k.startswith(PARTS) and k not in SCHEDULE_KEYS)
    if stray:
        raise ConversionError(f"unexpected keys in the checkpoint: {stray[:20]}")
    check_schedule(sd)
    unet = convert_unet(select_prefix(sd, PARTS[0]), unet_config, "ldm")
    vae = convert_vae(sd, vae_config, "ldm")
    text, text_config = convert_text(select_prefix(sd, PARTS[2]), text_config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_params(out / "unet", unet, {"unet": dataclasses.asdict(unet_config), "kind": "vc2",
                                     "format": "ldm", "source": source,
                                     "trained_frames": trained_frames})  # fmt: skip
    save_params(out / "vae", vae, {"model": "AutoencoderKL", "vae": vae_config.to_dict(),
                                   "source": source})  # fmt: skip
    save_params(out / "text", text, {**text_config.to_dict(), "model": "clip_text",
                                      "layout": "openclip", "source": source})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("src", type=Path, help="VideoCrafter2 model.ckpt (or a .safetensors export)")
    ap.add_argument("out", type=Path, help="output folder")
    args = ap.parse_args(argv)
    if not args.src.is_file():
        print(f"error: {args.src} not found", file=sys.stderr)
        return 2
    try:
        convert_videocrafter(load_state_dict(args.src), args.out, source=str(args.src))
    except ConversionError as e:
        print(f"error: {args.src}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}/unet, {args.out}/vae, {args.out}/text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
