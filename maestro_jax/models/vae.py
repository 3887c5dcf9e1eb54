"""The Stable Diffusion / VideoCrafter2 AutoencoderKL (LDM `ae_modules.py`), channels-last.

Facts: docs/models.md, "VAE" (VC2's VAE is the SD VAE). One 2-D autoencoder; video
latents are decoded frame by frame (`decode_latents`), as VC's `decode_first_stage_2DAE` does.

Shapes (names used in every docstring here):
  B batch of images, F frames, H x W pixels, h x w = (H, W) / 2**(len(ch_mult) - 1) latent size,
  C channels, z = z_channels (= embed_dim = 4 for SD/VC2).

Exactness notes (each is a place where a straightforward port goes wrong):
- every GroupNorm is `Normalize` = GN(32 groups, eps **1e-6**), statistics per image;
- downsample = zero-pad right/bottom only (0, 1, 0, 1), then a 3x3 stride-2 VALID conv;
- upsample = nearest x2, then a 3x3 conv;
- the mid attention is single-head over C channels, q/k/v/proj_out are 1x1 convs (here Dense);
- decoder level `up_i` uses LDM numbering: `up_0` is the full-resolution level and runs LAST.

Parameter names mirror the LDM keys with '.' -> '_' at block level, e.g. LDM
`encoder.down.1.block.0.nin_shortcut.weight` is `encoder/down_1_block_0/nin_shortcut/kernel`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.models.presets import PresetConfig
from maestro_jax.nn.attention import dot_product_attention
from maestro_jax.nn.layers import Dense, GroupNorm

VAE_GN_EPS = 1e-6  # LDM `Normalize`: GroupNorm(32, C, eps=1e-6, affine=True)
SCALE_FACTOR = 0.18215  # SD / VC2 latent scale (model config `scale_factor`)
LOGVAR_CLAMP = (-30.0, 20.0)  # DiagonalGaussianDistribution


@dataclasses.dataclass(frozen=True)
class VAEConfig(PresetConfig):
    """AutoencoderKL hyperparameters (LDM `ddconfig` + `embed_dim`)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    attn_resolutions: tuple[int, ...] = ()
    resolution: int = 256  # only used to place `attn_resolutions` (empty for SD / VC2)
    double_z: bool = True
    in_channels: int = 3
    out_ch: int = 3
    num_groups: int = 32
    dtype: Any = jnp.float32  # compute dtype; params are float32
    attn_impl: str = "xla"

    @classmethod
    def sd(cls, **kw) -> VAEConfig:
        """The SD 1.x/2.x and VideoCrafter2 VAE (83.65 M params)."""
        return cls.from_preset("sd", **kw)

    @classmethod
    def from_ldm(cls, ddconfig: Mapping[str, Any], embed_dim: int, **kw) -> VAEConfig:
        """From an LDM yaml/json `first_stage_config.params.ddconfig` and `embed_dim`."""
        return cls(
            ch=int(ddconfig["ch"]),
            ch_mult=tuple(int(m) for m in ddconfig["ch_mult"]),
            num_res_blocks=int(ddconfig["num_res_blocks"]),
            z_channels=int(ddconfig["z_channels"]),
            embed_dim=int(embed_dim),
            attn_resolutions=tuple(int(r) for r in ddconfig.get("attn_resolutions", ())),
            resolution=int(ddconfig.get("resolution", 256)),
            double_z=bool(ddconfig.get("double_z", True)),
            in_channels=int(ddconfig.get("in_channels", 3)),
            out_ch=int(ddconfig.get("out_ch", 3)),
            **kw,
        )

    @classmethod
    def tiny(cls, **kw) -> VAEConfig:
        """Tests: the `vc2_vae` fixture's shape (ch 32, two levels, one res block)."""
        return cls.from_preset("tiny", **kw)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dtype"] = jnp.dtype(self.dtype).name
        return d


VAEConfig._presets = {
    "sd": {},
    "tiny": dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=32),
}
VAEConfig._folder_key = "vae"
VAEConfig._dtype_object = True


def _conv(features: int, kernel: int, dtype, name: str, stride: int = 1, padding="SAME"):
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=padding,
        dtype=dtype,
        param_dtype=jnp.float32,
        precision=jax.lax.Precision.HIGHEST,
        name=name,
    )


