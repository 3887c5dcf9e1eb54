"""AutoencoderKL (SD / VideoCrafter2 VAE): LDM or diffusers checkpoint -> Flax params.

    python -m convert.vae checkpoints/base_512_v2/model.ckpt out/vae            # LDM (VC2, SD)
    python -m convert.vae sd21/vae out/vae --format diffusers                   # diffusers folder

    [--ldm_config FILE]  # the yaml's first_stage_config params as JSON (default: the SD/VC2 VAE)
    [--trust_pickle]     # see convert.common.load_state_dict

LDM keys may carry the `first_stage_model.` prefix (the VC2 `model.ckpt` does; every other key of
that file is ignored). Diffusers keys follow docs/models.md, "VAE" > "Checkpoint keys": `decoder.up.{n-1-i}` -> `up_blocks.i`,
`nin_shortcut` -> `conv_shortcut`, mid attention `to_q/k/v/to_out.0` as Linear (C, C) where
LDM has 1x1 convs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from convert.common import (
    ConversionError,
    Table,
    apply_table,
    conv1x1_as_linear,
    conv2d,
    identity,
    linear,
    load_state_dict,
    select_prefix,
)
from maestro_jax.models.vae import AutoencoderKL, VAEConfig, init_shapes

LDM_PREFIX = "first_stage_model."


def _conv(table: Table, flax: str, key: str) -> None:
    table[f"{flax}/kernel"] = (f"{key}.weight", conv2d)
    table[f"{flax}/bias"] = (f"{key}.bias", identity)


def _dense(table: Table, flax: str, key: str, transform) -> None:
    table[f"{flax}/kernel"] = (f"{key}.weight", transform)
    table[f"{flax}/bias"] = (f"{key}.bias", identity)


def _norm(table: Table, flax: str, key: str) -> None:
    table[f"{flax}/scale"] = (f"{key}.weight", identity)
    table[f"{flax}/bias"] = (f"{key}.bias", identity)


def _resnet(table: Table, flax: str, key: str, c_in: int, c_out: int, shortcut: str) -> None:
    _norm(table, f"{flax}/norm1", f"{key}.norm1")
    _conv(table, f"{flax}/conv1", f"{key}.conv1")
    _norm(table, f"{flax}/norm2", f"{key}.norm2")
    _conv(table, f"{flax}/conv2", f"{key}.conv2")
    if c_in != c_out:
        _conv(table, f"{flax}/nin_shortcut", f"{key}.{shortcut}")


def _attn(table: Table, flax: str, key: str, fmt: str) -> None:
    if fmt == "ldm":
        names = {"norm": "norm", "q": "q", "k": "k", "v": "v", "proj_out": "proj_out"}
        tr = conv1x1_as_linear
    else:
        names = {
            "norm": "group_norm",
            "q": "to_q",
            "k": "to_k",
            "v": "to_v",
            "proj_out": "to_out.0",
        }
        tr = linear
    _norm(table, f"{flax}/norm", f"{key}.{names['norm']}")
    for n in ("q", "k", "v", "proj_out"):
        _dense(table, f"{flax}/{n}", f"{key}.{names[n]}", tr)


def vae_table(cfg: VAEConfig, fmt: str = "ldm", prefix: str = "") -> Table:
    """{flax path: (original key, transform)} for an LDM (`fmt='ldm'`) or diffusers checkpoint."""
    if fmt not in ("ldm", "diffusers"):
        raise ValueError(f"unknown VAE checkpoint format {fmt!r} (want 'ldm' or 'diffusers')")
    d = fmt == "diffusers"
    if d and cfg.attn_resolutions:
        raise ConversionError("diffusers AutoencoderKL has no attention outside the mid block")
    t: Table = {}
    n = len(cfg.ch_mult)
    p = prefix
    short = "conv_shortcut" if d else "nin_shortcut"
    mid_block = (
        (lambda e, i: f"{p}{e}.mid_block.resnets.{i - 1}")
        if d
        else (lambda e, i: f"{p}{e}.mid.block_{i}")
    )
    mid_attn = (
        (lambda e: f"{p}{e}.mid_block.attentions.0") if d else (lambda e: f"{p}{e}.mid.attn_1")
    )
    norm_out = "conv_norm_out" if d else "norm_out"

    # encoder
    _conv(t, "encoder/conv_in", f"{p}encoder.conv_in")
    c = cfg.ch
    res = cfg.resolution
    for i, m in enumerate(cfg.ch_mult):
        for j in range(cfg.num_res_blocks):
            key = (
                f"{p}encoder.down_blocks.{i}.resnets.{j}" if d else f"{p}encoder.down.{i}.block.{j}"
            )
            _resnet(t, f"encoder/down_{i}_block_{j}", key, c, cfg.ch * m, short)
            c = cfg.ch * m
            if res in cfg.attn_resolutions:
                _attn(t, f"encoder/down_{i}_attn_{j}", f"{p}encoder.down.{i}.attn.{j}", fmt)
        if i != n - 1:
            key = (
                f"{p}encoder.down_blocks.{i}.downsamplers.0.conv"
                if d
                else (f"{p}encoder.down.{i}.downsample.conv")
            )
            _conv(t, f"encoder/down_{i}_downsample", key)
            res //= 2
    for e in ("encoder", "decoder"):
        cm = cfg.ch * cfg.ch_mult[-1]
        _resnet(t, f"{e}/mid_block_1", mid_block(e, 1), cm, cm, short)
        _attn(t, f"{e}/mid_attn_1", mid_attn(e), fmt)
        _resnet(t, f"{e}/mid_block_2", mid_block(e, 2), cm, cm, short)
        _norm(t, f"{e}/norm_out", f"{p}{e}.{norm_out}")
        _conv(t, f"{e}/conv_out", f"{p}{e}.conv_out")
    _dense(t, "quant_conv", f"{p}quant_conv", conv1x1_as_linear)
    _dense(t, "post_quant_conv", f"{p}post_quant_conv", conv1x1_as_linear)

    # decoder: LDM `up.i` is diffusers `up_blocks.{n-1-i}` (diffusers lists them in run order)
    _conv(t, "decoder/conv_in", f"{p}decoder.conv_in")
    c = cfg.ch * cfg.ch_mult[-1]
    res = cfg.resolution // 2 ** (n - 1)
    for i in reversed(range(n)):
        level = f"{p}decoder.up_blocks.{n - 1 - i}" if d else f"{p}decoder.up.{i}"
        for j in range(cfg.num_res_blocks + 1):
            key = f"{level}.resnets.{j}" if d else f"{level}.block.{j}"
            _resnet(t, f"decoder/up_{i}_block_{j}", key, c, cfg.ch * cfg.ch_mult[i], short)
            c = cfg.ch * cfg.ch_mult[i]
            if res in cfg.attn_resolutions:
                _attn(t, f"decoder/up_{i}_attn_{j}", f"{level}.attn.{j}", fmt)
        if i != 0:
            key = f"{level}.upsamplers.0.conv" if d else f"{level}.upsample.conv"
            _conv(t, f"decoder/up_{i}_upsample", key)
            res *= 2
    return t


def convert_vae(
    sd: Mapping[str, np.ndarray], cfg: VAEConfig, fmt: str = "ldm", *, prefix: str | None = None
) -> dict:
    """State dict -> Flax params of `AutoencoderKL(cfg)`.

    For `fmt='ldm'` with `prefix=None`, the `first_stage_model.` prefix is used when present (a
    whole VC2/SD `model.ckpt`); keys outside the prefix are then ignored.
    """
    if prefix is None:
        prefix = LDM_PREFIX if fmt == "ldm" and any(k.startswith(LDM_PREFIX) for k in sd) else ""
    sub = select_prefix(sd, prefix) if prefix else sd
    if not sub:
        raise ConversionError(f"no key with prefix {prefix!r} in the checkpoint")
    return apply_table(sub, vae_table(cfg, fmt), init_shapes(cfg))


def config_from_diffusers(path: Path) -> VAEConfig:
    cfg_file = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if not cfg_file.exists():
        return VAEConfig.sd()
    c = json.loads(cfg_file.read_text())
    boc = c.get("block_out_channels", [128, 256, 512, 512])
    return VAEConfig(
        ch=int(boc[0]),
        ch_mult=tuple(int(b) // int(boc[0]) for b in boc),
        num_res_blocks=int(c.get("layers_per_block", 2)),
        z_channels=int(c.get("latent_channels", 4)),
        embed_dim=int(c.get("latent_channels", 4)),
        in_channels=int(c.get("in_channels", 3)),
        out_ch=int(c.get("out_channels", 3)),
        num_groups=int(c.get("norm_num_groups", 32)),
    )


# ----------------------------------------------------------------------------- fixture
def verify_vc2_vae(fixture_dir: Path) -> list:
    """Every `out_*` of the `vc2_vae` fixture (NCHW) at the README's bound (max_rel 1e-4)."""
    import jax
    import jax.numpy as jnp

    from convert.verify import Check
    from maestro_jax.models.vae import posterior_logvar, posterior_mean

    fixture_dir = Path(fixture_dir)
    conf = json.loads((fixture_dir / "config.json").read_text())
    cfg = VAEConfig.from_ldm(conf["params"]["ddconfig"], conf["params"]["embed_dim"])
    sd = load_state_dict(fixture_dir / "state_dict.safetensors")
    params = convert_vae(sd, cfg, "ldm", prefix=conf.get("state_dict_prefix", LDM_PREFIX))
    io = np.load(fixture_dir / "io.npz")
    vae = AutoencoderKL(cfg)
    nhwc = lambda a: jnp.asarray(np.transpose(a, (0, 2, 3, 1)))
    nchw = lambda a: np.transpose(np.asarray(a), (0, 3, 1, 2))

    @jax.jit
    def run(p, image, z):
        apply = lambda x, m: vae.apply({"params": p}, x, method=m)
        h = apply(image, lambda mdl, x: mdl.encoder(x))
        moments = apply(image, AutoencoderKL.encode)
        mean = posterior_mean(moments)
        return {
            "out_encoder": h,
            "out_moments": moments,
            "out_mean": mean,
            "out_logvar": posterior_logvar(moments),
            "out_dec": apply(z, AutoencoderKL.decode),
            "out_recon": apply(mean, AutoencoderKL.decode),
        }

    outs = run(params, nhwc(io["in_image"]), nhwc(io["in_z"]))
    names = sorted(k for k in io.files if k.startswith("out_"))
    missing = [k for k in names if k not in outs]
    if missing:
        raise KeyError(f"verify_vc2_vae does not compute fixture outputs {missing}")
    return [Check(k, nchw(outs[k]), io[k], tol=1e-4, metric="max_rel") for k in names]
