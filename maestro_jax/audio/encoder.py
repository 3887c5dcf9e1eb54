"""Stage 2-3 of Maestro: stems -> ImageBind audio trunk tokens -> CIM audio tokens.

    waveform [C, N] at any rate
      --(first `clip_window` s, padded with silence; S = ceil(window / 2) disjoint 2 s clips)-->
      mel [S, 128, 204] --ImageBind audio trunk--> [S, 229, 768] --CIM--> [S, N_Q, 1024]

Choice (maestro.md step 4): the video covers `clip_window` seconds of audio (default 4 s, the
release's two clips for 16 frames). A stem shorter than the window is padded with silence to the
window, so clip s always covers seconds [2s, 2s + 2) of the video's timeline; a longer stem is
cut. The 'git' clip rule (disjoint clips) is the default; 'pypi015' reproduces the release's
overlapping clips.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maestro_jax import audio as audio_lib
from maestro_jax.checkpoints import load_params_on_device, params_keys, read_config
from maestro_jax.models.cim import CIM, CIMConfig
from maestro_jax.models.imagebind import ImageBindAudio, ImageBindConfig, imagebind_huge
from maestro_jax.nn.random_init import random_init


@dataclasses.dataclass(frozen=True)
class AudioEncoder:
    """Frozen ImageBind audio branch + CIM (configs and params)."""

    ib_config: ImageBindConfig
    ib_params: Any
    cim_config: CIMConfig
    cim_params: Any

    @property
    def num_queries(self) -> int:
        return self.cim_config.num_latents

    @property
    def width(self) -> int:
        return self.cim_config.output_dim


def tiny_imagebind(dtype: Any = jnp.float32) -> ImageBindConfig:
    """A small ImageBind with the real audio front (128 x 204 mel -> 229 tokens)."""
    return imagebind_huge(
        out_dim=32, audio_width=64, audio_depth=2, audio_heads=2, vision_width=32,
        vision_depth=1, vision_heads=2, text_width=32, text_depth=1, text_heads=2, dtype=dtype,
    )  # fmt: skip


def tiny_cim(context_width: int, num_queries: int = 4, dtype: Any = jnp.float32) -> CIMConfig:
    return CIMConfig(
        dim=64, depth=2, heads=2, dim_head=32, num_queries=num_queries, embed_dim=64,
        output_dim=context_width, ff_mult=2, dtype=dtype,
    )  # fmt: skip


def init_random(ib_config: ImageBindConfig, cim_config: CIMConfig, seed: int = 0) -> AudioEncoder:
    """Random weights (tests, runlocal)."""
    if cim_config.embed_dim != ib_config.audio_width:
        raise ValueError(
            f"CIM embed_dim {cim_config.embed_dim} != ImageBind audio width {ib_config.audio_width}"
        )
    mel = jnp.zeros((1, 1, ib_config.num_mel_bins, ib_config.target_len), jnp.float32)
    ib = random_init(ImageBindAudio(ib_config), mel, seed=seed)["params"]
    tok = jnp.zeros((1, ib_config.audio_tokens, ib_config.audio_width), jnp.float32)
    cim = random_init(CIM(cim_config), tok, seed=seed + 1)["params"]
    return AudioEncoder(ib_config, ib, cim_config, cim)


def imagebind_config(meta: dict, dtype: Any = jnp.float32) -> ImageBindConfig:
    """The ImageBind config of a `convert.imagebind` folder's config.json, computing in `dtype`."""
    return _dataclass_from(ImageBindConfig, meta.get("imagebind", meta.get("config", {})),
                           dtype=dtype)  # fmt: skip


def cim_config(meta: dict, dtype: Any = jnp.float32) -> CIMConfig:
    """The CIM config of a `convert.cim` (or CIM training export) folder's config.json."""
    return _dataclass_from(CIMConfig, meta.get("cim", meta.get("config", {})), dtype=dtype)


def load_imagebind_audio(imagebind_dir: str | Path, dtype: Any = None) -> Any:
    """The audio trunk's params alone, on the device (floating leaves in `dtype`; None keeps
    them as stored): of a folder holding several modalities only `audio` is read; a folder of the
    audio params themselves is read whole."""
    if "audio" in params_keys(imagebind_dir):
        return load_params_on_device(imagebind_dir, dtype, keys=("audio",))[0]["audio"]
    return load_params_on_device(imagebind_dir, dtype)[0]


