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
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from maestro_jax import audio as audio_lib
from maestro_jax import diffusion
from maestro_jax.models import clip_text
from maestro_jax.models import imagebind as ib
from maestro_jax.models import vae as vae_lib
from maestro_jax.models.cim import CIM, CIMConfig
from maestro_jax.models.tokenizer import HashTokenizer
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.nn.random_init import random_like
from maestro_jax.sharding import batch_sharding, make_mesh, param_shardings
from maestro_jax.training.checkpoints import truncate_jsonl

log = logging.getLogger("maestro_jax.train")

CONTEXT_LEN = 77
SOT_ID, EOT_ID = 49406, 49407


class NonFiniteError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the run stopped without saving."""


# ==================================================================================================
# Models
# ==================================================================================================


@dataclasses.dataclass(frozen=True)
class Models:
    """The static configs of every model of the step (hashable: part of the jit cache key)."""

    unet: UNetConfig
    vae: vae_lib.VAEConfig
    text: clip_text.ClipTextConfig
    imagebind: ib.ImageBindConfig
    cim: CIMConfig


# Small CIMs (the release's Perceiver resampler, narrower): runlocal tests and the toy world.
_SMALL_CIMS = {"tiny": dict(dim=32, depth=1, heads=2), "toy": dict(dim=64, depth=2, heads=4)}


def build_models(config: Any) -> Models:
    """Model configs from `config.model` and `config.compute_dtype`; checks the widths agree."""
    m, dt = config.model, config.compute_dtype
    unet_kw = dict(dtype=dt, remat=bool(m.unet.remat), attn_impl=m.unet.attn_impl)
    if m.unet.preset == "sd21":
        unet = UNetConfig.sd21(**unet_kw)
    elif m.unet.preset == "folder":
        # the config.json of the exported folder in model.unet.params (the toy world's T2I)
        d = _folder_meta("unet", m.unet.params)["unet"]
        unet = UNetConfig(**{**d, **unet_kw})
    elif m.unet.preset == "tiny":
        unet = UNetConfig.tiny(temporal=False, **unet_kw)
        if m.unet.get("small"):
            # runlocal: one res block per level, two levels, attention at full resolution
            unet = unet.replace(num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(1,))
    else:
        raise ValueError(
            f"model.unet.preset must be 'sd21', 'tiny' or 'folder', got {m.unet.preset!r}"
        )
    vdt = jnp.dtype(dt)
    if m.vae.preset == "sd":
        vae = vae_lib.VAEConfig.sd(dtype=vdt)
    elif m.vae.preset == "tiny":
        vae = vae_lib.VAEConfig.tiny(dtype=vdt)
    elif m.vae.preset == "folder":
        d = dict(_folder_meta("vae", m.vae.params)["vae"])
        d.pop("dtype", None)
        for f in ("ch_mult", "attn_resolutions"):
            d[f] = tuple(d[f])
        vae = vae_lib.VAEConfig(**d, dtype=vdt)
    else:
        raise ValueError(f"model.vae.preset must be 'sd', 'tiny' or 'folder', got {m.vae.preset!r}")
    presets = {
        "vit_h14": clip_text.vit_h14,
        "vit_h14_hf": clip_text.vit_h14_hf,
        # width = the tiny UNet's context width; no pooled projection is needed here
        "tiny": lambda: clip_text.tiny(width=unet.context_dim, heads=4, layers=2, embed_dim=None),
        "folder": lambda: dataclasses.replace(
            clip_text.ClipTextConfig.from_dict(_folder_meta("text", m.text.params)), dtype=dt
        ),
    }
    if m.text.preset not in presets:
        raise ValueError(
            f"model.text.preset must be one of {sorted(presets)}, got {m.text.preset!r}"
        )
    text = presets[m.text.preset]()
    text.blocks_for(m.text.layer)  # 'last' on a trimmed tower fails here, before any work
    if m.imagebind.preset == "huge":
        imagebind = ib.imagebind_huge(dtype=vdt)
    elif m.imagebind.preset == "tiny":
        imagebind = ib.ImageBindConfig(
            out_dim=32, audio_width=32, audio_depth=1, audio_heads=2, dtype=vdt
        )
    elif m.imagebind.preset == "folder":
        d = _folder_meta("imagebind", m.imagebind.params)["imagebind"]
        names = {f.name for f in dataclasses.fields(ib.ImageBindConfig)}
        imagebind = ib.ImageBindConfig(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in d.items()
                if k in names and k != "dtype"
            },
            dtype=vdt,
        )
    else:
        raise ValueError(
            f"model.imagebind.preset must be 'huge', 'tiny' or 'folder', got {m.imagebind.preset!r}"
        )
    nq = int(m.cim.num_queries)
    if m.cim.preset == "release":
        cim = CIMConfig.release(num_queries=nq, dtype=vdt)
    elif m.cim.preset in _SMALL_CIMS:
        cim = CIMConfig(
            **_SMALL_CIMS[m.cim.preset],
            dim_head=16,
            num_queries=nq,
            embed_dim=imagebind.audio_width,
            output_dim=unet.context_dim,
            ff_mult=2,
            dtype=vdt,
        )
    else:
        raise ValueError(
            f"model.cim.preset must be 'release', 'tiny' or 'toy', got {m.cim.preset!r}"
        )
    if not cim.output_dim == unet.context_dim == text.width:
        raise ValueError(
            f"widths disagree: CIM output {cim.output_dim}, UNet context {unet.context_dim}, text "
            f"encoder {text.width} (all must be the context width D)"
        )
    if cim.embed_dim != imagebind.audio_width:
        raise ValueError(
            f"CIM embed_dim {cim.embed_dim} != ImageBind audio width {imagebind.audio_width}"
        )
    o = int(config.token_offset)
    if not 0 <= o or o + cim.num_latents > CONTEXT_LEN:
        raise ValueError(
            f"token_offset {o} + N_Q {cim.num_latents} must fit in the {CONTEXT_LEN}-token context"
        )
    return Models(unet, vae, text, imagebind, cim)


def _folder_meta(name: str, path: str) -> dict:
    """config.json of an exported params folder (preset 'folder')."""
    if not path:
        raise ValueError(f"model.{name}.preset='folder' needs model.{name}.params (a folder)")
    f = Path(path) / "config.json"
    if not f.exists():
        raise ValueError(f"model.{name}.params={path!r} has no config.json")
    return json.loads(f.read_text())


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
        if config.model.prediction_type not in diffusion.PREDICTION_TYPES:
            raise ValueError(
                f"model.prediction_type must be one of {diffusion.PREDICTION_TYPES}, got "
                f"{config.model.prediction_type!r}"
            )
        lam = float(config.lambda1)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lambda1 must lie in [0, 1], got {lam}")
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
            "grad_norm": _tree_norm(grads),
            "param_norm": _tree_norm(params),
            "lr": jnp.asarray(schedule_fn(step), jnp.float32),
        }
        new_state = {"step": step + 1, "params": params, "opt_state": opt_state}
        return new_state, metrics

    return step_fn


def _tree_norm(tree: Any) -> jax.Array:
    """Global L2 norm (optax.tree.norm; optax.global_norm before it existed)."""
    tree_mod = getattr(optax, "tree", None)
    if tree_mod is not None and hasattr(tree_mod, "norm"):
        return tree_mod.norm(tree)
    return optax.global_norm(tree)


# ==================================================================================================
# Optimizer and state
# ==================================================================================================


def make_schedule(config: Any) -> Callable:
    lr, sc = float(config.optimizer.lr), config.schedule
    warm, total = int(sc.warmup_steps), int(config.total_steps)
    if sc.name == "constant":
        main = optax.constant_schedule(lr)
    elif sc.name == "cosine":
        main = optax.cosine_decay_schedule(lr, max(total - warm, 1), alpha=float(sc.end_factor))
    else:
        raise ValueError(f"schedule.name must be 'constant' or 'cosine', got {sc.name!r}")
    if warm > 0:
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])
    return main


def make_optimizer(config: Any) -> tuple[optax.GradientTransformation, Callable]:
    """(tx, schedule): Adam (torch semantics: weight_decay adds wd * param to the gradient) or
    AdamW (decoupled, lr * wd * param), optional global-norm clipping first."""
    oc = config.optimizer
    sched = make_schedule(config)
    kw = dict(b1=float(oc.b1), b2=float(oc.b2), eps=float(oc.eps))
    if oc.name == "adam":
        tx = optax.adam(sched, **kw)
        if oc.weight_decay:
            tx = optax.chain(optax.add_decayed_weights(float(oc.weight_decay)), tx)
    elif oc.name == "adamw":
        tx = optax.adamw(sched, weight_decay=float(oc.weight_decay), **kw)
    else:
        raise ValueError(f"optimizer.name must be 'adam' or 'adamw', got {oc.name!r}")
    if oc.grad_clip_norm and oc.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(oc.grad_clip_norm)), tx)
    return tx, sched


def _replicated_tree(tree: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda _: NamedSharding(mesh, P()), tree)


def _place(tree: Any, shardings: Any) -> Any:
    """Host arrays -> global arrays with `shardings` (every process holds the full value)."""

    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def _check_tree(name: str, got: Any, want: Any) -> None:
    g = flax.traverse_util.flatten_dict(got, sep="/")
    w = flax.traverse_util.flatten_dict(want, sep="/")
    missing, extra = sorted(set(w) - set(g)), sorted(set(g) - set(w))
    shapes = [
        f"{k}: {np.shape(g[k])} != {w[k].shape}"
        for k in w
        if k in g and np.shape(g[k]) != w[k].shape
    ]
    if missing or extra or shapes:
        raise ValueError(
            f"{name} params do not match the configured model: missing {missing[:5]}"
            f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}"
            f"{'...' if len(extra) > 5 else ''}, mis-shaped {shapes[:5]}"
        )


def _cim_init_fn(models: Models, tx: optax.GradientTransformation) -> Callable:
    def init(key):
        x = jnp.zeros((1, models.imagebind.audio_tokens, models.cim.embed_dim), jnp.float32)
        params = CIM(models.cim).init(key, x)["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    return init


def init_train_state(
    config: Any, models: Models, tx: optax.GradientTransformation, mesh: Mesh
) -> tuple[Any, Any]:
    """(state, shardings). CIM params from `model.cim.init` (a converted folder) or random;
    replicated unless `mesh.shard_train_state` (then FSDP over 'fsdp', optimizer state too)."""
    init = _cim_init_fn(models, tx)
    key = jax.random.key(int(config.seed))
    abstract = jax.eval_shape(init, key)
    if config.mesh.shard_train_state:
        shardings = param_shardings(abstract, mesh)
    else:
        shardings = _replicated_tree(abstract, mesh)
    state = jax.jit(init, out_shardings=shardings)(key)
    if config.model.cim.init:
        from maestro_jax.checkpoints import load_params  # noqa: PLC0415

        params, _ = load_params(config.model.cim.init)
        _check_tree("model.cim.init", params, abstract["params"])
        state["params"] = _place(params, shardings["params"])
    return state, shardings


def _frozen_spec(models: Models) -> dict[str, tuple[Any, tuple]]:
    """name -> (module, example init inputs) of the frozen models used inside the step."""
    unet_x = jnp.zeros((1, 8, 8, models.unet.in_channels), jnp.float32)
    ctx = jnp.zeros((1, CONTEXT_LEN, models.unet.context_dim), jnp.float32)
    img = jnp.zeros((1, 32, 32, models.vae.in_channels), jnp.float32)
    mel = jnp.zeros((1, models.imagebind.num_mel_bins, models.imagebind.target_len), jnp.float32)
    return {
        "unet": (UNet(models.unet), (unet_x, jnp.zeros((1,), jnp.int32), ctx)),
        "vae": (vae_lib.AutoencoderKL(models.vae), (img,)),
        "imagebind": (ib.ImageBindAudio(models.imagebind), (mel,)),
    }


def random_params(abstract: Any, seed: int) -> Any:
    """Random weights for a frozen model from its parameter shapes (`nn.random_init.random_like`:
    numpy draws, no jitted `init`). For smoke runs and benchmarks only (`model.random_init`)."""
    return random_like(abstract, seed)


def init_frozen(
    config: Any, models: Models, mesh: Mesh, names: Sequence[str] = ("unet", "vae", "imagebind")
) -> tuple[dict, dict]:
    """(params, shardings) of the frozen models: loaded from `model.<name>.params` (converted
    folders) or, with `model.random_init`, `random_params`. FSDP over 'fsdp' with
    `mesh.shard_frozen`, else replicated."""
    from maestro_jax.checkpoints import load_params  # noqa: PLC0415

    specs = _frozen_spec(models)
    params, shardings = {}, {}
    for i, name in enumerate(names):
        module, inputs = specs[name]
        init = lambda k, module=module, inputs=inputs: module.init(k, *inputs)["params"]
        abstract = jax.eval_shape(init, jax.random.key(0))
        sh = (
            param_shardings(abstract, mesh)
            if config.mesh.shard_frozen
            else _replicated_tree(abstract, mesh)
        )
        path = config.model[name].params
        if path:
            p, meta = load_params(path)
            pt = meta.get("prediction_type")
            if name == "unet" and pt is not None and pt != config.model.prediction_type:
                raise ValueError(
                    f"{path} says prediction_type={pt!r} but model.prediction_type="
                    f"{config.model.prediction_type!r}"
                )
            if name == "imagebind" and "audio" in p and "audio" not in abstract:
                p = p["audio"]  # convert.imagebind writes {modality: params}
            _check_tree(f"model.{name}.params ({path})", p, abstract)
        elif config.model.random_init:
            p = random_params(abstract, int(config.seed) + 1 + i)
        else:
            raise ValueError(
                f"model.{name}.params is empty: give the folder written by `python -m "
                f"convert.{name} ...`, or set model.random_init=True for a smoke run"
            )
        params[name] = _place(p, sh)
        shardings[name] = sh
    return params, shardings


# ==================================================================================================
# Text caches
# ==================================================================================================


def make_tokenizer(config: Any) -> Callable:
    tc = config.model.text
    if tc.tokenizer == "hash":
        return HashTokenizer()
    if tc.tokenizer == "clip":
        from maestro_jax.models.tokenizer import get_tokenizer  # noqa: PLC0415

        return get_tokenizer(tc.bpe_path or None)
    raise ValueError(f"model.text.tokenizer must be 'clip' or 'hash', got {tc.tokenizer!r}")


def text_caches(
    config: Any, models: Models, labels: Sequence[str], chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(null_emb [77, D], label_emb [C, 77, D]) float32 numpy, from the frozen text encoder
    (`model.text.params`, or random with `model.random_init`) at `model.text.layer`. Computed
    once at start; the encoder is dropped afterwards."""
    from maestro_jax.checkpoints import load_params  # noqa: PLC0415

    tc, cfg = config.model.text, models.text
    if tc.params:
        params, _ = load_params(tc.params)
        _check_tree(f"model.text.params ({tc.params})", params, clip_text.abstract_params(cfg))
    elif config.model.random_init:
        params = random_params(clip_text.abstract_params(cfg), int(config.seed) + 10)
    else:
        raise ValueError(
            "model.text.params is empty: give the folder written by `python -m convert.clip_text "
            "...`, or set model.random_init=True for a smoke run"
        )
    tok = make_tokenizer(config)
    prompts = [tc.prompt.format(lab) for lab in labels]
    null = np.asarray(clip_text.encode_text(params, cfg, tok, [""], tc.layer)[0], np.float32)
    embs = [
        np.asarray(clip_text.encode_text(params, cfg, tok, prompts[i : i + chunk], tc.layer))
        for i in range(0, len(prompts), chunk)
    ]
    return null, np.concatenate(embs, 0).astype(np.float32)


