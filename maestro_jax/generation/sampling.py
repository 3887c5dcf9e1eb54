"""Sampling a Maestro video (paper Sec. 3.3), as composable stages:

    null text embedding + audio tokens ──contexts──▶ C_merge [F, 77, D], C_sep [N_A, F, 77, D]
    boxes ──make_phase_edits──▶ (locate edit, mosaic edit)   (rasterised once, before sampling)
    noise ──sample: N_D locate steps, then mosaic steps (UNet + CFG, one jit)──▶ latents
    latents ──decode──▶ frames [F, H, W, 3]

Modes of the conditional branch (the paper's ablations):
- 'maestro'   N_D Object Locating steps on C_merge, then Mosaic Denoising (the method);
- 'vanilla'   C_merge with no attention editing;
- 'locate'    Object Locating on every step;
- 'mosaic'    Mosaic Denoising on every step.
The unconditional branch always sees the plain null embedding and is never edited.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax import mosaic
from maestro_jax.audio import encoder as ae
from maestro_jax.diffusion import ddim_sample, ddim_timesteps
from maestro_jax.generation.models import (
    Models,
    ModelSpec,
    null_context,
    schedule_named,
    text_context,
)
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.models.vae import AutoencoderKL, VAEConfig, decode_latents
from maestro_jax.nn.frame_windows import fused_window_map, rescheduled_normal
from maestro_jax.procfs import proc_kib

MODES = ("maestro", "vanilla", "locate", "mosaic")


# ----------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """Output geometry: F frames of H x W pixels; the latent is H/ds x W/ds."""

    num_frames: int
    height: int
    width: int

    def latent_hw(self, spec: ModelSpec) -> tuple[int, int]:
        ds = spec.vae.downsample_factor
        return self.height // ds, self.width // ds

    def check(self, spec: ModelSpec) -> None:
        """Sizes the networks of `spec` can make (configs only: runs before any weight is read)."""
        ds = spec.vae.downsample_factor
        levels = len(spec.unet.channel_mult)
        unit = ds * 2 ** (levels - 1)
        if self.height % unit or self.width % unit:
            raise ValueError(
                f"video size {self.height}x{self.width} must be a multiple of {unit} "
                f"(VAE x{ds}, UNet {levels} levels)"
            )
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        window = spec.unet.temporal_window  # FreeNoise windows of the trained frame count
        if window and (not spec.trained_frames or window == spec.trained_frames):
            if self.num_frames < window:
                raise ValueError(f"{self.num_frames} frames are fewer than one window ({window})")
        elif spec.trained_frames and self.num_frames != spec.trained_frames:
            raise ValueError(
                f"{self.num_frames} frames do not match the checkpoint, which was trained with "
                f"{spec.trained_frames} (set --config.num_frames={spec.trained_frames})"
            )

    def resolutions(self, spec: ModelSpec) -> tuple[tuple[int, int], ...]:
        return mosaic.unet_resolutions(self.latent_hw(spec), num_levels=len(spec.unet.channel_mult))

    def latent_shape(self, spec: ModelSpec) -> tuple[int, ...]:
        """[F, h, w, C] of one video's latents."""
        return (self.num_frames, *self.latent_hw(spec), spec.unet.in_channels)


