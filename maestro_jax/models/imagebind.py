"""ImageBind (Girdhar et al., CVPR 2023): audio, vision and text branches, channels-last.

Maestro (paper section 3.2, docs/models.md, "ImageBind") reads the *audio trunk tokens*
(CLS + 228 patch tokens per 2 s clip, before the head) as the CIM input; the audio, vision and
text embeddings serve the IA metric and data curation.

Numerics follow `imagebind/models` of facebookresearch/ImageBind@53680b0:
- audio stem: Conv2d(1->D, k 16, stride 10, no bias) on the [128 mel, 204 frame] log-mel, giving
  a 12 (freq) x 19 (time) grid flattened frequency-major (f * 19 + t), LayerNorm eps **1e-5**;
- every transformer LayerNorm (blocks, vision pre-LN, heads) uses eps **1e-6**;
- MLP GELU is exact (erf);
- audio attention has `add_bias_kv`: one learned key/value token appended after the in-projection
  (229 queries attend to 230 keys); vision and text do not; text is causal;
- audio has no pre-transformer LN and no final LN: the trunk tokens the CIM reads are the raw
  output of the last block;
- embeddings: audio L2-normalised x exp(log_logit_scale) (= 20, a fixed buffer), vision
  L2-normalised, text L2-normalised x min(exp(log_logit_scale), 100).

Public API:
- `ImageBindConfig`, `imagebind_huge()`, `ImageBindConfig.from_torch_kwargs(kwargs)`.
- `ImageBindAudio(cfg)`: mel [B, S, 128, 204] (or one clip per row, [B, 128, 204])
  -> `AudioOutput(tokens, emb_per_clip, emb)`.
- `ImageBindVision(cfg)`: normalised images [B, 224, 224, 3] -> `VisionOutput(tokens, emb)`.
- `ImageBindText(cfg)`: token ids [B, 77] -> `TextOutput(tokens, emb)`.
- `preprocess_images(images)`: [B, H, W, 3] in [0, 1] -> [B, 224, 224, 3] CLIP-normalised.
- `init_shapes(cfg)`: the parameter shapes of all three branches (via `jax.eval_shape`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.models.presets import PresetConfig
from maestro_jax.nn.attention import dot_product_attention, merge_heads, split_heads
from maestro_jax.nn.layers import Dense, LayerNorm, gelu_exact

STEM_LN_EPS = 1e-5  # audio rgbt_stem.norm_layer: torch nn.LayerNorm default
LN_EPS = 1e-6  # blocks, vision pre-transformer LN and heads: partial(nn.LayerNorm, eps=1e-6)
NORMALIZE_EPS = 1e-12  # torch.nn.functional.normalize
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ImageBindConfig(PresetConfig):
    """Sizes of the three branches. Defaults = `imagebind_huge` (ImageBind-Huge)."""

    out_dim: int = 1024
    mlp_ratio: int = 4
    # audio
    audio_width: int = 768
    audio_depth: int = 12
    audio_heads: int = 12
    audio_kernel: int = 16
    audio_stride: int = 10
    num_mel_bins: int = 128
    target_len: int = 204
    # vision (stills: the image is repeated to `video_frames` frames, kernel (kt, p, p))
    vision_width: int = 1280
    vision_depth: int = 32
    vision_heads: int = 16
    video_frames: int = 2
    vision_kernel: tuple[int, int, int] = (2, 14, 14)
    image_size: int = 224
    # text
    text_width: int = 1024
    text_depth: int = 24
    text_heads: int = 16
    vocab_size: int = 49408
    context_length: int = 77
    # LearnableLogitScaling(max_logit_scale=100): exp(log_logit_scale) is clipped at this value
    max_logit_scale: float = 100.0
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @property
    def audio_grid(self) -> tuple[int, int]:
        """(frequency, time) patches of the stem: (12, 19) for 128 x 204."""
        f = (self.num_mel_bins - self.audio_kernel) // self.audio_stride + 1
        t = (self.target_len - self.audio_kernel) // self.audio_stride + 1
        return f, t

    @property
    def audio_tokens(self) -> int:
        f, t = self.audio_grid
        return 1 + f * t

    @property
    def vision_tokens(self) -> int:
        g = self.image_size // self.vision_kernel[1]
        return 1 + g * g

    @classmethod
    def from_torch_kwargs(cls, kw: Mapping[str, Any], **overrides: Any) -> ImageBindConfig:
        """From `ImageBindModel(**kw)` constructor arguments (a fixture's `config.json`)."""
        base = cls()
        get = lambda k, d: kw.get(k, d)
        cfg = cls(
            out_dim=get("out_embed_dim", base.out_dim),
            audio_width=get("audio_embed_dim", base.audio_width),
            audio_depth=get("audio_num_blocks", base.audio_depth),
            audio_heads=get("audio_num_heads", base.audio_heads),
            audio_kernel=get("audio_kernel_size", base.audio_kernel),
            audio_stride=get("audio_stride", base.audio_stride),
            num_mel_bins=get("audio_num_mel_bins", base.num_mel_bins),
            target_len=get("audio_target_len", base.target_len),
            vision_width=get("vision_embed_dim", base.vision_width),
            vision_depth=get("vision_num_blocks", base.vision_depth),
            vision_heads=get("vision_num_heads", base.vision_heads),
            video_frames=get("video_frames", base.video_frames),
            vision_kernel=tuple(get("kernel_size", base.vision_kernel)),
            text_width=get("text_embed_dim", base.text_width),
            text_depth=get("text_num_blocks", base.text_depth),
            text_heads=get("text_num_heads", base.text_heads),
        )
        return dataclasses.replace(cfg, **overrides)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dtype"] = jnp.dtype(self.dtype).name
        return d


ImageBindConfig._presets = {
    "huge": {},
    # runlocal tests: a one-block 32-wide audio trunk
    "tiny": dict(out_dim=32, audio_width=32, audio_depth=1, audio_heads=2),
}
ImageBindConfig._folder_key = "imagebind"
ImageBindConfig._folder_fallback = ("config",)
ImageBindConfig._dtype_object = True


def imagebind_huge(**overrides: Any) -> ImageBindConfig:
    """ImageBind-Huge: audio 768 x 12, vision 1280 x 32, text 1024 x 24, embeddings 1024."""
    return ImageBindConfig.from_preset("huge", **overrides)


def _normalize(x: jax.Array) -> jax.Array:
    """torch F.normalize(x, dim=-1): x / max(||x||, 1e-12), in float32."""
    x = x.astype(jnp.float32)
    n = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(n, NORMALIZE_EPS)


def _logit_scale(log_scale: jax.Array, max_scale: float) -> jax.Array:
    return jnp.minimum(jnp.exp(log_scale.astype(jnp.float32)), max_scale)


class MultiheadAttention(nn.Module):
    """torch `nn.MultiheadAttention(D, heads, bias=True, add_bias_kv=...)`, batch-first here.

    Params: `in_proj` Dense(D -> 3D) with q, k, v columns in that order (torch's packed
    `in_proj_weight` rows), `out_proj` Dense(D -> D), and with `add_bias_kv` the learned
    `bias_k`, `bias_v` (1, 1, D), appended as one extra key/value token after the projection.
    """

    width: int
    heads: int
    add_bias_kv: bool = False
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        """x: [B, T, D]; bias: additive logits bias broadcastable to [B, heads, T, T(+1)]."""
        d = self.width
        qkv = Dense(3 * d, dtype=self.dtype, name="in_proj")(x)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        if self.add_bias_kv:
            init = nn.initializers.normal(0.02)
            bk = self.param("bias_k", init, (1, 1, d), jnp.float32)
            bv = self.param("bias_v", init, (1, 1, d), jnp.float32)
            extra = (x.shape[0], 1, d)
            k = jnp.concatenate([k, jnp.broadcast_to(bk.astype(k.dtype), extra)], axis=1)
            v = jnp.concatenate([v, jnp.broadcast_to(bv.astype(v.dtype), extra)], axis=1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        out = dot_product_attention(q, k, v, bias=bias, impl=self.attn_impl)
        return Dense(d, dtype=self.dtype, name="out_proj")(merge_heads(out))


class Block(nn.Module):
    """ImageBind `BlockWithMasking`: pre-norm attention + exact-GELU MLP, LN eps 1e-6."""

    width: int
    heads: int
    mlp_dim: int
    add_bias_kv: bool = False
    dtype: Any = jnp.float32
    attn_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        """x: [B, T, D] -> [B, T, D]."""
        h = LayerNorm(LN_EPS, name="norm_1")(x)
        h = MultiheadAttention(
            self.width, self.heads, self.add_bias_kv, self.dtype, self.attn_impl, name="attn"
        )(h, bias)
        x = x + h
        h = LayerNorm(LN_EPS, name="norm_2")(x)
        h = Dense(self.mlp_dim, dtype=self.dtype, name="fc1")(h)
        h = Dense(self.width, dtype=self.dtype, name="fc2")(gelu_exact(h))
        return x + h


class _Trunk(nn.Module):
    width: int
    depth: int
    heads: int
    mlp_dim: int
    add_bias_kv: bool
    dtype: Any
    attn_impl: str

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array | None = None) -> jax.Array:
        for i in range(self.depth):
            x = Block(
                self.width,
                self.heads,
                self.mlp_dim,
                self.add_bias_kv,
                self.dtype,
                self.attn_impl,
                name=f"blocks_{i}",
            )(x, bias)
        return x


def _embed_head(x: jax.Array, out_dim: int, dtype: Any) -> jax.Array:
    """Head of a compact module: LN(eps 1e-6) -> Linear(no bias); x is the selected token."""
    x = LayerNorm(LN_EPS, name="head_norm")(x)
    return Dense(out_dim, use_bias=False, dtype=dtype, name="head_proj")(x)


class AudioOutput(NamedTuple):
    """tokens: [B, S, 229, D] trunk output before the head (CLS first, then patches f*19+t),
    the CIM input; emb_per_clip: [B, S, E] per-clip embeddings (norm 20, Maestro's
    `output_5clips`); emb: [B, E] the mean over clips (ImageBind's own 5-D output). With a
    [B, 128, 204] input the S axis is absent and emb == emb_per_clip."""

    tokens: jax.Array
    emb_per_clip: jax.Array
    emb: jax.Array


class ImageBindAudio(nn.Module):
    """ImageBind audio branch (preprocessor stem, 12-block trunk, head, postprocessor).

    Input: normalised log-mel, channels-last **[B, S, num_mel_bins, target_len]**
    (= PyTorch's [B, S, 1, 128, 204] with the channel axis dropped; mel bins are the height,
    frames the width), or [B, 128, 204] for one clip per row.
    The intermediate `pre_tokens` ([N, 229, D], stem + LN + CLS + pos; N = B*S) is sown into
    the 'intermediates' collection.
    """

    config: ImageBindConfig

    @nn.compact
    def __call__(self, mel: jax.Array) -> AudioOutput:
        cfg = self.config
        want = (cfg.num_mel_bins, cfg.target_len)
        if mel.ndim not in (3, 4) or tuple(mel.shape[-2:]) != want:
            raise ValueError(
                f"ImageBind audio wants mel [B, S, {want[0]}, {want[1]}] or [B, {want[0]}, "
                f"{want[1]}] (channels-last, mel bins x frames); got {tuple(mel.shape)}. Other "
                "sizes would need pos-embed interpolation, which ImageBind only supports for "
                "square grids."
            )
        lead = mel.shape[:-2]
        d = cfg.audio_width
        x = mel.reshape(-1, *want, 1).astype(cfg.dtype)
        k, s = cfg.audio_kernel, cfg.audio_stride
        x = nn.Conv(
            d,
            (k, k),
            strides=(s, s),
            padding="VALID",
            use_bias=False,
            dtype=cfg.dtype,
            param_dtype=jnp.float32,
            precision=jax.lax.Precision.HIGHEST,
            name="stem",
        )(x)  # [N, F=12, T=19, D]
        n = x.shape[0]
        x = x.reshape(n, -1, d)  # row-major (f, t): frequency-major like torch's flatten(2)
        x = LayerNorm(STEM_LN_EPS, name="stem_norm")(x)
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, d), jnp.float32)
        pos = self.param(
            "pos_embed", nn.initializers.normal(0.02), (1, cfg.audio_tokens, d), jnp.float32
        )
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, d)), x], axis=1)
        x = x + pos.astype(x.dtype)
        self.sow("intermediates", "pre_tokens", x)
        x = _Trunk(
            d,
            cfg.audio_depth,
            cfg.audio_heads,
            cfg.mlp_ratio * d,
            True,
            cfg.dtype,
            cfg.attn_impl,
            name="trunk",
        )(x)
        emb = _embed_head(x[:, 0], cfg.out_dim, cfg.dtype)
        # A fixed buffer (ln 20) in ImageBind; kept as a param so the converter maps it.
        log_scale = self.param(
            "log_logit_scale", nn.initializers.constant(np.log(20.0)), (), jnp.float32
        )
        emb = _normalize(emb) * _logit_scale(log_scale, cfg.max_logit_scale)
        tokens = x.reshape(*lead, cfg.audio_tokens, d)
        emb = emb.reshape(*lead, cfg.out_dim)
        mean = emb.mean(axis=1) if mel.ndim == 4 else emb
        return AudioOutput(tokens, emb, mean)


