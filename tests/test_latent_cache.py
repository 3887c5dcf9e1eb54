"""maestro_jax.data.latent_cache: the VAE latent side cache and its join in maestro_jax.data.pipeline."""

from __future__ import annotations

import json
import logging
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import cache_latents as cache_latents_cmd
from maestro_jax import cli
from maestro_jax.checkpoints import save_params
from maestro_jax.data import latent_cache as CL
from maestro_jax.data.synthetic import write_synthetic_dataset
from maestro_jax.models import vae as vae_lib
from maestro_jax.nn.random_init import random_like

N_TRAIN, N_TEST, RES = 10, 2, 16
PART = 4  # train: parts of 4, 4, 2 records; batch 3 pads inside parts


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("latcache")
    data = root / "data"
    counts = write_synthetic_dataset(data, num_clips=N_TRAIN + N_TEST, resolution=RES, num_test=2)
    assert counts == {"train": N_TRAIN, "test": N_TEST}
    cfg = vae_lib.VAEConfig.tiny()
    params = random_like(vae_lib.init_shapes(cfg), seed=3)
    vae_dir = save_params(
        root / "vae", params, {"model": "AutoencoderKL", "vae": cfg.to_dict(), "source": "a"}
    )
    other = save_params(
        root / "vae_other", params, {"model": "AutoencoderKL", "vae": cfg.to_dict(), "source": "b"}
    )
    # Through the CLI: one jitted encoder for both splits.
    rc = cli.call(
        cache_latents_cmd.main,
        ["--data", str(data), "--vae", str(vae_dir), "--batch", "3"]
        + ["--part_size", str(PART), "--no_progress"],
    )
    assert rc == 0
    return {"root": root, "data": data, "vae": vae_dir, "other": other, "params": params}


def _reference(env, frames: np.ndarray) -> np.ndarray:
    """The trainer's in-step encoding (`frames_to_latents`: uint8 -> [-1, 1] -> encode_frames,
    posterior mean) of the same frames."""
    from maestro_jax.training.cim_loss import frames_to_latents

    models = types.SimpleNamespace(vae=vae_lib.VAEConfig.tiny())
    fn = jax.jit(lambda p, f: frames_to_latents(models, p, f, None))
    return np.asarray(fn(env["params"], jnp.asarray(frames)))