# ----------------------------------------------------------------------------- sampling
@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    steps: int = 50
    eta: float = 1.0
    guidance: float = 12.0
    fps: int = 8
    n_d: int = 6
    mode: str = "maestro"

    def check(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        ddim_timesteps(self.steps)  # a step count the schedule cannot take fails here
        if not 0 <= self.n_d <= self.steps:
            raise ValueError(f"N_D = {self.n_d} locate steps is outside [0, steps = {self.steps}]")


def _unet_fn(unet_config: UNetConfig, params: Any, fps: int, edit: Any) -> Callable:
    if unet_config.window_fusion == "unet" and unet_config.temporal_window:
        return _windowed_unet_fn(unet_config, params, fps, edit)
    unet = UNet(unet_config)

    def fn(x, t, cond, step):
        del step
        n, f = x.shape[:2]
        ctx = cond["context"]
        ctx = ctx.reshape(n * f, *ctx.shape[2:]) if ctx.ndim == 4 else ctx
        return unet.apply(
            {"params": params}, x, t, ctx, fps=jnp.full((n,), fps, jnp.float32), attn_edit=edit
        )

    return fn


def _windowed_unet_fn(unet_config: UNetConfig, params: Any, fps: int, edit: Any) -> Callable:
    """`window_fusion='unet'`: the whole UNet on `windows_at_once` windows of `temporal_window`
    frames at a time (contexts and the mosaic edit cut to each window's frames), predictions
    fused per frame (`frame_windows.fused_window_map`). A video of at most one window runs as
    one plain call."""
    window, stride, at_once = (
        unet_config.temporal_window, unet_config.temporal_stride, unet_config.windows_at_once
    )  # fmt: skip
    plain = unet_config.replace(temporal_window=0, windows_at_once=0, window_fusion="attention")

    def fn(x, t, cond, step):
        n, f = x.shape[:2]
        if f <= window:
            return _unet_fn(plain, params, fps, edit)(x, t, cond, step)
        ctx = cond["context"]
        ctx = ctx.reshape(n, f, *ctx.shape[1:]) if ctx.ndim == 3 else ctx  # [n, F, L, D]

        def one(start):
            cut = lambda a: jax.lax.dynamic_slice_in_dim(a, start, window, 1)  # noqa: E731
            e = None if edit is None else edit.frame_window(start, window)
            return _unet_fn(plain, params, fps, e)(cut(x), t, {**cond, "context": cut(ctx)}, step)

        out = fused_window_map(one, x.shape, window=window, stride=stride, at_once=at_once)
        return out.astype(x.dtype)

    return fn


def step_noise_fn(unet_config: UNetConfig, frames: int) -> Callable | None:
    """The per-step noise draw of a video of `frames` frames: FreeNoise's rescheduled draws
    (`frame_windows.rescheduled_normal`) when its UNet runs over windows and the video is longer
    than one, else None (plain `jax.random.normal`)."""
    window = unet_config.temporal_window
    if not window or frames <= window:
        return None
    stride = unet_config.temporal_stride
    return lambda key, shape: rescheduled_normal(key, shape, window, stride)


def initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(x_T, key for the per-step DDIM noise) of one job: a pure function of the seed."""
    key = jax.random.key(seed)
    k_x, k_steps = jax.random.split(key)
    return jax.random.normal(k_x, shape, jnp.float32), k_steps


# The jitted samplers take the UNet config and the schedule's name as static arguments and the
# weights as traced ones: jit's own cache reuses a compile for equal configs and holds no weights.
@functools.partial(jax.jit, static_argnames=("unet_config", "schedule", "settings", "progress"))
def _sample_t2v(params, cond, uncond, x_T, key, unet_config, schedule, settings, progress=None):
    fn = _unet_fn(unet_config, params, settings.fps, None)
    return ddim_sample(
        fn, x_T, cond={"context": cond}, uncond={"context": uncond}, steps=settings.steps,
        eta=settings.eta, guidance=settings.guidance, schedule=schedule_named(schedule), key=key,
        progress=progress,
    )  # fmt: skip


def sample_t2v(
    models: Models,
    prompt: str,
    spec: VideoSpec,
    settings: SamplerSettings,
    seed: int,
    progress: Callable[[Any], None] | None = None,
) -> jax.Array:
    """Plain VideoCrafter2 text-to-video: latents [1, F, h, w, 4]. N_D does not apply.
    `progress`: see `sample_maestro`."""
    ms = models.spec
    spec.check(ms)
    settings = dataclasses.replace(settings, n_d=0, mode="vanilla")
    settings.check()
    cond = text_context(models, [prompt])
    uncond = null_context(models)[None]
    x_T, key = initial_noise(seed, (1, *spec.latent_shape(ms)))
    return _sample_t2v(
        models.params["unet"], cond, uncond, x_T, key, ms.unet, ms.schedule_name, settings,
        progress,
    )  # fmt: skip


def build_edits(
    models: Models,
    tokens: jax.Array,
    locate_boxes: Sequence[Any],
    mosaic_boxes: Sequence[Any],
    spec: VideoSpec,
    options: mosaic.MosaicOptions | None = None,
) -> tuple[jax.Array, jax.Array, mosaic.MosaicEdit, mosaic.MosaicEdit]:
    """Contexts and both phases' edits of one job: (C_merge, null [F, 77, D], locate, mosaic).

    Edit rows follow `ddim_sample`'s CFG batch [uncond; cond]: row 0 plain, row 1 edited."""
    options = options or mosaic.MosaicOptions()
    null = null_context(models)
    n_a, _, n_q, _ = tokens.shape
    if len(locate_boxes) != n_a or len(mosaic_boxes) != n_a:
        raise ValueError(
            f"{n_a} sources but {len(locate_boxes)} locating / {len(mosaic_boxes)} mosaic boxes"
        )
    c_merge, c_sep = mosaic.build_contexts(null, tokens, spec.num_frames, options.token_offset)
    locate, mos = mosaic.make_phase_edits(
        locate_boxes, mosaic_boxes, c_merge=c_merge, c_sep=c_sep, null_emb=null, n_q=n_q,
        resolutions=spec.resolutions(models.spec), num_frames=spec.num_frames,
        edit_rows=mosaic.cfg_edit_rows(1, 1, cond_first=False), options=options,
        attn_impl=models.spec.unet.impl("cross"),
    )  # fmt: skip
    null_f = jnp.broadcast_to(null, (spec.num_frames, *null.shape))
    return c_merge, null_f, locate, mos


def _maestro_one(params, n_d, c_merge, null_f, locate, mos, x_T, key, unet_config, schedule,
                 settings, progress=None):  # fmt: skip
    """One job (B = 1): latents [1, F, h, w, 4].

    In 'maestro' mode the phase is chosen per step with `lax.cond(step < n_d, ...)` on a traced
    N_D shared by the batch (an unbatched predicate stays a real branch under vmap), so every
    N_D value reuses one compiled sampler (an N_D sweep compiles once)."""
    cond = {"context": c_merge[None]}
    uncond = {"context": null_f[None]}
    common = dict(
        cond=cond, uncond=uncond, steps=settings.steps, eta=settings.eta,
        guidance=settings.guidance, schedule=schedule_named(schedule), key=key,
        draw_noise=step_noise_fn(unet_config, x_T.shape[1]), progress=progress,
    )  # fmt: skip
    unet_fn = functools.partial(_unet_fn, unet_config, params, settings.fps)
    if settings.mode != "maestro":  # one edit (or none) on every step
        edit = {"vanilla": None, "locate": locate, "mosaic": mos}[settings.mode]
        return ddim_sample(unet_fn(edit), x_T, **common)
    fn_locate, fn_mosaic = unet_fn(locate), unet_fn(mos)

    def fn(x, t, c, step):
        return jax.lax.cond(step < n_d, fn_locate, fn_mosaic, x, t, c, step)

    return ddim_sample(fn, x_T, **common)


@functools.partial(jax.jit, static_argnames=("unet_config", "schedule", "settings", "progress"))
def _sample_maestro_batch(
    params, n_d, c_merge, null_f, locate, mos, x_T, keys, unet_config, schedule, settings,
    progress=None,
):  # fmt: skip
    """vmapped over a leading job axis of every array argument (params and N_D shared)."""
    one = functools.partial(
        _maestro_one, unet_config=unet_config, schedule=schedule, settings=settings,
        progress=progress,
    )  # fmt: skip
    return jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0, 0, 0))(
        params, n_d, c_merge, null_f, locate, mos, x_T, keys
    )


