"""VideoCrafter2 / SD 2.1 UNet: LDM or diffusers checkpoint -> Flax params of `maestro_jax.models.unet`.

    python -m convert.unet --kind vc2 checkpoints/base_512_v2/model.ckpt out/vc2_unet
    python -m convert.unet --kind sd21 v2-1_512-ema-pruned.ckpt out/sd21_unet        # LDM
    python -m convert.unet --kind sd21 stable-diffusion-2-1-base/unet out/sd21_unet  # diffusers

`--kind sd21` detects the format from the keys (`--format ldm|diffusers` forces it); a diffusers
pipeline folder is accepted too (its `unet/` subfolder is read). `--ldm_config FILE` (JSON: the
yaml's `unet_config.params`, or a fixture's config.json holding them under "params") replaces
the full-size preset, e.g. for another VideoCrafter/SD variant. The output folder holds orbax
params plus `config.json` = {"unet": asdict(UNetConfig), "kind", "format", "source"}.
Reading `.ckpt` needs torch (`pip install -e .[convert]`; memory-mapped, `weights_only`: a file
that pickles other Python objects needs `--trust_pickle`, see `convert.common`); `.safetensors`
and diffusers folders do not. The command is in `convert/unet/__main__.py`.

Three name tables, all derived from the config's block layout (`unet_layout`), so index shifts
come out by construction:
- VideoCrafter2 LDM (`model.diffusion_model.*`): Flax names mirror the original tree with
  '.' -> '_'; `temporal_conv` -> `temopral_conv` (misspelt in the checkpoint), `init_attn` ->
  `init_attn.0`; TemporalConvBlock Conv3d (C, C, 3, 1, 1) -> a (3, C, C) 1-D conv; init_attn's
  Conv1d k=1 proj_in/out -> Dense.
- SD 2.1 LDM: the same rule; with temporal parts off the layout itself gives SD's indices
  (middle_block.2 = VC's middle_block.3, output_blocks.{5,8}.2.conv = VC's .3.conv).
- SD 2.1 diffusers (docs/models.md, "Stable Diffusion 2.1 UNet" > "Checkpoint keys"): input_blocks.i -> down_blocks.(i-1)//3 resnets/attentions/
  downsamplers, middle_block -> mid_block, output_blocks.i -> up_blocks.i//3, time_embed ->
  time_embedding.linear_{1,2}, input_blocks.0.0 -> conv_in, out.{0,2} -> conv_norm_out/conv_out,
  ResBlock names in_layers.0 -> norm1 and so on.

`upcast_attention` (true in the 768 SD 2.1 config) only changes a float16 run; this port's
softmax is always float32, so both SD 2.1 variants load the same way.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convert.common import (
    ConversionError,
    Table,
    Transform,
    apply_table,
    conv1d_k1_as_linear,
    conv1x1_as_linear,
    conv2d,
    conv3d_temporal,
    flatten,
    identity,
    linear,
    load_state_dict,
)
from maestro_jax.models.unet import UNet, UNetConfig, layer_kinds, unet_layout

LDM_PREFIX = "model.diffusion_model."
KINDS = ("vc2", "sd21_ldm", "sd21_diffusers")

# Everything else a full LDM / VideoCrafter2 `model.ckpt` holds (docs/models.md, "VideoCrafter2 3D UNet" > "Checkpoint keys"): the VAE, the text
# encoder, the schedule buffers; `model_ema.*` for EMA checkpoints. Ignored by name.
LDM_OTHER_KEYS = (
    r"first_stage_model\..*",
    r"cond_stage_model\..*",
    r"model_ema\..*",
    r"betas",
    r"alphas_cumprod(_prev)?",
    r"sqrt_alphas_cumprod",
    r"sqrt_one_minus_alphas_cumprod",
    r"log_one_minus_alphas_cumprod",
    r"sqrt_recip(m1)?_alphas_cumprod",
    r"posterior_variance",
    r"posterior_log_variance_clipped",
    r"posterior_mean_coef[12]",
    r"scale_arr",
    r"logvar",
    r"lvlb_weights",
)


# ----------------------------------------------------------------------------- shapes
@functools.lru_cache(maxsize=8)
def init_shapes(cfg: UNetConfig, frames: int = 2) -> Any:
    """The params tree of `UNet(cfg)` as ShapeDtypeStructs (jax.eval_shape; no weights).
    Cached: tracing the full-size UNet takes seconds, and the result is immutable."""
    m = 2 ** (len(cfg.channel_mult) - 1)
    x = jnp.zeros(
        (1, frames, m, m, cfg.in_channels) if cfg.temporal else (1, m, m, cfg.in_channels)
    )
    ctx = jnp.zeros((1, 1, cfg.context_dim))
    t = jnp.zeros((1,), jnp.int32)
    fps = t if cfg.fps_cond else None
    return jax.eval_shape(
        lambda: UNet(cfg).init(jax.random.PRNGKey(0), x, t, ctx, fps=fps)["params"]
    )


# ----------------------------------------------------------------------------- tables
def _ldm_entry(path: str, shape: tuple[int, ...], kinds: Mapping[str, str], cfg: UNetConfig):
    """Flax path -> (LDM key without prefix, transform)."""
    parts = path.split("/")
    names = []
    for m in parts[:-1]:
        if m == "init_attn":
            names.append("init_attn.0")  # TimestepEmbedSequential(TemporalTransformer)
        elif m == "temporal_conv":
            names.append("temopral_conv")  # sic: the checkpoint's spelling
        else:
            names.append(re.sub(r"_(\d+)", r".\1", m))  # input_blocks_1_0 -> input_blocks.1.0
    leaf = parts[-1]
    key = ".".join(names) + (".bias" if leaf == "bias" else ".weight")
    transform: Transform = identity
    if leaf == "kernel":
        kind = kinds.get(parts[0])
        is_proj = parts[-2] in ("proj_in", "proj_out")
        if len(shape) == 4:
            transform = conv2d
        elif len(shape) == 3:
            transform = conv3d_temporal  # TemporalConvBlock Conv3d (3, 1, 1)
        elif is_proj and (kind == "init_attn" or (kind == "temporal" and not cfg.use_linear)):
            transform = conv1d_k1_as_linear
        elif is_proj and kind == "spatial" and not cfg.use_linear:
            transform = conv1x1_as_linear
        else:
            transform = linear
    return key, transform


_RESNET_DIFFUSERS = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _ldm_to_diffusers(key: str, cfg: UNetConfig) -> str:
    """LDM UNet key (no prefix) -> diffusers `UNet2DConditionModel` key (docs/models.md,
    "Stable Diffusion 2.1 UNet" > "Checkpoint keys")."""
    lay = unet_layout(cfg)
    per = cfg.num_res_blocks + 1  # layers per down block (resnets + downsampler), per up block
    simple = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    for old, new in simple.items():
        if key.startswith(old + "."):
            return new + key[len(old) :]
    m = re.fullmatch(r"(input_blocks|output_blocks|middle_block)\.(\d+)\.?(\d+)?\.(.*)", key)
    if not m:
        raise ConversionError(f"no diffusers name for LDM key {key}")
    group, i, j, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if group == "middle_block":
        j, i = i, None
        layer = lay.middle_block[j]
        n_res_before = sum(x.kind == "res" for x in lay.middle_block[:j])
        prefix = "mid_block"
        res_idx, attn_idx = n_res_before, 0
    else:
        j = int(j)
        blocks = lay.input_blocks if group == "input_blocks" else lay.output_blocks
        layer = blocks[i][j]
        if group == "input_blocks":
            b, li = (i - 1) // per, (i - 1) % per
            prefix = f"down_blocks.{b}"
        else:
            b, li = i // per, i % per
            prefix = f"up_blocks.{b}"
        res_idx = attn_idx = li
    if layer.kind == "res":
        for old, new in _RESNET_DIFFUSERS.items():
            if rest.startswith(old + "."):
                return f"{prefix}.resnets.{res_idx}.{new}{rest[len(old) :]}"
        raise ConversionError(f"unknown ResBlock key {key}")
    if layer.kind == "spatial":
        return f"{prefix}.attentions.{attn_idx}.{rest}"
    if layer.kind == "down":
        return f"{prefix}.downsamplers.0.conv.{rest.removeprefix('op.')}"
    if layer.kind == "up":
        return f"{prefix}.upsamplers.0.conv.{rest.removeprefix('conv.')}"
    raise ConversionError(f"LDM key {key} ({layer.kind}) has no diffusers counterpart")


def unet_table(cfg: UNetConfig, fmt: str = "ldm", prefix: str = "", target: Any = None) -> Table:
    """{Flax param path: (original key, transform)} for `fmt` 'ldm' (VideoCrafter2 and SD 2.x
    LDM checkpoints) or 'diffusers' (SD 2.x `UNet2DConditionModel`, temporal off only)."""
    if fmt not in ("ldm", "diffusers"):
        raise ValueError(f"unknown UNet checkpoint format {fmt!r}; want 'ldm' or 'diffusers'")
    if fmt == "diffusers" and (cfg.temporal or cfg.fps_cond):
        raise ValueError("the diffusers UNet2DConditionModel layout has no temporal/fps layers")
    target = init_shapes(cfg) if target is None else target
    kinds = layer_kinds(cfg)
    table: Table = {}
    for path, leaf in flatten(target).items():
        key, transform = _ldm_entry(path, tuple(leaf.shape), kinds, cfg)
        if fmt == "diffusers":
            key = _ldm_to_diffusers(key, cfg)
        table[path] = (prefix + key, transform)
    return table


# ----------------------------------------------------------------------------- conversion
def _detect_prefix(sd: Mapping[str, np.ndarray], prefix: str) -> str:
    # The full checkpoints carry `model.diffusion_model.`; a bare UNet state dict has no prefix.
    return prefix if any(k.startswith(prefix) for k in sd) else ""


def detect_format(sd: Mapping[str, np.ndarray]) -> str:
    if any(k.startswith(("down_blocks.", "mid_block.")) for k in sd):
        return "diffusers"
    return "ldm"


def convert_unet(
    sd: Mapping[str, np.ndarray], cfg: UNetConfig, fmt: str = "ldm", target: Any = None
) -> dict:
    """Original state dict -> Flax params (numpy float32), strictly (see `unet_table`)."""
    if fmt == "ldm":
        prefix = _detect_prefix(sd, LDM_PREFIX)
        ignore = LDM_OTHER_KEYS if prefix else ()
    else:
        prefix, ignore = "", ()
    target = init_shapes(cfg) if target is None else target
    table = unet_table(cfg, fmt, prefix, target)
    return apply_table(sd, table, target, ignore=ignore)


def diffusers_path(path: Path) -> Path:
    if path.is_dir() and (path / "unet").is_dir():
        return path / "unet"  # a pipeline folder
    return path


def load_unet_params(
    path: str | Path,
    kind: str = "vc2",
    config: UNetConfig | None = None,
    *,
    trust_pickle: bool = False,
) -> dict:
    """Read a real checkpoint into Flax params for `UNet(config)`.

    Args:
      path: VideoCrafter2 `model.ckpt` (kind 'vc2'); SD 2.1 LDM `.ckpt`/`.safetensors`
        ('sd21_ldm'); SD 2.1 diffusers `unet/` folder, its safetensors file, or the pipeline
        folder ('sd21_diffusers'). LDM files may hold the whole model: only
        `model.diffusion_model.*` is used, the VAE/text-encoder/schedule keys are ignored by name.
      kind: 'vc2' | 'sd21_ldm' | 'sd21_diffusers'.
      config: defaults to `UNetConfig.vc2()` / `UNetConfig.sd21()`.
      trust_pickle: see `convert.common.load_state_dict`.
    Returns:
      the params tree (numpy float32).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown UNet checkpoint kind {kind!r}; want one of {KINDS}")
    if config is None:
        config = UNetConfig.vc2() if kind == "vc2" else UNetConfig.sd21()
    path = Path(path)
    fmt = "diffusers" if kind == "sd21_diffusers" else "ldm"
    src = diffusers_path(path) if fmt == "diffusers" else path
    sd = load_state_dict(src, dtype=None, trust_pickle=trust_pickle)
    if kind == "vc2" and not any(".temopral_conv." in k for k in sd):
        raise ConversionError(
            f"{path} has no VideoCrafter temporal layers; is it an SD checkpoint?"
        )
    return convert_unet(sd, config, fmt)


