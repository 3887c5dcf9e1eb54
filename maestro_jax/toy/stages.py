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
EMA of its weights and exports it. Checkpoints: `W/ckpt.msgpack` (params, EMA, optimizer state,
step), replaced atomically every `checkpoint_every` steps; the export `W/export` (the
`checkpoints.save_params` layout with a config.json the loaders read) is written at the end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from maestro_jax import diffusion, mosaic
from maestro_jax.checkpoints import load_params, save_params
from maestro_jax.models import clip_text
from maestro_jax.models import vae as vae_lib
from maestro_jax.models.tokenizer import HashTokenizer
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.nn.attention import dot_product_attention
from maestro_jax.nn.random_init import random_like
from maestro_jax.training.checkpoints import truncate_jsonl

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


def _check(config: Any) -> str:
    task = config.get("task")
    if task not in TASKS:
        raise ValueError(f"config.task must be one of {TASKS}, got {task!r}")
    if task in ("t2i", "t2v", "vae"):
        for f in ("total_steps", "batch_size"):
            if int(config[f]) < 1:
                raise ValueError(f"config.{f} must be >= 1, got {config[f]}")
    if task in ("t2i", "t2v"):
        for f in ("vae_dir", "text_dir"):
            if not config.get(f) or not (Path(config[f]) / "params").exists():
                raise ValueError(
                    f"config.{f}={config.get(f)!r} is not an exported folder (train the "
                    f"'{f[:-4]}' stage first: python -m maestro_jax.train "
                    f"--config=configs/toy.py:{f[:-4]} --workdir=...)"
                )
    if task == "t2v" and config.get("init_from"):
        if not (Path(config.init_from) / "params").exists():
            raise ValueError(f"config.init_from={config.init_from!r} has no exported params")
    return task


# ----------------------------------------------------------------------------- state i/o
def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(flax.serialization.to_state_dict(state)))
    os.replace(tmp, path)


def _load_state(path: Path, target: dict) -> dict:
    with open(path, "rb") as f:
        raw = flax.serialization.msgpack_restore(f.read())
    return flax.serialization.from_state_dict(target, raw)


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


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
    params, meta = load_params(vae_dir)
    d = dict(meta["vae"])
    d.pop("dtype", None)
    cfg = vae_lib.VAEConfig(
        **{**d, "ch_mult": tuple(d["ch_mult"]), "attn_resolutions": tuple(d["attn_resolutions"])}
    )
    return cfg, params


