"""Splash attention (maestro_jax/nn/splash.py) against the XLA path, in Pallas interpret mode.

Every sequence length of the full-size VideoCrafter2 UNet at 320x512 (spatial 40x64, 20x32,
10x16, 5x8 tokens; 16 frames; 77 context keys) with head_dim 64 and the heads of its level;
batches are small (the kernel runs per batch element, so they add no coverage). Also: the
'auto' choice, the mesh (shard_map), gradients, the UNet with and without an Attention Mosaic
edit, and lowering for TPU (the Mosaic kernel) and CUDA (the XLA path) from this CPU host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maestro_jax import mosaic
from maestro_jax.models.unet import UNet, UNetConfig
from maestro_jax.nn import attention as attn
from maestro_jax.nn import splash
from maestro_jax.nn.random_init import random_init

DH = 64
# name: (batch, q tokens, kv tokens, heads) at VideoCrafter2's full size
SHAPES = {
    "spatial_40x64": (1, 2560, 2560, 5),
    "spatial_20x32": (2, 640, 640, 10),
    "spatial_10x16": (2, 160, 160, 20),
    "spatial_5x8": (2, 40, 40, 20),
    "temporal_16": (8, 16, 16, 20),  # batch B*h*w; 5/10/20 heads by level, init_attn 8
    "cross_10x16_77": (2, 160, 77, 20),
}
BOUND = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def _rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _qkv(b, tq, tk, h, dtype=jnp.float32, seed=0):
    r = np.random.default_rng(seed)
    return tuple(
        jnp.asarray(r.normal(size=(b, t, h, DH)), dtype) for t in (tq, tk, tk)
    )  # fmt: skip


def _attend(impl):
    return jax.jit(lambda q, k, v: attn.dot_product_attention(q, k, v, impl=impl))


def _uses_kernel(f, *args) -> bool:
    return "pallas_call" in str(jax.make_jaxpr(f)(*args))


# ----------------------------------------------------------------------------- plan


def test_plan_pads_to_the_kernel_blocks():
    p = {n: splash.plan(tq, tk) for n, (_, tq, tk, _) in SHAPES.items()}
    as_tuple = {n: (x.q_pad, x.kv_pad, x.block_q, x.block_kv) for n, x in p.items()}
    assert as_tuple == {
        "spatial_40x64": (2560, 2560, 512, 512),
        "spatial_20x32": (640, 640, 128, 128),
        "spatial_10x16": (160, 256, 160, 256),
        "spatial_5x8": (48, 128, 48, 128),
        "temporal_16": (16, 128, 16, 128),
        "cross_10x16_77": (160, 128, 160, 128),
    }
    for x in p.values():
        assert x.q_pad % x.block_q == 0 and x.kv_pad % x.block_kv == 0
        assert x.block_kv % splash.LANES == 0
    big = splash.plan(1000, 1000)  # q over one block: 128-multiples
    assert (big.q_pad, big.kv_pad, big.block_q, big.block_kv) == (1024, 1024, 512, 512)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_splash_matches_xla(shape, dtype):
    q, k, v = _qkv(*SHAPES[shape], dtype)
    assert _uses_kernel(_attend("splash"), q, k, v)
    out = _attend("splash")(q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    assert _rel_l2(out, _attend("xla")(q, k, v)) < BOUND[dtype]


def test_splash_gradients_match_xla():
    q, k, v = _qkv(2, 40, 40, 2)  # padded q and kv

    def loss(impl):
        return jax.jit(
            jax.grad(lambda q, k, v: (attn.dot_product_attention(q, k, v, impl=impl) ** 2).sum(),
                     argnums=(0, 1, 2))
        )  # fmt: skip

    for g, ref in zip(loss("splash")(q, k, v), loss("xla")(q, k, v)):
        assert _rel_l2(g, ref) < 1e-5


def test_splash_with_bias_falls_back_to_xla():
    q, k, v = _qkv(1, 40, 40, 2)
    bias = jnp.asarray(np.random.default_rng(1).normal(size=(1, 1, 40, 40)), jnp.float32)
    f = jax.jit(lambda q, k, v, b, impl: attn.dot_product_attention(q, k, v, bias=b, impl=impl),
                static_argnums=4)  # fmt: skip
    assert not _uses_kernel(lambda *a: f(*a, "splash"), q, k, v, bias)
    np.testing.assert_array_equal(f(q, k, v, bias, "splash"), f(q, k, v, bias, "xla"))


# ----------------------------------------------------------------------------- mesh


def test_mesh_axes():
    mesh = {"data": 4, "fsdp": 2}
    assert splash.mesh_axes(mesh, 8, 5) == (("data", "fsdp"), ())
    assert splash.mesh_axes(mesh, 4, 2) == (("data",), ("fsdp",))
    assert splash.mesh_axes(mesh, 4, 5) == (("data",), ())
    assert splash.mesh_axes(mesh, 2, 20) == (("fsdp",), ())
    assert splash.mesh_axes({"data": 2, "model": 4}, 6, 20) == (("data",), ("model",))
    assert splash.mesh_axes({"data": 1, "x": 8}, 8, 8) == ((), ())


@pytest.mark.parametrize(
    "shape, batch, heads, spec",
    [
        ("spatial_40x64", 8, 2, P(("data", "fsdp"), None, None, None)),
        ("spatial_5x8", 4, 2, P("data", None, "fsdp", None)),
        ("temporal_16", 3, 5, P(None, None, None, None)),  # nothing divides: replicated
    ],
)
def test_splash_under_mesh_runs_in_shard_map(cpu_mesh, shape, batch, heads, spec):
    _, tq, tk, _ = SHAPES[shape]
    q, k, v = _qkv(batch, tq, tk, heads)
    ref = _attend("xla")(q, k, v)
    local = _attend("splash")(q, k, v)
    with jax.set_mesh(cpu_mesh):
        f = _attend("splash")
        jaxpr = str(jax.make_jaxpr(f)(q, k, v))
        assert "shard_map" in jaxpr and "pallas_call" in jaxpr
        sh = NamedSharding(cpu_mesh, spec)
        out = f(*(jax.device_put(x, sh) for x in (q, k, v)))
    assert _rel_l2(out, ref) < 1e-5
    np.testing.assert_array_equal(np.asarray(out), np.asarray(local))


def test_splash_inside_a_shard_map(cpu_mesh):
    """In a caller's shard_map the kernel runs on the local shard (and in a nested shard_map
    over the axes left); with check_vma=True Pallas cannot run: XLA, the same numbers."""
    q, k, v = _qkv(8, 40, 40, 4)
    ref = _attend("xla")(q, k, v)

    def inner(q, k, v):
        return attn.dot_product_attention(q, k, v, impl="splash")

    with jax.set_mesh(cpu_mesh):
        for kw, kernel, nested in [
            (dict(check_vma=False), True, False),
            (dict(check_vma=False, axis_names={"data"}), True, True),
            (dict(), False, False),
        ]:
            f = jax.jit(jax.shard_map(inner, in_specs=P("data"), out_specs=P("data"), **kw))
            jaxpr = str(jax.make_jaxpr(f)(q, k, v))
            assert ("pallas_call" in jaxpr) == kernel
            assert (jaxpr.count("shard_map") > 1) == nested
            assert _rel_l2(f(q, k, v), ref) < 1e-5


# ----------------------------------------------------------------------------- auto


def test_auto_is_xla_on_cpu_and_per_backend_elsewhere():
    q, k, v = _qkv(2, 40, 40, 2)
    assert attn.choose_impl("auto", q, k, v) == "xla"
    np.testing.assert_array_equal(_attend("auto")(q, k, v), _attend("xla")(q, k, v))
    assert not _uses_kernel(_attend("auto"), q, k, v)

    def pick(shape, dtype=jnp.bfloat16, backend="tpu", bias=None):
        b, tq, tk, h = SHAPES[shape]
        qs, ks = (jax.ShapeDtypeStruct((b, t, h, DH), dtype) for t in (tq, tk))
        return attn.choose_impl("auto", qs, ks, ks, bias, backend=backend)

    on_tpu = {n: pick(n) for n in SHAPES}
    assert on_tpu == {
        "spatial_40x64": "splash",
        "spatial_20x32": "splash",
        "spatial_10x16": "splash",
        "spatial_5x8": "xla",
        "temporal_16": "xla",
        "cross_10x16_77": "xla",
    }
    assert pick("spatial_40x64", jnp.float32) == "splash"
    assert pick("spatial_40x64", bias=jnp.zeros((1, 1, 1, 1))) == "xla"
    assert pick("spatial_40x64", jnp.float16) == "xla"
    assert {pick(n, backend="gpu") for n in SHAPES} == {"cudnn"}
    assert pick("spatial_40x64", jnp.float32, backend="gpu") == "xla"
    assert pick("spatial_40x64", backend="cpu") == "xla"
    for impl in ("xla", "cudnn", "splash"):
        assert attn.choose_impl(impl, q, k, v) == impl
    with pytest.raises(ValueError, match="not one of"):
        attn.choose_impl("flash", q, k, v)
    assert UNetConfig.tiny(attn_impl="auto", attn_impl_cross="xla").impl("self") == "auto"


# ----------------------------------------------------------------------------- UNet

# Few layers and few pixels: the interpreted kernel's cost grows with its grid (batch x heads x
# blocks) and every attention layer is one more kernel to compile. Shapes are covered above.
UNET_CFG = UNetConfig.tiny(channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1,))
SPLASH_SELF_TEMPORAL = dict(attn_impl_self="splash", attn_impl_temporal="splash")
FAST = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


@pytest.fixture(scope="module")
def tiny_unet():
    """A tiny VideoCrafter2-style UNet (latent 4x6, 4 frames, CFG batch 2: cond + uncond), its
    random weights, and a Mosaic Denoising edit of its cross-attention. `run(cfg, edit_impl)`
    is the forward pass (edit_impl None: no edit), memoised."""
    cfg = UNET_CFG
    b, f, hw, L = 2, 4, (4, 6), 77
    r = np.random.default_rng(0)
    x = jnp.asarray(r.normal(size=(b, f, *hw, 4)), jnp.float32)
    t = jnp.array([500, 500])
    null = jnp.asarray(r.normal(size=(L, cfg.context_dim)), jnp.float32)
    audio = jnp.asarray(r.normal(size=(2, 2, 4, cfg.context_dim)), jnp.float32)
    c_merge, c_sep = mosaic.build_contexts(null, audio, f)
    ctx = jnp.concatenate([c_merge, jnp.broadcast_to(null, c_merge.shape)])  # [B*F, L, D]
    params = random_init(UNet(cfg), x, t, ctx, fps=t)["params"]
    memo = {}

    def run(cfg_, edit_impl=None):
        key = (cfg_, edit_impl)
        if key not in memo:
            e = None
            if edit_impl is not None:
                e = mosaic.make_edit(
                    "mosaic", boxes=mosaic.preset("LR")[1], c_merge=c_merge, c_sep=c_sep,
                    null_emb=null, n_q=4, resolutions=mosaic.unet_resolutions(hw, 2),
                    num_frames=f, edit_rows=mosaic.cfg_edit_rows(1, 1), attn_impl=edit_impl,
                )  # fmt: skip
            m = UNet(cfg_)
            xla_only = cfg_ == UNET_CFG and edit_impl != "splash"  # -O0 slows the interpreter
            fwd = jax.jit(
                lambda p: m.apply({"params": p}, x, t, ctx, fps=t, attn_edit=e),
                compiler_options=FAST if xla_only else None,
            )
            memo[key] = np.asarray(fwd(params))
        return memo[key]

    return run


def test_unet_with_splash_self_and_temporal_matches_xla(tiny_unet):
    ref = tiny_unet(UNET_CFG)
    assert _rel_l2(tiny_unet(UNET_CFG.replace(**SPLASH_SELF_TEMPORAL)), ref) < 1e-5


def test_unet_with_mosaic_edit_and_splash_everywhere_matches_xla(tiny_unet):
    """Self, temporal and cross-attention (inside the Mosaic edit: plain rows and per-source
    attention over 77 keys) by splash, against all-XLA with the same edit."""
    ref = tiny_unet(UNET_CFG, "xla")
    assert _rel_l2(tiny_unet(UNET_CFG), ref) > 1e-3  # the edit changes the output
    assert _rel_l2(tiny_unet(UNET_CFG.replace(attn_impl="splash"), "splash"), ref) < 1e-5


# ----------------------------------------------------------------------------- lowering


def _export_text(f, *args, platform):
    return jax.export.export(jax.jit(f), platforms=[platform])(*args).mlir_module()


def test_splash_lowers_for_tpu(cpu_mesh):
    """The TPU export holds the Mosaic kernel (a tpu_custom_call); the XLA path's does not."""
    specs = [jax.ShapeDtypeStruct((8, t, 4, DH), jnp.bfloat16) for t in (40, 40, 40)]
    txt = _export_text(_attend("splash"), *specs, platform="tpu")
    assert "tpu_custom_call" in txt
    assert "tpu_custom_call" not in _export_text(_attend("xla"), *specs, platform="tpu")
    with jax.set_mesh(cpu_mesh):  # under the mesh: the kernel inside a manual computation
        txt = _export_text(_attend("splash"), *specs, platform="tpu")
    assert "tpu_custom_call" in txt and "manual" in txt.lower()
    # gradients lower too (the kernel's backward pass)
    grad = jax.grad(
        lambda q, k, v: attn.dot_product_attention(q, k, v, impl="splash").sum(), (0, 1, 2)
    )
    txt = _export_text(grad, *[jax.ShapeDtypeStruct(s.shape, jnp.float32) for s in specs],
                       platform="tpu")  # fmt: skip
    for kernel in ("fwd_residuals", "dq_no_residuals", "dkv_no_residuals"):
        assert f"splash_mha_{kernel}" in txt


