"""Whole-audio jobs: a video as long as its audio (FreeNoise-style long generation).

A job with window 0 (`--config.clip_window=0` or the job field `"window": 0`) makes a video that
spans its whole audio at the frame rate of a 4 s job (`num_frames / BASE_WINDOW_S` frames per
second), sampled in one DDIM scan over all frames:

- the UNet runs over overlapping windows of `num_frames` frames (the frames it was trained
  on), `cfg.long.stride` apart, fused per frame (`maestro_jax.nn.frame_windows`).
  `cfg.long.windows_at_once` 0 (default): all windows at once, fused inside every temporal
  attention as in FreeNoise (the other layers see all frames: memory grows with the length);
  k >= 1: the whole UNet runs on k windows at a time and its predictions are fused (memory
  follows k, not the length; each frame is computed in window / stride windows);
- the noise is rescheduled (`frame_windows.rescheduled_normal`), the initial noise and every
  DDIM step's: frames past the first window repeat the first window's noise, shuffled within each
  stride-sized chunk, so every window sees the same noise statistics and the windows agree on
  one scene;
- every frame takes the audio tokens of the ImageBind 2 s clip under its time
  (`frame_tokens`): a source that starts late appears late;
- boxes take keyframes in seconds over the whole length (`seconds_to_positions`).

The mosaic, Object Locating, CFG and sweeps see an ordinary (longer) job.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.audio.features import CLIP_DURATION
from maestro_jax.nn.frame_windows import rescheduled_normal, window_starts

BASE_WINDOW_S = 4.0  # a default job's seconds: whole-audio videos keep its frame rate
DURATION_TOLERANCE_S = 0.1  # stems of one job may differ in length by this much


class LongInputError(ValueError):
    """Audio a whole-audio job cannot use; the message names the limit."""


@dataclasses.dataclass(frozen=True)
class LongSpec:
    """Geometry of one whole-audio job: `frames` frames at `rate` fps over `seconds` of audio,
    temporal windows of `window` frames `stride` apart."""

    seconds: float
    frames: int
    rate: float
    window: int
    stride: int

    @property
    def segments(self) -> int:
        """ImageBind 2 s clips covering the video."""
        return max(1, math.ceil(self.frames / self.rate / CLIP_DURATION - 1e-9))

    @property
    def starts(self) -> tuple[int, ...]:
        return window_starts(self.frames, self.window, self.stride)


def long_spec(durations: list[float], num_frames: int, stride: int, max_seconds: float) -> LongSpec:
    """The video of a whole-audio job whose sources last `durations` seconds.

    Refuses audio shorter than one window (BASE_WINDOW_S), longer than `max_seconds`, or stems
    whose lengths differ by more than DURATION_TOLERANCE_S."""
    if not durations:
        raise LongInputError("no audio")
    lo, hi = min(durations), max(durations)
    if hi - lo > DURATION_TOLERANCE_S:
        raise LongInputError(
            f"whole-audio stems must have one length: they last {lo:.2f} s to {hi:.2f} s "
            f"(more than {DURATION_TOLERANCE_S} s apart); trim them to one length"
        )
    if lo < BASE_WINDOW_S:
        raise LongInputError(
            f"audio lasts {lo:.2f} s; a whole-audio video needs at least {BASE_WINDOW_S:g} s "
            f"(one window); use a window of {BASE_WINDOW_S:g} s (window 4), which pads"
        )
    if hi > max_seconds:
        raise LongInputError(too_long(hi, max_seconds))
    if not 1 <= stride <= num_frames:
        raise LongInputError(f"long.stride must lie in [1, num_frames = {num_frames}]")
    rate = num_frames / BASE_WINDOW_S
    frames = max(num_frames, int(round(lo * rate)))
    return LongSpec(float(lo), frames, rate, num_frames, int(stride))


def too_long(seconds: float, limit: float) -> str:
    return (
        f"audio lasts {seconds:.1f} s, over the whole-audio limit of {limit:g} s "
        f"(config long.max_seconds); cut it or raise the limit"
    )


LONG_DEFAULTS = {"stride": 4, "windows_at_once": 0, "max_seconds": 600.0}


def long_options(cfg) -> dict:
    """The config's `long` group over `LONG_DEFAULTS` (configs without one get the defaults);
    LongInputError for a negative `windows_at_once` or a `max_seconds` that is not positive."""
    group = cfg.get("long") if hasattr(cfg, "get") else None
    opts = {k: type(v)(group.get(k, v)) if group else v for k, v in LONG_DEFAULTS.items()}
    if opts["windows_at_once"] < 0:
        raise LongInputError(
            f"long.windows_at_once must be >= 0 (0 = all windows at once), got "
            f"{opts['windows_at_once']}"
        )
    if opts["max_seconds"] <= 0:
        raise LongInputError(f"long.max_seconds must be > 0, got {opts['max_seconds']:g}")
    return opts


def audio_seconds(path) -> float | None:
    """A file's duration from its header (soundfile formats), None when it cannot tell."""
    try:
        import soundfile as sf

        return float(sf.info(str(path)).duration)
    except Exception:  # noqa: BLE001 - not a soundfile format: the decoded length decides
        return None


