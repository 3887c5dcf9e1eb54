"""Cost of Attention Mosaic: one CFG sampling step (uncond + cond in one UNet call), plain vs
Object Locating vs Mosaic Denoising, for N_A sources. Prints one table.

    python benchmarks/mosaic.py --size full --dtype bfloat16 --attn-impl cudnn   # GPU, VC2 size
    python benchmarks/mosaic.py --size tiny                                        # CPU smoke

Random weights (speed does not depend on values); 'full' is VideoCrafter2 at 16 x 40 x 64
latents (320 x 512 video), 'tiny' the runlocal model. The mosaic step must cost at most 10% more
than the plain one (the design target); the last column says how much more it costs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax import mosaic
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.nn.random_init import random_init


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--attn-impl", default="xla")
    ap.add_argument("--sources", default="2,4")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    if a.size == "full":
        cfg = UNetConfig.vc2(dtype=a.dtype, attn_impl=a.attn_impl)
        hw, n_q = (40, 64), 10
    else:
        cfg = UNetConfig.tiny(context_dim=64, dtype=a.dtype, attn_impl=a.attn_impl)
        hw, n_q = (16, 16), 4
    f, d = a.frames, cfg.context_dim
    x0 = jnp.zeros((1, 2, 8, 8, 4))
    params = random_init(UNet(cfg), x0, jnp.zeros((1,)), jnp.zeros((1, 77, d)), jnp.ones((1,)))
    params = jax.tree.map(jnp.asarray, params["params"])
    res = mosaic.unet_resolutions(hw, num_levels=len(cfg.channel_mult))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, f, *hw, 4)), jnp.float32)
    null = jnp.asarray(rng.standard_normal((77, d)), jnp.float32)
    unet = UNet(cfg)

    @jax.jit
    def step(params, x, ctx, edit):
        return unet.apply({"params": params}, x, jnp.full((2,), 501), ctx, fps=jnp.full((2,), 8.0),
                          attn_edit=edit)  # fmt: skip

    def timed(edit, ctx):
        t0 = time.perf_counter()
        step(params, x, ctx, edit).block_until_ready()
        comp = time.perf_counter() - t0
        ts = []
        for _ in range(a.iters):
            t0 = time.perf_counter()
            step(params, x, ctx, edit).block_until_ready()
            ts.append(time.perf_counter() - t0)
        return comp, statistics.median(ts)

    dev = jax.devices()[0]
    print(f"device {dev.platform}:{dev.device_kind}, UNet {a.size}, {a.dtype}, attn {a.attn_impl}, "
          f"latent {f}x{hw[0]}x{hw[1]}, CFG batch 2")  # fmt: skip
    print("| N_A | step | compile s | step ms | vs plain |")
    print("|---|---|---|---|---|")
    ctx_plain = jnp.broadcast_to(null, (2 * f, 77, d))
    _, plain = timed(None, ctx_plain)
    print(f"| - | plain | - | {plain * 1e3:.1f} | 1.00 |")
    for n_a in [int(s) for s in a.sources.split(",")]:
        tokens = jnp.asarray(rng.standard_normal((n_a, 2, n_q, d)), jnp.float32)
        c_merge, c_sep = mosaic.build_contexts(null, tokens, f)
        boxes = [(i / n_a, 0.0, (i + 1) / n_a, 1.0) for i in range(n_a)]
        loc, mos = mosaic.make_phase_edits(
            boxes, boxes, c_merge=c_merge, c_sep=c_sep, null_emb=null, n_q=n_q, resolutions=res,
            num_frames=f, edit_rows=mosaic.cfg_edit_rows(1, 1, cond_first=False),
            attn_impl=cfg.impl("cross"),
        )  # fmt: skip
        ctx = jnp.concatenate([jnp.broadcast_to(null, (f, 77, d)), c_merge])
        for name, edit in (("locate", loc), ("mosaic", mos)):
            comp, t = timed(edit, ctx)
            print(f"| {n_a} | {name} | {comp:.1f} | {t * 1e3:.1f} | {t / plain:.2f} |")


if __name__ == "__main__":
    main()
