"""CLAP's text query encoder as AudioSep uses it: RoBERTa + pooler + projection, L2-normalised.

`Audio-AGI/AudioSep@944583f` `models/clap_encoder.py` -> vendored CLAP `encode_text`
(docs/models.md, "CLAP text encoder"; fixture `clap_text/`):

    ids [B, L], mask [B, L] --RoBERTa (post-LN, eps 1e-5, exact GELU)--> h [B, L, 768]
    pooler = tanh(dense(h[:, 0]))  -> text_projection = Linear(768->512) -> ReLU -> Linear(512->512)
    -> L2 normalise -> [B, 512]

RoBERTa position ids come from the ids (transformers `create_position_ids_from_input_ids`):
cumsum(ids != pad) * (ids != pad) + pad, so real tokens get 2, 3, ... and pads get 1.
Padding is masked with an additive float32-min bias, so the padded length does not change the
result (only truncation at 512 tokens does).

`ClapTokenizer` reads the user's roberta-base `vocab.json` + `merges.txt` with the `tokenizers`
library (byte-level BPE, no prefix space, `<s> ... </s>`); nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.nn.attention import dot_product_attention, merge_heads, split_heads
from maestro_jax.nn.layers import Dense, LayerNorm, gelu_exact

LN_EPS = 1e-5  # roberta-base layer_norm_eps (Flax's default would be 1e-6)
PAD_ID = 1
BOS_ID = 0
EOS_ID = 2
MAX_TEXT_TOKENS = 512  # AudioSep tokenises with max_length=512 (514 positions - 2)


@dataclasses.dataclass(frozen=True)
class ClapTextConfig:
    """roberta-base + CLAP's 768 -> 512 -> 512 projection by default."""

    vocab_size: int = 50265
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 514
    type_vocab: int = 1
    eps: float = LN_EPS
    pad_id: int = PAD_ID
    joint: int = 512


def position_ids(input_ids: jax.Array, pad_id: int = PAD_ID) -> jax.Array:
    """RoBERTa position ids: real tokens pad_id + 1, pad_id + 2, ...; pads pad_id."""
    mask = (input_ids != pad_id).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + pad_id


class RobertaLayer(nn.Module):
    """Post-LN transformer layer: LN(x + attn(x)), then LN(h + W2 gelu(W1 h))."""

    cfg: ClapTextConfig
    dtype: jnp.dtype = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array) -> jax.Array:
        cfg = self.cfg
        dense = lambda n, name: Dense(n, dtype=self.dtype, name=name)
        q = split_heads(dense(cfg.hidden, "query")(x), cfg.heads)
        k = split_heads(dense(cfg.hidden, "key")(x), cfg.heads)
        v = split_heads(dense(cfg.hidden, "value")(x), cfg.heads)
        a = merge_heads(dot_product_attention(q, k, v, bias=bias, impl=self.attn_impl))
        x = LayerNorm(cfg.eps, name="attention_ln")(x + dense(cfg.hidden, "attention_out")(a))
        h = gelu_exact(dense(cfg.intermediate, "intermediate")(x))
        return LayerNorm(cfg.eps, name="output_ln")(x + dense(cfg.hidden, "output")(h))


