"""Working memory of one temporal-attention layer over long videos: plain attention over all
frames vs FreeNoise window fusion with `windows_at_once` windows computed together. Prints one
table of XLA's compiled temp bytes (`memory_analysis`) per frame count.

    python benchmarks/long_memory.py                       # VC2's first level: 320 ch, 40 x 64
    python benchmarks/long_memory.py --channels 64 --hw 8  # a small CPU smoke

One TemporalTransformer (the VideoCrafter2 layer: 5 heads of 64 at 320 channels), batch 2 (the
CFG pair), random weights, float32; compiled only (nothing runs). The layer's input and output
grow with the frames either way; the attention's own buffers grow with `windows_at_once`.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from maestro_jax.models.unet import TemporalTransformer


def temp_bytes(frames: int, channels: int, hw: tuple[int, int], window: tuple) -> int:
    heads = channels // 64
    layer = TemporalTransformer(heads, 64, frames, frame_window=window)
    x = jax.ShapeDtypeStruct((2 * frames, *hw, channels), jnp.float32)
    params = jax.eval_shape(lambda: layer.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype)))
    compiled = jax.jit(layer.apply).lower(params, x).compile()
    return int(compiled.memory_analysis().temp_size_in_bytes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--channels", type=int, default=320)
    ap.add_argument("--hw", type=int, nargs="+", default=[40, 64])
    ap.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 120])
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--stride", type=int, default=4)
    a = ap.parse_args()
    hw = tuple(a.hw) if len(a.hw) == 2 else (a.hw[0], a.hw[0])
    cols = {"plain": (0, 0, 0), "at once 1": (a.window, a.stride, 1),
            "at once 4": (a.window, a.stride, 4), "all windows": (a.window, a.stride, 0)}  # fmt: skip
    print(f"temporal attention temp MiB, {a.channels} ch, {hw[0]}x{hw[1]}, window {a.window}, "
          f"stride {a.stride}")  # fmt: skip
    print("| frames | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for f in a.frames:
        vals = [temp_bytes(f, a.channels, hw, w) / 2**20 for w in cols.values()]
        print(f"| {f} | " + " | ".join(f"{v:.0f}" for v in vals) + " |")


if __name__ == "__main__":
    main()
