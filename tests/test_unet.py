"""UNet (VideoCrafter2 3-D / SD 2.1 2-D) and its converters, against the original code's fixtures.

Compiles are the cost here (~10 s each on CPU): every jitted run reuses a shape that another run
already needed where it can, and uses XLA's -O0 backend (same numerics, faster compile).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from convert.common import check_table_against_keys, load_full_keys, load_state_dict, rel_l2
from convert.unet import (
    LDM_PREFIX,
    convert_unet,
    init_shapes,
    load_unet_params,
    unet_table,
    verify_sd21_unet,
    verify_vc2_unet3d,
)
from maestro_jax.models import unet as unet_mod
from maestro_jax.models.unet import UNet, UNetConfig, unet_layout
from maestro_jax.nn.attention import dot_product_attention
from maestro_jax.sharding import batch_sharding, param_shardings

FAST = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


def _jit(f):
    return jax.jit(f, compiler_options=FAST)


def _n_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def vc2(fixtures_dir):
    """(config, params, io.npz) of the vc2_unet3d fixture, x channels-last."""
    fx = fixtures_dir / "vc2_unet3d"
    with open(fx / "config.json") as f:
        cfg = UNetConfig.from_ldm_vc(json.load(f)["params"])
    params = convert_unet(load_state_dict(fx / "state_dict.safetensors"), cfg, "ldm")
    d = dict(np.load(fx / "io.npz"))
    d["x"] = d["in_x"].transpose(0, 2, 3, 4, 1)
    return cfg, params, d


@pytest.fixture(scope="module")
def vc2_checks(fixtures_dir):
    return {c.name: c for c in verify_vc2_unet3d(fixtures_dir / "vc2_unet3d")}


# ----------------------------------------------------------------------------- parity
def test_vc2_unet3d_fixture(vc2_checks):
    assert set(vc2_checks) == {
        "io/out_y",
        "io_per_frame_context/out_y",
        "io_single_frame/out_y",
    }
    for c in vc2_checks.values():
        max_abs, rl2 = c.errors()
        assert c.passed(), (c.name, max_abs, rl2)
        # The reference's own float32 rounding is ~1.2e-6 rel-L2; a port bug shows as >= 1e-5.
        assert rl2 < 5e-6, (c.name, rl2)


def test_sd21_unet_fixture(fixtures_dir):
    checks = verify_sd21_unet(fixtures_dir / "sd21_unet")
    assert [c.name for c in checks] == [
        "params ldm == diffusers",
        "io/out_ldm",
        "io/out_diffusers",
    ]
    for c in checks:
        assert c.passed(), (c.name, c.errors())
        assert c.errors()[1] < 5e-6, (c.name, c.errors())


# ----------------------------------------------------------------------------- full-size keys
def test_full_keys_vc2(fixtures_dir):
    cfg = UNetConfig.vc2()
    target = init_shapes(cfg)
    assert _n_params(target) == 1_413_284_420  # docs/models.md, VC2 "Size and compute"
    full = load_full_keys(fixtures_dir / "vc2_unet3d" / "full_keys.json")
    assert len(full) == 1484
    check_table_against_keys(full, unet_table(cfg, "ldm", LDM_PREFIX, target), target)


def test_full_keys_sd21(fixtures_dir):
    cfg = UNetConfig.sd21()
    target = init_shapes(cfg)
    assert _n_params(target) == 865_910_724  # docs/models.md, SD 2.1 "Size and compute"
    fx = fixtures_dir / "sd21_unet"
    ldm = load_full_keys(fx / "full_keys_ldm.json")
    dif = load_full_keys(fx / "full_keys_diffusers.json")
    assert len(ldm) == len(dif) == 686
    check_table_against_keys(ldm, unet_table(cfg, "ldm", LDM_PREFIX, target), target)
    check_table_against_keys(dif, unet_table(cfg, "diffusers", "", target), target)
    # the full diffusers config describes the same network (head counts in attention_head_dim)
    with open(fx / "full_config_diffusers.json") as f:
        dc = json.load(f)
    assert dc["attention_head_dim"] == [
        cfg.model_channels * m // cfg.num_head_channels for m in cfg.channel_mult
    ]
    assert dc["block_out_channels"] == [cfg.model_channels * m for m in cfg.channel_mult]
    assert dc["upcast_attention"] is False  # and irrelevant here: the softmax is float32


def test_layout_indices():
    """SD's indices come out of the same layout code with temporal parts off (docs/models.md)."""
    vc, sd = unet_layout(UNetConfig.vc2()), unet_layout(UNetConfig.sd21())
    assert [x.kind for x in vc.middle_block] == ["res", "spatial", "temporal", "res"]
    assert [x.kind for x in sd.middle_block] == ["res", "spatial", "res"]
    assert [x.kind for x in vc.output_blocks[5]] == ["res", "spatial", "temporal", "up"]
    assert [x.kind for x in sd.output_blocks[5]] == ["res", "spatial", "up"]
    assert [x.kind for x in sd.output_blocks[2]] == ["res", "up"]
    assert [x.heads for x in vc.middle_block] == [0, 20, 20, 0]


