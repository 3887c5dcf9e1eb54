"""Speed and memory of one CIM train step (frozen SD 2.1 UNet + VAE + ImageBind, trained CIM).

    python benchmarks/train_step.py                         # full size: SD 2.1 at 512 (latent
                                                            # 64 x 64), configs/cim.py:vggsound
    python benchmarks/train_step.py --variant=release --remat --frames   # VAE encode in-step
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python benchmarks/train_step.py --size=runlocal --steps=3      # CPU: proves it runs

Prints one table: compile time, step time (median of --steps after one warm-up), clips/s and
frames/s per device, peak device memory, FLOPs per step and MFU.

FLOPs: `compiled.cost_analysis()['flops']` of the jitted step (XLA's count for the partitioned
per-device program; it counts dots and convolutions as 2 * MAC) and, for comparison, the
analytic estimate (docs/models.md, "Compute summary"): 0.80 TFLOP per 64 x 64 frame for the SD 2.1
UNet forward; the backward pass only needs input gradients (the UNet is frozen, XLA drops the
weight-gradient convolutions), about one more forward, plus one forward with --remat; so
UNet FLOPs per step ~= frames * views * 0.80 T * (2, or 3 with remat). VAE encoding (--frames),
ImageBind and the CIM (6.1 GFLOP per clip) are small next to it and left out of the estimate.
MFU = per-device FLOPs per step / step time / peak: bf16 dense peak 989 TFLOP/s for H100/H200
(SXM), 312 for A100; other devices need --peak_tflops.

Weights are constants (no checkpoint is read; timing does not depend on the values). The batch
is random: `latents` [B, F, 64, 64, 4] (cached latents, the default) or uint8 `frames`
[B, F, 512, 512, 3] with --frames, and `mel` [B, 5, 128, 204].
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from maestro_jax.aot import cost_flops  # noqa: E402
from maestro_jax.sharding import batch_sharding, make_mesh, param_shardings  # noqa: E402
from maestro_jax.training import cim_loss, cim_state, optim  # noqa: E402
from maestro_jax.training.cim_config import get_config  # noqa: E402

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0}
UNET_TFLOP_PER_FRAME = (
    0.80  # docs/models.md, "Compute summary": SD 2.1 UNet forward, 64 x 64 latent
)


def _peak(device_kind: str, override: float | None) -> float | None:
    if override:
        return override
    for k, v in PEAK_TFLOPS.items():
        if k in device_kind:
            return v
    return None


def _peak_memory() -> float | None:
    stats = [d.memory_stats() for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s]
    peaks = [p for p in peaks if p]
    return max(peaks) / 2**30 if peaks else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", choices=("full", "runlocal"), default="full")
    ap.add_argument("--variant", default="vggsound", help="configs/cim.py variant (full size)")
    ap.add_argument("--batch_per_device", type=int, default=None, help="default: the config's")
    ap.add_argument("--frames", action="store_true", help="encode frames with the VAE in-step")
    ap.add_argument("--remat", action="store_true", help="jax.checkpoint the UNet blocks")
    ap.add_argument("--dtype", default=None, help="compute dtype (default: the config's)")
    ap.add_argument("--mesh", default=None, help="data,fsdp (default: the config's)")
    ap.add_argument("--shard_frozen", action="store_true", help="FSDP the frozen params")
    ap.add_argument("--attn_impl", default=None, help="UNet attention: xla | cudnn")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--peak_tflops", type=float, default=None)
    ap.add_argument(
        "--lower_only",
        action="store_true",
        help="trace and lower with abstract arrays (no weights, no compile): shapes and XLA's "
        "FLOP count of the unoptimised program, e.g. the full-size step on a CPU",
    )
    args = ap.parse_args(argv)

    c = get_config("runlocal" if args.size == "runlocal" else args.variant)
    c.model.random_init = True
    if args.batch_per_device:
        c.batch_size_per_device = args.batch_per_device
    if args.dtype:
        c.compute_dtype = args.dtype
    if args.remat:
        c.model.unet.remat = True
    if args.attn_impl:
        c.model.unet.attn_impl = args.attn_impl
    if args.mesh:
        c.mesh.shape = tuple(int(v) for v in args.mesh.split(","))
    if args.shard_frozen:
        c.mesh.shard_frozen = True
    c.data.use_latents = not args.frames

    mesh = make_mesh(tuple(c.mesh.shape), ("data", "fsdp"))
    models = cim_loss.build_models(c)
    spec = cim_loss.LossSpec.from_config(c)
    tx, sched = optim.make_optimizer(c)
    repl = NamedSharding(mesh, P())

    if args.lower_only:
        return _lower_only(c, models, spec, tx, sched, mesh, args)

    # frozen weights: constants made on device (no host copy of ~1 B parameters)
    frozen, frozen_sh = {}, {}
    for name, (module, inputs) in cim_state.frozen_spec(models).items():
        abstract = jax.eval_shape(
            lambda k, m=module, i=inputs: m.init(k, *i)["params"], jax.random.key(0)
        )
        sh = (
            param_shardings(abstract, mesh)
            if c.mesh.shard_frozen
            else jax.tree.map(lambda _: repl, abstract)
        )
        make = lambda a=abstract: jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), a)
        frozen[name] = jax.jit(make, out_shardings=sh)()
        frozen_sh[name] = sh
    d = models.unet.context_dim
    frozen["null_emb"] = jnp.zeros((77, d), jnp.float32)
    frozen["label_emb"] = jnp.ones((8, 77, d), jnp.float32)
    frozen_sh.update(null_emb=repl, label_emb=repl)
    frozen["null_emb"] = jax.device_put(frozen["null_emb"], repl)
    frozen["label_emb"] = jax.device_put(frozen["label_emb"], repl)
    state, state_sh = cim_state.init_train_state(c, models, tx, mesh)

    n_dev = jax.device_count()
    b = c.batch_size_per_device * n_dev
    s = 5
    f = 10 if c.frames.rule == "release" else 5
    res = 8 * c.sample.latent_size if args.size == "full" else c.data.synthetic_resolution
    lat = res // models.vae.downsample_factor
    rng = np.random.default_rng(0)
    batch = {
        "mel": rng.normal(size=(b, s, 128, 204)).astype(np.float32),
        "label_index": rng.integers(0, 8, b).astype(np.int32),
    }
    if args.frames:
        batch["frames"] = rng.integers(0, 256, (b, f, res, res, 3), dtype=np.uint8)
    else:
        batch["latents"] = rng.normal(size=(b, f, lat, lat, 4)).astype(np.float32)
    batch_sh = {k: batch_sharding(mesh, v.ndim) for k, v in batch.items()}
    batch = {k: jax.device_put(v, batch_sh[k]) for k, v in batch.items()}

    step = jax.jit(
        cim_loss.make_train_step(models, spec, tx, sched, int(c.seed)),
        in_shardings=(state_sh, batch_sh, frozen_sh, repl),
        out_shardings=(state_sh, repl),
        donate_argnums=(0,),
    )
    nan_step = jnp.int32(0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, frozen, nan_step).compile()
    t_compile = time.perf_counter() - t0
    flops = cost_flops(compiled)
    mem = compiled.memory_analysis()

    state, m = compiled(state, batch, frozen, nan_step)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, m = compiled(state, batch, frozen, nan_step)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    loss = float(m["loss"])

    frames_used = spec.frames_used(f, s)
    views = 2 if spec.spec_augment is not None else 1
    unet_fwd = b / n_dev * frames_used * views * UNET_TFLOP_PER_FRAME * 1e12
    analytic = unet_fwd * (3 if args.remat else 2) if args.size == "full" else None
    kind = jax.devices()[0].device_kind
    peak = _peak(kind, args.peak_tflops)

    def mfu(fl):
        return f"{100 * fl / dt / (peak * 1e12):.1f} %" if fl and peak else "n/a"

    rows = [
        ("device", f"{kind} x {n_dev} (mesh {dict(mesh.shape)})"),
        (
            "size / variant",
            f"{args.size} / {c.variant}, dtype {c.compute_dtype}, remat {c.model.unet.remat}",
        ),
        (
            "batch",
            f"{b} clips ({c.batch_size_per_device}/device), {frames_used} frames x {views} views, "
            f"{'frames ' + str(res) + 'px (VAE in step)' if args.frames else f'latents {lat}x{lat}'}",
        ),
        ("compile", f"{t_compile:.1f} s"),
        ("step time", f"{dt * 1e3:.1f} ms (median of {len(times)}; min {min(times) * 1e3:.1f})"),
        ("clips/s/device", f"{b / dt / n_dev:.3f}"),
        ("frames/s/device", f"{b * frames_used / dt / n_dev:.2f}"),
        (
            "peak memory/device",
            f"{_peak_memory():.2f} GiB" if _peak_memory() else "n/a (backend has no memory_stats)",
        ),
        (
            "XLA memory analysis",
            f"args {mem.argument_size_in_bytes / 2**30:.2f} GiB, temp "
            f"{mem.temp_size_in_bytes / 2**30:.2f} GiB, out {mem.output_size_in_bytes / 2**30:.2f} GiB"
            if mem
            else "n/a",
        ),
        ("FLOPs/step/device (XLA)", f"{flops / 1e12:.3f} T" if flops else "n/a"),
        (
            "FLOPs/step/device (spec)",
            f"{analytic / 1e12:.3f} T" if analytic else "n/a (full size only)",
        ),
        ("MFU (XLA FLOPs)", mfu(flops)),
        ("MFU (spec FLOPs)", mfu(analytic)),
        ("loss (sanity)", f"{loss:.4f}"),
    ]
    w = max(len(k) for k, _ in rows)
    print("\nCIM train step")
    for k, v in rows:
        print(f"  {k:<{w}}  {v}")
    return 0 if np.isfinite(loss) else 1


def _batch_shapes(c, models, args, n_dev):
    b = c.batch_size_per_device * n_dev
    f = 10 if c.frames.rule == "release" else 5
    res = 8 * c.sample.latent_size if args.size == "full" else c.data.synthetic_resolution
    lat = res // models.vae.downsample_factor
    shapes = {"mel": ((b, 5, 128, 204), jnp.float32), "label_index": ((b,), jnp.int32)}
    if args.frames:
        shapes["frames"] = ((b, f, res, res, 3), jnp.uint8)
    else:
        shapes["latents"] = ((b, f, lat, lat, 4), jnp.float32)
    return shapes


def _lower_only(c, models, spec, tx, sched, mesh, args) -> int:
    from maestro_jax.training.checkpoints import abstract_with_shardings

    repl = NamedSharding(mesh, P())
    frozen = {}
    for name, (module, inputs) in cim_state.frozen_spec(models).items():
        a = jax.eval_shape(lambda k, m=module, i=inputs: m.init(k, *i)["params"], jax.random.key(0))
        sh = param_shardings(a, mesh) if c.mesh.shard_frozen else jax.tree.map(lambda _: repl, a)
        frozen[name] = abstract_with_shardings(a, sh)
    d = models.unet.context_dim
    frozen["null_emb"] = jax.ShapeDtypeStruct((77, d), jnp.float32, sharding=repl)
    frozen["label_emb"] = jax.ShapeDtypeStruct((8, 77, d), jnp.float32, sharding=repl)
    init = cim_state.cim_init_fn(models, tx)
    a = jax.eval_shape(init, jax.random.key(0))
    state = abstract_with_shardings(a, jax.tree.map(lambda _: repl, a))
    batch = {
        k: jax.ShapeDtypeStruct(shape, dt, sharding=batch_sharding(mesh, len(shape)))
        for k, (shape, dt) in _batch_shapes(c, models, args, jax.device_count()).items()
    }
    step = jax.jit(cim_loss.make_train_step(models, spec, tx, sched, 0), donate_argnums=(0,))
    t0 = time.perf_counter()
    lowered = step.lower(state, batch, frozen, jax.ShapeDtypeStruct((), jnp.int32, sharding=repl))
    t = time.perf_counter() - t0
    ca = lowered.cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else None
    flops = float(ca["flops"]) if ca and ca.get("flops") else None
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    print("\nCIM train step (lowered only, nothing compiled or run)")
    print(f"  batch      {', '.join(f'{k} {v.shape}' for k, v in batch.items())}")
    print(f"  CIM params {n_params:,}")
    print(f"  lowering   {t:.1f} s")
    print(
        f"  FLOPs/step {flops / 1e12:.3f} T (XLA, unoptimised HLO, whole batch)"
        if flops
        else "  FLOPs n/a"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
