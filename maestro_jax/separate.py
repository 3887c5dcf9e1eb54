"""Text-queried source separation: one mixture, several text queries, one WAV per query.

    python -m maestro_jax.separate --mixture mix.wav --query "dog barking" --query "violin" \
        --out DIR [--config configs/separate.py[:runlocal]] [--checkpoint DIR] \
        [--query-embeddings q.npz] [--tokenizer-dir DIR] [--chunk-seconds S]

The mixture is loaded as AudioSep does (`librosa.load(sr=32000, mono=True)`: channel mean, then
soxr HQ resampling). Each query is embedded with CLAP's text branch (or taken from
`--query-embeddings`, an .npz holding `embeddings` [Q, 512]); all queries go through the
separator in one batch that shares the mixture's STFT. Writes `DIR/<i>_<query>.wav` (32 kHz,
16-bit, as AudioSep writes) and `DIR/separate.json` (settings and file names).

Library: `maestro_jax.audio.separation`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from maestro_jax.audio.separation import (
    embed_texts,
    load_config,
    load_mixture,
    query_slug,
    random_variables,
    separate,
    write_wav_atomic,
)
from maestro_jax.models.clap_text import ClapTokenizer, byte_fallback_tokens


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
        path = args.out / f"{i:02d}_{query_slug(name)}.wav"
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
