"""Attention Mosaic: contexts, boxes, rasterisation, Object Locating and Mosaic Denoising.

References: the `object_locating` fixture (release `dd_core`) and float64 numpy re-implementations
written here from docs/method.md (naive loops over sources and cells).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from convert.mosaic import verify_object_locating
from maestro_jax import mosaic
from maestro_jax.nn.attention import dot_product_attention

L, DC, HEADS, DH, NQ, OFF = 77, 16, 2, 8, 4, 1
RES = ((6, 8), (3, 4))
SCALE = DH**-0.5


# ------------------------------------------------------------------------- shared tiny setup


def _setup(n_a=3, n_f=4, n_seg=2, seed=0):
    rng = np.random.default_rng(seed)
    null = rng.normal(size=(L, DC)).astype(np.float32)
    audio = rng.normal(size=(n_a, n_seg, NQ, DC)).astype(np.float32)
    wk = rng.normal(size=(DC, HEADS * DH)).astype(np.float32) / 4
    wv = rng.normal(size=(DC, HEADS * DH)).astype(np.float32)
    return null, audio, wk, wv


def _project(wk, wv):
    def project_kv(ctx):
        k = jnp.einsum("...ld,de->...le", ctx, wk, precision="highest")
        v = jnp.einsum("...ld,de->...le", ctx, wv, precision="highest")
        return (
            k.reshape(*k.shape[:-1], HEADS, DH),
            v.reshape(*v.shape[:-1], HEADS, DH),
        )

    return project_kv


def _np_attend(q, k, v, scale):
    """q [T, H, dh], k/v [L, H, dh] float64 -> [T, H, dh]."""
    s = np.einsum("thd,lhd->htl", q, k) * scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("htl,lhd->thd", p, v)


# Random boxes at the two resolutions, with overlapping, touching and one-cell boxes.
BOXES_A = (
    mosaic.Boxes.static((0.0, 0.0, 1.0, 1.0)),  # full-frame background box
    mosaic.Boxes.static((0.0, 0.1, 0.5, 0.9)),  # touches box 2's left edge
    mosaic.Boxes.keyframed([(0.0, (0.5, 0.2, 1.0, 0.8)), (1.0, (0.25, 0.34, 0.5, 0.66))]),
)
BOXES_B = (  # gaps between boxes (background cells), a one-cell box at 3x4
    mosaic.Boxes.static((0.0, 0.0, 0.3, 0.4)),
    mosaic.Boxes.static((0.25, 0.34, 0.5, 0.66)),  # exactly one cell at 3x4
    mosaic.Boxes.static((0.7, 0.5, 1.0, 1.0)),
)


def _contexts(null, audio, n_f):
    return mosaic.build_contexts(jnp.asarray(null), jnp.asarray(audio), n_f, token_offset=OFF)


# ------------------------------------------------------------------------- fixture parity


def test_object_locating_fixture(fixtures_dir):
    checks = verify_object_locating(fixtures_dir / "object_locating")
    bad = [(c.name, c.errors()) for c in checks if not c.passed()]
    assert not bad, bad
    # 4 cases with 4, 4, 16, 16 saved rows: 2 checks per row, 4 per case, 16 box-cell checks
    rows = [c.name for c in checks if "_row" in c.name]
    assert len(rows) == 2 * 40 and len(checks) == 80 + 4 * 4 + 16
    assert "h20w32_heads10_TD_row15(frame15,head8)_f16emul_logits_vs_release" in rows


def _release_f16_locate(x, gaussians, smax, strengthen=0.5, weaken=0.05):
    """numpy emulation of the release's float16 steps on given Gaussians [2, h, w] (peak 1):
    columns 0..20 of the edited logits and the float16 map M [h, w, 21]."""
    g = (gaussians.astype(np.float16) * np.float16(smax)).astype(np.float16)
    m = np.zeros((*gaussians.shape[1:], 21), np.float16)
    m[..., 1:11] = (g[0] - g[1]).astype(np.float16)[..., None]
    m[..., 11:21] = (g[1] - g[0]).astype(np.float16)[..., None]
    m32 = m.astype(np.float32)
    wgt = np.where(m == 0, np.float32(np.float16(weaken)), np.float32(1))
    out = x[..., :21] * wgt + np.float32(strengthen) * m32
    out[..., 0] = x[..., 0]
    return out, m32


def _synthetic_object_locating(root, h=10, w=16, heads=20, frames=(0, 7, 15), sheads=(3, 17)):
    """A fixture folder of the `object_locating` kind with TWO saved heads per frame, its
    expected arrays made by this repo's port (float32) and a float16 emulation of its maps."""
    rng = np.random.default_rng(11)
    rows = len(frames) * len(sheads)
    x = (2 * rng.normal(size=(rows, h, w, L))).astype(np.float16).astype(np.float32)
    x[3, 4, 5, 40] = 12.5  # the global max, in slice row 3 = frame 7, head 17
    smax = float(x.max())
    arrays = {f"in_logits_h{h}w{w}_heads{heads}": x}
    cases, cells = {}, {}
    for pos in ("LR", "TD"):
        name = f"h{h}w{w}_heads{heads}_{pos}"
        locate, _ = mosaic.preset(pos)
        r = mosaic.rasterize(locate, (h, w), len(frames), cell_rule="release")
        col_map, audio = mosaic.locate_column_map(
            jnp.asarray(r.locate_map.reshape(2, len(frames), h * w)), 10, 1
        )
        per_row = jnp.repeat(col_map, len(sheads), axis=0)  # frame-major rows
        out = mosaic.locate_logits(jnp.asarray(x.reshape(rows, h * w, L)), per_row, audio, smax)
        out16, m16 = _release_f16_locate(x, r.gaussians[:, 0], smax)
        arrays |= {
            f"out_logits_f32map_cols0to20_{name}": np.asarray(out).reshape(x.shape)[..., :21],
            f"out_logits_cols0to20_{name}": out16,
            f"out_map_f32_{name}": np.asarray(col_map)[0].reshape(h, w, L)[..., :21] * smax,
            f"out_map_f16_{name}": m16,
        }
        cases[name] = {
            "input": f"in_logits_h{h}w{w}_heads{heads}",
            "heads": heads,
            "h": h,
            "w": w,
            "pos": pos,
            "full_tensor_shape": [16 * heads, h, w, L],
            "saved_rows_of_full_tensor": [f * heads + hd for f in frames for hd in sheads],
            "saved_frames": list(frames),
            "saved_heads": list(sheads),
            "num_frames_for_saved_slice": len(frames),
            "global_max": smax,
            "global_max_at_row_frame_head": [7 * heads + 17, 7, 17],
        }
        # TrailBlazer's BoundingBox integer cells, written out independently of `rasterize`
        cells[f"{h}x{w}/{pos}"] = [
            {
                "rows": [int((t + 0.01) * h), int((b - 0.01) * h)],
                "cols": [int((l + 0.01) * w), int((rt - 0.01) * w)],
            }
            for l, t, rt, b in mosaic.PRESETS[pos][0]
        ]
    cfg = {"num_frames": 16, "strengthen_scale": 0.5, "weaken_scale": 0.05, "cases": cases}
    write_synthetic(root, cfg, arrays, {"cells": cells})
    return cfg, arrays


