"""One UNet: VideoCrafter2's 3-D UNet, or with its temporal parts off, the Stable Diffusion 2.1 UNet.

Port of VideoCrafter `lvdm/modules/networks/openaimodel3d.py` + `lvdm/modules/attention.py`
(`UNetModel`, base_512_v2) and of Stability-AI `ldm/modules/diffusionmodules/openaimodel.py`
(SD 2.x, `use_linear_in_transformer`, `legacy: False`); facts in docs/models.md,
"VideoCrafter2 3D UNet" and "Stable Diffusion 2.1 UNet".

Layout: channels-last. Inside, features are `[N, h, w, C]` with N = B*F (row b*F + f), as in the
original's `(b t) c h w`; the temporal modules view them as `[B, F, h, w, C]`.

Parameter names mirror the original module tree with '.' -> '_' (e.g. `input_blocks_1_0/
in_layers_2/kernel` is `input_blocks.1.0.in_layers.2.weight`); layer indices inside each block are
those of the original for the same config (`unet_layout`), so SD's `middle_block_2` is VC's
`middle_block.3` automatically. Exceptions: `temporal_conv` (the checkpoint spells it
`temopral_conv`) and `init_attn` (`init_attn.0`). The converters in `convert/unet/` map these.

Numerics (docs/models.md, "VideoCrafter2 3D UNet" > "Numeric traps"): ResBlock / out GroupNorm eps 1e-5 per frame; TemporalConvBlock GroupNorm eps
1e-5 pooled over frames; Spatial/Temporal transformer GroupNorm eps 1e-6 (temporal pooled over
frames); LayerNorm 1e-5; exact-erf GEGLU; attention scale d_head^-0.5 with a float32 softmax;
timestep embedding [cos, sin] in float32. Params are float32; `dtype` sets the compute dtype.

Attention Mosaic: `attn_edit` (protocol `maestro_jax.nn.attention.AttnEdit`) is threaded to the
cross-attention (attn2) of every SpatialTransformer (input, middle, output), never to
self-attention or to temporal attention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from maestro_jax.models.presets import PresetConfig
from maestro_jax.nn.attention import IMPLS, AttnEdit, dot_product_attention, merge_heads
from maestro_jax.nn.attention import split_heads as _split_heads
from maestro_jax.nn.frame_windows import fused_window_attention
from maestro_jax.nn.layers import GEGLU, Dense, GroupNorm, LayerNorm, timestep_embedding

# eps of every norm, from the original code (docs/models.md, numeric traps); tests assert these on a real forward.
RESBLOCK_GN_EPS = 1e-5  # ResBlock in_layers.0/out_layers.0 and the final out.0 (torch default)
TEMPORAL_CONV_GN_EPS = 1e-5  # TemporalConvBlock nn.GroupNorm(32, C) (torch default)
TRANSFORMER_GN_EPS = 1e-6  # SpatialTransformer / TemporalTransformer `norm`
LAYERNORM_EPS = 1e-5  # BasicTransformerBlock norm1..3 (torch default)
GN_GROUPS = 32
WINDOW_FUSIONS = ("attention", "unet")  # UNetConfig.window_fusion


# ----------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class UNetConfig(PresetConfig):
    """Hyperparameters of the original UNet (names as in the LDM/VideoCrafter configs).

    temporal: VideoCrafter's temporal parts together: `temporal_conv` (a TemporalConvBlock after
      every ResBlock but the resampling ones), `temporal_attention` (a TemporalTransformer after
      every SpatialTransformer, self-attention only) and `addition_attention` (`init_attn`).
    fps_cond: add `fps_embedding(timestep_embedding(fps))` to the time embedding.
    use_linear: Linear proj_in/proj_out in the transformers (else 1x1 convs; the same math here,
      only the converter's weight layout differs). `init_attn` is always built without it.
    attn_impl: attention implementation for every attention kind; `attn_impl_self`,
      `attn_impl_cross`, `attn_impl_temporal` override it for spatial self-attention,
      spatial cross-attention and temporal attention (incl. init_attn). 'xla' (default, the
      reference), 'cudnn', 'splash' or 'auto' (per call: splash on TPU from 128 keys on, i.e.
      spatial self-attention down to 10x16; cuDNN on GPU; XLA otherwise; see `nn.attention`).
    dtype: compute dtype ('float32' or 'bfloat16'); params stay float32, norms and softmax
      compute in float32.
    remat: rematerialise (jax.checkpoint) every Res/Spatial/Temporal block in the backward pass.
    temporal_window, temporal_stride, windows_at_once: FreeNoise's window fusion of temporal
      attention (`maestro_jax.nn.frame_windows`): with temporal_window > 0 and more frames than
      that, temporal attention runs over windows of temporal_window frames temporal_stride apart,
      windows_at_once of them together (0 = all), fused per frame. 0 (default): all frames.
    window_fusion: where those windows are fused. 'attention' (default, FreeNoise): inside
      every temporal attention, as above; every other layer sees all frames at once. 'unet':
      the sampler (`generation.sampling`) runs the whole UNet on windows_at_once windows of
      temporal_window frames at a time and fuses the predictions per frame with the same
      weights, so its memory follows windows_at_once, not the number of frames. The module
      itself never windows in 'unet' mode.
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    temporal_transformer_depth: int = 1
    context_dim: int = 1024
    temporal: bool = True
    init_attn_heads: int = 8
    fps_cond: bool = True
    use_linear: bool = True
    dtype: str = "float32"
    attn_impl: str = "xla"
    attn_impl_self: str | None = None
    attn_impl_cross: str | None = None
    attn_impl_temporal: str | None = None
    remat: bool = False
    temporal_window: int = 0
    temporal_stride: int = 4
    windows_at_once: int = 0
    window_fusion: str = "attention"

    def __post_init__(self):
        # lists from JSON/yaml -> tuples so the config stays hashable (flax module attribute)
        for f in ("channel_mult", "attention_resolutions"):
            object.__setattr__(self, f, tuple(int(v) for v in getattr(self, f)))
        for f in ("attn_impl", "attn_impl_self", "attn_impl_cross", "attn_impl_temporal"):
            v = getattr(self, f)
            if v is not None and v not in IMPLS:
                raise ValueError(f"UNetConfig.{f}={v!r} is not one of {IMPLS}")
        for f in ("temporal_window", "windows_at_once"):
            if getattr(self, f) < 0:
                raise ValueError(f"UNetConfig.{f} must be >= 0, got {getattr(self, f)}")
        if self.window_fusion not in WINDOW_FUSIONS:
            raise ValueError(
                f"UNetConfig.window_fusion={self.window_fusion!r} is not one of {WINDOW_FUSIONS}"
            )
        if jnp.dtype(self.dtype) not in (jnp.float32, jnp.bfloat16, jnp.float16):
            raise ValueError(f"UNetConfig.dtype={self.dtype!r}: want float32, bfloat16 or float16")
        for mult in self.channel_mult:
            ch = mult * self.model_channels
            if ch % self.num_head_channels or ch % GN_GROUPS:
                raise ValueError(
                    f"width {ch} must be divisible by num_head_channels "
                    f"{self.num_head_channels} and by {GN_GROUPS} GroupNorm groups"
                )

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def frame_window(self) -> tuple[int, int, int]:
        """(window, stride, at_once) of the temporal attention (window 0: all frames; always 0
        in 'unet' fusion, where the sampler hands the UNet one window at a time)."""
        if self.window_fusion == "unet":
            return (0, self.temporal_stride, 0)
        return (self.temporal_window, self.temporal_stride, self.windows_at_once)

    def impl(self, kind: str) -> str:
        """Attention implementation for 'self' | 'cross' | 'temporal'."""
        return getattr(self, f"attn_impl_{kind}") or self.attn_impl

    def replace(self, **kw) -> UNetConfig:
        return dataclasses.replace(self, **kw)

    # ---- presets (`from_preset(name, **overrides)`, `from_folder(path)`: `PresetConfig`)
    @classmethod
    def vc2(cls, **kw) -> UNetConfig:
        """VideoCrafter2 base_512_v2 (`configs/inference_t2v_512_v2.0.yaml`), 1.41 B params."""
        return cls.from_preset("vc2", **kw)

    @classmethod
    def sd21(cls, **kw) -> UNetConfig:
        """Stable Diffusion 2.1 (`v2-inference(-v).yaml`), 866 M params."""
        return cls.from_preset("sd21", **kw)

    @classmethod
    def tiny(cls, temporal: bool = True, **kw) -> UNetConfig:
        """A few-MB UNet for tests and CPU demos (the vc2_unet3d fixture's sizes)."""
        return cls.from_preset("tiny", **{"temporal": temporal, "fps_cond": temporal, **kw})

    # ---- from the original constructor kwargs
    @classmethod
    def from_ldm_vc(cls, params: Mapping[str, Any], **kw) -> UNetConfig:
        """From VideoCrafter `openaimodel3d.UNetModel(**params)` kwargs (the yaml's unet params)."""
        p = dict(params)
        _reject_unported(
            p,
            "VideoCrafter UNet",
            dims=2,
            use_scale_shift_norm=False,
            resblock_updown=False,
            conv_resample=True,
            tempspatial_aware=False,
            use_image_attention=False,
            use_causal_attention=False,
            temporal_selfatt_only=True,
        )
        flags = {
            "temporal_conv": bool(p.get("temporal_conv", False)),
            "temporal_attention": bool(p.get("temporal_attention", True)),
            "addition_attention": bool(p.get("addition_attention", False)),
        }
        if len(set(flags.values())) != 1:
            raise ValueError(
                "VideoCrafter UNet: temporal_conv, temporal_attention and addition_attention must "
                f"be all on (VideoCrafter2) or all off; got {flags}"
            )
        temporal = flags["temporal_conv"]
        if temporal and p.get("use_relative_position", True):
            raise ValueError(
                "VideoCrafter UNet: use_relative_position=True (VideoCrafter 1.0) is not ported; "
                "VideoCrafter2 sets it false"
            )
        return cls(
            **_common(p),
            temporal=temporal,
            temporal_transformer_depth=int(p.get("temporal_transformer_depth", 1)),
            fps_cond=bool(p.get("fps_cond", False)),
            use_linear=bool(p.get("use_linear", False)),
            **kw,
        )

    @classmethod
    def from_ldm_sd(cls, params: Mapping[str, Any], **kw) -> UNetConfig:
        """From Stability-AI `openaimodel.UNetModel(**params)` kwargs (SD 2.x yaml unet params)."""
        p = dict(params)
        _reject_unported(
            p,
            "SD UNet",
            dims=2,
            use_scale_shift_norm=False,
            resblock_updown=False,
            conv_resample=True,
            num_classes=None,
            use_spatial_transformer=True,
            legacy=False,
            disable_self_attentions=None,
            num_attention_blocks=None,
            adm_in_channels=None,
        )
        if not p.get("use_spatial_transformer") or p.get("legacy", True):
            raise ValueError(
                "SD UNet: only the SD 2.x form is ported (use_spatial_transformer: True, "
                "legacy: False)"
            )
        return cls(
            **_common(p),
            temporal=False,
            fps_cond=False,
            use_linear=bool(p.get("use_linear_in_transformer", False)),
            **kw,
        )


UNetConfig._presets = {
    "vc2": {},
    "sd21": {"temporal": False, "fps_cond": False},
    "tiny": dict(
        model_channels=32,
        channel_mult=(1, 1, 2),
        attention_resolutions=(1, 2),
        num_head_channels=16,
        context_dim=32,
    ),
}
UNetConfig._folder_key = "unet"


def _reject_unported(p: Mapping[str, Any], what: str, **supported: Any) -> None:
    """Raise, naming them, on constructor kwargs set to a value whose code path is not ported."""
    bad = {k: p[k] for k, v in supported.items() if k in p and p[k] != v}
    if bad:
        raise ValueError(f"{what}: unported constructor arguments {bad} (supported: {supported})")


def _common(p: Mapping[str, Any]) -> dict:
    depth = p.get("transformer_depth", 1)
    if p.get("num_head_channels", -1) == -1:
        raise ValueError("UNet: num_heads without num_head_channels (SD 1.x style) is not ported")
    if not isinstance(depth, int):
        raise ValueError(f"per-level transformer_depth {depth} is not supported")
    return dict(
        in_channels=int(p["in_channels"]),
        out_channels=int(p["out_channels"]),
        model_channels=int(p["model_channels"]),
        channel_mult=tuple(p.get("channel_mult", (1, 2, 4, 8))),
        num_res_blocks=int(p["num_res_blocks"]),
        attention_resolutions=tuple(p["attention_resolutions"]),
        num_head_channels=int(p["num_head_channels"]),
        transformer_depth=depth,
        context_dim=int(p["context_dim"]),
    )


# ----------------------------------------------------------------------------- layout
class Layer(NamedTuple):
    """One layer of a block: kind in {'conv_in', 'res', 'spatial', 'temporal', 'down', 'up'}."""

    kind: str
    channels: int  # output channels
    heads: int = 0  # attention heads (spatial / temporal)


class Layout(NamedTuple):
    input_blocks: list[list[Layer]]
    middle_block: list[Layer]
    output_blocks: list[list[Layer]]


def unet_layout(cfg: UNetConfig) -> Layout:
    """The block structure of the original `UNetModel.__init__`, layer by layer.

    Indices in these lists ARE the original module indices (`input_blocks.i.j`), for VideoCrafter
    (temporal on) and SD (temporal off) alike.
    """
    mc, dh = cfg.model_channels, cfg.num_head_channels

    def attn_layers(ch: int) -> list[Layer]:
        out = [Layer("spatial", ch, ch // dh)]
        if cfg.temporal:
            out.append(Layer("temporal", ch, ch // dh))
        return out

    inputs: list[list[Layer]] = [[Layer("conv_in", mc)]]
    chans = [mc]
    ch, ds = mc, 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            ch = mult * mc
            layers = [Layer("res", ch)]
            if ds in cfg.attention_resolutions:
                layers += attn_layers(ch)
            inputs.append(layers)
            chans.append(ch)
        if level != len(cfg.channel_mult) - 1:
            inputs.append([Layer("down", ch)])
            chans.append(ch)
            ds *= 2
    middle = [Layer("res", ch), *attn_layers(ch), Layer("res", ch)]
    outputs: list[list[Layer]] = []
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for i in range(cfg.num_res_blocks + 1):
            chans.pop()
            ch = mc * mult
            layers = [Layer("res", ch)]
            if ds in cfg.attention_resolutions:
                layers += attn_layers(ch)
            if level and i == cfg.num_res_blocks:
                layers.append(Layer("up", ch))
                ds //= 2
            outputs.append(layers)
    return Layout(inputs, middle, outputs)


def layer_kinds(cfg: UNetConfig) -> dict[str, str]:
    """{flax module name of each top-level layer: kind}, e.g. 'input_blocks_1_1': 'spatial'."""
    lay = unet_layout(cfg)
    out = {}
    for i, block in enumerate(lay.input_blocks):
        for j, layer in enumerate(block):
            out[f"input_blocks_{i}_{j}"] = layer.kind
    for j, layer in enumerate(lay.middle_block):
        out[f"middle_block_{j}"] = layer.kind
    for i, block in enumerate(lay.output_blocks):
        for j, layer in enumerate(block):
            out[f"output_blocks_{i}_{j}"] = layer.kind
    if cfg.temporal:
        out["init_attn"] = "init_attn"
    return out


# ----------------------------------------------------------------------------- layers
def _precision(dtype) -> jax.lax.Precision | None:
    # float32 parity on GPU/TPU needs full-precision passes; bf16 runs at native speed.
    return jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None


def _conv(features: int, kernel: int, dtype, name: str, stride: int = 1) -> nn.Conv:
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        precision=_precision(dtype),
        name=name,
    )


class _Kernel(nn.Module):
    """A bias-free projection's weight [Din, Dout] (param `kernel`), returned as an array so
    `project_kv` stays a pure function that an `AttnEdit` may call under any transform."""

    features: int

    @nn.compact
    def __call__(self, din: int) -> jax.Array:
        return self.param(
            "kernel", nn.initializers.lecun_normal(), (din, self.features), jnp.float32
        )


class Attention(nn.Module):
    """LDM `CrossAttention`: to_q/to_k/to_v (no bias), to_out.0 (bias); scale d_head^-0.5.

    x: [N, T, Cq]; context: [N, L, Dc] or None (self-attention). Returns [N, T, Cq].
    """

    heads: int
    dim_head: int
    impl: str = "xla"
    dtype: Any = jnp.float32
    frame_window: tuple[int, int, int] = (0, 0, 0)  # (window, stride, at_once): temporal only

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        attn_edit: AttnEdit | None = None,
        hw: tuple[int, int] | None = None,
    ) -> jax.Array:
        inner = self.heads * self.dim_head
        ctx = x if context is None else context
        prec = _precision(self.dtype)
        q = Dense(inner, use_bias=False, dtype=self.dtype, name="to_q")(x)
        q = _split_heads(q, self.heads)
        wk = _Kernel(inner, name="to_k")(ctx.shape[-1])
        wv = _Kernel(inner, name="to_v")(ctx.shape[-1])
        dtype, heads = self.dtype, self.heads

        def project_kv(c: jax.Array) -> tuple[jax.Array, jax.Array]:
            """[..., L, Dc] -> (k, v), each [..., L, heads, dh], with this layer's to_k/to_v."""
            c = c.astype(dtype)
            k = jnp.matmul(c, wk.astype(dtype), precision=prec)
            v = jnp.matmul(c, wv.astype(dtype), precision=prec)
            return _split_heads(k, heads), _split_heads(v, heads)

        scale = self.dim_head**-0.5
        if attn_edit is not None:
            out = attn_edit(q, ctx, project_kv, scale=scale, hw=hw)
        else:
            k, v = project_kv(ctx)
            impl = self.impl
            attend = lambda q_, k_, v_: dot_product_attention(q_, k_, v_, scale=scale, impl=impl)  # noqa: E731
            window, stride, at_once = self.frame_window
            if window and context is None and x.shape[1] > window:  # 'attention' fusion
                out = fused_window_attention(
                    q, k, v, attend, window=window, stride=stride, at_once=at_once
                )
            else:
                out = attend(q, k, v)
        return Dense(x.shape[-1], dtype=self.dtype, name="to_out_0")(merge_heads(out))


class BasicTransformerBlock(nn.Module):
    """x += attn1(LN x); x += attn2(LN x, context); x += ff(LN x). x: [N, T, C]."""

    heads: int
    dim_head: int
    impl_self: str = "xla"
    impl_cross: str = "xla"
    dtype: Any = jnp.float32
    frame_window: tuple[int, int, int] = (0, 0, 0)  # temporal blocks (both self-attentions)

    @nn.compact
    def __call__(self, x, context=None, attn_edit=None, hw=None):
        d, fw = self.dtype, self.frame_window
        h = LayerNorm(LAYERNORM_EPS, name="norm1")(x)
        x = x + Attention(self.heads, self.dim_head, self.impl_self, d, fw, name="attn1")(h)
        h = LayerNorm(LAYERNORM_EPS, name="norm2")(x)
        x = x + Attention(self.heads, self.dim_head, self.impl_cross, d, fw, name="attn2")(
            h, context, attn_edit, hw
        )
        h = LayerNorm(LAYERNORM_EPS, name="norm3")(x)
        return x + _FeedForward(x.shape[-1], d, name="ff")(h)


class _FeedForward(nn.Module):
    """`ff.net` = [GEGLU(C, 4C) (proj C -> 8C; value, gate = halves; exact GELU), Dropout,
    Linear(4C, C)]."""

    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = GEGLU(4 * self.dim, dtype=self.dtype, name="net_0")(x)
        return Dense(self.dim, dtype=self.dtype, name="net_2")(h)


class SpatialTransformer(nn.Module):
    """Per-frame transformer over h*w tokens. x: [N, h, w, C]; context [N, L, Dc]."""

    heads: int
    dim_head: int
    depth: int = 1
    impl_self: str = "xla"
    impl_cross: str = "xla"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context, attn_edit=None):
        n, h, w, c = x.shape
        inner = self.heads * self.dim_head
        y = GroupNorm(TRANSFORMER_GN_EPS, GN_GROUPS, name="norm")(x)
        y = Dense(inner, dtype=self.dtype, name="proj_in")(y.reshape(n, h * w, c))
        for i in range(self.depth):
            y = BasicTransformerBlock(
                self.heads,
                self.dim_head,
                self.impl_self,
                self.impl_cross,
                self.dtype,
                name=f"transformer_blocks_{i}",
            )(y, context, attn_edit, (h, w))
        y = Dense(c, dtype=self.dtype, name="proj_out")(y)
        return x + y.reshape(n, h, w, c)


class TemporalTransformer(nn.Module):
    """Self-attention over frames at each pixel (`only_self_att`; attn2 is self-attention too).

    x: [B*F, h, w, C]. GroupNorm pools over frames ([B, F, h, w, C]); tokens `(b h w) t c`.
    proj_in/out are Linear (use_linear) or Conv1d k=1 in the original: the same math.
    """

    heads: int
    dim_head: int
    frames: int
    depth: int = 1
    impl: str = "xla"
    dtype: Any = jnp.float32
    frame_window: tuple[int, int, int] = (0, 0, 0)  # FreeNoise window fusion (UNetConfig)

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        f = self.frames
        b = n // f
        inner = self.heads * self.dim_head
        y = GroupNorm(TRANSFORMER_GN_EPS, GN_GROUPS, name="norm")(x.reshape(b, f, h, w, c))
        y = y.transpose(0, 2, 3, 1, 4).reshape(b * h * w, f, c)
        y = Dense(inner, dtype=self.dtype, name="proj_in")(y)
        for i in range(self.depth):
            y = BasicTransformerBlock(
                self.heads,
                self.dim_head,
                self.impl,
                self.impl,
                self.dtype,
                self.frame_window,
                name=f"transformer_blocks_{i}",
            )(y)
        y = Dense(c, dtype=self.dtype, name="proj_out")(y)
        y = y.reshape(b, h, w, f, c).transpose(0, 3, 1, 2, 4).reshape(n, h, w, c)
        return x + y


class TemporalConv(nn.Module):
    """Conv3d kernel (3, 1, 1), padding (1, 0, 0) = a 1-D conv over frames.

    x: [B, F, h, w, C]; kernel [3, Cin, Cout] (tap k reads frame t + k - 1, zeros outside).
    Written as three shifted matmuls, which every backend runs at matmul speed.
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        cin = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (3, cin, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        f = x.shape[1]
        xp = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
        prec = _precision(self.dtype)
        y = sum(jnp.matmul(xp[:, k : k + f], kernel[k], precision=prec) for k in range(3))
        return y + bias.astype(self.dtype)


class TemporalConvBlock(nn.Module):
    """x + conv4(conv3(conv2(conv1(x)))), each [GN32 (pooled over frames), SiLU, TemporalConv].

    x: [B*F, h, w, C] -> same.
    """

    frames: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        y = x.reshape(n // self.frames, self.frames, h, w, c)
        for i in range(1, 5):
            # Sequential index of the conv: 2 in conv1 (no Dropout), 3 in conv2..4.
            y = GroupNorm(TEMPORAL_CONV_GN_EPS, GN_GROUPS, name=f"conv{i}_0")(y)
            y = TemporalConv(c, self.dtype, name=f"conv{i}_{2 if i == 1 else 3}")(nn.silu(y))
        return x + y.reshape(n, h, w, c)


class ResBlock(nn.Module):
    """LDM ResBlock (+ VideoCrafter's `temopral_conv` after the residual sum).

    x: [B*F, h, w, Cin]; emb: [B*F, E]. Returns [B*F, h, w, Cout].
    """

    out_channels: int
    frames: int = 1
    temporal: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, emb):
        d, co = self.dtype, self.out_channels
        h = GroupNorm(RESBLOCK_GN_EPS, GN_GROUPS, name="in_layers_0")(x)
        h = _conv(co, 3, d, "in_layers_2")(nn.silu(h))
        e = Dense(co, dtype=d, name="emb_layers_1")(nn.silu(emb))
        h = h + e[:, None, None, :].astype(h.dtype)
        h = GroupNorm(RESBLOCK_GN_EPS, GN_GROUPS, name="out_layers_0")(h)
        h = _conv(co, 3, d, "out_layers_3")(nn.silu(h))
        skip = x if x.shape[-1] == co else _conv(co, 1, d, "skip_connection")(x)
        h = skip.astype(h.dtype) + h
        if self.temporal:
            h = TemporalConvBlock(self.frames, d, name="temporal_conv")(h)
        return h


class Downsample(nn.Module):
    """Conv 3x3, stride 2, pad 1 (`op`). x: [N, h, w, C] -> [N, h/2, w/2, C]."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _conv(self.channels, 3, self.dtype, "op", stride=2)(x)


class Upsample(nn.Module):
    """Nearest x2 on h and w, then conv 3x3 (`conv`). x: [N, h, w, C] -> [N, 2h, 2w, C]."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return _conv(self.channels, 3, self.dtype, "conv")(x)


# ----------------------------------------------------------------------------- UNet
class UNet(nn.Module):
    """The VideoCrafter2 3-D UNet (config.temporal) or the SD 2.1 2-D UNet.

    Call: `unet.apply({'params': p}, x, timesteps, context, fps=None, attn_edit=None)`.

    Args:
      x: [B, F, H, W, Cin] (temporal on; also accepted with temporal off: frames run
        independently) or [B, H, W, Cin] (temporal off). H, W divisible by 2**(levels-1).
      timesteps: [B] (or a scalar, broadcast), int or float.
      context: [B, L, Dc], shared by the F frames of each sample (VideoCrafter's path, repeated
        over frames), or [B*F, L, Dc] with row b*F + f for (sample b, frame f) (Maestro's path).
      fps: [B] (or a scalar) frame rate; required when config.fps_cond.
      attn_edit: an `AttnEdit` applied in every SpatialTransformer's cross-attention (attn2).
    Returns:
      eps prediction in x's layout and dtype.
    """

    config: UNetConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        timesteps: jax.Array,
        context: jax.Array,
        fps: jax.Array | None = None,
        attn_edit: AttnEdit | None = None,
    ) -> jax.Array:
        cfg = self.config
        dt = cfg.compute_dtype
        b, f, hh, ww, ctx = self._check_inputs(x, timesteps, context, fps)
        n = b * f

        # time (+ fps) embedding, float32, repeated over frames (row b*F + f)
        mc, ed = cfg.model_channels, 4 * cfg.model_channels
        t = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        emb = self._embed("time_embed", timestep_embedding(t, mc), ed)
        if cfg.fps_cond:
            fp = jnp.broadcast_to(jnp.asarray(fps), (b,))
            emb = emb + self._embed("fps_embedding", timestep_embedding(fp, mc), ed)
        emb = jnp.repeat(emb, f, axis=0)

        h = x.reshape(n, hh, ww, x.shape[-1]).astype(dt)
        lay = unet_layout(cfg)
        hs = []
        for i, block in enumerate(lay.input_blocks):
            for j, layer in enumerate(block):
                h = self._layer(layer, f"input_blocks_{i}_{j}", h, emb, ctx, attn_edit, f)
            if i == 0 and cfg.temporal:
                # init_attn: TemporalTransformer(mc, 8 heads x num_head_channels) on conv_in's
                # output, before it is pushed as skip 0
                h = self._block(TemporalTransformer)(
                    cfg.init_attn_heads,
                    cfg.num_head_channels,
                    f,
                    cfg.transformer_depth,
                    cfg.impl("temporal"),
                    dt,
                    cfg.frame_window,
                    name="init_attn",
                )(h)
            hs.append(h)
        for j, layer in enumerate(lay.middle_block):
            h = self._layer(layer, f"middle_block_{j}", h, emb, ctx, attn_edit, f)
        for i, block in enumerate(lay.output_blocks):
            h = jnp.concatenate([h, hs.pop()], axis=-1)  # [h, skip], h first
            for j, layer in enumerate(block):
                h = self._layer(layer, f"output_blocks_{i}_{j}", h, emb, ctx, attn_edit, f)
        h = GroupNorm(RESBLOCK_GN_EPS, GN_GROUPS, name="out_0")(h)
        y = _conv(cfg.out_channels, 3, dt, "out_2")(nn.silu(h))
        return y.reshape(*x.shape[:-1], cfg.out_channels).astype(x.dtype)

    # ---- helpers
    def _embed(self, name: str, t_emb: jax.Array, dim: int) -> jax.Array:
        h = Dense(dim, name=f"{name}_0")(t_emb)
        return Dense(dim, name=f"{name}_2")(nn.silu(h))

    def _block(self, cls):
        return nn.remat(cls) if self.config.remat else cls

    def _layer(self, layer: Layer, name: str, h, emb, ctx, attn_edit, frames: int):
        cfg, dt = self.config, self.config.compute_dtype
        if layer.kind == "conv_in":
            return _conv(layer.channels, 3, dt, name)(h)
        if layer.kind == "res":
            return self._block(ResBlock)(layer.channels, frames, cfg.temporal, dt, name=name)(
                h, emb
            )
        if layer.kind == "spatial":
            return self._block(SpatialTransformer)(
                layer.heads,
                cfg.num_head_channels,
                cfg.transformer_depth,
                cfg.impl("self"),
                cfg.impl("cross"),
                dt,
                name=name,
            )(h, ctx, attn_edit)
        if layer.kind == "temporal":
            return self._block(TemporalTransformer)(
                layer.heads,
                cfg.num_head_channels,
                frames,
                cfg.temporal_transformer_depth,
                cfg.impl("temporal"),
                dt,
                cfg.frame_window,
                name=name,
            )(h)
        if layer.kind == "down":
            return Downsample(layer.channels, dt, name=name)(h)
        if layer.kind == "up":
            return Upsample(layer.channels, dt, name=name)(h)
        raise ValueError(f"unknown layer kind {layer.kind}")

    def _check_inputs(self, x, timesteps, context, fps):
        cfg = self.config
        if x.ndim == 5:
            b, f, hh, ww, c = x.shape
        elif x.ndim == 4:
            if cfg.temporal:
                raise ValueError(
                    f"UNet with temporal layers wants x as [B, F, H, W, C], got shape {x.shape}"
                )
            (b, hh, ww, c), f = x.shape, 1
        else:
            raise ValueError(f"UNet: x must be [B, F, H, W, C] or [B, H, W, C], got {x.shape}")
        if c != cfg.in_channels:
            raise ValueError(
                f"UNet: x has {c} channels (last axis), config wants {cfg.in_channels}"
            )
        m = 2 ** (len(cfg.channel_mult) - 1)
        if hh % m or ww % m:
            raise ValueError(f"UNet: spatial size {hh}x{ww} must be divisible by {m}")
        if jnp.ndim(timesteps) not in (0, 1) or (jnp.ndim(timesteps) == 1 and len(timesteps) != b):
            raise ValueError(
                f"UNet: timesteps must be [B={b}] or a scalar, got {jnp.shape(timesteps)}"
            )
        if cfg.fps_cond:
            if fps is None:
                raise ValueError("UNet: this config has fps_cond; pass fps ([B] frame rates)")
            if jnp.ndim(fps) not in (0, 1) or (jnp.ndim(fps) == 1 and len(fps) != b):
                raise ValueError(f"UNet: fps must be [B={b}] or a scalar, got {jnp.shape(fps)}")
        if context.ndim != 3 or context.shape[-1] != cfg.context_dim:
            raise ValueError(
                f"UNet: context must be [B, L, {cfg.context_dim}] or [B*F, L, {cfg.context_dim}], "
                f"got {context.shape}"
            )
        if context.shape[0] == b * f:
            ctx = context  # per-frame (Maestro), row b*F + f
        elif context.shape[0] == b:
            ctx = jnp.repeat(context, f, axis=0)  # VideoCrafter's repeat_interleave
        else:
            raise ValueError(
                f"UNet: context has {context.shape[0]} rows; want B={b} (shared over frames) or "
                f"B*F={b * f} (per frame)"
            )
        return b, f, hh, ww, ctx