@dataclasses.dataclass
class PreparedJob:
    """Everything one job needs on device (built on the host before sampling)."""

    c_merge: jax.Array
    null_f: jax.Array
    locate: mosaic.MosaicEdit
    mosaic: mosaic.MosaicEdit
    x_T: jax.Array
    key: jax.Array


def prepare_job(
    models: Models,
    tokens: jax.Array,
    locate_boxes: Sequence[Any],
    mosaic_boxes: Sequence[Any],
    spec: VideoSpec,
    seed: int,
    options: mosaic.MosaicOptions | None = None,
) -> PreparedJob:
    spec.check(models.spec)
    c_merge, null_f, loc, mos = build_edits(
        models, tokens, locate_boxes, mosaic_boxes, spec, options
    )
    x_T, key = initial_noise(seed, (1, *spec.latent_shape(models.spec)))
    return PreparedJob(c_merge, null_f, loc, mos, x_T, key)


def sample_maestro(
    models: Models,
    jobs: Sequence[PreparedJob],
    settings: SamplerSettings,
    mesh: jax.sharding.Mesh | None = None,
    progress: Callable[[Any], None] | None = None,
) -> jax.Array:
    """Sample a batch of prepared jobs of identical shapes in one compiled call.

    With a mesh, the job axis is split over its 'data' axis (pad the batch to a multiple of it).
    `progress`: called from the device as `progress(step)` at the start of every DDIM step (a
    host callback compiled in only when given; jit's cache keys on it, so pass the same callable
    for every job to compile once). Raising in it stops the sampler: the call then raises.
    Returns latents [J, F, h, w, 4]."""
    settings.check()
    stack = lambda *xs: jnp.stack(xs)  # noqa: E731
    args = [
        jax.tree.map(stack, *[getattr(j, f) for j in jobs])
        for f in ("c_merge", "null_f", "locate", "mosaic", "x_T", "key")
    ]
    if mesh is not None:
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        data = NamedSharding(mesh, P("data"))
        args = [jax.tree.map(lambda a: jax.device_put(a, data), x) for x in args]
    n_d = jnp.asarray(settings.n_d, jnp.int32)  # traced: N_D values share one compile
    static = dataclasses.replace(settings, n_d=0)
    ms = models.spec
    # Under the mesh, kernels that shard themselves (splash attention) see it while tracing.
    with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
        out = _sample_maestro_batch(
            models.params["unet"], n_d, *args, ms.unet, ms.schedule_name, static, progress
        )
    return out[:, 0]


