"""`Config.from_preset` / `from_folder` of the model configs: presets equal the old preset
functions, and the config.json layouts written by the converters and the trainers' exports
read back to the same config."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import pytest

from maestro_jax.models import clip_text
from maestro_jax.models import imagebind as ib
from maestro_jax.models.cim import CIMConfig
from maestro_jax.models.unet import UNetConfig
from maestro_jax.models.vae import VAEConfig


def _write(folder, meta):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(meta, default=str))
    return folder


def test_presets_match_the_preset_functions():
    assert UNetConfig.from_preset("sd21") == UNetConfig.sd21()
    assert UNetConfig.from_preset("vc2") == UNetConfig.vc2() == UNetConfig()
    assert UNetConfig.tiny(temporal=False) == UNetConfig.from_preset(
        "tiny", temporal=False, fps_cond=False
    )
    assert not UNetConfig.from_preset("sd21").temporal
    assert VAEConfig.from_preset("tiny", resolution=16).resolution == 16
    assert clip_text.vit_h14_hf() == clip_text.ClipTextConfig.from_preset("vit_h14_hf")
    assert clip_text.tiny(width=32).width == 32
    assert ib.imagebind_huge() == ib.ImageBindConfig.from_preset("huge")
    assert ib.ImageBindConfig.from_preset("tiny").audio_width == 32
    assert CIMConfig.release(num_queries=4) == CIMConfig.from_preset("release", num_queries=4)
    assert CIMConfig.from_preset("toy", embed_dim=32).dim == 64
    with pytest.raises(ValueError, match=r"unknown UNetConfig preset 'sd15' \(known: vc2, sd21"):
        UNetConfig.from_preset("sd15")


def test_from_folder_round_trips(tmp_path):
    # convert.unet / toy exports: {"unet": dataclasses.asdict(cfg), ...}
    u = UNetConfig.tiny(temporal=False, dtype="bfloat16")
    d = _write(tmp_path / "unet", {"unet": dataclasses.asdict(u), "kind": "sd21"})
    assert UNetConfig.from_folder(d) == u
    assert UNetConfig.from_folder(d, dtype="float32").dtype == "float32"
    # convert.vae: {"vae": cfg.to_dict()} (dtype by name)
    v = VAEConfig.tiny(attn_resolutions=(8,))
    d = _write(tmp_path / "vae", {"model": "AutoencoderKL", "vae": v.to_dict()})
    assert VAEConfig.from_folder(d) == v
    assert VAEConfig.from_folder(d, dtype=jnp.bfloat16).dtype == jnp.bfloat16
    # convert.clip_text / the toy text export: the fields at the top level, plus extras
    t = clip_text.tiny(embed_dim=None)
    d = _write(tmp_path / "text", {**t.to_dict(), "model": "clip_text", "layer": "last"})
    assert clip_text.ClipTextConfig.from_folder(d) == t
    # convert.imagebind: {"imagebind": cfg.to_dict()}; older folders: {"config": ...}
    i = ib.ImageBindConfig.from_preset("tiny", dtype=jnp.bfloat16)
    d = _write(tmp_path / "ib", {"imagebind": i.to_dict()})
    assert ib.ImageBindConfig.from_folder(d) == i
    d = _write(tmp_path / "ib_old", {"config": i.to_dict()})
    assert ib.ImageBindConfig.from_folder(d) == i
    # convert.cim and the CIM trainer's export: {"cim": cfg.to_dict(), ...}
    c = CIMConfig.from_preset("tiny", num_queries=4, embed_dim=32, output_dim=32)
    d = _write(tmp_path / "cim", {"cim": c.to_dict(), "token_offset": 1})
    assert CIMConfig.from_folder(d) == c


def test_from_folder_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        UNetConfig.from_folder(tmp_path)
    d = _write(tmp_path / "v", {"unet": {}})
    with pytest.raises(ValueError, match=r"config.json holds no 'vae' section"):
        VAEConfig.from_folder(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"v/config.json is not valid JSON"):
        VAEConfig.from_folder(d)
