"""CIM (Perceiver resampler): fixture parity, release size and keys, float64 reference,
and the ImageBind audio -> CIM path sharded on the CPU mesh."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from np_ref import gelu as _gelu
from np_ref import layer_norm as _ln

from convert import cim as conv
from convert import imagebind as ib_conv
from convert.common import ConversionError, load_full_keys, load_state_dict, rel_l2
from maestro_jax.models import cim as cim_lib
from maestro_jax.models import imagebind as ib
from maestro_jax.sharding import param_shardings


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    return fixtures_dir / "cim_resampler"


@pytest.fixture(scope="module")
def tiny_cfg(fixture):
    with open(fixture / "config.json") as f:
        return cim_lib.CIMConfig.from_torch_kwargs(json.load(f)["constructor_kwargs"])


def test_fixture_parity(fixture):
    checks = conv.verify_cim_resampler(fixture)
    assert [c.name for c in checks] == ["out_latents", "out_latents[max_abs]"]
    bad = [(c.name, c.errors()) for c in checks if not c.passed()]
    assert not bad, bad


def test_release_param_count_and_keys(fixture):
    cfg = cim_lib.CIMConfig.release()
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.num_queries) == (1024, 6, 12, 64, 10)
    shapes = cim_lib.init_shapes(cfg)  # eval_shape: nothing allocated
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert n == cim_lib.RELEASE_PARAMS == 71_092_224
    full = load_full_keys(fixture / "full_keys.json")
    assert len(full) == 73
    conv.check_full_keys(full, cfg)
    with pytest.raises(ConversionError, match=r"layers\.5\.0\.to_kv\.weight"):
        conv.check_full_keys({k: s for k, s in full.items() if k != "layers.5.0.to_kv.weight"})
    with pytest.raises(ConversionError, match=r"unexpected key in checkpoint: layers\.6\.1\.1"):
        conv.check_full_keys(full | {"layers.6.1.1.weight": (4096, 1024)})
    # the class default depth 4 does not fit the released weights
    with pytest.raises(ConversionError):
        conv.check_full_keys(full, dataclasses.replace(cfg, depth=4))
    assert conv.depth_of(full) == 6


def test_shapes_any_leading_dims(fixture, tiny_cfg):
    params = conv.convert(load_state_dict(fixture / "state_dict.safetensors"), tiny_cfg)
    x = np.asarray(np.load(fixture / "io.npz")["in_x"])  # [3, 229, 32]
    fn = jax.jit(cim_lib.CIM(tiny_cfg).apply)
    out = fn({"params": params}, np.stack([x, x[::-1]]))  # [N_A=2, S=3, 229, 32]
    assert out.shape == (2, 3, tiny_cfg.num_queries, tiny_cfg.output_dim)
    flat = fn({"params": params}, x)
    np.testing.assert_allclose(out[0], flat, atol=1e-5)
    np.testing.assert_allclose(out[1], flat[::-1], atol=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        cim_lib.CIM(tiny_cfg).apply({"params": params}, x[..., :16])


def test_strip_module_prefix(fixture, tiny_cfg):
    sd = load_state_dict(fixture / "state_dict.safetensors")
    wrapped = {f"module.{k}": v for k, v in sd.items()}
    assert conv.strip_module_prefix(wrapped).keys() == sd.keys()
    with pytest.raises(ConversionError, match="unexpected key in checkpoint: module.latents"):
        conv.convert(wrapped, tiny_cfg)


# ----------------------------------------------------------------------------- float64 reference
def _np_cim(x, p, cfg, *, eps=1e-5, exact=True):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    b = x.shape[0]
    lat = np.broadcast_to(p["latents"], (b, *p["latents"].shape[1:]))
    x = x @ p["proj_in"]["kernel"] + p["proj_in"]["bias"]
    h, dh = cfg.heads, cfg.dim_head
    for i in range(cfg.depth):
        a = p[f"attn_{i}"]
        xm, lm = _ln(x, a["norm1"], eps), _ln(lat, a["norm2"], eps)
        q = lm @ a["to_q"]["kernel"]
        k, v = np.split(np.concatenate([xm, lm], 1) @ a["to_kv"]["kernel"], 2, axis=-1)
        q, k, v = (t.reshape(b, -1, h, dh) for t in (q, k, v))
        logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, -1, h * dh)
        lat = lat + o @ a["to_out"]["kernel"]
        f = p[f"ff_{i}"]
        lat = lat + _gelu(_ln(lat, f["norm"], eps) @ f["fc1"]["kernel"], exact) @ f["fc2"]["kernel"]
    out = lat @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]
    return _ln(out, p["norm_out"], eps)


def test_vs_float64_eps_and_gelu(fixture, tiny_cfg):
    """Module == float64 reference with LN eps 1e-5 and erf GELU; eps 1e-6 / tanh GELU differ."""
    assert cim_lib.LN_EPS == 1e-5
    params = conv.convert(load_state_dict(fixture / "state_dict.safetensors"), tiny_cfg)
    # small latents make the eps visible in norm2 / FF norms; large media make GELU differ
    params["latents"] = 1e-3 * params["latents"]
    x = 1.5 * np.random.default_rng(0).standard_normal((2, 229, 32))
    out = np.asarray(jax.jit(cim_lib.CIM(tiny_cfg).apply)({"params": params}, x), np.float64)
    ref = _np_cim(x, params, tiny_cfg)
    err = rel_l2(out, ref)
    assert err < 2e-6
    assert rel_l2(_np_cim(x, params, tiny_cfg, eps=1e-6), ref) > 100 * err
    assert rel_l2(_np_cim(x, params, tiny_cfg, exact=False), ref) > 100 * err


# ----------------------------------------------------------------------------- CLI
def test_cli(fixture, tiny_cfg, tmp_path):
    from convert.cim.__main__ import main
    from convert.cli import call
    from maestro_jax.checkpoints import load_params

    src = str(fixture / "state_dict.safetensors")
    argv = [src, str(tmp_path / "cim"), "--torch_config", str(fixture / "config.json")]
    assert call(main, argv) == 0
    params, cfg = load_params(tmp_path / "cim")
    assert cfg["cim"]["depth"] == 2 and cfg["cim"]["num_queries"] == 3
    want = conv.convert(load_state_dict(fixture / "state_dict.safetensors"), tiny_cfg)
    jax.tree.map(np.testing.assert_array_equal, want, params)
    # without a config the release sizes apply: the tiny weights are refused, by key
    assert call(main, [src, str(tmp_path / "bad")]) == 1
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- sharding
def test_audio_encoder_and_cim_sharded(fixtures_dir, cpu_mesh):
    """ImageBind audio trunk -> CIM with params FSDP-sharded and clips batch-sharded on the
    4 x 2 CPU mesh equals the single-device result."""
    ib_dir = fixtures_dir / "imagebind_audio"
    with open(ib_dir / "config.json") as f:
        ib_cfg = ib.ImageBindConfig.from_torch_kwargs(json.load(f)["constructor_kwargs"])
    ib_params = ib_conv.convert(
        load_state_dict(ib_dir / "state_dict.safetensors"), ib_cfg, ("audio",)
    )["audio"]
    cfg = cim_lib.CIMConfig(
        dim=64, depth=2, heads=4, dim_head=16, num_queries=3, embed_dim=64, output_dim=48
    )
    cim_params = jax.jit(cim_lib.CIM(cfg).init)(jax.random.key(0), jnp.zeros((1, 229, 64)))
    cim_params = cim_params["params"]
    mel = np.load(ib_dir / "io.npz")["in_audio"][:, :, 0]  # [B=2, S=2, 128, 204]
    mel = np.concatenate([mel, mel[:, ::-1]], 0)  # [4, 2, 128, 204]: B over 'data'

    def f(pa, pc, m):
        return cim_lib.CIM(cfg).apply(
            {"params": pc}, ib.ImageBindAudio(ib_cfg).apply({"params": pa}, m).tokens
        )

    ref = np.asarray(jax.jit(f)(ib_params, cim_params, mel))
    assert ref.shape == (4, 2, 3, 48)
    params = (ib_params, cim_params)
    shard = param_shardings(params, cpu_mesh, min_size=1024)
    assert any(s.spec != P() for s in jax.tree.leaves(shard))  # something is really split
    params = jax.device_put(params, shard)
    mel_s = jax.device_put(mel, NamedSharding(cpu_mesh, P("data")))
    out = jax.jit(f)(*params, mel_s)
    assert out.sharding.spec[0] == "data" or len(out.sharding.device_set) == 8
    assert rel_l2(np.asarray(out), ref) < 1e-6
