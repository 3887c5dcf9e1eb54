"""Boxes from the sound (`maestro_jax.audio.layout`): the level-difference position on synthetic
pans, size from loudness, smoothing of a moving source, the mono fallback, and `boxes: "auto"`
jobs."""

import numpy as np
import pytest

from maestro_jax.audio import layout as al

SR = 8000


def _panned(x, seconds=4.0, gain=1.0, seed=0):
    """Noise panned to x (scalar or per-sample) with the constant-power law: [2, N]."""
    n = int(seconds * SR)
    s = np.random.default_rng(seed).standard_normal(n) * 0.1 * gain
    x = np.broadcast_to(np.asarray(x, np.float64), (n,))
    return np.stack([s * np.cos(x * np.pi / 2), s * np.sin(x * np.pi / 2)])


def test_level_difference_gives_the_pan_within_a_hundredth():
    xs = (0.1, 0.3, 0.5, 0.8)
    lay = al.estimate_layout([_panned(x, seed=i) for i, x in enumerate(xs)], SR, 8, 4.0)
    # stated error: |x_est - x| < 0.01 of the frame width for static pans
    np.testing.assert_allclose(lay.x, np.repeat(np.array(xs)[:, None], 8, 1), atol=0.01)
    assert lay.note == ""
    assert (np.sign(lay.ild_db[:, 0]) == [-1, -1, 0, 1]).all() or abs(lay.ild_db[2, 0]) < 0.1
    boxes = lay.per_frame()
    assert boxes.shape == (4, 8, 4)
    np.testing.assert_allclose(
        (boxes[..., 0] + boxes[..., 2]) / 2, lay.x.clip(0.25, 0.75), atol=0.005
    )


def test_size_follows_loudness_and_presence():
    quiet = _panned(0.7, gain=0.5, seed=1)
    quiet[:, : 2 * SR] = 0  # starts at 2 s
    lay = al.estimate_layout([_panned(0.2), quiet], SR, 8, 4.0)
    assert lay.side[0] == pytest.approx(0.5) and lay.side[1] == pytest.approx(0.25, abs=0.01)
    np.testing.assert_array_equal(lay.present[1], [0, 0, 0, 0, 1, 1, 1, 1])
    assert lay.x[1, 0] == pytest.approx(0.7, abs=0.01)  # silent frames hold the nearest estimate


def test_moving_source_is_tracked_and_smoothed():
    n = int(8.0 * SR)
    ramp = np.linspace(0.1, 0.9, n)
    lay = al.estimate_layout([_panned(ramp, seconds=8.0)], SR, 16, 8.0, smooth_s=1.0)
    centre = (np.arange(16) + 0.5) / 16 * 0.8 + 0.1
    assert np.abs(lay.x[0] - centre).max() < 0.05
    assert np.all(np.diff(lay.x[0]) > 0)


def test_mono_falls_back_to_a_spread_layout():
    mono = [_panned(0.5, seed=i)[:1] for i in range(3)]
    lay = al.estimate_layout(mono, SR, 8, 4.0)
    assert lay.note == al.MONO_NOTE
    np.testing.assert_allclose(lay.x[:, 0], [1 / 6, 0.5, 5 / 6])
    with pytest.raises(ValueError, match="every stem mono or every stem stereo"):
        al.estimate_layout([mono[0], _panned(0.5)], SR, 8, 4.0)


def test_toy_stereo_scene_boxes_against_truth():
    from maestro_jax.toy import long_world as lw

    s = lw.make_long_scenes(1, seed=3)[0]
    lay = al.estimate_layout(list(lw.stereo_stems(s.stems, s.boxes, s.sizes)), 16000, 24, 12.0)
    cx = (s.boxes[:, 0] + s.boxes[:, 2]) / 2
    assert np.abs(lay.x - cx[:, None])[s.present].max() < 0.01
    np.testing.assert_allclose(lay.side / lay.side.max(), s.sizes / s.sizes.max(), atol=0.03)
    # heard only inside its span (a frame at a span's edge may hold part of it)
    assert (lay.present & ~s.present).sum() <= 2 * len(s.classes)


