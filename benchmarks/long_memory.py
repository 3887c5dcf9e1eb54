"""Working memory of one denoising call of a long video: FreeNoise's fusion inside the temporal
attention (`long.windows_at_once` 0: every other layer sees all frames) vs the whole UNet run on
k windows at a time with its predictions fused (`long.windows_at_once` k). Prints one table of
XLA's compiled temp bytes (`memory_analysis`) per frame count.

    python benchmarks/long_memory.py                               # VideoCrafter2 at 320x512
    python benchmarks/long_memory.py --unet tiny --hw 8 --frames 16 32   # a small CPU smoke

The UNet's config (random weights, float32, never materialised: compiled only, nothing runs),
batch 2 (the CFG pair), per-frame contexts as Maestro passes them, windows of 16 frames 4
apart. The weights (5.6 GB for VideoCrafter2) and the latents are arguments, not temp bytes.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from maestro_jax.generation import sampling
from maestro_jax.models.unet import UNet, UNetConfig


def temp_bytes(cfg: UNetConfig, frames: int, hw: tuple[int, int]) -> int:
    x = jax.ShapeDtypeStruct((2, frames, *hw, cfg.in_channels), jnp.float32)
    ctx = jax.ShapeDtypeStruct((2, frames, 77, cfg.context_dim), jnp.float32)
    params = jax.eval_shape(
        lambda: UNet(cfg).init(
            jax.random.key(0), jnp.zeros((1, 1, *hw, cfg.in_channels)), jnp.zeros((1,)),
            jnp.zeros((1, 77, cfg.context_dim)), fps=jnp.ones((1,)),
        )["params"]
    )  # fmt: skip

    def call(p, x, c):
        fn = sampling._unet_fn(cfg, p, 8, None)
        return fn(x, jnp.full((2,), 500), {"context": c}, 0)

    compiled = jax.jit(call).lower(params, x, ctx).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--unet", default="vc2", help="UNetConfig preset (vc2 | tiny)")
    ap.add_argument("--hw", type=int, nargs="+", default=[40, 64], help="latent h w")
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--at_once", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    hw = tuple(a.hw) if len(a.hw) == 2 else (a.hw[0], a.hw[0])
    base = UNetConfig.from_preset(a.unet).replace(
        temporal_window=a.window, temporal_stride=a.stride
    )
    cols = {"attention fusion (0)": base}
    for k in a.at_once:
        cols[f"whole-UNet, {k} at once"] = base.replace(windows_at_once=k, window_fusion="unet")
    print(f"denoising-call temp GiB, UNet {a.unet}, latents {hw[0]}x{hw[1]}, CFG pair, float32, "
          f"window {a.window}, stride {a.stride}")  # fmt: skip
    print("| frames | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|", flush=True)
    for f in a.frames:
        vals = [temp_bytes(c, f, hw) / 2**30 for c in cols.values()]
        print(f"| {f} | " + " | ".join(f"{v:.2f}" for v in vals) + " |", flush=True)


if __name__ == "__main__":
    main()