def test_load_unet_params_ignores_other_parts(tmp_path, fixtures_dir, vc2):
    """A full model.ckpt also holds the VAE, text encoder and schedule: ignored by name; any
    other stray key is an error that names it."""
    from safetensors.numpy import save_file

    fx = fixtures_dir / "vc2_unet3d"
    sd = load_state_dict(fx / "state_dict.safetensors")
    extra = {
        "first_stage_model.decoder.conv_in.weight": np.zeros((2, 2), np.float32),
        "cond_stage_model.model.ln_final.weight": np.zeros((2,), np.float32),
        "scale_arr": np.zeros((1400,), np.float32),
        "alphas_cumprod_prev": np.zeros((1000,), np.float32),
    }
    save_file({**sd, **extra}, str(tmp_path / "model.safetensors"))
    cfg, ref, _ = vc2
    p = load_unet_params(tmp_path / "model.safetensors", "vc2", cfg)
    assert all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(ref), strict=True)
    )
    save_file(
        {**sd, "model.diffusion_model.bogus": np.zeros(3, np.float32)},
        str(tmp_path / "b.safetensors"),
    )
    with pytest.raises(
        ValueError, match="unexpected key in checkpoint: model.diffusion_model.bogus"
    ):
        load_unet_params(tmp_path / "b.safetensors", "vc2", cfg)


def test_cli_writes_params_and_config(tmp_path, fixtures_dir, capsys):
    from convert.cli import call
    from convert.unet.__main__ import main
    from maestro_jax.checkpoints import load_params

    fx = fixtures_dir / "sd21_unet"
    out = tmp_path / "sd21"
    args = ["--kind", "sd21", "--ldm_config", str(fx / "config.json")]
    assert call(main, [*args, str(fx / "state_dict_diffusers.safetensors"), str(out)]) == 0
    params, meta = load_params(out)
    assert meta["kind"] == "sd21_diffusers"
    cfg = UNetConfig(**meta["unet"])
    assert cfg == UNetConfig.from_ldm_sd(json.load(open(fx / "config.json"))["params"])
    ref = convert_unet(load_state_dict(fx / "state_dict_ldm.safetensors"), cfg, "ldm")
    assert jax.tree.structure(params) == jax.tree.structure(ref)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref)))
    # the full-size preset refuses the tiny weights, naming the keys
    assert (
        call(main, ["--kind", "sd21", str(fx / "state_dict_ldm.safetensors"), str(tmp_path / "x")])
        == 1
    )
    assert "shape mismatch for model.diffusion_model." in capsys.readouterr().err


