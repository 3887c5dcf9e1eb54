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
from maestro_jax.generation.models import Models, null_context, text_context
from maestro_jax.models.unet import UNet
from maestro_jax.models.vae import AutoencoderKL, decode_latents

MODES = ("maestro", "vanilla", "locate", "mosaic")


# ----------------------------------------------------------------------------- geometry
@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """Output geometry: F frames of H x W pixels; the latent is H/ds x W/ds."""

    num_frames: int
    height: int
    width: int

    def latent_hw(self, models: Models) -> tuple[int, int]:
        ds = models.vae_config.downsample_factor
        return self.height // ds, self.width // ds

    def check(self, models: Models) -> None:
        ds = models.vae_config.downsample_factor
        levels = len(models.unet_config.channel_mult)
        unit = ds * 2 ** (levels - 1)
        if self.height % unit or self.width % unit:
            raise ValueError(
                f"video size {self.height}x{self.width} must be a multiple of {unit} "
                f"(VAE x{ds}, UNet {levels} levels)"
            )
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if models.trained_frames and self.num_frames != models.trained_frames:
            raise ValueError(
                f"{self.num_frames} frames do not match the checkpoint, which was trained with "
                f"{models.trained_frames} (set --config.num_frames={models.trained_frames})"
            )

    def resolutions(self, models: Models) -> tuple[tuple[int, int], ...]:
        return mosaic.unet_resolutions(
            self.latent_hw(models), num_levels=len(models.unet_config.channel_mult)
        )


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


def _unet_fn(models: Models, params: Any, fps: int, edit: Any) -> Callable:
    unet = UNet(models.unet_config)

    def fn(x, t, cond, step):
        del step
        n, f = x.shape[:2]
        ctx = cond["context"]
        ctx = ctx.reshape(n * f, *ctx.shape[2:]) if ctx.ndim == 4 else ctx
        return unet.apply(
            {"params": params}, x, t, ctx, fps=jnp.full((n,), fps, jnp.float32), attn_edit=edit
        )

    return fn


