"""maestro_jax.toy.world: the procedural miniature audio-visual world."""

from __future__ import annotations

import numpy as np
import pytest

from maestro_jax.metrics import placement as colour_pl
from maestro_jax.toy import batches as toy_batches
from maestro_jax.toy import world as tw

C = tw.OBJECT_COLORS  # the classes' colours, for colour placement


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_constants_and_labels():
    assert tw.labels() == ["red disc", "blue square", "green triangle", "yellow ring"]
    assert tw.OBJECT_COLORS.shape == (4, 3) and tw.OBJECT_COLORS.dtype == np.float32
    assert [o.shape for o in tw.OBJECTS] == ["disc", "square", "triangle", "ring"]
    assert len(tw.BACKGROUNDS) == 3


def test_object_sound_shapes_envelopes_spectra():
    centroids = []
    for c in range(4):
        for seed in range(3):
            w, env = tw.object_sound(c, _rng(seed))
            assert w.shape == (64000,) and w.dtype == np.float32
            assert env.shape == (tw.NUM_FRAMES,) and env.dtype == np.float32
            assert 0.3 <= np.abs(w).max() <= 0.5 + 1e-6
            assert env.min() >= 0 and env.max() == pytest.approx(1.0)
            assert env.max() - env.min() > 0.5  # clearly varying loudness
        spec = np.abs(np.fft.rfft(w)) ** 2
        f = np.fft.rfftfreq(w.size, 1 / tw.SR)
        centroids.append(float((spec * f).sum() / spec.sum()))
    # distinct spectra: hum < chirps ~ beeps < noise bursts
    assert centroids[1] < 400 and centroids[2] > 2000
    assert 600 < centroids[0] < 1500 and 600 < centroids[3] < 1600
    w2, e2 = tw.object_sound(2, _rng(5), seconds=2.0, sr=8000)
    assert w2.shape == (16000,) and e2.shape == (4,)
    for c in range(3):
        a = tw.ambient_sound(c, _rng(c))
        assert a.shape == (64000,) and a.dtype == np.float32 and 0.03 < np.abs(a).max() < 0.07
    with pytest.raises(ValueError, match="object class"):
        tw.object_sound(4, _rng())
    with pytest.raises(ValueError, match="background"):
        tw.ambient_sound(3, _rng())


def test_determinism():
    a = tw.sample_scene(_rng(3), 2)
    b = tw.sample_scene(_rng(3), 2)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(tw.render(a[0]), tw.render(b[0]))
    v1, c1 = toy_batches.video_batch(_rng(1), 4)
    v2, c2 = toy_batches.video_batch(_rng(1), 4)
    v3, _ = toy_batches.video_batch(_rng(2), 4)
    np.testing.assert_array_equal(v1, v2)
    assert c1 == c2 and not np.array_equal(v1, v3)
    m1 = toy_batches.separation_batch(_rng(4), 2)
    m2 = toy_batches.separation_batch(_rng(4), 2)
    np.testing.assert_array_equal(m1[0], m2[0])
    assert m1[2] == m2[2]


def test_batches_shapes_and_distribution():
    rng = _rng(0)
    img, caps = toy_batches.image_batch(rng, 300, res=16)
    assert img.shape == (300, 16, 16, 3) and img.dtype == np.uint8 and len(caps) == 300
    n_obj = np.array(
        [0 if not c or c in ("night", "sand", "room") else c.count(" and ") + 1 for c in caps]
    )
    assert 0.08 < np.mean(n_obj == 0) < 0.25 and 0.25 < np.mean(n_obj == 2) < 0.45
    vid, caps = toy_batches.video_batch(
        rng, 5, num_frames=6, res=24, max_objects=3, p_empty_caption=1.0
    )
    assert vid.shape == (5, 6, 24, 24, 3) and vid.dtype == np.uint8 and caps == [""] * 5
    mix, tgt, q = toy_batches.separation_batch(rng, 3, seconds=1.0)
    assert mix.shape == tgt.shape == (3, 16000) and mix.dtype == tgt.dtype == np.float32
    assert all(x in tw.labels() for x in q)
    with pytest.raises(ValueError, match="max_objects"):
        toy_batches.image_batch(rng, 2, max_objects=5)
    with pytest.raises(ValueError, match="max_sources"):
        toy_batches.separation_batch(rng, 2, max_sources=1)