# ----------------------------------------------------------------------------- eps / GELU
def test_norm_eps_and_pooling_on_a_real_forward():
    """Record every norm a tiny VC2 forward calls: eps and whether it pools over frames."""
    cfg = UNetConfig.tiny()
    seen = []

    def spy(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__" and isinstance(
            m, unet_mod.GroupNorm | unet_mod.LayerNorm
        ):
            seen.append(("/".join(m.path), type(m).__name__, m.eps, args[0].ndim))
        return next_fun(*args, **kwargs)

    x = jnp.zeros((1, 3, 8, 8, 4))
    t = jnp.zeros((1,), jnp.int32)
    ctx = jnp.zeros((1, 5, cfg.context_dim))
    import flax.linen as nn

    with nn.intercept_methods(spy):
        jax.eval_shape(lambda: UNet(cfg).init(jax.random.PRNGKey(0), x, t, ctx, fps=t))
    assert seen
    kinds = {"res": 0, "tconv": 0, "spatial": 0, "temporal": 0, "ln": 0}
    lay = unet_mod.layer_kinds(cfg)
    for path, cls, eps, ndim in seen:
        top, last = path.split("/")[0], path.split("/")[-1]
        if cls == "LayerNorm":
            assert eps == 1e-5, path
            kinds["ln"] += 1
        elif "temporal_conv" in path:
            assert (eps, ndim) == (1e-5, 5), path  # pooled over frames
            kinds["tconv"] += 1
        elif last in ("in_layers_0", "out_layers_0") or top == "out_0":
            assert (eps, ndim) == (1e-5, 4), path  # per frame
            kinds["res"] += 1
        elif last == "norm" and lay[top] == "spatial":
            assert (eps, ndim) == (1e-6, 4), path  # per frame
            kinds["spatial"] += 1
        elif last == "norm" and lay[top] in ("temporal", "init_attn"):
            assert (eps, ndim) == (1e-6, 5), path  # pooled over frames
            kinds["temporal"] += 1
        else:
            raise AssertionError(f"unclassified norm {path}")
    n_res = sum(k == "res" for k in lay.values())
    n_sp = sum(k == "spatial" for k in lay.values())
    assert kinds == {
        "res": 2 * n_res + 1,
        "tconv": 4 * n_res,
        "spatial": n_sp,
        "temporal": n_sp + 1,
        "ln": 3 * (2 * n_sp + 1),
    }


def test_temporal_conv_block_matches_float64_reference():
    """TemporalConvBlock vs numpy float64: GN eps 1e-5 pooled over (F, h, w), Conv3d (3,1,1)
    with zero padding over frames. The input is small (std 3e-3) so eps 1e-6 would miss."""
    rng = np.random.default_rng(0)
    b, f, h, w, c = 2, 5, 3, 2, 32
    x = (3e-3 * rng.standard_normal((b * f, h, w, c))).astype(np.float32)
    blk = unet_mod.TemporalConvBlock(frames=f)
    params = blk.init(jax.random.PRNGKey(1), x)["params"]
    params = jax.tree.map(
        lambda a: jnp.asarray(rng.standard_normal(a.shape) * 0.3, a.dtype), params
    )
    y = np.asarray(blk.apply({"params": params}, x), np.float64)

    def gn(v, p, eps):  # v [B, F, h, w, C], 32 groups, pooled over F, h, w
        g = v.reshape(b, f, h, w, 32, c // 32)
        m = g.mean(axis=(1, 2, 3, 5), keepdims=True)
        var = ((g - m) ** 2).mean(axis=(1, 2, 3, 5), keepdims=True)
        out = ((g - m) / np.sqrt(var + eps)).reshape(v.shape)
        return out * np.float64(p["scale"]) + np.float64(p["bias"])

    def ref(eps):
        v = x.astype(np.float64).reshape(b, f, h, w, c)
        for i in range(1, 5):
            v = gn(v, params[f"conv{i}_0"], eps)
            v = v / (1 + np.exp(-v))
            k = np.float64(params[f"conv{i}_{2 if i == 1 else 3}"]["kernel"])
            vp = np.pad(v, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
            v = sum(vp[:, j : j + f] @ k[j] for j in range(3)) + np.float64(
                params[f"conv{i}_{2 if i == 1 else 3}"]["bias"]
            )
        return x + v.reshape(b * f, h, w, c)

    assert rel_l2(y, ref(1e-5)) < 1e-5
    assert rel_l2(y, ref(1e-6)) > 1e-2  # the test can tell the eps apart


def test_geglu_is_exact_erf():
    """BasicTransformerBlock's FF: value * gelu_erf(gate), value = first half (docs/models.md, "Module internals")."""
    ff = unet_mod._FeedForward(dim=4)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 4)) * 3, jnp.float32)
    p = ff.init(jax.random.PRNGKey(0), x)["params"]
    y = np.asarray(ff.apply({"params": p}, x), np.float64)
    h = np.float64(x) @ np.float64(p["net_0"]["proj"]["kernel"]) + np.float64(
        p["net_0"]["proj"]["bias"]
    )
    val, gate = h[:, :16], h[:, 16:]

    def ref(g):
        return (val * g) @ np.float64(p["net_2"]["kernel"]) + np.float64(p["net_2"]["bias"])

    exact = ref(0.5 * gate * (1 + erf(gate / np.sqrt(2))))
    tanh = ref(0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3))))
    assert rel_l2(y, exact) < 1e-6
    assert rel_l2(y, tanh) > 1e-4