class VisionOutput(NamedTuple):
    """tokens: [B, 257, D] trunk output; emb: [B, E] unit-norm embedding."""

    tokens: jax.Array
    emb: jax.Array


class ImageBindVision(nn.Module):
    """ImageBind vision branch for still images.

    Input: CLIP-normalised images **[B, 224, 224, 3]** (see `preprocess_images`). ImageBind
    repeats a still to `video_frames` (2) frames and applies Conv3d with kernel = stride
    (2, 14, 14); with one temporal output step this equals a Conv2d whose kernel is the sum of
    the temporal taps, which is what runs here (the param keeps the Conv3d layout
    [kt, kh, kw, 3, D]). `pre_tokens` (before the pre-transformer LN) is sown into
    'intermediates'.
    """

    config: ImageBindConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> VisionOutput:
        cfg = self.config
        kt, kh, kw = cfg.vision_kernel
        if cfg.video_frames != kt:
            raise ValueError(
                f"stills need video_frames ({cfg.video_frames}) == temporal kernel ({kt})"
            )
        size = cfg.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (size, size, 3):
            raise ValueError(
                f"ImageBind vision wants CLIP-normalised images [B, {size}, {size}, 3] "
                f"(channels-last; see preprocess_images); got {tuple(images.shape)}"
            )
        d = cfg.vision_width
        kernel = self.param("stem", nn.initializers.lecun_normal(), (kt, kh, kw, 3, d), jnp.float32)
        k2 = kernel.sum(axis=0).astype(cfg.dtype)  # the repeated frames share one input
        x = jax.lax.conv_general_dilated(
            images.astype(cfg.dtype),
            k2,
            window_strides=(kh, kw),
            padding="VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=jax.lax.Precision.HIGHEST,
        )  # [B, 16, 16, D]
        b = x.shape[0]
        x = x.reshape(b, -1, d)
        cls = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, d), jnp.float32)
        pos = self.param(
            "pos_embed", nn.initializers.normal(0.02), (1, cfg.vision_tokens, d), jnp.float32
        )
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)), x], axis=1)
        x = x + pos.astype(x.dtype)
        self.sow("intermediates", "pre_tokens", x)
        x = LayerNorm(LN_EPS, name="pre_norm")(x)
        x = _Trunk(
            d,
            cfg.vision_depth,
            cfg.vision_heads,
            cfg.mlp_ratio * d,
            False,
            cfg.dtype,
            cfg.attn_impl,
            name="trunk",
        )(x)
        emb = _normalize(_embed_head(x[:, 0], cfg.out_dim, cfg.dtype))
        return VisionOutput(x, emb)


