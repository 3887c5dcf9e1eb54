"""Tests of maestro_jax.audio: decoding, clips, ImageBind's Kaldi fbank, SpecAugment."""

from __future__ import annotations

import json
import math
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from convert.fbank import verify_imagebind_fbank
from maestro_jax import audio

FIX = "imagebind_fbank"


@pytest.fixture(scope="module")
def fixture_io(fixtures_dir):
    return np.load(fixtures_dir / FIX / "io.npz")


@pytest.fixture(scope="module")
def ffmpeg():
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


# --- float64 NumPy reference of Kaldi's fbank, written independently from docs/models.md ---------


def _np_fbank(wave, preemph=0.97, symmetric=True, floor=1.1920929e-7):
    """docs/models.md, "Audio front end", in float64: [C, N] -> [128, T]."""
    w = np.asarray(wave, np.float64)
    w = w - w.mean()
    x = w[0]
    t = 1 + (x.size - 400) // 160
    frames = np.stack([x[i * 160 : i * 160 + 400] for i in range(t)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    prev = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = frames - preemph * prev
    n = np.arange(400)
    den = 399 if symmetric else 400
    frames = frames * (0.5 - 0.5 * np.cos(2 * np.pi * n / den))
    power = np.abs(np.fft.rfft(frames, n=512, axis=1)) ** 2  # [T, 257]
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
    edges = np.linspace(mel(20.0), mel(8000.0), 130)
    fm = mel(np.arange(256) * 16000 / 512)
    banks = np.zeros((128, 257))
    for b in range(128):
        lo, c, hi = edges[b], edges[b + 1], edges[b + 2]
        banks[b, :256] = np.maximum(0.0, np.minimum((fm - lo) / (c - lo), (hi - fm) / (hi - c)))
    return np.log(np.maximum(power @ banks.T, floor)).T


# --- fixture parity ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checks(fixtures_dir):
    return verify_imagebind_fbank(fixtures_dir / FIX)


def test_fixture_parity_all_checks_pass(checks):
    names = {c.name for c in checks}
    for required in (
        "fbank_dog_2s",
        "mel_violin_1p5s",
        "fbank_dog_2p3s",
        "pipeline_violin_10s_S5",
        "pipeline_dog_full_S3",
        "clip_ranges_git",
        "clip_ranges_pypi015",
    ):
        assert required in names
    bad = [(c.name, c.errors()) for c in checks if not c.passed()]
    assert not bad, bad
    for c in checks:
        if c.name.startswith(("fbank_", "mel_", "pipeline_")) and c.metric == "max_abs":
            assert c.errors()[1] < 1e-4, (c.name, c.errors())  # rel_l2 too


def test_dc_leak_matters_for_overlapping_clips(fixture_io):
    """The release's in-place DC removal leaks between overlapping clips (README surprise 1):
    independent clips are far off clip 1 of the Maestro 10 s / S = 5 case."""
    wave = fixture_io["in_wave_violin_10s_S5"]
    ref = fixture_io["out_pipeline_violin_10s_S5"][0]
    indep = np.asarray(audio.imagebind_audio_input(wave, 16000, 5, "pypi015", dc_leak=False))
    assert np.abs(indep[0] - ref[0]).max() < 1.5e-3  # clip 0 has no earlier clip
    assert np.abs(indep[1] - ref[1]).max() > 0.5
    assert wave.mean() != 0.0 and np.array_equal(wave, fixture_io["in_wave_violin_10s_S5"])


def test_fbank_matches_float64_reference_and_constants(fixture_io):
    wave = fixture_io["in_wave_violin_2s"]
    out = np.asarray(audio.waveform_to_fbank(wave))
    ref64 = _np_fbank(wave)
    assert out.shape == (128, 198)
    # Compare away from the floor, where float32 FFT rounding dominates (fixture README).
    sel = ref64 > -12
    assert np.abs(out - ref64)[sel].max() < 2e-3
    # Pre-emphasis 0.97 (not 0.95 / none), symmetric Hann (not periodic) change it measurably.
    for kw in ({"preemph": 0.95}, {"preemph": 0.0}, {"symmetric": False}):
        alt = _np_fbank(wave, **kw)
        assert np.abs(alt - ref64)[sel].max() > 20 * np.abs(out - ref64)[sel].max(), kw
    assert audio.PREEMPHASIS == 0.97
    assert audio.LOG_EPS == pytest.approx(1.1920929e-7, rel=1e-7)
    assert audio.LOG_FLOOR == pytest.approx(-15.942385, abs=1e-5)
    hann = audio.hann_window_symmetric(400)
    periodic = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    assert hann[0] == 0.0 and hann[-1] == 0.0 and np.abs(hann - periodic).max() > 1e-3
    # Silence floors every entry at exactly ln(1.1920929e-7), not at some other eps.
    silent = np.asarray(audio.waveform_to_fbank(np.zeros((2, 800), np.float32)))
    assert silent.shape == (128, 3) and np.all(silent == np.float32(audio.LOG_FLOOR))
    # Mel bin 3 has no FFT bin (README surprise 4); normalisation constants.
    assert np.all(audio.kaldi_mel_banks()[3] == 0) and audio.kaldi_mel_banks().shape == (128, 257)
    assert (audio.MEL_MEAN, audio.MEL_STD, audio.TARGET_LENGTH) == (-4.268, 9.138, 204)


def test_dc_removal_over_all_channels_then_channel_0():
    """Channel 0 only, after subtracting ONE mean over both channels: a step that only
    channel 1 carries must not change the result, while channel 0's content does."""
    rng = np.random.default_rng(0)
    left = rng.standard_normal(4000).astype(np.float32) * 0.1
    a = np.stack([left, np.zeros_like(left)])
    b = np.stack([left, rng.standard_normal(4000).astype(np.float32)])
    fa, fb = np.asarray(audio.waveform_to_fbank(a)), np.asarray(audio.waveform_to_fbank(b))
    assert np.abs(fa - fb).max() < 1e-3
    c = np.stack([left[::-1].copy(), np.zeros_like(left)])
    assert np.abs(np.asarray(audio.waveform_to_fbank(c)) - fa).max() > 1.0


def test_fbank_jit_vmap_and_sharding(fixture_io, cpu_mesh):
    waves = np.stack(
        [fixture_io["in_wave_dog_2s"], fixture_io["in_wave_violin_2s"]] * 4
    )  # [8, 2, 32000]
    one = np.stack([np.asarray(audio.waveform_to_melspec(w)) for w in waves[:2]])
    batch = audio.waveform_to_melspec_batch(waves)
    assert batch.shape == (8, 1, 128, 204)
    np.testing.assert_allclose(np.asarray(batch)[:2], one, atol=1e-5)
    fb = jax.jit(lambda w: audio.waveform_to_fbank_batch(w) * 1.0)(waves)
    assert fb.shape == (8, 128, 198)
    sharded = jax.device_put(waves, NamedSharding(cpu_mesh, P(("data", "fsdp"))))
    out = audio.waveform_to_melspec_batch(sharded)
    rel = np.linalg.norm(np.asarray(out) - np.asarray(batch)) / np.linalg.norm(np.asarray(batch))
    assert rel < 1e-6


# --- clip sampling -------------------------------------------------------------------------------


def test_clip_starts_json_both_rules(fixtures_dir):
    recs = json.loads((fixtures_dir / FIX / "clip_starts.json").read_text())["records"]
    rules = {"pypi_0.1.5": "pypi015", "git_fixed_rule_computed_from_definition": "git"}
    seen = set()
    for r in recs:
        rule = rules[r["sampler"]]
        seen.add(rule)
        got = audio.clip_starts(r["duration"], r["clips_per_video"], rule=rule)
        assert [(str(s), str(e)) for s, e in got] == [tuple(x) for x in r["clips_exact"]]
        assert audio.clip_sample_ranges(r["duration"], r["clips_per_video"], rule=rule) == [
            tuple(x) for x in r["sample_ranges_16k"]
        ]
    assert seen == {"git", "pypi015"}
    # README surprise 2: exact fractions of the binary duration.
    assert audio.clip_sample_ranges(9.62, 2, rule="pypi015")[1][0] == 60959
    assert [float(s) for s, _ in audio.clip_starts(10.0, 5, rule="pypi015")] == [
        0.0,
        1.6,
        3.2,
        4.8,
        6.4,
    ]
    assert [s for s, _ in audio.clip_starts(10.0, 5)] == [0, 2, 4, 6, 8]  # git is the default
    with pytest.raises(ValueError, match="num_clips"):
        audio.clip_starts(4.0, 0)
    with pytest.raises(ValueError, match="rule"):
        audio.clip_starts(4.0, 2, rule="pypi")


def test_num_clips_extract_and_segments():
    assert audio.num_clips_for(10.0) == 5 and audio.num_clips_for(9.62) == 5
    assert audio.num_clips_for(3.02) == 2 and audio.num_clips_for(3.02, "floor") == 1
    assert audio.num_clips_for(4.3, "round_ceil") == 2 and audio.num_clips_for(4.3) == 3
    assert audio.num_clips_for(0.5) == 1 and audio.num_clips_for(0.5, "floor") == 1
    wave = np.arange(2 * 48320, dtype=np.float32).reshape(2, 48320)
    st = audio.clip_starts(3.02, 3, rule="pypi015")
    clips = audio.extract_clips(wave, 16000, [s for s, _ in st])
    assert [c.shape for c in clips] == [(2, 32000)] * 3
    assert clips[1][0, 0] == 5440 and clips[2][0, 0] == 10880  # int(start * 16000)
    assert np.array_equal(audio.extract_clips(wave, 16000, st)[2], clips[2])
    short = audio.extract_clips(wave[:, :16000], 16000, [0.0])[0]
    assert short.shape == (2, 16000)
    f = np.arange(16)
    assert list(audio.segment_for_frame(f, 16, 2)) == [0] * 8 + [1] * 8
    assert audio.segment_for_frame(15, 16, 5) == 4 and audio.segment_for_frame(3, 16, 5) == 0
    assert np.array_equal(audio.segment_for_frame(jnp.arange(16), 16, 2), f * 2 // 16)


def test_short_audio_is_padded_not_a_crash():
    rng = np.random.default_rng(1)
    one_s = rng.standard_normal((2, 16000)).astype(np.float32) * 0.1
    s = audio.num_clips_for(1.0)
    out = np.asarray(audio.imagebind_audio_input(one_s, 16000, s))
    assert out.shape == (1, 1, 128, 204) and np.isfinite(out).all()
    pad = np.float32(4.268) / np.float32(9.138)
    t = audio.num_fbank_frames(16000)
    assert t == 98 and np.allclose(out[0, 0, :, t:], pad, atol=1e-7)
    assert not np.allclose(out[0, 0, :, t - 1], pad, atol=1e-3)
    two = np.asarray(audio.imagebind_audio_input(one_s, 16000, 2, "pypi015"))
    assert two.shape == (2, 1, 128, 204) and np.isfinite(two).all()
    tiny = np.asarray(audio.imagebind_audio_input(one_s[:, :200], 16000, 1))  # < one frame
    assert tiny.shape == (1, 1, 128, 204) and np.allclose(tiny, pad, atol=1e-7)


# --- files ----------------------------------------------------------------------------------------


def test_every_shared_file_loads_and_encodes(audio_dir):
    files = sorted(audio_dir.glob("*.wav"))
    assert len(files) == 14
    for i, p in enumerate(files):
        info = sf.info(str(p))
        assert (info.samplerate, info.channels) == (44100, 2)
        wave, sr = audio.load_audio(p, sr=16000)
        assert sr == 16000 and wave.dtype == np.float32 and wave.shape[0] == 2
        d = wave.shape[1] / 16000
        assert 2.9 < d < 10.05 and abs(d - info.duration) < 1e-3
        assert np.abs(wave).max() <= 1.05 and np.abs(wave).max() > 1e-3
        s = audio.num_clips_for(d)
        x = np.asarray(audio.imagebind_audio_input(wave, 16000, s))
        assert x.shape == (s, 1, 128, 204) and np.isfinite(x).all(), p.name
        if i == 0:  # resampling inside the pipeline = resampling first
            raw, sr0 = audio.load_audio(p)
            assert sr0 == 44100 and np.abs(raw).max() <= 1.0
            y = np.asarray(audio.imagebind_audio_input(raw, sr0, s))
            # The release cuts to 10 s at the source rate, then resamples.
            r16 = audio.resample(raw[:, : 10 * sr0], sr0, 16000)
            np.testing.assert_array_equal(y, audio.imagebind_audio_input(r16, 16000, s))
            np.testing.assert_allclose(x, y, atol=1e-3)  # resampler edge at the cut only
            mono, _ = audio.load_audio(p, mono=True)
            assert mono.shape == (1, raw.shape[1])
            np.testing.assert_allclose(mono[0], raw.mean(0), atol=1e-7)


def test_max_seconds_cut_before_resampling():
    rng = np.random.default_rng(2)
    long = rng.standard_normal((2, 44100 * 12)).astype(np.float32) * 0.1
    a = np.asarray(audio.imagebind_audio_input(long, 44100, 6, "git"))
    b = np.asarray(audio.imagebind_audio_input(long[:, : 44100 * 10], 44100, 6, "git"))
    np.testing.assert_array_equal(a, b)
    c = np.asarray(audio.imagebind_audio_input(long, 44100, 6, "git", max_seconds=None))
    assert np.abs(c[-1] - a[-1]).max() > 0.1


def _dominant_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.argmax(spec) * sr / x.size


def test_ffmpeg_mp3_and_mp4_audio_track(tmp_path, ffmpeg):
    sr = 44100
    t = np.arange(int(1.5 * sr)) / sr
    st = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)]) * 0.5
    wav = tmp_path / "tone.wav"
    audio.write_wav(wav, st, sr)
    mp3, mp4 = tmp_path / "tone.mp3", tmp_path / "clip.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(wav), str(mp3)], check=True)
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=64x64:d=1.5"]
        + ["-i", str(wav), "-shortest", "-c:v", "libx264", "-c:a", "aac", str(mp4)],
        check=True,
    )
    for path in (mp3, mp4):
        x, got_sr = audio.load_audio(path)
        assert got_sr == sr and x.shape[0] == 2 and x.dtype == np.float32, path
        assert abs(x.shape[1] / sr - 1.5) < 0.1, (path, x.shape)
        mid = x[:, sr // 4 : sr // 4 + 32768]
        assert abs(_dominant_hz(mid[0], sr) - 440) < 3 and abs(_dominant_hz(mid[1], sr) - 660) < 3
        y, sr16 = audio.load_audio(path, sr=16000, mono=True)
        assert sr16 == 16000 and y.shape[0] == 1 and abs(y.shape[1] / 16000 - 1.5) < 0.1


def test_bad_files_give_clear_errors(tmp_path, ffmpeg):
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        audio.load_audio(missing)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(audio.AudioLoadError, match=r"empty \(0 bytes\).*empty.wav"):
        audio.load_audio(empty)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(audio.AudioLoadError, match="junk.mp3"):
        audio.load_audio(junk)
    junk_wav = tmp_path / "junk.wav"
    junk_wav.write_bytes(b"RIFF\x00\x00\x00\x00garbage" * 50)
    with pytest.raises(audio.AudioLoadError, match="junk.wav"):
        audio.load_audio(junk_wav)
    silent_video = tmp_path / "novoice.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=blue:s=32x32:d=0.5"]
        + ["-c:v", "libx264", str(silent_video)],
        check=True,
    )
    with pytest.raises(audio.AudioLoadError, match="no audio stream.*novoice.mp4"):
        audio.load_audio(silent_video)
    with pytest.raises(ValueError, match="non-empty"):
        audio.imagebind_audio_input(np.zeros((2, 0), np.float32), 16000, 1)