def initial_noise(seed: int, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(x_T, key for the per-step DDIM noise) of one job: a pure function of the seed."""
    key = jax.random.key(seed)
    k_x, k_steps = jax.random.split(key)
    return jax.random.normal(k_x, shape, jnp.float32), k_steps


@functools.partial(jax.jit, static_argnames=("models_static", "settings"))
def _sample_t2v(params, cond, uncond, x_T, key, models_static, settings):
    models = models_static.models
    fn = _unet_fn(models, params, settings.fps, None)
    return ddim_sample(
        fn, x_T, cond={"context": cond}, uncond={"context": uncond}, steps=settings.steps,
        eta=settings.eta, guidance=settings.guidance, schedule=models.schedule, key=key,
    )  # fmt: skip


class _Static:
    """Hashable-by-identity wrapper so `Models` (holding arrays) can be a static jit argument;
    the params themselves are passed as traced arguments."""

    def __init__(self, models: Models):
        self.models = models

    def __hash__(self) -> int:
        return id(self.models)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and other.models is self.models


@functools.cache
def _static(models: Models) -> _Static:
    return _Static(models)


def sample_t2v(
    models: Models, prompt: str, spec: VideoSpec, settings: SamplerSettings, seed: int
) -> jax.Array:
    """Plain VideoCrafter2 text-to-video: latents [1, F, h, w, 4]."""
    spec.check(models)
    settings.check()
    h, w = spec.latent_hw(models)
    cond = text_context(models, [prompt])
    uncond = null_context(models)[None]
    x_T, key = initial_noise(seed, (1, spec.num_frames, h, w, models.unet_config.in_channels))
    return _sample_t2v(models.unet_params, cond, uncond, x_T, key, _static(models), settings)


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
        resolutions=spec.resolutions(models), num_frames=spec.num_frames,
        edit_rows=mosaic.cfg_edit_rows(1, 1, cond_first=False), options=options,
        attn_impl=models.unet_config.impl("cross"),
    )  # fmt: skip
    null_f = jnp.broadcast_to(null, (spec.num_frames, *null.shape))
    return c_merge, null_f, locate, mos


def _maestro_one(params, n_d, c_merge, null_f, locate, mos, x_T, key, models, settings):
    """One job (B = 1): latents [1, F, h, w, 4].

    In 'maestro' mode the phase is chosen per step with `lax.cond(step < n_d, ...)` on a traced
    N_D shared by the batch (an unbatched predicate stays a real branch under vmap), so every
    N_D value reuses one compiled sampler (an N_D sweep compiles once)."""
    cond = {"context": c_merge[None]}
    uncond = {"context": null_f[None]}
    common = dict(
        cond=cond, uncond=uncond, steps=settings.steps, eta=settings.eta,
        guidance=settings.guidance, schedule=models.schedule, key=key,
    )  # fmt: skip
    fps = settings.fps
    if settings.mode == "vanilla":
        return ddim_sample(_unet_fn(models, params, fps, None), x_T, **common)
    if settings.mode == "locate":
        return ddim_sample(_unet_fn(models, params, fps, locate), x_T, **common)
    if settings.mode == "mosaic":
        return ddim_sample(_unet_fn(models, params, fps, mos), x_T, **common)
    fn_locate = _unet_fn(models, params, fps, locate)
    fn_mosaic = _unet_fn(models, params, fps, mos)

    def fn(x, t, c, step):
        return jax.lax.cond(step < n_d, fn_locate, fn_mosaic, x, t, c, step)

    return ddim_sample(fn, x_T, **common)


@functools.partial(jax.jit, static_argnames=("models_static", "settings"))
def _sample_maestro_batch(
    params, n_d, c_merge, null_f, locate, mos, x_T, keys, models_static, settings
):
    """vmapped over a leading job axis of every array argument (params and N_D shared)."""
    one = functools.partial(_maestro_one, models=models_static.models, settings=settings)
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
    spec.check(models)
    h, w = spec.latent_hw(models)
    c_merge, null_f, loc, mos = build_edits(
        models, tokens, locate_boxes, mosaic_boxes, spec, options
    )
    x_T, key = initial_noise(seed, (1, spec.num_frames, h, w, models.unet_config.in_channels))
    return PreparedJob(c_merge, null_f, loc, mos, x_T, key)


def sample_maestro(
    models: Models,
    jobs: Sequence[PreparedJob],
    settings: SamplerSettings,
    mesh: jax.sharding.Mesh | None = None,
) -> jax.Array:
    """Sample a batch of prepared jobs of identical shapes in one compiled call.

    With a mesh, the job axis is split over its 'data' axis (pad the batch to a multiple of it).
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
    out = _sample_maestro_batch(models.unet_params, n_d, *args, _static(models), static)
    return out[:, 0]


# ----------------------------------------------------------------------------- decode
@functools.partial(jax.jit, static_argnames=("models_static", "frame_chunk"))
def _decode(params, latents, models_static, frame_chunk):
    m = models_static.models
    return decode_latents(AutoencoderKL(m.vae_config), params, latents, frame_chunk=frame_chunk)


def decode(models: Models, latents: jax.Array, frame_chunk: int | None = None) -> np.ndarray:
    """latents [B, F, h, w, 4] -> uint8 frames [B, F, H, W, 3]."""
    frames = _decode(models.vae_params, latents, _static(models), frame_chunk or None)
    frames = np.asarray(frames, np.float32)
    return np.clip(np.round((frames + 1.0) * 127.5), 0, 255).astype(np.uint8)


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


def latent_shape(models: Models, spec: VideoSpec) -> tuple[int, ...]:
    h, w = spec.latent_hw(models)
    return (spec.num_frames, h, w, models.unet_config.in_channels)
