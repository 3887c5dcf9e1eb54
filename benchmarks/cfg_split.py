"""The Mosaic edit's CFG rows split statically: before (split_rows=False: plain attention and the
edit both computed for every row of [uncond; cond], one of them selected) vs after (each on its
own rows), in one run: XLA's FLOP count and CPU wall time of one CFG step of a small UNet and of
a whole toy-world sample, and the sampler's compile time.

    python benchmarks/cfg_split.py                   # small UNet step + toy-world sample
    python benchmarks/cfg_split.py --iters 2 --sample_runs 1 --noskip_sample

The small UNet: `UNetConfig.tiny` (context 64) at 16 frames of 16x16 latents, N_A = 2, random
weights. The toy world: the committed weights (maestro_jax/assets/toy, `configs/toy.py` generate
config: 8 frames of 32x32, 20 steps, N_D = 4), random audio tokens (cost does not depend on
them). FLOPs: `compiled.cost_analysis()` (XLA counts a loop body once: for the sampler that is
one locate step plus one mosaic step, the two branches of its `lax.cond`). Wall times are
medians; on a shared CPU they are noisy.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

from absl import flags

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from maestro_jax import cli  # noqa: E402

_ITERS = flags.DEFINE_integer("iters", 5, "timed calls of the UNet step (median)")
_SAMPLE_RUNS = flags.DEFINE_integer("sample_runs", 2, "timed toy-world samples (median)")
_SKIP_SAMPLE = flags.DEFINE_bool("skip_sample", False, "only the small UNet's CFG step")


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list | tuple) else ca
    return float(ca["flops"])


def _timed(fn, n: int) -> float:
    import jax

    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def unet_step_rows(iters: int) -> list[tuple]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from maestro_jax import mosaic
    from maestro_jax.models.unet import UNet, UNetConfig
    from maestro_jax.nn.random_init import random_init

    cfg = UNetConfig.tiny(context_dim=64)
    f, hw, n_q, d = 16, (16, 16), 4, cfg.context_dim
    unet = UNet(cfg)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, f, *hw, 4)), jnp.float32)
    null = jnp.asarray(rng.standard_normal((77, d)), jnp.float32)
    tokens = jnp.asarray(rng.standard_normal((2, 2, n_q, d)), jnp.float32)
    params = random_init(unet, x[:1, :2, :8, :8], jnp.zeros((1,)), null[None], fps=jnp.ones((1,)))
    params = params["params"]
    c_merge, c_sep = mosaic.build_contexts(null, tokens, f)
    ctx = jnp.concatenate([jnp.broadcast_to(null, (f, 77, d)), c_merge])  # [uncond; cond]
    loc_boxes, mos_boxes = mosaic.preset("LR")

    def step(params, x, ctx, edit):
        t = jnp.full((2,), 501)
        return unet.apply({"params": params}, x, t, ctx, fps=jnp.full((2,), 8.0), attn_edit=edit)

    edits = {}
    for split in (False, True):
        edits[split] = mosaic.make_phase_edits(
            loc_boxes, mos_boxes, c_merge=c_merge, c_sep=c_sep, null_emb=null, n_q=n_q,
            resolutions=mosaic.unet_resolutions(hw, len(cfg.channel_mult)), num_frames=f,
            edit_rows=mosaic.cfg_edit_rows(1, 1, cond_first=False), split_rows=split,
        )  # fmt: skip
    rows = []
    for i, name in enumerate(("locate", "mosaic")):
        for split in (False, True):
            edit = edits[split][i]
            t0 = time.perf_counter()
            compiled = jax.jit(step).lower(params, x, ctx, edit).compile()
            comp = time.perf_counter() - t0
            ms = 1e3 * _timed(lambda c=compiled, e=edit: c(params, x, ctx, e), iters)
            rows.append((f"small UNet CFG step, {name}", split, _flops(compiled), ms, comp))
    return rows


def toy_sample_rows(runs: int) -> list[tuple]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from maestro_jax import mosaic
    from maestro_jax.generation import runner as gen
    from maestro_jax.generation import sampling
    from maestro_jax.toy import config as toy_config

    cfg = toy_config.generate_config()
    models = gen.build_models(cfg)
    spec = gen._spec(cfg)
    settings = gen._settings(cfg, int(cfg.n_d))
    tokens = jnp.asarray(
        np.random.default_rng(0).standard_normal(
            (2, 2, int(cfg.num_queries), models.spec.context_width)
        ),
        jnp.float32,
    )
    loc, mos = mosaic.preset("LR")
    job = sampling.prepare_job(models, tokens, loc, mos, spec, 0, gen._options(cfg))
    static = dataclasses.replace(settings, n_d=0)
    n_d = jnp.int32(settings.n_d)
    rows = []
    for split in (False, True):
        j = dataclasses.replace(
            job,
            locate=job.locate.replace(split_rows=split),
            mosaic=job.mosaic.replace(split_rows=split),
        )
        args = [
            jax.tree.map(lambda a: a[None], getattr(j, k))
            for k in ("c_merge", "null_f", "locate", "mosaic", "x_T", "key")
        ]
        t0 = time.perf_counter()
        compiled = sampling._sample_maestro_batch.lower(
            models.params["unet"], n_d, *args, models.spec.unet, models.spec.schedule_name, static
        ).compile()
        comp = time.perf_counter() - t0
        call = lambda c=compiled, a=args: c(models.params["unet"], n_d, *a)  # noqa: E731
        jax.block_until_ready(call())
        ms = 1e3 * _timed(call, runs)
        name = f"toy-world sample ({settings.steps} steps, N_D {settings.n_d})"
        rows.append((name, split, _flops(compiled), ms, comp))
    return rows


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    if _ITERS.value < 1 or _SAMPLE_RUNS.value < 1:
        return cli.error("--iters and --sample_runs must be >= 1")
    import jax

    rows = unet_step_rows(_ITERS.value)
    if not _SKIP_SAMPLE.value:
        rows += toy_sample_rows(_SAMPLE_RUNS.value)
    dev = jax.devices()[0]
    print(f"\nCFG rows split statically: before (select) vs after (split); {dev.platform} "
          f"{dev.device_kind}, jax {jax.__version__}\n")  # fmt: skip
    print("| program | rows | XLA GFLOP | wall ms | compile s |")
    print("|---|---|---|---|---|")
    for name, split, fl, ms, comp in rows:
        rows_s = "split (after)" if split else "select (before)"
        print(f"| {name} | {rows_s} | {fl / 1e9:.3f} | {ms:.1f} | {comp:.1f} |")
    print("\n| program | FLOPs after/before | wall after/before |")
    print("|---|---|---|")
    for (name, _, f0, t0, _), (_, _, f1, t1, _) in zip(rows[::2], rows[1::2]):
        print(f"| {name} | {f1 / f0:.3f} | {t1 / t0:.3f} |")
    return 0


if __name__ == "__main__":
    cli.run(main)
