"""Text caches of the CIM trainer: the frozen text encoder's null embedding and the class
labels' embeddings, computed once at start (the encoder is dropped afterwards)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from maestro_jax.models import clip_text
from maestro_jax.models.tokenizer import HashTokenizer
from maestro_jax.training.cim_loss import Models
from maestro_jax.training.cim_state import check_tree, random_params


def make_tokenizer(config: Any) -> Callable:
    tc = config.model.text
    if tc.tokenizer == "hash":
        return HashTokenizer()
    if tc.tokenizer == "clip":
        from maestro_jax.models.tokenizer import get_tokenizer

        return get_tokenizer(tc.bpe_path or None)
    raise ValueError(f"model.text.tokenizer must be 'clip' or 'hash', got {tc.tokenizer!r}")


def text_caches(
    config: Any, models: Models, labels: Sequence[str], chunk: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(null_emb [77, D], label_emb [C, 77, D]) float32 numpy, from the frozen text encoder
    (`model.text.params`, or random with `model.random_init`) at `model.text.layer`. Computed
    once at start; the encoder is dropped afterwards."""
    from maestro_jax.checkpoints import load_params

    tc, cfg = config.model.text, models.text
    if tc.params:
        params, _ = load_params(tc.params)
        check_tree(f"model.text.params ({tc.params})", params, clip_text.abstract_params(cfg))
    elif config.model.random_init:
        params = random_params(clip_text.abstract_params(cfg), int(config.seed) + 10)
    else:
        raise ValueError(
            "model.text.params is empty: give the folder written by `python -m convert.clip_text "
            "...`, or set model.random_init=True for a smoke run"
        )
    tok = make_tokenizer(config)
    prompts = [tc.prompt.format(lab) for lab in labels]
    null = np.asarray(clip_text.encode_text(params, cfg, tok, [""], tc.layer)[0], np.float32)
    embs = [
        np.asarray(clip_text.encode_text(params, cfg, tok, prompts[i : i + chunk], tc.layer))
        for i in range(0, len(prompts), chunk)
    ]
    return null, np.concatenate(embs, 0).astype(np.float32)