class TextOutput(NamedTuple):
    """tokens: [B, 77, D] trunk output; emb: [B, E] embedding (norm min(exp(scale), 100))."""

    tokens: jax.Array
    emb: jax.Array


class ImageBindText(nn.Module):
    """ImageBind text branch: ids [B, 77] (CLIP BPE, EOT 49407 = the largest id) -> TextOutput.

    Causal self-attention; the embedding is taken at argmax(ids) (the EOT token), as ImageBind's
    `SelectEOSAndProject` does.
    """

    config: ImageBindConfig

    @nn.compact
    def __call__(self, ids: jax.Array) -> TextOutput:
        cfg = self.config
        L = cfg.context_length
        if ids.ndim != 2 or ids.shape[1] != L or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(
                f"ImageBind text wants integer token ids [B, {L}]; got {ids.shape} {ids.dtype}"
            )
        d = cfg.text_width
        x = nn.Embed(
            cfg.vocab_size,
            d,
            dtype=cfg.dtype,
            param_dtype=jnp.float32,
            embedding_init=nn.initializers.normal(0.02),
            name="token_embedding",
        )(ids)
        pos = self.param("pos_embed", nn.initializers.normal(0.01), (1, L, d), jnp.float32)
        x = x + pos.astype(x.dtype)
        causal = jnp.tril(jnp.ones((L, L), bool))
        bias = jnp.where(causal, 0.0, -jnp.inf).astype(jnp.float32)[None, None]
        x = _Trunk(
            d,
            cfg.text_depth,
            cfg.text_heads,
            cfg.mlp_ratio * d,
            False,
            cfg.dtype,
            cfg.attn_impl,
            name="trunk",
        )(x, bias)
        eot = jnp.argmax(ids, axis=-1)
        sel = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
        emb = _embed_head(sel, cfg.out_dim, cfg.dtype)
        log_scale = self.param(
            "log_logit_scale", nn.initializers.constant(np.log(1 / 0.07)), (), jnp.float32
        )
        emb = _normalize(emb) * _logit_scale(log_scale, cfg.max_logit_scale)
        return TextOutput(x, emb)