def test_write_wav_atomic_roundtrip(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.9, 0.9, (2, 1000)).astype(np.float32)
    p = tmp_path / "sub" / "out.wav"
    audio.write_wav(p, x, 22050)
    assert sorted(f.name for f in p.parent.iterdir()) == ["out.wav"]
    y, sr = audio.load_audio(p)
    assert sr == 22050 and y.shape == x.shape and np.abs(y - x).max() <= 1 / 32768 + 1e-7
    audio.write_wav(p, x[0] * 3.0, 8000)  # mono, overwritten, clipped to [-1, 1]
    y, sr = audio.load_audio(p)
    assert sr == 8000 and y.shape == (1, 1000) and np.abs(y).max() <= 1.0
    r = audio.resample(x, 22050, 16000)
    assert r.shape == (2, round(1000 * 16000 / 22050)) and r.dtype == np.float32


def test_mix_stems():
    a = np.ones((2, 10), np.float32) * 0.5
    b = np.ones((1, 6), np.float32) * 0.25  # mono, shorter: broadcast and padded
    m = audio.mix_stems([a, b])
    assert m.shape == (2, 10)
    np.testing.assert_allclose(m[:, :6], 0.75)
    np.testing.assert_allclose(m[:, 6:], 0.5)
    g = audio.mix_stems([a, b], gains_db=[-6.0, 0.0])
    np.testing.assert_allclose(g[0, 0], 0.5 * 10 ** (-6 / 20) + 0.25, rtol=1e-6)
    loud = audio.mix_stems([a, a, a], peak=0.99)
    assert np.abs(loud).max() == pytest.approx(0.99, rel=1e-6)
    quiet = audio.mix_stems([a * 0.1], peak=0.99)
    np.testing.assert_allclose(quiet, a * 0.1)
    with pytest.raises(ValueError, match="gains"):
        audio.mix_stems([a, b], gains_db=[0.0])
    with pytest.raises(ValueError, match="channel"):
        audio.mix_stems([a, np.ones((3, 4), np.float32)])


