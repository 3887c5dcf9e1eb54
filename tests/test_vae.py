"""AutoencoderKL (SD / VC2 VAE): fixture parity, full-size key sets, eps, frame helpers, sharding."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from convert.common import (
    ConversionError,
    check_table_against_keys,
    flatten,
    load_full_keys,
    load_state_dict,
    select_prefix,
)
from convert.vae import LDM_PREFIX, convert_vae, vae_table, verify_vc2_vae
from maestro_jax.models.vae import (
    SCALE_FACTOR,
    AutoencoderKL,
    VAEConfig,
    decode_latents,
    encode_frames,
    init_shapes,
    posterior_logvar,
    posterior_sample,
)
from maestro_jax.nn.layers import GroupNorm


@pytest.fixture(scope="module")
def fx(fixtures_dir):
    d = fixtures_dir / "vc2_vae"
    import json

    conf = json.loads((d / "config.json").read_text())
    cfg = VAEConfig.from_ldm(conf["params"]["ddconfig"], conf["params"]["embed_dim"])
    sd = load_state_dict(d / "state_dict.safetensors")
    return d, cfg, sd, convert_vae(sd, cfg)


def test_fixture_parity(fx):
    checks = verify_vc2_vae(fx[0])
    assert {c.name for c in checks} == {
        "out_encoder",
        "out_moments",
        "out_mean",
        "out_logvar",
        "out_dec",
        "out_recon",
    }
    for c in checks:
        assert c.passed(), (c.name, c.errors())


def test_fixture_config_is_tiny(fx):
    assert fx[1] == VAEConfig.tiny(), "VAEConfig.tiny() should be the fixture's shape"


def test_shapes_and_frame_helpers(fx):
    _, cfg, _, params = fx
    vae = AutoencoderKL(cfg)
    rng = np.random.default_rng(0)
    lat = jnp.asarray(rng.normal(size=(2, 3, 8, 8, 4)).astype(np.float32))
    frames = jnp.asarray(rng.uniform(-1, 1, size=(1, 2, 16, 16, 3)).astype(np.float32))

    @jax.jit
    def run(p, lat, frames):
        return dict(
            full=decode_latents(vae, p, lat),
            # 6 frames in chunks of 4 -> padded lax.map; must change nothing
            chunked=decode_latents(vae, p, lat, frame_chunk=4),
            one=vae.apply({"params": p}, lat[1, 2][None] / SCALE_FACTOR, method=vae.decode),
            z=encode_frames(vae, p, frames),
            zs=encode_frames(vae, p, frames, key=jax.random.key(1)),
            moments=vae.apply({"params": p}, frames[0], method=vae.encode),
        )

    o = jax.tree.map(np.asarray, run(params, lat, frames))
    assert o["full"].shape == (2, 3, 16, 16, 3)
    np.testing.assert_allclose(o["chunked"], o["full"], rtol=0, atol=1e-5)
    # frame by frame = the per-image decode of latents / scale_factor
    np.testing.assert_allclose(o["full"][1, 2], o["one"][0], atol=1e-5)
    assert o["z"].shape == (1, 2, 8, 8, 4) and o["moments"].shape == (2, 8, 8, 8)
    np.testing.assert_allclose(o["z"][0], o["moments"][..., :4] * SCALE_FACTOR, atol=1e-6)
    assert o["zs"].shape == o["z"].shape and np.abs(o["zs"] - o["z"]).max() > 1e-3
    with pytest.raises(ValueError, match="channels-last"):
        jax.eval_shape(
            lambda: vae.apply({"params": params}, jnp.zeros((1, 3, 16, 16)), method=vae.encode)
        )
    with pytest.raises(ValueError, match=r"\[B, F, h, w, z\]"):
        decode_latents(vae, params, lat[0])


def test_posterior_helpers():
    m = jnp.concatenate([jnp.ones((1, 2, 2, 4)), jnp.full((1, 2, 2, 4), 40.0)], axis=-1)
    assert float(posterior_logvar(m).max()) == 20.0  # clamp [-30, 20]
    m = m.at[..., 4:].set(-50.0)
    assert float(posterior_logvar(m).min()) == -30.0
    s = jax.jit(posterior_sample)(m.at[..., 4:].set(0.0), jax.random.key(0))
    assert s.shape == (1, 2, 2, 4) and float(jnp.abs(s - 1).max()) > 0.01


def test_every_groupnorm_uses_eps_1e6(fx):
    """Each VAE GroupNorm, run on a small-variance probe (where eps 1e-5 vs 1e-6 matters), must
    match a float64 GN with eps 1e-6. The probe replaces the norm's input in the real forward."""
    _, cfg, _, params = fx
    vae = AutoencoderKL(cfg)
    rng = np.random.default_rng(3)
    seen = []

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if isinstance(mod, GroupNorm) and context.method_name == "__call__":
            probe = (1e-3 * rng.normal(size=args[0].shape)).astype(np.float32)
            y = next_fun(jnp.asarray(probe), **kwargs)
            p = mod.variables["params"]
            seen.append((mod.eps, probe, y, p["scale"], p["bias"]))
            return y
        return next_fun(*args, **kwargs)

    @jax.jit
    def run(p, x):
        seen.clear()
        with nn.intercept_methods(interceptor):
            vae.apply({"params": p}, x)
        return [s[2:] for s in seen]

    x = jnp.asarray(rng.uniform(-1, 1, size=(1, 8, 8, 3)).astype(np.float32))
    outs = jax.tree.map(np.asarray, run(params, x))
    # encoder: 2 blocks x 2 + mid (2 blocks x 2 + attn) + out = 10; decoder: 4 x 2 + 5 + 1 = 14
    assert len(outs) == len(seen) == 24
    for (eps, probe, *_), (y, scale, bias) in zip(seen, outs):
        assert eps == 1e-6
        g = probe.astype(np.float64).reshape(probe.shape[0], -1, 32, probe.shape[-1] // 32)
        mean = g.mean(axis=(1, 3), keepdims=True)
        var = g.var(axis=(1, 3), keepdims=True)
        ref6 = ((g - mean) / np.sqrt(var + 1e-6)).reshape(probe.shape) * scale + bias
        ref5 = ((g - mean) / np.sqrt(var + 1e-5)).reshape(probe.shape) * scale + bias
        assert np.abs(y - ref6).max() < 1e-4
        assert np.abs(ref5 - ref6).max() > 0.1  # the probe does discriminate the eps


def test_full_size_ldm_keys(fixtures_dir):
    cfg = VAEConfig.sd()
    target = init_shapes(cfg)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(target))
    assert n == 83_653_863  # docs/models.md, "VAE" > "Size and compute"
    keys = load_full_keys(fixtures_dir / "vc2_vae" / "full_keys.json")
    check_table_against_keys(keys, vae_table(cfg, "ldm", prefix=LDM_PREFIX), target)
    # the same set without the prefix, and a missing key is named
    bare = select_prefix(keys, LDM_PREFIX)
    check_table_against_keys(bare, vae_table(cfg, "ldm"), target)
    bare.pop("decoder.up.0.block.2.conv2.bias")
    with pytest.raises(ConversionError, match=r"decoder\.up\.0\.block\.2\.conv2\.bias"):
        check_table_against_keys(bare, vae_table(cfg, "ldm"), target)