# ==================================================================================================
# Samples
# ==================================================================================================


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


# ==================================================================================================
# The loop
# ==================================================================================================


def _batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, keys: Sequence[str]) -> dict:
    """Per-process numpy batch -> global arrays split over ('data', 'fsdp')."""
    out = {}
    for k in keys:
        if k in batch:
            x = np.asarray(batch[k])
            out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
    return out


def _process_block(mesh: Mesh, global_batch: int) -> int | None:
    """Which contiguous block of `global_batch // process_count` rows of the global batch this
    process's devices hold under `batch_sharding` (the rows `make_array_from_process_local_data`
    fills from this process's data), or None when they are not one aligned block."""
    pc = jax.process_count()
    per = global_batch // pc
    index_map = batch_sharding(mesh, 1).devices_indices_map((global_batch,))
    rows: set[int] = set()
    for dev, idx in index_map.items():
        if dev.process_index == jax.process_index():
            rows.update(range(global_batch)[idx[0]])
    lo = min(rows)
    if sorted(rows) != list(range(lo, lo + per)) or lo % per:
        return None
    return lo // per


def _open_data(
    config: Any, workdir: Path, global_batch: int, mesh: Mesh | None = None
) -> tuple[Any, list[str], Path]:
    """(train iterator, class labels, data dir) for this process's share of the batch.

    Several processes: the global stream is cut into per-process batches of
    `global_batch // process_count` consecutive records and process p reads batch
    `step * process_count + block(p)`, where block(p) is the block of global-batch rows its
    devices hold; so processes read disjoint records, leave no gaps, and the assembled global
    batch is the one a single process with all the devices would see (same losses). A mesh
    whose processes do not hold aligned blocks falls back to the pipeline's round-robin split
    (disjoint too, but the rows are ordered differently)."""
    from maestro_jax.data import pipeline  # noqa: PLC0415  (repo-level package; run from a checkout)
    from maestro_jax.data.prepare import load_classes  # noqa: PLC0415

    data_dir = config.data.dir
    if not data_dir:
        if not config.data.synthetic:
            raise ValueError(
                "data.dir is empty: give the prepared dataset folder (python -m data.prepare ...) "
                "or set data.synthetic=True for a smoke run"
            )
        data_dir = workdir / "synthetic_data"
        _ensure_synthetic(config, data_dir)
    data_dir = Path(data_dir)
    prep = data_dir / "prep_config.json"
    if prep.exists():
        rule = json.loads(prep.read_text()).get("frames_rule")
        if rule is not None and rule != config.frames.rule:
            raise ValueError(
                f"{data_dir} was prepared with frames_rule={rule!r} but frames.rule="
                f"{config.frames.rule!r}; set --config.frames.rule={rule} or prepare it again"
            )
    pc, pi = jax.process_count(), jax.process_index()
    if global_batch % pc:
        raise ValueError(f"global batch {global_batch} is not divisible by {pc} processes")
    feats = pipeline.dataset_info(data_dir)["features"]
    # The VAE latents cache of `python -m data.cache_latents` (on by default): used when it is
    # complete for this split and was made by this run's VAE ("" = a random VAE: never).
    vae = str(config.model.vae.params or "")
    use_cache = bool(config.data.use_latents) and bool(config.data.get("use_latent_cache", False))
    use_cache = use_cache and pipeline.use_latent_cache(data_dir, config.data.split, "auto", vae)
    if config.data.use_latents and (use_cache or "latents" in feats):
        keys = ("mel", "label_index", "latents")  # skip deserialising the frames
    else:
        keys = ("mel", "label_index", "frames")
    if use_cache:
        log.info("reading VAE latents from the cache in %s/latents", data_dir)
    kw = dict(
        batch_size=global_batch // pc,
        seed=int(config.seed),
        shuffle=bool(config.data.shuffle),
        num_epochs=None,
        drop_remainder=True,
        keys=keys,
        latents=use_cache,
        vae=vae,
    )
    block = _process_block(mesh, global_batch) if pc > 1 and mesh is not None else None
    if block is None:
        if pc > 1:
            log.warning("processes hold no aligned batch blocks: round-robin data split")
        ds = pipeline.make_dataset(
            data_dir, config.data.split, process_index=pi, process_count=pc, **kw
        )
    else:
        import grain  # noqa: PLC0415

        ds = pipeline.make_map_dataset(data_dir, config.data.split, **kw)[block::pc]
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=8, prefetch_buffer_size=64))
    return iter(ds), load_classes(data_dir), data_dir


