"""Ahead-of-time lowering of the programs users run, for a TPU or a CUDA GPU, on any host.

Every program is built from abstract shapes (`jax.eval_shape` of the module inits: no weights in
memory) and lowered with `jax.export` for the target platform; the same program is also lowered
(and, when asked, compiled) for this host's CPU, for XLA's FLOP count and memory analysis, which
a foreign platform's export does not give. The programs (`programs`):

- `unet_fwd_b1`  one VideoCrafter2 UNet forward at batch 1 (the spec's FLOP count is for this);
- `cfg_step`     one CFG DDIM step with the Mosaic edit: the UNet on [uncond; cond] (N_A = 2);
- `sample`       the whole sampler: the DDIM scan, N_D locate steps then Mosaic Denoising;
- `decode`       the VAE decode of one video's latents;
- `cim_train_step`  the CIM training step (SD 2.1 at 512, the `vggsound` config), on a mesh.

Attention is 'auto' unless asked otherwise, staged per platform (`nn.attention`): the TPU program
holds the splash kernel where `choose_impl` picks it.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PLATFORMS = ("tpu", "cuda")
BACKEND = {"tpu": "tpu", "cuda": "gpu"}  # export platform -> `jax.default_backend()` name
PROGRAMS = ("unet_fwd_b1", "cfg_step", "sample", "decode", "cim_train_step")
SPEC_TFLOP_FWD_B1 = 12.58  # VideoCrafter2 UNet forward at 16x40x64 latents (docs/models.md)
SIZES = {
    "full": dict(frames=16, height=320, width=512, n_q=10, steps=50, n_d=6, variant="vggsound"),
    "tiny": dict(frames=4, height=32, width=64, n_q=4, steps=4, n_d=2, variant="runlocal"),
}
CONTEXT_LEN = 77
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Program:
    """A jitted function and abstract arguments; `spec_tflop` the analytic count, if any."""

    name: str
    fn: Callable
    args: tuple
    spec_tflop: float | None = None
    mesh: Any = None


@dataclasses.dataclass
class Row:
    program: str
    platform: str
    attention: str  # per site: 'kind TqxTk: impl', grouped
    kernels: int  # splash kernels (tpu_custom_call) in the exported program
    lower_s: float
    xla_tflop: float | None  # XLA's count of the CPU-lowered (or compiled) program
    flops_source: str
    spec_tflop: float | None
    memory: dict[str, float] | None  # GiB: arguments, temporaries, output, peak (CPU compile)
    compile_s: float | None

    @property
    def flops_vs_spec(self) -> float | None:
        if not self.xla_tflop or not self.spec_tflop:
            return None
        return self.xla_tflop / self.spec_tflop - 1.0


def abstract(tree: Any) -> Any:
    """ShapeDtypeStructs of every array leaf (static fields of pytrees kept)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def _unjitted(f: Callable) -> Callable:
    """The Python function under a module-level `jax.jit`: each `Program` is its own jit, so
    its first trace always runs (and records its attention calls), whatever ran before."""
    return getattr(f, "__wrapped__", f)


def _cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype)), tree)


# ----------------------------------------------------------------------------- generation
def generation_spec(size: str, attn_impl: str = "auto", dtype: str = "bfloat16"):
    """The `ModelSpec` of a generation run (full: VideoCrafter2 + the SD VAE; tiny: the test
    configs); the text tower is never part of a program here."""
    from maestro_jax.generation import models as gm
    from maestro_jax.models import clip_text as ct
    from maestro_jax.models.unet import UNetConfig
    from maestro_jax.models.vae import VAEConfig

    if size == "full":
        unet = UNetConfig.vc2(dtype=dtype, attn_impl=attn_impl)
        vae = VAEConfig.sd(dtype=jnp.dtype(dtype))
        text = ct.tiny(width=unet.context_dim, heads=16, layers=2, embed_dim=None)
    else:
        unet, vae, text = gm.tiny_configs(dtype)
        unet = unet.replace(attn_impl=attn_impl)
    return gm.ModelSpec(unet, vae, text)


