"""The speed targets on a GPU or a TPU: every target measured by one run, printed as one table.

    # GPU (H100 / H200), full size: 320x512, 16 frames, 50 DDIM steps, CFG 12, bf16 compute
    python benchmarks/speed_targets.py --size=full --json=$OUT/speed_targets.json --deadline_s=560
    # TPU (one chip): attention 'auto', the splash kernel for long spatial self-attention
    python benchmarks/speed_targets.py --platform=tpu --size=full --deadline_s=560
    # CPU smoke (tiny random models, a few frames; proves the script runs end to end)
    python benchmarks/speed_targets.py --size=tiny --skip_train

Targets: one CFG step >= 40 % MFU of the measured matmul rate; a whole multi-source sample with
decode <= 6 s on an H100 (stretch 4 s) and >= 4x faster than the original's 23.7 s; peak device
memory <= 24 GB; the CIM train step >= 35 % MFU.

What is measured (random weights of the full-size shapes: speed does not depend on values):
  matmul     the card's bf16 dense matmul rate, measured with big `jnp.dot`s (the MFU denominator);
  sample     one whole Maestro sample through `sampling.prepare_job` + `sampling.sample_maestro`
             + `sampling.decode` (N_A = 2 sources, LR boxes, N_D = 6 locate steps then Mosaic
             Denoising, CFG, eta 1): compile time (XLA events) and the median of 2 timed runs, the
             sampling and the VAE decode timed apart, and the device's peak memory right after;
  forwards   one CFG sampling step's UNet call (batch 2 = [uncond; cond], Mosaic edit) and plain
             batch-1 / batch-2 forwards: compile time, median time, XLA's FLOP count, MFU;
  train      the CIM training step (`benchmarks/train_step.py`, its own process so its memory is
             its own): step time, clips/s/device, MFU.

The orchestrator runs `sample` and `train` each in a child process (a clean device: peak memory
is per phase, and JAX's GPU preallocation of one process cannot starve the other); a child
writes its JSON after every measurement, so a phase cut short by --deadline_s still reports what
it finished. The reference numbers were measured by others on an H100 with the original PyTorch
code (VideoCrafter2 + the Maestro release).

MFU = spec FLOPs / time / measured matmul rate (and, for comparison, / the datasheet peak).
Spec FLOPs: one VideoCrafter2 UNet forward at 16x40x64 latents, batch 1 = 12.58 TFLOP
(docs/models.md, "VideoCrafter2 3D UNet"), so a CFG step (batch 2) = 25.2 TFLOP; the Mosaic edit adds little. For the
tiny size the analytic count does not apply and XLA's own count is used.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from absl import flags

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from maestro_jax import cli, files  # noqa: E402

# ---------------------------------------------------------------------------- targets and references
SPEC_TFLOP_FWD_B1 = 12.58  # VC2 UNet forward, 16x40x64 latent, batch 1 (docs/models.md)
SPEC_TFLOP_CFG_STEP = 2 * SPEC_TFLOP_FWD_B1
REF = {  # the original PyTorch code on an H100
    "fwd_b1_ms": 234.0,
    "fwd_b2_ms": 314.0,
    "decode_s": 0.30,
    "sample_s": 23.7,
    "mfu_pct": 11.0,
    "peak_gb": 7.6,
}
TARGET_SAMPLE_S = 6.0  # whole multi-source sample incl. decode, H100
TARGET_PEAK_GB = 24.0
TARGET_SPEEDUP = 4.0  # vs the original's 23.7 s
TARGET_STRETCH_S = 4.0
TARGET_CFG_MFU_PCT = 40.0
TARGET_TRAIN_MFU_PCT = 35.0
# bf16 dense peaks by device kind (first match wins: 'v5 lite' before 'v5')
DATASHEET_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0,
                         "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0,
                         "TPU v5": 459.0, "TPU v6 lite": 918.0, "TPU v6e": 918.0}  # fmt: skip
# --platform: the attention a run uses unless --attn_impl says otherwise
PLATFORM_ATTN = {"gpu": "cudnn", "tpu": "auto", "cpu": "xla"}

SIZES = {
    # frames, height, width (pixels), N_Q, steps
    "full": dict(frames=16, height=320, width=512, n_q=10, steps=50),
    "tiny": dict(frames=4, height=32, width=64, n_q=4, steps=50),
}


T0 = time.perf_counter()  # process start (deadlines are counted from here)


# ============================================================================ child: sample phase
def _compile_events():
    """Sum of JAX's compile-event durations (trace + lower + XLA backend) while active."""
    import jax.monitoring as mon

    acc = {"trace": 0.0, "lower": 0.0, "backend": 0.0}
    names = {
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
        "/jax/core/compile/backend_compile_duration": "backend",
    }

    def listener(event: str, duration: float, **_: Any) -> None:
        if event in names:
            acc[names[event]] += duration

    mon.register_event_duration_secs_listener(listener)
    return acc, listener


