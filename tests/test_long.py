"""Whole-audio (long) generation: FreeNoise window fusion, noise rescheduling, frame-aligned audio
tokens, seconds keyframes and the whole-audio input checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maestro_jax import mosaic
from maestro_jax.generation import long as gl
from maestro_jax.generation import sampling
from maestro_jax.nn import frame_windows as fw
from maestro_jax.nn.attention import dot_product_attention


def _attend(q, k, v):
    return dot_product_attention(q, k, v, scale=0.5)


def _loop_reference(q, k, v, window, stride):
    """Each window's attention in numpy, weighted by the centre-favouring triangle."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    n, t, h, d = q.shape
    acc, tot = np.zeros_like(q), np.zeros(t)
    wts = np.minimum(np.arange(window) + 1, window - np.arange(window))
    for s in fw.window_starts(t, window, stride):
        sl = slice(s, s + window)
        logits = np.einsum("nqhd,nkhd->nhqk", q[:, sl], k[:, sl]) * 0.5
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        acc[:, sl] += np.einsum("nhqk,nkhd->nqhd", p, v[:, sl]) * wts[None, :, None, None]
        tot[sl] += wts
    return acc / tot[None, :, None, None]


def test_window_starts_cover_every_frame():
    assert fw.window_starts(8, 8, 4) == (0,)
    assert fw.window_starts(16, 8, 4) == (0, 4, 8)
    assert fw.window_starts(15, 8, 4) == (0, 4, 7)  # the last window ends on the last frame
    with pytest.raises(ValueError, match="stride 9 > window 8"):
        fw.window_starts(20, 8, 9)


@pytest.mark.parametrize("at_once", [0, 1, 2])
def test_fused_windows_equal_the_per_window_loop(at_once):
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 13, 2, 4))
    ours = fw.fused_window_attention(q, k, v, _attend, window=6, stride=2, at_once=at_once)
    ref = _loop_reference(q, k, v, 6, 2)
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)
    plain = np.asarray(_attend(q, k, v))
    assert np.abs(np.asarray(ours) - plain).max() > 1e-3  # the windows change the result


def test_one_window_is_plain_attention():
    q, k, v = jax.random.normal(jax.random.key(1), (3, 2, 6, 2, 4))
    ours = fw.fused_window_attention(q, k, v, _attend, window=6, stride=2)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(_attend(q, k, v)))


def _window_map_reference(fn, x, window, stride):
    """Each window's fn in numpy, weighted by the centre-favouring triangle."""
    n, t = x.shape[:2]
    acc, tot = np.zeros(x.shape), np.zeros(t)
    wts = np.minimum(np.arange(window) + 1, window - np.arange(window))
    for s in fw.window_starts(t, window, stride):
        acc[:, s : s + window] += (
            np.asarray(fn(x[:, s : s + window]), np.float64) * wts[None, :, None]
        )
        tot[s : s + window] += wts
    return acc / tot[None, :, None]


