"""Text-queried source separation: one mixture, several text queries, one WAV per query.

    python -m maestro_jax.separate --mixture mix.wav --query "dog barking" --query "violin" \
        --out DIR [--config configs/separate.py[:runlocal]] [--checkpoint DIR] \
        [--query-embeddings q.npz] [--tokenizer-dir DIR] [--chunk-seconds S]

The mixture is loaded as AudioSep does (`librosa.load(sr=32000, mono=True)`: channel mean, then
soxr HQ resampling). Each query is embedded with CLAP's text branch (or taken from
`--query-embeddings`, an .npz holding `embeddings` [Q, 512]); all queries go through the
separator in one batch that shares the mixture's STFT. Writes `DIR/<i>_<query>.wav` (32 kHz,
16-bit, as AudioSep writes) and `DIR/separate.json` (settings and file names).

Library entry point: `separate(variables, config, mixture [N], query_embeddings [Q, D])`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from maestro_jax.models.audiosep import ResUNet30, chunked_apply
from maestro_jax.models.clap_text import (
    ClapTextConfig,
    ClapTextEncoder,
    ClapTokenizer,
    byte_fallback_tokens,
)
from maestro_jax.models.stft import N_FFT
from maestro_jax.nn.random_init import random_like

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "separate.py"


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
      config: a `configs/separate.py` config (separator widths, chunking).
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
    """`path/to/config.py[:variant]` -> `get_config(variant)`."""
    spec = spec or str(DEFAULT_CONFIG)
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
    try:
        sf.write(tmp, pcm, sr, subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:40] or "query"


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mixture", required=True, type=Path, help="mixture audio file")
    ap.add_argument("--query", action="append", default=[], help="text query (repeatable)")
    ap.add_argument("--out", required=True, type=Path, help="output folder")
    ap.add_argument("--config", default=None, help="configs/separate.py[:runlocal]")
    ap.add_argument("--checkpoint", type=Path, default=None, help="convert.audiosep output")
    ap.add_argument("--query-embeddings", type=Path, default=None, help=".npz with embeddings")
    ap.add_argument("--tokenizer-dir", type=Path, default=None, help="vocab.json + merges.txt")
    ap.add_argument("--chunk-seconds", type=float, default=None, help="override the config")
    return ap.parse_args(argv)


def _load_query_embeddings(path: Path, queries: list[str]) -> tuple[np.ndarray, list[str]]:
    with np.load(path) as z:
        key = (
            "embeddings" if "embeddings" in z.files else (z.files[0] if len(z.files) == 1 else None)
        )
        if key is None:
            raise ValueError(f"{path}: want an array named 'embeddings', found {z.files}")
        emb = np.asarray(z[key], np.float32)
    if emb.ndim != 2:
        raise ValueError(f"{path}: embeddings must be [Q, D], got {emb.shape}")
    if queries and len(queries) != emb.shape[0]:
        raise ValueError(f"{len(queries)} --query names for {emb.shape[0]} embeddings in {path}")
    return emb, queries or [f"query{i}" for i in range(emb.shape[0])]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config)
    if args.chunk_seconds is not None:
        config.chunk_seconds = args.chunk_seconds
    # Validate everything before any compute.
    if not args.mixture.is_file():
        raise SystemExit(f"error: mixture not found: {args.mixture}")
    if not args.query and args.query_embeddings is None:
        raise SystemExit("error: give at least one --query (or --query-embeddings)")
    if not config.random_init and args.checkpoint is None:
        raise SystemExit(
            "error: --checkpoint is required (convert one with `python -m convert.audiosep "
            "audiosep_base_4M_steps.ckpt DIR`), or use --config configs/separate.py:runlocal"
        )
    if args.query_embeddings is not None and not args.query_embeddings.is_file():
        raise SystemExit(f"error: query embeddings not found: {args.query_embeddings}")
    tokenizer = None
    if args.query_embeddings is None and (args.tokenizer_dir or not config.random_init):
        if args.tokenizer_dir is None:
            raise SystemExit("error: --tokenizer-dir (roberta-base vocab.json + merges.txt) needed")
        tokenizer = ClapTokenizer.from_dir(args.tokenizer_dir)

    notes = []
    if config.random_init:
        sep_vars, text_vars = random_variables(config, config.seed)
        notes.append("RANDOM WEIGHTS: tiny random-initialised separator and text encoder")
        print(f"note: {notes[-1]} (outputs are not meaningful separations)")
    else:
        from maestro_jax.checkpoints import load_params

        tree, _ = load_params(args.checkpoint)
        sep_vars, text_vars = tree["separator"], tree.get("text")

    if args.query_embeddings is not None:
        emb, names = _load_query_embeddings(args.query_embeddings, args.query)
    else:
        names = list(args.query)
        if tokenizer is not None:
            ids, mask = tokenizer(names, config.max_text_tokens)
        else:
            ids, mask = byte_fallback_tokens(names, config.text.vocab_size)
            notes.append("byte fallback tokenizer (no --tokenizer-dir)")
            print(f"note: {notes[-1]}")
        if text_vars is None:
            raise SystemExit(
                f"error: {args.checkpoint} holds no text encoder; use --query-embeddings"
            )
        emb = embed_texts(text_vars, config, ids, mask)

    mixture = load_mixture(args.mixture, config.sample_rate)
    out = separate(sep_vars, config, mixture, emb)

    args.out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (name, y) in enumerate(zip(names, out, strict=True)):
        path = args.out / f"{i:02d}_{_slug(name)}.wav"
        write_wav_atomic(path, y, config.sample_rate)
        files.append(path.name)
    settings = {
        "mixture": str(args.mixture),
        "sample_rate": config.sample_rate,
        "num_samples": int(mixture.shape[0]),
        "queries": names,
        "files": files,
        "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "query_embeddings": None if args.query_embeddings is None else str(args.query_embeddings),
        "random_init": bool(config.random_init),
        "notes": notes,
        "config": json.loads(config.to_json()),
    }
    tmp = args.out / ".separate.json.tmp"
    tmp.write_text(json.dumps(settings, indent=1))
    os.replace(tmp, args.out / "separate.json")
    for f in files:
        print(args.out / f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
