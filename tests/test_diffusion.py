"""Schedule, DDIM (lax.scan) with CFG and use_scale, eps/v, phases, against float64 numpy and the
`vc2_ddim` fixture."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax.diffusion import Schedule, ddim_sample, ddim_tables, ddim_timesteps

S = 8  # steps for the toy tests


def test_schedule_values():
    s = Schedule.vc2()
    np.testing.assert_allclose(s.alphas_cumprod[0], 0.99915, rtol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod[981], 0.005776, rtol=2e-4)
    np.testing.assert_allclose(s.scale_arr[1], 0.99925, rtol=1e-5)
    np.testing.assert_allclose(s.scale_arr[381], 0.71353, rtol=1e-5)
    assert np.all(s.scale_arr[399:] == np.float32(0.7)) and s.scale_arr.shape == (1000,)
    assert s.alphas_cumprod.dtype == np.float32
    np.testing.assert_array_equal(Schedule.sd21().scale_arr, np.ones(1000, np.float32))
    assert (
        Schedule.sd21().prediction_type == "v" and Schedule.sd21(v=False).prediction_type == "eps"
    )
    np.testing.assert_array_equal(ddim_timesteps(50)[:3], [1, 21, 41])
    assert ddim_timesteps(50)[-1] == 981 and len(ddim_timesteps(30)) == 31  # as the original
    t = ddim_tables(s, 50, 1.0)
    assert t.alphas_prev[0] == s.alphas_cumprod[0]  # not 1
    assert t.scale_arr_prev[0] == 1.0 and t.scale_arr_prev[1] == s.scale_arr[1]
    with pytest.raises(ValueError):
        ddim_timesteps(1000)


def test_q_sample_and_targets():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 2, 4)).astype(np.float32)
    eps = rng.normal(size=(3, 2, 4)).astype(np.float32)
    t = np.array([1, 381, 981])
    sv = Schedule.vc2()
    a = sv.alphas_cumprod.astype(np.float64)[t][:, None, None]
    ref = np.sqrt(a) * sv.scale_arr[t][:, None, None] * x0 + np.sqrt(1 - a) * eps
    np.testing.assert_allclose(np.asarray(sv.q_sample(x0, t, eps)), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(sv.training_target(x0, eps, t)), eps)
    v = Schedule.sd21()
    xt = np.asarray(v.q_sample(x0, t, eps), np.float64)
    tgt = np.asarray(v.training_target(x0, eps, t), np.float64)
    np.testing.assert_allclose(tgt, np.sqrt(a) * eps - np.sqrt(1 - a) * x0, rtol=1e-5, atol=1e-6)
    # v parameterisation recovers x0 and eps from (x_t, v)
    np.testing.assert_allclose(np.sqrt(a) * xt - np.sqrt(1 - a) * tgt, x0, atol=1e-5)
    np.testing.assert_allclose(np.sqrt(1 - a) * xt + np.sqrt(a) * tgt, eps, atol=1e-5)


# ----------------------------------------------------------------------------- toy model
def toy_eps(x, t, cond, step, xp=jnp):
    """A linear 'denoiser': eps = 0.3 x (1 + t / 1000) + cond['c'] (per row) + 0.01 step."""
    c = cond["c"].reshape(-1, *([1] * (x.ndim - 1)))
    tt = t.reshape(-1, *([1] * (x.ndim - 1))).astype(xp.float32 if xp is jnp else np.float64)
    return 0.3 * x * (1 + tt / 1000) + c + 0.01 * step


def numpy_ddim(schedule, x, cond, uncond, guidance, eta, noise, steps=S, model=toy_eps, v=False):
    """Float64 DDIM loop straight from docs/models.md, "DDIM timesteps and update" (independent of maestro_jax.diffusion)."""
    ac = schedule.alphas_cumprod.astype(np.float64)
    sc = schedule.scale_arr.astype(np.float64)
    ts = np.arange(0, 1000, 1000 // steps) + 1
    x = x.astype(np.float64)
    xs, x0s = [], []
    for i, t in enumerate(ts[::-1]):
        idx = len(ts) - 1 - i
        a = ac[t]
        ap = ac[ts[idx - 1]] if idx > 0 else ac[0]
        s_t = sc[t]
        s_p = sc[ts[idx - 1]] if idx > 0 else sc[0]
        sig = eta * np.sqrt((1 - ap) / (1 - a) * (1 - a / ap))
        tb = np.full((x.shape[0],), t)
        e_c = model(x, tb, cond, i, xp=np)
        e_u = model(x, tb, uncond, i, xp=np)
        e = e_u + guidance * (e_c - e_u)
        if v:
            x0 = np.sqrt(a) * x - np.sqrt(1 - a) * e
            e = np.sqrt(a) * e + np.sqrt(1 - a) * x
        else:
            x0 = (x - np.sqrt(1 - a) * e) / np.sqrt(a)
        x0 = x0 / s_t
        x = np.sqrt(ap) * s_p * x0 + np.sqrt(1 - ap - sig**2) * e + sig * noise[i]
        xs.append(x)
        x0s.append(x0)
    return x, np.stack(xs), np.stack(x0s)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 5, 4)).astype(np.float32)
    noise = rng.normal(size=(S, *x.shape)).astype(np.float32)
    cond = {"c": np.array([0.5, -0.2], np.float32)}
    uncond = {"c": np.array([0.1, 0.1], np.float32)}
    return x, noise, cond, uncond


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_float64_numpy(toy, eta):
    x, noise, cond, uncond = toy
    sched = Schedule.vc2()
    f = jax.jit(
        lambda x, n: ddim_sample(
            toy_eps,
            x,
            cond=cond,
            uncond=uncond,
            steps=S,
            eta=eta,
            guidance=7.5,
            schedule=sched,
            noise=n if eta else None,
            return_intermediates=True,
        )
    )
    out, traj = f(x, noise)
    ref, ref_xs, ref_x0 = numpy_ddim(sched, x, cond, uncond, 7.5, eta, noise)
    assert _rel(out, ref) < 1e-5
    assert _rel(traj.x_prev, ref_xs) < 1e-5 and _rel(traj.pred_x0, ref_x0) < 1e-5
    np.testing.assert_array_equal(np.asarray(traj.t), ddim_timesteps(S)[::-1])
    # use_scale matters: without it the result is different
    plain = numpy_ddim(Schedule.linear(), x, cond, uncond, 7.5, eta, noise)[0]
    assert _rel(plain, ref) > 1e-2


def test_cfg_batched_equals_two_calls(toy):
    x, noise, cond, uncond = toy
    calls = []

    def fn(x, t, c, step):
        calls.append(x.shape[0])
        return toy_eps(x, t, c, step)

    kw = dict(cond=cond, uncond=uncond, steps=S, eta=1.0, guidance=12.0, noise=noise)
    a = jax.jit(lambda x: ddim_sample(fn, x, cfg_batched=True, **kw))(x)
    assert calls == [4]  # one trace, one call on [uncond; cond]
    calls.clear()
    b = jax.jit(lambda x: ddim_sample(fn, x, cfg_batched=False, **kw))(x)
    assert calls == [2, 2]
    assert _rel(a, np.asarray(b, np.float64)) < 1e-6
    # guidance 1 or no uncond: one conditional pass only
    calls.clear()
    c = jax.jit(lambda x: ddim_sample(fn, x, **{**kw, "guidance": 1.0}))(x)
    assert calls == [2]
    ref = numpy_ddim(Schedule.vc2(), x, cond, cond, 1.0, 1.0, noise)[0]
    assert _rel(c, ref) < 1e-5
    with pytest.raises(ValueError, match="same pytree structure"):
        ddim_sample(fn, x, **{**kw, "uncond": {"c": uncond["c"], "extra": uncond["c"]}})


def test_eps_and_v_prediction_agree(toy):
    """A v model built from the eps model (v = sqrt(a) eps - sqrt(1-a) x0) samples the same."""
    x, noise, cond, uncond = toy
    sched_e = Schedule.linear(prediction_type="eps")
    sched_v = Schedule.linear(prediction_type="v")
    ac = jnp.asarray(sched_e.alphas_cumprod)

    def v_fn(x, t, c, step):
        e = toy_eps(x, t, c, step)
        a = ac[t].reshape(-1, *([1] * (x.ndim - 1)))
        x0 = (x - jnp.sqrt(1 - a) * e) / jnp.sqrt(a)
        return jnp.sqrt(a) * e - jnp.sqrt(1 - a) * x0

    kw = dict(cond=cond, uncond=uncond, steps=S, eta=1.0, guidance=3.0, noise=noise)
    e_out = jax.jit(lambda x: ddim_sample(toy_eps, x, schedule=sched_e, **kw))(x)
    v_out = jax.jit(lambda x: ddim_sample(v_fn, x, schedule=sched_v, **kw))(x)
    ref = numpy_ddim(sched_e, x, cond, uncond, 3.0, 1.0, noise)[0]
    assert _rel(e_out, ref) < 1e-5 and _rel(v_out, ref) < 1e-4


def test_v_prediction_matches_numpy(toy):
    x, noise, cond, uncond = toy
    sched = Schedule.sd21(v=True)
    out = jax.jit(
        lambda x: ddim_sample(
            toy_eps,
            x,
            cond=cond,
            uncond=uncond,
            steps=S,
            eta=1.0,
            guidance=5.0,
            schedule=sched,
            noise=noise,
        )
    )(x)
    ref = numpy_ddim(sched, x, cond, uncond, 5.0, 1.0, noise, v=True)[0]
    assert _rel(out, ref) < 1e-5


def test_scan_traces_each_phase_once_and_switches(toy):
    x, noise, cond, uncond = toy
    traces = {"a": 0, "b": 0}

    def fa(x, t, c, step):
        traces["a"] += 1
        return toy_eps(x, t, c, step)

    def fb(x, t, c, step):
        traces["b"] += 1
        return toy_eps(x, t, c, step) * 0.5

    kw = dict(cond=cond, uncond=uncond, eta=0.0, guidance=4.0)
    out50 = jax.jit(lambda x: ddim_sample((fa, fb), x, steps=50, n_switch=6, **kw))(x)
    assert traces == {"a": 1, "b": 1}  # 50 steps, one trace per phase function
    assert out50.shape == x.shape

    def mixed(x, t, c, step, xp=jnp):
        e = toy_eps(x, t, c, step, xp=xp)
        return e if step < 3 else e * 0.5

    got = jax.jit(lambda x: ddim_sample((fa, fb), x, steps=S, n_switch=3, **kw))(x)
    ref = numpy_ddim(
        Schedule.vc2(), x, cond, uncond, 4.0, 0.0, np.zeros((S, *x.shape)), model=mixed
    )[0]
    assert _rel(got, ref) < 1e-5
    one = jax.jit(lambda x: ddim_sample(fa, x, steps=S, **kw))(x)
    assert _rel(one, ref) > 1e-3  # the switch did change the second phase
    with pytest.raises(ValueError, match="switch"):
        ddim_sample((fa, fb), x, steps=S, **kw)


def test_key_noise_and_progress(toy):
    x, _, cond, uncond = toy
    seen = []
    kw = dict(cond=cond, uncond=uncond, steps=S, eta=1.0, guidance=2.0)
    f = jax.jit(lambda x, k: ddim_sample(toy_eps, x, key=k, progress=seen.append, **kw))
    a = f(x, jax.random.key(0))
    b = f(x, jax.random.key(0))
    c = f(x, jax.random.key(1))
    jax.effects_barrier()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(jnp.abs(a - c).max()) > 1e-3
    assert sorted(int(s) for s in seen) == sorted(list(range(S)) * 3)
    with pytest.raises(ValueError, match="needs a `key`"):
        ddim_sample(toy_eps, x, **kw)
    with pytest.raises(ValueError, match="noise must have shape"):
        ddim_sample(toy_eps, x, noise=np.zeros((S - 1, *x.shape)), **kw)


def test_sharded_sampling_matches_single_device(toy, cpu_mesh):
    from maestro_jax.sharding import batch_sharding

    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 2, 4, 4, 4)).astype(np.float32)
    cond = {"c": rng.normal(size=(8,)).astype(np.float32)}
    uncond = {"c": np.zeros((8,), np.float32)}
    f = jax.jit(
        lambda x, c, u: ddim_sample(
            toy_eps, x, cond=c, uncond=u, steps=S, eta=1.0, key=jax.random.key(3)
        )
    )
    ref = np.asarray(f(x, cond, uncond))
    sh = lambda a: jax.device_put(a, batch_sharding(cpu_mesh, a.ndim))
    out = f(sh(x), jax.tree.map(sh, cond), jax.tree.map(sh, uncond))
    assert len(out.sharding.device_set) == 8
    assert _rel(out, ref) < 1e-6


# ----------------------------------------------------------------------------- fixture
def test_fixture_vc2_ddim(fixtures_dir):
    """`convert.verify` for vc2_ddim: schedule tables, recorded-eps replay, and the full sampler
    with the converted tiny VC2 UNet (both etas)."""
    from convert.ddim import verify_vc2_ddim

    checks = verify_vc2_ddim(fixtures_dir / "vc2_ddim")
    assert len(checks) == 29
    assert {"out_eta0_sample", "out_eta1_sample", "out_eta1_x_prev"} <= {c.name for c in checks}
    for c in checks:
        assert c.passed(), (c.name, c.errors())


def test_fixture_teacher_forced_step(fixtures_dir):
    """One step at a time from the saved x_prev and recorded eps (README's teacher-forced check)."""
    from maestro_jax.diffusion import ddim_step, guide

    d = fixtures_dir / "vc2_ddim"
    io, dbg = np.load(d / "io.npz"), np.load(d / "debug_intermediates.npz")
    tab = ddim_tables(Schedule.vc2(), 10, 1.0).sampling_order()
    step = jax.jit(lambda x, e, c, z: ddim_step(x, e, c, z))
    for i in range(10):
        x = io["in_x_T"] if i == 0 else io["out_eta1_x_prev"][i - 1]
        e = guide(dbg["out_dbg_eta1_eps_cond"][i], dbg["out_dbg_eta1_eps_uncond"][i], 12.0)
        coef = {k: v[i] for k, v in tab.items() if k != "t"}
        x_prev, x0 = step(x, e, coef, io["in_noise_eta1"][i])
        for got, ref in ((x_prev, io["out_eta1_x_prev"][i]), (x0, io["out_eta1_pred_x0"][i])):
            assert np.abs(np.asarray(got) - ref).max() <= 1e-5 * np.abs(ref).max()