@pytest.mark.parametrize("at_once", [0, 1, 2, 9])
def test_fused_window_map_equals_the_per_window_loop(at_once):
    x = jax.random.normal(jax.random.key(4), (2, 13, 3))

    def f(xw):  # depends on the whole window: a window's mean and its frame index
        return (
            jnp.tanh(xw - xw.mean(axis=1, keepdims=True))
            * jnp.arange(1, xw.shape[1] + 1)[None, :, None]
        )

    one = lambda s: f(jax.lax.dynamic_slice_in_dim(x, s, 6, 1))  # noqa: E731
    ours = fw.fused_window_map(one, x.shape, window=6, stride=2, at_once=at_once)
    np.testing.assert_allclose(np.asarray(ours), _window_map_reference(f, x, 6, 2), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    plain = fw.fused_window_map(
        lambda s: f(x), x.shape, window=13, stride=2, at_once=at_once
    )  # one window: the function itself
    np.testing.assert_allclose(np.asarray(plain), np.asarray(f(x)), rtol=1e-6, atol=1e-7)


def test_whole_unet_windows_equal_plain_where_frames_are_independent_memory_follows_windows():
    """A UNet without temporal layers treats frames independently: fusing its windows must give
    back the plain call (any window, stride, windows_at_once), and with one window it is the
    plain call. Its working memory follows windows_at_once, not the frames. (The cut mosaic
    edit: `test_mosaic`; a temporal UNet through the runner: the end-to-end job below.)"""
    from maestro_jax.models.unet import UNet, UNetConfig

    plain = UNetConfig.tiny(temporal=False, num_res_blocks=1)
    c, dc = plain.in_channels, plain.context_dim
    params = UNet(plain).init(
        jax.random.key(0), jnp.zeros((1, 1, 8, 8, c)), jnp.zeros((1,)), jnp.zeros((1, 77, dc))
    )["params"]

    def compiled(cfg, frames):
        fn = lambda p, x, cc: sampling._unet_fn(cfg, p, 8, None)(  # noqa: E731
            x, jnp.full((2,), 500), {"context": cc}, 0
        )
        xs = jax.ShapeDtypeStruct((2, frames, 8, 8, c), jnp.float32)
        cs = jax.ShapeDtypeStruct((2, frames, 77, dc), jnp.float32)
        return jax.jit(fn).lower(params, xs, cs).compile()

    f = 11
    x = jax.random.normal(jax.random.key(1), (2, f, 8, 8, c))
    ctx = jax.random.normal(jax.random.key(2), (2, f, 77, dc))
    ref = np.asarray(compiled(plain, f)(params, x, ctx))
    win = plain.replace(temporal_window=4, temporal_stride=2, windows_at_once=1,
                        window_fusion="unet")  # fmt: skip
    np.testing.assert_allclose(
        np.asarray(compiled(win, f)(params, x, ctx)), ref, rtol=2e-5, atol=2e-5
    )
    one = win.replace(temporal_window=f)  # one window: the plain call itself
    np.testing.assert_array_equal(np.asarray(compiled(one, f)(params, x, ctx)), ref)
    temp = lambda cfg, n: compiled(cfg, n).memory_analysis().temp_size_in_bytes  # noqa: E731
    assert temp(win, 32) < 1.3 * temp(win, 8)  # 4x the frames, (almost) no more memory
    assert temp(plain, 32) > 2.5 * temp(plain, 8)  # the plain call's grows with the frames


def test_windowed_spec_picks_the_fusion_from_windows_at_once():
    from maestro_jax.generation.config import generation_config
    from maestro_jax.generation.weights import base_spec

    base = base_spec(generation_config("runlocal"))
    assert gl.windowed_spec(base, 4, 2).unet.window_fusion == "attention"
    u = gl.windowed_spec(base, 4, 2, at_once=2).unet
    assert (u.window_fusion, u.windows_at_once, u.frame_window) == ("unet", 2, (0, 2, 0))
    with pytest.raises(ValueError, match="windows_at_once must be >= 0"):
        gl.windowed_spec(base, 4, 2, at_once=-1)
    with pytest.raises(ValueError, match="window_fusion='frames'"):
        base.unet.replace(window_fusion="frames")


# ----------------------------------------------------------------------------- UNet
def test_window_fusion_equals_plain_temporal_layer_with_one_window():
    from maestro_jax.models.unet import TemporalTransformer

    x = jax.random.normal(jax.random.key(3), (7 * 2, 2, 2, 32))  # [F * h * w..., C]: 7 frames

    def run(window, frames):
        layer = TemporalTransformer(2, 16, frames, frame_window=(window, 2, 0))
        params = layer.init(jax.random.key(0), x[:frames])
        return np.asarray(layer.apply(params, x[: frames * 2].reshape(frames * 2, 2, 2, 32)))

    np.testing.assert_array_equal(run(0, 4), run(4, 4))
    plain, windowed = run(0, 7), run(4, 7)  # 7 frames: windows 0-3, 2-5, 3-6
    assert np.isfinite(windowed).all()
    assert np.abs(plain - windowed).max() > 1e-4  # the windows take effect


def test_sampler_accepts_long_videos_with_windows():
    from maestro_jax.generation.config import generation_config
    from maestro_jax.generation.weights import base_spec

    spec = sampling.VideoSpec(7, 32, 32)
    trained = dataclasses.replace(base_spec(generation_config("runlocal")), trained_frames=4)
    with pytest.raises(ValueError, match="trained with 4"):
        spec.check(trained)
    windowed = gl.windowed_spec(trained, 4, 2)
    spec.check(windowed)
    with pytest.raises(ValueError, match="fewer than one window"):
        sampling.VideoSpec(3, 32, 32).check(windowed)


# ----------------------------------------------------------------------------- noise, tokens
def test_rescheduled_noise_is_deterministic_and_repeats_the_first_window():
    shape = (1, 20, 2, 2, 4)
    a, ka = gl.rescheduled_noise(7, shape, 8, 4)
    b, kb = gl.rescheduled_noise(7, shape, 8, 4)
    c, _ = gl.rescheduled_noise(8, shape, 8, 4)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(jax.random.key_data(ka), jax.random.key_data(kb))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    a = np.asarray(a)[0]
    first = a[:8].reshape(8, -1)
    for f in range(8, 20):  # every later frame is a copy of a first-window frame
        assert (np.abs(first - a[f].reshape(-1)).max(axis=1) == 0).sum() == 1
    for i in range(8, 20, 4):  # each chunk is a shuffle of the chunk one window back
        want = sorted(map(tuple, a[i - 8 : i - 4].reshape(4, -1).round(6)))
        assert sorted(map(tuple, a[i : i + 4].reshape(4, -1).round(6))) == want
    assert not np.array_equal(a[8:12], a[0:4])  # shuffled, not a plain repeat (seed 7)


def test_every_ddim_step_draws_rescheduled_noise():
    from maestro_jax.models.unet import UNetConfig

    cfg = UNetConfig.tiny().replace(temporal_window=8, temporal_stride=4)
    assert sampling.step_noise_fn(cfg, 8) is None  # one window: plain draws
    assert sampling.step_noise_fn(UNetConfig.tiny(), 20) is None  # no windows
    draw = sampling.step_noise_fn(cfg, 20)
    key = jax.random.fold_in(jax.random.key(5), 3)  # the draw of step 3
    z = np.asarray(jax.jit(draw, static_argnums=1)(key, (1, 20, 2, 2, 4)))
    np.testing.assert_array_equal(z, np.asarray(fw.rescheduled_normal(key, (1, 20, 2, 2, 4), 8, 4)))
    # the first window is a window-long job's draw; later frames repeat first-window frames
    np.testing.assert_array_equal(z[:, :8], np.asarray(jax.random.normal(key, (1, 8, 2, 2, 4))))
    first = z[0, :8].reshape(8, -1)
    for f in range(8, 20):
        assert (np.abs(first - z[0, f].reshape(-1)).max(axis=1) == 0).sum() == 1
    # and ddim_sample takes its per-step noise from the given draw
    from maestro_jax.diffusion import ddim_sample

    x_T = jnp.ones((1, 20, 2, 2, 4))
    model = lambda x, t, c, step: 0.1 * x  # noqa: E731
    common = dict(cond=None, steps=4, eta=1.0, guidance=None)
    a = ddim_sample(model, x_T, key=jax.random.key(0), draw_noise=draw, **common)
    noise = jnp.stack([draw(jax.random.fold_in(jax.random.key(0), i), x_T.shape) for i in range(4)])
    b = ddim_sample(model, x_T, noise=noise, **common)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    c = ddim_sample(model, x_T, key=jax.random.key(0), **common)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def test_audio_token_windows_line_up_with_time():
    # 12 s at 2 fps: 24 frames, six 2 s clips; frame f starts at f / 2 s
    seg = gl.frame_segments(24, 2.0)
    np.testing.assert_array_equal(seg, np.repeat(np.arange(6), 4))
    tokens = jnp.arange(6, dtype=jnp.float32)[None, :, None, None] * jnp.ones((2, 6, 3, 5))
    ft = np.asarray(gl.frame_tokens(tokens, 24, 2.0))
    for f in range(24):
        assert ft[0, f, 0, 0] == (f / 2.0) // 2  # the clip under frame f's time
    # the 4 s job's rule (frame f of 16 uses clip floor(f * 2 / 16)) is the same mapping
    np.testing.assert_array_equal(gl.frame_segments(16, 4.0), mosaic.segment_of_frame(16, 2))
    # a window's contexts come from the audio under it: frames 8..15 = seconds 4..8 = clips 2, 3
    c_merge, _ = mosaic.build_contexts(jnp.zeros((77, 5)), ft, 24, token_offset=1)
    np.testing.assert_array_equal(np.asarray(c_merge[8:16, 1, 0]), [2, 2, 2, 2, 3, 3, 3, 3])


def test_seconds_keyframes():
    pos = gl.seconds_to_positions([[0, [0, 0, 0.5, 1]], [5.5, [0.5, 0, 1, 1]]], 12, 2.0)
    assert pos[1][0] == pytest.approx(1.0)
    b = mosaic.Boxes.keyframed(
        gl.seconds_to_positions([[0, [0, 0, 0.5, 1]], [2.75, [0.5, 0, 1, 1]]], 12, 2.0)
    )
    assert b.per_frame(12)[0, 0] == 0 and b.per_frame(12)[-1, 0] == 0.5
    with pytest.raises(ValueError, match="outside"):
        gl.seconds_to_positions([[9, [0, 0, 1, 1]]], 12, 2.0)


def test_long_spec_limits():
    s = gl.long_spec([12.0, 12.02], 8, 4, 600.0)
    assert (s.frames, s.rate, s.window, s.starts) == (24, 2.0, 8, (0, 4, 8, 12, 16))
    with pytest.raises(gl.LongInputError, match="0.50 s; .* at least 4 s"):
        gl.long_spec([0.5], 8, 4, 600.0)
    with pytest.raises(gl.LongInputError, match="limit of 600 s"):
        gl.long_spec([7200.0], 8, 4, 600.0)
    with pytest.raises(gl.LongInputError, match="one length"):
        gl.long_spec([12.0, 10.0], 8, 4, 600.0)


# ----------------------------------------------------------------------------- whole-audio jobs
@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    from maestro_jax.audio import write_wav

    d = tmp_path_factory.mktemp("long_audio")
    rng = np.random.default_rng(0)
    for name, sec in (("a", 10.0), ("b", 10.0), ("short", 0.5), ("other", 7.0)):
        write_wav(d / f"{name}.wav", rng.uniform(-0.3, 0.3, (1, int(sec * 8000))), 8000)
    return d


def _plan(wavs, audio, max_seconds=600.0, flag_boxes=None, at_once=0, **job):
    from maestro_jax.generation.config import generation_config
    from maestro_jax.generation.jobs import job_from_dict
    from maestro_jax.generation.plan import plan_job

    cfg = generation_config("runlocal")
    cfg.num_frames = 8
    cfg.long.max_seconds = max_seconds
    cfg.long.windows_at_once = at_once
    j = job_from_dict({"audio": [str(wavs / f"{a}.wav") for a in audio], "window": 0, **job})
    if flag_boxes is not None:
        j.boxes = flag_boxes
    return plan_job(j, cfg, {"resolutions": ((8, 8), (4, 4), (2, 2))})


def test_whole_audio_plan(wavs):
    p = _plan(wavs, ["a", "b"], boxes=[
        {"keyframes_s": [[0, [0, 0, 0.5, 1]], [9.5, [0.5, 0, 1, 1]]]}, [0.5, 0, 1, 1]
    ])  # fmt: skip
    assert (p.long.frames, p.long.rate, p.long.starts) == (20, 2.0, (0, 4, 8, 12))
    per_frame = p.locate_boxes[0].per_frame(p.num_frames)
    assert per_frame[0, 0] == 0.0 and per_frame[-1, 0] == 0.5  # 9.5 s = the last frame
    # the --box flag's form: keyframe times in seconds
    same = _plan(wavs, ["a", "b"], flag_boxes=["0s:0,0,.5,1;9.5s:.5,0,1,1", ".5,0,1,1"])
    np.testing.assert_array_equal(same.locate_boxes[0].per_frame(20), per_frame)


def test_whole_audio_bad_input(wavs):
    from maestro_jax.generation.jobs import JobError

    with pytest.raises(
        JobError, match="audio lasts 0.50 s; a whole-audio video needs at least 4 s"
    ):
        _plan(wavs, ["short", "short"])
    with pytest.raises(JobError, match="one length: they last 7.00 s to 10.00 s"):
        _plan(wavs, ["a", "other"])
    with pytest.raises(JobError, match="keyframe at 12 s is outside"):
        _plan(wavs, ["a", "b"], boxes=[{"keyframes_s": [[12, [0, 0, 1, 1]]]}, [0, 0, 1, 1]])
    with pytest.raises(
        JobError, match=r"a.wav: audio lasts 10.0 s, over the whole-audio limit of 8 s"
    ):
        _plan(wavs, ["a", "b"], max_seconds=8.0)  # refused from the header, before decoding
    with pytest.raises(JobError, match="window must be >= 0"):
        _plan(wavs, ["a", "b"], window=-1)
    with pytest.raises(JobError, match="long.windows_at_once must be >= 0"):
        _plan(wavs, ["a", "b"], at_once=-2)
    with pytest.raises(JobError, match="long.max_seconds must be > 0"):
        _plan(wavs, ["a", "b"], max_seconds=0.0)


# ----------------------------------------------------------------------------- toy command
def test_toy_long_command_refuses_bad_flags_in_one_line(tmp_path, capsys):
    from maestro_jax import cli
    from tests.conftest import load_command

    cmd = load_command("maestro_jax.toy.evaluate_long")
    for argv, want in (
        (["--stride", "9"], "--stride must lie in [1, 8], got 9"),
        (["--methods", "naive,best"], "--methods 'naive,best'"),
        (["--assets", str(tmp_path / "nope")], str(tmp_path / "nope")),
    ):
        assert cli.call(cmd.main, [*argv, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and want in err
    assert not (tmp_path / "r").exists()


def test_long_toy_scene_truth():
    from maestro_jax.toy import long_eval as le
    from maestro_jax.toy import long_world as lw

    a, b = lw.make_long_scenes(2, seed=1)
    again = lw.make_long_scenes(1, seed=1)[0]
    np.testing.assert_array_equal(a.stems, again.stems)
    assert a.frames.shape == (24, 32, 32, 3) and a.stems.shape == (2, 12 * 16000)
    for s in (a, b):
        for k, (on, off) in enumerate(s.spans):
            assert 0 <= on <= 6 and off - on >= 5 - 1e-9
            t = np.arange(s.stems.shape[1]) / 16000
            assert np.abs(s.stems[k][(t < on - 0.001) | (t > off + 0.001)]).max() == 0
    res = le.score(a.frames, a, av_align=False)  # the true video places every present source
    assert res["placement"] == 1.0 and res["clear"] == 1.0
    assert le.seam_mask(24).nonzero()[0].tolist() == [7, 15]


def test_whole_audio_auto_boxes_job_end_to_end(tmp_path):
    """A 6 s stereo job with window 0 and boxes auto: 6 frames at a 4-frame job's rate (1 fps),
    windows 0-3 and 2-5, boxes from the channels' levels, the JSON says so."""
    import json

    from maestro_jax.audio import write_wav
    from maestro_jax.generation import runner as gen
    from maestro_jax.generation.config import generation_config
    from maestro_jax.generation.jobs import Job

    rng = np.random.default_rng(0)
    for name, x in (("l", 0.2), ("r", 0.8)):
        s = rng.uniform(-0.3, 0.3, 6 * 8000)
        write_wav(
            tmp_path / f"{name}.wav",
            np.stack([s * np.cos(x * 1.5708), s * np.sin(x * 1.5708)]),
            8000,
        )
    cfg = generation_config("runlocal")
    cfg.num_frames, cfg.steps, cfg.n_d, cfg.long.stride = 4, 2, 1, 2
    job = Job(
        name="long",
        audio=[str(tmp_path / "l.wav"), str(tmp_path / "r.wav")],
        boxes="auto",
        window=0,
    )
    assert gen.run(cfg, [job], tmp_path / "out", strict=True) == 0
    meta = json.loads((tmp_path / "out" / "long.json").read_text())
    assert meta["video"]["frames"] == 6 and meta["video"]["fps"] == 1.0
    assert meta["video"]["duration_s"] == 6.0
    boxes = np.array(meta["boxes_per_frame"])  # [F, K, 4]
    assert boxes.shape == (6, 2, 4)
    np.testing.assert_allclose((boxes[..., 0] + boxes[..., 2]) / 2, [[0.25, 0.75]] * 6, atol=0.01)
    assert meta["auto_layout"]["note"] == ""
    assert meta["long"] == {"window_frames": 4, "stride": 2, "window_starts": [0, 2],
                            "windows_at_once": 0, "fusion": "attention"}  # fmt: skip
    assert (tmp_path / "out" / "long.mp4").stat().st_size > 0
    # the same job with the whole UNet one window at a time (memory bounded by one window)
    cfg.long.windows_at_once = 1
    assert gen.run(cfg, [job], tmp_path / "out1", strict=True) == 0
    meta1 = json.loads((tmp_path / "out1" / "long.json").read_text())
    assert meta1["video"]["frames"] == 6 and meta1["boxes_per_frame"] == meta["boxes_per_frame"]
    assert (meta1["long"]["fusion"], meta1["long"]["windows_at_once"]) == ("unet", 1)
    assert (tmp_path / "out1" / "long.mp4").stat().st_size > 0
