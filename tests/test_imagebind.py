"""ImageBind audio / vision / text: fixture parity, full-size key set, numerics of the choices."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from np_ref import gelu as _gelu
from np_ref import layer_norm as _ln

from convert import imagebind as conv
from convert.common import ConversionError, load_full_keys, load_state_dict, rel_l2
from maestro_jax.models import imagebind as ib


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    return fixtures_dir / "imagebind_audio"


@pytest.fixture(scope="module")
def tiny_cfg(fixture):
    with open(fixture / "config.json") as f:
        return ib.ImageBindConfig.from_torch_kwargs(json.load(f)["constructor_kwargs"])


@pytest.fixture(scope="module")
def verify_checks(fixture):
    return conv.verify_imagebind_audio(fixture)


def test_fixture_parity(verify_checks):
    names = {c.name for c in verify_checks}
    for k in ("out_audio_trunk_tokens", "out_audio_emb_per_clip", "out_audio_emb_mean"):
        assert k in names
    bad = [(c.name, c.errors()) for c in verify_checks if not c.passed()]
    assert not bad, bad
    # every out_* array of io.npz is checked
    assert len(verify_checks) == 2 * 9 + 1


def test_tiny_config_from_fixture(tiny_cfg):
    assert (tiny_cfg.audio_width, tiny_cfg.audio_depth, tiny_cfg.audio_heads) == (64, 2, 4)
    assert tiny_cfg.out_dim == 32 and tiny_cfg.audio_grid == (12, 19)
    assert tiny_cfg.audio_tokens == 229 and tiny_cfg.vision_tokens == 257


# ----------------------------------------------------------------------------- full-size keys
@pytest.fixture(scope="module")
def full_keys(fixture):
    return load_full_keys(fixture / "full_keys.json")


@pytest.fixture(scope="module")
def huge_target():
    return conv.target_for(ib.imagebind_huge())


def test_full_keys_all_modalities(full_keys, huge_target):
    cfg = ib.imagebind_huge()
    fake = {k: np.broadcast_to(np.float32(0), s) for k, s in full_keys.items()}
    from convert.common import apply_table

    apply_table(fake, conv.table_for(cfg), huge_target, ignore=conv.ignore_for(), shapes_only=True)
    counts = {
        m: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t)) for m, t in huge_target.items()
    }
    audio_full = sum(int(np.prod(s)) for k, s in full_keys.items() if ".audio." in k)
    assert counts["audio"] == audio_full == 86_235_649
    assert round(counts["vision"] / 1e6, 1) == 632.8


def test_full_keys_audio_only_and_strictness(full_keys):
    conv.check_full_keys(full_keys, modalities=("audio",))
    # a missing audio key is named
    fk = dict(full_keys)
    del fk["modality_trunks.audio.blocks.3.attn.bias_k"]
    with pytest.raises(ConversionError, match=r"blocks\.3\.attn\.bias_k"):
        conv.check_full_keys(fk, modalities=("audio",))
    # an extra block or an unknown modality is not ignored by accident
    for extra in ("modality_trunks.audio.blocks.12.norm_1.weight", "modality_trunks.video.w"):
        fk = dict(full_keys) | {extra: (768,)}
        with pytest.raises(ConversionError, match=extra.replace(".", r"\.")):
            conv.check_full_keys(fk, modalities=("audio",))
    # a mis-shaped key
    fk = dict(full_keys) | {
        "modality_preprocessors.audio.pos_embedding_helper.pos_embed": (1, 230, 768)
    }
    with pytest.raises(ConversionError, match="shape mismatch"):
        conv.check_full_keys(fk, modalities=("audio",))


def test_text_mask_must_be_causal(fixture, tiny_cfg):
    sd = load_state_dict(fixture / "state_dict.safetensors")
    sd["modality_preprocessors.text.mask"] = np.zeros((77, 77), np.float32)
    with pytest.raises(ConversionError, match="causal"):
        conv.convert(sd, tiny_cfg, ("text",))


# ----------------------------------------------------------------------------- shapes
@pytest.fixture(scope="module")
def tiny_audio(tiny_cfg):
    mod = ib.ImageBindAudio(tiny_cfg)
    params = jax.jit(mod.init)(jax.random.key(0), ib.dummy_input("audio", tiny_cfg))["params"]
    return mod, params


def test_audio_shapes_and_norm(tiny_audio, tiny_cfg):
    mod, params = tiny_audio
    mel = jax.random.normal(jax.random.key(1), (2, 3, 128, 204))
    out = jax.jit(mod.apply)({"params": params}, mel)
    assert out.tokens.shape == (2, 3, 229, tiny_cfg.audio_width)
    assert out.emb_per_clip.shape == (2, 3, tiny_cfg.out_dim)
    assert out.emb.shape == (2, tiny_cfg.out_dim)
    norms = np.linalg.norm(np.asarray(out.emb_per_clip, np.float64), axis=-1)
    np.testing.assert_allclose(norms, 20.0, atol=1e-5)  # normalise x exp(ln 20), not unit norm
    assert np.all(np.linalg.norm(np.asarray(out.emb), axis=-1) < 20.0)
    np.testing.assert_allclose(out.emb, np.asarray(out.emb_per_clip).mean(1), atol=1e-6)
    # one clip per row: the S axis is absent
    one = jax.jit(mod.apply)({"params": params}, mel[:, 0])
    assert one.tokens.shape == (2, 229, tiny_cfg.audio_width)
    np.testing.assert_allclose(one.tokens, out.tokens[:, 0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="128, 204"):
        mod.apply({"params": params}, mel[..., :200])


def test_vision_text_shapes(tiny_cfg):
    v = ib.ImageBindVision(tiny_cfg)
    vp = jax.jit(v.init)(jax.random.key(0), ib.dummy_input("vision", tiny_cfg))["params"]
    out = jax.jit(v.apply)({"params": vp}, jnp.ones((1, 224, 224, 3)))
    assert out.tokens.shape == (1, 257, 64) and out.emb.shape == (1, 32)
    np.testing.assert_allclose(np.linalg.norm(out.emb, axis=-1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="224, 224, 3"):
        v.apply({"params": vp}, jnp.ones((1, 3, 224, 224)))
    t = ib.ImageBindText(tiny_cfg)
    ids = jnp.zeros((2, 77), jnp.int32).at[:, 0].set(49406).at[0, 3].set(49407).at[1, 5].set(49407)
    tp = jax.jit(t.init)(jax.random.key(0), ids)["params"]
    tout = jax.jit(t.apply)({"params": tp}, ids)
    assert tout.tokens.shape == (2, 77, 64) and tout.emb.shape == (2, 32)
    with pytest.raises(ValueError, match="77"):
        t.apply({"params": tp}, ids[:, :70])


def test_preprocess_images():
    # a constant picture stays constant: only the normalisation shows
    img = jnp.full((1, 300, 448, 3), 0.5)
    out = ib.preprocess_images(img)
    assert out.shape == (1, 224, 224, 3)
    want = (0.5 - np.asarray(ib.CLIP_MEAN)) / np.asarray(ib.CLIP_STD)
    np.testing.assert_allclose(out[0, 100, 100], want, atol=1e-5)
    # center crop of an already short-side-224 image: columns (334 - 224) / 2 = 55 from the left
    ramp = jnp.broadcast_to(jnp.linspace(0, 1, 334)[None, None, :, None], (1, 224, 334, 3))
    out = ib.preprocess_images(ramp)
    np.testing.assert_allclose(
        out[0, 0, :, 0],
        (np.linspace(0, 1, 334)[55:279] - ib.CLIP_MEAN[0]) / ib.CLIP_STD[0],
        atol=1e-5,
    )


# ----------------------------------------------------------------------------- numerics vs float64
def _np_block(x, p, heads, *, eps=1e-6, exact=True, bias_kv=True):
    """ImageBind BlockWithMasking + nn.MultiheadAttention(add_bias_kv) in float64."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
    b, t, d = x.shape
    dh = d // heads
    h = _ln(x, p["norm_1"], eps)
    qkv = h @ p["attn"]["in_proj"]["kernel"] + p["attn"]["in_proj"]["bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    if bias_kv:
        k = np.concatenate([k, np.broadcast_to(p["attn"]["bias_k"], (b, 1, d))], 1)
        v = np.concatenate([v, np.broadcast_to(p["attn"]["bias_v"], (b, 1, d))], 1)
    q, k, v = (a.reshape(b, -1, heads, dh) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, t, d)
    x = x + o @ p["attn"]["out_proj"]["kernel"] + p["attn"]["out_proj"]["bias"]
    h = _ln(x, p["norm_2"], eps) @ p["fc1"]["kernel"] + p["fc1"]["bias"]
    h = _gelu(h, exact) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    return x + h


@pytest.fixture(scope="module")
def block_case():
    blk = ib.Block(32, 4, 128, add_bias_kv=True)
    params = jax.jit(blk.init)(jax.random.key(3), jnp.zeros((1, 9, 32)))["params"]
    # visible bias_k/v and biases (init zeros / small)
    keys = jax.random.split(jax.random.key(4), 2)
    params["attn"]["bias_k"] = jax.random.normal(keys[0], (1, 1, 32))
    params["attn"]["bias_v"] = 2.0 * jax.random.normal(keys[1], (1, 1, 32))
    return blk, params, jax.jit(blk.apply)


@pytest.mark.parametrize("scale", [3.0, 3e-3])
def test_block_vs_float64(block_case, scale):
    """scale 3: exact vs tanh GELU differ; scale 3e-3: LN eps 1e-6 vs 1e-5 differ."""
    blk, params, fn = block_case
    x = scale * np.random.default_rng(0).standard_normal((2, 9, 32))
    out = np.asarray(fn({"params": params}, jnp.asarray(x, jnp.float32)), np.float64)
    ref = _np_block(x, params, 4)
    assert rel_l2(out, ref) < 2e-6
    if scale > 1:
        assert rel_l2(_np_block(x, params, 4, exact=False), ref) > 100 * rel_l2(out, ref)
    else:
        assert rel_l2(_np_block(x, params, 4, eps=1e-5), ref) > 100 * rel_l2(out, ref)
    # the appended bias_k/bias_v token matters
    assert rel_l2(_np_block(x, params, 4, bias_kv=False), ref) > 1e-3


def test_audio_stem_eps(tiny_audio, tiny_cfg):
    """The stem LayerNorm is eps 1e-5 (torch default), not the blocks' 1e-6."""
    assert ib.STEM_LN_EPS == 1e-5 and ib.LN_EPS == 1e-6
    mod, params = tiny_audio
    mel = 1e-3 * np.random.default_rng(1).standard_normal((1, 128, 204))
    fn = jax.jit(lambda p, x: mod.apply(p, x, mutable=["intermediates"]))
    _, inter = fn({"params": params}, jnp.asarray(mel, jnp.float32))
    pre = np.asarray(inter["intermediates"]["pre_tokens"][0], np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    k = p["stem"]["kernel"][:, :, 0, :]  # [16, 16, D]
    patches = np.stack(
        [mel[0, f * 10 : f * 10 + 16, t * 10 : t * 10 + 16] for f in range(12) for t in range(19)]
    )  # frequency-major
    tok = np.einsum("nij,ijd->nd", patches, k)

    def ref(eps):
        x = np.concatenate([p["cls_token"][0], _ln(tok, p["stem_norm"], eps)], 0)
        return x + p["pos_embed"][0]

    good = rel_l2(pre[0], ref(1e-5))
    assert good < 1e-5
    assert rel_l2(pre[0], ref(1e-6)) > 1e-3


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_params(fixture, tiny_cfg, tmp_path):
    from convert.cli import call
    from convert.imagebind.__main__ import main
    from maestro_jax.checkpoints import load_params

    out = tmp_path / "ib"
    rc = call(
        main,
        [
            str(fixture / "state_dict.safetensors"),
            str(out),
            "--modalities",
            "audio",
            "--torch_config",
            str(fixture / "config.json"),
        ],
    )
    assert rc == 0
    params, cfg = load_params(out)
    assert set(params) == {"audio"} and cfg["modalities"] == ["audio"]
    want = conv.convert(load_state_dict(fixture / "state_dict.safetensors"), tiny_cfg, ("audio",))
    jax.tree.map(np.testing.assert_array_equal, want, params)
    assert dataclasses.replace(tiny_cfg).audio_width == cfg["imagebind"]["audio_width"]
    assert call(main, [str(fixture / "state_dict.safetensors"), str(out), "--modalities", "x"]) == 2