MODALITIES = ("audio", "vision", "text")
_MODULES = {"audio": ImageBindAudio, "vision": ImageBindVision, "text": ImageBindText}


def module_for(modality: str, cfg: ImageBindConfig) -> nn.Module:
    """The Flax module of one branch."""
    if modality not in _MODULES:
        raise ValueError(f"unknown ImageBind modality {modality!r}; have {MODALITIES}")
    return _MODULES[modality](cfg)


def dummy_input(modality: str, cfg: ImageBindConfig, batch: int = 1) -> jax.Array:
    """A zero input of the right shape (for init / eval_shape)."""
    if modality == "audio":
        return jnp.zeros((batch, cfg.num_mel_bins, cfg.target_len), jnp.float32)
    if modality == "vision":
        return jnp.zeros((batch, cfg.image_size, cfg.image_size, 3), jnp.float32)
    if modality == "text":
        return jnp.zeros((batch, cfg.context_length), jnp.int32)
    raise ValueError(f"unknown ImageBind modality {modality!r}; have {MODALITIES}")


def init_shapes(cfg: ImageBindConfig, modalities=MODALITIES) -> dict:
    """{modality: params tree of ShapeDtypeStructs} via `jax.eval_shape` (no allocation)."""
    out = {}
    for m in modalities:
        mod = module_for(m, cfg)
        out[m] = jax.eval_shape(
            lambda mod=mod, m=m: mod.init(jax.random.key(0), dummy_input(m, cfg))
        )["params"]
    return out