# --- SpecAugment -----------------------------------------------------------------------------------


def test_spec_augment():
    rng = np.random.default_rng(4)
    mel = jnp.asarray(rng.standard_normal((3, 2, 1, 128, 204)).astype(np.float32))
    k = jax.random.key(0)
    a = np.asarray(audio.spec_augment(k, mel))
    b = np.asarray(audio.spec_augment(k, mel))
    c = np.asarray(audio.spec_augment(jax.random.key(1), mel))
    assert a.shape == mel.shape and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0, 0], a[0, 1])  # each example has its own draw
    # Masks only: masked cells are the example's mean, and some frequency rows / time columns
    # are fully masked.
    m = np.asarray(audio.spec_augment(k, mel, time_warp=0, freq_width=40, time_width=60))
    x, y = np.asarray(mel)[0, 0, 0], m[0, 0, 0]
    changed = y != x
    assert changed.any()
    np.testing.assert_allclose(y[changed], x.mean(), rtol=1e-5)
    assert changed.all(axis=1).any() or changed.all(axis=0).any()
    zero = np.asarray(
        audio.spec_augment(k, mel, time_warp=0, freq_width=40, time_width=60, mask_value=0.0)
    )
    assert np.all(zero[0, 0, 0][changed] == 0.0)
    # Warp only: same shape, ends fixed, interior resampled.
    w = np.asarray(audio.spec_augment(k, mel, freq_masks=0, time_masks=0))
    np.testing.assert_allclose(w[..., 0], np.asarray(mel)[..., 0], atol=1e-6)
    np.testing.assert_allclose(w[..., -1], np.asarray(mel)[..., -1], atol=1e-6)
    assert np.abs(w - np.asarray(mel)).max() > 0.1
    ident = audio.spec_augment(k, mel, time_warp=0, freq_masks=0, time_masks=0)
    np.testing.assert_array_equal(np.asarray(ident), np.asarray(mel))
    assert math.isfinite(float(jnp.sum(audio.spec_augment(k, mel[0, 0, 0]))))
    jitted = jax.jit(lambda key, x: audio.spec_augment(key, x, time_warp=0))
    np.testing.assert_array_equal(
        np.asarray(jitted(k, mel)), np.asarray(audio.spec_augment(k, mel, time_warp=0))
    )
