"""Stems -> ImageBind trunk -> CIM tokens on every real recording in shared/audio, the
encode_audio CLI, and the sharded encoder."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maestro_jax import audio as audio_lib
from maestro_jax.audio import encoder as ae
from maestro_jax.sharding import param_shardings


@pytest.fixture(scope="module")
def enc():
    return ae.init_random(ae.tiny_imagebind(), ae.tiny_cim(64, 4), seed=0)


def test_every_shared_recording_encodes(enc, audio_dir):
    files = sorted(audio_dir.glob("*.wav"))
    assert len(files) >= 10
    stems = [audio_lib.load_audio(f) for f in files]
    for (w, sr), f in zip(stems, files):
        assert w.ndim == 2 and w.shape[0] == 2 and sr == 44100, f  # stereo 44.1 kHz as shipped
        assert 3.0 <= w.shape[1] / sr <= 10.5, f
    mel = np.stack([ae.stem_mel(w, sr, clip_window=4.0) for w, sr in stems])
    assert mel.shape == (len(files), 2, 128, 204)
    tokens = np.asarray(ae.encode_mels(enc, mel))
    assert tokens.shape == (len(files), 2, 4, 64)
    assert np.isfinite(tokens).all()
    # different recordings give different tokens
    assert np.abs(tokens[0] - tokens[1]).max() > 1e-3


def test_window_padding_and_segments(enc, audio_dir):
    w, sr = audio_lib.load_audio(audio_dir / "dog.wav")
    assert ae.num_segments(4.0) == 2 and ae.num_segments(5.0) == 3 and ae.num_segments(0.5) == 1
    short = w[:, : sr // 2]  # 0.5 s: padded with silence, not a crash
    mel = ae.stem_mel(short, sr, clip_window=4.0)
    assert mel.shape == (2, 128, 204)
    # the second clip (2-4 s) is pure padding silence: the log floor everywhere but padding cols
    assert np.allclose(mel[1, :, :198], mel[1, 0, 0])
    long = ae.stem_mel(w, sr, clip_window=6.0)
    assert long.shape == (3, 128, 204)
    np.testing.assert_allclose(long[:2], ae.stem_mel(w, sr, clip_window=4.0), atol=1e-3)


def test_encoder_sharded_matches_one_device(enc, cpu_mesh, audio_dir):
    w, sr = audio_lib.load_audio(audio_dir / "violin.wav")
    mel = np.stack([ae.stem_mel(w * g, sr) for g in (1.0, 0.5, 0.25, 0.8)])  # [4, 2, 128, 204]
    ref = np.asarray(ae.encode_mels(enc, mel))
    put = lambda t: jax.tree.map(
        lambda x, s: jax.device_put(x, s), t, param_shardings(t, cpu_mesh, min_size=0)
    )
    sharded = ae.AudioEncoder(
        enc.ib_config, put(enc.ib_params), enc.cim_config, put(enc.cim_params)
    )
    mel_s = jax.device_put(jnp.asarray(mel), NamedSharding(cpu_mesh, P("data")))
    out = np.asarray(ae.encode_mels(sharded, mel_s))
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-5


def test_encode_audio_cli(tmp_path, audio_dir):
    out = tmp_path / "tok.npz"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    r = subprocess.run(
        [sys.executable, "-m", "maestro_jax.encode_audio", "--audio", str(audio_dir / "dog.wav"),
         "--audio", str(audio_dir / "piano.wav"), "--config=configs/audio.py:runlocal",
         f"--out={out}"],
        capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tokens (2, 2, 4, 64)" in r.stdout
    z = np.load(out)
    assert z["tokens"].shape == (2, 2, 4, 64) and z["mel"].shape == (2, 2, 128, 204)
    bad = subprocess.run(
        [sys.executable, "-m", "maestro_jax.encode_audio", "--audio", str(tmp_path / "nope.wav"),
         "--config=configs/audio.py:runlocal"],
        capture_output=True, text=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
    )  # fmt: skip
    assert bad.returncode != 0 and "nope.wav" in bad.stderr
