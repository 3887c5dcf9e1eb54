"""UNet speed and memory: one forward, and one classifier-free-guided DDIM step.

    python benchmarks/unet.py --config tiny                                   # CPU smoke run
    python benchmarks/unet.py --config vc2 --dtype bfloat16 --attn-impl cudnn  # 16x40x64
    python benchmarks/unet.py --config sd21 --dtype bfloat16 --height 64 --width 64 --batch 8

Prints one row per measured function: compile time (lower + compile), median step time of
`--iters` runs after `--warmup` runs (each ended with block_until_ready), and the device's peak
memory (`memory_stats()['peak_bytes_in_use']`, 'n/a' where the backend has none, e.g. CPU).
Params are random (same shapes and cost as the real weights). The CFG step batches cond and
uncond as batch 2B and applies a plain DDIM (eta 0) update inline. Sizes are latent sizes
(VideoCrafter2 320x512 video = 40x64 latent).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maestro_jax.models.unet import UNet, UNetConfig  # noqa: E402

PRESETS = {"tiny": UNetConfig.tiny, "vc2": UNetConfig.vc2, "sd21": UNetConfig.sd21}


def _peak_memory() -> str:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if not stats or "peak_bytes_in_use" not in stats:
        return "n/a"
    return f"{stats['peak_bytes_in_use'] / 2**30:.2f} GiB"


def _time(fn, args, warmup: int, iters: int) -> tuple[float, float]:
    """(compile seconds, median step seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--frames", type=int, default=None, help="default 16 (vc2) / 4 (tiny)")
    ap.add_argument("--height", type=int, default=None, help="latent height (default 40; tiny 8)")
    ap.add_argument("--width", type=int, default=None, help="latent width (default 64; tiny 16)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--context-len", type=int, default=77)
    ap.add_argument("--attn-impl", choices=("xla", "cudnn", "splash", "auto"), default="xla")
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args(argv)

    tiny = args.config == "tiny"
    cfg = PRESETS[args.config](dtype=args.dtype, attn_impl=args.attn_impl, remat=args.remat)
    f = args.frames or (4 if tiny else 16)
    h = args.height or (8 if tiny else 40)
    w = args.width or (16 if tiny else 64)
    b = args.batch
    shape = (b, f, h, w, cfg.in_channels) if cfg.temporal else (b, h, w, cfg.in_channels)
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, shape, jnp.float32)
    ctx = jax.random.normal(jax.random.PRNGKey(1), (b, args.context_len, cfg.context_dim))
    uc = jnp.zeros_like(ctx)
    t = jnp.full((b,), 981, jnp.int32)
    fps = jnp.full((b,), 8, jnp.int32) if cfg.fps_cond else None
    model = UNet(cfg)
    params = jax.jit(lambda: model.init(key, x, t, ctx, fps=fps)["params"])()
    n_params = sum(p.size for p in jax.tree.leaves(params))

    def forward(params, x, t, ctx, fps):
        return model.apply({"params": params}, x, t, ctx, fps=fps)

    def cfg_ddim_step(params, x, t, ctx, uc, fps, a_t, a_prev, scale):
        # cond + uncond as one batch of 2B, then e = e_u + s (e_c - e_u) and a DDIM (eta 0) step
        fps2 = None if fps is None else jnp.concatenate([fps, fps])
        e = model.apply(
            {"params": params},
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            jnp.concatenate([ctx, uc]),
            fps=fps2,
        )
        e_c, e_u = jnp.split(e, 2)
        e = e_u + scale * (e_c - e_u)
        x0 = (x - jnp.sqrt(1 - a_t) * e) / jnp.sqrt(a_t)
        return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1 - a_prev) * e

    print(
        f"# UNet {args.config} ({n_params / 1e6:.1f} M params) dtype={args.dtype} "
        f"attn={args.attn_impl} remat={args.remat} x={list(shape)} ctx_len={args.context_len} "
        f"device={jax.devices()[0].device_kind} ({jax.default_backend()}) jax={jax.__version__}"
    )
    print(f"{'function':<22} {'compile_s':>10} {'step_ms':>10} {'peak_mem':>12}")
    rows = [
        ("forward", forward, (params, x, t, ctx, fps)),
        (
            "cfg_ddim_step (2B)",
            cfg_ddim_step,
            (params, x, t, ctx, uc, fps, jnp.float32(0.0058), jnp.float32(0.0075), 12.0),
        ),
    ]
    for name, fn, fargs in rows:
        compile_s, step_s = _time(fn, fargs, args.warmup, args.iters)
        print(f"{name:<22} {compile_s:>10.2f} {step_s * 1e3:>10.2f} {_peak_memory():>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