# ----------------------------------------------------------------------------- decode
@functools.partial(jax.jit, static_argnames=("vae_config", "frame_chunk"))
def _decode(params, latents, vae_config, frame_chunk):
    return decode_latents(AutoencoderKL(vae_config), params, latents, frame_chunk=frame_chunk)


def decode(models: Models, latents: jax.Array, frame_chunk: int | None = None) -> np.ndarray:
    """latents [B, F, h, w, 4] -> uint8 frames [B, F, H, W, 3], decoded `frame_chunk` frames at a
    time (None or 0: chosen by `auto_frame_chunk`; the frames do not depend on it)."""
    vae = models.spec.vae
    b, f, h, w = latents.shape[:4]
    chunk = frame_chunk or auto_frame_chunk(vae, b * f, (h, w))
    frames = _decode(models.params["vae"], latents, vae, chunk if chunk < b * f else None)
    frames = np.asarray(frames, np.float32)
    return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


def decode_bytes_per_frame(vae: VAEConfig, latent_hw: tuple[int, int]) -> int:
    """An upper estimate of the VAE decoder's working memory for one frame: 32 bytes per pixel
    and base channel (about 7 float32 copies of the full-resolution level's activations: XLA's
    buffer assignment for the SD / VideoCrafter2 decoder needs 28) plus 3 float32 copies of the
    mid-block attention matrix over the latent's h * w tokens."""
    h, w = latent_hw
    ds = vae.downsample_factor
    return 32 * vae.ch * (h * ds) * (w * ds) + 12 * (h * w) ** 2


HOST_DECODE_BYTES = 2 << 30  # a CPU's decode budget, at most (see `decode_budget_bytes`)


def decode_budget_bytes() -> int | None:
    """Working memory the VAE decode may take: half the free memory of an accelerator (its
    `memory_stats`); on a CPU half of MemAvailable (/proc/meminfo), at most `HOST_DECODE_BYTES`
    (the host's memory is shared with everything else, and there more frames at once decode no
    faster); None when nothing is known."""
    dev = jax.local_devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        if "bytes_limit" not in stats:
            return None
        return (int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))) // 2
    available = proc_kib("/proc/meminfo", "MemAvailable")
    return None if available is None else min(available // 2, HOST_DECODE_BYTES)


def auto_frame_chunk(
    vae: VAEConfig, num_frames: int, latent_hw: tuple[int, int], budget: int | None = None
) -> int:
    """Frames to decode at once: all of them when their estimated working memory
    (`decode_bytes_per_frame`) fits in `budget` (default `decode_budget_bytes()`), else the
    largest divisor of `num_frames` that does (at least 1), so no chunk is padding."""
    budget = decode_budget_bytes() if budget is None else budget
    if budget is None:
        return num_frames
    fit = max(1, budget // decode_bytes_per_frame(vae, latent_hw))
    return max(d for d in range(1, num_frames + 1) if num_frames % d == 0 and d <= fit)


# ----------------------------------------------------------------------------- audio
def mixture_of(
    stems: Sequence[tuple[np.ndarray, int]], sr: int | None = None
) -> tuple[np.ndarray, int]:
    """Sum of stems resampled to one rate (the first stem's by default): ([C, N], sr)."""
    from maestro_jax import audio as audio_lib

    sr = sr or stems[0][1]
    waves = [audio_lib.resample(w, s, sr) if s != sr else w for w, s in stems]
    chans = max(w.shape[0] for w in waves)
    waves = [np.repeat(w, chans, axis=0) if w.shape[0] == 1 else w for w in waves]
    return audio_lib.mix_stems(waves, peak=0.99), sr


def video_fps(spec: VideoSpec, clip_window: float, save_fps: float = 0.0) -> float:
    """Frames per second of the written video: F / clip_window (so the video spans the audio
    the frames were conditioned on) unless `save_fps` overrides it."""
    return float(save_fps) if save_fps else spec.num_frames / clip_window


def segments_for(spec: VideoSpec, clip_window: float) -> int:
    return ae.num_segments(clip_window)


def describe_boxes(boxes: Sequence[Any], num_frames: int) -> list[list[list[float]]]:
    """Per-frame boxes [F][N_A][4] (for drawing and the settings JSON)."""
    bs = [mosaic.as_boxes(b).per_frame(num_frames) for b in boxes]
    return [[list(map(float, b[f])) for b in bs] for f in range(num_frames)]