def write_synthetic(root, cfg, arrays, cells=None):
    import json

    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(cfg))
    np.savez_compressed(root / "io.npz", **arrays)
    if cells is not None:
        (root / "box_cells.json").write_text(json.dumps(cells))


def test_object_locating_verifier_two_heads_per_frame(tmp_path):
    """10 x 16 latents, 20 heads, heads [3, 17] of frames [0, 7, 15]: every saved row is
    checked, the rows are named by frame and head, and the port passes."""
    _synthetic_object_locating(tmp_path / "ok")
    checks = verify_object_locating(tmp_path / "ok")
    bad = [(c.name, c.errors()) for c in checks if not c.passed()]
    assert not bad, bad
    for pos in ("LR", "TD"):
        rows = [c.name for c in checks if c.name.startswith(f"h10w16_heads20_{pos}_row")]
        assert len(rows) == 2 * 6, rows
        assert f"h10w16_heads20_{pos}_row1(frame0,head17)_logits_vs_f32map" in rows
        assert f"h10w16_heads20_{pos}_row4(frame15,head3)_f16emul_logits_vs_release" in rows
    assert len(checks) == 2 * (12 + 4) + 4  # + 2 boxes x 2 layouts of box cells


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda c, a, n: c["cases"][n]["saved_rows_of_full_tensor"].pop(),
         "saved_rows_of_full_tensor has 5 rows, saved_frames x saved_heads = 3 x 2 = 6"),
        (lambda c, a, n: c["cases"][n].update(saved_heads=[17, 3]),
         "are not row = frame * heads + head"),
        (lambda c, a, n: a.pop(f"out_map_f16_{n}"), "io.npz has no array out_map_f16_"),
        (lambda c, a, n: a.update({f"out_map_f32_{n}": a[f"out_map_f32_{n}"][:, :8]}),
         "has shape (10, 8, 21), want (10, 16, 21)"),
        (lambda c, a, n: c["cases"][n].update(saved_frames=[0, 7]),
         "saved_rows_of_full_tensor has 6 rows, saved_frames x saved_heads = 2 x 2 = 4"),
        (lambda c, a, n: c["cases"][n].update(h=20), "full_tensor_shape"),
        (lambda c, a, n: c["cases"][n].pop("global_max"), "config.json lacks global_max"),
        (lambda c, a, n: c["cases"][n].update(global_max=11.0), "global_max 11.0 is not"),
        (lambda c, a, n: c["cases"][n].update(num_frames_for_saved_slice=6),
         "num_frames_for_saved_slice 6 != len(saved_frames) 3"),
    ],
)  # fmt: skip
def test_object_locating_verifier_refuses_malformed_fixtures(tmp_path, break_it, message):
    from convert import verify

    cfg, arrays = _synthetic_object_locating(tmp_path / "ok")
    name = "h10w16_heads20_TD"
    break_it(cfg, arrays, name)
    write_synthetic(tmp_path / "ok", cfg, arrays)
    with pytest.raises(verify.FixtureError) as e:
        verify_object_locating(tmp_path / "ok")
    msg = str(e.value)
    assert msg.startswith(f"object_locating case '{name}': ") and message in msg, msg
    assert "\n" not in msg


