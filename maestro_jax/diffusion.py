"""Noise schedule, DDIM sampling (one `lax.scan`), classifier-free guidance, x0 rescaling.

Facts: docs/models.md, "DDIM schedule and use_scale" and "Stable Diffusion 2.1 UNet" > "Configurations"; originals: (VideoCrafter2 `ddpm3d.py`, `samplers/ddim.py`) and 2.1
(SD 2.1, eps or v prediction). Paper: DDIM, Song et al. 2021, eq. 12; CFG, Ho & Salimans 2022.

Schedule
--------
`Schedule.linear(...)` / `Schedule.vc2()` / `Schedule.sd21(v=...)`: betas = linspace(sqrt(s),
sqrt(e), T)**2 in float64, alphas_cumprod = cumprod(1 - betas) in float64, stored float32 (as LDM's
`register_schedule`). With `use_scale` (VideoCrafter2) the signal is rescaled by
scale_arr = concat(linspace(1, scale_b, mid_step), full(T, scale_b))[:T]:
    q_sample(x0, t, eps) = sqrt(a_t) * scale_t * x0 + sqrt(1 - a_t) * eps
and the sampler divides x0 by scale_t and multiplies it by scale_prev (below).

DDIM
----
Timesteps `range(0, T, T // S) + 1` ([1, 21, ..., 981] for S = 50; an S that does not divide T
gives more than S steps, exactly as the original). Step i = 0 is the noisiest (t = 981). Per step,
all in float32, with a = alphas_cumprod[t], a_prev = alphas_cumprod[t_prev] (a_prev of the last
step is alphas_cumprod[0] = 0.99915, not 1), sigma = eta * sqrt((1-a_prev)/(1-a) * (1-a/a_prev)):
    e      = e_u + guidance * (e_c - e_u)              # classifier-free guidance
    x0     = (x - sqrt(1 - a) * e) / sqrt(a)           # eps prediction
    (v prediction: x0 = sqrt(a) x - sqrt(1-a) v, e = sqrt(a) v + sqrt(1-a) x)
    x0     = x0 / scale_t                              # use_scale only (1 otherwise)
    x_prev = sqrt(a_prev) * scale_prev * x0 + sqrt(1 - a_prev - sigma**2) * e + sigma * z

The model interface (what `ddim_sample` calls)
-----------------------------------------------
    model_fn(x, t, cond, step) -> prediction
      x:    [N, ...] float32 latents (N = B, or 2B when cond and uncond are batched),
      t:    [N] int32 timesteps (all equal within a call),
      cond: a pytree of arrays with leading axis N (e.g. {'context': [N, L, D], 'fps': [N]}),
            or whatever the caller passes when the two CFG passes are separate calls,
      step: scalar int32 index of the sampling step, 0 = noisiest; lets one traced function
            change behaviour per step with `jnp.where` / `lax.cond` without retracing,
      returns eps (or v, per `schedule.prediction_type`), shape of x.
Classifier-free guidance batches the two passes into ONE call by default: x, t and every leaf of
`cond` / `uncond` are concatenated on axis 0 as [uncond, cond] (both trees must have the same
structure; put unbatched shared data in the closure of `model_fn` instead). `cfg_batched=False`
makes two calls, `model_fn(x, t, cond, step)` then `model_fn(x, t, uncond, step)`, and then the
trees may differ (e.g. a cond tree carrying attention-mosaic data and a plain uncond tree).

Phases (Maestro's Attention Mosaic): pass `model_fn=(fn_locate, fn_mosaic)` and `n_switch=N_D`.
Steps [0, N_D) use fn_locate and steps [N_D, S) fn_mosaic, as two consecutive `lax.scan`s: each
function is traced once, whatever the number of steps. More phases: k functions and k - 1
increasing switch steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[[jax.Array, jax.Array, Any, jax.Array], jax.Array]
PREDICTION_TYPES = ("eps", "v")


# ----------------------------------------------------------------------------- schedule
@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """Discrete diffusion schedule; every array is numpy float32 of length T (=1000).

    Fields mirror LDM's buffers: `betas`, `alphas_cumprod`, `sqrt_alphas_cumprod`,
    `sqrt_one_minus_alphas_cumprod` (float64 math, stored float32) and `scale_arr` (ones unless
    `use_scale`).
    """

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    scale_arr: np.ndarray
    use_scale: bool = False
    prediction_type: str = "eps"

    @classmethod
    def linear(
        cls,
        num_timesteps: int = 1000,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        *,
        use_scale: bool = False,
        scale_a: float = 1.0,
        scale_b: float = 0.7,
        mid_step: int = 400,
        prediction_type: str = "eps",
    ) -> Schedule:
        """LDM `make_beta_schedule('linear')` (diffusers `scaled_linear`) + VC's `use_scale`."""
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        betas = (
            np.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=np.float64) ** 2
        )
        ac = np.cumprod(1.0 - betas)
        if use_scale:
            # VC's fix_scale_bug=False builds T + mid_step entries; only the first T are read.
            scale = np.concatenate(
                [np.linspace(scale_a, scale_b, mid_step), np.full(num_timesteps, scale_b)]
            )[:num_timesteps]
        else:
            scale = np.ones(num_timesteps)
        f32 = lambda a: np.asarray(a, np.float32)
        return cls(
            betas=f32(betas),
            alphas_cumprod=f32(ac),
            sqrt_alphas_cumprod=f32(np.sqrt(ac)),
            sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - ac)),
            scale_arr=f32(scale),
            use_scale=use_scale,
            prediction_type=prediction_type,
        )

    @classmethod
    def vc2(cls) -> Schedule:
        """VideoCrafter2 / Maestro: linear 0.00085..0.012, eps, use_scale with scale_b 0.7."""
        return cls.linear(use_scale=True, scale_b=0.7, prediction_type="eps")

    @classmethod
    def sd21(cls, v: bool = True) -> Schedule:
        """SD 2.1 (768, `v=True`) or SD 2.1-base (eps); no use_scale."""
        return cls.linear(prediction_type="v" if v else "eps")

    @property
    def num_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def _at(self, arr: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
        v = jnp.asarray(arr)[jnp.asarray(t)]
        return v.reshape(v.shape + (1,) * (ndim - v.ndim))

    def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """Forward process: x_t = sqrt(a_t) * scale_t * x0 + sqrt(1 - a_t) * noise.

        x0, noise: [B, ...]; t: [B] int timesteps. scale_t = 1 without use_scale.
        """
        n = x0.ndim
        out = self._at(self.sqrt_alphas_cumprod, t, n) * x0
        if self.use_scale:
            out = out * self._at(self.scale_arr, t, n)
        return out + self._at(self.sqrt_one_minus_alphas_cumprod, t, n) * noise

    def training_target(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        """What the model learns to predict: eps, or v = sqrt(a_t) eps - sqrt(1 - a_t) x0.

        (As LDM's `get_v`, v uses the unscaled x0 even with use_scale.)
        """
        if self.prediction_type == "eps":
            return noise
        n = x0.ndim
        return (
            self._at(self.sqrt_alphas_cumprod, t, n) * noise
            - self._at(self.sqrt_one_minus_alphas_cumprod, t, n) * x0
        )


# ----------------------------------------------------------------------------- DDIM tables
def ddim_timesteps(steps: int, num_timesteps: int = 1000) -> np.ndarray:
    """Ascending DDIM timesteps `range(0, T, T // steps) + 1` (VC `make_ddim_timesteps`)."""
    if not 1 <= steps < num_timesteps:
        raise ValueError(f"DDIM steps must be in [1, {num_timesteps - 1}], got {steps}")
    ts = np.arange(0, num_timesteps, num_timesteps // steps, dtype=np.int64) + 1
    if ts[-1] >= num_timesteps:
        # e.g. 3 steps: range(0, 1000, 333) + 1 ends at 1000, past the schedule (the original
        # fails there too, with an index error)
        raise ValueError(
            f"{steps} DDIM steps give timestep {ts[-1]} >= {num_timesteps}; choose a step count "
            f"whose stride {num_timesteps // steps} leaves the last timestep below {num_timesteps}"
        )
    return ts


@dataclasses.dataclass(frozen=True, eq=False)
class DDIMTables:
    """Per-step float32 coefficients in ASCENDING timestep order (index = S - 1 - step).

    Named as the fixture's `out_ddim_*` arrays. `sigmas` is computed in float64 from the float32
    alphas, then rounded to float32, as the original does.
    """

    timesteps: np.ndarray  # int64 [S]
    alphas: np.ndarray
    alphas_prev: np.ndarray
    sqrt_one_minus_alphas: np.ndarray
    sigmas: np.ndarray
    scale_arr: np.ndarray
    scale_arr_prev: np.ndarray

    def sampling_order(self) -> dict[str, np.ndarray]:
        """The tables reversed (step 0 = noisiest first), `t` as int32."""
        d = {f.name: getattr(self, f.name)[::-1].copy() for f in dataclasses.fields(self)}
        d["t"] = d.pop("timesteps").astype(np.int32)
        return d


def ddim_tables(schedule: Schedule, steps: int, eta: float) -> DDIMTables:
    ts = ddim_timesteps(steps, schedule.num_timesteps)
    ac = schedule.alphas_cumprod
    a = ac[ts]  # float32
    a_prev64 = np.concatenate([ac[:1], ac[ts[:-1]]]).astype(np.float64)
    one_minus_a = (np.float32(1.0) - a).astype(np.float64)  # a float32 op in the original
    sig = eta * np.sqrt((1.0 - a_prev64) / one_minus_a * (1.0 - a.astype(np.float64) / a_prev64))
    sc = schedule.scale_arr
    return DDIMTables(
        timesteps=ts,
        alphas=a,
        alphas_prev=a_prev64.astype(np.float32),
        sqrt_one_minus_alphas=np.sqrt(np.float32(1.0) - a).astype(np.float32),
        sigmas=sig.astype(np.float32),
        scale_arr=sc[ts].astype(np.float32),
        scale_arr_prev=np.concatenate([sc[:1], sc[ts[:-1]]]).astype(np.float32),
    )


# ----------------------------------------------------------------------------- one step
def guide(e_cond: jax.Array, e_uncond: jax.Array | None, guidance: float | None) -> jax.Array:
    """Classifier-free guidance e_u + s * (e_c - e_u); e_c when there is no uncond pass."""
    if e_uncond is None or guidance is None:
        return e_cond
    return e_uncond + guidance * (e_cond - e_uncond)


def ddim_step(
    x: jax.Array,
    model_out: jax.Array,
    coef: dict[str, jax.Array],
    noise: jax.Array | None,
    prediction_type: str = "eps",
) -> tuple[jax.Array, jax.Array]:
    """One DDIM update (VC `p_sample_ddim` after the model call), float32.

    Args:
      x: [B, ...] current latent x_t.
      model_out: guided eps (or v), shape of x.
      coef: scalars 'alphas', 'alphas_prev', 'sqrt_one_minus_alphas', 'sigmas', 'scale_arr',
        'scale_arr_prev' of this step (from `DDIMTables`).
      noise: standard normal z, shape of x (ignored where None: eta = 0).
    Returns:
      (x_prev, pred_x0), pred_x0 already divided by scale_t (what VC returns).
    """
    a_t, a_prev = coef["alphas"], coef["alphas_prev"]
    sigma, s1m = coef["sigmas"], coef["sqrt_one_minus_alphas"]
    sqrt_a = jnp.sqrt(a_t)
    if prediction_type == "eps":
        e = model_out
        pred_x0 = (x - s1m * e) / sqrt_a
    elif prediction_type == "v":
        v = model_out
        e = sqrt_a * v + s1m * x
        pred_x0 = sqrt_a * x - s1m * v
    else:
        raise ValueError(
            f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
        )
    dir_xt = jnp.sqrt(1.0 - a_prev - sigma**2) * e
    # scale_arr / scale_arr_prev are exactly 1 without use_scale, so the same formula serves both.
    pred_x0 = pred_x0 / coef["scale_arr"]
    x_prev = jnp.sqrt(a_prev) * coef["scale_arr_prev"] * pred_x0 + dir_xt
    if noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev, pred_x0


# ----------------------------------------------------------------------------- sampler
class DDIMTrajectory(NamedTuple):
    """Per-step outputs of `ddim_sample(..., return_intermediates=True)`, step 0 first."""

    x_prev: jax.Array  # [S, B, ...] x after each step
    pred_x0: jax.Array  # [S, B, ...] x0 prediction (divided by scale_t)
    t: jax.Array  # [S] int32 timestep given to the model


def _concat_trees(a: Any, b: Any) -> Any:
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta != tb:
        raise ValueError(
            "batched classifier-free guidance needs cond and uncond with the same pytree "
            f"structure, got {ta} vs {tb}; pass cfg_batched=False to run two model calls"
        )
    return jax.tree.map(lambda u, c: jnp.concatenate([u, c], axis=0), a, b)


def _guided_output(
    fn: ModelFn, x, t_scalar, step, cond, uncond, guidance, cfg_batched: bool
) -> jax.Array:
    b = x.shape[0]
    use_cfg = uncond is not None and guidance is not None and guidance != 1.0
    if not use_cfg:
        return fn(x, jnp.full((b,), t_scalar, jnp.int32), cond, step).astype(x.dtype)
    if cfg_batched:
        out = fn(
            jnp.concatenate([x, x], axis=0),
            jnp.full((2 * b,), t_scalar, jnp.int32),
            _concat_trees(uncond, cond),
            step,
        ).astype(x.dtype)
        e_u, e_c = out[:b], out[b:]
    else:
        t = jnp.full((b,), t_scalar, jnp.int32)
        e_c = fn(x, t, cond, step).astype(x.dtype)
        e_u = fn(x, t, uncond, step).astype(x.dtype)
    return guide(e_c, e_u, guidance)


def ddim_sample(
    model_fn: ModelFn | Sequence[ModelFn],
    x_T: jax.Array,
    *,
    cond: Any,
    uncond: Any = None,
    steps: int = 50,
    eta: float = 1.0,
    guidance: float | None = 12.0,
    schedule: Schedule | None = None,
    key: jax.Array | None = None,
    noise: jax.Array | None = None,
    draw_noise: Callable[[jax.Array, tuple[int, ...]], jax.Array] | None = None,
    n_switch: int | Sequence[int] | None = None,
    cfg_batched: bool = True,
    return_intermediates: bool = False,
    progress: Callable[[Any], None] | None = None,
) -> jax.Array | tuple[jax.Array, DDIMTrajectory]:
    """DDIM sampling with classifier-free guidance as `lax.scan` (see the module docstring).

    Traceable: call it inside `jax.jit` (model params closed over by `model_fn` or captured by
    the caller's jit); each model function is traced once.

    Args:
      model_fn: `model_fn(x, t, cond, step) -> eps | v`, or a sequence of k such functions that
        run in consecutive phases split at `n_switch` (k - 1 step indices).
      x_T: [B, ...] initial noise (float32).
      cond, uncond: conditioning pytrees (leading axis B when batched); uncond None, or
        guidance None / 1.0, runs the conditional pass only (as VC does for scale 1).
      steps: number of DDIM steps S (timesteps `range(0, T, T // S) + 1`).
      eta: DDIM eta (a Python float; 0 = deterministic, 1 = VC2/Maestro default).
      guidance: CFG scale s in e_u + s (e_c - e_u).
      schedule: default `Schedule.vc2()`.
      key: PRNG key for the per-step noise (eta > 0): step i draws normal(fold_in(key, i)).
      noise: instead of `key`, the explicit standard-normal draws [S_total, B, ...] (replays).
      draw_noise: `draw_noise(key, shape) -> float32` standard-normal draws of one step (default
        `jax.random.normal`; long videos pass FreeNoise's rescheduled draws).
      n_switch: the step index (or indices) where the next phase function takes over.
      cfg_batched: one model call on [uncond; cond] (default) or two calls.
      return_intermediates: also return a `DDIMTrajectory`.
      progress: called as `progress(step)` from the device (`jax.debug.callback`, unordered).
    Returns:
      the final x_prev [B, ...] (no clipping, no decode), or (it, DDIMTrajectory).
    """
    schedule = Schedule.vc2() if schedule is None else schedule
    if not isinstance(eta, (int, float)) or eta < 0:
        raise ValueError(f"eta must be a Python float >= 0 (it sets static tables), got {eta!r}")
    tables = ddim_tables(schedule, steps, eta)
    n_steps = len(tables.timesteps)
    fns = [model_fn] if callable(model_fn) else list(model_fn)
    if n_switch is None:
        switches: list[int] = []
    elif isinstance(n_switch, int):
        switches = [n_switch]
    else:
        switches = [int(s) for s in n_switch]
    if len(switches) != len(fns) - 1:
        raise ValueError(
            f"{len(fns)} model functions need {len(fns) - 1} switch steps, got {switches}"
        )
    bounds = [0, *[min(max(s, 0), n_steps) for s in switches], n_steps]
    if any(b1 < b0 for b0, b1 in zip(bounds, bounds[1:])):
        raise ValueError(f"n_switch must be increasing, got {switches}")

    x_T = jnp.asarray(x_T)
    need_noise = eta != 0.0
    if need_noise and noise is None and key is None:
        raise ValueError("eta > 0 needs a `key` or an explicit `noise` array [S, *x_T.shape]")
    if noise is not None:
        noise = jnp.asarray(noise, x_T.dtype)
        if noise.shape != (n_steps, *x_T.shape):
            raise ValueError(
                f"noise must have shape {(n_steps, *x_T.shape)} (steps, *x_T.shape), got "
                f"{tuple(noise.shape)}"
            )

    xs = {k: jnp.asarray(v) for k, v in tables.sampling_order().items()}
    xs["step"] = jnp.arange(n_steps, dtype=jnp.int32)
    if need_noise and noise is not None:
        xs["noise"] = noise

    def make_body(fn: ModelFn):
        def body(x, c):
            if progress is not None:
                jax.debug.callback(progress, c["step"], ordered=False)
            out = _guided_output(fn, x, c["t"], c["step"], cond, uncond, guidance, cfg_batched)
            if not need_noise:
                z = None
            elif "noise" in c:
                z = c["noise"]
            else:
                k_step = jax.random.fold_in(key, c["step"])
                if draw_noise is None:
                    z = jax.random.normal(k_step, x.shape, x.dtype)
                else:
                    z = draw_noise(k_step, x.shape).astype(x.dtype)
            x_prev, pred_x0 = ddim_step(x, out, c, z, schedule.prediction_type)
            x_prev = x_prev.astype(x.dtype)
            ys = (x_prev, pred_x0.astype(x.dtype)) if return_intermediates else None
            return x_prev, ys

        return body

    x = x_T
    traj = []
    for fn, b0, b1 in zip(fns, bounds, bounds[1:]):
        if b1 == b0:
            continue
        seg = jax.tree.map(lambda a, b0=b0, b1=b1: a[b0:b1], xs)
        x, ys = jax.lax.scan(make_body(fn), x, seg)
        traj.append(ys)
    if not return_intermediates:
        return x
    x_prev = jnp.concatenate([y[0] for y in traj], axis=0)
    pred_x0 = jnp.concatenate([y[1] for y in traj], axis=0)
    return x, DDIMTrajectory(x_prev, pred_x0, xs["t"])
