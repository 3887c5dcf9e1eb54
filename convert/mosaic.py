"""Object Locating against the release's `TrailBlazer/Utils.py::dd_core` (fixture `object_locating`).

    python -m convert.verify FIXTURES/object_locating   # FIXTURES: the golden fixtures folder

No weights: the fixture holds pre-softmax logits and the release's edited logits and maps. The
verifier follows the fixture's own `config.json`: per case the saved slice `input` holds
len(saved_frames) x len(saved_heads) rows of the full (num_frames * heads, h, w, 77) tensor,
frame major (slice row i = frame index i // len(saved_heads), head index i % len(saved_heads);
full row = frame * heads + head, listed in `saved_rows_of_full_tensor`). Any inconsistency of
that layout (fields, row lists, shapes, missing arrays, a global max not in the slice) stops with
a `FixtureError` (a ValueError) naming the case. The port runs its product functions
(`rasterize` with `cell_rule='release'`, `locate_column_map`, `locate_logits`) in float32 and is
compared, as the fixture README prescribes, per saved row with
- the float32-map variant of the release at max abs 1e-5,
- the release output (float16 maps under autocast) after emulating the release's float16 steps on
  the port's Gaussians (fp16 g, fp16 g * max(S), fp16 subtraction, fp16(0.05)), at max abs
  strengthen_scale x one float16 ulp of max(S) (a Gaussian computed in another float32 order can
  flip a float16 rounding of g * max(S));
and per case with
- the release output itself at max abs 5e-3 (the README's bound for a float32 port),
- the weaken mask (M == 0) exactly against the release's float16 map,
- the map times max(S) against the float32 map at max abs 1e-5 (every saved frame),
- the untouched columns 21..76 bit for bit; then the release's box cells (`box_cells.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from convert.verify import Check, FixtureError
from maestro_jax import mosaic

N_Q = 10  # release: 10 CIM tokens per source, columns 1..10 and 11..20
TOKEN_OFFSET = 1
CASE_FIELDS = (
    "input",
    "heads",
    "h",
    "w",
    "pos",
    "saved_rows_of_full_tensor",
    "saved_frames",
    "saved_heads",
    "num_frames_for_saved_slice",
    "global_max",
    "full_tensor_shape",
)


def _box_cell_checks(cells_json: dict) -> list[Check]:
    """The release's integer cell ranges (BoundingBox) vs `rasterize(..., cell_rule='release')`."""
    checks = []
    for key, entries in cells_json["cells"].items():
        res, pos = key.split("/")
        h, w = (int(v) for v in res.split("x"))
        locate, _ = mosaic.preset(pos)
        r = mosaic.rasterize(locate, (h, w), 1, cell_rule="release")
        for i, e in enumerate(entries):
            ref = np.zeros((h, w), bool)
            ref[e["rows"][0] : e["rows"][1], e["cols"][0] : e["cols"][1]] = True
            checks.append(Check(f"cells_{res}_{pos}_box{i}", r.masks[i, 0], ref, metric="exact"))
    return checks


def _int_list(name: str, case: dict, field: str) -> list[int]:
    v = case[field]
    if not isinstance(v, list) or not v or not all(isinstance(i, int) for i in v):
        raise FixtureError(
            f"object_locating case {name!r}: {field} must be a non-empty list of "
            f"integers, got {v!r}"
        )
    return v


