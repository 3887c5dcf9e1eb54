"""Text-queried source separation (AudioSep: ResUNet30 + FiLM, queries embedded by CLAP's text
branch): one mixture, several text queries, one waveform per query (paper Sec. 3.1, step 1).

Library: `separate(variables, config, mixture [N], query_embeddings [Q, D])`; a `Separator`
bundles the weights, the config and the tokenizer (`load_separator`, `init_random_separator`,
`separate_mixture`). Config: `default_config(variant)`; the command line is
`python -m maestro_jax.separate`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maestro_jax.checkpoints import load_params
from maestro_jax.files import chmod_default
from maestro_jax.models.audiosep import ResUNet30, chunked_apply
from maestro_jax.models.clap_text import (
    ClapTextConfig,
    ClapTextEncoder,
    ClapTokenizer,
    byte_fallback_tokens,
)
from maestro_jax.models.stft import N_FFT
from maestro_jax.nn.random_init import random_like


# ----------------------------------------------------------------------------- config
def default_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """AudioSep's separator and CLAP text widths (variant `runlocal`: tiny random weights)."""
    c = ml_collections.ConfigDict()
    c.sample_rate = 32000
    # ResUNet30's hard-coded widths; the UNet compute dtype ('bfloat16' on accelerators).
    c.separator = ml_collections.ConfigDict(
        {"channels": (32, 64, 128, 256, 384, 384), "dtype": "float32"}
    )
    # roberta-base + CLAP's 768 -> 512 -> 512 projection (`ClapTextConfig` fields).
    c.text = ml_collections.ConfigDict(
        {
            "vocab_size": 50265,
            "hidden": 768,
            "layers": 12,
            "heads": 12,
            "intermediate": 3072,
            "max_positions": 514,
            "type_vocab": 1,
            "eps": 1e-5,
            "pad_id": 1,
            "joint": 512,
        }
    )
    c.max_text_tokens = 512  # AudioSep's tokenizer truncation
    # 0 = the whole file in one pass (AudioSep's default). > 0: chunks of about this many
    # seconds overlapping by `overlap_seconds`, cross-faded linearly over `crossfade_seconds` in
    # the middle of each overlap (so kept samples are >= (overlap - crossfade) / 2 from an edge).
    c.chunk_seconds = 0.0
    c.overlap_seconds = 2.0
    c.crossfade_seconds = 0.5
    # True: random-initialised separator and text encoder (smoke runs without weights).
    c.random_init = False
    c.seed = 0

    if arg == "runlocal":
        c.separator.channels = (4, 4, 8, 8, 8, 8)
        c.text.update(vocab_size=1000, hidden=32, layers=2, heads=2, intermediate=64)
        c.random_init = True
    elif arg not in (None, ""):
        raise ValueError(f"unknown config variant {arg!r} (known: runlocal)")
    return c


# ----------------------------------------------------------------------------- library
def build_separator(config: ml_collections.ConfigDict) -> ResUNet30:
    return ResUNet30(
        channels=tuple(config.separator.channels), dtype=jnp.dtype(config.separator.dtype)
    )


def build_text_encoder(config: ml_collections.ConfigDict) -> ClapTextEncoder:
    return ClapTextEncoder(ClapTextConfig(**dict(config.text)))


@functools.partial(jax.jit, static_argnums=0)
def _apply_separator(model: ResUNet30, variables, mixture, queries):
    return model.apply(variables, mixture[None], queries)


def separate(variables, config: ml_collections.ConfigDict, mixture, query_embeddings) -> np.ndarray:
    """Separate one mixture for Q queries.

    Args:
      variables: separator variables {'params', 'batch_stats'} (from `convert.audiosep`).
      config: a `default_config()` config (separator widths, chunking).
      mixture: [N] float waveform at 32 kHz, N > 1024.
      query_embeddings: [Q, D] unit-norm query embeddings (CLAP text: D = 512).
    Returns:
      [Q, N] float32 separated waveforms (jitted; one compile per mixture/chunk length and Q).
    """
    mixture = jnp.asarray(mixture, jnp.float32)
    query_embeddings = jnp.asarray(query_embeddings, jnp.float32)
    if mixture.ndim != 1:
        raise ValueError(f"mixture must be a mono waveform [N], got shape {mixture.shape}")
    if mixture.shape[0] <= N_FFT // 2:
        raise ValueError(f"mixture has {mixture.shape[0]} samples; need more than {N_FFT // 2}")
    if query_embeddings.ndim != 2 or query_embeddings.shape[0] == 0:
        raise ValueError(f"query_embeddings must be [Q, D], got {query_embeddings.shape}")
    model = build_separator(config)
    fn = functools.partial(_apply_separator, model, variables, queries=query_embeddings)
    if config.chunk_seconds <= 0:
        return np.asarray(fn(mixture))
    chunk, overlap, fade = chunk_geometry(config, model)
    return chunked_apply(
        lambda seg: fn(jnp.asarray(seg)), np.asarray(mixture), chunk, overlap, fade
    )


