"""Lean generation on small converted folders: every file checked (errors naming the flag) before
any weight is read, the stored CLIP vocabulary, only what a run uses loaded (the ImageBind audio
trunk alone, no VAE encoder, no audio for text-to-video), one copy of the weights (device arrays
in the compute dtype), no cache that keeps weights alive, and the VAE decode in frame chunks."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import shutil
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from maestro_jax.audio import encoder as ae
from maestro_jax.checkpoints import save_params
from maestro_jax.generation import config as gen_config
from maestro_jax.generation import models as gen_models
from maestro_jax.generation import runner as gen
from maestro_jax.generation import sampling
from maestro_jax.generation import weights as gen_weights
from maestro_jax.generation.jobs import Job, JobError
from maestro_jax.models.tokenizer import BPE_FILENAME, ClipTokenizer


def _write_vc2(root: Path, bpe: Path | None = None, trained_frames: int = 16) -> Path:
    """A converted-looking VideoCrafter2 folder of the tiny random models (float32)."""
    m = gen_models.init_random_models(0, with_audio=False)
    s = m.spec
    save_params(root / "unet", m.params["unet"],
                {"unet": dataclasses.asdict(s.unet), "trained_frames": trained_frames})  # fmt: skip
    vae = {**m.params["vae"], "encoder": {"w": np.ones((4, 4), np.float32)}}
    save_params(root / "vae", vae, {"vae": s.vae.to_dict()})
    meta, extra = {**s.text.to_dict(), "tokenizer": "clip_bpe"}, {}
    if bpe is not None:
        meta |= {"bpe": BPE_FILENAME, "bpe_sha256": hashlib.sha256(bpe.read_bytes()).hexdigest()}
        extra = {BPE_FILENAME: bpe}
    save_params(root / "text", m.params["text"], meta, files=extra)
    return root


def _write_audio(root: Path) -> tuple[Path, Path]:
    """An ImageBind folder of audio and vision params, and a CIM folder."""
    spec = gen_models.tiny_spec(num_queries=4)
    enc = ae.init_random(spec.imagebind, spec.cim, seed=5)
    vision = {"w": np.full((64, 64), 3.0, np.float32)}
    save_params(root / "imagebind", {"audio": enc.ib_params, "vision": vision},
                {"imagebind": dataclasses.asdict(spec.imagebind)})  # fmt: skip
    save_params(root / "cim", enc.cim_params, {"cim": dataclasses.asdict(spec.cim)})
    return root / "imagebind", root / "cim"


@pytest.fixture(scope="module")
def folders(tmp_path_factory, fixtures_dir):
    root = tmp_path_factory.mktemp("weights")
    bpe = fixtures_dir / "clip_tokenizer" / BPE_FILENAME
    ib, cim = _write_audio(root)
    return {
        "bpe": bpe, "imagebind": ib, "cim": cim,
        "vc2": _write_vc2(root / "vc2", bpe), "vc2_nobpe": _write_vc2(root / "vc2_nobpe"),
    }  # fmt: skip


def _cfg(folders, **kw):
    c = gen_config.get_config()
    c.checkpoint, c.imagebind_checkpoint, c.cim_checkpoint = (
        str(folders["vc2"]), str(folders["imagebind"]), str(folders["cim"]))  # fmt: skip
    c.height = c.width = 32
    c.steps, c.n_d, c.num_queries, c.compilation_cache = 2, 1, 4, ""
    c.update(kw)
    return c


@pytest.fixture
def no_weights_read(monkeypatch):
    """Any array restore fails: the checks must come first."""

    def refuse(*a, **k):
        raise AssertionError("a weight was read before the checks")

    monkeypatch.setattr(ocp.Checkpointer, "restore", refuse)
    monkeypatch.delenv("MAESTRO_CLIP_BPE", raising=False)


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"checkpoint": ""}, "set --config.checkpoint"),
        ({"checkpoint": "/nonexistent/vc2"}, "--config.checkpoint=/nonexistent/vc2"),
        ({"bpe_path": "/nonexistent/bpe.txt.gz"}, "--config.bpe_path=/nonexistent/bpe.txt.gz"),
        ({"checkpoint": "NOBPE"}, "pass --config.bpe_path=FILE"),
        ({"imagebind_checkpoint": ""}, "set --config.imagebind_checkpoint"),
        ({"cim_checkpoint": "/nonexistent/cim"}, "--config.cim_checkpoint=/nonexistent/cim"),
        ({"mixture": True}, "set --config.separator_checkpoint"),
    ],
)
def test_errors_name_the_flag_before_any_weight_is_read(
    folders, audio_dir, tmp_path, no_weights_read, change, needle
):
    change = dict(change)
    mixture = change.pop("mixture", False)
    if change.get("checkpoint") == "NOBPE":
        change["checkpoint"] = str(folders["vc2_nobpe"])
    cfg = _cfg(folders, **change)
    stems = [str(audio_dir / "dog.wav"), str(audio_dir / "cat.wav")]
    job = (Job(name="m", mixture=stems[0], queries=["a", "b"]) if mixture
           else Job(name="j", audio=stems))  # fmt: skip
    out = tmp_path / "out"
    with pytest.raises(gen.InputError, match=needle.replace(".", r"\.")):
        gen.run(cfg, [job], out, strict=True)
    assert not out.exists()  # no output folder for a run that wrote nothing


def test_stored_vocabulary_needs_no_flag(folders, tmp_path, monkeypatch):
    monkeypatch.delenv("MAESTRO_CLIP_BPE", raising=False)
    tok = gen_weights.clip_tokenizer(_cfg(folders))
    assert isinstance(tok, ClipTokenizer) and tok.bpe_path.parent == folders["vc2"] / "text"
    assert (tok("a dog") == ClipTokenizer(folders["bpe"])("a dog")).all()
    damaged = shutil.copytree(folders["vc2"], tmp_path / "vc2")
    (damaged / "text" / BPE_FILENAME).write_bytes(b"not a vocabulary")
    with pytest.raises(gen.InputError, match="missing or damaged: pass --config.bpe_path"):
        gen_weights.clip_tokenizer(_cfg(folders, checkpoint=str(damaged)))


def test_loads_only_what_the_run_uses(folders, monkeypatch):
    restored = []
    orig = ocp.Checkpointer.restore

    def spy(self, directory, *a, args=None, **k):
        item = getattr(args, "item", None)
        restored.append((Path(directory).parent.name, sorted(item) if item else None))
        return orig(self, directory, *a, args=args, **k)

    monkeypatch.setattr(ocp.Checkpointer, "restore", spy)
    cfg = _cfg(folders, dtype="bfloat16")
    pool = gen.ModelPool()
    t2v = gen.build_models(cfg, need_audio=False, prompts=["a dog"], pool=pool)
    assert t2v.audio is None and t2v.separator is None
    assert [d for d, _ in restored][0] == "text"  # read first, used, let go before the UNet
    assert {d for d, _ in restored} == {"unet", "vae", "text"}  # no ImageBind, CIM or separator
    assert "text" not in t2v.params and set(t2v.contexts) == {"", "a dog"}
    np.testing.assert_array_equal(gen_models.text_context(t2v, "a dog")[0], t2v.contexts["a dog"])
    assert [keys for d, keys in restored if d == "vae"] == [list(gen_models.VAE_DECODER_KEYS)]
    n = len(restored)
    m = gen.build_models(cfg, pool=pool)  # the same pool: only the audio parts are read now
    assert {d for d, _ in restored[n:]} == {"imagebind", "cim"}
    assert ("imagebind", ["audio"]) in restored[n:]  # the audio trunk alone, not vision
    assert m.params["unet"] is t2v.params["unet"]
    # one copy: device arrays in the compute dtype, no host tree beside them
    leaves = jax.tree.leaves(m.params)
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {
        jnp.dtype("bfloat16")
    }
    assert set(m.params) == {"unet", "vae", "imagebind_audio", "cim"}
    with pytest.raises(ValueError, match="text tower is not loaded"):
        gen_models.text_context(m, "a cat")
    assert set(m.params["vae"]) == set(gen_models.VAE_DECODER_KEYS)
    hash(m.spec)  # static: a jit argument


def test_no_cache_keeps_the_weights(cfg_tiny, audio_dir):
    from maestro_jax import mosaic
    from maestro_jax.audio import load_audio

    m = gen.build_models(cfg_tiny)
    probe = weakref.ref(jax.tree.leaves(m.params["unet"])[0])
    spec = sampling.VideoSpec(cfg_tiny.num_frames, cfg_tiny.height, cfg_tiny.width)
    tokens = ae.encode_stems(m.audio, [load_audio(audio_dir / "dog.wav")] * 2)
    job = sampling.prepare_job(m, tokens, *mosaic.preset("LR"), spec, 0)
    lat = sampling.sample_maestro(m, [job], gen._settings(cfg_tiny, 0))
    sampling.decode(m, lat)
    del m, job, tokens, lat
    gc.collect()
    assert probe() is None


@pytest.fixture(scope="module")
def cfg_tiny():
    c = gen_config.get_config("runlocal")
    c.steps, c.n_d, c.num_frames, c.mode = 1, 0, 2, "vanilla"  # a small compile
    return c


def test_chunked_decode_equals_full(cfg_tiny):
    m = gen.build_models(cfg_tiny, need_audio=False)
    lat = jax.random.normal(jax.random.key(0), (2, 3, 16, 16, 4))
    full = sampling.decode(m, lat, frame_chunk=6)
    for chunk in (1, 2, 4):
        np.testing.assert_array_equal(sampling.decode(m, lat, frame_chunk=chunk), full)
    assert full.shape == (2, 3, 32, 32, 3) and full.dtype == np.uint8


def test_auto_frame_chunk():
    vae = gen_models.tiny_spec().vae
    per = sampling.decode_bytes_per_frame(vae, (16, 16))
    assert sampling.auto_frame_chunk(vae, 16, (16, 16), budget=50 * per) == 16
    assert sampling.auto_frame_chunk(vae, 16, (16, 16), budget=5 * per) == 4  # a divisor <= 5
    assert sampling.auto_frame_chunk(vae, 6, (16, 16), budget=5 * per) == 3
    assert sampling.auto_frame_chunk(vae, 16, (16, 16), budget=per // 2) == 1
    assert 0 < sampling.decode_budget_bytes() <= sampling.HOST_DECODE_BYTES  # a CPU


def test_t2v_takes_no_n_d(audio_dir):
    """N_D only concerns Maestro jobs: a text-to-video job with fewer steps than N_D is fine."""
    c = gen_config.t2v_config("runlocal")
    c.steps, c.n_d = 1, 6
    plan = gen.plan_job(Job(name="t", prompt="a dog"), c, {"resolutions": ()})
    assert plan.kind == "t2v" and plan.n_d == 0
    stems = [str(audio_dir / "dog.wav"), str(audio_dir / "cat.wav")]
    with pytest.raises(JobError, match="N_D = 6 is larger than the 1 DDIM steps"):
        gen.plan_job(Job(name="j", audio=stems), c, {"resolutions": ()})
