"""Sample images of the CIM trainer: the frozen T2I model conditioned on held-out audio."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from maestro_jax import diffusion
from maestro_jax.models import imagebind as ib
from maestro_jax.models import vae as vae_lib
from maestro_jax.models.cim import CIM
from maestro_jax.models.unet import UNet
from maestro_jax.training.cim_loss import (
    LossSpec,
    Models,
    interpolate_token_sets,
    training_contexts,
)


def make_sample_fn(models: Models, spec: LossSpec, sample_cfg: Any) -> Callable:
    """`sample(frozen, cim_params, mel [N, S, 128, 204], key) -> images [N, k, H, W, 3]` in
    [-1, 1]: the frozen T2I model conditioned on c_I of token sets 0..k-1 (k = num_segments),
    DDIM with classifier-free guidance against the plain null embedding, VAE-decoded."""
    schedule = diffusion.Schedule.sd21(v=spec.prediction_type == "v")
    unet, cim = UNet(models.unet), CIM(models.cim)
    audio_enc = ib.ImageBindAudio(models.imagebind)
    size = int(sample_cfg.latent_size)

    def sample(frozen, cim_params, mel, key):
        n, s = mel.shape[:2]
        tokens = audio_enc.apply({"params": frozen["imagebind"]}, mel.astype(jnp.float32)).tokens
        p = cim.apply({"params": cim_params}, tokens).astype(jnp.float32)
        if spec.interpolation:
            p = interpolate_token_sets(p)
        k = min(int(sample_cfg.num_segments), p.shape[1])
        null = frozen["null_emb"].astype(jnp.float32)
        ctx = training_contexts(null, p[:, :k], k, spec.token_offset)  # frame j = set j
        ctx = ctx.reshape(n * k, *ctx.shape[2:])
        uncond = jnp.broadcast_to(null, ctx.shape)
        k_x, k_ddim = jax.random.split(key)
        x_T = jax.random.normal(k_x, (n * k, size, size, models.unet.in_channels), jnp.float32)

        def model_fn(x, t, cond, step):
            return unet.apply({"params": frozen["unet"]}, x, t, cond["context"])

        z = diffusion.ddim_sample(
            model_fn,
            x_T,
            cond={"context": ctx},
            uncond={"context": uncond},
            steps=int(sample_cfg.steps),
            eta=float(sample_cfg.eta),
            guidance=float(sample_cfg.guidance),
            schedule=schedule,
            key=k_ddim,
        )
        imgs = vae_lib.decode_latents(
            vae_lib.AutoencoderKL(models.vae), frozen["vae"], z.reshape(n, k, *z.shape[1:])
        )
        return imgs

    return sample
