"""Training the toy world's generative models: VAE, text-to-image and text-to-video UNets.

`python -m maestro_jax.train --config=configs/toy.py:<stage> --workdir=W` dispatches here for
`config.task` in {"text", "imagebind", "vae", "t2i", "t2v"} (t2v_layout is a t2v task; the CIM
has its own trainer, `maestro_jax.training.cim`, and the separator `maestro_jax.training.separator`).
Data comes from the procedural world `maestro_jax.toy.world`, drawn fresh every step from `seed + step`
(so a resumed run sees exactly the batches an uninterrupted one would).

- text: the frozen text encoder (OpenCLIP-shaped, tiny) with random weights: nothing trains;
  the stage only writes its export so every later stage and the generator share it.
- imagebind: the frozen ImageBind-shaped audio encoder with random weights (same reason: the
  CIM learns on top of its tokens; see configs/toy.py).
- vae: AutoencoderKL on single frames, L1 + MSE reconstruction + a small KL. At export the
  latent is rescaled exactly (1x1 quant_conv rows and post_quant_conv input scaled) so the
  posterior means have the standard deviation 1 / 0.18215, the scale every sampler assumes.
- t2i: the 2D UNet (SD 2.1-shaped, eps, SD 2.1 schedule) on single frames + captions.
- t2v: the 3D UNet (VideoCrafter2-shaped, eps, VC2 schedule with use_scale) on clips +
  captions, spatial weights initialised from the t2i export (VideoCrafter's recipe).
- t2v_layout (task t2v, `p_layout` > 0): the t2v export fine-tuned on scenes of objects that
  never overlap, where on a fraction `p_layout` of the entries each object's box attends only
  to its label's tokens and the other cells to the null embedding (`LayoutEdit`: Mosaic
  Denoising's attention, with a layout per entry), and on `p_merge` of the others the context
  is C_merge (the labels' tokens side by side) instead of the caption. The toy stand-in for
  what a web-scale T2V brings to Maestro: cross-attention that says where things are.

Captions drop to "" with probability `p_uncond` (classifier-free guidance). Every stage keeps an
EMA of its weights and exports it. The stages run in the shared loop (`training.loop`):
checkpoints `W/checkpoints/<step>/` (orbax: params, EMA, optimizer state; the data position is
the step, batches being a pure function of (seed, step)) every `checkpoint_every` steps, one
metrics line per log step (means since the last), the export `W/export` (the
`checkpoints.save_params` layout with a config.json the loaders read) at the end. The layout
fine-tuning's attention is in `toy.layout`, the T2V's initial weights in `toy.unet_init`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from maestro_jax import diffusion, mosaic
from maestro_jax.checkpoints import load_params, save_params
from maestro_jax.models import clip_text
from maestro_jax.models import vae as vae_lib
from maestro_jax.models.tokenizer import HashTokenizer
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.nn.random_init import random_like
from maestro_jax.toy.layout import LayoutEdit, layout_slots
from maestro_jax.toy.unet_init import overlay_spatial, same_tree
from maestro_jax.training import loop as loop_lib
from maestro_jax.training import validate
from maestro_jax.training.validate import ConfigError

log = logging.getLogger("maestro_jax.train")

TASKS = ("text", "imagebind", "vae", "t2i", "t2v")


# ----------------------------------------------------------------------------- configs
def unet_config(config: Any, temporal: bool) -> UNetConfig:
    u = config.unet
    return UNetConfig(
        model_channels=int(u.model_channels),
        channel_mult=tuple(u.channel_mult),
        num_res_blocks=int(u.num_res_blocks),
        attention_resolutions=tuple(u.attention_resolutions),
        num_head_channels=int(u.num_head_channels),
        context_dim=int(config.context_dim),
        temporal=temporal,
        fps_cond=temporal,
        init_attn_heads=int(u.get("init_attn_heads", 2)),
    )


def vae_config(config: Any) -> vae_lib.VAEConfig:
    v = config.vae
    return vae_lib.VAEConfig(
        ch=int(v.ch),
        ch_mult=tuple(v.ch_mult),
        num_res_blocks=int(v.num_res_blocks),
        resolution=int(config.resolution),
    )


def text_config(config: Any) -> clip_text.ClipTextConfig:
    t = config.text
    return clip_text.tiny(
        width=int(config.context_dim), heads=int(t.heads), layers=int(t.layers), embed_dim=None
    )


def validate_config(config: Any) -> str:
    """The task of a toy stage config; ConfigError (one line naming the field) otherwise."""
    validate.one_of(config, "task", TASKS)
    task = config.task
    if task not in ("t2i", "t2v", "vae"):
        return task
    validate.at_least(config, 1, "total_steps", "batch_size", "log_every", "checkpoint_every")
    validate.at_least(config, 0, "warmup_steps", "seed")
    validate.positive(config, "lr", "grad_clip")
    validate.in_range(config, "ema_decay", 0.0, 1.0)
    validate.at_least(config, 8, "resolution")
    if task == "vae":
        return task
    validate.in_range(config, "p_uncond", 0.0, 1.0)
    for f in ("vae_dir", "text_dir"):
        if not config.get(f) or not (Path(config[f]) / "params").exists():
            raise ConfigError(
                f"config.{f}={config.get(f)!r}: must be an exported folder (train the "
                f"'{f[:-4]}' stage first: python -m maestro_jax.train "
                f"--config=configs/toy.py:{f[:-4]} --workdir=...)"
            )
    if task == "t2v":
        validate.at_least(config, 1, "num_frames")
        if config.get("p_layout"):
            validate.in_range(config, "p_layout", 0.0, 1.0)
        if config.get("init_from") and not (Path(config.init_from) / "params").exists():
            raise ConfigError(
                f"config.init_from={config.init_from!r}: must be a folder with exported params"
            )
    return task


# ----------------------------------------------------------------------------- frozen parts
class CaptionCache:
    """Caption -> [77, D] context of the frozen text encoder, computed once per caption."""

    def __init__(self, text_dir: str | os.PathLike):
        self.params, meta = load_params(text_dir)
        self.config = clip_text.ClipTextConfig.from_dict(meta)
        self.layer = meta.get("layer", "penultimate")
        self.tok = HashTokenizer()
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, captions: list[str]) -> np.ndarray:
        for c in captions:
            if c not in self.cache:
                e = clip_text.encode_text(self.params, self.config, self.tok, [c], self.layer)
                self.cache[c] = np.asarray(e[0], np.float32)
        return np.stack([self.cache[c] for c in captions])


def load_vae(vae_dir: str | os.PathLike) -> tuple[vae_lib.VAEConfig, Any]:
    params, _ = load_params(vae_dir)
    return vae_lib.VAEConfig.from_folder(vae_dir, dtype=jnp.float32), params


# ----------------------------------------------------------------------------- the stages
def _frames01(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 127.5 - 1.0


def _vae_stage(config):
    from maestro_jax.toy import batches as toy_batches

    cfg = vae_config(config)
    model = vae_lib.AutoencoderKL(cfg)
    res = int(config.resolution)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, res, res, 3)))
    params = random_like(abstract["params"], int(config.seed))
    kl_w = float(config.vae.kl_weight)

    def loss_fn(p, batch, key):
        mom = model.apply({"params": p}, batch["x"], method=model.encode)
        z = vae_lib.posterior_sample(mom, key)
        rec = model.apply({"params": p}, z, method=model.decode)
        mean, logvar = vae_lib.posterior_mean(mom), vae_lib.posterior_logvar(mom)
        kl = 0.5 * jnp.mean(mean**2 + jnp.exp(logvar) - 1.0 - logvar)
        l1 = jnp.mean(jnp.abs(rec - batch["x"]))
        mse = jnp.mean((rec - batch["x"]) ** 2)
        return l1 + mse + kl_w * kl, {"l1": l1, "mse": mse, "kl": kl}

    def batch_fn(rng):
        frames, _ = toy_batches.image_batch(rng, int(config.batch_size), res=res, max_objects=3)
        return {"x": _frames01(frames)}

    def export(p, out):
        p = rescale_vae_latents(model, p, batch_fn(np.random.default_rng(10_000)))
        save_params(out, p, {"vae": cfg.to_dict(), "made_by": _provenance(config)})

    return params, loss_fn, batch_fn, export


def rescale_vae_latents(model, params, batch: dict) -> Any:
    """Scale the latent space by c so std(posterior mean) = 1 / 0.18215 on `batch` (exact:
    quant_conv's mean rows * c, its logvar biases + 2 log c, post_quant_conv input rows / c)."""
    mom = model.apply({"params": params}, batch["x"], method=model.encode)
    std = float(jnp.std(vae_lib.posterior_mean(mom)))
    c = (1.0 / vae_lib.SCALE_FACTOR) / max(std, 1e-8)
    p = jax.tree.map(np.array, params)
    e = p["quant_conv"]["kernel"].shape[-1] // 2
    p["quant_conv"]["kernel"][:, :e] *= c
    p["quant_conv"]["bias"][:e] *= c
    p["quant_conv"]["bias"][e:] += 2.0 * np.log(c)
    p["post_quant_conv"]["kernel"] /= c
    return p


def _unet_stage(config, temporal: bool):
    from maestro_jax.toy import batches as toy_batches
    from maestro_jax.toy import world as tw

    ucfg = unet_config(config, temporal)
    model = UNet(ucfg)
    vcfg, vparams = load_vae(config.vae_dir)
    vae = vae_lib.AutoencoderKL(vcfg)
    captions = CaptionCache(config.text_dir)
    res, ds = int(config.resolution), vcfg.downsample_factor
    lat = res // ds
    f = int(config.num_frames) if temporal else 1
    x = jnp.zeros((1, f, lat, lat, 4) if temporal else (1, lat, lat, 4))
    ctx = jnp.zeros((1, 77, ucfg.context_dim))
    args = (x, jnp.zeros((1,), jnp.int32), ctx) + ((jnp.ones((1,)),) if temporal else ())
    abstract = jax.eval_shape(model.init, jax.random.key(0), *args)["params"]
    params = random_like(abstract, int(config.seed))
    if temporal and config.get("init_from"):
        src, meta = load_params(config.init_from)
        if (meta or {}).get("trained_frames"):  # a T2V export: continue from it (fine-tuning)
            params = same_tree(params, src, config.init_from)
            log.info("t2v: initialised from the video model %s", config.init_from)
        else:
            params, n = overlay_spatial(params, src)
            log.info("t2v: %d tensors initialised from %s", n, config.init_from)
    schedule = diffusion.Schedule.vc2() if temporal else diffusion.Schedule.sd21(v=False)
    fps = float(config.get("fps", tw.FPS))

    def loss_fn(p, batch, key):
        frames = batch["x"]  # [B, F, H, W, 3] or [B, H, W, 3]
        flat = frames.reshape((-1,) + frames.shape[-3:])
        mom = vae.apply({"params": vparams}, flat, method=vae.encode)
        z0 = vae_lib.posterior_mean(mom) * vae_lib.SCALE_FACTOR
        z0 = z0.reshape(frames.shape[:-3] + z0.shape[-3:])
        kt, kn = jax.random.split(key)
        b = frames.shape[0]
        t = jax.random.randint(kt, (b,), 0, schedule.num_timesteps)
        noise = jax.random.normal(kn, z0.shape)
        xt = schedule.q_sample(z0, t, noise)
        extra = {"fps": jnp.full((b,), fps)} if temporal else {}
        if layout is not None:
            extra["attn_edit"] = LayoutEdit(
                batch["slots"], tuple(batch[f"assign{i}"] for i in range(len(layout))),
                resolutions=layout, num_frames=f,
            )  # fmt: skip
        out = model.apply({"params": p}, xt, t, batch["ctx"], **extra)
        loss = jnp.mean((out - schedule.training_target(z0, noise, t)) ** 2)
        return loss, {}

    counts = config.get("object_counts") or None
    separate = bool(config.get("separate_objects", False))
    p_layout = float(config.get("p_layout", 0.0))
    layout = None
    if p_layout > 0:
        if not temporal or p_layout > 1:
            raise ValueError(f"p_layout {p_layout} needs the t2v task and a value in [0, 1]")
        layout = mosaic.unet_resolutions((lat, lat), len(ucfg.channel_mult))
        null_ctx = captions([""])[0]
        n_q, off = int(config.layout_n_q), 1
        p_merge = float(config.get("p_merge", 0.0))

    def batch_fn(rng):
        pu = float(config.p_uncond)
        if layout is not None:
            frames, caps, cls, boxes = toy_batches.video_layout_batch(
                rng, int(config.batch_size), num_frames=f, res=res, p_empty_caption=pu,
                counts=counts, separate=separate,
            )  # fmt: skip
            captioned = np.array([c != "" for c in caps])
            use = (rng.random(len(caps)) < p_layout) & captioned
            merge = (rng.random(len(caps)) < p_merge) & captioned & ~use
            slots, assigns = layout_slots(
                captions, null_ctx, caps, cls, boxes, use, layout, n_q, off, merge=merge
            )
            out = {"x": _frames01(frames), "ctx": slots[:, -1], "slots": slots}
            return out | {f"assign{i}": a for i, a in enumerate(assigns)}
        if temporal:
            frames, caps = toy_batches.video_batch(
                rng, int(config.batch_size), num_frames=f, res=res, p_empty_caption=pu,
                counts=counts, separate=separate,
            )  # fmt: skip
        else:
            frames, caps = toy_batches.image_batch(
                rng, int(config.batch_size), res=res, p_empty_caption=pu
            )
        return {"x": _frames01(frames), "ctx": captions(caps)}

    def export(p, out):
        meta = {
            "unet": dataclasses.asdict(ucfg),
            "prediction_type": "eps",
            "schedule": "vc2" if temporal else "sd21-eps",
            "trained_frames": f if temporal else None,
            "fps": fps,
            "made_by": _provenance(config),
        }
        if layout is not None:  # the most objects a training scene held (the generator warns)
            # video_layout_batch: at most 2 objects unless `counts` gives P(K = 0, 1, ...)
            meta["max_sources"] = max(k for k, q in enumerate(counts or (0, 0, 1)) if q > 0)
        save_params(out, p, meta)

    return params, loss_fn, batch_fn, export


def _provenance(config: Any) -> dict:
    return {
        "entry_point": f"python -m maestro_jax.train --config=configs/toy.py:{config.task}",
        "config": json.loads(config.to_json_best_effort()),
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
    }


def _frozen_task(config, workdir: Path) -> loop_lib.Task:
    """text / imagebind: random frozen weights (deterministic in the seed), nothing trains:
    a run of zero steps that exports them."""
    if config.task == "text":
        cfg = text_config(config)
        p = random_like(clip_text.abstract_params(cfg), int(config.seed))
        meta = {**cfg.to_dict(), "layer": config.text.layer, "tokenizer": "hash"}
    else:
        from maestro_jax.models import imagebind as ib

        i = config.imagebind
        cfg = ib.ImageBindConfig(
            out_dim=int(i.width), audio_width=int(i.width), audio_depth=int(i.depth),
            audio_heads=int(i.heads),
        )  # fmt: skip
        mel = jnp.zeros((1, cfg.num_mel_bins, cfg.target_len))
        abstract = jax.eval_shape(ib.ImageBindAudio(cfg).init, jax.random.key(0), mel)
        p = random_like(abstract["params"], int(config.seed))
        meta = {"imagebind": cfg.to_dict()}
    meta["made_by"] = _provenance(config)

    def export(params) -> dict:
        out = save_params(workdir / "export", params, meta)
        log.info("%s: frozen random weights exported to %s", config.task, out)
        return {"export": str(out)}

    return loop_lib.Task(f"toy {config.task}", p, step=None, batch=None, export=export)


# ----------------------------------------------------------------------------- the loop
def _trained_task(config: Any, workdir: Path) -> loop_lib.Task:
    """vae / t2i / t2v: Adam (warm-up, cosine decay, clipping) with an EMA of the weights."""
    task = config.task
    if task == "vae":
        params, loss_fn, batch_fn, export = _vae_stage(config)
    else:
        params, loss_fn, batch_fn, export = _unet_stage(config, temporal=task == "t2v")
    total = int(config.total_steps)
    warm = min(int(config.warmup_steps), max(total - 1, 0))
    sched = optax.warmup_cosine_decay_schedule(
        0.0, float(config.lr), warm, max(total, warm + 1), float(config.lr) * 0.1
    )
    tx = optax.chain(optax.clip_by_global_norm(float(config.grad_clip)), optax.adam(sched))
    ema_decay, seed = float(config.ema_decay), int(config.seed)
    params = jax.tree.map(jnp.asarray, params)

    @jax.jit
    def step_fn(state, batch):
        i = batch.pop("index")  # 0-based step
        key = jax.random.fold_in(jax.random.key(seed), i)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, aux), grads = grad_fn(state["params"], batch, key)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        p = optax.apply_updates(state["params"], updates)
        # EMA with the usual warm-up: early on it follows the weights closely
        d = jnp.minimum(ema_decay, (1.0 + i) / (10.0 + i))
        ema = jax.tree.map(lambda e, q: d * e + (1.0 - d) * q, state["ema"], p)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return {"params": p, "ema": ema, "opt": opt}, metrics

    def batch(step: int) -> dict:
        b = batch_fn(np.random.default_rng([seed, step - 1]))
        return {**b, "index": np.int32(step - 1)}

    def export_state(state) -> dict:
        out = workdir / "export"
        export(
            jax.tree.map(np.asarray, state["ema" if config.get("export_ema", True) else "params"]),
            out,
        )
        log.info("%s: exported %s", task, out)
        return {"export": str(out)}

    return loop_lib.Task(
        name=f"toy {task}",
        state={"params": params, "ema": params, "opt": tx.init(params)},
        step=step_fn,
        batch=batch,
        export=export_state,
        config=json.loads(config.to_json_best_effort()),
        finite=("loss",),
        progress=True,
    )


def train(config: Any, workdir: str | os.PathLike) -> dict:
    """Run one toy stage to `config.total_steps` (resuming), then export W/export."""
    task = validate_config(config)
    workdir = Path(workdir).absolute()
    if task in ("text", "imagebind"):
        return loop_lib.run(_frozen_task(config, workdir), loop_lib.LoopConfig(0, 1, 1), workdir)
    loop = loop_lib.LoopConfig(
        total_steps=int(config.total_steps),
        log_every=int(config.log_every),
        checkpoint_every=int(config.checkpoint_every),
        keep=2,
    )
    return loop_lib.run(_trained_task(config, workdir), loop, workdir)