class ClapTextEncoder(nn.Module):
    """`text_branch` (RobertaModel with pooler) + `text_projection`, L2-normalised.

    Params: `embeddings/{word,position,token_type}/embedding`, `embeddings/ln`, `layer_{i}/...`,
    `pooler`, `projection_0`, `projection_2` (the Sequential's indices).
    """

    cfg: ClapTextConfig = ClapTextConfig()
    dtype: jnp.dtype = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Args: input_ids, attention_mask [B, L] int (mask 1 = token, 0 = pad).
        Returns: [B, joint] unit-norm float32 text embeddings."""
        cfg = self.cfg
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"want input_ids and attention_mask [B, L], got {input_ids.shape}, "
                f"{attention_mask.shape}"
            )
        if input_ids.shape[1] > cfg.max_positions - cfg.pad_id - 1:
            raise ValueError(
                f"{input_ids.shape[1]} tokens exceed RoBERTa's "
                f"{cfg.max_positions - cfg.pad_id - 1} positions"
            )
        emb = lambda n, name: nn.Embed(n, cfg.hidden, param_dtype=jnp.float32, name=name)
        pos = position_ids(input_ids, cfg.pad_id)
        x = (
            emb(cfg.vocab_size, "word")(input_ids)
            + emb(cfg.type_vocab, "token_type")(jnp.zeros_like(input_ids))
            + emb(cfg.max_positions, "position")(pos)
        )
        x = LayerNorm(cfg.eps, name="embeddings_ln")(x).astype(self.dtype)
        self.sow("intermediates", "embeddings", x)
        # transformers' additive mask: 0 on tokens, float32 min on pads, over keys.
        keep = attention_mask.astype(bool)[:, None, None, :]
        bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
        for i in range(cfg.layers):
            x = RobertaLayer(cfg, self.dtype, self.attn_impl, name=f"layer_{i}")(x, bias)
        self.sow("intermediates", "last_hidden_state", x)
        pooled = jnp.tanh(Dense(cfg.hidden, dtype=self.dtype, name="pooler")(x[:, 0]))
        self.sow("intermediates", "pooler_output", pooled)
        h = jax.nn.relu(Dense(cfg.joint, dtype=self.dtype, name="projection_0")(pooled))
        proj = Dense(cfg.joint, dtype=self.dtype, name="projection_2")(h).astype(jnp.float32)
        self.sow("intermediates", "projection", proj)
        # F.normalize(dim=-1): x / max(||x||, 1e-12)
        norm = jnp.sqrt(jnp.sum(proj * proj, axis=-1, keepdims=True))
        return proj / jnp.maximum(norm, 1e-12)


class ClapTokenizer:
    """roberta-base byte-level BPE from user-supplied `vocab.json` + `merges.txt`.

    Encodes `<s> text </s>`, truncated to `max_length` (512, as AudioSep), padded with the pad
    id to the longest text in the batch (not to 512: with the attention mask the padded length
    does not change the embedding, and 512-token batches would be slow on CPU).
    """

    def __init__(self, vocab_file: str | os.PathLike, merges_file: str | os.PathLike):
        missing = [str(p) for p in (vocab_file, merges_file) if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(
                "CLAP text tokenizer files not found: "
                + ", ".join(missing)
                + " (pass --tokenizer-dir with roberta-base's vocab.json and merges.txt)"
            )
        try:
            from tokenizers import ByteLevelBPETokenizer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("the CLAP tokenizer needs `pip install tokenizers`") from e
        self._tok = ByteLevelBPETokenizer(str(vocab_file), str(merges_file), add_prefix_space=False)
        vocab = self._tok.get_vocab()
        for name, want in (("<s>", BOS_ID), ("<pad>", PAD_ID), ("</s>", EOS_ID)):
            got = vocab.get(name)
            if got is not None and got != want:
                raise ValueError(f"{vocab_file}: {name} has id {got}, roberta-base uses {want}")
        self.bos, self.pad, self.eos = BOS_ID, PAD_ID, EOS_ID

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> ClapTokenizer:
        d = Path(directory)
        return cls(d / "vocab.json", d / "merges.txt")

    def __call__(
        self, texts: list[str], max_length: int = MAX_TEXT_TOKENS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns (input_ids, attention_mask), each [B, L] int32."""
        if isinstance(texts, str):
            texts = [texts]
        seqs = [[self.bos] + self._tok.encode(t).ids[: max_length - 2] + [self.eos] for t in texts]
        length = max(len(s) for s in seqs)
        ids = np.full((len(seqs), length), self.pad, np.int32)
        mask = np.zeros((len(seqs), length), np.int32)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return ids, mask


def byte_fallback_tokens(
    texts: list[str], vocab_size: int, max_length: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """A stand-in tokenizer for random-weight smoke runs only (no vocabulary files): ids are the
    UTF-8 bytes folded into [3, vocab_size). Never use it with real weights."""
    seqs = [
        [BOS_ID] + [3 + b % (vocab_size - 3) for b in t.encode()[: max_length - 2]] + [EOS_ID]
        for t in texts
    ]
    length = max(len(s) for s in seqs)
    ids = np.full((len(seqs), length), PAD_ID, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