def load_cim(cim_dir: str | Path, dtype: Any = None) -> Any:
    """The CIM's params, on the device (floating leaves in `dtype`; None keeps them)."""
    return load_params_on_device(cim_dir, dtype)[0]


def load(imagebind_dir: str | Path, cim_dir: str | Path, dtype: Any = jnp.float32) -> AudioEncoder:
    """From folders written by `python -m convert.imagebind` and `python -m convert.cim`: the
    ImageBind audio trunk alone (other modalities stay on disk) and the CIM, on the device with
    their weights in the compute dtype `dtype`."""
    ib_cfg = imagebind_config(read_config(imagebind_dir), dtype)
    cim_cfg = cim_config(read_config(cim_dir), dtype)
    ib_params = load_imagebind_audio(imagebind_dir, dtype)
    return AudioEncoder(ib_cfg, ib_params, cim_cfg, load_cim(cim_dir, dtype))


def _dataclass_from(cls, d: dict, **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    kw.pop("dtype", None)
    return cls(**{**kw, **overrides})


def num_segments(clip_window: float, clip_duration: float = audio_lib.CLIP_DURATION) -> int:
    """S = ceil(L / 2) (the paper), at least 1."""
    return max(1, math.ceil(clip_window / clip_duration - 1e-9))


def stem_mel(wave: np.ndarray, sr: int, clip_window: float = 4.0, rule: str = "git") -> np.ndarray:
    """One stem [C, N] -> ImageBind mel clips [S, 128, 204] covering `clip_window` seconds."""
    wave = np.asarray(wave, np.float32)
    if wave.ndim == 1:
        wave = wave[None]
    n = int(round(clip_window * sr))
    wave = wave[:, :n]
    if wave.shape[1] < n:
        wave = np.pad(wave, ((0, 0), (0, n - wave.shape[1])))
    s = num_segments(clip_window)
    mel = audio_lib.imagebind_audio_input(wave, sr, s, rule=rule, max_seconds=None)
    return np.asarray(mel)[:, 0]


@functools.partial(jax.jit, static_argnames=("ib_config", "cim_config"))
def _tokens(ib_params, cim_params, mel, ib_config, cim_config):
    out = ImageBindAudio(ib_config).apply({"params": ib_params}, mel)
    return CIM(cim_config).apply({"params": cim_params}, out.tokens)


def encode_mels(enc: AudioEncoder, mel: jax.Array) -> jax.Array:
    """mel [N_A, S, 128, 204] -> audio tokens [N_A, S, N_Q, D] (one jitted call)."""
    return _tokens(enc.ib_params, enc.cim_params, jnp.asarray(mel), enc.ib_config, enc.cim_config)


def encode_stems(
    enc: AudioEncoder,
    stems: list[tuple[np.ndarray, int]],
    clip_window: float = 4.0,
    rule: str = "git",
) -> jax.Array:
    """[(wave [C, N], sr), ...] -> audio tokens [N_A, S, N_Q, D]."""
    if not stems:
        raise ValueError("encode_stems: no stems given")
    mel = np.stack([stem_mel(w, sr, clip_window, rule) for w, sr in stems])
    return encode_mels(enc, mel)


# ----------------------------------------------------------------------------- config
def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`python -m maestro_jax.encode_audio` settings (`configs/audio.py`); `runlocal`: tiny
    random ImageBind + CIM."""
    variant = arg or "default"
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.model = "full"  # 'full' (converted weights) | 'tiny' (random)
    c.imagebind_checkpoint = ""
    c.cim_checkpoint = ""
    c.clip_window = 4.0  # seconds of audio per video; S = ceil(window / 2) clips
    c.clip_rule = "git"  # 'git' (disjoint clips) | 'pypi015' (the release's sampler)
    c.dtype = "float32"
    c.seed = 0
    c.tiny_context_width = 64
    c.tiny_num_queries = 4
    if variant == "runlocal":
        c.model = "tiny"
    elif variant != "default":
        raise ValueError(f"unknown audio config variant {variant!r} (default | runlocal)")
    return c