def test_object_locating_cli_reports_a_broken_fixture_in_one_line(tmp_path, capsys):
    from maestro_jax import cli
    from tests.conftest import load_command

    verify_cmd = load_command("convert.verify.__main__")
    cfg, arrays = _synthetic_object_locating(tmp_path / "fx")
    del arrays["in_logits_h10w16_heads20"]
    write_synthetic(tmp_path / "fx", cfg, arrays)
    assert cli.call(verify_cmd.main, [str(tmp_path / "fx"), "--kind", "object_locating"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: object_locating fixture")
    assert "case 'h10w16_heads20_LR': io.npz has no input array 'in_logits_h10w16_heads20'" in err


# ------------------------------------------------------------------------- contexts


def test_contexts_columns_and_segments():
    null, audio, _, _ = _setup(n_a=3, n_seg=2)
    n_f = 5
    c_merge, c_sep = mosaic.build_contexts(null, audio, n_f, token_offset=OFF)
    assert c_merge.shape == (n_f, L, DC) and c_sep.shape == (3, n_f, L, DC)
    c_merge, c_sep = np.asarray(c_merge), np.asarray(c_sep)
    seg = [0, 0, 0, 1, 1]  # floor(f * 2 / 5)
    np.testing.assert_array_equal(mosaic.segment_of_frame(n_f, 2), seg)
    for f in range(n_f):
        exp = null.copy()
        for i in range(3):
            exp[OFF + i * NQ : OFF + (i + 1) * NQ] = audio[i, seg[f]]
            sep = null.copy()
            sep[OFF : OFF + NQ] = audio[i, seg[f]]
            np.testing.assert_array_equal(c_sep[i, f], sep)
        np.testing.assert_array_equal(c_merge[f], exp)
    # release: 16 frames, S = 2 -> frames 0-7 clip 0, 8-15 clip 1
    np.testing.assert_array_equal(mosaic.segment_of_frame(16, 2), [0] * 8 + [1] * 8)
    # offset 0 (the paper's equations)
    c0, _ = mosaic.build_contexts(null, audio, n_f, token_offset=0)
    np.testing.assert_array_equal(np.asarray(c0)[0, :NQ], audio[0, 0])


def test_contexts_too_many_sources():
    null = np.zeros((L, 8), np.float32)
    ok = np.zeros((7, 2, 10, 8), np.float32)  # floor(76 / 10) = 7 sources fit
    mosaic.build_contexts(null, ok, 4)
    with pytest.raises(ValueError, match=r"8 audio sources.*at most.*= 7"):
        mosaic.build_contexts(null, np.zeros((8, 2, 10, 8), np.float32), 4)
    with pytest.raises(ValueError, match="width"):
        mosaic.build_contexts(null, np.zeros((2, 2, 10, 9), np.float32), 4)


# ------------------------------------------------------------------------- boxes


def test_box_validation_errors():
    good = mosaic.Boxes.static((0, 0, 0.5, 1))
    cases = [
        ((-0.1, 0, 0.5, 1), r"source 1 .*\[0, 1\]"),
        ((0, 0, 1.2, 1), r"source 1 .*\[0, 1\]"),
        ((0.5, 0, 0.5, 1), "source 1 .*left must be < right"),
        ((0, 0.6, 1, 0.2), "source 1 .*top must be < bottom"),
        ((0.01, 0.01, 0.05, 0.05), "source 1 .*no latent cell at the coarsest .*3x4"),
    ]
    for box, msg in cases:
        with pytest.raises(ValueError, match=msg):
            mosaic.check_boxes([good, mosaic.Boxes.static(box)], RES, 4)
    # a keyframed box that becomes too small on some frame
    moving = mosaic.Boxes.keyframed([(0, (0, 0, 1, 1)), (1, (0.0, 0.0, 0.05, 0.05))])
    with pytest.raises(ValueError, match="source 0 .*frame 3"):
        mosaic.check_boxes([moving], RES, 4)
    with pytest.raises(ValueError, match="strictly increasing"):
        mosaic.Boxes.keyframed([(0.5, (0, 0, 1, 1)), (0.5, (0, 0, 1, 1))])
    with pytest.raises(ValueError, match="4 numbers"):
        mosaic.parse_box("0,.3,.5")
    null, audio, _, _ = _setup(n_a=2)
    c_merge, c_sep = _contexts(null, audio, 4)
    with pytest.raises(ValueError, match="locate box of source 0"):
        mosaic.make_edit(
            "locate", boxes=[(0.6, 0, 0.4, 1), good], c_merge=c_merge, c_sep=c_sep,
            null_emb=null, n_q=NQ, resolutions=RES, num_frames=4, edit_rows=[True],
        )  # fmt: skip
    with pytest.raises(ValueError, match="2 sources, 1 boxes"):
        mosaic.make_edit(
            "mosaic", boxes=[good], c_merge=c_merge, c_sep=c_sep, null_emb=null, n_q=NQ,
            resolutions=RES, num_frames=4, edit_rows=[True],
        )  # fmt: skip


def test_parse_and_presets():
    assert mosaic.parse_box("0,.3,.5,.7") == (0.0, 0.3, 0.5, 0.7)
    b = mosaic.parse_boxes("0:0,.3,.5,.7;1:.5,.3,1,.7")
    assert not b.is_static and b.keyframes[1] == (1.0, (0.5, 0.3, 1.0, 0.7))
    loc, mos = mosaic.parse_layout("LR")
    assert [x.keyframes[0][1] for x in loc] == [(0, 0.3, 0.5, 0.7), (0.5, 0.3, 1, 0.7)]
    assert [x.keyframes[0][1] for x in mos] == [(0, 0, 0.5, 1), (0.5, 0, 1, 1)]
    loc, mos = mosaic.parse_layout("TD")
    assert loc == mos and loc[1].keyframes[0][1] == (0, 0.4, 1, 1)
    loc, mos = mosaic.parse_layout("0,0,.5,1/.5,0,1,1")
    assert len(loc) == 2 and loc == mos


# ------------------------------------------------------------------------- rasterisation


VC2_RES = mosaic.unet_resolutions((40, 64))


def test_unet_resolutions():
    assert VC2_RES == ((40, 64), (20, 32), (10, 16), (5, 8))


@pytest.mark.parametrize("hw", VC2_RES)
def test_presets_reproduce_release_mosaic_regions(hw):
    # release (docs/method.md, "Cell assignment"): LR columns [0, w//2) -> source 1; TD top int(.4h) rows.
    h, w = hw
    _, lr = mosaic.preset("LR")
    _, td = mosaic.preset("TD")
    a = mosaic.rasterize(lr, hw, 1).assign[0]
    np.testing.assert_array_equal(a, np.broadcast_to(np.arange(w) >= w // 2, (h, w)))
    a = mosaic.rasterize(td, hw, 1).assign[0]
    np.testing.assert_array_equal(
        a, np.broadcast_to((np.arange(h) >= int(0.4 * h))[:, None], (h, w))
    )


def test_centre_rule_cells_and_gaussian():
    loc, _ = mosaic.preset("LR")
    r = mosaic.rasterize(loc, (40, 64), 2)
    # centres (y + .5) / 40 in [.3, .7) -> rows 12..27; (x + .5) / 64 in [0, .5) -> cols 0..31
    ref = np.zeros((40, 64), bool)
    ref[12:28, :32] = True
    np.testing.assert_array_equal(r.masks[0, 1], ref)
    np.testing.assert_array_equal(r.masks[1, 0], np.roll(ref, 32, axis=1))
    g = r.gaussians[0, 0].astype(np.float64)
    assert g.max() == 1.0 and np.all(g[~ref] == 0) and np.all(g[ref] > 0)
    # centre (0.5 * 40 - .5, 0.25 * 64 - .5) = (19.5, 15.5), sigma (16/3, 32/3) cells
    y, x = np.mgrid[0:40, 0:64]
    e = np.exp(-((y - 19.5) ** 2) / (2 * (16 / 3) ** 2) - (x - 15.5) ** 2 / (2 * (32 / 3) ** 2))
    e = np.where(ref, e, 0)
    np.testing.assert_allclose(g, e / e.max(), atol=1e-6)
    np.testing.assert_allclose(r.locate_map, 2 * r.gaussians - r.gaussians.sum(0), atol=1e-7)
    # sigma_divisor option changes the map
    r6 = mosaic.rasterize(loc, (40, 64), 1, sigma_divisor=6.0)
    assert np.abs(r6.gaussians[0, 0] - r.gaussians[0, 0]).max() > 0.1
    # release cell rule: rows 12..26, cols 0..30 (box_cells.json)
    rr = mosaic.rasterize(loc, (40, 64), 1, cell_rule="release")
    ref = np.zeros((40, 64), bool)
    ref[12:27, :31] = True
    np.testing.assert_array_equal(rr.masks[0, 0], ref)


def test_keyframed_interpolation():
    b = mosaic.Boxes.keyframed([(0.0, (0, 0, 0.5, 1)), (1.0, (0.5, 0, 1, 1))])
    pf = b.per_frame(3)
    np.testing.assert_allclose(pf[1], (0.25, 0, 0.75, 1))
    r = mosaic.rasterize([b], (2, 8), 3)
    np.testing.assert_array_equal(r.masks[0, :, 0], [[1, 1, 1, 1, 0, 0, 0, 0],
                                                    [0, 0, 1, 1, 1, 1, 0, 0],
                                                    [0, 0, 0, 0, 1, 1, 1, 1]])  # fmt: skip
    # hold outside the keyframe range
    b2 = mosaic.Boxes.keyframed([(0.5, (0, 0, 0.5, 1)), (1.0, (0.5, 0, 1, 1))])
    pf = b2.per_frame(5)
    np.testing.assert_allclose(pf[:3, 0], [0, 0, 0])
    np.testing.assert_allclose(pf[3:, 0], [0.25, 0.5])


def _brute_assign(boxes, h, w, n_f, background):
    """Cell by cell, straight from docs/method.md (centre rule)."""
    pf = np.stack([b.per_frame(n_f) for b in boxes])
    n = len(boxes)
    out = np.zeros((n_f, h, w), int)
    for f, y, x in itertools.product(range(n_f), range(h), range(w)):
        cy, cx = (y + 0.5) / h, (x + 0.5) / w
        area = [(pf[i, f, 2] - pf[i, f, 0]) * (pf[i, f, 3] - pf[i, f, 1]) for i in range(n)]
        inside = [
            i
            for i in range(n)
            if pf[i, f, 0] <= cx < pf[i, f, 2] and pf[i, f, 1] <= cy < pf[i, f, 3]
        ]
        if inside:
            out[f, y, x] = min(inside, key=lambda i: (area[i], i))
        elif background == "nearest":
            keys = []
            for i in range(n):
                l, t, r, b = pf[i, f]
                dx = max(l * w - (x + 0.5), (x + 0.5) - r * w, 0)
                dy = max(t * h - (y + 0.5), (y + 0.5) - b * h, 0)
                keys.append((np.hypot(dx, dy), area[i], i))
            out[f, y, x] = min(keys)[2]
        else:
            out[f, y, x] = n
    return out


@pytest.mark.parametrize("background", mosaic.BACKGROUNDS)
@pytest.mark.parametrize("boxes", [BOXES_A, BOXES_B], ids=["overlap", "gaps"])
def test_assignment_matches_brute_force(boxes, background):
    for hw in RES:
        r = mosaic.rasterize(boxes, hw, 4, background=background)
        np.testing.assert_array_equal(r.assign, _brute_assign(boxes, *hw, 4, background))


def test_assignment_rules():
    big = mosaic.Boxes.static((0, 0, 1, 1))
    small = mosaic.Boxes.static((0.25, 0.25, 0.75, 0.75))
    a = mosaic.rasterize([big, small], (4, 4), 1).assign[0]
    exp = np.zeros((4, 4), int)
    exp[1:3, 1:3] = 1
    np.testing.assert_array_equal(a, exp)  # smallest box wins, in either order
    np.testing.assert_array_equal(mosaic.rasterize([small, big], (4, 4), 1).assign[0], 1 - exp)
    # touching boxes partition the frame, no cell in both
    r = mosaic.rasterize([(0, 0, 0.5, 1), (0.5, 0, 1, 1)], (3, 5), 1)
    assert not np.any(r.masks[0] & r.masks[1]) and np.all(r.masks[0] | r.masks[1])
    # one-cell box
    r = mosaic.rasterize([(0.25, 0.34, 0.5, 0.66), (0.75, 0, 1, 1)], (3, 4), 1)
    assert r.masks[0].sum() == 1 and r.masks[0, 0, 1, 1]
    assert r.gaussians[0, 0, 1, 1] == 1.0
    # background modes: gaps go to the nearest box, or to slot N
    boxes = [(0, 0, 0.25, 1), (0.75, 0, 1, 1)]
    a = mosaic.rasterize(boxes, (1, 8), 1).assign[0, 0]
    np.testing.assert_array_equal(a, [0, 0, 0, 0, 1, 1, 1, 1])
    a = mosaic.rasterize(boxes, (1, 8), 1, background="merge").assign[0, 0]
    np.testing.assert_array_equal(a, [0, 0, 2, 2, 2, 2, 1, 1])


# ------------------------------------------------------------------------- attention edits


@pytest.fixture(scope="module")
def env():
    null, audio, wk, wv = _setup(n_a=3, n_f=4)
    n_f, n_b = 4, 2
    c_merge, c_sep = _contexts(null, audio, n_f)
    rng = np.random.default_rng(7)
    qs = {
        hw: rng.normal(size=(n_b * n_f, hw[0] * hw[1], HEADS, DH)).astype(np.float32) * 2
        for hw in RES
    }
    ctx = np.concatenate(  # CFG batch: cond rows hold C_merge, uncond rows the null embedding
        [np.asarray(c_merge), np.broadcast_to(null, (n_f, L, DC))]
    ).astype(np.float32)
    kw = dict(
        c_merge=c_merge, c_sep=c_sep, null_emb=null, n_q=NQ, resolutions=RES, num_frames=n_f,
        edit_rows=mosaic.cfg_edit_rows(1, 1),
    )  # fmt: skip
    pkv = _project(wk, wv)

    hw_of = {hw[0] * hw[1]: hw for hw in RES}

    @jax.jit
    def run(edit, q, context):
        return edit(q, context, pkv, scale=SCALE, hw=hw_of[q.shape[1]])

    @jax.jit
    def plain(q, context):
        k, v = pkv(context)
        return dot_product_attention(q, k, v, scale=SCALE)

    return dict(
        null=null, audio=audio, wk=wk, wv=wv, n_f=n_f, n_b=n_b, c_merge=np.asarray(c_merge),
        c_sep=np.asarray(c_sep), qs=qs, ctx=ctx, kw=kw, run=run, plain=plain,
    )  # fmt: skip


def _np_kv(env, ctx):
    ctx = np.asarray(ctx, np.float64)
    k = (ctx @ env["wk"].astype(np.float64)).reshape(*ctx.shape[:-1], HEADS, DH)
    v = (ctx @ env["wv"].astype(np.float64)).reshape(*ctx.shape[:-1], HEADS, DH)
    return k, v


def _np_mosaic(env, q, hw, boxes, background):
    """Naive float64 Mosaic Denoising: a Python loop over rows, sources and their cells."""
    r = mosaic.rasterize(boxes, hw, env["n_f"], background=background)
    q = q.astype(np.float64)
    out = np.zeros_like(q)
    n_a = len(boxes)
    bg = {"merge": env["c_merge"], "null": np.broadcast_to(env["null"], env["c_merge"].shape)}
    for b, f in itertools.product(range(env["n_b"]), range(env["n_f"])):
        row = b * env["n_f"] + f
        if b == 1:  # unconditional: plain attention over its own context
            out[row] = _np_attend(q[row], *_np_kv(env, env["ctx"][row]), SCALE)
            continue
        assign = r.assign[f].reshape(-1)
        for i in range(n_a + 1):
            cells = assign == i
            if not cells.any():
                continue
            ctx = env["c_sep"][i, f] if i < n_a else bg[background][f]
            out[row, cells] = _np_attend(q[row, cells], *_np_kv(env, ctx), SCALE)
    return out


def _np_locate(env, q, hw, boxes, space="logits", s=0.5, wk=0.05):
    """Float64 numpy Object Locating (docs/method.md), per-sample max over the whole tensor."""
    r = mosaic.rasterize(boxes, hw, env["n_f"])
    n_a, n_f = len(boxes), env["n_f"]
    q = q.astype(np.float64)
    out = np.zeros_like(q)
    k, v = _np_kv(env, env["c_merge"])  # [F, L, H, dh]
    logits = np.einsum("fthd,flhd->fhtl", q[:n_f], k) * SCALE  # cond sample 0 = rows 0..F-1
    m = np.zeros((n_f, hw[0] * hw[1], L))
    for i in range(n_a):
        m[:, :, OFF + i * NQ : OFF + (i + 1) * NQ] = r.locate_map[i].reshape(n_f, -1)[..., None]
    m = m[:, None]  # [F, 1, T, L]
    audio = np.zeros(L, bool)
    audio[OFF : OFF + n_a * NQ] = True
    weak = audio & (m == 0)
    if space == "logits":
        x = np.where(weak, logits * wk, logits) + s * logits.max() * m
        p = np.exp(x - x.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
    else:
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        p = np.maximum(np.where(weak, p * wk, p) + s * p.max() * m, 0)
        p /= p.sum(-1, keepdims=True)
    out[:n_f] = np.einsum("fhtl,flhd->fthd", p, v)
    for row in range(n_f, 2 * n_f):
        out[row] = _np_attend(q[row], *_np_kv(env, env["ctx"][row]), SCALE)
    return out


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("background", mosaic.BACKGROUNDS)
@pytest.mark.parametrize("boxes", [BOXES_A, BOXES_B], ids=["overlap", "gaps"])
def test_mosaic_matches_naive_float64(env, boxes, background):
    edit = mosaic.make_edit(
        "mosaic", boxes=boxes, options=mosaic.MosaicOptions(background=background), **env["kw"]
    )
    for hw in RES:
        out = env["run"](edit, env["qs"][hw], env["ctx"])
        assert out.shape == env["qs"][hw].shape
        assert _rel(out, _np_mosaic(env, env["qs"][hw], hw, boxes, background)) < 1e-5


@pytest.mark.parametrize("space", mosaic.LOCATE_SPACES)
def test_locate_matches_numpy(env, space):
    edit = mosaic.make_edit(
        "locate", boxes=BOXES_A, options=mosaic.MosaicOptions(locate_space=space), **env["kw"]
    )
    for hw in RES:
        out = env["run"](edit, env["qs"][hw], env["ctx"])
        ref = _np_locate(env, env["qs"][hw], hw, BOXES_A, space)
        assert _rel(out, ref) < 1e-5
        # the edit does something measurable
        assert _rel(env["plain"](env["qs"][hw], env["ctx"]), ref) > 1e-2


def test_uncond_rows_bitwise_plain_and_none_mode(env):
    n_f = env["n_f"]
    edits = [
        mosaic.make_edit("locate", boxes=BOXES_A, **env["kw"]),
        mosaic.make_edit(
            "mosaic", boxes=BOXES_B, options=mosaic.MosaicOptions(background="null"), **env["kw"]
        ),
        mosaic.make_edit("none", boxes=None, **env["kw"]),
    ]
    for hw in RES:
        q = env["qs"][hw]
        plain = np.asarray(env["plain"](q, env["ctx"]))
        for e in edits:
            out = np.asarray(env["run"](e, q, env["ctx"]))
            np.testing.assert_array_equal(out[n_f:], plain[n_f:])  # never edited
            if e.mode == "none":
                np.testing.assert_array_equal(out, plain)
            else:
                assert np.abs(out[:n_f] - plain[:n_f]).max() > 1e-2
    # uncond-first layout: rows 0..F-1 are the plain ones
    kw = dict(env["kw"], edit_rows=mosaic.cfg_edit_rows(1, 1, cond_first=False))
    ctx = np.concatenate([env["ctx"][n_f:], env["ctx"][:n_f]])
    q = env["qs"][RES[0]]
    out = np.asarray(env["run"](mosaic.make_edit("mosaic", boxes=BOXES_A, **kw), q, ctx))
    np.testing.assert_array_equal(out[:n_f], np.asarray(env["plain"](q, ctx))[:n_f])


def test_rows_split_statically_same_output_less_work(env):
    """The edit runs on the conditional rows only and plain attention on the others: the same
    output as computing both on every row and selecting (split_rows=False), for fewer FLOPs."""
    q, ctx = env["qs"][RES[0]], env["ctx"]
    pkv = _project(env["wk"], env["wv"])

    def f(e, q, ctx):
        return e(q, ctx, pkv, scale=SCALE, hw=RES[0])

    for mode, boxes in (("locate", BOXES_A), ("mosaic", BOXES_B)):
        split, full = (
            mosaic.make_edit(mode, boxes=boxes, split_rows=s, **env["kw"]) for s in (True, False)
        )
        assert split.edit_rows == (True, False) and split.split_rows
        np.testing.assert_allclose(
            np.asarray(env["run"](split, q, ctx)), np.asarray(env["run"](full, q, ctx)),
            rtol=1e-6, atol=1e-6,
        )  # fmt: skip
        flops = [
            jax.jit(f).lower(e, q, ctx).compile().cost_analysis()["flops"] for e in (split, full)
        ]
        assert flops[0] < 0.75 * flops[1], (mode, flops)


def test_frame_window_is_the_edit_of_those_frames(env):
    """An edit cut to frames [1, 3) (a long video's window; the start may be traced) gives, on
    those frames' rows, what the whole edit gives them (Mosaic Denoising is per frame)."""
    n_f, n_b = env["n_f"], env["n_b"]
    q, ctx = env["qs"][RES[0]], env["ctx"]
    rows = np.array([b * n_f + f for b in range(n_b) for f in (1, 2)])
    for mode, boxes in (("mosaic", BOXES_A), ("locate", BOXES_B)):
        edit = mosaic.make_edit(mode, boxes=boxes, **env["kw"])
        cut = jax.jit(lambda e, s: e.frame_window(s, 2))(edit, jnp.int32(1))
        assert cut.num_frames == 2 and cut.edit_rows == edit.edit_rows
        np.testing.assert_array_equal(np.asarray(cut.c_merge), np.asarray(edit.c_merge)[1:3])
        np.testing.assert_array_equal(np.asarray(cut.c_sep), np.asarray(edit.c_sep)[:, 1:3])
        if mode == "mosaic":
            np.testing.assert_array_equal(
                np.asarray(cut.assigns[0]), np.asarray(edit.assigns[0])[1:3]
            )
            whole = np.asarray(env["run"](edit, q, ctx))[rows]
            np.testing.assert_allclose(
                np.asarray(env["run"](cut, q[rows], ctx[rows])), whole, rtol=1e-6, atol=1e-6
            )
        else:  # Object Locating's maximum is then taken over the window's frames
            np.testing.assert_array_equal(
                np.asarray(cut.locate_maps[0]), np.asarray(edit.locate_maps[0])[:, 1:3]
            )
            assert np.isfinite(np.asarray(env["run"](cut, q[rows], ctx[rows]))).all()


def test_wrong_resolution_is_clear(env):
    edit = mosaic.make_edit("mosaic", boxes=BOXES_A, **env["kw"])
    q = np.zeros((8, 12, HEADS, DH), np.float32)
    with pytest.raises(KeyError, match=r"\(2, 6\)"):
        edit(q, env["ctx"], _project(env["wk"], env["wv"]), scale=SCALE, hw=(2, 6))


def test_jit_no_retrace_across_box_values(env):
    traces = []
    pkv = _project(env["wk"], env["wv"])

    @jax.jit
    def f(edit, q, ctx):
        traces.append(1)
        return edit(q, ctx, pkv, scale=SCALE, hw=RES[1])

    q = env["qs"][RES[1]]
    outs = []
    for boxes, strengthen in [(BOXES_A, 0.5), (BOXES_B, 0.5), (BOXES_B, 0.9)]:
        opts = mosaic.MosaicOptions(strengthen_scale=strengthen)
        e = mosaic.make_edit("locate", boxes=boxes, options=opts, **env["kw"])
        outs.append(np.asarray(f(e, q, env["ctx"])))
    assert len(traces) == 1
    assert np.abs(outs[0] - outs[1]).max() > 1e-3 and np.abs(outs[1] - outs[2]).max() > 1e-3


def test_phase_edits_and_sharding(env, cpu_mesh):
    n_f = 2
    null, audio = env["null"], env["audio"]
    c_merge, c_sep = _contexts(null, audio, n_f)
    rows = np.array([True, False, True, False])  # B = 4 -> 8 rows, split over 'data'
    locate, mos = mosaic.make_phase_edits(
        BOXES_A, BOXES_B, c_merge=c_merge, c_sep=c_sep, null_emb=null, n_q=NQ, resolutions=RES,
        num_frames=n_f, edit_rows=rows, options=mosaic.MosaicOptions(background="merge"),
    )  # fmt: skip
    assert (locate.mode, mos.mode) == ("locate", "mosaic")
    rng = np.random.default_rng(3)
    ctx = rng.normal(size=(8, L, DC)).astype(np.float32)
    pkv = _project(env["wk"], env["wv"])

    q = rng.normal(size=(8, 12, HEADS, DH)).astype(np.float32)  # 3x4 tokens

    def g(e, q, ctx):
        return e(q, ctx, pkv, scale=SCALE, hw=RES[1])

    row_sh = NamedSharding(cpu_mesh, P("data"))
    for e in (locate, mos):
        ref = np.asarray(jax.jit(g)(e, q, ctx))
        qs, cs = jax.device_put(q, row_sh), jax.device_put(ctx, row_sh)
        out = jax.jit(g, out_shardings=row_sh)(e, qs, cs)
        assert len(out.sharding.device_set) == 8
        np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-6, atol=1e-6)


def test_presets_are_named_in_layout_errors():
    loc, _ = mosaic.parse_layout("lr")  # case-insensitive
    assert loc == mosaic.preset("LR")[0]
    for bad in ("XY", "left-right"):
        with pytest.raises(ValueError, match=r"unknown box preset .*LR, TD.*left,top,right,bottom"):
            mosaic.parse_layout(bad)
