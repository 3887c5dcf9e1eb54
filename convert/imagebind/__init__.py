"""ImageBind `imagebind_huge.pth` -> Flax params of `maestro_jax.models.imagebind`.

    python -m convert.imagebind imagebind_huge.pth OUT [--modalities audio,vision,text]
        [--torch_config config.json]   # other sizes: ImageBindModel kwargs (default: huge)
        [--trust_pickle]               # see convert.common.load_state_dict

The output params tree is `{modality: params}` for the chosen modalities (default all three).
The checkpoint holds six modalities; the depth, thermal and IMU keys are ignored **by name**
(`IGNORE_OTHER_MODALITIES`), as are the keys of audio/vision/text branches not selected. The
text branch's causal `mask` buffer is not a parameter: it is checked to be the causal -inf mask
and then dropped. Everything else must map one to one, at the right shapes.

`verify_imagebind_audio(fixture_dir)` checks the port against the `imagebind_audio` fixture.
`convert_file` is what the command (`convert/imagebind/__main__.py`) runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from convert.common import (
    ConversionError,
    Table,
    apply_table,
    conv2d,
    conv3d,
    identity,
    linear,
    load_full_keys,
    load_state_dict,
    strip_prefix_if_all,
)
from maestro_jax.models import imagebind as ib

MODALITIES = ib.MODALITIES
_GROUPS = r"modality_(preprocessors|trunks|heads|postprocessors)"
# ImageBind-Huge's other three modalities: never used by Maestro, dropped by name.
IGNORE_OTHER_MODALITIES = (rf"{_GROUPS}\.(depth|thermal|imu)\..+",)
TEXT_MASK_KEY = "modality_preprocessors.text.mask"


def _ln(flax: str, torch: str) -> Table:
    return {
        f"{flax}/scale": (f"{torch}.weight", identity),
        f"{flax}/bias": (f"{torch}.bias", identity),
    }


def _dense(flax: str, torch: str, bias: bool = True) -> Table:
    t = {f"{flax}/kernel": (f"{torch}.weight", linear)}
    if bias:
        t[f"{flax}/bias"] = (f"{torch}.bias", identity)
    return t


def _trunk(flax: str, torch: str, depth: int, add_bias_kv: bool) -> Table:
    t: Table = {}
    for i in range(depth):
        f, p = f"{flax}/blocks_{i}", f"{torch}.blocks.{i}"
        t |= _ln(f"{f}/norm_1", f"{p}.norm_1")
        t |= _ln(f"{f}/norm_2", f"{p}.norm_2")
        # in_proj_weight rows are q, k, v: its transpose is the packed (D, 3D) kernel
        t[f"{f}/attn/in_proj/kernel"] = (f"{p}.attn.in_proj_weight", linear)
        t[f"{f}/attn/in_proj/bias"] = (f"{p}.attn.in_proj_bias", identity)
        t |= _dense(f"{f}/attn/out_proj", f"{p}.attn.out_proj")
        if add_bias_kv:
            t[f"{f}/attn/bias_k"] = (f"{p}.attn.bias_k", identity)
            t[f"{f}/attn/bias_v"] = (f"{p}.attn.bias_v", identity)
        t |= _dense(f"{f}/fc1", f"{p}.mlp.fc1")
        t |= _dense(f"{f}/fc2", f"{p}.mlp.fc2")
    return t


def audio_table(cfg: ib.ImageBindConfig) -> Table:
    pre, m = "modality_preprocessors.audio", "audio"
    t: Table = {
        f"{m}/stem/kernel": (f"{pre}.rgbt_stem.proj.weight", conv2d),
        f"{m}/cls_token": (f"{pre}.cls_token", identity),
        f"{m}/pos_embed": (f"{pre}.pos_embedding_helper.pos_embed", identity),
        f"{m}/log_logit_scale": ("modality_postprocessors.audio.1.log_logit_scale", identity),
    }
    t |= _ln(f"{m}/stem_norm", f"{pre}.rgbt_stem.norm_layer")
    t |= _trunk(f"{m}/trunk", "modality_trunks.audio", cfg.audio_depth, add_bias_kv=True)
    t |= _ln(f"{m}/head_norm", "modality_heads.audio.0")  # index 1 is SelectElement(0)
    t |= _dense(f"{m}/head_proj", "modality_heads.audio.2", bias=False)
    return t


def vision_table(cfg: ib.ImageBindConfig) -> Table:
    pre, m = "modality_preprocessors.vision", "vision"
    t: Table = {
        # rgbt_stem.proj = Sequential(PadIm2Video, Conv3d): the conv is index 1
        f"{m}/stem": (f"{pre}.rgbt_stem.proj.1.weight", conv3d),
        f"{m}/cls_token": (f"{pre}.cls_token", identity),
        f"{m}/pos_embed": (f"{pre}.pos_embedding_helper.pos_embed", identity),
    }
    t |= _ln(f"{m}/pre_norm", "modality_trunks.vision.pre_transformer_layer.0")
    t |= _trunk(f"{m}/trunk", "modality_trunks.vision", cfg.vision_depth, add_bias_kv=False)
    t |= _ln(f"{m}/head_norm", "modality_heads.vision.0")
    t |= _dense(f"{m}/head_proj", "modality_heads.vision.2", bias=False)
    return t


def text_table(cfg: ib.ImageBindConfig) -> Table:
    pre, m = "modality_preprocessors.text", "text"
    t: Table = {
        f"{m}/token_embedding/embedding": (f"{pre}.token_embedding.weight", identity),
        f"{m}/pos_embed": (f"{pre}.pos_embed", identity),
        f"{m}/log_logit_scale": ("modality_postprocessors.text.1.log_logit_scale", identity),
    }
    t |= _trunk(f"{m}/trunk", "modality_trunks.text", cfg.text_depth, add_bias_kv=False)
    # SelectEOSAndProject(proj=Sequential(LayerNorm, Linear(no bias)))
    t |= _ln(f"{m}/head_norm", "modality_heads.text.proj.0")
    t |= _dense(f"{m}/head_proj", "modality_heads.text.proj.1", bias=False)
    return t


_TABLES = {"audio": audio_table, "vision": vision_table, "text": text_table}


def _check_modalities(modalities: Iterable[str]) -> tuple[str, ...]:
    mods = tuple(dict.fromkeys(modalities))
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}; got {mods}")
    return mods


def table_for(cfg: ib.ImageBindConfig, modalities: Sequence[str] = MODALITIES) -> Table:
    t: Table = {}
    for m in _check_modalities(modalities):
        t |= _TABLES[m](cfg)
    return t


def ignore_for(modalities: Sequence[str] = MODALITIES) -> tuple[str, ...]:
    """Regexes of checkpoint keys deliberately left out (by name)."""
    mods = _check_modalities(modalities)
    skipped = [m for m in MODALITIES if m not in mods]
    ign = list(IGNORE_OTHER_MODALITIES)
    if skipped:
        ign.append(rf"{_GROUPS}\.({'|'.join(skipped)})\..+")
    if "text" in mods:
        ign.append(TEXT_MASK_KEY.replace(".", r"\."))
    return tuple(ign)


def target_for(cfg: ib.ImageBindConfig, modalities: Sequence[str] = MODALITIES) -> dict:
    return ib.init_shapes(cfg, _check_modalities(modalities))


def _check_text_mask(sd: Mapping[str, np.ndarray], context: int) -> None:
    if TEXT_MASK_KEY not in sd:
        raise ConversionError(f"missing key in checkpoint: {TEXT_MASK_KEY}")
    mask = np.asarray(sd[TEXT_MASK_KEY])
    want = np.triu(np.full((context, context), -np.inf, np.float32), 1)
    if mask.shape != want.shape or not np.array_equal(mask, want):
        raise ConversionError(
            f"{TEXT_MASK_KEY} is not the causal mask (-inf above the diagonal) of size "
            f"{context}; the Flax text branch hard-codes causal attention"
        )


def convert(
    sd: Mapping[str, np.ndarray],
    cfg: ib.ImageBindConfig,
    modalities: Sequence[str] = MODALITIES,
) -> dict:
    """Checkpoint state dict -> {modality: params} (numpy float32). Raises ConversionError."""
    mods = _check_modalities(modalities)
    if "text" in mods:
        _check_text_mask(sd, cfg.context_length)
    target = target_for(cfg, mods)
    params = apply_table(sd, table_for(cfg, mods), target, ignore=ignore_for(mods))
    return fix_scalars(params, target)


def fix_scalars(params: dict, target: dict) -> dict:
    """Restore 0-d leaves (`log_logit_scale`): `apply_table`'s np.ascontiguousarray turns a
    0-d array into shape (1,)."""
    return jax.tree.map(lambda p, t: np.reshape(p, t.shape), params, target)


def check_full_keys(
    full_keys: Mapping[str, tuple[int, ...]] | str | Path,
    cfg: ib.ImageBindConfig | None = None,
    modalities: Sequence[str] = MODALITIES,
) -> None:
    """Shape-only strict check of a full key list (e.g. the fixture's `full_keys.json`)."""
    if not isinstance(full_keys, Mapping):
        full_keys = load_full_keys(full_keys)
    cfg = cfg or ib.imagebind_huge()
    mods = _check_modalities(modalities)
    if "text" in mods and tuple(full_keys.get(TEXT_MASK_KEY, ())) != (cfg.context_length,) * 2:
        raise ConversionError(f"{TEXT_MASK_KEY} missing or mis-shaped in the key list")
    fake = {k: np.broadcast_to(np.float32(0), s) for k, s in full_keys.items()}
    apply_table(
        fake, table_for(cfg, mods), target_for(cfg, mods), ignore=ignore_for(mods), shapes_only=True
    )


# ----------------------------------------------------------------------------- fixture
def _fixture_config(fixture_dir: Path) -> ib.ImageBindConfig:
    with open(fixture_dir / "config.json") as f:
        return ib.ImageBindConfig.from_torch_kwargs(json.load(f)["constructor_kwargs"])


def run_fixture(fixture_dir: Path) -> tuple[dict, dict]:
    """Convert the fixture's weights and run the three branches on its inputs.

    Returns (outputs in the fixture's layout keyed like io.npz, io.npz arrays).
    """
    fixture_dir = Path(fixture_dir)
    cfg = _fixture_config(fixture_dir)
    params = convert(load_state_dict(fixture_dir / "state_dict.safetensors"), cfg)
    io = dict(np.load(fixture_dir / "io.npz"))
    mel = io["in_audio"]  # [B, S, 1, 128, 204] (PyTorch) -> channels-last [B, S, 128, 204]
    b, s = mel.shape[:2]
    inter_apply = lambda mod: jax.jit(lambda p, x: mod.apply(p, x, mutable=["intermediates"]))
    audio, inter = inter_apply(ib.ImageBindAudio(cfg))({"params": params["audio"]}, mel[:, :, 0])
    vis, vinter = inter_apply(ib.ImageBindVision(cfg))(
        {"params": params["vision"]}, io["in_vision"].transpose(0, 2, 3, 1)
    )
    text = jax.jit(ib.ImageBindText(cfg).apply)(
        {"params": params["text"]}, io["in_text"].astype(np.int32)
    )
    n = cfg.audio_tokens
    out = {
        "out_audio_pre_tokens": inter["intermediates"]["pre_tokens"][0],
        "out_audio_trunk_tokens": audio.tokens.reshape(b * s, n, -1),
        "out_audio_emb_per_clip": audio.emb_per_clip,
        "out_audio_emb_mean": audio.emb,
        "out_vision_pre_tokens": vinter["intermediates"]["pre_tokens"][0],
        "out_vision_trunk_tokens": vis.tokens,
        "out_vision_emb": vis.emb,
        "out_text_trunk_tokens": text.tokens,
        "out_text_emb": text.emb,
    }
    return {k: np.asarray(v) for k, v in out.items()}, io


def verify_imagebind_audio(fixture_dir: Path) -> list:
    """Every `out_*` of io.npz: relative L2 <= 1e-5 (the common bound) and, per the fixture
    README, max |error| <= 1e-4; plus the per-clip audio embedding norm == 20 within 1e-5."""
    from convert.verify import Check

    fixture_dir = Path(fixture_dir)
    out, io = run_fixture(fixture_dir)
    refs = {k: v for k, v in io.items() if k.startswith("out_")}
    missing = sorted(set(refs) - set(out))
    if missing:
        raise ConversionError(f"verify_imagebind_audio does not produce {missing}")
    checks = []
    for k in sorted(refs):
        checks.append(Check(k, out[k], refs[k], tol=1e-5, metric="rel_l2"))
        checks.append(Check(f"{k}[max_abs]", out[k], refs[k], tol=1e-4, metric="max_abs"))
    norms = np.linalg.norm(out["out_audio_emb_per_clip"].astype(np.float64), axis=-1)
    checks.append(
        Check("audio_emb_per_clip_norm==20", norms, np.full_like(norms, 20.0), 1e-5, "max_abs")
    )
    return checks


# ----------------------------------------------------------------------------- files
def convert_file(
    src: str | Path,
    out: str | Path,
    cfg: ib.ImageBindConfig | None = None,
    modalities: Sequence[str] = MODALITIES,
    *,
    trust_pickle: bool = False,
) -> dict:
    """`imagebind_huge.pth` (or a .safetensors of it) -> the params folder OUT; returns its
    config.json. The file is memory-mapped and each converted tensor's pages are given back as
    it goes, so the process holds about one float32 copy of the chosen modalities (4.3 GB for
    all three of ImageBind-Huge) at its peak, while `save_params` writes that tree (one orbax
    checkpoint `{modality: params}`, the layout every reader of these folders expects)."""
    from maestro_jax.checkpoints import save_params

    cfg = cfg or ib.imagebind_huge()
    mods = _check_modalities(modalities)
    sd = strip_prefix_if_all(load_state_dict(src, dtype=None, trust_pickle=trust_pickle), "module.")
    params = convert(sd, cfg, mods)
    del sd
    config = {
        "model": "imagebind",
        "modalities": list(mods),
        "imagebind": cfg.to_dict(),
        "source": str(src),
    }
    save_params(out, params, config, compress=False)
    config["parameters"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return config
