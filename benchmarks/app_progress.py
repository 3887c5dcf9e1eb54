"""The web app's per-step progress callback: its cost on the toy world's sampler. Samples one
2-source Maestro job on the committed toy weights with and without the host callback (compiled
in only when a hook is given), interleaved runs, and prints seconds per DDIM step for each, the
overhead, and whether the latents are bit-identical.

    python benchmarks/app_progress.py [--steps 20] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()

    from maestro_jax import mosaic
    from maestro_jax.audio import encoder as ae
    from maestro_jax.generation import runner, sampling
    from maestro_jax.toy import config as toy_config
    from maestro_jax.toy import world

    cfg = toy_config.generate_config()
    cfg.steps = a.steps
    models = runner.build_models(cfg, pool=runner.ModelPool())
    rng = np.random.default_rng(0)
    stems = [(world.object_sound(c, rng)[0][None], world.SR) for c in (0, 1)]
    tokens = ae.encode_stems(models.audio, stems, cfg.clip_window, cfg.clip_rule)
    boxes = [mosaic.Boxes.static(b) for b in ([0, 0.2, 0.5, 0.8], [0.5, 0.2, 1, 0.8])]
    spec = runner.video_spec(cfg)
    job = sampling.prepare_job(models, tokens, boxes, boxes, spec, 0, runner._options(cfg))
    settings = runner._settings(cfg, cfg.n_d)
    calls = []
    hook = calls.append

    def once(progress):
        t0 = time.perf_counter()
        lat = jax.block_until_ready(
            sampling.sample_maestro(models, [job], settings, progress=progress)
        )
        return time.perf_counter() - t0, np.asarray(lat)

    compile_s = {name: once(p)[0] for name, p in (("plain", None), ("progress", hook))}
    times: dict[str, list[float]] = {"plain": [], "progress": []}
    outs = {}
    for _ in range(a.runs):
        for name, p in (("plain", None), ("progress", hook)):
            dt, outs[name] = once(p)
            times[name].append(dt / a.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"toy world, {a.steps} DDIM steps, {a.runs} runs each, device {jax.devices()[0]}")
    print("| sampler | first call (compile + run), s | median s / step |")
    print("|---|---|---|")
    for k in ("plain", "progress"):
        print(f"| {k} | {compile_s[k]:.2f} | {med[k]:.4f} |")
    print(f"overhead: {100 * (med['progress'] / med['plain'] - 1):+.1f} % per step; callbacks "
          f"per sample: {len(calls) // (a.runs + 1)}")  # fmt: skip
    print(f"bit-identical latents: {np.array_equal(outs['plain'], outs['progress'])}")


if __name__ == "__main__":
    main()
