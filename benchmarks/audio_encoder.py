"""Throughput of ImageBind audio trunk + CIM (clips/s), one table.

    python benchmarks/audio_encoder.py --size full --batch 8 --dtype bfloat16   # GPU
    python benchmarks/audio_encoder.py --size tiny --batch 8                    # CPU smoke

Random weights (speed does not depend on values). Times one jitted call on a batch of 2 s clips
after a warm-up; prints compile time, median step time, clips/s and peak memory where the
backend reports it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from maestro_jax.audio import encoder as ae
from maestro_jax.models.cim import CIMConfig
from maestro_jax.models.imagebind import imagebind_huge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--batch", type=int, default=8, help="clips per call")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--iters", type=int, default=5)
    a = ap.parse_args()
    dtype = jnp.dtype(a.dtype)
    if a.size == "full":
        enc = ae.init_random(imagebind_huge(dtype=dtype), CIMConfig.release(dtype=dtype))
    else:
        enc = ae.init_random(ae.tiny_imagebind(dtype), ae.tiny_cim(64, 4, dtype))
    mel = jax.random.normal(jax.random.key(0), (a.batch, 1, 128, 204), jnp.float32)
    t0 = time.perf_counter()
    ae.encode_mels(enc, mel).block_until_ready()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        ae.encode_mels(enc, mel).block_until_ready()
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    dev = jax.devices()[0]
    print("| device | size | dtype | batch (clips) | compile s | step ms | clips/s | peak GiB |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {dev.platform}:{dev.device_kind} | {a.size} | {dtype.name} | {a.batch} | "
        f"{compile_s:.2f} | {step * 1e3:.1f} | {a.batch / step:.1f} | "
        f"{peak / 2**30 if peak else float('nan'):.2f} |"
    )


if __name__ == "__main__":
    main()