def preprocess_images(images: jax.Array, size: int = 224) -> jax.Array:
    """ImageBind's `load_and_transform_vision_data` on decoded frames, channels-last.

    Resize so the short side is `size` (bicubic; the long side is int(size * long / short), as
    torchvision computes it), center crop `size` x `size` (offsets int(round((H - size) / 2))),
    then (x - CLIP mean) / CLIP std.

    Args:
      images: [B, H, W, 3] RGB in [0, 1] (float) or uint8 [0, 255].
    Returns:
      [B, size, size, 3] float32.

    Note: this uses `jax.image.resize(..., 'bicubic')` (Keys cubic a = -0.5, antialiased when
    downsampling) on float values; torchvision/PIL resize the uint8 picture with PIL's bicubic
    filter and round to uint8, so pixels can differ by about one grey level.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"preprocess_images wants [B, H, W, 3] RGB; got {tuple(images.shape)}")
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    b, h, w, _ = x.shape
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    if (nh, nw) != (h, w):
        x = jax.image.resize(x, (b, nh, nw, 3), method="bicubic", antialias=True)
        x = jnp.clip(x, 0.0, 1.0)  # PIL's bicubic output is clipped to the pixel range
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    x = x[:, top : top + size, left : left + size]
    mean = jnp.asarray(CLIP_MEAN, jnp.float32)
    std = jnp.asarray(CLIP_STD, jnp.float32)
    return (x - mean) / std
