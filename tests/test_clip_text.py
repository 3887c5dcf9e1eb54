"""OpenCLIP text tower (`maestro_jax.models.clip_text`), its converter and the CLIP tokenizer."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from convert import clip_text as conv
from convert.common import (
    ConversionError,
    check_table_against_keys,
    flatten,
    load_full_keys,
    load_state_dict,
)
from maestro_jax.models import clip_text as ct
from maestro_jax.models import tokenizer as tk
from maestro_jax.sharding import batch_sharding, param_shardings

PFX = conv.OPENCLIP_PREFIX


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bpe_path(fixtures_dir) -> Path:
    return fixtures_dir / "clip_tokenizer" / tk.BPE_FILENAME


@pytest.fixture(scope="module")
def tokenizer(bpe_path) -> tk.ClipTokenizer:
    return tk.ClipTokenizer(bpe_path)


@pytest.fixture(scope="module")
def oc_fixture(fixtures_dir):
    """(state dict float32, io arrays, params, config) of the `openclip_text` fixture."""
    d = fixtures_dir / "openclip_text"
    sd = load_state_dict(d / "state_dict.safetensors")
    io = dict(np.load(d / "io.npz", allow_pickle=False))
    params, config = conv.convert_state_dict(sd, conv._fixture_config(d))
    return sd, io, params, config


def _max_rel(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


def _random_params(config: ct.ClipTextConfig, seed: int = 0, emb_std: float = 0.5) -> dict:
    """Every leaf random (so that LayerNorm scales/biases and every bias matter)."""
    target = flatten(ct.abstract_params(config))
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in target.items():
        if k.endswith("scale"):
            v = 1 + 0.1 * rng.standard_normal(s.shape)
        elif k.endswith("bias"):
            v = 0.1 * rng.standard_normal(s.shape)
        elif k in ("token_embedding/embedding", "positional_embedding"):
            v = emb_std * rng.standard_normal(s.shape)
        else:
            v = rng.standard_normal(s.shape) / math.sqrt(s.shape[0])
        out[k] = v.astype(np.float32)
    from convert.common import unflatten

    return unflatten(out)


# ----------------------------------------------------------------------------- float64 reference
def _np_reference(params, config, tokens, n_blocks, eps=1e-5, gelu="erf", causal=True):
    """Independent float64 numpy forward of the open_clip text tower."""
    from scipy.special import erf

    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)

    def ln(x, q):
        m = x.mean(-1, keepdims=True)
        v = ((x - m) ** 2).mean(-1, keepdims=True)
        return (x - m) / np.sqrt(v + eps) * q["scale"] + q["bias"]

    def act(x):
        if gelu == "erf":
            return 0.5 * x * (1 + erf(x / np.sqrt(2)))
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    n, length = tokens.shape
    h, dh = config.heads, config.width // config.heads
    x = p["token_embedding"]["embedding"][tokens] + p["positional_embedding"][:length]
    mask = np.triu(np.full((length, length), -np.inf), 1) if causal else 0.0
    for i in range(n_blocks):
        b = p[f"resblocks_{i}"]
        y = ln(x, b["ln_1"])
        a = b["attn"]
        q, k, v = (
            (y @ a[f"{c}_proj"]["kernel"] + a[f"{c}_proj"]["bias"]).reshape(n, length, h, dh)
            for c in "qkv"
        )
        s = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(dh) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("nhqk,nkhd->nqhd", s, v).reshape(n, length, -1)
        x = x + o @ a["out_proj"]["kernel"] + a["out_proj"]["bias"]
        y = ln(x, b["ln_2"])
        m = b["mlp"]
        y = act(y @ m["c_fc"]["kernel"] + m["c_fc"]["bias"])
        x = x + y @ m["c_proj"]["kernel"] + m["c_proj"]["bias"]
    return ln(x, p["ln_final"])


SMALL = ct.tiny(width=32, heads=4, layers=2, embed_dim=16)


# ----------------------------------------------------------------------------- tokenizer
def test_clip_tokenizer_fixture(fixtures_dir):
    checks = conv.verify_clip_tokenizer(fixtures_dir / "clip_tokenizer")
    assert [c.name for c in checks] == ["out_ids", "out_full_len"]
    for c in checks:
        assert c.passed(), (c.name, np.argwhere(np.asarray(c.out) != np.asarray(c.ref))[:5])


def test_tokenizer_edge_cases(tokenizer, bpe_path):
    sot, eot = tk.SOT_ID, tk.EOT_ID
    ids, n = tokenizer.tokenize_with_lengths(["", " \t\n ", "a " * 75, "a " * 76, "a " * 100])
    assert ids.shape == (5, 77) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[0], [sot, eot] + [0] * 75)
    np.testing.assert_array_equal(ids[1], ids[0])
    np.testing.assert_array_equal(n, [2, 2, 77, 78, 102])
    a = tokenizer.encode("a")
    assert len(a) == 1
    assert ids[2, -1] == eot and ids[2, -2] == a[0]  # exactly fits
    for row in (3, 4):  # truncated: first 76 kept, last forced to EOT
        assert ids[row, -1] == eot and (ids[row, 1:-1] == a[0]).all()
    # a single string is a batch of one; special strings map to the special ids
    sp = tokenizer("x <end_of_text> <START_OF_TEXT>")
    assert sp.shape == (1, 77)
    assert list(sp[0, :6]) == [sot, tokenizer.encode("x")[0], eot, sot, eot, 0]
    # digits are single tokens; html unescaped twice; case folded; whitespace collapsed
    assert len(tokenizer.encode("2024")) == 4
    assert tokenizer.encode("&amp;lt;") == tokenizer.encode("<")
    assert tokenizer.encode("Dog  BARKING\n") == tokenizer.encode("dog barking")
    assert "a dog barking" in tokenizer.decode(tokenizer("a dog barking")[0])
    # a shorter context truncates the same way
    short = tk.ClipTokenizer(bpe_path, context_length=4)("one two three four")
    assert list(short[0]) == [sot, *tokenizer.encode("one two"), eot]
    with pytest.raises(TypeError, match="strings"):
        tokenizer(["ok", 3])


def test_bpe_path_resolution(bpe_path, tmp_path, monkeypatch):
    monkeypatch.delenv(tk.ENV_VAR, raising=False)
    assert tk.default_bpe_path(bpe_path) == bpe_path
    with pytest.raises(FileNotFoundError, match="not found"):
        tk.default_bpe_path(tmp_path / "missing.txt.gz")
    monkeypatch.setenv(tk.ENV_VAR, str(bpe_path))
    assert tk.default_bpe_path() == bpe_path
    monkeypatch.setenv(tk.ENV_VAR, str(tmp_path / "nope.gz"))
    with pytest.raises(FileNotFoundError, match=tk.ENV_VAR):
        tk.default_bpe_path()
    monkeypatch.delenv(tk.ENV_VAR)
    # An installed open_clip is found by file location, never imported.
    pkg = tmp_path / "site" / "open_clip"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('open_clip must not be imported')\n")
    (pkg / tk.BPE_FILENAME).symlink_to(bpe_path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    assert tk.default_bpe_path() == pkg / tk.BPE_FILENAME
    assert "open_clip" not in sys.modules
    # Nothing anywhere: a clear error that says how to supply the file.
    monkeypatch.setattr(tk, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as e:
        tk.ClipTokenizer()
    assert tk.ENV_VAR in str(e.value) and "open_clip_torch" in str(e.value)


# ----------------------------------------------------------------------------- text tower
def test_openclip_text_fixture(fixtures_dir):
    checks = conv.verify_openclip_text(fixtures_dir / "openclip_text")
    names = [c.name for c in checks]
    for want in ("in_tokens (our tokenizer)", "out_penultimate", "out_last", "out_pooled"):
        assert want in names
    for c in checks:
        assert c.passed(), (c.name, c.errors())
        if c.metric != "exact":  # float32 round-off only (reference rounding ~3e-7)
            assert c.errors()[1] < 1e-5, (c.name, c.errors())


def test_encode_text_and_null_embedding(oc_fixture, tokenizer):
    _, io, params, config = oc_fixture
    texts = [str(t) for t in io["in_texts"]]
    y = ct.encode_text(params, config, tokenizer, texts)
    assert y.shape == (8, 77, 64)
    assert _max_rel(y, io["out_penultimate"]) < 1e-4
    y_last = ct.encode_text(params, config, tokenizer, texts[:2], layer="last")
    assert _max_rel(y_last, io["out_last"][:2]) < 1e-4
    null = ct.null_embedding(params, config, tokenizer)
    assert null.shape == (77, 64)
    assert io["in_texts"][0] == "" and _max_rel(null, io["out_penultimate"][0]) < 1e-4
    m = ct.ClipTextTransformer(config)
    tokens = jnp.asarray(io["in_tokens"], jnp.int32)
    pooled = jax.jit(lambda p, t: m.apply({"params": p}, t, method=m.pooled))(params, tokens)
    assert _max_rel(pooled, io["out_pooled"]) < 1e-4
    with pytest.raises(ValueError, match="layer"):
        ct.encode_text(params, config, tokenizer, texts, layer="first")


def test_shapes_and_errors():
    c = SMALL
    params = _random_params(c)  # (ct.init_params compiles the RNG: slow on 2 cores)
    tokens = jnp.zeros((3, 77), jnp.int32)
    m = ct.ClipTextTransformer(c)
    for layer in ("penultimate", "last"):
        shape = jax.eval_shape(
            lambda p, t, l=layer: m.apply({"params": p}, t, layer=l), params, tokens
        )
        assert shape.shape == (3, 77, 32)
    out = jax.eval_shape(
        lambda p, t: m.apply({"params": p}, t, method=ct.ClipTextTransformer.encode_all),
        params,
        tokens,
    )
    assert out["block_states"].shape == (2, 3, 77, 32)
    assert out["pooled"].shape == (3, 16)
    with pytest.raises(ValueError, match="tokens must be"):
        jax.eval_shape(m.apply, {"params": params}, jnp.zeros((3, 78), jnp.int32))
    with pytest.raises(TypeError, match="integer"):
        jax.eval_shape(m.apply, {"params": params}, jnp.zeros((3, 77), jnp.float32))
    with pytest.raises(ValueError, match="divisible"):
        ct.ClipTextConfig(width=30, heads=4)
    # bf16 compute keeps float32 params
    y = ct.encode_tokens(params, tokens, dataclasses.replace(c, dtype="bfloat16"))
    assert y.dtype == jnp.bfloat16 and y.shape == (3, 77, 32)


def test_matches_float64_reference_and_spec_choices():
    """eps 1e-5 and exact GELU against docs/models.md (numeric traps), on inputs where the alternatives differ."""
    for cfg in (ct.vit_h14(), ct.vit_h14_hf(), ct.tiny()):
        assert cfg.ln_eps == 1e-5
    c = SMALL
    # Small embeddings: block 0's LayerNorm input variance (~1e-5) is comparable to eps.
    params = _random_params(c, seed=1, emb_std=3e-3)
    tokens = np.random.default_rng(2).integers(0, c.vocab_size, (2, 77)).astype(np.int32)
    y = np.asarray(ct.encode_tokens(params, jnp.asarray(tokens), c, "last"))
    ref = _np_reference(params, c, tokens, n_blocks=2)
    err = _max_rel(y, ref)
    assert err < 1e-5, err
    err_eps = _max_rel(y, _np_reference(params, c, tokens, 2, eps=1e-6))
    err_tanh = _max_rel(y, _np_reference(params, c, tokens, 2, gelu="tanh"))
    assert err_eps > 100 * err and err_eps > 1e-4, (err, err_eps)
    assert err_tanh > 10 * err, (err, err_tanh)
    # penultimate = one block fewer
    y_pen = np.asarray(ct.encode_tokens(params, jnp.asarray(tokens), c, "penultimate"))
    assert _max_rel(y_pen, _np_reference(params, c, tokens, n_blocks=1)) < 1e-5


def test_causal_mask_matters():
    c = SMALL
    params = _random_params(c, seed=3)
    tokens = np.random.default_rng(4).integers(0, 1000, (1, 77)).astype(np.int32)
    changed = tokens.copy()
    changed[0, 5] += 1
    y0, y1 = (
        np.asarray(ct.encode_tokens(params, jnp.asarray(t), c, "last")) for t in (tokens, changed)
    )
    np.testing.assert_allclose(y0[0, :5], y1[0, :5], rtol=0, atol=1e-6)  # past never sees future
    assert np.abs(y0[0, 5:] - y1[0, 5:]).max(axis=-1).min() > 1e-3  # every later position moves
    # and the module is not the unmasked computation
    ref_nomask = _np_reference(params, c, tokens, n_blocks=2, causal=False)
    assert _max_rel(y0, ref_nomask) > 1e-2


def test_sharded_equals_single_device(cpu_mesh):
    c = SMALL
    params = _random_params(c, seed=5)
    tokens = np.random.default_rng(6).integers(0, c.vocab_size, (8, 77)).astype(np.int32)
    ref = np.asarray(ct.encode_tokens(params, jnp.asarray(tokens), c, "penultimate"))
    shard = param_shardings(params, cpu_mesh, min_size=1024)
    p_sh = jax.device_put(params, shard)
    assert p_sh["token_embedding"]["embedding"].sharding.spec != P()  # really split
    t_sh = jax.device_put(tokens, batch_sharding(cpu_mesh, 2))
    y = ct.encode_tokens(p_sh, t_sh, c, "penultimate")
    assert isinstance(y.sharding, NamedSharding)
    assert _max_rel(y, ref) < 1e-6


# ----------------------------------------------------------------------------- converter
def _to_hf(sd: dict, width: int, layers: int, prefix: str = PFX) -> dict:
    """Rename an open_clip text state dict into diffusers/HF `CLIPTextModel` keys, keeping the
    first `layers` blocks: the form SD 2.x ships in `text_encoder/` (a synthetic check: no real
    HF file is involved)."""
    p, h = prefix, "text_model."
    out = {
        h + "embeddings.token_embedding.weight": sd[p + "token_embedding.weight"],
        h + "embeddings.position_embedding.weight": sd[p + "positional_embedding"],
        h + "embeddings.position_ids": np.arange(77, dtype=np.int64)[None],
        h + "final_layer_norm.weight": sd[p + "ln_final.weight"],
        h + "final_layer_norm.bias": sd[p + "ln_final.bias"],
    }
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1"}
    names |= {"mlp.c_proj": "mlp.fc2", "attn.out_proj": "self_attn.out_proj"}
    for i in range(layers):
        k, e = f"{p}transformer.resblocks.{i}.", f"{h}encoder.layers.{i}."
        for j, n in enumerate("qkv"):
            sl = slice(j * width, (j + 1) * width)
            out[e + f"self_attn.{n}_proj.weight"] = sd[k + "attn.in_proj_weight"][sl]
            out[e + f"self_attn.{n}_proj.bias"] = sd[k + "attn.in_proj_bias"][sl]
        for a, b in names.items():
            for s in ("weight", "bias"):
                out[e + f"{b}.{s}"] = sd[k + f"{a}.{s}"]
    return out


def test_full_size_keys(fixtures_dir):
    full = load_full_keys(fixtures_dir / "openclip_text" / "full_keys.json")
    assert len(full) == 294
    cfg = ct.vit_h14()
    target = ct.abstract_params(cfg)
    check_table_against_keys(full, conv.openclip_table(cfg), target, ignore=conv.openclip_ignore())
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(target))
    assert n == 354_032_641 - 1  # all but logit_scale
    fake = {k: np.broadcast_to(np.float32(0), s) for k, s in full.items()}
    assert conv.infer_config(conv.select_prefix(fake, PFX), "openclip", "") == cfg
    # the SD 2.x diffusers text_encoder form of the same tower (synthetic renaming)
    hf = _to_hf(fake, 1024, 23)
    hf_cfg = ct.vit_h14_hf()
    check_table_against_keys(
        {k: v.shape for k, v in hf.items()},
        conv.hf_table(hf_cfg, "text_model."),
        ct.abstract_params(hf_cfg),
        ignore=conv.hf_ignore(),
    )
    assert conv.infer_config(conv.select_prefix(hf, "text_model."), "hf", "") == hf_cfg
    # a missing block is named
    del full[PFX + "transformer.resblocks.7.mlp.c_fc.bias"]
    with pytest.raises(ConversionError, match=r"resblocks\.7\.mlp\.c_fc\.bias"):
        check_table_against_keys(
            full, conv.openclip_table(cfg), target, ignore=conv.openclip_ignore()
        )


def test_hf_layout_synthetic(oc_fixture):
    """The diffusers layout (23 of 24 blocks, no projection) gives the same 'penultimate'."""
    sd, io, _, config = oc_fixture
    hf = _to_hf(sd, config.width, config.layers - 1)
    params, hcfg = conv.convert_state_dict(hf, heads=config.heads)
    assert (hcfg.layers, hcfg.trimmed, hcfg.embed_dim) == (2, 1, None)
    y = ct.encode_tokens(params, jnp.asarray(io["in_tokens"], jnp.int32), hcfg, "penultimate")
    assert _max_rel(y, io["out_penultimate"]) < 1e-4
    with pytest.raises(ValueError, match="cut off"):
        hcfg.blocks_for("last")
    del hf["text_model.encoder.layers.1.mlp.fc2.weight"]
    with pytest.raises(ConversionError, match=r"layers\.1\.mlp\.fc2\.weight"):
        conv.convert_state_dict(hf, hcfg)


def test_convert_strict_and_prefixes(oc_fixture):
    sd, _, params, config = oc_fixture
    assert config == ct.tiny()
    # no prefix (an open_clip text state dict) converts to the same tree
    bare = conv.select_prefix(sd, PFX)
    p2, _ = conv.convert_state_dict(bare)
    jax.tree.map(np.testing.assert_array_equal, params, p2)
    w = sd[PFX + "transformer.resblocks.1.attn.in_proj_weight"]
    np.testing.assert_array_equal(params["resblocks_1"]["attn"]["k_proj"]["kernel"], w[64:128].T)
    np.testing.assert_array_equal(params["text_projection"], sd[PFX + "text_projection"])
    # other models' keys in a whole checkpoint are not this converter's business
    p3, _ = conv.convert_state_dict({**sd, "model.diffusion_model.out.2.bias": np.zeros(4)})
    assert flatten(p3).keys() == flatten(params).keys()
    bad = dict(sd)
    bad[PFX + "transformer.resblocks.0.mlp.c_fc.weight"] = np.zeros((255, 64), np.float32)
    bad[PFX + "extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(ConversionError) as e:
        conv.convert_state_dict(bad, config)
    assert "shape mismatch for transformer.resblocks.0.mlp.c_fc.weight" in str(e.value)
    assert "unexpected key in checkpoint: extra.weight" in str(e.value)
    with pytest.raises(ConversionError, match="no OpenCLIP text tower"):
        conv.detect_layout({"foo": np.zeros(1)})


def test_cli_roundtrip(oc_fixture, fixtures_dir, tmp_path):
    from safetensors.numpy import save_file

    from convert.cli import call
    from convert.clip_text.__main__ import main
    from maestro_jax.checkpoints import load_params

    sd, _, params, config = oc_fixture
    src = fixtures_dir / "openclip_text" / "state_dict.safetensors"
    assert call(main, [str(src), str(tmp_path / "oc"), "--heads", "4"]) == 0
    loaded, meta = load_params(tmp_path / "oc")
    assert ct.ClipTextConfig.from_dict(meta) == config and meta["layout"] == "openclip"
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    # a diffusers pipeline folder: <root>/text_encoder/{model.safetensors, config.json}
    te = tmp_path / "sd21" / "text_encoder"
    te.mkdir(parents=True)
    save_file(_to_hf(sd, 64, 2), str(te / "model.safetensors"))
    (te / "config.json").write_text('{"num_attention_heads": 4, "hidden_act": "gelu"}')
    assert call(main, [str(tmp_path / "sd21"), str(tmp_path / "hf")]) == 0
    _, meta = load_params(tmp_path / "hf")
    assert (meta["layers"], meta["trimmed"], meta["heads"]) == (2, 1, 4)