def _peak_bytes() -> int | None:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _in_use_bytes() -> int | None:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    return int(stats["bytes_in_use"]) if stats and "bytes_in_use" in stats else None


def _xla_flops(compiled) -> float | None:
    """XLA's FLOP count of a compiled program (None where the backend has none)."""
    from maestro_jax.aot import cost_flops  # imports jax: after the device set-up

    return cost_flops(compiled)


def build_models(args: types.SimpleNamespace, size: dict) -> tuple[Any, dict]:
    """`gen_models.Models` with full-size (or tiny) VC2 UNet + VAE and random weights.

    The text encoder only provides the null embedding, so it is a small random one of the UNet's
    context width (its cost is not part of any target)."""
    import jax
    import jax.numpy as jnp

    from maestro_jax.generation import models as gen_models
    from maestro_jax.models import clip_text as ct
    from maestro_jax.models.tokenizer import HashTokenizer
    from maestro_jax.models.unet import UNet, UNetConfig
    from maestro_jax.models.vae import AutoencoderKL, VAEConfig
    from maestro_jax.nn.random_init import random_like

    impls = dict(
        attn_impl=args.attn_impl,
        attn_impl_self=args.attn_impl_self,
        attn_impl_cross=args.attn_impl_cross,
        attn_impl_temporal=args.attn_impl_temporal,
        remat=args.remat,
    )
    if args.size == "full":
        unet_cfg = UNetConfig.vc2(dtype=args.dtype, **impls)
        vae_cfg = VAEConfig.sd(dtype=jnp.dtype(args.dtype))
        text_cfg = ct.tiny(width=unet_cfg.context_dim, heads=16, layers=2, embed_dim=None)
    else:
        unet_cfg, vae_cfg, text_cfg = gen_models.tiny_configs(args.dtype)
        unet_cfg = unet_cfg.replace(**impls)
    t0 = time.perf_counter()
    d = unet_cfg.context_dim
    unet_shapes = jax.eval_shape(
        lambda: UNet(unet_cfg).init(
            jax.random.key(0),
            jnp.zeros((1, 2, 8, 8, 4)),
            jnp.zeros((1,)),
            jnp.zeros((1, 77, d)),
            jnp.ones((1,)),
        )["params"]
    )
    vae_shapes = jax.eval_shape(
        lambda: AutoencoderKL(vae_cfg).init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"]
    )
    pdt = jnp.dtype(args.param_dtype)
    pool = 1 << 24 if args.size == "full" else None  # shared normal pool: seconds, not a minute
    unet_p = jax.tree.map(lambda a: jnp.asarray(a, pdt), random_like(unet_shapes, 0, pool))
    vae_p = jax.tree.map(lambda a: jnp.asarray(a, pdt), random_like(vae_shapes, 1, pool))
    text_p = random_like(ct.abstract_params(text_cfg), 2)
    text_p = jax.tree.map(jnp.asarray, text_p)
    jax.block_until_ready((unet_p, vae_p))
    n_unet = sum(int(x.size) for x in jax.tree.leaves(unet_p))
    n_vae = sum(int(x.size) for x in jax.tree.leaves(vae_p))
    spec = gen_models.ModelSpec(unet_cfg, vae_cfg, text_cfg, random=True)
    params = {"unet": unet_p, "vae": vae_p, "text": text_p}
    models = gen_models.Models(spec, params, HashTokenizer())
    info = {
        "unet_params_m": n_unet / 1e6,
        "vae_params_m": n_vae / 1e6,
        "setup_s": time.perf_counter() - t0,
        "attn_impls": {k: unet_cfg.impl(k) for k in ("self", "cross", "temporal")},
    }
    return models, info


