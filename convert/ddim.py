"""The `vc2_ddim` fixture: VideoCrafter2's schedule + DDIM sampler with CFG on the tiny UNet.

    python -m convert.verify FIXTURES/vc2_ddim

There are no DDIM weights to convert; this module holds the fixture checks:
- `schedule_checks`: every `out_ddim_*` table and the 13 schedule buffers of the state dict
  (bit-exact float32 expected; checked with max_abs 0);
- `replay_checks`: the whole `lax.scan` sampler driven by the RECORDED UNet outputs of each step
  (`debug_intermediates.npz`, looked up by step index), compared with `out_eta*_*`: proves the
  update math, guidance, noise replay and step order without the UNet;
- `unet_checks`: the full sampler with the converted tiny VC2 UNet (`../vc2_unet3d` weights),
  both etas, every `out_eta*_*` at the README's bound (max_rel 1e-4).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from maestro_jax.diffusion import Schedule, ddim_sample, ddim_tables

README_TOL = 1e-4  # max|x - ref| <= 1e-4 * max|ref| (fixture README)
ETAS = {"eta0": 0.0, "eta1": 1.0}


def fixture_schedule(conf: dict) -> tuple[Schedule, dict]:
    """The Schedule and sampler arguments the fixture's config.json describes."""
    p = conf["params"]
    s = conf["sampler"]
    sched = Schedule.linear(
        int(p["timesteps"]),
        float(p["linear_start"]),
        float(p["linear_end"]),
        use_scale=bool(p.get("use_scale", False)),
        scale_a=float(p.get("scale_a", 1.0)),
        scale_b=float(p.get("scale_b", 1.0)),
        mid_step=int(p.get("mid_step", 400)),
        prediction_type={"eps": "eps", "v": "v"}[p.get("parameterization", "eps")],
    )
    if p.get("fix_scale_bug", False):
        raise NotImplementedError("fix_scale_bug=True is not used by any VC2 config")
    return sched, {"steps": int(s["S"]), "guidance": float(s["unconditional_guidance_scale"])}


def schedule_checks(fixture_dir: Path) -> list:
    from convert.common import load_state_dict
    from convert.verify import Check

    fixture_dir = Path(fixture_dir)
    conf = json.loads((fixture_dir / "config.json").read_text())
    sched, kw = fixture_schedule(conf)
    io = np.load(fixture_dir / "io.npz")
    sd = load_state_dict(fixture_dir / "state_dict.safetensors")
    checks = []
    for k in ("betas", "alphas_cumprod", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):
        checks.append(Check(f"buffer {k}", getattr(sched, k), sd[k], tol=0.0, metric="max_abs"))
    checks.append(
        Check(
            "buffer scale_arr[:T]",
            sched.scale_arr,
            sd["scale_arr"][: sched.num_timesteps],
            0.0,
            "max_abs",
        )
    )
    for tag, eta in ETAS.items():
        t = ddim_tables(sched, kw["steps"], eta)
        checks.append(
            Check(f"out_ddim_sigmas_{tag}", t.sigmas, io[f"out_ddim_sigmas_{tag}"], 0.0, "max_abs")
        )
    t = ddim_tables(sched, kw["steps"], 1.0)
    for f in ("alphas", "alphas_prev", "sqrt_one_minus_alphas", "scale_arr", "scale_arr_prev"):
        checks.append(Check(f"out_ddim_{f}", getattr(t, f), io[f"out_ddim_{f}"], 0.0, "max_abs"))
    checks.append(
        Check("out_ddim_timesteps", t.timesteps, io["out_ddim_timesteps"], metric="exact")
    )
    return checks


def _trajectory_checks(prefix: str, tag: str, sample, traj, io) -> list:
    from convert.verify import Check

    return [
        Check(
            f"{prefix}out_{tag}_step_t",
            np.asarray(traj.t).astype(np.int64),
            io[f"out_{tag}_step_t"],
            metric="exact",
        ),
        Check(
            f"{prefix}out_{tag}_pred_x0",
            np.asarray(traj.pred_x0),
            io[f"out_{tag}_pred_x0"],
            README_TOL,
            "max_rel",
        ),
        Check(
            f"{prefix}out_{tag}_x_prev",
            np.asarray(traj.x_prev),
            io[f"out_{tag}_x_prev"],
            README_TOL,
            "max_rel",
        ),
        Check(
            f"{prefix}out_{tag}_sample",
            np.asarray(sample),
            io[f"out_{tag}_sample"],
            README_TOL,
            "max_rel",
        ),
    ]