# ----------------------------------------------------------------------------- fixtures
def _apply_fn(cfg: UNetConfig):
    model = UNet(cfg)
    # XLA:CPU at -O0 compiles the tiny fixture UNets ~40% faster with the same numerics.
    opts = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None

    def run(params, x, t, ctx, fps):
        return model.apply({"params": params}, x, t, ctx, fps=fps)

    return jax.jit(run, compiler_options=opts)


def verify_vc2_unet3d(fixture_dir: Path, dtype: str = "float32") -> list:
    """The three io*.npz runs of the vc2_unet3d fixture (README bound: max_rel 1e-4)."""
    from convert.verify import Check

    fixture_dir = Path(fixture_dir)
    with open(fixture_dir / "config.json") as f:
        cfg = UNetConfig.from_ldm_vc(json.load(f)["params"], dtype=dtype)
    params = convert_unet(load_state_dict(fixture_dir / "state_dict.safetensors"), cfg, "ldm")
    run = _apply_fn(cfg)
    checks = []
    for name, ctx_key in (
        ("io", "in_context"),
        ("io_per_frame_context", "in_context_per_frame"),
        ("io_single_frame", "in_context"),
    ):
        d = np.load(fixture_dir / f"{name}.npz")
        x = d["in_x"].transpose(0, 2, 3, 4, 1)  # NCDHW -> [B, F, H, W, C]
        y = run(params, x, d["in_timesteps"], d[ctx_key], d["in_fps"])
        out = np.asarray(y, np.float32).transpose(0, 4, 1, 2, 3)
        checks.append(Check(f"{name}/out_y", out, d["out_y"], tol=1e-4, metric="max_rel"))
    return checks