def _compile_together(fn: Any, name: str, *args: Any) -> Any:
    """Several processes: `fn` (jitted) compiled for `args` on every process, then a barrier
    before its first run. A process that compiles much longer than the others (a persistent
    cache hit on one, a busy host) would otherwise leave them waiting in the first collective,
    and CPU (gloo) collectives give up after 30 s. One process: `fn` itself."""
    if jax.process_count() == 1:
        return fn
    from maestro_jax import distributed  # noqa: PLC0415

    compiled = fn.lower(*args).compile()
    distributed.barrier(f"maestro_train_compiled_{name}")
    return compiled


def _ensure_synthetic(config: Any, data_dir: Path) -> None:
    from maestro_jax.data import synthetic  # noqa: PLC0415

    done = data_dir / ".complete"
    kind = config.data.get("synthetic_kind", "synthetic")
    if kind not in ("synthetic", "toyworld"):
        raise ValueError(f"data.synthetic_kind must be 'synthetic' or 'toyworld', got {kind!r}")
    if kind == "toyworld" and jax.process_index() == 0 and not done.exists():
        from maestro_jax.toy import world as toyworld  # noqa: PLC0415

        toyworld.write_cim_dataset(
            data_dir,
            num_clips=int(config.data.synthetic_clips),
            seed=int(config.seed),
            num_test=int(config.sample.num_clips),
            res=int(config.data.synthetic_resolution),
        )
        done.touch()
    elif jax.process_index() == 0 and not done.exists():
        synthetic.write_synthetic_dataset(
            data_dir,
            num_clips=int(config.data.synthetic_clips),
            resolution=int(config.data.synthetic_resolution),
            num_classes=int(config.data.synthetic_classes),
            seed=int(config.seed),
            frames_rule=config.frames.rule,
            num_test=int(config.sample.num_clips),  # held out: the sample images' audio
        )
        done.touch()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices("synthetic_data")