def case_layout(name: str, case: dict, data, num_frames: int) -> dict:
    """Validate one case of the fixture's `config.json` against its arrays; returns the layout
    (h, w, heads, frames, saved heads, rows, columns, global max, input array). Raises a
    FixtureError (a ValueError) naming the case and the problem."""

    def bad(msg: str):
        raise FixtureError(f"object_locating case {name!r}: {msg}")

    missing = [f for f in CASE_FIELDS if f not in case]
    if missing:
        bad(f"config.json lacks {', '.join(missing)}")
    heads, h, w = case["heads"], case["h"], case["w"]
    if not all(isinstance(v, int) and v > 0 for v in (heads, h, w)):
        bad(f"heads, h, w must be positive integers, got {heads!r}, {h!r}, {w!r}")
    if case["pos"] not in mosaic.PRESETS:
        bad(f"pos {case['pos']!r} is not one of {sorted(mosaic.PRESETS)}")
    frames = _int_list(name, case, "saved_frames")
    shs = _int_list(name, case, "saved_heads")
    saved_rows = _int_list(name, case, "saved_rows_of_full_tensor")
    if len(set(frames)) != len(frames) or not all(0 <= f < num_frames for f in frames):
        bad(f"saved_frames {frames} must be distinct frames in [0, {num_frames})")
    if len(set(shs)) != len(shs) or not all(0 <= hd < heads for hd in shs):
        bad(f"saved_heads {shs} must be distinct heads in [0, {heads})")
    n_rows = len(frames) * len(shs)
    if len(saved_rows) != n_rows:
        bad(
            f"saved_rows_of_full_tensor has {len(saved_rows)} rows, saved_frames x saved_heads "
            f"= {len(frames)} x {len(shs)} = {n_rows}"
        )
    expect = [f * heads + hd for f in frames for hd in shs]
    if saved_rows != expect:
        bad(
            f"saved_rows_of_full_tensor {saved_rows} are not row = frame * heads + head "
            f"(frame-major over saved_frames x saved_heads, heads={heads}): expected {expect}"
        )
    if case["num_frames_for_saved_slice"] != len(frames):
        bad(
            f"num_frames_for_saved_slice {case['num_frames_for_saved_slice']} != "
            f"len(saved_frames) {len(frames)}"
        )
    full = tuple(case["full_tensor_shape"])
    want_full = (num_frames * heads, h, w, mosaic.CONTEXT_LEN)
    if full != want_full:
        bad(f"full_tensor_shape {list(full)} != (num_frames * heads, h, w, 77) = {list(want_full)}")
    if case["input"] not in data:
        bad(f"io.npz has no input array {case['input']!r}")
    x = data[case["input"]]
    if x.shape != (n_rows, h, w, mosaic.CONTEXT_LEN):
        bad(
            f"input {case['input']} has shape {x.shape}, want (rows, h, w, 77) = "
            f"{(n_rows, h, w, mosaic.CONTEXT_LEN)} (rows = saved_frames x saved_heads)"
        )
    n_src = len(mosaic.PRESETS[case["pos"]][0])
    n_cols = TOKEN_OFFSET + n_src * N_Q
    shapes = {
        f"out_logits_cols0to20_{name}": (n_rows, h, w, n_cols),
        f"out_logits_f32map_cols0to20_{name}": (n_rows, h, w, n_cols),
        f"out_map_f16_{name}": (h, w, n_cols),
        f"out_map_f32_{name}": (h, w, n_cols),
    }
    for arr, shape in shapes.items():
        if arr not in data:
            bad(f"io.npz has no array {arr}")
        if data[arr].shape != shape:
            bad(f"{arr} has shape {data[arr].shape}, want {shape}")
    gmax = float(case["global_max"])
    if float(x.max()) != gmax:
        bad(
            f"global_max {gmax} is not the maximum of the saved slice ({float(x.max())}): the "
            "slice must hold the full tensor's maximum"
        )
    at = case.get("global_max_at_row_frame_head")
    if at is not None:
        row, f, hd = at
        if row != f * heads + hd or row not in saved_rows:
            bad(f"global_max_at_row_frame_head {at} is not a saved row = frame * heads + head")
        if float(x[saved_rows.index(row)].max()) != gmax:
            bad(f"slice row of full row {row} does not hold global_max {gmax}")
    return dict(
        h=h,
        w=w,
        heads=heads,
        frames=frames,
        saved_heads=shs,
        rows=n_rows,
        cols=n_cols,
        smax=gmax,
        x=x,
    )


def release_f16_column_map(gaussians: np.ndarray, smax: float, n_cols: int) -> np.ndarray:
    """The release's float16 map M [..., n_cols] from per-source Gaussians [N, ...] (peak 1):
    fp16(fp16(g_i) * smax) per source, M_i = G_i - sum_{j != i} G_j in float16, on source i's
    N_Q columns after the start token."""
    g = (gaussians.astype(np.float16) * np.float16(smax)).astype(np.float16)
    out = np.zeros((*gaussians.shape[1:], n_cols), np.float16)
    for i in range(g.shape[0]):
        m = g[i]
        for j in range(g.shape[0]):
            if j != i:
                m = (m - g[j]).astype(np.float16)
        c = TOKEN_OFFSET + i * N_Q
        out[..., c : c + N_Q] = m[..., None]
    return out