def test_non_splash_paths_lower_for_cuda():
    specs = [jax.ShapeDtypeStruct((2, t, 4, DH), jnp.bfloat16) for t in (40, 77, 77)]
    for impl in ("xla", "auto", "cudnn"):  # on this CPU host 'auto' and 'cudnn' are xla
        assert "stablehlo.dot_general" in _export_text(_attend(impl), *specs, platform="cuda")


def test_unet_lowers_for_tpu_with_splash_and_for_cuda_with_xla():
    cfg = UNET_CFG
    x = jax.ShapeDtypeStruct((1, 4, 8, 16, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    ctx = jax.ShapeDtypeStruct((1, 77, cfg.context_dim), jnp.float32)
    params = jax.eval_shape(
        lambda x, t, c: UNet(cfg).init(jax.random.PRNGKey(0), x, t, c, fps=t), x, t, ctx
    )

    def fwd(c):
        return lambda p, x, t, ctx: UNet(c).apply(p, x, t, ctx, fps=t)

    splash_cfg = cfg.replace(**SPLASH_SELF_TEMPORAL)
    txt = _export_text(fwd(splash_cfg), params, x, t, ctx, platform="tpu")
    assert txt.count("tpu_custom_call") >= 2  # self and temporal attention
    txt = _export_text(fwd(cfg), params, x, t, ctx, platform="cuda")
    assert "tpu_custom_call" not in txt
