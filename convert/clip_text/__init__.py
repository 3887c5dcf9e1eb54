"""OpenCLIP ViT-H-14 text tower -> `maestro_jax.models.clip_text` params, and the fixture checks
for it (`openclip_text`) and for the CLIP tokenizer (`clip_tokenizer`).

    python -m convert.clip_text checkpoints/base_512_v2/model.ckpt out/clip_text
    python -m convert.clip_text stable-diffusion-2-1/ out/clip_text_sd21     # diffusers folder
        [--heads N] [--hf_trimmed 1] [--trust_pickle]

Two source layouts map into the same Flax tree:
- open_clip / LDM (VideoCrafter2 `model.ckpt`, SD 2.x `.ckpt`): keys under
  `cond_stage_model.model.` (or none): `token_embedding.weight`, `positional_embedding`,
  `transformer.resblocks.i.{ln_1, attn.in_proj_weight/bias (q,k,v rows), attn.out_proj, ln_2,
  mlp.c_fc, mlp.c_proj}`, `ln_final`, `text_projection` (used as x @ P, so not transposed);
  `logit_scale` is not used.
- diffusers / HF `CLIPTextModel` (SD 2.x `text_encoder/`): `text_model.embeddings.*`,
  `text_model.encoder.layers.i.{self_attn.{q,k,v,out}_proj, layer_norm1/2, mlp.fc1/fc2}`,
  `text_model.final_layer_norm`. SD 2.x ships the 24-block tower cut to 23 blocks, so the config
  gets layers=23, trimmed=1, and its 'penultimate' runs all 23 blocks (= HF last_hidden_state).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from convert.common import (
    ConversionError,
    Table,
    apply_table,
    identity,
    linear,
    load_state_dict,
    rows,
    select_prefix,
)
from convert.verify import Check
from maestro_jax.models import clip_text as ct

OPENCLIP_PREFIX = "cond_stage_model.model."
HF_PREFIX = "text_model."


# ----------------------------------------------------------------------------- tables
def _ln(flax: str, key: str) -> Table:
    return {f"{flax}/scale": (f"{key}.weight", identity), f"{flax}/bias": (f"{key}.bias", identity)}


def _dense(flax: str, key: str) -> Table:
    return {f"{flax}/kernel": (f"{key}.weight", linear), f"{flax}/bias": (f"{key}.bias", identity)}


def openclip_table(config: ct.ClipTextConfig, prefix: str = OPENCLIP_PREFIX) -> Table:
    """Flax path -> open_clip key (with `prefix`)."""
    p, w = prefix, config.width
    t: Table = {
        "token_embedding/embedding": (f"{p}token_embedding.weight", identity),
        "positional_embedding": (f"{p}positional_embedding", identity),
        **_ln("ln_final", f"{p}ln_final"),
    }
    if config.embed_dim is not None:
        t["text_projection"] = (f"{p}text_projection", identity)  # x @ P: no transpose
    for i in range(config.layers):
        f, k = f"resblocks_{i}", f"{p}transformer.resblocks.{i}"
        t.update(_ln(f"{f}/ln_1", f"{k}.ln_1"))
        t.update(_ln(f"{f}/ln_2", f"{k}.ln_2"))
        # nn.MultiheadAttention packs q, k, v as row blocks of in_proj_weight (3W, W).
        for j, name in enumerate("qkv"):
            t[f"{f}/attn/{name}_proj/kernel"] = (
                f"{k}.attn.in_proj_weight",
                rows(j * w, (j + 1) * w, linear),
            )
            t[f"{f}/attn/{name}_proj/bias"] = (f"{k}.attn.in_proj_bias", rows(j * w, (j + 1) * w))
        t.update(_dense(f"{f}/attn/out_proj", f"{k}.attn.out_proj"))
        t.update(_dense(f"{f}/mlp/c_fc", f"{k}.mlp.c_fc"))
        t.update(_dense(f"{f}/mlp/c_proj", f"{k}.mlp.c_proj"))
    return t


def openclip_ignore(prefix: str = OPENCLIP_PREFIX) -> list[str]:
    """Keys deliberately unused: the contrastive temperature, and the causal mask buffer that
    older open_clip versions saved (it is rebuilt as `clip_text.causal_bias`)."""
    return [re.escape(prefix) + "logit_scale", re.escape(prefix) + "attn_mask"]


def hf_table(config: ct.ClipTextConfig, prefix: str = HF_PREFIX) -> Table:
    """Flax path -> diffusers/HF `CLIPTextModel` key (with `prefix`). No text_projection."""
    if config.embed_dim is not None:
        raise ValueError("HF CLIPTextModel has no text_projection: use embed_dim=None")
    p = prefix
    t: Table = {
        "token_embedding/embedding": (f"{p}embeddings.token_embedding.weight", identity),
        "positional_embedding": (f"{p}embeddings.position_embedding.weight", identity),
        **_ln("ln_final", f"{p}final_layer_norm"),
    }
    for i in range(config.layers):
        f, k = f"resblocks_{i}", f"{p}encoder.layers.{i}"
        t.update(_ln(f"{f}/ln_1", f"{k}.layer_norm1"))
        t.update(_ln(f"{f}/ln_2", f"{k}.layer_norm2"))
        for name in ("q", "k", "v", "out"):
            t.update(_dense(f"{f}/attn/{name}_proj", f"{k}.self_attn.{name}_proj"))
        t.update(_dense(f"{f}/mlp/c_fc", f"{k}.mlp.fc1"))
        t.update(_dense(f"{f}/mlp/c_proj", f"{k}.mlp.fc2"))
    return t


def hf_ignore(prefix: str = HF_PREFIX) -> list[str]:
    """`position_ids` is an index buffer some transformers versions saved."""
    return [re.escape(prefix) + r"embeddings\.position_ids"]


# ----------------------------------------------------------------------------- conversion
def detect_layout(sd: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """('openclip' | 'hf', key prefix) of a state dict; raises ConversionError if neither."""
    for layout, prefix, probe in (
        ("openclip", OPENCLIP_PREFIX, "token_embedding.weight"),
        ("openclip", "", "token_embedding.weight"),
        ("hf", HF_PREFIX, "embeddings.token_embedding.weight"),
    ):
        if prefix + probe in sd:
            return layout, prefix
    raise ConversionError(
        "no OpenCLIP text tower found: expected 'cond_stage_model.model.token_embedding.weight' "
        "(VideoCrafter2 / SD 2.x .ckpt), 'token_embedding.weight' (open_clip) or "
        "'text_model.embeddings.token_embedding.weight' (diffusers text_encoder/)"
    )


def _count(sd: Mapping[str, np.ndarray], pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in sd if (m := rx.fullmatch(k))}
    if idx != set(range(len(idx))):
        raise ConversionError(f"block indices are not contiguous from 0: {sorted(idx)}")
    return len(idx)


def infer_config(
    sd: Mapping[str, np.ndarray],
    layout: str,
    prefix: str,
    *,
    heads: int | None = None,
    hf_trimmed: int = 1,
    ln_eps: float = 1e-5,
) -> ct.ClipTextConfig:
    """The config a state dict implies. Head counts are not in the weights: `heads` or, by
    default, width // 64 (every open_clip text tower uses 64-wide heads; ViT-H-14: 16)."""
    p = prefix
    if layout == "openclip":
        vocab, width = sd[p + "token_embedding.weight"].shape
        context = sd[p + "positional_embedding"].shape[0]
        layers = _count(sd, re.escape(p) + r"transformer\.resblocks\.(\d+)\.ln_1\.weight")
        mlp = sd[p + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
        proj = sd.get(p + "text_projection")
        embed_dim, trimmed = (None if proj is None else int(proj.shape[1])), 0
    elif layout == "hf":
        vocab, width = sd[p + "embeddings.token_embedding.weight"].shape
        context = sd[p + "embeddings.position_embedding.weight"].shape[0]
        layers = _count(sd, re.escape(p) + r"encoder\.layers\.(\d+)\.layer_norm1\.weight")
        mlp = sd[p + "encoder.layers.0.mlp.fc1.weight"].shape[0]
        embed_dim, trimmed = None, hf_trimmed
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return ct.ClipTextConfig(
        vocab_size=int(vocab),
        context_length=int(context),
        width=int(width),
        heads=int(heads or width // 64),
        layers=layers,
        mlp_ratio=mlp / width,
        embed_dim=embed_dim,
        trimmed=trimmed,
        ln_eps=ln_eps,
    )


def convert_state_dict(
    sd: Mapping[str, np.ndarray],
    config: ct.ClipTextConfig | None = None,
    *,
    heads: int | None = None,
    hf_trimmed: int = 1,
) -> tuple[dict, ct.ClipTextConfig]:
    """State dict (either layout, any prefix above) -> (params, config).

    Only the text-tower keys are read (a whole VideoCrafter2 checkpoint is fine); among them,
    any missing, unexpected or mis-shaped key raises `ConversionError`.
    """
    layout, prefix = detect_layout(sd)
    if prefix:
        sd = select_prefix(sd, prefix)
    if config is None:
        config = infer_config(sd, layout, "", heads=heads, hf_trimmed=hf_trimmed)
    if layout == "openclip":
        table, ignore = openclip_table(config, ""), openclip_ignore("")
    else:
        table, ignore = hf_table(config, ""), hf_ignore("")
    params = apply_table(sd, table, ct.abstract_params(config), ignore=ignore)
    return params, config


# ----------------------------------------------------------------------------- fixtures
def _fixture_config(fixture_dir: Path) -> ct.ClipTextConfig:
    with open(fixture_dir / "config.json") as f:
        cfg = json.load(f)
    return ct.from_open_clip_config(cfg["open_clip_model_config"])


def verify_openclip_text(fixture_dir: Path) -> list[Check]:
    """VideoCrafter2 `FrozenOpenCLIPEmbedder` ('penultimate' and 'last'), open_clip's pooled
    `encode_text`, and our tokenizer on the fixture's prompts (exact ids).

    Tolerance (fixture README): max|y - out| <= 1e-4 * max|out| per array.
    """
    from maestro_jax.models.tokenizer import BPE_FILENAME, ClipTokenizer

    fixture_dir = Path(fixture_dir)
    config = _fixture_config(fixture_dir)
    sd = load_state_dict(fixture_dir / "state_dict.safetensors")  # float16 -> float32
    params, config = convert_state_dict(sd, config)
    io = np.load(fixture_dir / "io.npz", allow_pickle=False)
    tokens = np.asarray(io["in_tokens"])

    module = ct.ClipTextTransformer(config)
    out = jax.jit(
        lambda p, t: module.apply({"params": p}, t, method=ct.ClipTextTransformer.encode_all)
    )(params, tokens.astype(np.int32))
    out = jax.tree.map(np.asarray, out)

    tok = ClipTokenizer(fixture_dir.parent / "clip_tokenizer" / BPE_FILENAME)
    ids = tok([str(t) for t in io["in_texts"]])
    tol, metric = 1e-4, "max_rel"
    return [
        Check("in_tokens (our tokenizer)", ids, tokens, metric="exact"),
        Check("out_penultimate", out["penultimate"], io["out_penultimate"], tol, metric),
        Check("out_last", out["last"], io["out_last"], tol, metric),
        Check("out_block_states", out["block_states"], io["out_block_states"], tol, metric),
        Check("out_pooled", out["pooled"], io["out_pooled"], tol, metric),
    ]


def verify_clip_tokenizer(fixture_dir: Path) -> list[Check]:
    """`open_clip.tokenize` ids and pre-truncation lengths, exactly."""
    from maestro_jax.models.tokenizer import BPE_FILENAME, ClipTokenizer

    fixture_dir = Path(fixture_dir)
    with open(fixture_dir / "config.json") as f:
        cfg = json.load(f)
    io = np.load(fixture_dir / "io.npz", allow_pickle=False)
    tok = ClipTokenizer(fixture_dir / BPE_FILENAME, context_length=cfg["context_length"])
    ids, full_len = tok.tokenize_with_lengths([str(t) for t in io["in_texts"]])
    return [
        Check("out_ids", ids, io["out_ids"], metric="exact"),
        Check("out_full_len", full_len, io["out_full_len"], metric="exact"),
    ]


# ----------------------------------------------------------------------------- sources
def read_source(src: Path, *, trust_pickle: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """State dict (stored dtypes, memory-mapped where possible) + the HF config.json (empty if
    none) of a file, a diffusers pipeline folder (uses its text_encoder/) or a text_encoder
    folder."""
    hf_cfg: dict = {}
    if src.is_dir():
        if (src / "text_encoder").is_dir():
            src = src / "text_encoder"
        if (src / "config.json").is_file():
            with open(src / "config.json") as f:
                hf_cfg = json.load(f)
        if not any(src.glob("*.safetensors")):
            bins = sorted(src.glob("*.bin"))
            if not bins:
                raise ConversionError(f"no *.safetensors or *.bin weights in {src}")
            return load_state_dict(bins[0], dtype=None, trust_pickle=trust_pickle), hf_cfg
    return load_state_dict(src, dtype=None, trust_pickle=trust_pickle), hf_cfg