class ResnetBlock(nn.Module):
    """norm1, SiLU, conv1, norm2, SiLU, (dropout), conv2, + x (via 1x1 `nin_shortcut` if C
    changes). No time embedding in the VAE. x: [B, H, W, C_in] -> [B, H, W, C_out]."""

    out_channels: int
    num_groups: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = GroupNorm(VAE_GN_EPS, self.num_groups, name="norm1")(x)
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(nn.silu(h))
        h = GroupNorm(VAE_GN_EPS, self.num_groups, name="norm2")(h)
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(nn.silu(h))
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, q/k/v/proj_out as Dense (= 1x1 conv),
    scale C**-0.5. x: [B, H, W, C] -> same."""

    num_groups: int = 32
    dtype: Any = jnp.float32
    impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        h = GroupNorm(VAE_GN_EPS, self.num_groups, name="norm")(x)
        h = h.reshape(b, hh * ww, 1, c)  # [B, T, heads=1, C]
        q = Dense(c, dtype=self.dtype, name="q")(h)
        k = Dense(c, dtype=self.dtype, name="k")(h)
        v = Dense(c, dtype=self.dtype, name="v")(h)
        o = dot_product_attention(q, k, v, scale=c**-0.5, impl=self.impl)
        o = Dense(c, dtype=self.dtype, name="proj_out")(o.reshape(b, hh, ww, c))
        return x + o


def _downsample(x: jax.Array, conv: nn.Module) -> jax.Array:
    # LDM pads only right and bottom (F.pad (0, 1, 0, 1)), unlike the UNet's symmetric pad 1.
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return conv(x)


def _upsample_nearest2(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Encoder(nn.Module):
    """x [B, H, W, in_channels] -> [B, h, w, 2*z] (double_z) before quant_conv."""

    config: VAEConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dt = cfg.dtype
        h = _conv(cfg.ch, 3, dt, "conv_in")(x.astype(dt))
        res = cfg.resolution
        for i, mult in enumerate(cfg.ch_mult):
            for j in range(cfg.num_res_blocks):
                h = ResnetBlock(cfg.ch * mult, cfg.num_groups, dt, name=f"down_{i}_block_{j}")(h)
                if res in cfg.attn_resolutions:
                    h = AttnBlock(cfg.num_groups, dt, cfg.attn_impl, name=f"down_{i}_attn_{j}")(h)
            if i != len(cfg.ch_mult) - 1:
                conv = _conv(h.shape[-1], 3, dt, f"down_{i}_downsample", stride=2, padding="VALID")
                h = _downsample(h, conv)
                res //= 2
        c = h.shape[-1]
        h = ResnetBlock(c, cfg.num_groups, dt, name="mid_block_1")(h)
        h = AttnBlock(cfg.num_groups, dt, cfg.attn_impl, name="mid_attn_1")(h)
        h = ResnetBlock(c, cfg.num_groups, dt, name="mid_block_2")(h)
        h = nn.silu(GroupNorm(VAE_GN_EPS, cfg.num_groups, name="norm_out")(h))
        out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        return _conv(out, 3, dt, "conv_out")(h)


class Decoder(nn.Module):
    """z [B, h, w, z_channels] -> image [B, H, W, out_ch]."""

    config: VAEConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        dt = cfg.dtype
        n = len(cfg.ch_mult)
        c = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        h = _conv(c, 3, dt, "conv_in")(z.astype(dt))
        h = ResnetBlock(c, cfg.num_groups, dt, name="mid_block_1")(h)
        h = AttnBlock(cfg.num_groups, dt, cfg.attn_impl, name="mid_attn_1")(h)
        h = ResnetBlock(c, cfg.num_groups, dt, name="mid_block_2")(h)
        for i in reversed(range(n)):  # LDM order: up_{n-1} (lowest resolution) runs first
            for j in range(cfg.num_res_blocks + 1):
                h = ResnetBlock(
                    cfg.ch * cfg.ch_mult[i], cfg.num_groups, dt, name=f"up_{i}_block_{j}"
                )(h)
                if res in cfg.attn_resolutions:
                    h = AttnBlock(cfg.num_groups, dt, cfg.attn_impl, name=f"up_{i}_attn_{j}")(h)
            if i != 0:
                h = _conv(h.shape[-1], 3, dt, f"up_{i}_upsample")(_upsample_nearest2(h))
                res *= 2
        h = nn.silu(GroupNorm(VAE_GN_EPS, cfg.num_groups, name="norm_out")(h))
        return _conv(cfg.out_ch, 3, dt, "conv_out")(h)


class AutoencoderKL(nn.Module):
    """Encoder + quant_conv (1x1, 2z -> 2*embed_dim) and post_quant_conv (1x1) + Decoder.

    `apply(..., x)` (used for init) returns `decode(mean(encode(x)))`; use `method=` for the parts:
      encode(x [B, H, W, in_ch]) -> moments [B, h, w, 2*embed_dim] (mean | logvar, unclamped)
      decode(z [B, h, w, embed_dim]) -> [B, H, W, out_ch]
    """

    config: VAEConfig

    def setup(self):
        cfg = self.config
        if not cfg.double_z:
            raise ValueError(
                "AutoencoderKL needs double_z=True (the posterior has mean and logvar)"
            )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = Dense(2 * cfg.embed_dim, dtype=cfg.dtype)
        self.post_quant_conv = Dense(cfg.z_channels, dtype=cfg.dtype)

    def encode(self, x: jax.Array) -> jax.Array:
        _check_channels("encode", x, self.config.in_channels)
        return self.quant_conv(self.encoder(x)).astype(jnp.float32)

    def decode(self, z: jax.Array) -> jax.Array:
        _check_channels("decode", z, self.config.embed_dim)
        return self.decoder(self.post_quant_conv(z.astype(self.config.dtype))).astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decode(posterior_mean(self.encode(x)))


def _check_channels(what: str, x: jax.Array, c: int) -> None:
    if x.ndim != 4 or x.shape[-1] != c:
        raise ValueError(
            f"AutoencoderKL.{what}: want a channels-last [B, H, W, {c}] array, got shape "
            f"{tuple(x.shape)} (transpose NCHW inputs to NHWC)"
        )


# ----------------------------------------------------------------------------- posterior
def posterior_mean(moments: jax.Array) -> jax.Array:
    """moments [..., 2z] -> mean [..., z] (also the posterior mode)."""
    return moments[..., : moments.shape[-1] // 2]


def posterior_logvar(moments: jax.Array) -> jax.Array:
    """moments [..., 2z] -> logvar [..., z], clamped to [-30, 20] as DiagonalGaussianDistribution."""
    return jnp.clip(moments[..., moments.shape[-1] // 2 :], *LOGVAR_CLAMP)


def posterior_sample(moments: jax.Array, key: jax.Array) -> jax.Array:
    """mean + exp(logvar / 2) * N(0, 1): a draw of the latent [..., z]."""
    mean = posterior_mean(moments)
    std = jnp.exp(0.5 * posterior_logvar(moments))
    return mean + std * jax.random.normal(key, mean.shape, mean.dtype)


# ----------------------------------------------------------------------------- video helpers
def _map_frames(fn, x: jax.Array, frame_chunk: int | None) -> jax.Array:
    """fn over x [N, ...] (N images), all at once or `frame_chunk` at a time (lax.map)."""
    n = x.shape[0]
    if frame_chunk is None or frame_chunk >= n:
        return fn(x)
    if frame_chunk < 1:
        raise ValueError(f"frame_chunk must be >= 1, got {frame_chunk}")
    pad = (-n) % frame_chunk
    xp = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
    xp = xp.reshape(-1, frame_chunk, *x.shape[1:])
    y = jax.lax.map(fn, xp)
    return y.reshape(-1, *y.shape[2:])[:n]


def decode_latents(
    vae: AutoencoderKL,
    params: Any,
    latents: jax.Array,
    *,
    scale_factor: float = SCALE_FACTOR,
    frame_chunk: int | None = None,
) -> jax.Array:
    """Video latents -> frames, each frame decoded on its own (VC `decode_first_stage_2DAE`).

    Args:
      latents: [B, F, h, w, z] scaled latents (the diffusion model's space).
      frame_chunk: decode this many frames (over all B*F) at a time with `lax.map`, to bound the
        decoder's activation memory (~1.5 GB per 320x512 frame in float32); None = all at once.
        The result does not depend on it (the VAE has no cross-frame operation).
    Returns:
      [B, F, H, W, out_ch] float32 in about [-1, 1] (not clipped).
    """
    if latents.ndim != 5:
        raise ValueError(f"decode_latents wants [B, F, h, w, z], got shape {tuple(latents.shape)}")
    b, f = latents.shape[:2]
    z = latents.reshape(b * f, *latents.shape[2:]) / scale_factor
    dec = lambda zz: vae.apply({"params": params}, zz, method=AutoencoderKL.decode)
    y = _map_frames(dec, z, frame_chunk)
    return y.reshape(b, f, *y.shape[1:])


def encode_frames(
    vae: AutoencoderKL,
    params: Any,
    frames: jax.Array,
    *,
    key: jax.Array | None = None,
    scale_factor: float = SCALE_FACTOR,
    frame_chunk: int | None = None,
) -> jax.Array:
    """Frames -> scaled video latents (VC `encode_first_stage_2DAE` + `* scale_factor`).

    Args:
      frames: [B, F, H, W, in_ch] in [-1, 1].
      key: draw from the posterior (training, as LDM `get_first_stage_encoding`); None = its mean.
    Returns:
      [B, F, h, w, z] float32, multiplied by `scale_factor`.
    """
    if frames.ndim != 5:
        raise ValueError(f"encode_frames wants [B, F, H, W, C], got shape {tuple(frames.shape)}")
    b, f = frames.shape[:2]
    x = frames.reshape(b * f, *frames.shape[2:])
    enc = lambda xx: vae.apply({"params": params}, xx, method=AutoencoderKL.encode)
    moments = _map_frames(enc, x, frame_chunk)
    lat = posterior_mean(moments) if key is None else posterior_sample(moments, key)
    lat = lat * scale_factor
    return lat.reshape(b, f, *lat.shape[1:])


def init_shapes(config: VAEConfig, image_hw: Sequence[int] = (32, 32)) -> Any:
    """The params tree as ShapeDtypeStructs (no allocation), for converters."""
    vae = AutoencoderKL(config)
    x = jax.ShapeDtypeStruct((1, *image_hw, config.in_channels), jnp.float32)
    return jax.eval_shape(vae.init, jax.random.key(0), x)["params"]