def measure_matmul(dtype: str, sizes: list[int], iters: int) -> dict:
    """Best dense matmul rate over square sizes: TFLOP/s (2 n^3 per product)."""
    import jax
    import jax.numpy as jnp

    f = jax.jit(lambda a, b: jnp.dot(a, b))
    best = {"tflops": 0.0}
    for n in sizes:
        k1, k2 = jax.random.split(jax.random.key(n))
        a = jax.random.normal(k1, (n, n), jnp.dtype(dtype))
        b = jax.random.normal(k2, (n, n), jnp.dtype(dtype))
        jax.block_until_ready(f(a, b))
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            outs = [f(a, b) for _ in range(iters)]
            jax.block_until_ready(outs)
            ts.append((time.perf_counter() - t0) / iters)
            del outs
        tflops = 2 * n**3 / min(ts) / 1e12
        if tflops > best["tflops"]:
            best = {"tflops": tflops, "n": n, "dtype": dtype, "ms": min(ts) * 1e3}
        del a, b
    return best


def run_sample_phase(args: types.SimpleNamespace, out_json: Path | None) -> dict:
    """Everything that runs in the sampling process; returns (and writes after every step)
    the results dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from maestro_jax import mosaic
    from maestro_jax.generation import sampling
    from maestro_jax.models.unet import UNet

    res: dict[str, Any] = {"errors": {}}

    def save() -> None:
        if out_json is not None:
            tmp = out_json.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1, default=str))
            tmp.replace(out_json)

    dev = jax.devices()[0]
    res["device"] = {
        "kind": dev.device_kind,
        "platform": dev.platform,
        "count": jax.device_count(),
        "jax": jax.__version__,
    }
    size = dict(SIZES[args.size])
    if args.steps:
        size["steps"] = args.steps
    res["size"] = {**size, "name": args.size, "dtype": args.dtype, "param_dtype": args.param_dtype,
                   "frame_chunk": args.frame_chunk, "remat": args.remat}  # fmt: skip
    acc, listener = _compile_events()

    models, info = build_models(args, size)
    res["models"] = info
    res["memory_after_params_gb"] = (_in_use_bytes() or 0) / 1e9 or None
    save()
    print(f"[speed_targets] models ready in {info['setup_s']:.1f} s: UNet {info['unet_params_m']:.0f} M, "
          f"VAE {info['vae_params_m']:.1f} M, attention {info['attn_impls']}", flush=True)  # fmt: skip

    # ---- one Maestro job: N_A = 2 random audio sources, LR boxes, mosaic on, N_D = 6
    spec = sampling.VideoSpec(size["frames"], size["height"], size["width"])
    d = models.spec.context_width
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.standard_normal((2, 2, size["n_q"], d)).astype(np.float32))
    loc_boxes, mos_boxes = mosaic.preset("LR")
    n_d = 6 if size["steps"] > 6 else size["steps"] // 2  # both phases run, even in a smoke run
    settings = sampling.SamplerSettings(steps=size["steps"], n_d=n_d)
    job = sampling.prepare_job(models, tokens, loc_boxes, mos_boxes, spec, seed=0)
    jax.block_until_ready(job.x_T)
    fc = args.frame_chunk or None

    def one_sample() -> tuple[float, float]:
        t0 = time.perf_counter()
        lat = jax.block_until_ready(sampling.sample_maestro(models, [job], settings))
        t1 = time.perf_counter()
        frames = sampling.decode(models, lat, frame_chunk=fc)  # numpy: waits for the device
        t2 = time.perf_counter()
        assert frames.shape == (1, spec.num_frames, spec.height, spec.width, 3), frames.shape
        return t1 - t0, t2 - t1

    try:
        for k in acc:
            acc[k] = 0.0
        t0 = time.perf_counter()
        first = one_sample()
        first_total = time.perf_counter() - t0
        comp = dict(acc)
        print(f"[speed_targets] first sample (compile + run): {first_total:.1f} s", flush=True)
        runs = [one_sample() for _ in range(args.sample_runs)]
        s_t = statistics.median(r[0] for r in runs)
        d_t = statistics.median(r[1] for r in runs)
        res["sample"] = {
            "sampling_s": s_t,
            "decode_s": d_t,
            "total_s": statistics.median(r[0] + r[1] for r in runs),
            "runs": runs,
            "first_call_s": first_total,
            "first_call": first,
            "compile_events_s": comp,
            "compile_s": sum(comp.values()),
            "compile_est_s": first_total - (s_t + d_t),
            "per_step_ms": 1e3 * s_t / size["steps"],
            "peak_gb": (_peak_bytes() or 0) / 1e9 or None,
        }
        print(f"[speed_targets] sample {s_t:.2f} s + decode {d_t:.2f} s", flush=True)
    except Exception as e:  # report it in the table; go on with the rest
        res["errors"]["sample"] = f"{type(e).__name__}: {e}"
        print(f"[speed_targets] sample FAILED: {res['errors']['sample']}", flush=True)
    save()

    # ---- the card's matmul rate (after the sample, so its buffers are not in the sample's peak)
    try:
        sizes = [4096, 8192, 16384] if dev.platform != "cpu" else [256, 512]
        res["matmul"] = measure_matmul(args.matmul_dtype or args.dtype, sizes, args.matmul_iters)
        print(f"[speed_targets] matmul {res['matmul']}", flush=True)
    except Exception as e:
        res["errors"]["matmul"] = f"{type(e).__name__}: {e}"
    save()

    # ---- single UNet calls: the CFG step (batch 2 with the Mosaic edit) and plain forwards
    if not args.skip_forwards:
        unet = UNet(models.spec.unet)
        f_, (h, w) = spec.num_frames, spec.latent_hw(models.spec)
        null_f = job.null_f
        x1 = jax.random.normal(jax.random.key(1), (1, f_, h, w, 4), jnp.float32)
        x2 = jnp.concatenate([x1, x1])
        ctx1 = job.c_merge
        ctx2 = jnp.concatenate([null_f, job.c_merge])  # rows: [uncond F; cond F] (CFG batch)

        def fwd(params, x, ctx, edit):
            n = x.shape[0]
            return unet.apply({"params": params}, x, jnp.full((n,), 501), ctx,
                              fps=jnp.full((n,), 8.0), attn_edit=edit)  # fmt: skip

        cases = [
            ("cfg_step", (x2, ctx2, job.mosaic)),
            ("fwd_b2", (x2, ctx2, None)),
            ("fwd_b1", (x1, ctx1, None)),
        ]
        need = 90.0 if dev.platform != "cpu" else 30.0  # first guess of compile + runs
        for name, (x, ctx, edit) in cases:
            if args.phase_deadline and time.perf_counter() - T0 + need > args.phase_deadline:
                res["errors"][name] = "skipped: not enough time left before the deadline"
                print(f"[speed_targets] {name} skipped (deadline)", flush=True)
                save()
                continue
            try:
                for k in acc:
                    acc[k] = 0.0
                t0 = time.perf_counter()
                compiled = jax.jit(fwd).lower(models.params["unet"], x, ctx, edit).compile()
                wall = time.perf_counter() - t0
                jax.block_until_ready(compiled(models.params["unet"], x, ctx, edit))
                ts = []
                for _ in range(args.fwd_iters):
                    t0 = time.perf_counter()
                    jax.block_until_ready(compiled(models.params["unet"], x, ctx, edit))
                    ts.append(time.perf_counter() - t0)
                res[name] = {
                    "ms": 1e3 * statistics.median(ts),
                    "min_ms": 1e3 * min(ts),
                    "compile_s": wall,
                    "xla_tflop": (_xla_flops(compiled) or 0) / 1e12 or None,
                }
                print(f"[speed_targets] {name}: {res[name]}", flush=True)
                need = 1.3 * (wall + (args.fwd_iters + 1) * statistics.median(ts)) + 5
            except Exception as e:
                res["errors"][name] = f"{type(e).__name__}: {e}"
                print(f"[speed_targets] {name} FAILED: {res['errors'][name]}", flush=True)
            save()

    import jax.monitoring as mon

    try:
        mon.unregister_event_duration_listener(listener)
    except Exception:  # older JAX: nothing to unregister by function
        pass
    return res


# ============================================================================ train phase
_TRAIN_PATTERNS = {
    "compile_s": r"^\s*compile\s+([\d.]+) s",
    "step_ms": r"^\s*step time\s+([\d.]+) ms",
    "clips_per_s_per_device": r"^\s*clips/s/device\s+([\d.]+)",
    "frames_per_s_per_device": r"^\s*frames/s/device\s+([\d.]+)",
    "peak_gib": r"^\s*peak memory/device\s+([\d.]+) GiB",
    "xla_tflop": r"^\s*FLOPs/step/device \(XLA\)\s+([\d.]+) T",
    "spec_tflop": r"^\s*FLOPs/step/device \(spec\)\s+([\d.]+) T",
    "mfu_datasheet_pct": r"^\s*MFU \(spec FLOPs\)\s+([\d.]+) %",
    "mfu_xla_datasheet_pct": r"^\s*MFU \(XLA FLOPs\)\s+([\d.]+) %",
    "loss": r"^\s*loss \(sanity\)\s+([-\d.naif]+)",
}


def parse_train_output(text: str) -> dict:
    out: dict[str, Any] = {}
    for k, pat in _TRAIN_PATTERNS.items():
        m = re.search(pat, text, re.MULTILINE)
        if m:
            try:
                out[k] = float(m.group(1))
            except ValueError:
                out[k] = m.group(1)
    return out


def run_train_phase(args: types.SimpleNamespace, timeout: float) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_step.py")]
    env = dict(os.environ)
    if args.size == "tiny":
        cmd += ["--size", "runlocal", "--steps", "3"]
        # runlocal's mesh wants 8 devices: simulate them on the CPU
        env.setdefault("JAX_PLATFORMS", "cpu")
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        ).strip()
    else:
        cmd += ["--size", "full", "--steps", str(args.train_steps), "--mesh", "1,1"]
        if args.dtype:
            cmd += ["--dtype", args.dtype]
        attn = args.attn_impl or (PLATFORM_ATTN[args.platform] if args.platform else None)
        if attn:
            cmd += ["--attn_impl", attn]
    if args.remat:
        cmd += ["--remat"]
    print(f"[speed_targets] train: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return {"error": f"timed out after {timeout:.0f} s", "tail": text[-2000:]}
    text = p.stdout + p.stderr
    res = parse_train_output(p.stdout)
    res["wall_s"] = time.perf_counter() - t0
    if p.returncode != 0 or "step_ms" not in res:
        res["error"] = f"exit {p.returncode}: " + text.strip()[-1500:]
    print(p.stdout[-3000:], flush=True)
    return res


# ============================================================================ table
def _peak_datasheet(kind: str) -> float | None:
    for k, v in DATASHEET_BF16_TFLOPS.items():
        if k in kind:
            return v
    return None


def build_table(r: dict, args: types.SimpleNamespace) -> tuple[str, list[dict]]:
    full = args.size == "full"
    dev = r.get("device", {})
    kind = dev.get("kind", "?")
    rate = (r.get("matmul") or {}).get("tflops")
    sheet = _peak_datasheet(kind)
    rows: list[dict] = []

    def row(target, ours, ref="", goal="", ok=None, note=""):
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        rows.append(dict(target=target, ours=ours, ref=ref, goal=goal, verdict=verdict, note=note))

    def err(name):
        e = r.get("errors", {}).get(name)
        return f"error: {e[:80]}" if e else "not run"

    def mfu(tflop, seconds, peak):
        return 100 * tflop / seconds / peak if tflop and seconds and peak else None

    row("card", f"{kind} x {dev.get('count', '?')}")
    mm = r.get("matmul")
    row("(1) card matmul rate (measured)",
        f"{mm['tflops']:.4g} TFLOP/s ({mm['dtype']}, n={mm['n']})" if mm else err("matmul"),
        "", "", None, f"datasheet {sheet:.0f}" if sheet else "")  # fmt: skip

    cs = r.get("cfg_step")
    spec_tf = SPEC_TFLOP_CFG_STEP if full else None
    if cs:
        tf = spec_tf or cs.get("xla_tflop")
        m = mfu(tf, cs["ms"] / 1e3, rate)
        row("(1) CFG step: UNet batch 2 + Mosaic edit", f"{cs['ms']:.1f} ms",
            f"{REF['fwd_b2_ms']:.0f} ms (b2 fwd)", "", None,
            f"XLA count {cs['xla_tflop']:.2f} TFLOP" if cs.get("xla_tflop") else "")  # fmt: skip
        row("(1) CFG step MFU vs measured matmul",
            f"{m:.1f} %" if m is not None else "n/a",
            f"{REF['mfu_pct']:.0f} %", f">= {TARGET_CFG_MFU_PCT:.0f} %",
            (m >= TARGET_CFG_MFU_PCT) if (m is not None and full) else None,
            f"{'spec' if spec_tf else 'XLA'} {tf:.3g} TFLOP"
            + (f"; vs datasheet {mfu(tf, cs['ms'] / 1e3, sheet):.1f} %" if sheet else ""))  # fmt: skip
    else:
        row("(1) CFG step MFU", err("cfg_step"), f"{REF['mfu_pct']:.0f} %")
    for name, label, ref in (("fwd_b1", "UNet forward batch 1", REF["fwd_b1_ms"]),
                             ("fwd_b2", "UNet forward batch 2 (plain)", REF["fwd_b2_ms"])):  # fmt: skip
        fw = r.get(name)
        if fw:
            b = 1 if name == "fwd_b1" else 2
            m = mfu(SPEC_TFLOP_FWD_B1 * b if full else fw.get("xla_tflop"), fw["ms"] / 1e3, rate)
            row(label, f"{fw['ms']:.1f} ms", f"{ref:.0f} ms", "< ref", fw["ms"] < ref if full
                else None, f"MFU {m:.1f} %" if m is not None else "")  # fmt: skip
        else:
            row(label, err(name), f"{ref:.0f} ms")

    s = r.get("sample")
    if s:
        per_step_mfu = mfu(spec_tf, s["per_step_ms"] / 1e3, rate)
        speedup = REF["sample_s"] / s["total_s"]
        row("(2) whole sample incl. decode (wall)", f"{s['total_s']:.2f} s",
            f"{REF['sample_s']:.1f} s (sampling only)",
            f"<= {TARGET_SAMPLE_S:.0f} s (H100) and >= {TARGET_SPEEDUP:.0f}x faster",
            (s["total_s"] <= TARGET_SAMPLE_S and speedup >= TARGET_SPEEDUP) if full else None,
            f"median of {len(s['runs'])}; {speedup:.1f}x the original; stretch "
            f"{TARGET_STRETCH_S:.0f} s {'met' if s['total_s'] <= TARGET_STRETCH_S else 'not met'}")  # fmt: skip
        row(f"(2) of which sampling ({r['size']['steps']} CFG steps)", f"{s['sampling_s']:.2f} s",
            f"{REF['sample_s']:.1f} s", "", None,
            f"{s['per_step_ms']:.0f} ms/step"
            + (f", MFU {per_step_mfu:.1f} %" if per_step_mfu is not None else ""))  # fmt: skip
        row("(2) of which VAE decode (16 frames)" if full else "(2) of which VAE decode",
            f"{s['decode_s']:.2f} s", f"{REF['decode_s']:.2f} s", "", None,
            f"frame_chunk {args.frame_chunk or 'all'}")  # fmt: skip
        pk = s.get("peak_gb")
        row("(3) peak device memory, one sample", f"{pk:.2f} GB" if pk else "n/a (no memory_stats)",
            f"{REF['peak_gb']:.1f} GB", f"<= {TARGET_PEAK_GB:.0f} GB",
            (pk <= TARGET_PEAK_GB) if (pk and full) else None,
            f"params {args.param_dtype}, remat {args.remat}, frame_chunk "
            f"{args.frame_chunk or 'all'}")  # fmt: skip
        ce = s["compile_events_s"]
        row("(5) compile: sample + decode", f"{s['compile_s']:.1f} s",
            "", "", None,
            f"XLA {ce['backend']:.1f} s, trace {ce['trace']:.1f} s, lower {ce['lower']:.1f} s; "
            f"first call - steady run = {s['compile_est_s']:.1f} s")  # fmt: skip
    else:
        row("(2) whole sample incl. decode", err("sample"), f"{REF['sample_s']:.1f} s",
            f"<= {TARGET_SAMPLE_S:.0f} s", False if full else None)  # fmt: skip
        row("(3) peak device memory, one sample", err("sample"), f"{REF['peak_gb']:.1f} GB",
            f"<= {TARGET_PEAK_GB:.0f} GB", False if full else None)  # fmt: skip
    for name in ("cfg_step", "fwd_b2", "fwd_b1"):
        if r.get(name):
            row(f"(5) compile: {name}", f"{r[name]['compile_s']:.1f} s")

    t = r.get("train")
    if t is None:
        row("(4) CIM train step", "skipped (--skip_train)")
    elif "step_ms" in t:
        tf = t.get("spec_tflop") or t.get("xla_tflop")
        m = mfu(tf, t["step_ms"] / 1e3, rate)
        row("(4) CIM train step time", f"{t['step_ms']:.1f} ms", "", "", None,
            f"compile {t.get('compile_s', float('nan')):.1f} s; peak "
            + (f"{t['peak_gib']:.2f} GiB" if "peak_gib" in t else "n/a"))  # fmt: skip
        row("(4) CIM train clips/s/device", f"{t.get('clips_per_s_per_device', float('nan')):.3f}",
            "", "", None, f"frames/s/device {t.get('frames_per_s_per_device', float('nan')):.2f}")  # fmt: skip
        row("(4) CIM train MFU vs measured matmul", f"{m:.1f} %" if m is not None else "n/a",
            "", f">= {TARGET_TRAIN_MFU_PCT:.0f} %",
            (m >= TARGET_TRAIN_MFU_PCT) if (m is not None and full) else None,
            (f"{'spec' if t.get('spec_tflop') else 'XLA'} {tf:.3g} TFLOP/step" if tf else "")
            + (f"; vs datasheet {t['mfu_datasheet_pct']:.1f} %"
               if "mfu_datasheet_pct" in t else ""))  # fmt: skip
    else:
        row("(4) CIM train step", f"error: {t.get('error', '?')[:100]}")

    head = (
        f"Speed targets: {kind} ({dev.get('platform', '?')}), jax {dev.get('jax', '?')}, "
        f"size {args.size} ({r.get('size', {}).get('frames')}x{r.get('size', {}).get('height')}x"
        f"{r.get('size', {}).get('width')}, {r.get('size', {}).get('steps')} steps), compute "
        f"{args.dtype}, attention {r.get('models', {}).get('attn_impls')}, random weights"
    )
    lines = [head, "", "| target | ours | reference (PyTorch, H100) | goal | verdict | notes |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for x in rows:
        cells = [x["target"], x["ours"], x["ref"], x["goal"], x["verdict"], x["note"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    if not full:
        lines.append("")
        lines.append("(tiny size: verdicts are n/a; the targets apply to the full size)")
    return "\n".join(lines), rows


# ============================================================================ main
_F = {
    "size": flags.DEFINE_enum("size", "full", sorted(SIZES), "full-size or tiny models"),
    "platform": flags.DEFINE_enum(
        "platform", None, sorted(PLATFORM_ATTN),
        "the device the run is for (default: the one JAX finds); sets the attention default: "
        "gpu cudnn, tpu auto (the splash kernel where it applies), cpu xla; a run on another "
        "device stops with an error",
    ),
    "dtype": flags.DEFINE_string("dtype", None, "compute dtype (full: bfloat16, tiny: float32)"),
    "param_dtype": flags.DEFINE_string("param_dtype", "float32", "storage dtype of UNet/VAE params"),
    "attn_impl": flags.DEFINE_string("attn_impl", None, "xla | cudnn | splash | auto (default: "
                                     "by platform)"),
    "attn_impl_self": flags.DEFINE_string("attn_impl_self", None, "spatial self-attention"),
    "attn_impl_cross": flags.DEFINE_string("attn_impl_cross", None, "cross-attention"),
    "attn_impl_temporal": flags.DEFINE_string("attn_impl_temporal", None, "temporal attention"),
    "frame_chunk": flags.DEFINE_integer("frame_chunk", 0, "VAE decode frames at a time (0: all)"),
    "remat": flags.DEFINE_bool("remat", False, "UNet remat (training only matters)"),
    "steps": flags.DEFINE_integer("steps", 0, "DDIM steps (0: the size's, 50 at full size)"),
    "sample_runs": flags.DEFINE_integer("sample_runs", 2, "timed samples (median)"),
    "fwd_iters": flags.DEFINE_integer("fwd_iters", 5, "timed calls per single UNet call"),
    "matmul_dtype": flags.DEFINE_string("matmul_dtype", None, "default: the compute dtype"),
    "matmul_iters": flags.DEFINE_integer("matmul_iters", 20, "products per matmul timing"),
    "skip_forwards": flags.DEFINE_bool("skip_forwards", False, "no single-UNet-call timings"),
    "skip_train": flags.DEFINE_bool("skip_train", False, "no CIM train step"),
    "train_steps": flags.DEFINE_integer("train_steps", 5, "timed CIM train steps"),
    "deadline_s": flags.DEFINE_float("deadline_s", 0.0, "wall budget of the whole run (0: none); "
                                     "phases cut short report what they finished"),
    "train_reserve_s": flags.DEFINE_float("train_reserve_s", 200.0, "of the deadline, kept for "
                                          "the train phase"),
    "json": flags.DEFINE_string("json", None, "also write every result here"),
    "phase": flags.DEFINE_enum("phase", "all", ["all", "sample"], "internal: the child's phase"),
    "phase_json": flags.DEFINE_string("phase_json", None, "internal: the child's result file"),
    "phase_deadline": flags.DEFINE_float("phase_deadline", 0.0, "internal: the child's budget"),
    "in_process": flags.DEFINE_bool("in_process", False, "run the sample phase in this process "
                                    "(tests, debugging; peak memory is then not per phase)"),
}  # fmt: skip
_CHILD_ONLY = ("phase", "phase_json", "phase_deadline", "in_process")


def settings(**overrides: Any) -> types.SimpleNamespace:
    """The run's settings: every flag's value (its default outside a run), then `overrides`,
    with the size's dtype resolved."""
    parsed = flags.FLAGS.is_parsed()
    args = types.SimpleNamespace(**{k: f.value if parsed else f.default for k, f in _F.items()})
    for k, v in overrides.items():
        if k not in _F:
            raise KeyError(f"no setting {k!r}")
        setattr(args, k, v)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.size == "full" else "float32"
    return args


