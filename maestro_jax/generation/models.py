"""The networks of one generation run: VideoCrafter2 (3D UNet, VAE, OpenCLIP text), the audio
encoder (ImageBind audio trunk + CIM) and, for mixtures, the separator.

`Models` holds every network's config and params: real weights converted by `convert.*`
(`load_models`), or tiny random ones for CPU runs (`init_random_models`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.audio import encoder as ae
from maestro_jax.audio.separation import init_random_separator
from maestro_jax.checkpoints import load_params
from maestro_jax.diffusion import Schedule
from maestro_jax.models import clip_text as ct
from maestro_jax.models.tokenizer import HashTokenizer
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.models.vae import AutoencoderKL, VAEConfig
from maestro_jax.nn.random_init import random_init, random_like


# ----------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True, eq=False)
class Models:
    """Every network Maestro runs. `audio` and `separator` may be None (text-to-video only,
    or stems given directly)."""

    unet_config: UNetConfig
    unet_params: Any
    vae_config: VAEConfig
    vae_params: Any
    text_config: ct.ClipTextConfig
    text_params: Any
    tokenizer: Callable[[Any], np.ndarray]
    schedule: Schedule
    audio: ae.AudioEncoder | None = None
    separator: Any = None  # maestro_jax.separate.Separator
    random: bool = False  # tiny random weights (say so in every output)
    trained_frames: int | None = None  # the frame count the video UNet was trained with

    @property
    def context_width(self) -> int:
        return self.unet_config.context_dim


def tiny_configs(dtype: str = "float32") -> tuple[UNetConfig, VAEConfig, ct.ClipTextConfig]:
    """Mutually consistent tiny configs: context width 64 everywhere."""
    unet = UNetConfig.tiny(temporal=True, context_dim=64, dtype=dtype)
    vae = VAEConfig.tiny(dtype=jnp.dtype(dtype))
    text = ct.tiny(embed_dim=None, dtype=dtype)
    return unet, vae, text


def _tokenizer(bpe_path: str | None, allow_hash: bool) -> Callable[[Any], np.ndarray]:
    from maestro_jax.models.tokenizer import get_tokenizer

    try:
        return get_tokenizer(bpe_path or None)
    except FileNotFoundError:
        if not allow_hash:
            raise
        return HashTokenizer()


def init_random_models(
    seed: int = 0,
    dtype: str = "float32",
    *,
    with_audio: bool = True,
    num_queries: int = 4,
    bpe_path: str | None = None,
    separator: bool = False,
) -> Models:
    """Tiny random weights for every stage (tests, `:runlocal` configs, CPU demos)."""
    unet_cfg, vae_cfg, text_cfg = tiny_configs(dtype)
    x = jnp.zeros((1, 2, 8, 8, 4), jnp.float32)
    ctx = jnp.zeros((1, 77, unet_cfg.context_dim), jnp.float32)
    unet_params = random_init(UNet(unet_cfg), x, jnp.zeros((1,)), ctx, jnp.ones((1,)), seed=seed)
    vae_params = random_init(AutoencoderKL(vae_cfg), jnp.zeros((1, 8, 8, 3)), seed=seed + 1)
    text_params = random_like(ct.abstract_params(text_cfg), seed + 2)
    audio = None
    if with_audio:
        audio = ae.init_random(
            ae.tiny_imagebind(jnp.dtype(dtype)),
            ae.tiny_cim(unet_cfg.context_dim, num_queries, jnp.dtype(dtype)),
            seed + 3,
        )
    sep = init_random_separator(seed + 4) if separator else None
    return Models(
        unet_cfg,
        unet_params["params"],
        vae_cfg,
        vae_params["params"],
        text_cfg,
        text_params,
        _tokenizer(bpe_path, allow_hash=True),
        Schedule.vc2(),
        audio,
        sep,
        random=True,
    )


def load_models(
    checkpoint: str | Path,
    *,
    dtype: str = "bfloat16",
    attn_impl: str = "xla",
    bpe_path: str | None = None,
    imagebind_checkpoint: str | Path | None = None,
    cim_checkpoint: str | Path | None = None,
) -> Models:
    """Converted VideoCrafter2 weights (`python -m convert.videocrafter model.ckpt DIR`: DIR/unet,
    DIR/vae, DIR/text), plus ImageBind and CIM folders when audio conditioning is wanted."""
    root = Path(checkpoint)
    for sub in ("unet", "vae", "text"):
        if not (root / sub / "params").exists():
            raise FileNotFoundError(
                f"{root}/{sub} is missing: convert VideoCrafter2 first with "
                f"`python -m convert.videocrafter model.ckpt {root}`"
            )
    unet_params, unet_meta = load_params(root / "unet")
    unet_cfg = UNetConfig(**{**unet_meta["unet"], "dtype": dtype, "attn_impl": attn_impl})
    vae_params, vae_meta = load_params(root / "vae")
    vd = {k: v for k, v in vae_meta["vae"].items() if k != "dtype"}
    vae_cfg = VAEConfig(**{**vd, "ch_mult": tuple(vd["ch_mult"]),
                           "attn_resolutions": tuple(vd["attn_resolutions"]),
                           "dtype": jnp.dtype(dtype)})  # fmt: skip
    text_params, text_meta = load_params(root / "text")
    text_cfg = dataclasses.replace(ct.ClipTextConfig.from_dict(text_meta), dtype=dtype)
    # the toy world's frozen random text encoder was made with the hash tokenizer (no BPE file)
    if text_meta.get("tokenizer") == "hash":
        tokenizer = HashTokenizer()
    else:
        tokenizer = _tokenizer(bpe_path, allow_hash=False)
    audio = None
    if imagebind_checkpoint and cim_checkpoint:
        audio = ae.load(imagebind_checkpoint, cim_checkpoint, jnp.dtype(dtype))
    elif imagebind_checkpoint or cim_checkpoint:
        raise ValueError("audio conditioning needs both imagebind_checkpoint and cim_checkpoint")
    return Models(
        unet_cfg, unet_params, vae_cfg, vae_params, text_cfg, text_params,
        tokenizer, Schedule.vc2(), audio,
        trained_frames=unet_meta.get("trained_frames"),
    )  # fmt: skip


# ----------------------------------------------------------------------------- text
def text_context(models: Models, prompts: str | Sequence[str]) -> jax.Array:
    """Prompts -> [N, 77, D] (penultimate layer, as VideoCrafter2)."""
    return ct.encode_text(models.text_params, models.text_config, models.tokenizer, prompts)


def null_context(models: Models) -> jax.Array:
    """The empty prompt's embedding [77, D]: the null / unconditional context."""
    return ct.null_embedding(models.text_params, models.text_config, models.tokenizer)