def test_cache_layout_and_meta(env):
    meta = CL.read_meta(env["data"])
    assert meta["mode"] == "mean" and meta["scale_factor"] == vae_lib.SCALE_FACTOR
    assert meta["vae"]["path"] == str(env["vae"])
    assert meta["vae"]["config_sha256"] == CL.vae_identity(env["vae"])["config_sha256"]
    assert meta["splits"]["train"]["num_parts"] == 3 and meta["splits"]["test"]["num_parts"] == 1
    assert meta["splits"]["train"]["shape"] == [5, RES // 2, RES // 2, 4]
    sizes = [np.load(CL.part_path(env["data"], "train", p)).shape[0] for p in range(3)]
    assert sizes == [4, 4, 2]
    assert CL.cache_status(env["data"], "train", env["vae"])[0] == "complete"


def test_pipeline_latents_match_encode_frames(env):
    from maestro_jax.data.pipeline import make_dataset

    keys = ("frames", "latents", "clip_id", "mel")
    ds = make_dataset(
        env["data"], "train", batch_size=5, seed=1, num_epochs=1, keys=keys, vae=env["vae"]
    )
    n = 0
    for batch in ds:
        lat, frames = batch["latents"], batch["frames"]
        assert lat.dtype == np.float32 and lat.shape == (5, 5, RES // 2, RES // 2, 4)
        np.testing.assert_allclose(lat, _reference(env, frames), rtol=1e-5, atol=1e-5)
        n += len(lat)
    assert n == N_TRAIN
    # The test split too; latents=False and keys without 'latents' skip the join.
    b = next(iter(make_dataset(env["data"], "test", batch_size=2, seed=0, keys=keys)))
    np.testing.assert_allclose(b["latents"], _reference(env, b["frames"]), rtol=1e-5, atol=1e-5)
    b = next(iter(make_dataset(env["data"], "test", batch_size=2, seed=0, latents=False)))
    assert "latents" not in b and "frames" in b
    b = next(iter(make_dataset(env["data"], "test", batch_size=2, seed=0, keys=("mel",))))
    assert set(b) == {"mel"}
    b = next(
        iter(make_dataset(env["data"], "test", batch_size=2, seed=0, keys=("mel",), latents=True))
    )
    assert set(b) == {"mel", "latents"}


def test_iterator_state_with_latents(env):
    from maestro_jax.data.pipeline import make_dataset

    def make():
        return make_dataset(
            env["data"], "train", batch_size=3, seed=11, keys=("clip_id", "latents")
        )

    it = iter(make())
    for _ in range(4):  # crosses the first epoch boundary
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(4)]
    it2 = iter(make())
    it2.set_state(state)
    got = [next(it2) for _ in range(4)]
    for w, g in zip(want, got):
        assert list(w["clip_id"]) == list(g["clip_id"])
        np.testing.assert_array_equal(w["latents"], g["latents"])


def test_other_vae_refused(env):
    from maestro_jax.data.pipeline import make_dataset

    with pytest.raises(CL.LatentCacheError, match="made with the VAE"):
        make_dataset(env["data"], "train", batch_size=2, seed=0, vae=env["other"])
    with pytest.raises(CL.LatentCacheError, match="randomly initialised"):
        make_dataset(env["data"], "train", batch_size=2, seed=0, vae="")
    # Resuming the cache with another VAE or mode is refused too (before any compute).
    with pytest.raises(CL.LatentCacheError, match="other settings"):
        CL.cache_latents(env["data"], env["other"], part_size=PART, progress=False)
    with pytest.raises(CL.LatentCacheError, match="mode"):
        CL.cache_latents(env["data"], env["vae"], part_size=PART, mode="sample", progress=False)
    # A moved copy of the same VAE folder (same config) is accepted.
    moved = env["root"] / "vae_moved"
    save_params(moved, env["params"], json.loads((env["vae"] / "config.json").read_text()))
    make_dataset(env["data"], "test", batch_size=2, seed=0, vae=moved)


def test_resume_and_partial_cache(env, caplog):
    from maestro_jax.data.pipeline import make_dataset

    parts = [CL.part_path(env["data"], "train", p) for p in range(3)]
    before = [p.stat().st_mtime_ns for p in parts]
    want = np.load(parts[1])
    os.unlink(parts[1])
    # A partial cache: 'auto' warns and falls back to frames, True refuses.
    with caplog.at_level(logging.WARNING, logger="maestro_jax.data.pipeline"):
        b = next(iter(make_dataset(env["data"], "train", batch_size=2, seed=0, vae=env["vae"])))
    assert "latents" not in b and "frames" in b
    assert "partial" in caplog.text and "1 of 3 parts missing" in caplog.text
    with pytest.raises(CL.LatentCacheError, match="partial"):
        make_dataset(env["data"], "train", batch_size=2, seed=0, latents=True)
    # Resume: only the missing part is computed; the others are left untouched.
    # (part_size defaults to the existing cache's)
    stats = CL.cache_latents(env["data"], env["vae"], batch_size=3, progress=False)
    assert stats == {"train": {"computed": 1, "skipped": 2}, "test": {"computed": 0, "skipped": 1}}
    assert [p.stat().st_mtime_ns for p in parts][::2] == before[::2]
    np.testing.assert_allclose(np.load(parts[1]), want, rtol=1e-6, atol=1e-6)
    assert not list(parts[0].parent.glob(".*.tmp"))


def test_stale_cache_and_sample_mode(env, tmp_path):
    """A cache of other records is ignored ('auto') / refused (True); sample mode draws one
    posterior sample per record, independent of the batching; float16 storage."""
    from maestro_jax.data.pipeline import make_dataset

    data = tmp_path / "d"
    write_synthetic_dataset(data, num_clips=3, resolution=RES, seed=5)
    a = CL.cache_latents(
        data,
        env["vae"],
        mode="sample",
        batch_size=3,
        part_size=2,
        seed=7,
        dtype="float16",
        splits=["train"],
        progress=False,
    )
    assert a == {"train": {"computed": 2, "skipped": 0}}
    lat = np.concatenate([np.load(CL.part_path(data, "train", p)) for p in range(2)])
    assert lat.dtype == np.float16  # stored half, yielded float32
    b = next(
        iter(
            make_dataset(
                data,
                "train",
                batch_size=3,
                seed=0,
                shuffle=False,
                vae=env["vae"],
                keys=("frames", "latents"),
            )
        )
    )
    mean = _reference(env, b["frames"])
    assert b["latents"].dtype == np.float32
    np.testing.assert_allclose(b["latents"], lat, rtol=1e-6)
    assert np.abs(lat - mean).mean() > 0.05  # a draw (std ~ 0.18), not the mean
    # The draw is mean + std * N(0, 1) with the record's own key: reproduce record 2's.
    cfg = vae_lib.VAEConfig.tiny()
    x = jnp.asarray(b["frames"][2]).astype(jnp.float32) / 127.5 - 1.0
    mom = vae_lib.AutoencoderKL(cfg).apply(
        {"params": env["params"]}, x, method=vae_lib.AutoencoderKL.encode
    )
    ref = vae_lib.posterior_sample(mom, jax.random.fold_in(jax.random.key(7), 2))
    np.testing.assert_allclose(lat[2], np.asarray(ref) * vae_lib.SCALE_FACTOR, rtol=2e-3, atol=2e-4)
    # The dataset changes under the cache: its records no longer match.
    meta = CL.read_meta(data)
    meta["splits"]["train"]["clip_ids_sha256"] = "0" * 64
    (data / "latents" / "cache.json").write_text(json.dumps(meta))
    b = next(iter(make_dataset(data, "train", batch_size=2, seed=0)))
    assert "latents" not in b
    with pytest.raises(CL.LatentCacheError, match="other records"):
        make_dataset(data, "train", batch_size=2, seed=0, latents=True)


def test_config_turns_cache_on():
    from maestro_jax.training.cim_config import get_config

    for v in ("vggsound", "release", "runlocal"):
        assert get_config(v).data.use_latent_cache is True
    assert CL.SCALE_FACTOR == vae_lib.SCALE_FACTOR


def test_trainer_reads_the_cache(env, tmp_path):
    """The trainer's data stream takes `latents` from a complete cache of its own VAE (no
    frames decoded), and frames when the cache is switched off."""
    from maestro_jax.training import cim_config as cim_configs
    from maestro_jax.training import data as training_data

    cfg = cim_configs.get_config("runlocal")
    cfg.data.dir = str(env["data"])
    cfg.data.split = "train"
    cfg.model.vae.params = str(env["vae"])
    it, classes, _ = training_data.open_data(cfg, tmp_path, 2)
    batch = next(it)
    assert "latents" in batch and "frames" not in batch
    assert batch["latents"].shape[0] == 2 and classes
    cfg.data.use_latent_cache = False
    it, _, _ = training_data.open_data(cfg, tmp_path, 2)
    assert "frames" in next(it)