def frame_segments(frames: int, rate: float) -> np.ndarray:
    """[F] int: the 2 s clip under each frame's start time f / rate."""
    return np.floor(np.arange(frames) / rate / CLIP_DURATION + 1e-9).astype(np.int64)


def frame_tokens(tokens: jax.Array, frames: int, rate: float) -> jax.Array:
    """tokens [N_A, S, N_Q, D] (S 2 s clips) -> [N_A, F, N_Q, D]: frame f gets the clip under
    its time. `build_contexts` with S = F then maps frame f to row f."""
    seg = np.minimum(frame_segments(frames, rate), tokens.shape[1] - 1)
    return jnp.asarray(tokens)[:, seg]


def rescheduled_noise(
    seed: int, shape: tuple[int, ...], window: int, stride: int
) -> tuple[jax.Array, jax.Array]:
    """(x_T, per-step key) of a long job: shape [1, F, h, w, C]; x_T = `rescheduled_normal` of
    the seed's noise key. The first `window` frames and the key equal
    `sampling.initial_noise(seed, ...)` of a `window`-frame job. The sampler draws every DDIM
    step's noise with `rescheduled_normal` too (`sampling.step_noise_fn`)."""
    k_x, k_steps = jax.random.split(jax.random.key(seed))
    return rescheduled_normal(k_x, shape, window, stride), k_steps


def seconds_to_positions(keyframes, frames: int, rate: float) -> list:
    """[(seconds, box), ...] -> [(position in [0, 1], box), ...] for `mosaic.Boxes.keyframed`
    (frame f at f / rate seconds; the last frame is position 1)."""
    last = (frames - 1) / rate if frames > 1 else 1.0
    out = []
    for item in keyframes:
        t, box = item
        t = float(t)
        if not 0.0 <= t <= last + 1e-6:
            raise ValueError(f"keyframe at {t:g} s is outside the video's [0, {last:g}] s")
        out.append((min(t / last, 1.0), box))
    return out


def window_fusion(at_once: int) -> str:
    """Where `long.windows_at_once` windows are fused: 'attention' for 0 (all at once), 'unet'
    for k >= 1 (`UNetConfig.window_fusion`)."""
    return "unet" if at_once >= 1 else "attention"


def windowed_models(models, window: int, stride: int, at_once: int = 0):
    """`models` whose UNet runs over windows (the weights are shared): see `windowed_spec`."""
    return dataclasses.replace(models, spec=windowed_spec(models.spec, window, stride, at_once))


def windowed_spec(spec, window: int, stride: int, at_once: int = 0):
    """A `ModelSpec` whose UNet runs over windows of `window` frames `stride` apart.

    at_once 0 (all windows at once): FreeNoise's fusion inside every temporal attention
    (`window_fusion='attention'`), every other layer over all frames, so memory grows with the
    video's length. at_once k >= 1: the sampler runs the whole UNet on k windows at a time and
    fuses the predictions (`window_fusion='unet'`): memory follows k, not the length."""
    unet = spec.unet.replace(
        temporal_window=int(window),
        temporal_stride=int(stride),
        windows_at_once=int(at_once),
        window_fusion=window_fusion(int(at_once)),
    )
    return dataclasses.replace(spec, unet=unet)


def seam_frames(spec: LongSpec) -> np.ndarray:
    """[F - 1] bool: whether the step f -> f + 1 crosses the start of a later window (for the
    seam vs inside-window frame-difference measurement)."""
    seam = np.zeros(max(spec.frames - 1, 0), bool)
    for s in spec.starts[1:]:
        seam[s - 1] = True
    return seam


def prepare_long_job(models, stems, plan, cfg, options):
    """(windowed models, `sampling.PreparedJob`) of a whole-audio plan (`prepare_long` with the
    plan's geometry, boxes and seed and the config's `long.windows_at_once`)."""
    at_once = long_options(cfg)["windows_at_once"]
    return prepare_long(
        models, stems, plan.long, plan.locate_boxes, plan.mosaic_boxes, plan.job.seed, cfg,
        options, at_once,
    )  # fmt: skip


def prepare_long(models, stems, spec: LongSpec, locate_boxes, mosaic_boxes, seed, cfg, options,
                 at_once: int = 0):  # fmt: skip
    """(windowed models, `sampling.PreparedJob`) of a whole-audio job: frame-aligned tokens,
    the contexts and edits of all its frames, rescheduled noise. `stems`: [(wave [C, n], sr)]."""
    from maestro_jax.audio import encoder as ae
    from maestro_jax.generation import sampling

    mw = windowed_models(models, spec.window, spec.stride, at_once)
    tokens = ae.encode_stems(models.audio, stems, spec.segments * CLIP_DURATION, cfg.clip_rule)
    tokens = frame_tokens(tokens, spec.frames, spec.rate)
    vspec = sampling.VideoSpec(spec.frames, int(cfg.height), int(cfg.width))
    job = sampling.prepare_job(mw, tokens, locate_boxes, mosaic_boxes, vspec, seed, options)
    job.x_T, job.key = rescheduled_noise(seed, job.x_T.shape, spec.window, spec.stride)
    return mw, job
