"""Norms, GELU, timestep embedding and the attention dispatcher against float64 references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax.nn import attention as attn
from maestro_jax.nn import layers


def _np_group_norm(x, groups, eps, axes):
    b = x.shape[0]
    c = x.shape[-1]
    xg = x.reshape(*x.shape[:-1], groups, c // groups).astype(np.float64)
    ax = tuple(axes) + (x.ndim,)
    m = xg.mean(axis=ax, keepdims=True)
    v = ((xg - m) ** 2).mean(axis=ax, keepdims=True)
    del b
    return ((xg - m) / np.sqrt(v + eps)).reshape(x.shape)


@pytest.mark.parametrize("shape,axes", [((2, 4, 5, 64), (1, 2)), ((2, 3, 4, 5, 64), (1, 2, 3))])
def test_group_norm_matches_float64(shape, axes):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 3 + 1
    y = layers.group_norm(jnp.asarray(x), 32, None, None, 1e-5)
    np.testing.assert_allclose(np.asarray(y), _np_group_norm(x, 32, 1e-5, axes), atol=2e-5)


def test_group_norm_per_frame_vs_pooled_differ():
    # VideoCrafter's temporal GN pools over frames; the spatial one is per frame.
    x = np.random.default_rng(1).normal(size=(1, 3, 4, 4, 32)).astype(np.float32)
    x[:, 1] *= 5
    pooled = layers.group_norm(jnp.asarray(x), 32, None, None, 1e-6)
    per_frame = layers.group_norm(jnp.asarray(x.reshape(3, 4, 4, 32)), 32, None, None, 1e-6)
    assert np.abs(np.asarray(pooled).reshape(3, 4, 4, 32) - np.asarray(per_frame)).max() > 0.1


def test_eps_is_respected():
    # A near-constant input makes eps visible: 1e-5 and 1e-6 must give different outputs.
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 64)).astype(np.float32) * 1e-3)
    a = layers.layer_norm(x, None, None, 1e-5)
    b = layers.layer_norm(x, None, None, 1e-6)
    assert float(jnp.abs(a - b).max()) > 1e-2
    ref = (np.asarray(x, np.float64) - np.asarray(x, np.float64).mean()) / np.sqrt(
        np.asarray(x, np.float64).var() + 1e-5
    )
    np.testing.assert_allclose(np.asarray(a), ref, atol=1e-5)


def test_module_eps_has_no_default():
    with pytest.raises(TypeError):
        layers.LayerNorm()  # eps must be explicit
    with pytest.raises(TypeError):
        layers.GroupNorm()


def test_gelu_is_exact():
    x = np.linspace(-4, 4, 101)
    ref = 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
    np.testing.assert_allclose(
        np.asarray(layers.gelu_exact(jnp.asarray(x, jnp.float32))), ref, atol=1e-6
    )
    tanh = np.asarray(jax.nn.gelu(jnp.asarray(x, jnp.float32), approximate=True))
    assert np.abs(tanh - ref).max() > 1e-4  # the trap the exact version avoids


def test_geglu_value_then_gate():
    m = layers.GEGLU(inner=3)
    x = jnp.ones((1, 2))
    p = m.init(jax.random.key(0), x)
    k = np.asarray(p["params"]["proj"]["kernel"])
    bias = np.asarray(p["params"]["proj"]["bias"])
    h = np.ones((1, 2)) @ k + bias
    ref = h[:, :3] * 0.5 * h[:, 3:] * (1 + np.vectorize(math.erf)(h[:, 3:] / math.sqrt(2)))
    np.testing.assert_allclose(np.asarray(m.apply(p, x)), ref, atol=1e-6)


def test_timestep_embedding_cos_first():
    t = jnp.asarray([0, 981])
    e = np.asarray(layers.timestep_embedding(t, 8))
    half = 4
    freqs = np.exp(-math.log(10000) * np.arange(half) / half)
    ref = np.concatenate([np.cos(981 * freqs), np.sin(981 * freqs)])
    np.testing.assert_allclose(e[1], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(e[0], [1, 1, 1, 1, 0, 0, 0, 0])


def test_attention_matches_float64_and_dispatcher_fallback():
    rng = np.random.default_rng(3)
    q, k, v = (
        rng.normal(size=s).astype(np.float32) for s in [(2, 5, 3, 8), (2, 7, 3, 8), (2, 7, 3, 8)]
    )
    out = attn.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v))
    s = np.einsum("bqhd,bkhd->bhqk", q.astype(np.float64), k) / math.sqrt(8)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = np.einsum("bhqk,bkhd->bqhd", p, v)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    # cudnn off-GPU falls back to the same xla result (with a warning), never differs silently.
    out2 = attn.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), impl="cudnn")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(out2))
    with pytest.raises(ValueError, match="not one of"):
        attn.dot_product_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), impl="flash")


def test_mesh_has_8_devices(cpu_mesh):
    assert cpu_mesh.shape == {"data": 4, "fsdp": 2}


def test_chunked_attention_equals_xla(monkeypatch):
    """'chunked' takes the queries a few rows at a time past its logits budget (with a per-query
    bias chunked alongside, a broadcast one kept whole, and under vmap); below it, it is 'xla'."""
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
               for s in ((2, 96, 3, 8), (2, 50, 3, 8), (2, 50, 3, 8)))  # fmt: skip
    bias = jnp.asarray(rng.standard_normal((2, 1, 96, 50)), jnp.float32)
    same = attn.dot_product_attention(q, k, v, impl="chunked")
    np.testing.assert_array_equal(same, attn.dot_product_attention(q, k, v, impl="xla"))
    monkeypatch.setattr(attn, "CHUNK_LOGITS_BYTES", 4 * 2 * 3 * 50 * 10)  # 10 rows: chunks of 8
    for b in (None, bias, bias[:, :, :1]):
        ref = attn.dot_product_attention(q, k, v, bias=b, impl="xla")
        got = attn.dot_product_attention(q, k, v, bias=b, impl="chunked")
        np.testing.assert_allclose(got, ref, atol=2e-6)
    f = jax.vmap(lambda q1: attn.dot_product_attention(q1, k, v, impl="chunked"))
    np.testing.assert_allclose(f(q[None])[0], attn.dot_product_attention(q, k, v), atol=2e-6)