# ----------------------------------------------------------------------------- shapes, errors
def test_shapes_2d_3d_and_errors():
    sd = UNetConfig.tiny(temporal=False)
    x2 = jnp.zeros((3, 8, 16, 4))
    t = jnp.zeros((3,), jnp.int32)
    ctx = jnp.zeros((3, 7, 32))
    m = UNet(sd)
    v = jax.eval_shape(lambda: m.init_with_output(jax.random.PRNGKey(0), x2, t, ctx))
    assert v[0].shape == x2.shape
    vc = UNetConfig.tiny(remat=True)
    x3 = jnp.zeros((2, 3, 8, 16, 4))
    t2 = jnp.zeros((2,), jnp.int32)
    m3 = UNet(vc)
    per_frame = jnp.zeros((6, 7, 32))  # [B*F, L, D]
    y, p = jax.eval_shape(
        lambda: m3.init_with_output(jax.random.PRNGKey(0), x3, t2, per_frame, fps=t2)
    )
    assert y.shape == x3.shape
    # remat runs under grad
    g = jax.eval_shape(jax.grad(lambda q: m3.apply(q, x3, t2, ctx[:2], fps=t2).sum()), p)
    assert jax.tree.structure(g) == jax.tree.structure(p)

    def bad(**kw):
        args = dict(x=x3, timesteps=t2, context=ctx[:2], fps=t2) | kw
        return jax.eval_shape(lambda q: m3.apply(q, **args), p)

    with pytest.raises(ValueError, match="context has 5 rows"):
        bad(context=jnp.zeros((5, 7, 32)))
    with pytest.raises(ValueError, match="pass fps"):
        bad(fps=None)
    with pytest.raises(ValueError, match=r"wants x as \[B, F, H, W, C\]"):
        bad(x=x3[:, 0])
    with pytest.raises(ValueError, match="divisible by 4"):
        bad(x=jnp.zeros((2, 3, 6, 16, 4)))
    with pytest.raises(ValueError, match="channels"):
        bad(x=jnp.zeros((2, 3, 8, 16, 3)))
    with pytest.raises(ValueError, match="not one of"):
        UNetConfig.tiny(attn_impl="flash")
    with pytest.raises(ValueError, match="use_relative_position"):
        UNetConfig.from_ldm_vc(
            {**_vc_params(), "use_relative_position": True, "temporal_conv": True}
        )


def _vc_params():
    return dict(
        in_channels=4,
        out_channels=4,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=[1],
        num_head_channels=16,
        context_dim=32,
        temporal_conv=True,
        addition_attention=True,
        use_relative_position=False,
    )


def test_from_ldm_configs_match_presets(fixtures_dir):
    yaml_vc2 = dict(  # configs/inference_t2v_512_v2.0.yaml unet_config.params
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_head_channels=64,
        transformer_depth=1,
        context_dim=1024,
        use_linear=True,
        use_checkpoint=True,
        temporal_conv=True,
        temporal_attention=True,
        temporal_selfatt_only=True,
        use_relative_position=False,
        use_causal_attention=False,
        temporal_length=16,
        addition_attention=True,
        fps_cond=True,
    )
    assert UNetConfig.from_ldm_vc(yaml_vc2) == UNetConfig.vc2()
    yaml_sd21 = dict(  # v2-inference.yaml unet_config.params
        use_checkpoint=True,
        use_fp16=True,
        image_size=32,
        in_channels=4,
        out_channels=4,
        model_channels=320,
        attention_resolutions=[4, 2, 1],
        num_res_blocks=2,
        channel_mult=[1, 2, 4, 4],
        num_head_channels=64,
        use_spatial_transformer=True,
        use_linear_in_transformer=True,
        transformer_depth=1,
        context_dim=1024,
        legacy=False,
    )
    assert UNetConfig.from_ldm_sd(yaml_sd21) == UNetConfig.sd21()


# ----------------------------------------------------------------------------- attn_edit
class _RecordingPlainEdit:
    """A trivial AttnEdit: plain attention through project_kv, recording what it was given."""

    def __init__(self):
        self.calls = []

    def __call__(self, q, context, project_kv, *, scale, hw):
        k, v = project_kv(context)
        k2, _ = project_kv(jnp.stack([context, context]))  # any leading dims
        self.calls.append((hw, q.shape, context.shape, k.shape, k2.shape, scale))
        return dot_product_attention(q, k, v, scale=scale)


