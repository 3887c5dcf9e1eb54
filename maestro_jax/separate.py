"""Text-queried source separation: one mixture, several text queries, one WAV per query.

    python -m maestro_jax.separate --mixture mix.wav --query "dog barking" --query "violin" \
        --out DIR --checkpoint ckpt/audiosep --tokenizer_dir roberta-base/
    python -m maestro_jax.separate --mixture mix.wav --query dog --out DIR \
        --config=configs/separate.py:runlocal          # tiny random weights, no files needed

Options: `--query_embeddings q.npz` (an .npz holding `embeddings` [Q, 512]) instead of text
queries; `--config.chunk_seconds=S` to separate long files in overlapping chunks.

The mixture is loaded as AudioSep does (`librosa.load(sr=32000, mono=True)`: channel mean, then
soxr HQ resampling). Each query is embedded with CLAP's text branch (or taken from
`--query_embeddings`); all queries go through the separator in one batch that shares the
mixture's STFT. Writes `DIR/<i>_<query>.wav` (32 kHz, 16-bit, as AudioSep writes) and
`DIR/separate.json` (settings, file names, and warnings: a query naming none of the classes a
separator export records in its config.json `labels`). DIR is checked writable before any
compute; an empty query is refused. `ckpt/audiosep` comes from
`python -m convert.audiosep audiosep_base_4M_steps.ckpt ckpt/audiosep`; `roberta-base/` holds
roberta-base's `vocab.json` and `merges.txt`. Library: `maestro_jax.audio.separation`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from absl import flags
from ml_collections import config_flags

from maestro_jax import cli
from maestro_jax.audio import separation
from maestro_jax.audio.separation import (
    embed_texts,
    load_mixture,
    query_slug,
    random_variables,
    separate,
    write_wav_atomic,
)
from maestro_jax.files import write_json
from maestro_jax.generation.jobs import InputError
from maestro_jax.generation.outdir import check_outdir
from maestro_jax.models.clap_text import ClapTokenizer, byte_fallback_tokens

_CONFIG = config_flags.DEFINE_config_file(
    "config", separation.__file__, "separation config (configs/separate.py[:runlocal])"
)
_MIXTURE = flags.DEFINE_string("mixture", None, "mixture audio file", required=True)
_QUERY = flags.DEFINE_multi_string("query", [], "text query (repeatable)")
_OUT = flags.DEFINE_string("out", None, "output folder", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "convert.audiosep output folder")
_QEMB = flags.DEFINE_string("query_embeddings", None, ".npz holding `embeddings` [Q, D]")
_TOKENIZER = flags.DEFINE_string("tokenizer_dir", None, "roberta-base vocab.json + merges.txt")


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


def _export_labels(checkpoint: Path) -> list[str] | None:
    """The classes a separator export was trained on (its config.json `labels`; converted
    AudioSep weights have none)."""
    try:
        labels = json.loads((checkpoint / "config.json").read_text()).get("labels")
    except (OSError, ValueError, AttributeError):
        return None
    return [str(lab) for lab in labels] if isinstance(labels, list) else None


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    mixture_path, out_dir = Path(_MIXTURE.value), Path(_OUT.value)
    qemb_path = Path(_QEMB.value) if _QEMB.value else None
    checkpoint = Path(_CHECKPOINT.value) if _CHECKPOINT.value else None
    # Validate everything before any compute.
    if not mixture_path.is_file():
        return cli.error(f"mixture not found: {mixture_path}")
    if not _QUERY.value and qemb_path is None:
        return cli.error("give at least one --query (or --query_embeddings)")
    if any(not q.strip() for q in _QUERY.value):
        return cli.error("--query: an empty query; give one text query per source")
    try:
        check_outdir(out_dir, "--out")
    except InputError as e:
        return cli.error(str(e))
    if not config.random_init and checkpoint is None:
        return cli.error(
            "--checkpoint is required (convert one with `python -m convert.audiosep "
            "audiosep_base_4M_steps.ckpt DIR`), or use --config=configs/separate.py:runlocal"
        )
    if qemb_path is not None and not qemb_path.is_file():
        return cli.error(f"query embeddings not found: {qemb_path}")
    tokenizer = None
    if qemb_path is None and (_TOKENIZER.value or not config.random_init):
        if _TOKENIZER.value is None:
            return cli.error("--tokenizer_dir (roberta-base vocab.json + merges.txt) needed")
        tokenizer = ClapTokenizer.from_dir(_TOKENIZER.value)

    notes = []
    labels = _export_labels(checkpoint) if checkpoint is not None else None
    for q in _QUERY.value if labels else ():
        if q.strip().lower() not in {str(lab).strip().lower() for lab in labels}:
            notes.append(f"query {q!r} names none of the separator's classes ({', '.join(labels)})")
            print(f"warning: {notes[-1]}")
    if config.random_init:
        sep_vars, text_vars = random_variables(config, config.seed)
        notes.append("RANDOM WEIGHTS: tiny random-initialised separator and text encoder")
        print(f"note: {notes[-1]} (outputs are not meaningful separations)")
    else:
        from maestro_jax.checkpoints import load_params

        tree, _ = load_params(checkpoint)
        sep_vars, text_vars = tree["separator"], tree.get("text")

    if qemb_path is not None:
        emb, names = _load_query_embeddings(qemb_path, _QUERY.value)
    else:
        names = list(_QUERY.value)
        if tokenizer is not None:
            ids, mask = tokenizer(names, config.max_text_tokens)
        else:
            ids, mask = byte_fallback_tokens(names, config.text.vocab_size)
            notes.append("byte fallback tokenizer (no --tokenizer_dir)")
            print(f"note: {notes[-1]}")
        if text_vars is None:
            return cli.error(f"{checkpoint} holds no text encoder; use --query_embeddings")
        emb = embed_texts(text_vars, config, ids, mask)

    mixture = load_mixture(mixture_path, config.sample_rate)
    out = separate(sep_vars, config, mixture, emb)

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (name, y) in enumerate(zip(names, out, strict=True)):
        path = out_dir / f"{i:02d}_{query_slug(name)}.wav"
        write_wav_atomic(path, y, config.sample_rate)
        files.append(path.name)
    settings = {
        "mixture": str(mixture_path),
        "sample_rate": config.sample_rate,
        "num_samples": int(mixture.shape[0]),
        "queries": names,
        "files": files,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "query_embeddings": None if qemb_path is None else str(qemb_path),
        "random_init": bool(config.random_init),
        "notes": notes,
        "config": json.loads(config.to_json()),
    }
    write_json(out_dir / "separate.json", settings)
    for f in files:
        print(out_dir / f)
    return 0


if __name__ == "__main__":
    cli.run(main)