def test_object_counts_and_separated_scenes():
    rng = _rng(3)
    counts = (0.0, 0.0, 0.5, 0.5)  # two or three objects, never zero or one
    cls, centers, sizes, *_ = toy_batches._batch_scenes(
        rng, 200, 2, 8, counts=counts, separate=True
    )
    k = (cls >= 0).sum(1)
    assert set(k.tolist()) == {2, 3} and 0.35 < np.mean(k == 3) < 0.65
    assert cls.shape[1] == 3  # counts sets the most objects, max_objects is ignored
    # no two objects of a scene overlap (full-size radii, 1.15x margin), bar a rare fallback
    gaps = []
    for c, x, r in zip(cls, centers, sizes):
        on = np.nonzero(c >= 0)[0]
        for a in on:
            for b in on[on > a]:
                gaps.append(np.linalg.norm(x[a] - x[b]) - 1.15 * (r[a] + r[b]))
    assert np.mean(np.array(gaps) >= 0) > 0.97
    assert np.all((centers >= 0.15) & (centers <= 0.85))
    # the captions list every object; the frames show every one of them (none hidden)
    vid, caps = toy_batches.video_batch(_rng(4), 12, counts=counts, separate=True)
    assert all(c.count(" and ") in (1, 2) for c in caps)
    # the default draw is unchanged by the new options' existence
    a = toy_batches.video_batch(_rng(5), 3)
    b = toy_batches.video_batch(_rng(5), 3, counts=None, separate=False)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    for bad in ((1.0,), (0.5, -0.1, 0.6), (0.0, 0.0), (0.2,) * 6):
        with pytest.raises(ValueError, match="object counts"):
            toy_batches.video_batch(_rng(6), 2, counts=bad)


def test_separation_target_is_a_stem_of_the_mixture():
    for seed in range(3):
        mix, tgt, q = toy_batches.separation_batch(_rng(seed), 1, max_sources=4)
        m2, t2, q2, stems, amb = toy_batches._separation_example(_rng(seed), tw.SECONDS, tw.SR, 4)
        np.testing.assert_array_equal(mix[0], m2)
        np.testing.assert_array_equal(tgt[0], t2)
        assert q[0] == q2
        raw = stems.sum(0) + amb
        g = min(1.0, 0.99 / np.abs(raw).max())
        np.testing.assert_allclose(mix[0], raw * g, atol=1e-6)
        np.testing.assert_allclose(mix[0], tw.mixture(stems, amb), atol=1e-7)
        assert np.abs(mix[0]).max() <= 0.99 + 1e-6
        # the target is exactly one of the stems (up to the mix's scaling)
        errs = [np.abs(tgt[0] - s * np.float32(g)).max() for s in stems]
        assert min(errs) < 1e-6 and sorted(errs)[1] > 0.01


def test_size_follows_envelope():
    for c in range(4):
        env = np.linspace(0, 1, 8, dtype=np.float32)[np.array([3, 0, 7, 5, 1, 6, 2, 4])]
        scene = tw.Scene([c], np.array([[0.5, 0.5]], np.float32), np.array([0.2]), 2, env[None])
        frames = tw.render(scene).astype(np.float32)
        d = np.linalg.norm(frames - tw.OBJECT_COLORS[c], axis=-1)
        count = (d < 40).sum(axis=(1, 2))
        assert np.corrcoef(count, env)[0, 1] > 0.8, (c, count)
    # random scenes from sample_scene: envs come from the stems
    scene, stems, _ = tw.sample_scene(_rng(7), 1)
    np.testing.assert_array_equal(scene.envs[0], tw._frame_rms(stems[0], 8, tw.SR))
    frames = tw.render(scene).astype(np.float32)
    d = np.linalg.norm(frames - tw.OBJECT_COLORS[scene.objects[0]], axis=-1)
    assert np.corrcoef((d < 40).sum(axis=(1, 2)), scene.envs[0])[0, 1] > 0.8