def test_attn_edit_trivial_is_identity_and_sees_every_spatial_cross_attention(vc2, vc2_checks):
    cfg, params, d = vc2
    edit = _RecordingPlainEdit()
    model = UNet(cfg)
    run = _jit(lambda p, x, t, c, fps: model.apply({"params": p}, x, t, c, fps=fps, attn_edit=edit))
    y = np.asarray(run(params, d["x"], d["in_timesteps"], d["in_context"], d["in_fps"]))
    y_plain = vc2_checks["io/out_y"].out.transpose(0, 2, 3, 4, 1)  # attn_edit=None run
    assert rel_l2(y, y_plain) < 1e-6
    # one call per SpatialTransformer (input, middle, output), in forward order; none for
    # self-attention, temporal attention or init_attn
    lay = unet_layout(cfg)
    b, f, h, w = d["x"].shape[:4]
    expected, ds = [], 1
    for block in lay.input_blocks:
        expected += [(h // ds, w // ds) for x in block if x.kind == "spatial"]
        ds *= 2 if block[0].kind == "down" else 1
    expected += [(h // ds, w // ds) for x in lay.middle_block if x.kind == "spatial"]
    for block in lay.output_blocks:
        expected += [(h // ds, w // ds) for x in block if x.kind == "spatial"]
        ds //= 2 if block[-1].kind == "up" else 1
    hws = [c[0] for c in edit.calls]
    assert hws == expected
    assert len(hws) == 11 and sorted(set(hws)) == [(2, 4), (4, 8), (8, 16)]
    heads_dh = cfg.num_head_channels
    L, D = d["in_context"].shape[1:]
    for hw, qs, cs, ks, k2s, scale in edit.calls:
        assert qs[0] == b * f and qs[1] == hw[0] * hw[1] and qs[3] == heads_dh
        assert cs == (b * f, L, D)  # the per-frame context rows of this layer
        assert ks == (b * f, L, qs[2], heads_dh) and k2s == (2, *ks)
        assert scale == heads_dh**-0.5


# ----------------------------------------------------------------------------- sharding, bf16
def test_sharded_matches_single_device(vc2, vc2_checks, cpu_mesh):
    cfg, params, d = vc2
    y1 = vc2_checks["io/out_y"].out.transpose(0, 2, 3, 4, 1)  # one device, batch 2
    # batch 4 = the fixture's 2 samples and the same 2 reversed
    x = np.concatenate([d["x"], d["x"][::-1]])
    t = np.concatenate([d["in_timesteps"], d["in_timesteps"][::-1]])
    c = np.concatenate([d["in_context"], d["in_context"][::-1]])
    fps = np.concatenate([d["in_fps"], d["in_fps"][::-1]])
    ref = np.concatenate([y1, y1[::-1]])
    p = jax.device_put(params, param_shardings(params, cpu_mesh, min_size=0))
    sharded = [jax.device_put(a, batch_sharding(cpu_mesh, a.ndim, "data")) for a in (x, t, c, fps)]
    assert any("fsdp" in tuple(s.sharding.spec) for s in jax.tree.leaves(p))  # really FSDP-split
    model = UNet(cfg)
    y = _jit(lambda p, x, t, c, fps: model.apply({"params": p}, x, t, c, fps=fps))(p, *sharded)
    assert y.sharding.spec[0] == "data"
    assert rel_l2(np.asarray(y), ref) < 2e-6


def test_bf16_close_to_float32(vc2):
    """bf16 compute (params float32, norms/softmax float32) against the float32 reference.

    Bound 4e-2, not 2e-2: on this fixture rounding only the WEIGHTS to bf16 (float32 compute)
    already moves out_y by rel-L2 1.5e-2, because every zero-initialised branch is random here;
    full bf16 lands at 2.8e-2 (2.4e-2 with a float32 residual stream, not worth its bandwidth).
    """
    cfg, params, d = vc2
    model = UNet(cfg.replace(dtype="bfloat16"))
    y = _jit(lambda p, x, t, c, fps: model.apply({"params": p}, x, t, c, fps=fps))(
        params, d["x"], d["in_timesteps"], d["in_context"], d["in_fps"]
    )
    assert y.dtype == jnp.float32  # x's dtype
    ref = d["out_y"].transpose(0, 2, 3, 4, 1)
    err = rel_l2(np.asarray(y), ref)
    assert 1e-3 < err < 4e-2, err  # really ran in bf16, and close
