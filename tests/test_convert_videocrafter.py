"""One VideoCrafter2-style checkpoint (UNet + VAE + text tower + schedule) -> the folder that
generation reads (`generation.weights` checks it, `runner.build_models` loads it); built from the
three fixtures' original state dicts."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from convert.common import ConversionError, flatten
from convert.videocrafter import convert_videocrafter
from maestro_jax.checkpoints import load_params
from maestro_jax.diffusion import Schedule
from maestro_jax.generation import config as gen_config
from maestro_jax.generation import models as gen_models
from maestro_jax.generation import runner as gen
from maestro_jax.generation import sampling
from maestro_jax.generation import weights as gen_weights
from maestro_jax.models import clip_text as ct
from maestro_jax.models.unet import UNetConfig
from maestro_jax.models.vae import VAEConfig


@pytest.fixture(scope="module")
def parts(fixtures_dir):
    sd = {}
    for name in ("vc2_unet3d", "vc2_vae", "openclip_text"):
        sd.update({k: v.astype(np.float32) for k, v in
                   load_file(str(fixtures_dir / name / "state_dict.safetensors")).items()})  # fmt: skip
    sd["alphas_cumprod"] = np.asarray(Schedule.vc2().alphas_cumprod)
    sd["scale_arr"] = np.ones(1400, np.float32)
    cfgs = {n: json.loads((fixtures_dir / n / "config.json").read_text())
            for n in ("vc2_unet3d", "vc2_vae", "openclip_text")}  # fmt: skip
    unet = UNetConfig.from_ldm_vc(cfgs["vc2_unet3d"]["params"])
    vae = VAEConfig.from_ldm(cfgs["vc2_vae"]["params"]["ddconfig"], 4)
    text = ct.from_open_clip_config(cfgs["openclip_text"]["open_clip_model_config"])
    return sd, unet, vae, text


def test_convert_and_load(parts, tmp_path):
    sd, unet, vae, text = parts
    out = convert_videocrafter(sd, tmp_path / "vc2", unet, vae, text)
    for sub in ("unet", "vae", "text"):
        params, meta = load_params(out / sub)
        assert flatten(params), sub
    p, meta = load_params(out / "unet")
    assert UNetConfig(**meta["unet"]) == unet
    got = flatten(p)
    assert any("temporal_conv" in k for k in got), list(got)[:5]


def _cfg(out, bpe=None, dtype="float32"):
    cfg = gen_config.get_config()
    cfg.checkpoint, cfg.bpe_path, cfg.dtype = str(out), str(bpe or ""), dtype
    return cfg


def test_load_models_reads_the_folder(parts, tmp_path, fixtures_dir):
    sd, unet, vae, text = parts
    out = convert_videocrafter(sd, tmp_path / "vc2", unet, vae, text)
    bpe = fixtures_dir / "clip_tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
    m = gen.build_models(_cfg(out, bpe), need_audio=False)
    assert m.spec.unet.model_channels == unet.model_channels
    assert m.spec.vae.ch == vae.ch and m.spec.text.width == text.width
    assert m.audio is None and m.separator is None
    emb = np.asarray(gen_models.null_context(m))
    assert emb.shape == (77, text.width) and np.isfinite(emb).all()


def test_stray_or_bad_keys_are_named(parts, tmp_path):
    sd, unet, vae, text = parts
    bad = dict(sd, **{"model_ema.decay": np.zeros(())})
    with pytest.raises(ConversionError, match="model_ema.decay"):
        convert_videocrafter(bad, tmp_path / "x", unet, vae, text)
    bad = dict(sd, alphas_cumprod=np.linspace(1, 0, 1000).astype(np.float32))
    with pytest.raises(ConversionError, match="alphas_cumprod"):
        convert_videocrafter(bad, tmp_path / "y", unet, vae, text)
    bad = {k: v for k, v in sd.items() if not k.endswith("ln_final.weight")}
    with pytest.raises(ConversionError, match="ln_final.weight"):
        convert_videocrafter(bad, tmp_path / "z", unet, vae, text)


def test_frames_must_match_the_checkpoint(parts, tmp_path, fixtures_dir):
    sd, unet, vae, text = parts
    out = convert_videocrafter(sd, tmp_path / "vc2", unet, vae, text, trained_frames=4)
    spec = gen_weights.base_spec(_cfg(out))  # the folder's configs: no weight is read
    assert spec.trained_frames == 4
    sampling.VideoSpec(4, 32, 32).check(spec)
    with pytest.raises(ValueError, match="do not match the checkpoint, which was trained with 4"):
        sampling.VideoSpec(16, 32, 32).check(spec)