def abstract_generation_params(spec) -> dict[str, Any]:
    """{'unet', 'vae'}: ShapeDtypeStructs in the compute dtype (how `Models` holds weights)."""
    from maestro_jax.models.unet import UNet
    from maestro_jax.models.vae import AutoencoderKL

    x = jax.ShapeDtypeStruct((1, 2, 8, 8, spec.unet.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    ctx = jax.ShapeDtypeStruct((1, CONTEXT_LEN, spec.context_width), jnp.float32)
    unet = jax.eval_shape(
        lambda x, t, c: UNet(spec.unet).init(jax.random.key(0), x, t, c, fps=t)["params"],
        x, t, ctx,
    )  # fmt: skip
    img = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    vae = jax.eval_shape(
        lambda i: AutoencoderKL(spec.vae).init(jax.random.key(0), i)["params"], img
    )
    return {"unet": _cast(unet, spec.dtype), "vae": _cast(vae, spec.dtype)}


def _job(spec, size: dict, split_rows: bool = True):
    """One job's abstract sampler inputs (contexts, both edits, noise, key) with N_A = 2 and
    the LR boxes; the small arrays are made for real and then made abstract."""
    from maestro_jax import mosaic
    from maestro_jax.generation import sampling

    video = sampling.VideoSpec(size["frames"], size["height"], size["width"])
    d = spec.context_width
    rng = np.random.default_rng(0)
    null = jnp.asarray(rng.standard_normal((CONTEXT_LEN, d)), jnp.float32)
    tokens = jnp.asarray(rng.standard_normal((2, 2, size["n_q"], d)), jnp.float32)
    c_merge, c_sep = mosaic.build_contexts(null, tokens, video.num_frames)
    loc, mos = mosaic.preset("LR")
    locate, mos_edit = mosaic.make_phase_edits(
        loc, mos, c_merge=c_merge, c_sep=c_sep, null_emb=null, n_q=size["n_q"],
        resolutions=video.resolutions(spec), num_frames=video.num_frames,
        edit_rows=mosaic.cfg_edit_rows(1, 1, cond_first=False), attn_impl=spec.unet.impl("cross"),
        split_rows=split_rows,
    )  # fmt: skip
    null_f = jnp.broadcast_to(null, (video.num_frames, *null.shape))
    x_T, key = sampling.initial_noise(0, (1, *video.latent_shape(spec)))
    one = (c_merge, null_f, locate, mos_edit, x_T, key)
    return video, abstract(jax.tree.map(lambda a: a[None], one))


def sampler_program(spec, params, size: dict, *, steps: int, mode: str, split_rows: bool = True,
                    name: str = "sample") -> Program:  # fmt: skip
    """`sampling._sample_maestro_batch` for one job (the jitted sampler users run)."""
    from maestro_jax.generation import sampling

    _, job = _job(spec, size, split_rows)
    settings = sampling.SamplerSettings(steps=steps, n_d=0, mode=mode)
    n_d = jax.ShapeDtypeStruct((), jnp.int32)

    def fn(unet_params, n_d, *job):
        return _unjitted(sampling._sample_maestro_batch)(
            unet_params, n_d, *job, unet_config=spec.unet, schedule=spec.schedule_name,
            settings=settings,
        )  # fmt: skip

    return Program(name, jax.jit(fn), (params["unet"], n_d, *job))


def generation_programs(size: str, attn_impl: str = "auto") -> list[Program]:
    from maestro_jax.generation import sampling
    from maestro_jax.models.unet import UNet

    s = SIZES[size]
    spec = generation_spec(size, attn_impl)
    params = abstract_generation_params(spec)
    video, job = _job(spec, s)
    f, (h, w) = video.num_frames, video.latent_hw(spec)
    unet = UNet(spec.unet)
    full = size == "full"

    def fwd(p, x, ctx):
        n = x.shape[0]
        t = jnp.full((n,), 501.0)
        return unet.apply({"params": p}, x, t, ctx, fps=jnp.full((n,), 8.0))

    x1 = jax.ShapeDtypeStruct((1, f, h, w, spec.unet.in_channels), jnp.float32)
    ctx1 = jax.ShapeDtypeStruct((f, CONTEXT_LEN, spec.context_width), jnp.float32)
    latents = jax.ShapeDtypeStruct((1, f, h, w, spec.unet.in_channels), jnp.float32)

    def decode(p, lat):
        return _unjitted(sampling._decode)(p, lat, vae_config=spec.vae, frame_chunk=None)

    return [
        Program("unet_fwd_b1", jax.jit(fwd), (params["unet"], x1, ctx1),
                SPEC_TFLOP_FWD_B1 if full else None),
        dataclasses.replace(
            sampler_program(spec, params, s, steps=1, mode="mosaic", name="cfg_step"),
            spec_tflop=2 * SPEC_TFLOP_FWD_B1 if full else None,
        ),
        sampler_program(spec, params, s, steps=s["steps"], mode="maestro"),
        Program("decode", jax.jit(decode), (params["vae"], latents)),
    ]  # fmt: skip


# ----------------------------------------------------------------------------- training
def cim_program(size: str, attn_impl: str = "auto", mesh_devices: int = 8) -> Program:
    """The CIM training step of `training.cim` with its shardings, on a mesh of
    `mesh_devices` devices ('data' x 1), all arguments abstract."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from maestro_jax.sharding import batch_sharding, make_mesh
    from maestro_jax.training import cim_loss, cim_state, optim
    from maestro_jax.training.checkpoints import abstract_with_shardings
    from maestro_jax.training.cim_config import get_config

    c = get_config(SIZES[size]["variant"])
    c.model.random_init = True
    c.model.unet.attn_impl = attn_impl
    c.data.use_latents = True
    devices = jax.devices()[:mesh_devices]
    if len(devices) < mesh_devices:
        raise ValueError(
            f"a mesh of {mesh_devices} devices needs them; this host has {len(devices)}"
        )
    mesh = make_mesh((mesh_devices, 1), ("data", "fsdp"), devices=devices)
    models = cim_loss.build_models(c)
    spec = cim_loss.LossSpec.from_config(c)
    tx, sched = optim.make_optimizer(c)
    repl = NamedSharding(mesh, P())
    frozen = {}
    for name, (module, inputs) in cim_state.frozen_spec(models).items():
        a = jax.eval_shape(lambda k, m=module, i=inputs: m.init(k, *i)["params"], jax.random.key(0))
        frozen[name] = abstract_with_shardings(a, jax.tree.map(lambda _: repl, a))
    d = models.unet.context_dim
    frozen["null_emb"] = jax.ShapeDtypeStruct((CONTEXT_LEN, d), jnp.float32, sharding=repl)
    frozen["label_emb"] = jax.ShapeDtypeStruct((8, CONTEXT_LEN, d), jnp.float32, sharding=repl)
    a = jax.eval_shape(cim_state.cim_init_fn(models, tx), jax.random.key(0))
    state = abstract_with_shardings(a, jax.tree.map(lambda _: repl, a))
    b = int(c.batch_size_per_device) * mesh_devices
    frames = 10 if c.frames.rule == "release" else 5
    lat = (8 * c.sample.latent_size if size == "full" else c.data.synthetic_resolution) // (
        models.vae.downsample_factor
    )
    shapes = {"mel": ((b, 5, 128, 204), jnp.float32), "label_index": ((b,), jnp.int32),
              "latents": ((b, frames, lat, lat, 4), jnp.float32)}  # fmt: skip
    batch = {
        k: jax.ShapeDtypeStruct(shape, dt, sharding=batch_sharding(mesh, len(shape)))
        for k, (shape, dt) in shapes.items()
    }
    nan_step = jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)
    step = jax.jit(cim_loss.make_train_step(models, spec, tx, sched, 0), donate_argnums=(0,))
    return Program("cim_train_step", step, (state, batch, frozen, nan_step), mesh=mesh)


def programs(size: str, names: Sequence[str] = PROGRAMS, attn_impl: str = "auto",
             mesh_devices: int = 8) -> list[Program]:  # fmt: skip
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown:
        raise ValueError(f"unknown programs {unknown} (known: {', '.join(PROGRAMS)})")
    out = [p for p in generation_programs(size, attn_impl) if p.name in names]
    if "cim_train_step" in names:
        out.append(cim_program(size, attn_impl, mesh_devices))
    return out


# ----------------------------------------------------------------------------- measuring
def _mesh_ctx(mesh):
    import contextlib

    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def _site_kind(call, frames: int) -> str:
    tq, tk = call.q.shape[1], call.k.shape[1]
    if tk == CONTEXT_LEN:
        return "cross"
    if tq == tk == frames:
        return "temporal"
    return "self" if tq == tk else "other"


def describe_sites(calls, backend: str, frames: int, no_cudnn: bool = False) -> str:
    """'kind TqxTk: impl' per distinct attention site (counts where a shape repeats); with
    `no_cudnn` (this host cannot stage cuDNN) 'cudnn' reads 'cudnn*': staged as xla here."""
    seen = collections.Counter(
        (_site_kind(c, frames), c.q.shape[1], c.k.shape[1], c.resolved(backend)) for c in calls
    )
    order = {"self": 0, "cross": 1, "temporal": 2, "other": 3}
    parts = []
    for (kind, tq, tk, impl), n in sorted(
        seen.items(), key=lambda kv: (order[kv[0][0]], -kv[0][1])
    ):
        impl = "cudnn*" if impl == "cudnn" and no_cudnn else impl
        parts.append(f"{kind} {tq}x{tk}{f' (x{n})' if n > 1 else ''}: {impl}")
    return "; ".join(parts) if parts else "none"


def cost_flops(lowered_or_compiled) -> float | None:
    try:
        ca = lowered_or_compiled.cost_analysis()
    except Exception:  # not every backend implements it
        return None
    if isinstance(ca, list | tuple):
        ca = ca[0] if ca else None
    f = ca.get("flops") if ca else None
    return float(f) if f and f > 0 else None


def memory_gib(compiled) -> dict[str, float] | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    arg, tmp = m.argument_size_in_bytes, m.temp_size_in_bytes
    out, alias = m.output_size_in_bytes, m.alias_size_in_bytes
    return {"args": arg / GIB, "temp": tmp / GIB, "out": out / GIB,
            "peak": (arg + tmp + out - alias) / GIB}  # fmt: skip


def measure(
    program: Program, platforms: Sequence[str], frames: int, compile_cpu: bool = True
) -> list[Row]:
    """Export `program` for each platform (one trace: the attention sites are recorded on the
    first); XLA's FLOP count (and memory, when compiled) of the same program on this CPU."""
    from maestro_jax.nn import attention

    bad = [p for p in platforms if p not in PLATFORMS]
    if bad:
        raise ValueError(f"platforms {bad} are not among {PLATFORMS}")
    exported = {}
    with _mesh_ctx(program.mesh), attention.recorded_calls() as calls:
        for platform in platforms:
            t0 = time.perf_counter()
            text = jax.export.export(program.fn, platforms=[platform])(*program.args).mlir_module()
            exported[platform] = (text.count("tpu_custom_call"), time.perf_counter() - t0)
        lowered = program.fn.lower(*program.args)
        flops, source, mem, compile_s = cost_flops(lowered), "CPU lowering", None, None
        if compile_cpu:
            t0 = time.perf_counter()
            compiled = lowered.compile()
            compile_s = time.perf_counter() - t0
            mem = memory_gib(compiled)
            compiled_flops = cost_flops(compiled)
            if compiled_flops:
                flops, source = compiled_flops, "CPU compile"
    no_cudnn = not attention.cudnn_traceable()
    return [
        Row(
            program=program.name,
            platform=platform,
            attention=describe_sites(calls, BACKEND[platform], frames, no_cudnn),
            kernels=kernels,
            lower_s=lower_s,
            xla_tflop=flops / 1e12 if flops else None,
            flops_source=source,
            spec_tflop=program.spec_tflop,
            memory=mem,
            compile_s=compile_s,
        )
        for platform, (kernels, lower_s) in exported.items()
    ]


def table(rows: Sequence[Row]) -> str:
    """One markdown table of the rows."""
    head = ("program", "platform", "attention per site", "splash kernels", "TFLOP (XLA)",
            "TFLOP (spec)", "vs spec", "CPU compile: args / temp / peak GiB", "lower s",
            "compile s")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r.memory
        vs = r.flops_vs_spec
        cells = (
            r.program, r.platform, r.attention, str(r.kernels),
            f"{r.xla_tflop:.4g} ({r.flops_source})" if r.xla_tflop else "n/a",
            f"{r.spec_tflop:.2f}" if r.spec_tflop else "-",
            f"{100 * vs:+.1f} %" if vs is not None else "-",
            f"{m['args']:.2f} / {m['temp']:.2f} / {m['peak']:.2f}" if m else "not compiled",
            f"{r.lower_s:.1f}", f"{r.compile_s:.1f}" if r.compile_s is not None else "-",
        )  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
