"""Training the condition injection module (CIM) against a frozen Stable Diffusion 2.1.

Paper section 3.2 / spec `maestro.md` "Training the CIM", `video_models.md` 4.6. Per training
clip (10 s, S = 5 ImageBind clips of 2 s, F frames):

    tokens  = ImageBind_audio(A)                [B, S, 229, 768]   frozen
    p       = CIM(tokens)                       [B, S, N_Q, D]     trained
    (interpolation: insert means of neighbouring sets -> K = 2S - 1 sets, else K = S)
    c_I[f]  = null embedding with p[floor(f K / F)] at columns [o, o + N_Q)     [B, F, 77, D]
    z0      = VAE(frame) * 0.18215 (or cached latents), t ~ U{0..999}, x_t = q_sample(z0, t, n)
    L_sd    = mean (UNet(x_t, t, c_I) - target)^2   target = noise (eps) or velocity (v)
    L_mse   = mean (c_I - text(label))^2            text = OpenCLIP layer penultimate | last
    loss    = lambda1 (L_sd(A) + L_sd(A')) + (1 - lambda1) (L_mse(A) + L_mse(A'))

A' = SpecAugment(A). Every frame gets its own timestep and noise; A and A' share them (the two
terms then differ only through the audio). Without SpecAugment A' = A, so the two terms of each
pair are equal and the UNet runs once (the loss is still the formula's, i.e. twice the single
view's). Gradients flow only into the CIM; the UNet, VAE, ImageBind and the text caches are
arguments of the step, never differentiated.

Public API: `build_models`, `LossSpec`, `make_optimizer`, `make_train_step`,
`init_train_state`, `init_frozen`, `text_caches`, `make_sample_fn`, `train` (the loop behind
`python -m maestro_jax.train`), `NonFiniteError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maestro_jax import audio as audio_lib
from maestro_jax import diffusion
from maestro_jax.models import clip_text
from maestro_jax.models import imagebind as ib
from maestro_jax.models import vae as vae_lib
from maestro_jax.models.cim import CIM, CIMConfig
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.training import validate
from maestro_jax.training.optim import tree_norm
from maestro_jax.training.validate import ConfigError

CONTEXT_LEN = 77


@dataclasses.dataclass(frozen=True)
class Models:
    """The static configs of every model of the step (hashable: part of the jit cache key)."""

    unet: UNetConfig
    vae: vae_lib.VAEConfig
    text: clip_text.ClipTextConfig
    imagebind: ib.ImageBindConfig
    cim: CIMConfig


# runlocal's UNet (`model.unet.small`): one res block per level, two levels, attention at full
# resolution
_SMALL_UNET = dict(num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(1,))


def _model_config(cls: Any, section: Any, field: str, **overrides: Any) -> Any:
    """`cls.from_folder(section.params)` for preset 'folder', else `cls.from_preset`."""
    name = section.preset
    if name == "folder":
        if not section.params:
            raise ConfigError(f"config.model.{field}.params is empty: preset 'folder' needs one")
        try:
            return cls.from_folder(section.params, **overrides)
        except ValueError as e:
            raise ConfigError(f"config.model.{field}.params: {e}") from None
    if name not in cls.preset_names():
        allowed = ", ".join(repr(k) for k in (*cls.preset_names(), "folder"))
        raise ConfigError(f"config.model.{field}.preset={name!r}: must be one of {allowed}")
    return cls.from_preset(name, **overrides)


def build_models(config: Any) -> Models:
    """Model configs from `config.model` and `config.compute_dtype`; checks the widths agree.
    Presets are the model configs' own (`from_preset`, e.g. UNet 'sd21' | 'tiny', VAE 'sd',
    text 'vit_h14', ImageBind 'huge', CIM 'release' | 'tiny' | 'toy'); preset 'folder' reads
    the config.json of `model.<name>.params` (`from_folder`, e.g. the toy world's exports)."""
    m, dt = config.model, config.compute_dtype
    vdt = jnp.dtype(dt)
    unet_kw = dict(dtype=dt, remat=bool(m.unet.remat), attn_impl=m.unet.attn_impl)
    if m.unet.preset == "tiny":
        unet_kw.update(temporal=False, fps_cond=False)
        if m.unet.get("small"):
            unet_kw.update(_SMALL_UNET)
    unet = _model_config(UNetConfig, m.unet, "unet", **unet_kw)
    vae = _model_config(vae_lib.VAEConfig, m.vae, "vae", dtype=vdt)
    text_kw = {}  # the converted towers compute in float32; the toy world's in compute_dtype
    if m.text.preset == "folder":
        text_kw["dtype"] = dt
    elif m.text.preset == "tiny":
        # width = the tiny UNet's context width; no pooled projection is needed here
        text_kw.update(width=unet.context_dim, heads=4, layers=2, embed_dim=None)
    text = _model_config(clip_text.ClipTextConfig, m.text, "text", **text_kw)
    try:
        text.blocks_for(m.text.layer)  # 'last' on a trimmed tower fails here, before any work
    except ValueError as e:
        raise ConfigError(f"config.model.text.layer: {e}") from None
    ib_cfg = _model_config(ib.ImageBindConfig, m.imagebind, "imagebind", dtype=vdt)
    cim_kw = dict(num_queries=int(m.cim.num_queries), dtype=vdt)
    if m.cim.preset != "release":  # the narrow CIMs take the encoders' widths
        cim_kw.update(embed_dim=ib_cfg.audio_width, output_dim=unet.context_dim)
    if m.cim.preset == "folder":
        raise ConfigError("config.model.cim.preset='folder': use model.cim.init for weights")
    cim = _model_config(CIMConfig, m.cim, "cim", **cim_kw)
    if not cim.output_dim == unet.context_dim == text.width:
        raise ConfigError(
            f"widths disagree: CIM output {cim.output_dim}, UNet context {unet.context_dim}, text "
            f"encoder {text.width} (all must be the context width D)"
        )
    if cim.embed_dim != ib_cfg.audio_width:
        raise ConfigError(
            f"CIM embed_dim {cim.embed_dim} != ImageBind audio width {ib_cfg.audio_width}"
        )
    o = int(config.token_offset)
    if not 0 <= o or o + cim.num_latents > CONTEXT_LEN:
        raise ConfigError(
            f"config.token_offset={o}: token_offset + N_Q ({cim.num_latents}) must fit in the "
            f"{CONTEXT_LEN}-token context"
        )
    return Models(unet, vae, text, ib_cfg, cim)


# ==================================================================================================
# Loss
# ==================================================================================================


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Static loss settings (see the module docstring)."""

    lambda1: float = 0.9
    token_offset: int = 1
    interpolation: bool = False
    num_frames: int = 0  # 0: all frames (with interpolation at most 2S - 1)
    prediction_type: str = "v"
    # (time_warp, freq_masks, freq_width, time_masks, time_width) or None (A' = A)
    spec_augment: tuple[int, int, int, int, int] | None = None
    vae_sample_posterior: bool = True
    use_latents: bool = True

    @classmethod
    def from_config(cls, config: Any) -> LossSpec:
        sa = config.spec_augment
        aug = None
        if sa.enabled:
            aug = (sa.time_warp, sa.freq_masks, sa.freq_width, sa.time_masks, sa.time_width)
            aug = tuple(int(v) for v in aug)
        validate.one_of(config, "model.prediction_type", diffusion.PREDICTION_TYPES)
        validate.in_range(config, "lambda1", 0.0, 1.0)
        lam = float(config.lambda1)
        return cls(
            lambda1=lam,
            token_offset=int(config.token_offset),
            interpolation=bool(config.interpolation),
            num_frames=int(config.frames.num_frames),
            prediction_type=config.model.prediction_type,
            spec_augment=aug,
            vae_sample_posterior=bool(config.vae_sample_posterior),
            use_latents=bool(config.data.use_latents),
        )

    def num_sets(self, num_clips: int) -> int:
        """K: token sets per training clip (S, or 2S - 1 with interpolation)."""
        return 2 * num_clips - 1 if self.interpolation else num_clips

    def frames_used(self, frames_available: int, num_clips: int) -> int:
        if self.num_frames > 0:
            if self.num_frames > frames_available:
                raise ValueError(
                    f"frames.num_frames={self.num_frames} but the batch holds {frames_available} "
                    "frames per clip"
                )
            return self.num_frames
        if self.interpolation:
            return min(frames_available, self.num_sets(num_clips))
        return frames_available


def interpolate_token_sets(tokens: jax.Array) -> jax.Array:
    """[B, S, N_Q, D] -> [B, 2S - 1, N_Q, D]: clip sets with the mean of each neighbouring pair
    inserted between them (the release's `--interpolation`)."""
    b, s = tokens.shape[:2]
    if s < 2:
        return tokens
    mids = 0.5 * (tokens[:, :-1] + tokens[:, 1:])
    pairs = jnp.stack([tokens[:, :-1], mids], axis=2).reshape(b, 2 * (s - 1), *tokens.shape[2:])
    return jnp.concatenate([pairs, tokens[:, -1:]], axis=1)


def frame_token_index(num_frames: int, num_sets: int) -> np.ndarray:
    """Token set of each frame: floor(f * K / F), [F] int (identity when F = K; for the
    release's 10 frames and 5 sets, frame f uses set f // 2)."""
    return (np.arange(num_frames) * num_sets) // num_frames


def training_contexts(
    null_emb: jax.Array, token_sets: jax.Array, num_frames: int, token_offset: int
) -> jax.Array:
    """c_I per frame: null_emb [L, D] with token_sets[b, floor(f K / F)] ([B, K, N_Q, D]) at
    columns [o, o + N_Q). Returns [B, F, L, D]."""
    b, k, nq, d = token_sets.shape
    per_frame = token_sets[:, frame_token_index(num_frames, k)]  # [B, F, N_Q, D]
    base = jnp.broadcast_to(null_emb.astype(token_sets.dtype), (b, num_frames, *null_emb.shape))
    return base.at[:, :, token_offset : token_offset + nq].set(per_frame)


def frames_to_latents(
    models: Models, vae_params: Any, frames: jax.Array, key: jax.Array | None
) -> jax.Array:
    """uint8 frames [B, F, H, W, 3] -> scaled latents [B, F, h, w, 4] (posterior sample when
    `key`, else its mean), no gradient."""
    x = frames.astype(jnp.float32) / 127.5 - 1.0
    lat = vae_lib.encode_frames(vae_lib.AutoencoderKL(models.vae), vae_params, x, key=key)
    return jax.lax.stop_gradient(lat)


def make_train_step(
    models: Models,
    spec: LossSpec,
    tx: optax.GradientTransformation,
    schedule_fn: Callable[[jax.Array], jax.Array],
    seed: int,
) -> Callable:
    """`step(state, batch, frozen, nan_step) -> (state, metrics)` (pure; jit it).

    state: {'step': int32 [], 'params': CIM params, 'opt_state'}.
    batch: `mel` float32 [B, S, 128, 204], `label_index` int32 [B], and `latents` float
      [B, F, h, w, 4] (scaled) or `frames` uint8 [B, F, H, W, 3].
    frozen: {'unet', 'vae', 'imagebind': params, 'null_emb': [77, D], 'label_emb': [C, 77, D]}.
    nan_step: int32 [] test hook, the loss is NaN when the step number (1-based) equals it.
    metrics: float32 scalars `loss`, `loss_sd`, `loss_sd_aug`, `loss_mse`, `loss_mse_aug`,
      `grad_norm`, `param_norm`, `lr`.
    """
    schedule = diffusion.Schedule.sd21(v=spec.prediction_type == "v")
    unet, cim = UNet(models.unet), CIM(models.cim)
    audio_enc = ib.ImageBindAudio(models.imagebind)
    lam, o = spec.lambda1, spec.token_offset

    def step_fn(state, batch, frozen, nan_step):
        step = state["step"]
        key = jax.random.fold_in(jax.random.key(seed), step)
        k_vae, k_aug, k_t, k_noise = jax.random.split(key, 4)
        mel = batch["mel"].astype(jnp.float32)
        b, s = mel.shape[:2]
        if spec.use_latents and "latents" in batch:
            latents = batch["latents"].astype(jnp.float32)
        else:
            vae_key = k_vae if spec.vae_sample_posterior else None
            latents = frames_to_latents(models, frozen["vae"], batch["frames"], vae_key)
        f = spec.frames_used(latents.shape[1], s)
        latents = latents[:, :f]
        h, w, c = latents.shape[2:]

        views = 1
        if spec.spec_augment is not None:
            tw, fm, fw, tm, tw_ = spec.spec_augment
            aug = audio_lib.spec_augment(
                k_aug,
                mel,
                time_warp=tw,
                freq_masks=fm,
                freq_width=fw,
                time_masks=tm,
                time_width=tw_,
            )
            mel = jnp.concatenate([mel, aug], axis=0)  # [A; A'], [2B, S, 128, 204]
            views = 2
        tokens = audio_enc.apply({"params": frozen["imagebind"]}, mel).tokens
        tokens = jax.lax.stop_gradient(tokens)  # [V*B, S, 229, E]

        t = jax.random.randint(k_t, (b * f,), 0, schedule.num_timesteps)
        x0 = latents.reshape(b * f, h, w, c)
        noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
        x_t = schedule.q_sample(x0, t, noise)
        target = schedule.training_target(x0, noise, t)
        label_emb = frozen["label_emb"][batch["label_index"]].astype(jnp.float32)  # [B, L, D]
        null_emb = frozen["null_emb"].astype(jnp.float32)

        def loss_fn(params):
            p = cim.apply({"params": params}, tokens).astype(jnp.float32)  # [V*B, S, N_Q, D]
            if spec.interpolation:
                p = interpolate_token_sets(p)
            ctx = training_contexts(null_emb, p, f, o)  # [V*B, F, L, D]
            ctx_v = ctx.reshape(views, b, f, *ctx.shape[2:])
            l_mse = jnp.mean(jnp.square(ctx_v - label_emb[None, :, None]), axis=(1, 2, 3, 4))
            x_in = jnp.concatenate([x_t] * views, axis=0)
            t_in = jnp.concatenate([t] * views, axis=0)
            pred = unet.apply(
                {"params": frozen["unet"]}, x_in, t_in, ctx.reshape(views * b * f, *ctx.shape[2:])
            )
            err = jnp.square(pred.astype(jnp.float32).reshape(views, b * f, h, w, c) - target[None])
            l_sd = jnp.mean(err, axis=(1, 2, 3, 4))
            if views == 1:  # A' = A
                l_sd, l_mse = jnp.concatenate([l_sd, l_sd]), jnp.concatenate([l_mse, l_mse])
            loss = lam * (l_sd[0] + l_sd[1]) + (1.0 - lam) * (l_mse[0] + l_mse[1])
            loss = jnp.where(step + 1 == nan_step, jnp.nan, loss)
            terms = {
                "loss_sd": l_sd[0],
                "loss_sd_aug": l_sd[1],
                "loss_mse": l_mse[0],
                "loss_mse_aug": l_mse[1],
            }
            return loss, terms

        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss,
            **terms,
            "grad_norm": tree_norm(grads),
            "param_norm": tree_norm(params),
            "lr": jnp.asarray(schedule_fn(step), jnp.float32),
        }
        new_state = {"step": step + 1, "params": params, "opt_state": opt_state}
        return new_state, metrics

    return step_fn
