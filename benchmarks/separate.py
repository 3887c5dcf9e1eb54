"""Separation speed: seconds of audio separated per second (AudioSep ResUNet30, one mixture,
Q queries in one forward pass). Prints one table.

    python benchmarks/separate.py --size full --seconds 10 --queries 4 --dtype bfloat16   # GPU
    python benchmarks/separate.py --size tiny --seconds 10 --queries 4                    # CPU

Random weights (speed does not depend on values): 'full' is ResUNet30 at AudioSep's widths,
'tiny' the runlocal widths. The text query encoder is not timed (one call per query).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from maestro_jax.audio import separation as sep_lib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    cfg = sep_lib.default_config("runlocal" if a.size == "tiny" else None)
    cfg.separator.dtype = a.dtype
    sep_vars, _ = sep_lib.random_variables(cfg, 0)
    sep_vars = jax.tree.map(jax.numpy.asarray, sep_vars)
    sr = cfg.sample_rate
    mix = np.random.default_rng(0).standard_normal(int(a.seconds * sr)).astype(np.float32) * 0.1
    q = np.random.default_rng(1).standard_normal((a.queries, cfg.text.joint)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    t0 = time.perf_counter()
    sep_lib.separate(sep_vars, cfg, mix, q)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        sep_lib.separate(sep_vars, cfg, mix, q)  # returns numpy: synchronous
        times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    dev = jax.devices()[0]
    print("| device | size | dtype | mixture s | queries | compile s | run s | mixture s/s "
          "| stem s/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {dev.platform}:{dev.device_kind} | {a.size} | {a.dtype} | {a.seconds:g} | "
        f"{a.queries} | {compile_s:.1f} | {step:.2f} | {a.seconds / step:.2f} | "
        f"{a.seconds * a.queries / step:.2f} |"
    )


if __name__ == "__main__":
    main()