# ----------------------------------------------------------------------------- the stages
def _frames01(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 127.5 - 1.0


def _vae_stage(config):
    from maestro_jax.toy import world as tw

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
        frames, _ = tw.image_batch(rng, int(config.batch_size), res=res, max_objects=3)
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
            params = _same_tree(params, src, config.init_from)
            log.info("t2v: initialised from the video model %s", config.init_from)
        else:
            params, n = _overlay(params, src)
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
            frames, caps, cls, boxes = tw.video_layout_batch(
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
            frames, caps = tw.video_batch(
                rng, int(config.batch_size), num_frames=f, res=res, p_empty_caption=pu,
                counts=counts, separate=separate,
            )  # fmt: skip
        else:
            frames, caps = tw.image_batch(rng, int(config.batch_size), res=res, p_empty_caption=pu)
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
        save_params(out, p, meta)

    return params, loss_fn, batch_fn, export


# ----------------------------------------------------------------------------- layout training
@struct.dataclass
class LayoutEdit:
    """Region-masked cross-attention for the toy T2V's layout fine-tuning (`t2v_layout`): the
    query cells of batch entry b attend only to the context of their slot, as Mosaic Denoising
    does at generation, but with a layout per entry (an `AttnEdit`).

    slots: [B, S, L, D] contexts; assigns: per resolution [B, h*w] int32 slot of each cell."""

    slots: jax.Array
    assigns: tuple[jax.Array, ...]
    resolutions: tuple[tuple[int, int], ...] = struct.field(pytree_node=False)
    num_frames: int = struct.field(pytree_node=False, default=1)

    def __call__(self, q, context, project_kv, *, scale, hw):
        ri = self.resolutions.index((int(hw[0]), int(hw[1])))
        b, s = self.slots.shape[:2]
        f = self.num_frames
        k, v = project_kv(self.slots)  # [B, S, L, H, dh]

        def rows(x):  # [B, S, ...] -> [S, B*F, ...] (row b*F + f)
            x = jnp.broadcast_to(x[:, None], (b, f, *x.shape[1:]))
            return jnp.moveaxis(x.reshape(b * f, *x.shape[2:]), 1, 0)

        outs = jax.vmap(lambda kk, vv: dot_product_attention(q, kk, vv, scale=scale))(
            rows(k), rows(v)
        )  # [S, B*F, T, H, dh]
        slot = jnp.repeat(self.assigns[ri], f, axis=0)  # [B*F, T]
        sel = slot[None] == jnp.arange(s, dtype=slot.dtype)[:, None, None]
        return jnp.sum(jnp.where(sel[..., None, None], outs, 0), axis=0)


def layout_slots(
    captions: Any,
    null_ctx: np.ndarray,
    caps: list[str],
    cls: np.ndarray,
    boxes: np.ndarray,
    use: np.ndarray,
    resolutions: tuple[tuple[int, int], ...],
    n_q: int,
    token_offset: int = 1,
    merge: np.ndarray | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-entry slot contexts and cell assignments for `LayoutEdit`.

    Slots of entry b: K object contexts (the null embedding with columns [o, o + n_q) taken from
    the class label's own embedding: exactly C_sep's layout, with the text the CIM is trained
    to reproduce), then the null embedding (cells in no box: Mosaic Denoising's 'null'
    background), then the plain context: the caption's embedding, or with merge[b] C_merge
    (every object's label columns side by side in the null embedding, `mosaic.build_contexts`:
    the context of Object Locating and of vanilla generation). Entries without use[b] send every
    cell to the plain slot; the others are rasterised like `mosaic.rasterize` (centre cells,
    smaller box first) at every resolution. Returns (slots float32 [B, K + 2, L, D], per
    resolution int32 [B, h*w])."""
    from maestro_jax.toy import world as tw

    b, k = cls.shape
    labels = tw.labels()
    slots = np.broadcast_to(null_ctx, (b, k + 2, *null_ctx.shape)).copy()
    slots[:, k + 1] = captions(caps)
    assigns = [np.full((b, h * w), k + 1, np.int32) for h, w in resolutions]
    merge = np.zeros(b, bool) if merge is None else np.asarray(merge, bool)
    cols = slice(token_offset, token_offset + n_q)
    for i in np.nonzero(use | merge)[0]:
        on = np.nonzero(cls[i] >= 0)[0]
        if on.size == 0:
            continue
        toks = captions([labels[int(cls[i, j])] for j in on])[:, cols]  # [K_i, N_Q, D]
        if not use[i]:
            c_merge, _ = mosaic.build_contexts(null_ctx, toks[:, None], 1, token_offset)
            slots[i, k + 1] = np.asarray(c_merge[0])
            continue
        slots[i, on, cols] = toks
        for r, hw in enumerate(resolutions):
            try:
                ras = mosaic.rasterize(
                    [tuple(float(v) for v in boxes[i, j]) for j in on], hw, 1, background="null"
                )
            except ValueError:  # a box too thin for this grid: the entry trains plainly
                for a in assigns:
                    a[i] = k + 1
                break
            a = ras.assign[0].reshape(-1)  # 0..len(on)-1 boxes, len(on) = none
            assigns[r][i] = np.where(a < on.size, on[np.minimum(a, on.size - 1)], k)
    return slots.astype(np.float32), assigns


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


def _overlay(params: Any, src: Any) -> tuple[Any, int]:
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


def _same_tree(params: Any, src: Any, where: str) -> Any:
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


def _provenance(config: Any) -> dict:
    return {
        "entry_point": f"python -m maestro_jax.train --config=configs/toy.py:{config.task}",
        "config": json.loads(config.to_json_best_effort()),
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
    }


def _export_frozen(config, workdir: Path) -> dict:
    """text / imagebind: random frozen weights, exported once (deterministic in the seed)."""
    out = workdir / "export"
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
    save_params(out, p, meta)
    log.info("%s: frozen random weights exported to %s", config.task, out)
    return {"step": 0, "export": str(out)}


# ----------------------------------------------------------------------------- the loop
def train(config: Any, workdir: str | os.PathLike) -> dict:
    """Run one toy stage to `config.total_steps` (resuming), then export W/export."""
    task = _check(config)
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    if task in ("text", "imagebind"):
        return _export_frozen(config, workdir)
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
    ema_decay = float(config.ema_decay)
    state = {"params": params, "ema": params, "opt": tx.init(params), "step": 0}
    ckpt = workdir / "ckpt.msgpack"
    if ckpt.exists():
        state = _load_state(ckpt, state)
        log.info("%s: resumed at step %d from %s", task, int(state["step"]), ckpt)
    start = int(state["step"])
    metrics = workdir / "metrics.jsonl"
    truncate_jsonl(metrics, start)

    @jax.jit
    def step_fn(params, ema, opt, batch, key, step):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        # EMA with the usual warm-up: early on it follows the weights closely
        d = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
        return params, ema, opt, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}

    from tqdm import tqdm

    seed = int(config.seed)
    p, e, o = state["params"], state["ema"], state["opt"]
    t0, last = time.perf_counter(), None
    bar = tqdm(total=total, initial=start, desc=f"toy {task}", unit="step", mininterval=2.0)
    for step in range(start, total):
        batch = batch_fn(np.random.default_rng([seed, step]))
        key = jax.random.fold_in(jax.random.key(seed), step)
        p, e, o, m = step_fn(p, e, o, batch, key, jnp.float32(step))
        if (step + 1) % int(config.log_every) == 0 or step + 1 == total:
            m = {k: float(v) for k, v in m.items()}
            if not np.isfinite(m["loss"]):
                raise FloatingPointError(f"{task}: loss became {m['loss']} at step {step + 1}")
            last = m
            _append_metrics(metrics, {"step": step + 1, "time": time.perf_counter() - t0, **m})
            bar.set_postfix(loss=f"{m['loss']:.4f}")
        if (step + 1) % int(config.checkpoint_every) == 0 or step + 1 == total:
            _save_state(ckpt, {"params": p, "ema": e, "opt": o, "step": step + 1})
        bar.update(1)
    bar.close()
    out = workdir / "export"
    export(jax.tree.map(np.asarray, e if config.get("export_ema", True) else p), out)
    log.info("%s: exported %s (%.0f s)", task, out, time.perf_counter() - t0)
    return {"step": total, "export": str(out), "last": last}