def test_auto_boxes_job(tmp_path):
    from maestro_jax.audio import write_wav
    from maestro_jax.generation.config import generation_config
    from maestro_jax.generation.jobs import job_from_dict
    from maestro_jax.generation.plan import plan_job

    for name, x in (("l", 0.2), ("r", 0.8)):
        write_wav(tmp_path / f"{name}.wav", _panned(x), SR)
    write_wav(tmp_path / "m.wav", _panned(0.5)[:1], SR)
    cfg = generation_config("runlocal")
    hint = {"resolutions": ((8, 8), (4, 4), (2, 2))}
    job = {"audio": [str(tmp_path / "l.wav"), str(tmp_path / "r.wav")], "boxes": "auto"}
    p = plan_job(job_from_dict(job), cfg, hint)
    boxes = np.stack([b.per_frame(cfg.num_frames) for b in p.locate_boxes])
    np.testing.assert_allclose((boxes[:, :, 0] + boxes[:, :, 2]) / 2, [[0.25] * 16, [0.75] * 16])
    assert p.auto_layout is not None and not p.warnings
    job["audio"] = [str(tmp_path / "m.wav")] * 2
    p = plan_job(job_from_dict(job), cfg, hint)
    assert p.warnings == [f"boxes auto: {al.MONO_NOTE}"]
    # a sweep's stems item takes 'auto' as its boxes
    from maestro_jax.evaluation.sweep import parse_stems

    (swept,) = parse_stems("l.wav+r.wav:auto", str(tmp_path), seed=0)
    p = plan_job(swept, cfg, hint)
    assert swept.boxes == "auto" and p.auto_layout is not None


def test_mixture_auto_boxes_separate_each_channel(monkeypatch):
    """A stereo mixture job: each channel separated on its own, the layout from the separated
    channels' levels; a mono mixture keeps the spread layout and says so."""
    import types

    from maestro_jax.audio import separation
    from maestro_jax.generation import outputs
    from maestro_jax.generation.config import generation_config
    from maestro_jax.generation.jobs import Job
    from maestro_jax.generation.plan import Plan

    left, right = _panned(0.1, seed=1), _panned(0.9, seed=2)
    mix = left + right
    calls = []

    def fake_separate(sep, mono, queries, qemb=None):  # the ideal separator: one source each
        calls.append(mono.shape)
        ch = len(calls) - 1
        return [left[ch], right[ch]]

    monkeypatch.setattr(separation, "separate_mixture", fake_separate)
    sep = types.SimpleNamespace(config=types.SimpleNamespace(sample_rate=SR))
    cfg = generation_config("runlocal")
    job = Job(name="m", mixture="mix.wav", queries=["a", "b"], boxes="auto")
    plan = Plan(job, "mixture", [], (mix, SR), al.spread_boxes(2), al.spread_boxes(2), 2, [])
    outputs._auto_boxes(plan, sep, cfg)
    assert len(calls) == 2  # one separation per channel
    boxes = np.stack([b.per_frame(cfg.num_frames) for b in plan.locate_boxes])
    centre = (boxes[..., 0] + boxes[..., 2]) / 2  # x 0.1 and 0.9, held inside the frame
    np.testing.assert_allclose(centre, [[0.25] * 16, [0.75] * 16], atol=0.01)
    assert plan.mosaic_boxes == plan.locate_boxes and plan.auto_layout.note == ""
    plan = Plan(job, "mixture", [], (mix[:1], SR), al.spread_boxes(2), al.spread_boxes(2), 2, [])
    outputs._auto_boxes(plan, sep, cfg)
    assert plan.warnings == [f"boxes auto: {al.MONO_NOTE}"] and len(calls) == 2