def _flag_args(args: types.SimpleNamespace) -> list[str]:
    """The flags that give a child process the same settings."""
    out = []
    for k, v in vars(args).items():
        if k in _CHILD_ONLY or v is None:
            continue
        out.append(f"--{k}" if v is True else f"--no{k}" if v is False else f"--{k}={v}")
    return out


def _child_defaults(args: types.SimpleNamespace) -> str | None:
    """Backend-dependent defaults, resolved in the process that owns the device; an error line
    when the device is not the one --platform asks for."""
    import jax

    backend = jax.default_backend()
    if args.platform and args.platform != backend:
        return f"--platform {args.platform}: JAX runs on {backend} here"
    if args.attn_impl is None:
        args.attn_impl = PLATFORM_ATTN.get(args.platform or backend, "xla")
    return None


def run(args: types.SimpleNamespace) -> dict:
    """Every phase (children unless --in_process), the table printed; returns the results."""
    t_start = time.perf_counter()
    if args.phase == "sample":  # child
        bad = _child_defaults(args)
        if bad:
            res = {"errors": {"platform": bad}}
            if args.phase_json:
                Path(args.phase_json).write_text(json.dumps(res))
            return res
        return run_sample_phase(args, Path(args.phase_json) if args.phase_json else None)

    def left() -> float:
        if not args.deadline_s:
            return 1e9
        return args.deadline_s - (time.perf_counter() - t_start)

    if args.in_process:
        bad = _child_defaults(args)
        results = {"errors": {"platform": bad}} if bad else run_sample_phase(args, None)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            pj = Path(tmp) / "sample.json"
            cmd = [sys.executable, __file__, "--phase=sample", f"--phase_json={pj}"]
            cmd += _flag_args(args)
            # the training child needs time too: give sampling at most ~70% of what is left
            budget = left() - (3 if args.skip_train else args.train_reserve_s)
            cmd += [f"--phase_deadline={budget - 10:.0f}"] if args.deadline_s else []
            try:
                rc = subprocess.run(cmd, timeout=budget).returncode
                note = None if rc == 0 else f"sample process exit {rc}"
            except subprocess.TimeoutExpired:
                note = f"sample process cut at the deadline ({budget:.0f} s)"
            results = json.loads(pj.read_text()) if pj.exists() else {"errors": {}}
            if note:
                results.setdefault("errors", {})["process"] = note
                print(f"[speed_targets] {note}", flush=True)
    if not args.skip_train and "platform" not in results.get("errors", {}):
        if left() > 30:
            results["train"] = run_train_phase(args, left() - 5)
        else:
            results["train"] = {"error": "no time left before the deadline"}
    table, rows = build_table(results, args)
    results["table_rows"] = rows
    results["wall_s"] = time.perf_counter() - t_start
    print()
    print(table)
    if results.get("errors"):
        print("\nerrors:", json.dumps(results["errors"], indent=1))
    if args.json:
        files.write_json(args.json, results)
        print(f"\nwrote {args.json}")
    return results


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    args = settings()
    for name in ("sample_runs", "fwd_iters", "matmul_iters", "train_steps"):
        if getattr(args, name) < 1:
            return cli.error(f"--{name} {getattr(args, name)} must be >= 1")
    results = run(args)
    if args.phase == "sample":
        return 0
    return 2 if "platform" in results.get("errors", {}) else 0


if __name__ == "__main__":
    cli.run(main)