def _heldout_mel(config: Any, data_dir: Path) -> np.ndarray | None:
    """The first `sample.num_clips` clips of `sample.split` (or the training split): mel."""
    from maestro_jax.data import pipeline  # noqa: PLC0415

    n = int(config.sample.num_clips)
    for split in (config.sample.split, config.data.split):
        try:
            ds = pipeline.make_dataset(
                data_dir,
                split,
                batch_size=n,
                seed=0,
                shuffle=False,
                num_epochs=1,
                process_index=0,
                process_count=1,
                drop_remainder=False,
                keys=("mel",),
            )
            return np.asarray(next(iter(ds))["mel"])
        except (FileNotFoundError, KeyError, ValueError, StopIteration):
            continue
    return None


@functools.lru_cache(maxsize=8)
def _jitted_step(models, spec, config_key, seed, state_sh, frozen_sh, batch_sh, mesh):
    """One jitted step per static setup, shared by runs in one process (tests resume in-process
    without recompiling). The sharding trees come wrapped in `_Frozen` (hashable)."""
    state_sh, frozen_sh, batch_sh = state_sh.tree, frozen_sh.tree, batch_sh.tree
    tx, sched = _OPT_CACHE[config_key]
    fn = make_train_step(models, spec, tx, sched, seed)
    repl = NamedSharding(mesh, P())
    return jax.jit(
        fn,
        in_shardings=(state_sh, batch_sh, frozen_sh, repl),
        out_shardings=(state_sh, repl),
        donate_argnums=(0,),
    )