def test_backgrounds_never_near_object_colors():
    for bg in range(3):
        for seed in range(4):
            s = tw.Scene([], np.zeros((0, 2)), np.zeros(0), bg, np.zeros((0, 8)), seed)
            f = tw.render(s, 1, 64).reshape(-1, 1, 3).astype(np.float32)
            assert np.linalg.norm(f - tw.OBJECT_COLORS, axis=-1).min() > 90.0 + 10.0


def test_placement_true_in_box_false_when_swapped_or_empty():
    boxes = np.array(toy_batches._DEMO_BOXES[2], np.float32)
    for seed in range(4):
        scene, _, _ = tw.sample_scene(_rng(seed), 2, boxes)
        frames = tw.render(scene)
        ok = colour_pl.colour_placement(frames, boxes, scene.objects, C)
        assert ok.shape == (2, 8) and ok.dtype == bool
        loud = scene.envs >= 0.3
        assert ok[loud].all() and ok.mean() > 0.8
        swapped = colour_pl.colour_placement(frames, boxes, scene.objects[::-1], C)
        assert not swapped.any()
        empty = dataclasses_replace_empty(scene)
        assert not colour_pl.colour_placement(tw.render(empty), boxes, scene.objects, C).any()
    with pytest.raises(ValueError, match="boxes"):
        colour_pl.colour_placement(frames, boxes[:1], scene.objects, C)


def test_placement_outcomes_name_each_failure():
    import dataclasses

    boxes = np.array(toy_batches._DEMO_BOXES[2], np.float32)  # left / right halves
    scene, _, _ = tw.sample_scene(_rng(0), 2, boxes)
    scene = dataclasses.replace(scene, envs=np.ones_like(scene.envs))  # full size: all frames win
    frames = tw.render(scene)
    a, b = scene.objects
    out = colour_pl.colour_placement_outcomes(frames, boxes, scene.objects, C)
    assert out.dtype == np.int32 and (out == colour_pl.COLOUR_OUTCOMES.index("correct")).all()
    np.testing.assert_array_equal(
        out == 0, colour_pl.colour_placement(frames, boxes, scene.objects, C)
    )
    # swapped classes: the other source wins each box
    assert (
        colour_pl.colour_placement_outcomes(frames, boxes, [b, a], C)
        == colour_pl.COLOUR_OUTCOMES.index("other")
    ).all()
    # only object a drawn: box 1 (for b) shows nothing, and b is nowhere -> absent
    only_a = dataclasses.replace(
        scene, objects=[a], centers=scene.centers[:1], sizes=scene.sizes[:1], envs=scene.envs[:1]
    )
    out = colour_pl.colour_placement_outcomes(tw.render(only_a), boxes, [a, b], C)
    assert (out[0] == 0).all() and (out[1] == colour_pl.COLOUR_OUTCOMES.index("absent")).all()
    # a drawn in the right half while its box is the left one -> elsewhere
    moved = dataclasses.replace(only_a, centers=scene.centers[1:2])
    out = colour_pl.colour_placement_outcomes(tw.render(moved), boxes[:1], [a], C)
    assert (out == colour_pl.COLOUR_OUTCOMES.index("elsewhere")).all()


def dataclasses_replace_empty(scene):
    import dataclasses

    return dataclasses.replace(
        scene, objects=[], centers=np.zeros((0, 2)), sizes=np.zeros(0), envs=np.zeros((0, 8))
    )


def test_sample_scene_boxes_and_errors():
    rng = _rng(1)
    boxes = toy_batches.random_boxes(rng, 3)
    assert boxes.shape == (3, 4)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert np.all((w >= 0.35 - 1e-6) & (w <= 0.5 + 1e-6) & (h >= 0.35 - 1e-6) & (h <= 0.5 + 1e-6))
    for i in range(3):
        for j in range(i):
            a, b = boxes[i], boxes[j]
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
    assert toy_batches.random_boxes(rng, 4).shape == (4, 4)
    scene, stems, amb = tw.sample_scene(rng, 3, boxes)
    np.testing.assert_allclose(scene.centers, (boxes[:, :2] + boxes[:, 2:]) / 2, atol=1e-6)
    assert np.all(scene.sizes <= np.minimum(w, h) / 2 + 1e-6)
    assert stems.shape == (3, 64000) and amb.shape == (64000,) and len(set(scene.objects)) == 3
    scene, stems, _ = tw.sample_scene(rng, 0)
    assert stems.shape == (0, 64000) and tw.render(scene).shape == (8, 32, 32, 3)
    with pytest.raises(ValueError, match="num_objects"):
        tw.sample_scene(rng, 5)
    with pytest.raises(ValueError, match="boxes"):
        tw.sample_scene(rng, 2, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="distinct"):
        tw.render(tw.Scene([1, 1], np.zeros((2, 2)), np.full(2, 0.1), 0, np.zeros((2, 8))))
    d = toy_batches.demo_job(0, 3)
    assert d["stems"].shape == (3, 64000) and d["boxes"].shape == (3, 4)
    np.testing.assert_allclose(d["mixture"], tw.mixture(d["stems"], d["ambient"]))
    assert d["labels"] == [tw.OBJECTS[c].label for c in d["classes"]]


