"""The toy world's training stages (`maestro_jax.toy_training`, `configs/toy.py`) and the build
orchestration (`maestro_jax.toy_world`), at a few steps on 16 x 16 frames."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toy
from maestro_jax import toy_training as tt
from maestro_jax.checkpoints import load_params
from maestro_jax.models import vae as vae_lib


def _cfg(stage: str, root, **kw):
    c = toy.get_config(stage)
    c.root = str(root)
    if stage in ("vae", "t2i", "t2v"):
        c.update(resolution=16, batch_size=1, log_every=1, checkpoint_every=1, warmup_steps=1)
    c.update(**kw)
    return c


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """text, imagebind, vae (2 steps), t2i (2 steps), t2v from t2i (2 steps)."""
    root = tmp_path_factory.mktemp("toy")
    out = {}
    for stage, steps in (("text", 0), ("imagebind", 0), ("vae", 2), ("t2i", 2), ("t2v", 2)):
        kw = {"total_steps": steps} if steps else {}
        out[stage] = tt.train(_cfg(stage, root, **kw), root / stage)
    return root, out


def test_stages_export_loadable_folders(stages):
    root, out = stages
    for stage in ("text", "imagebind", "vae", "t2i", "t2v"):
        assert (root / stage / "export" / "params").is_dir(), stage
    _, meta = load_params(root / "text" / "export")
    assert meta["tokenizer"] == "hash" and meta["width"] == toy.CONTEXT_DIM
    _, meta = load_params(root / "t2v" / "export")
    assert meta["unet"]["temporal"] and meta["trained_frames"] == toy.NUM_FRAMES
    assert meta["prediction_type"] == "eps" and meta["schedule"] == "vc2"
    _, meta = load_params(root / "t2i" / "export")
    assert not meta["unet"]["temporal"] and meta["schedule"] == "sd21-eps"
    lines = (root / "t2i" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2]
    assert all(np.isfinite(json.loads(ln)["loss"]) for ln in lines)


def test_t2v_starts_from_t2i_spatial_weights(stages, tmp_path):
    root, _ = stages
    c = _cfg("t2v", root, total_steps=2)
    model = tt._unet_stage(c, temporal=True)
    params = model[0]
    src, _ = load_params(root / "t2i" / "export")
    # a spatial tensor copied from the 2D UNet, and a temporal one the 2D UNet does not have
    a = params["input_blocks_1_1"]["proj_in"]["kernel"]
    np.testing.assert_array_equal(
        np.asarray(a), np.asarray(src["input_blocks_1_1"]["proj_in"]["kernel"])
    )
    assert "init_attn" in params and "init_attn" not in src
    # every 2D tensor lands somewhere: the 3D middle block's ResBlock after its temporal layer
    _, n = tt._overlay(params, src)
    assert n == len(jax.tree.leaves(src))
    np.testing.assert_array_equal(
        np.asarray(params["middle_block_3"]["in_layers_2"]["kernel"]),
        np.asarray(src["middle_block_2"]["in_layers_2"]["kernel"]),
    )


def test_resume_continues_the_step_count(stages, tmp_path):
    root, _ = stages
    c = _cfg("vae", root, total_steps=1)
    tt.train(c, tmp_path / "vae")
    c = _cfg("vae", root, total_steps=3)
    out = tt.train(c, tmp_path / "vae")
    steps = [
        json.loads(ln)["step"]
        for ln in (tmp_path / "vae" / "metrics.jsonl").read_text().splitlines()
    ]
    assert out["step"] == 3 and steps == [1, 2, 3]


def test_vae_latent_rescale_is_exact():
    cfg = vae_lib.VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16)
    model = vae_lib.AutoencoderKL(cfg)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)), jnp.float32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), x[:1])["params"]
    p = tt.random_like(abstract, 0)
    q = tt.rescale_vae_latents(model, p, {"x": x})
    enc = lambda prm: model.apply({"params": prm}, x, method=model.encode)
    dec = lambda prm, z: model.apply({"params": prm}, z, method=model.decode)
    zp, zq = vae_lib.posterior_mean(enc(p)), vae_lib.posterior_mean(enc(q))
    assert float(jnp.std(zq)) == pytest.approx(1.0 / vae_lib.SCALE_FACTOR, rel=1e-4)
    c = float(jnp.std(zq) / jnp.std(zp))
    np.testing.assert_allclose(zq, c * zp, rtol=1e-4, atol=1e-4)
    # the decoder sees the same thing: decode(c z) with q == decode(z) with p
    np.testing.assert_allclose(dec(q, zq), dec(p, zp), rtol=1e-4, atol=1e-4)
    # the posterior's std scales by c too (logvar + 2 log c)
    lq, lp = vae_lib.posterior_logvar(enc(q)), vae_lib.posterior_logvar(enc(p))
    np.testing.assert_allclose(lq - lp, 2 * np.log(c), atol=1e-3)


def test_bad_configs_are_named(tmp_path):
    c = _cfg("t2i", tmp_path)
    with pytest.raises(ValueError, match="vae_dir"):
        tt.train(c, tmp_path / "w")
    c = _cfg("vae", tmp_path, task="nope")
    with pytest.raises(ValueError, match="config.task"):
        tt.train(c, tmp_path / "w")
    with pytest.raises(ValueError, match="unknown toy variant"):
        toy.get_config("t2x")


def test_root_moves_every_path():
    c = toy.get_config("t2v")
    c.root = "/x/y"
    assert c.vae_dir == "/x/y/vae/export" and c.init_from == "/x/y/t2i/export"
    c = toy.get_config("cim")
    c.root = "/x/y"
    assert c.model.unet.params == "/x/y/t2i/export"
    assert c.model.imagebind.params == "/x/y/imagebind/export"
