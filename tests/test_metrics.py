"""Evaluation metrics: FVD (Fréchet distance + I3D), AV-Align, IA, placement.

Fixtures `frechet` and `av_align` go through `convert.metrics.verify_*`; the full-size `i3d`
fixture is checked in tests/test_i3d.py. Here the I3D's
tiny-width Flax forward is checked against a float64 NumPy forward written from pytorch-i3d's
definition (torch layouts, zero-padded max pools), fed a synthetic state dict in pytorch-i3d key
naming through the converter. librosa (numba compile ~30 s) is only used inside ONE module fixture.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from convert.common import ConversionError, check_table_against_keys
from convert.i3d import convert_i3d, i3d_table, target_params
from convert.metrics import AV_PAIRS, verify_av_align, verify_frechet
from maestro_jax.metrics import av_align as av
from maestro_jax.metrics import fvd, ia, placement
from maestro_jax.models.i3d import (
    BN_EPS,
    I3DConfig,
    InceptionI3d,
    preprocess_videos,
    tiny_config,
)


def _failed(checks):
    return [(c.name, c.errors()) for c in checks if not c.passed()]


# ============================================================================= FVD
def test_frechet_fixture(fixtures_dir):
    checks = verify_frechet(fixtures_dir / "frechet")
    assert len(checks) == 24
    assert not _failed(checks), _failed(checks)


def test_fvd_self_zero_and_grows_with_noise():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(80, 16)) @ rng.normal(size=(16, 16)) + 3.0
    for conv in fvd.CONVENTIONS:
        r = fvd.fvd_from_features(real, real, conv)
        assert abs(r.fvd) < 1e-8, (conv, r)
        assert (r.n_gen, r.n_real, r.convention) == (80, 80, conv)
    noise = rng.normal(size=real.shape)
    vals = [fvd.fvd_from_features(real + s * noise, real).fvd for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(vals, vals[1:])), vals
    assert vals[0] > 1e-3
    # All three roots agree on a full-rank case; 'eigh' is the stable default of frechet_distance.
    mu1, s1 = fvd.feature_stats(real + noise, "npcov")
    mu2, s2 = fvd.feature_stats(real, "npcov")
    out = [fvd.frechet_distance(mu1, s1, mu2, s2, m) for m in fvd.SQRT_METHODS]
    np.testing.assert_allclose(out, out[0], rtol=1e-9)
    assert "generated 80, real 80" in str(fvd.fvd_from_features(real + noise, real))


def test_fvd_biased_vs_unbiased_and_bad_input():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 4)), rng.normal(size=(12, 4)) + 1
    mu, s_b = fvd.feature_stats(a, "styleganv")
    _, s_u = fvd.feature_stats(a, "npcov")
    a32 = a.astype(np.float32).astype(np.float64)  # StyleGAN-V casts features to float32 first
    np.testing.assert_allclose(s_b, np.cov(a32, rowvar=False, bias=True), rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(s_u, np.cov(a, rowvar=False), rtol=1e-12)
    assert fvd.fvd_from_features(a, b).n_gen == 10
    with pytest.raises(ValueError, match="feature sizes differ"):
        fvd.fvd_from_features(a, b[:, :3])
    with pytest.raises(ValueError, match="at least 2"):
        fvd.fvd_from_features(a[:1], b)
    with pytest.raises(ValueError, match="convention"):
        fvd.feature_stats(a, "tf")


def test_reference_cache(tmp_path):
    files = []
    for i in range(3):
        f = tmp_path / f"v{i}.mp4"
        f.write_bytes(b"x" * (i + 1))
        files.append(f)
    calls = []

    def compute(fs):
        calls.append(list(fs))
        return np.arange(len(fs) * 4, dtype=np.float64).reshape(len(fs), 4) ** 1.5

    settings = {"num_frames": 16}
    cache = tmp_path / "cache"
    f1 = fvd.cached_features(files, compute, cache, settings)
    f2 = fvd.cached_features(list(reversed(files)), compute, cache, settings)  # same set
    assert len(calls) == 1 and np.array_equal(f1, f2)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # atomic, no leftovers
    fvd.cached_features(files, compute, cache, {"num_frames": 8})  # other settings -> new key
    assert len(calls) == 2
    files[0].write_bytes(b"changed!")  # a changed file -> new key
    mu, sigma, n = fvd.reference_stats(files, compute, cache, settings)
    assert len(calls) == 3 and n == 3 and sigma.shape == (4, 4) and mu.shape == (4,)


# ============================================================================= I3D
# The architecture as pytorch-i3d defines it, written out independently of the Flax module.
_MIXED = {
    "Mixed_3b": [64, 96, 128, 16, 32, 32],
    "Mixed_3c": [128, 128, 192, 32, 96, 64],
    "Mixed_4b": [192, 96, 208, 16, 48, 64],
    "Mixed_4c": [160, 112, 224, 24, 64, 64],
    "Mixed_4d": [128, 128, 256, 24, 64, 64],
    "Mixed_4e": [112, 144, 288, 32, 64, 64],
    "Mixed_4f": [256, 160, 320, 32, 128, 128],
    "Mixed_5b": [256, 160, 320, 32, 128, 128],
    "Mixed_5c": [384, 192, 384, 48, 128, 128],
}
_ORDER = [
    ("Conv3d_1a_7x7", 64, 7, 2),
    ("MaxPool3d_2a_3x3", (1, 3, 3), (1, 2, 2)),
    ("Conv3d_2b_1x1", 64, 1, 1),
    ("Conv3d_2c_3x3", 192, 3, 1),
    ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    "Mixed_3b",
    "Mixed_3c",
    ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_4b",
    "Mixed_4c",
    "Mixed_4d",
    "Mixed_4e",
    "Mixed_4f",
    ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
    "Mixed_5b",
    "Mixed_5c",
]


def _units(width: float, num_classes: int) -> dict[str, tuple[int, int, int]]:
    """{unit name: (in, out, kernel)} in pytorch-i3d naming."""
    c = lambda n: max(1, int(round(n * width)))
    units, cin = {}, 3
    for item in _ORDER:
        if isinstance(item, str):
            o = [c(v) for v in _MIXED[item]]
            units.update(
                {
                    f"{item}.b0": (cin, o[0], 1),
                    f"{item}.b1a": (cin, o[1], 1),
                    f"{item}.b1b": (o[1], o[2], 3),
                    f"{item}.b2a": (cin, o[3], 1),
                    f"{item}.b2b": (o[3], o[4], 3),
                    f"{item}.b3b": (cin, o[5], 1),
                }
            )
            cin = o[0] + o[2] + o[4] + o[5]
        elif item[0].startswith("Conv"):
            units[item[0]] = (cin, c(item[1]), item[2])
            cin = c(item[1])
    units["logits"] = (cin, num_classes, 1)
    return units


def _fake_state_dict(width: float, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sd = {}
    for name, (cin, cout, k) in _units(width, num_classes).items():
        fan = cin * k**3
        sd[f"{name}.conv3d.weight"] = rng.normal(0, 0.2 / fan**0.5, (cout, cin, k, k, k))
        if name == "logits":
            sd[f"{name}.conv3d.bias"] = rng.normal(0, 0.1, cout)
            continue
        sd[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout)
        sd[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout)
        sd[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout)
        # Conv outputs have variance ~0.04 E[x^2]; variances this small keep activations O(1)
        # and make the eps (1e-3) matter: a 1e-5 eps changes the outputs by several %.
        sd[f"{name}.bn.running_var"] = rng.uniform(0.01, 0.05, cout)
        sd[f"{name}.bn.num_batches_tracked"] = np.array(7, np.int64)
    return {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in sd.items()}


def _same_pad(n: int, k: int, s: int) -> tuple[int, int]:
    # pytorch-i3d `compute_pad`, then pad_f = pad // 2, pad_b = pad - pad_f.
    pad = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
    return pad // 2, pad - pad // 2


def _np_conv3d(x, w, b, stride):
    """x [B, T, H, W, C] float64; w torch (O, I, kt, kh, kw); TF-'SAME' zero padding."""
    k = w.shape[2:]
    pads = [_same_pad(x.shape[1 + i], k[i], stride) for i in range(3)]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    out_sz = [(xp.shape[1 + i] - k[i]) // stride + 1 for i in range(3)]
    out = np.zeros((x.shape[0], *out_sz, w.shape[0]))
    for dt in range(k[0]):
        for dh in range(k[1]):
            for dw in range(k[2]):
                patch = xp[
                    :,
                    dt : dt + (out_sz[0] - 1) * stride + 1 : stride,
                    dh : dh + (out_sz[1] - 1) * stride + 1 : stride,
                    dw : dw + (out_sz[2] - 1) * stride + 1 : stride,
                ]
                out += patch @ w[:, :, dt, dh, dw].T
    return out if b is None else out + b


def _np_maxpool(x, k, s):
    """pytorch-i3d MaxPool3dSamePadding: zero padding (F.pad), then max pool."""
    pads = [_same_pad(x.shape[1 + i], k[i], s[i]) for i in range(3)]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    out_sz = [(xp.shape[1 + i] - k[i]) // s[i] + 1 for i in range(3)]
    out = np.full((x.shape[0], *out_sz, x.shape[-1]), -np.inf)
    for dt in range(k[0]):
        for dh in range(k[1]):
            for dw in range(k[2]):
                out = np.maximum(
                    out,
                    xp[
                        :,
                        dt : dt + (out_sz[0] - 1) * s[0] + 1 : s[0],
                        dh : dh + (out_sz[1] - 1) * s[1] + 1 : s[1],
                        dw : dw + (out_sz[2] - 1) * s[2] + 1 : s[2],
                    ],
                )
    return out


def _np_i3d(sd, x, pool_window, eps=1e-3):
    """float64 NumPy forward of pytorch-i3d `InceptionI3d` -> logits averaged over time."""
    p = {k: np.asarray(v, np.float64) for k, v in sd.items()}

    def unit(name, x, stride=1):
        y = _np_conv3d(x, p[f"{name}.conv3d.weight"], None, stride)
        y = (y - p[f"{name}.bn.running_mean"]) / np.sqrt(p[f"{name}.bn.running_var"] + eps)
        return np.maximum(y * p[f"{name}.bn.weight"] + p[f"{name}.bn.bias"], 0)

    x = np.asarray(x, np.float64)
    for item in _ORDER:
        if isinstance(item, str):
            b0 = unit(f"{item}.b0", x)
            b1 = unit(f"{item}.b1b", unit(f"{item}.b1a", x))
            b2 = unit(f"{item}.b2b", unit(f"{item}.b2a", x))
            b3 = unit(f"{item}.b3b", _np_maxpool(x, (3, 3, 3), (1, 1, 1)))
            x = np.concatenate([b0, b1, b2, b3], -1)
        elif item[0].startswith("Conv"):
            x = unit(item[0], x, item[3])
        else:
            x = _np_maxpool(x, item[1], item[2])
    kt, kh, kw = pool_window  # AvgPool3d, VALID, stride 1
    _, t, h, w, _ = x.shape
    pooled = np.stack(
        [
            x[:, i : i + kt, j : j + kh, l : l + kw].mean(axis=(1, 2, 3))
            for i in range(t - kt + 1)
            for j in range(h - kh + 1)
            for l in range(w - kw + 1)
        ],
        axis=1,
    )  # [B, positions, C]
    logits = pooled @ p["logits.conv3d.weight"][:, :, 0, 0, 0].T + p["logits.conv3d.bias"]
    return logits.mean(axis=1)


@pytest.fixture(scope="module")
def i3d_tiny():
    cfg = tiny_config()
    sd = _fake_state_dict(cfg.width, cfg.num_classes)
    params = convert_i3d(sd, cfg)
    x = np.random.default_rng(3).uniform(-1, 1, (4, 12, 48, 40, 3)).astype(np.float32)
    model = InceptionI3d(cfg)
    fn = jax.jit(lambda p, v: model.apply({"params": p}, v))
    out = np.asarray(fn(params, x))
    return cfg, sd, params, x, fn, out


def test_i3d_tiny_matches_numpy_float64(i3d_tiny):
    """Synthetic check (random weights in pytorch-i3d naming; no real I3D weights are used)."""
    cfg, sd, _, x, _, out = i3d_tiny
    assert out.shape == (4, cfg.num_classes) and out.dtype == np.float32
    assert 0.01 < np.abs(out).max() < 100  # a well-scaled synthetic network
    ref = _np_i3d(sd, x, cfg.pool_window)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < 1e-5, rel
    # eps matters at these variances: the reference with eps 1e-5 is far off.
    ref_bad = _np_i3d(sd, x[:1], cfg.pool_window, eps=1e-5)
    assert np.linalg.norm(ref_bad - ref[:1]) / np.linalg.norm(ref[:1]) > 1e-3


def test_i3d_sharded_equals_single_device(i3d_tiny, cpu_mesh):
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    _, _, params, x, fn, out = i3d_tiny
    xs = jax.device_put(x, NamedSharding(cpu_mesh, P("data")))
    ps = jax.device_put(params, NamedSharding(cpu_mesh, P()))
    out_s = np.asarray(fn(ps, xs))
    np.testing.assert_allclose(out_s, out, rtol=1e-6, atol=1e-6 * np.abs(out).max())


def test_i3d_feature_pipeline(i3d_tiny):
    """uint8 videos -> [-1, 1], resized -> logits; batches padded; FVD of a set with itself ~ 0."""
    cfg, _, params, _, fn, _ = i3d_tiny
    videos = np.random.default_rng(4).integers(0, 256, (3, 14, 24, 20, 3), dtype=np.uint8)
    ext = fvd.I3DFeatures(params, cfg, batch_size=2, num_frames=12, size=48)
    feats = ext(videos)
    assert feats.shape == (3, cfg.num_classes) and feats.dtype == np.float64
    x = preprocess_videos(videos, 12, 48)
    assert x.shape == (3, 12, 48, 48, 3) and -1 <= float(x.min()) and float(x.max()) <= 1
    np.testing.assert_allclose(preprocess_videos(np.full((1, 1, 2, 2, 3), 255), 1, 2), 1.0)
    np.testing.assert_allclose(preprocess_videos(np.zeros((1, 1, 2, 2, 3)), 1, 2), -1.0)
    # Batch padding / order do not change a video's features.
    np.testing.assert_allclose(ext(videos[::-1])[::-1], feats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ext(videos[:1])[0], feats[0], rtol=1e-5, atol=1e-6)
    square = videos[:, :12, :20, :20]  # already at size: only the scaling applies
    np.testing.assert_allclose(preprocess_videos(square, 12, 20), square / 127.5 - 1, atol=1e-6)
    assert abs(fvd.fvd_from_features(feats, feats).fvd) < 1e-6
    assert ext.settings()["size"] == 48
    with pytest.raises(ValueError, match="16 frames"):
        preprocess_videos(videos[:, :8])


def test_i3d_eps_shapes_and_errors():
    assert BN_EPS == 1e-3 and I3DConfig().bn_eps == 1e-3 and tiny_config().bn_eps == 1e-3
    full = jax.eval_shape(
        lambda: InceptionI3d(I3DConfig()).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 16, 224, 224, 3))
        )
    )["params"]
    assert full["logits"]["conv"]["kernel"].shape == (1, 1, 1, 1024, 400)
    assert full["Conv3d_1a_7x7"]["conv"]["kernel"].shape == (7, 7, 7, 3, 64)
    apply = lambda p, x: InceptionI3d(I3DConfig()).apply({"params": p}, x)
    feats = jax.eval_shape(apply, full, jax.ShapeDtypeStruct((2, 16, 224, 224, 3), jnp.float32))
    assert feats.shape == (2, 400)
    with pytest.raises(ValueError, match="pool_window"):
        jax.eval_shape(apply, full, jax.ShapeDtypeStruct((1, 16, 112, 112, 3), jnp.float32))
    with pytest.raises(ValueError, match="RGB clips"):
        jax.eval_shape(apply, full, jax.ShapeDtypeStruct((1, 16, 224, 224), jnp.float32))


def test_i3d_converter_full_keys_and_strictness():
    """The full-size table covers exactly pytorch-i3d's key set (built here from the published
    architecture; synthetic: no real checkpoint is read) at the right shapes."""
    units = _units(1.0, 400)
    keys = {}
    for name, (cin, cout, k) in units.items():
        keys[f"{name}.conv3d.weight"] = (cout, cin, k, k, k)
        if name == "logits":
            keys["logits.conv3d.bias"] = (cout,)
        else:
            for s in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{name}.bn.{s}"] = (cout,)
    assert len(keys) == 287
    cfg = I3DConfig()
    check_table_against_keys(keys, i3d_table(cfg), target_params(cfg))
    bad = dict(keys)
    del bad["Mixed_4c.b2b.conv3d.weight"]
    bad["Mixed_4c.b2c.conv3d.weight"] = (64, 24, 3, 3, 3)
    with pytest.raises(ConversionError, match="Mixed_4c.b2b.conv3d.weight") as e:
        check_table_against_keys(bad, i3d_table(cfg), target_params(cfg))
    assert "unexpected key in checkpoint: Mixed_4c.b2c" in str(e.value)
    bad = dict(keys, **{"logits.conv3d.weight": (600, 1024, 1, 1, 1)})
    with pytest.raises(ConversionError, match="shape mismatch for logits.conv3d.weight"):
        check_table_against_keys(bad, i3d_table(cfg), target_params(cfg))


# ============================================================================= AV-Align
def _synth_pair(clicks, seconds, fps=10, frames=24, jumps=(6, 16), sr=22050):
    """A white 14 px square on grey that jumps at `jumps` (frames), and clicks at `clicks` (s)."""
    rng = np.random.default_rng(5)
    pos = np.array([10, 10])
    vid = np.full((frames, 64, 64, 3), 20, np.uint8)
    for t in range(frames):
        if t in jumps:
            pos = rng.integers(2, 48, 2)
        vid[t, pos[0] : pos[0] + 14, pos[1] : pos[1] + 14] = 230
    audio = np.zeros(int(seconds * sr), np.float32)
    for c in clicks:
        i = int(c * sr)
        audio[i : i + 200] = 0.8 * np.hanning(200) * np.sign(np.sin(np.arange(200)))
    return vid, float(fps), audio, sr


@pytest.fixture(scope="module")
def av_runs(fixtures_dir):
    """Every librosa-using computation of this module, run once (one numba compile)."""
    checks = verify_av_align(fixtures_dir / "av_align")
    # 0.6 s jump + click; two clicks within +-0.1 s of the 1.6 s jump; a click at 2.0 s (no jump).
    vid, fps, audio, sr = _synth_pair([0.6, 1.54, 1.61, 2.0], 2.4)
    synth = av.av_align_details(vid, fps, audio, sr)
    # The same with 1 s more audio holding one more click after the video's end.
    vid2, _, audio2, _ = _synth_pair([0.6, 1.54, 1.61, 2.0, 3.0], 3.4)
    cut = av.av_align_details(vid2, fps, audio2, sr)
    full = av.av_align_details(vid2, fps, audio2, sr, match_duration=False)
    # A 44.1 kHz stereo input is resampled and mixed down like librosa.load.
    stereo = np.stack([np.repeat(audio, 2), np.repeat(audio, 2)], axis=1)
    score_44k = av.av_align_score(vid, fps, stereo, 44100, rule="2023")
    return checks, synth, cut, full, score_44k


def test_av_align_fixture(av_runs):
    checks = av_runs[0]
    assert len(checks) == 13 * len(AV_PAIRS) + 2
    assert not _failed(checks), _failed(checks)


def test_av_align_synthetic_rules(av_runs):
    _, synth, cut, full, score_44k = av_runs
    assert len(synth.audio_peaks) == 4
    np.testing.assert_allclose(
        synth.audio_peaks, [0.6, 1.54, 1.61, 2.0], atol=0.05
    )  # onsets trail clicks by up to ~2 hops
    for rule in av.RULES:
        np.testing.assert_array_equal(synth.video_peaks[rule], [0.6, 1.6])
    # 2023: the 1.6 s peak takes both nearby clicks -> 3 hits / (4 + 2 - 3) = 1.
    assert synth.hits["2023"] == 3 and synth.scores["2023"] == 1.0
    # 2025: one-to-one -> 2 / (4 + 2 - 2) = 0.5.
    assert synth.hits["2025"] == 2 and synth.scores["2025"] == 0.5
    # match_duration: the click after the last frame is cut away; without it, it is a miss.
    assert cut.scores == synth.scores and cut.audio_seconds == pytest.approx(2.4)
    assert len(full.audio_peaks) == 5 and full.scores["2025"] == pytest.approx(2 / 5)
    assert score_44k == synth.scores["2023"]


def test_flow_is_single_threaded_and_restores_opencv_threads():
    import cv2

    vid, fps, _, _ = _synth_pair([], 1.0)
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        runs = [av.flow_trajectory(vid) for _ in range(5)]
        assert cv2.getNumThreads() == 2  # the process-wide setting is given back
    finally:
        cv2.setNumThreads(before)
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])
    # between the jumps the frames are identical: one flat value, so no spurious peaks
    for lo, hi in ((1, 6), (7, 16), (17, 24)):
        assert np.unique(runs[0][lo:hi]).size == 1, runs[0]
    np.testing.assert_array_equal(av.video_peaks(runs[0], fps, "2023"), [0.6, 1.6])


def test_video_peaks_and_matching_rules():
    flow = np.array([0.0, 0.05, 0.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.3])
    np.testing.assert_array_equal(av.video_peaks(flow, 10.0, "2023"), [0.1, 0.3])  # ties: no peak
    np.testing.assert_array_equal(av.video_peaks(flow, 10.0, "2025"), [0.3])  # floor 0.1
    # Window is strict: |a - v| < 1/fps.
    assert av.match_score([0.2], [0.1], 10.0, "2025") == (0.0, 0)
    assert av.match_score([0.19], [0.1], 10.0, "2025") == (1.0, 1)
    assert av.match_score([0.1, 0.12], [0.1], 10.0, "2023") == (2.0, 2)
    assert av.match_score([0.1, 0.12], [0.1], 10.0, "2025") == (0.5, 1)
    # Both empty: defined (1.0 by default) or skipped (NaN) and counted in mean_score.
    assert av.match_score([], [], 10.0) == (1.0, 0)
    s, _ = av.match_score([], [], 10.0, both_empty=math.nan)
    assert av.mean_score([0.5, s, 1.0]) == (0.75, 2, 1)
    with pytest.raises(ValueError, match="rule"):
        av.video_peaks(flow, 10.0, "2024")
    with pytest.raises(ValueError, match="uint8"):
        av.flow_trajectory(np.zeros((3, 8, 8, 3), np.float32))


# ============================================================================= IA
def test_ia_is_a_cosine_in_range():
    rng = np.random.default_rng(7)
    frames = rng.normal(size=(16, 32))
    frames /= np.linalg.norm(frames, axis=1, keepdims=True)  # vision: norm 1
    audio = rng.normal(size=32)
    audio *= 20 / np.linalg.norm(audio)  # audio: norm 20
    v = ia.ia_video(frames, audio)
    assert -1 <= v <= 1
    np.testing.assert_allclose(v, np.mean(frames @ audio) / 20, rtol=1e-12)
    assert ia.ia_video(frames, 20 * frames.mean(0)) > ia.ia_video(frames, -frames.mean(0))
    assert ia.ia_video(np.tile(audio, (4, 1)) / 20, audio) == pytest.approx(1.0)
    assert ia.ia_video(np.tile(audio, (4, 1)), -3 * audio) == pytest.approx(-1.0)
    # Per-segment: frame t vs segment floor(t K / T).
    segs = np.stack([audio, -audio])
    per = ia.ia_frames(np.tile(audio, (4, 1)), segs)
    np.testing.assert_allclose(per, [1, 1, -1, -1], atol=1e-12)
    # Mixture vs sources (mean over stems).
    emb = {"mixture": audio, "sources": [audio, -audio, audio]}
    assert ia.ia_video(frames, emb, "sources") == pytest.approx(v / 3)
    assert ia.ia_video(frames, emb, "mixture") == pytest.approx(v)
    assert ia.ia_dataset([0.2, 0.4]) == (pytest.approx(0.3), 2)
    with pytest.raises(ValueError, match="D = 32"):
        ia.ia_video(frames, audio[:16])


def test_ia_from_media_wrapper():
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    frames[..., 0] = 200  # red
    embed_vision = lambda f: f.reshape(len(f), -1, 3).mean(1).astype(np.float64)
    embed_audio = lambda w: np.asarray(w, np.float64) * 20
    red, blue = np.array([1.0, 0, 0]), np.array([0, 0, 1.0])
    assert ia.ia_from_media(frames, red, embed_vision, embed_audio) == pytest.approx(1.0)
    waves = {"mixture": blue, "sources": [red, blue]}
    assert ia.ia_from_media(frames, waves, embed_vision, embed_audio, "mixture") == 0.0
    assert ia.ia_from_media(frames, waves, embed_vision, embed_audio, "sources") == 0.5


# ============================================================================= placement
def test_placement_from_similarity_synthetic_embeddings():
    rng = np.random.default_rng(9)
    stems = rng.normal(size=(3, 64))
    crops = stems[:, None] + 0.3 * rng.normal(size=(3, 5, 64))  # [K, T, D], box k shows stem k
    sim = placement.crop_stem_similarity(crops, stems)
    r = placement.placement_from_similarity(sim, [0, 1, 2])
    assert r.accuracy == 1.0 and r.margin > 0 and r.n == 3
    r = placement.placement_from_similarity(sim, [1, 2, 0])  # every box labelled wrongly
    assert r.accuracy == 0.0 and r.margin < 0
    with pytest.raises(ValueError, match="at least 2 sources"):
        placement.placement_from_similarity(sim[:, :1], [0, 0, 0])


def _two_box_world():
    """Red square inside box 0 (left), blue inside box 1 (right, moving down), 4 frames 32x48."""
    t, h, w = 4, 32, 48
    frames = np.full((t, h, w, 3), 128, np.uint8)
    boxes = np.zeros((2, t, 4))
    for i in range(t):
        boxes[0, i] = [0.0, 0.0, 0.5, 0.5]
        boxes[1, i] = [0.5, 0.15 * i, 1.0, 0.15 * i + 0.5]
        frames[i, 0:16, 0:24] = (220, 20, 20)
        y0 = int(round(0.15 * i * h))
        frames[i, y0 : y0 + 16, 24:48] = (20, 20, 220)
    return frames, boxes


def test_placement_media_and_box_colours():
    frames, boxes = _two_box_world()
    colors = np.array([[220, 20, 20], [20, 20, 220], [20, 220, 20]])
    r = placement.box_color_accuracy(frames, boxes, colors, [0, 1])
    assert r.accuracy == 1.0 and r.n == 8 and r.margin > 100
    assert placement.box_color_accuracy(frames, boxes, colors, [1, 0]).accuracy == 0.0
    # A box that does not follow the moving source sees less of its colour.
    assert placement.box_color_accuracy(frames, boxes[:, 0], colors, [0, 1]).margin < r.margin
    crops = placement.crop_boxes(frames, boxes, crop_size=8)
    assert crops.shape == (2, 4, 8, 8, 3)
    embed_vision = lambda c: c.reshape(len(c), -1, 3).mean(1) - 120.0
    embed_audio = lambda wave: np.asarray(wave, np.float64)  # a "stem" is its colour direction
    stems = [np.array([1.0, -1, -1]), np.array([-1.0, -1, 1])]
    r = placement.placement_from_media(frames, boxes, stems, embed_vision, embed_audio, crop_size=8)
    assert r.accuracy == 1.0 and r.margin > 0.5
    r = placement.placement_from_media(frames, boxes, stems, embed_vision, embed_audio, [1, 0], 8)
    assert r.accuracy == 0.0
    with pytest.raises(ValueError, match="left<right"):
        placement.box_color_accuracy(frames, np.array([[0.5, 0, 0.2, 1]]), colors, [0])