def test_caption_format():
    s = tw.Scene([0, 1], np.zeros((2, 2)), np.full(2, 0.15), 1, np.zeros((2, 8)))
    assert tw.caption(s) == "red disc and blue square on sand"
    assert tw.caption(s, with_background=False) == "red disc and blue square"
    e = tw.Scene([], np.zeros((0, 2)), np.zeros(0), 0, np.zeros((0, 8)))
    assert tw.caption(e) == "night" and tw.caption(e, False) == ""


def test_write_cim_dataset_readable(tmp_path):
    from maestro_jax.data.pipeline import dataset_info, load_manifest, make_dataset

    counts = toy_batches.write_cim_dataset(tmp_path, num_clips=6, seed=0, num_test=2, res=16)
    assert counts == {"train": 4, "test": 2}
    info = dataset_info(tmp_path)
    assert info["classes"] == tw.labels()
    assert info["features"]["frames"] == ((4, 16, 16, 3), "uint8")
    assert info["features"]["mel"] == ((2, 128, 204), "float16")
    rows = load_manifest(tmp_path, "train")
    assert [r["label"] for r in rows] == tw.labels()
    assert rows[0]["frame_indices"] == [1, 3, 5, 7] and rows[0]["num_frames"] == 8
    batch = next(iter(make_dataset(tmp_path, "train", batch_size=4, seed=0, shuffle=False)))
    assert batch["frames"].shape == (4, 4, 16, 16, 3)
    np.testing.assert_array_equal(batch["label_index"], [0, 1, 2, 3])
    # the class's colour is present in its frames
    for i in range(4):
        d = np.linalg.norm(batch["frames"][i].astype(np.float32) - tw.OBJECT_COLORS[i], axis=-1)
        assert (d < 40).sum() > 0


def test_layout_batch_boxes_hold_their_objects():
    """video_layout_batch: every object is drawn inside its box (all frames), centred in it."""
    rng = _rng(5)
    frames, caps, cls, boxes = toy_batches.video_layout_batch(
        rng, 24, counts=(0.0, 0.3, 0.4, 0.3), separate=True
    )
    assert frames.shape[:2] == (24, tw.NUM_FRAMES) and len(caps) == 24
    assert np.all(boxes[cls < 0] == 0)
    res = frames.shape[2]
    pix = (np.arange(res) + 0.5) / res
    checked = 0
    for i, j in zip(*np.nonzero(cls >= 0)):
        col = tw.OBJECT_COLORS[cls[i, j]]
        near = np.all(np.abs(frames[i].astype(int) - col) <= 2, axis=-1)  # [T, H, W]
        x0, y0, x1, y1 = boxes[i, j]
        inside = (pix[None, :] >= y0 - 1 / res) & (pix[None, :] <= y1 + 1 / res)
        inside = inside.T & ((pix[None, :] >= x0 - 1 / res) & (pix[None, :] <= x1 + 1 / res))
        assert not np.any(near & ~inside[None]), (i, j)
        checked += int(near.any())
    assert checked >= 0.8 * int((cls >= 0).sum())
    # without a rng the box is the object's tight full-size extent
    tight = toy_batches.object_boxes(np.array([[0]]), np.array([[[0.5, 0.5]]]), np.array([[0.2]]))
    np.testing.assert_allclose(tight[0, 0], [0.3, 0.3, 0.7, 0.7], atol=1e-6)
