"""data/: frame rules, the grain pipeline and the synthetic data (preparation and curation:
test_data_prepare.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from maestro_jax.data import frames as F
from maestro_jax.data.synthetic import write_synthetic_dataset

# ==================================================================================================
# Frame rules and image ops
# ==================================================================================================


def test_frame_indices_default_rule():
    # k = ceil(F / (S - 1)); the last index (S - 1) k is clamped to F - 1.
    assert F.frame_indices(250) == [0, 63, 126, 189, 249]
    assert F.frame_indices(80) == [0, 20, 40, 60, 79]
    assert F.frame_indices(101) == [0, 26, 52, 78, 100]
    assert F.frame_indices(3) == [0, 1, 2, 2, 2]
    assert F.frame_indices(1) == [0] * 5
    assert F.frame_indices(40, num_segments=9) == [0, 5, 10, 15, 20, 25, 30, 35, 39]
    with pytest.raises(ValueError, match="at least one frame"):
        F.frame_indices(0)
    with pytest.raises(ValueError, match="frames rule"):
        F.frame_indices(10, rule="nope")


def test_frame_indices_release_rule():
    idx = F.frame_indices(250, "release")
    assert idx == [12, 37, 62, 87, 112, 137, 162, 187, 212, 237]
    # The 1/4 and 3/4 points of each of the S segments of F // S frames.
    f, s = 101, 5
    stride = f // s
    got = F.frame_indices(f, "release", s)
    assert len(got) == 2 * s == F.num_frames_for_rule("release", s)
    for i in range(s):
        a = i * stride
        assert abs(got[2 * i] - (a + stride / 4)) <= 1
        assert abs(got[2 * i + 1] - (a + 3 * stride / 4)) <= 1
    assert F.num_frames_for_rule("default") == 5


def test_flow_frame_indices():
    assert F.flow_frame_indices(80, 8.0) == list(range(0, 80, 4))
    assert F.flow_frame_indices(250, 25.0)[:4] == [0, 12, 25, 38]  # round(12.5) = 12
    assert len(F.flow_frame_indices(250, 25.0)) == 20


def test_resize_center_crop_geometry():
    # A horizontal ramp 48 x 64 -> short side 32 (42 wide, torchvision's int(32 * 64 / 48)),
    # centre crop from column round((42 - 32) / 2) = 5.
    x = np.tile(np.arange(64, dtype=np.float64)[None, :] * 4, (48, 1))
    frames = np.repeat(np.round(x).astype(np.uint8)[None, ..., None], 3, axis=-1)[[0, 0]]
    out = F.resize_center_crop(frames, 32)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    # Bilinear on a ramp is the ramp at the sample centres (away from the border).
    cols = np.arange(32) + 5
    want = ((cols + 0.5) * 64 / 42 - 0.5) * 4
    np.testing.assert_allclose(out[0, 16, 2:-2, 0], want[2:-2], atol=1.01)
    # The sparse numpy resampler is jax.image.resize's antialiased bilinear (up and down).
    import jax

    rng = np.random.default_rng(1)
    for h, w, oh, ow in [(36, 64, 51, 91), (90, 160, 32, 57), (37, 53, 37, 20)]:
        x = rng.integers(0, 255, (2, h, w, 3), dtype=np.uint8)
        ref = jax.image.resize(x.astype(np.float32), (2, oh, ow, 3), "bilinear", antialias=True)
        np.testing.assert_allclose(F.resize_bilinear(x, oh, ow), np.asarray(ref), atol=2e-3)
        crop = F.resize_bilinear(x, oh, ow, crop=(3, 5, 10, 12))
        np.testing.assert_allclose(crop, np.asarray(ref)[:, 3:13, 5:17], atol=2e-3)
    # A picture already at the size is returned unchanged.
    same = np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(F.resize_center_crop(same, 32), same)


# ==================================================================================================
# The grain pipeline over the synthetic dataset
# ==================================================================================================

N_SYN = 16


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    counts = write_synthetic_dataset(d, num_clips=N_SYN + 2, resolution=16, num_test=2)
    assert counts == {"train": N_SYN, "test": 2}
    return d


def _ids(ds, n=None):
    out = []
    for i, b in enumerate(ds):
        if n is not None and i >= n:
            break
        out.append(list(b["clip_id"]))
    return out


def test_synthetic_dataset_format(syn):
    import tensorflow_datasets as tfds

    from maestro_jax.data.pipeline import dataset_info, make_dataset

    info = dataset_info(syn)
    assert info["splits"] == {"train": N_SYN, "test": 2}
    assert info["features"]["frames"] == ((5, 16, 16, 3), "uint8")
    assert info["features"]["mel"] == ((5, 128, 204), "float16")
    ds = tfds.data_source("maestro_av", split="test", data_dir=str(syn))
    assert len(ds) == 2 and ds[1]["clip_id"].decode().endswith("00017")
    batch = next(iter(make_dataset(syn, "train", batch_size=4, seed=0)))
    assert set(batch) == {"frames", "mel", "label_index"}
    assert batch["frames"].shape == (4, 5, 16, 16, 3) and batch["frames"].dtype == np.uint8
    assert batch["mel"].shape == (4, 5, 128, 204) and batch["mel"].dtype == np.float32
    assert batch["label_index"].shape == (4,) and batch["label_index"].dtype == np.int32
    assert np.all(batch["label_index"] < len(info["classes"]))


def test_pipeline_determinism_and_epochs(syn):
    from maestro_jax.data.pipeline import make_dataset

    kw = dict(batch_size=4, keys=("clip_id",))
    a = _ids(make_dataset(syn, "train", seed=3, num_epochs=2, **kw))
    b = _ids(make_dataset(syn, "train", seed=3, num_epochs=2, **kw))
    c = _ids(make_dataset(syn, "train", seed=4, num_epochs=2, **kw))
    assert a == b and a != c and len(a) == 2 * N_SYN // 4
    flat = sum(a, [])
    e1, e2 = flat[:N_SYN], flat[N_SYN:]
    assert sorted(e1) == sorted(e2) == sorted(set(e1)) and e1 != e2  # reshuffled per epoch
    ordered = sum(_ids(make_dataset(syn, "train", seed=0, shuffle=False, num_epochs=1, **kw)), [])
    assert ordered == [f"synthetic_0_{i:05d}" for i in range(N_SYN)]


def test_pipeline_host_sharding(syn):
    from maestro_jax.data.pipeline import make_dataset

    kw = dict(batch_size=1, seed=7, keys=("clip_id",))
    # Infinite stream: host h gets global elements h, h + P, h + 2P, ...
    glob = sum(_ids(make_dataset(syn, "train", **kw), 36), [])
    hosts = [
        sum(_ids(make_dataset(syn, "train", process_index=h, process_count=3, **kw), 12), [])
        for h in range(3)
    ]
    for h in range(3):
        assert hosts[h] == glob[h::3]
    # One epoch over 4 hosts (16 = 4 x 4): disjoint and complete.
    parts = [
        sum(
            _ids(make_dataset(syn, "train", num_epochs=1, process_index=h, process_count=4, **kw)),
            [],
        )
        for h in range(4)
    ]
    assert all(len(p) == 4 for p in parts)
    assert sorted(sum(parts, [])) == sorted(f"synthetic_0_{i:05d}" for i in range(N_SYN))
    # 16 over 3 hosts: equal counts (5 each, hosts step together), no overlap.
    parts = [
        sum(
            _ids(make_dataset(syn, "train", num_epochs=1, process_index=h, process_count=3, **kw)),
            [],
        )
        for h in range(3)
    ]
    assert [len(p) for p in parts] == [5, 5, 5] and len(set(sum(parts, []))) == 15
    with pytest.raises(ValueError, match="process_index"):
        make_dataset(syn, "train", process_index=3, process_count=3, **kw)


def test_pipeline_iterator_state_roundtrip(syn):
    from maestro_jax.data.pipeline import make_dataset

    def make():
        return make_dataset(syn, "train", batch_size=3, seed=11, keys=("clip_id", "mel"))

    it = iter(make())
    for _ in range(4):  # step k = 4, crossing the first epoch boundary later
        next(it)
    state = it.get_state()
    state = json.loads(json.dumps(state))  # it must survive a checkpoint as JSON
    want = [next(it) for _ in range(5)]
    it2 = iter(make())
    it2.set_state(state)
    got = [next(it2) for _ in range(5)]
    for w, g in zip(want, got):
        assert list(w["clip_id"]) == list(g["clip_id"])
        np.testing.assert_array_equal(w["mel"], g["mel"])


def test_pipeline_errors(syn, tmp_path):
    from maestro_jax.data.pipeline import make_dataset

    with pytest.raises(ValueError, match="split 'validation'"):
        make_dataset(syn, "validation", batch_size=2, seed=0)
    with pytest.raises(FileNotFoundError, match="data.prepare"):
        make_dataset(tmp_path, "train", batch_size=2, seed=0)
    shutil.rmtree(tmp_path)