def verify_object_locating(fixture_dir: Path) -> list[Check]:
    fixture_dir = Path(fixture_dir)
    where = f"object_locating fixture {fixture_dir}"
    for f in ("config.json", "io.npz", "box_cells.json"):
        if not (fixture_dir / f).is_file():
            raise FixtureError(f"{where}: no {f}")
    cfg = json.loads((fixture_dir / "config.json").read_text())
    for k in ("strengthen_scale", "weaken_scale", "num_frames", "cases"):
        if k not in cfg:
            raise FixtureError(f"{where}: config.json lacks {k!r}")
    if not isinstance(cfg["cases"], dict) or not cfg["cases"]:
        raise FixtureError(f"{where}: config.json has no cases")
    with np.load(fixture_dir / "io.npz") as z:
        data = {k: z[k] for k in z.files}
    strengthen, weaken = float(cfg["strengthen_scale"]), float(cfg["weaken_scale"])
    layouts = {
        name: case_layout(name, case, data, int(cfg["num_frames"]))
        for name, case in cfg["cases"].items()
    }
    checks = []
    for name, case in cfg["cases"].items():
        lay = layouts[name]
        h, w, x, nc, smax = lay["h"], lay["w"], lay["x"], lay["cols"], lay["smax"]
        n_f, n_h = len(lay["frames"]), len(lay["saved_heads"])
        locate, _ = mosaic.preset(case["pos"])
        r = mosaic.rasterize(locate, (h, w), n_f, cell_rule="release", sigma_divisor=3.0)
        col_map, audio = mosaic.locate_column_map(
            jnp.asarray(r.locate_map.reshape(len(locate), n_f, h * w)), N_Q, TOKEN_OFFSET
        )  # [F, T, 77], one map per saved frame
        rows_map = jnp.repeat(col_map, n_h, axis=0)  # slice row = frame index * n_h + head index
        logits = jnp.asarray(x.reshape(lay["rows"], h * w, x.shape[-1]))
        out = mosaic.locate_logits(
            logits,
            rows_map,
            audio,
            jnp.float32(smax),
            strengthen_scale=strengthen,
            weaken_scale=weaken,
        )
        out = np.asarray(out).reshape(x.shape)
        cm = np.asarray(col_map).reshape(n_f, h, w, -1)[..., :nc]  # [F, h, w, nc]
        # The release's float16 steps on the port's Gaussians (every frame has the same boxes).
        m16 = release_f16_column_map(r.gaussians[:, 0], smax, nc).astype(np.float32)
        w16 = np.where(m16 == 0, np.float32(np.float16(weaken)), np.float32(1.0))
        emul = x[..., :nc] * w16 + np.float32(strengthen) * m16
        emul[..., :TOKEN_OFFSET] = x[..., :TOKEN_OFFSET]
        ulp = float(np.spacing(np.float16(smax)))
        ref32 = data[f"out_logits_f32map_cols0to20_{name}"]
        ref16 = data[f"out_logits_cols0to20_{name}"]
        for i in range(lay["rows"]):
            frame, head = lay["frames"][i // n_h], lay["saved_heads"][i % n_h]
            tag = f"{name}_row{i}(frame{frame},head{head})"
            checks += [
                Check(f"{tag}_logits_vs_f32map", out[i, ..., :nc], ref32[i], 1e-5, "max_abs"),
                Check(
                    f"{tag}_f16emul_logits_vs_release",
                    emul[i],
                    ref16[i],
                    tol=strengthen * ulp,
                    metric="max_abs",
                ),
            ]
        ref_f32map = np.broadcast_to(data[f"out_map_f32_{name}"], cm.shape)
        ref_f16map = np.broadcast_to(data[f"out_map_f16_{name}"], cm.shape)
        checks += [
            Check(f"{name}_logits_vs_release_f16", out[..., :nc], ref16, 5e-3, "max_abs"),
            Check(f"{name}_map_x_smax_vs_f32", cm * np.float32(smax), ref_f32map, 1e-5, "max_abs"),
            Check(f"{name}_weaken_mask", cm == 0, ref_f16map == 0, metric="exact"),
            Check(f"{name}_cols21to76_untouched", out[..., nc:], x[..., nc:], metric="exact"),
        ]
    checks += _box_cell_checks(json.loads((fixture_dir / "box_cells.json").read_text()))
    return checks