def replay_checks(fixture_dir: Path) -> list:
    """The sampler with the recorded eps of each step in place of the UNet."""
    import jax
    import jax.numpy as jnp

    fixture_dir = Path(fixture_dir)
    conf = json.loads((fixture_dir / "config.json").read_text())
    sched, kw = fixture_schedule(conf)
    io = np.load(fixture_dir / "io.npz")
    dbg = np.load(fixture_dir / "debug_intermediates.npz")
    b = io["in_x_T"].shape[0]
    cond = {"which": jnp.ones((b,), jnp.int32)}  # 1 = cond row
    uncond = {"which": jnp.zeros((b,), jnp.int32)}  # 0 = uncond row

    def run(tag: str, eta: float):
        table = jnp.stack([dbg[f"out_dbg_{tag}_eps_uncond"], dbg[f"out_dbg_{tag}_eps_cond"]])
        step_t = jnp.asarray(io[f"out_{tag}_step_t"], jnp.int32)

        def model_fn(x, t, c, step):
            # Rows repeat the batch in order; a wrong t given to the model zeroes the output,
            # so the checks would fail.
            rows = jnp.arange(x.shape[0]) % b
            t_ok = (t == step_t[step]).astype(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
            return table[c["which"], step, rows] * t_ok

        noise = io["in_noise_eta1"] if eta else None
        f = lambda x, n: ddim_sample(
            model_fn, x, cond=cond, uncond=uncond, eta=eta, schedule=sched, noise=n,
            return_intermediates=True, **kw,
        )  # fmt: skip
        return jax.jit(f)(io["in_x_T"], noise)

    checks = []
    for tag, eta in ETAS.items():
        sample, traj = run(tag, eta)
        checks += _trajectory_checks("replay ", tag, sample, traj, io)
    return checks


def verify_vc2_ddim(fixture_dir: Path) -> list:
    """Schedule tables, the recorded-eps replay, and the full sampler with the tiny UNet."""
    fixture_dir = Path(fixture_dir)
    return schedule_checks(fixture_dir) + replay_checks(fixture_dir) + unet_checks(fixture_dir)


def unet_checks(fixture_dir: Path, unet_fixture_dir: Path | None = None) -> list:
    """The full sampler, both etas, with the tiny VC2 UNet (weights from `../vc2_unet3d`)."""
    import jax
    import jax.numpy as jnp

    from convert.common import load_state_dict
    from convert.unet import convert_unet
    from maestro_jax.models.unet import UNet, UNetConfig

    fixture_dir = Path(fixture_dir)
    unet_dir = Path(unet_fixture_dir or fixture_dir.parent / "vc2_unet3d")
    conf = json.loads((fixture_dir / "config.json").read_text())
    sched, kw = fixture_schedule(conf)
    cfg = UNetConfig.from_ldm_vc(conf["params"]["unet_config"]["params"])
    params = convert_unet(load_state_dict(unet_dir / "state_dict.safetensors"), cfg, "ldm")
    unet = UNet(cfg)
    io = np.load(fixture_dir / "io.npz")
    to_cl = lambda a: np.moveaxis(a, -4, -1)  # [..., C, F, H, W] -> [..., F, H, W, C]
    to_cf = lambda a: np.moveaxis(np.asarray(a), -1, -4)
    x_T = to_cl(io["in_x_T"])
    fps = io["in_fps"].astype(np.int32)
    cond = {"context": io["in_context_cond"], "fps": fps}
    uncond = {"context": io["in_context_uncond"], "fps": fps}

    def sample(p, x, n, eta: float):
        # params are an argument (not closed-over constants) so XLA does not fold them
        model_fn = lambda x, t, c, step: unet.apply({"params": p}, x, t, c["context"], fps=c["fps"])
        return ddim_sample(
            model_fn, x, cond=cond, uncond=uncond, eta=eta, schedule=sched, noise=n,
            return_intermediates=True, **kw,
        )  # fmt: skip

    run = jax.jit(sample, static_argnames="eta")
    checks = []
    for tag, eta in ETAS.items():
        noise = jnp.asarray(to_cl(io["in_noise_eta1"])) if eta else None
        out, traj = run(params, jnp.asarray(x_T), noise, eta=eta)
        traj = traj._replace(x_prev=to_cf(traj.x_prev), pred_x0=to_cf(traj.pred_x0))
        checks += _trajectory_checks("", tag, to_cf(out), traj, io)
    return checks