_OPT_CACHE: dict[str, tuple[optax.GradientTransformation, Callable]] = {}


def _hashable(tree: Any) -> Any:
    return jax.tree_util.tree_structure(tree), tuple(jax.tree.leaves(tree))


class _Frozen:
    """Hashable wrapper of a pytree of shardings (for the lru_cache key)."""

    def __init__(self, tree):
        self.tree = tree
        self._key = _hashable(tree)

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, _Frozen) and self._key == other._key


def train(config: Any, workdir: str | os.PathLike) -> dict:
    """Train (or resume) until `config.total_steps`. Returns {'step', 'metrics': last record}.

    Writes under `workdir`: `checkpoints/<step>/` (orbax), `metrics.jsonl` (one line per step,
    process 0), `tb/events.out.tfevents.*`, `samples/step_<n>.png`, `config.json`.
    Raises `NonFiniteError` on a NaN/inf loss or gradient (nothing is saved for that step).
    """
    from maestro_jax.training import tensorboard as tb  # noqa: PLC0415
    from maestro_jax.training.checkpoints import TrainCheckpointer, abstract_with_shardings  # noqa: PLC0415
    from maestro_jax.video import contact_sheet, to_uint8, write_png  # noqa: PLC0415

    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    mesh = make_mesh(tuple(config.mesh.shape), ("data", "fsdp"))
    models = build_models(config)
    spec = LossSpec.from_config(config)
    total = int(config.total_steps)
    global_batch = int(config.batch_size_per_device) * jax.device_count()
    if lead:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1, sort_keys=True))
    log.info("mesh %s, global batch %d clips, models %s", dict(mesh.shape), global_batch, models)

    t_setup = time.perf_counter()
    train_iter, labels, data_dir = _open_data(config, workdir, global_batch, mesh)
    log.info("data: %s, %d classes (%.1fs)", data_dir, len(labels), time.perf_counter() - t_setup)
    frozen, frozen_sh = init_frozen(config, models, mesh)
    null_emb, label_emb = text_caches(config, models, labels)
    log.info("frozen models and text caches ready (%.1fs)", time.perf_counter() - t_setup)
    repl = NamedSharding(mesh, P())
    frozen["null_emb"] = _place(null_emb, repl)
    frozen["label_emb"] = _place(label_emb, repl)
    frozen_sh.update(null_emb=repl, label_emb=repl)

    tx, sched = make_optimizer(config)
    # total_steps only matters to a decaying schedule; leaving it out of the key lets runs that
    # differ only in length share one compiled step.
    uses_total = config.schedule.name != "constant"
    opt_key = json.dumps(
        [config.optimizer.to_dict(), config.schedule.to_dict(), total if uses_total else 0],
        sort_keys=True,
    )
    _OPT_CACHE.setdefault(opt_key, (tx, sched))
    tx, sched = _OPT_CACHE[opt_key]
    state, state_sh = init_train_state(config, models, tx, mesh)

    ckpt = TrainCheckpointer(
        workdir / "checkpoints",
        keep=int(config.checkpoint.keep),
        async_save=config.checkpoint["async"],
    )
    start = ckpt.latest_step() or 0
    if start:
        abstract = abstract_with_shardings(jax.eval_shape(lambda s: s, state), state_sh)
        state, _ = ckpt.restore(start, abstract, train_iter)
        log.info("resumed from %s at step %d", ckpt.directory, start)
    metrics_path = workdir / "metrics.jsonl"
    if lead:
        truncate_jsonl(metrics_path, start)

    nan_step = _place(np.asarray(int(config.debug_nan_at_step), np.int32), repl)
    first = next(train_iter)
    batch_keys = [k for k in ("mel", "label_index", "latents", "frames") if k in first]
    batch_sh = {k: batch_sharding(mesh, np.ndim(first[k])) for k in batch_keys}
    step_fn = _jitted_step(
        models,
        spec,
        opt_key,
        int(config.seed),
        _Frozen(state_sh),
        _Frozen(frozen_sh),
        _Frozen(batch_sh),
        mesh,
    )

    first_global = _batch_to_global(first, mesh, batch_keys)
    step_fn = _compile_together(step_fn, "step", state, first_global, frozen, nan_step)

    sample_every = int(config.sample.every_steps)
    sample_fn, heldout = None, None
    if sample_every > 0:
        heldout = _heldout_mel(config, data_dir)
        if heldout is not None:
            # inputs and images replicated: every process runs it, process 0 fetches the images
            heldout = _place(heldout, repl)
            sample_fn = jax.jit(
                functools.partial(
                    lambda fn, fr, p, mel: fn(fr, p, mel, jax.random.key(int(config.seed))),
                    make_sample_fn(models, spec, config.sample),
                ),
                out_shardings=repl,
            )
    writer = tb.SummaryWriter(workdir / "tb") if lead else None
    jsonl = open(metrics_path, "a") if lead else None  # noqa: SIM115
    frames_per_clip = None
    record: dict = {}
    n_dev = jax.device_count()
    try:
        pending = first
        sample_compiled = False
        for step in range(start + 1, total + 1):
            t_data = time.perf_counter()
            if pending is not None:
                local, batch = pending, first_global
            else:
                local = next(train_iter)
                batch = _batch_to_global(local, mesh, batch_keys)
            pending = first_global = None
            t0 = time.perf_counter()
            state, metrics = step_fn(state, batch, frozen, nan_step)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            dt = time.perf_counter() - t0
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                ckpt.close()
                raise NonFiniteError(
                    f"step {step}: loss={metrics['loss']} grad_norm={metrics['grad_norm']} is not "
                    f"finite; stopped without saving. The last good checkpoint is step "
                    f"{ckpt.latest_step()} in {ckpt.directory}."
                )
            if frames_per_clip is None:
                src = local["latents"] if "latents" in batch_keys else local["frames"]
                frames_per_clip = spec.frames_used(src.shape[1], local["mel"].shape[1])
            record = {
                "step": step,
                **metrics,
                "step_time_s": dt,
                "data_time_s": t0 - t_data,
                "samples_per_s_per_device": global_batch / dt / n_dev,
                "frames_per_s_per_device": global_batch * frames_per_clip / dt / n_dev,
            }
            if lead:
                jsonl.write(json.dumps(record) + "\n")
                jsonl.flush()
                writer.scalars({f"train/{k}": v for k, v in record.items() if k != "step"}, step)
            if step % int(config.log_every_steps) == 0 or step == total:
                log.info(
                    "step %d loss %.5f (sd %.5f/%.5f mse %.5f/%.5f) gnorm %.3g lr %.3g %.3fs",
                    step,
                    record["loss"],
                    record["loss_sd"],
                    record["loss_sd_aug"],
                    record["loss_mse"],
                    record["loss_mse_aug"],
                    record["grad_norm"],
                    record["lr"],
                    dt,
                )
                if writer:
                    writer.flush()
            if sample_fn is not None and step % sample_every == 0:
                if not sample_compiled:
                    sample_fn = _compile_together(
                        sample_fn, "sample", frozen, state["params"], heldout
                    )
                    sample_compiled = True
                imgs = sample_fn(frozen, state["params"], heldout)
                if lead:
                    imgs = np.asarray(jax.device_get(imgs))
                    sheet = contact_sheet(
                        to_uint8(imgs.reshape(-1, *imgs.shape[2:])), cols=imgs.shape[1]
                    )
                    path = write_png(workdir / "samples" / f"step_{step:07d}.png", sheet)
                    writer.image("samples", path.read_bytes(), sheet.shape[0], sheet.shape[1], step)
                    writer.flush()
            if step % int(config.checkpoint.every_steps) == 0 or step == total:
                ckpt.save(step, state, json.loads(config.to_json_best_effort()), train_iter)
    finally:
        if jsonl:
            jsonl.close()
        if writer:
            writer.close()
        ckpt.close()
    export = export_cim(state["params"], models, config, workdir / "export")
    return {"step": max(start, total), "metrics": record, "export": str(export)}


def export_cim(params: Any, models: Models, config: Any, out: Path) -> Path:
    """The trained CIM as an inference folder (`checkpoints.save_params` layout, config.json
    with the CIMConfig under "cim"): what `--config.cim_checkpoint` of generation and
    `maestro_jax.audio.encoder.load` read. Gathered from every process; process 0 writes it."""
    from jax.experimental import multihost_utils  # noqa: PLC0415

    from maestro_jax.checkpoints import save_params  # noqa: PLC0415

    def host(x):
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    params = jax.tree.map(host, params)
    if jax.process_index() == 0:
        cim = dataclasses.asdict(models.cim)
        cim["dtype"] = jnp.dtype(models.cim.dtype).name
        meta = {
            "cim": cim,
            "token_offset": int(config.token_offset),
            "text_layer": config.model.text.layer,
            "made_by": {
                "entry_point": "python -m maestro_jax.train",
                "config": json.loads(config.to_json_best_effort()),
                "jax": jax.__version__,
            },
        }
        save_params(out, params, meta)
        log.info("CIM exported to %s", out)
    return out
