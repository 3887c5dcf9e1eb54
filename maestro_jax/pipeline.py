"""Maestro end to end, as composable stages (DESIGN.md "Data flow").

    stems (or mixture + queries --separate-->) ──encode_audio──▶ tokens [N_A, S, N_Q, D]
    null text embedding + tokens ──contexts──▶ C_merge [F, 77, D], C_sep [N_A, F, 77, D]
    boxes ──make_phase_edits──▶ (locate edit, mosaic edit)   (rasterised once, before sampling)
    noise ──sample: N_D locate steps, then mosaic steps (UNet + CFG, one jit)──▶ latents
    latents ──decode──▶ frames [F, H, W, 3] ──write──▶ .mp4 (mixture muxed) + .png + .json

Each stage is a function usable alone. `Models` holds every network's config and params (real
weights converted by `convert.*`, or tiny random ones for CPU runs).

Modes of the conditional branch (the paper's ablations, maestro.md):
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
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax import audio_encoder as ae
from maestro_jax import mosaic
from maestro_jax.checkpoints import load_params
from maestro_jax.diffusion import Schedule, ddim_sample, ddim_timesteps
from maestro_jax.models import clip_text as ct
from maestro_jax.models.tokenizer import HashTokenizer
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.models.vae import AutoencoderKL, VAEConfig, decode_latents
from maestro_jax.nn.random_init import random_init, random_like

MODES = ("maestro", "vanilla", "locate", "mosaic")


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


@dataclasses.dataclass(frozen=True)
class MosaicOptions:
    token_offset: int = 1
    cell_rule: str = "centre"
    background: str = "nearest"
    sigma_divisor: float = 3.0
    strengthen_scale: float = 0.5
    weaken_scale: float = 0.05
    locate_space: str = "logits"


def build_edits(
    models: Models,
    tokens: jax.Array,
    locate_boxes: Sequence[Any],
    mosaic_boxes: Sequence[Any],
    spec: VideoSpec,
    options: MosaicOptions = MosaicOptions(),
) -> tuple[jax.Array, jax.Array, mosaic.MosaicEdit, mosaic.MosaicEdit]:
    """Contexts and both phases' edits of one job: (C_merge, null [F, 77, D], locate, mosaic).

    Edit rows follow `ddim_sample`'s CFG batch [uncond; cond]: row 0 plain, row 1 edited."""
    null = null_context(models)
    n_a, _, n_q, _ = tokens.shape
    if len(locate_boxes) != n_a or len(mosaic_boxes) != n_a:
        raise ValueError(
            f"{n_a} sources but {len(locate_boxes)} locating / {len(mosaic_boxes)} mosaic boxes"
        )
    c_merge, c_sep = mosaic.build_contexts(null, tokens, spec.num_frames, options.token_offset)
    kw = dict(
        c_merge=c_merge, c_sep=c_sep, null_emb=null, n_q=n_q,
        resolutions=spec.resolutions(models), num_frames=spec.num_frames,
        edit_rows=mosaic.cfg_edit_rows(1, 1, cond_first=False),
        token_offset=options.token_offset, cell_rule=options.cell_rule,
        background=options.background, sigma_divisor=options.sigma_divisor,
        strengthen_scale=options.strengthen_scale, weaken_scale=options.weaken_scale,
        locate_space=options.locate_space, attn_impl=models.unet_config.impl("cross"),
    )  # fmt: skip
    locate, mos = mosaic.make_phase_edits(locate_boxes, mosaic_boxes, **kw)
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
    options: MosaicOptions = MosaicOptions(),
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


# ----------------------------------------------------------------------------- separation
@dataclasses.dataclass(frozen=True, eq=False)
class Separator:
    """AudioSep separator + CLAP text query encoder (`maestro_jax.separate`)."""

    config: Any  # configs/separate.py ConfigDict
    sep_variables: Any
    text_variables: Any
    tokenizer: Any = None  # ClapTokenizer; None = byte fallback (random weights only)


def init_random_separator(seed: int = 0) -> Separator:
    from maestro_jax import separate as sep_lib

    cfg = sep_lib.load_config(f"{sep_lib.DEFAULT_CONFIG}:runlocal")
    sep_vars, text_vars = sep_lib.random_variables(cfg, seed)
    return Separator(cfg, sep_vars, text_vars, None)


def load_separator(checkpoint: str | Path, tokenizer_dir: str | Path | None) -> Separator:
    from maestro_jax import separate as sep_lib
    from maestro_jax.models.clap_text import ClapTokenizer

    tree, meta = load_params(checkpoint)
    # separator_training exports carry their whole separate config (rate, widths, text encoder)
    if "separate_config" in meta:
        import ml_collections

        cfg = ml_collections.ConfigDict(meta["separate_config"])
    else:
        cfg = sep_lib.load_config(None)
    tok = ClapTokenizer.from_dir(tokenizer_dir) if tokenizer_dir else None
    return Separator(cfg, tree["separator"], tree.get("text"), tok)


def separate_mixture(
    sep: Separator,
    mixture: np.ndarray,
    queries: Sequence[str] = (),
    query_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """mono mixture [N] at `sep.config.sample_rate` -> stems [Q, N] (all queries in one pass)."""
    from maestro_jax import separate as sep_lib
    from maestro_jax.models.clap_text import byte_fallback_tokens

    if query_embeddings is None:
        if not queries:
            raise ValueError("separation needs text queries or query embeddings")
        if sep.text_variables is None:
            raise ValueError("this separator checkpoint holds no text encoder: give embeddings")
        if sep.tokenizer is not None:
            ids, mask = sep.tokenizer(list(queries), sep.config.max_text_tokens)
        else:
            ids, mask = byte_fallback_tokens(list(queries), sep.config.text.vocab_size)
        query_embeddings = sep_lib.embed_texts(sep.text_variables, sep.config, ids, mask)
    return sep_lib.separate(sep.sep_variables, sep.config, mixture, query_embeddings)