def chunk_geometry(config: ml_collections.ConfigDict, model: ResUNet30) -> tuple[int, int, int]:
    """(chunk, overlap, fade) in samples from the config's seconds.

    The hop (chunk - overlap) is rounded up to a multiple of the UNet's time stride (hop 320 x
    32 frames = 10240 samples) so that every chunk sees the same frame and pooling grid as the
    whole-file pass (ResUNet30 is far from shift-invariant: on a random tiny model, chunks off
    that grid differed from the full pass by ~20 %, on it by ~0.02 %). The overlap is at least
    n_fft samples so that the last, shorter chunk can be STFT'd."""
    sr = config.sample_rate
    overlap = max(int(round(config.overlap_seconds * sr)), N_FFT)
    stride = model.hop * model.time_downsample
    hop = max(int(round(config.chunk_seconds * sr)) - overlap, 1)
    hop = -(-hop // stride) * stride
    if hop < overlap:  # chunked_apply wants 2 * overlap <= chunk
        hop = -(-overlap // stride) * stride
    fade = min(int(round(config.crossfade_seconds * sr)), overlap)
    return hop + overlap, overlap, fade


def embed_texts(text_variables, config: ml_collections.ConfigDict, ids, mask) -> np.ndarray:
    """[Q, L] token ids + mask -> [Q, joint] unit-norm CLAP text embeddings."""
    model = build_text_encoder(config)
    return np.asarray(jax.jit(model.apply)(text_variables, jnp.asarray(ids), jnp.asarray(mask)))


def random_variables(config: ml_collections.ConfigDict, seed: int = 0) -> tuple[dict, dict]:
    """Random (separator, text encoder) variables for smoke runs (see `random_like`)."""
    key = jax.random.key(0)
    sep = jax.eval_shape(
        build_separator(config).init,
        key,
        jnp.zeros((1, 4 * N_FFT)),
        jnp.zeros((1, config.text.joint)),
    )
    ids = jnp.ones((1, 4), jnp.int32)
    text = jax.eval_shape(build_text_encoder(config).init, key, ids, ids)
    return random_like(sep, seed), random_like(text, seed + 1)


# ----------------------------------------------------------------------------- files
def load_config(spec: str | None) -> ml_collections.ConfigDict:
    """`path/to/config.py[:variant]` -> its `get_config(variant)`; None -> `default_config()`."""
    if not spec:
        return default_config()
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    module_spec = importlib.util.spec_from_file_location("_separate_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def load_mixture(path: str | os.PathLike, sr: int) -> np.ndarray:
    """Mono float32 [N] at `sr`: channel mean, then soxr HQ (librosa.load's defaults)."""
    import soundfile as sf
    import soxr

    audio, file_sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    audio = audio.mean(axis=1)
    if file_sr != sr:
        audio = soxr.resample(audio, file_sr, sr, quality="HQ")
    return np.ascontiguousarray(audio, np.float32)


def write_wav_atomic(path: Path, audio: np.ndarray, sr: int) -> None:
    """16-bit PCM (round(x * 32767), clipped), written to a temp file then renamed."""
    import soundfile as sf

    pcm = np.clip(np.round(np.asarray(audio, np.float64) * 32767), -32768, 32767).astype(np.int16)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".wav", dir=path.parent)
    os.close(fd)
    chmod_default(tmp)  # mkstemp makes 0600
    try:
        sf.write(tmp, pcm, sr, subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def query_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "query"


# ----------------------------------------------------------------------------- separation
@dataclasses.dataclass(frozen=True, eq=False)
class Separator:
    """AudioSep separator + CLAP text query encoder, with their config."""

    config: Any  # `default_config()` ConfigDict
    sep_variables: Any
    text_variables: Any
    tokenizer: Any = None  # ClapTokenizer; None = byte fallback (random weights only)


def init_random_separator(seed: int = 0) -> Separator:
    cfg = default_config("runlocal")
    sep_vars, text_vars = random_variables(cfg, seed)
    return Separator(cfg, sep_vars, text_vars, None)


def load_separator(checkpoint: str | Path, tokenizer_dir: str | Path | None) -> Separator:
    tree, meta = load_params(checkpoint)
    # the separator trainer's exports carry their whole separate config (rate, widths, text encoder)
    if "separate_config" in meta:
        import ml_collections

        cfg = ml_collections.ConfigDict(meta["separate_config"])
    else:
        cfg = default_config()
    tok = ClapTokenizer.from_dir(tokenizer_dir) if tokenizer_dir else None
    return Separator(cfg, tree["separator"], tree.get("text"), tok)


def separate_mixture(
    sep: Separator,
    mixture: np.ndarray,
    queries: Sequence[str] = (),
    query_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """mono mixture [N] at `sep.config.sample_rate` -> stems [Q, N] (all queries in one pass)."""
    if query_embeddings is None:
        if not queries:
            raise ValueError("separation needs text queries or query embeddings")
        if sep.text_variables is None:
            raise ValueError("this separator checkpoint holds no text encoder: give embeddings")
        if sep.tokenizer is not None:
            ids, mask = sep.tokenizer(list(queries), sep.config.max_text_tokens)
        else:
            ids, mask = byte_fallback_tokens(list(queries), sep.config.text.vocab_size)
        query_embeddings = embed_texts(sep.text_variables, sep.config, ids, mask)
    return separate(sep.sep_variables, sep.config, mixture, query_embeddings)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """`--config` entry point (`configs/separate.py` is this function)."""
    return default_config(arg)