def test_full_size_diffusers_keys(fixtures_dir):
    cfg = VAEConfig.sd()
    keys = load_full_keys(fixtures_dir / "vc2_vae" / "full_keys_vae_diffusers.json")
    check_table_against_keys(keys, vae_table(cfg, "diffusers"), init_shapes(cfg))


def test_diffusers_conversion_equals_ldm(fx):
    """Rename the fixture's LDM weights into diffusers keys (attention squeezed to Linear) and
    convert them with the diffusers table: the params must be identical."""
    _, cfg, sd, params = fx
    ldm = vae_table(cfg, "ldm", prefix=LDM_PREFIX)
    dif = vae_table(cfg, "diffusers")
    dsd = {}
    for path, (lkey, _) in ldm.items():
        w = sd[lkey]
        dkey = dif[path][0]
        if "attentions" in dkey and w.ndim == 4:
            w = w[:, :, 0, 0]
        dsd[dkey] = w
    assert any(k.startswith("decoder.up_blocks.0.upsamplers") for k in dsd)  # reversed order
    p2 = convert_vae(dsd, cfg, "diffusers")
    a, b = flatten(params), flatten(p2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_cli_writes_params(fx, tmp_path, capsys):
    from safetensors.numpy import save_file

    from convert.cli import call
    from convert.vae.__main__ import main
    from maestro_jax.checkpoints import load_params

    _, cfg, sd, params = fx
    # The CLI builds the full-size config: a tiny checkpoint must fail loudly, naming keys.
    src = tmp_path / "vae.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(src))
    assert call(main, [str(src), str(tmp_path / "out")]) == 1
    assert re.search("shape mismatch|missing key", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    assert call(main, [str(tmp_path / "nope.ckpt"), str(tmp_path / "out")]) == 2
    # with the fixture's config it converts and writes what convert_vae gives
    argv = [str(src), str(tmp_path / "out"), "--ldm_config", str(fx[0] / "config.json")]
    assert call(main, argv) == 0
    loaded, meta = load_params(tmp_path / "out")
    assert meta["vae"]["ch_mult"] == [1, 2] and meta["format"] == "ldm"
    a, b = flatten(params), flatten(loaded)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], np.asarray(b[k]), err_msg=k)


def test_sharded_decode_matches_single_device(fx, cpu_mesh):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from maestro_jax.sharding import batch_sharding

    _, cfg, _, params = fx
    vae = AutoencoderKL(cfg)
    lat = jnp.asarray(np.random.default_rng(5).normal(size=(8, 1, 8, 8, 4)).astype(np.float32))
    f = jax.jit(lambda p, z: decode_latents(vae, p, z))
    ref = np.asarray(f(params, lat))
    ps = jax.device_put(params, NamedSharding(cpu_mesh, P()))
    zs = jax.device_put(lat, batch_sharding(cpu_mesh, 5))
    out = f(ps, zs)
    assert len(out.sharding.device_set) == 8
    out = np.asarray(out)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-6