def verify_sd21_unet(fixture_dir: Path) -> list:
    """LDM and diffusers state dicts -> identical params; both runs vs out_ldm / out_diffusers."""
    from convert.verify import Check

    fixture_dir = Path(fixture_dir)
    with open(fixture_dir / "config.json") as f:
        cfg = UNetConfig.from_ldm_sd(json.load(f)["params"])
    _check_diffusers_config(fixture_dir / "config_diffusers.json", cfg)
    target = init_shapes(cfg)
    p_ldm = convert_unet(load_state_dict(fixture_dir / "state_dict_ldm.safetensors"), cfg, "ldm")
    p_dif = convert_unet(
        load_state_dict(fixture_dir / "state_dict_diffusers.safetensors"), cfg, "diffusers", target
    )
    fl, fd = flatten(p_ldm), flatten(p_dif)
    same_keys = sorted(fl) == sorted(fd)
    flat_l = np.concatenate([np.ravel(fl[k]) for k in sorted(fl)])
    flat_d = np.concatenate([np.ravel(fd[k]) for k in sorted(fl)]) if same_keys else flat_l[:0]
    checks = [Check("params ldm == diffusers", flat_d, flat_l, metric="exact")]
    d = np.load(fixture_dir / "io.npz")
    x = d["in_x"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    run = _apply_fn(cfg)
    for name, params in (("out_ldm", p_ldm), ("out_diffusers", p_dif)):
        y = run(params, x, d["in_timesteps"], d["in_context"], None)
        out = np.asarray(y, np.float32).transpose(0, 3, 1, 2)
        checks.append(Check(f"io/{name}", out, d[name], tol=1e-4, metric="max_rel"))
    return checks


def _check_diffusers_config(path: Path, cfg: UNetConfig) -> None:
    """The diffusers config describes the same network as `cfg` (names and head counts)."""
    with open(path) as f:
        dc = json.load(f)
    want = {
        "block_out_channels": [cfg.model_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "cross_attention_dim": cfg.context_dim,
        "use_linear_projection": cfg.use_linear,
        # SD 2.x: diffusers' `attention_head_dim` holds head COUNTS per level
        "attention_head_dim": [
            cfg.model_channels * m // cfg.num_head_channels for m in cfg.channel_mult
        ],
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
    }
    bad = {k: (dc.get(k), v) for k, v in want.items() if dc.get(k) != v}
    if bad:
        raise ConversionError(f"{path}: diffusers config disagrees with the LDM config: {bad}")
