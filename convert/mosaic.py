"""Object Locating against the release's `TrailBlazer/Utils.py::dd_core` (fixture `object_locating`).

    python -m convert.verify ../shared/fixtures/object_locating

No weights: the fixture holds pre-softmax logits and the release's edited logits and maps. The
port runs its product functions (`rasterize` with `cell_rule='release'`, `locate_column_map`,
`locate_logits`) in float32 and is compared, as the fixture README prescribes, with
- the float32-map variant of the release at max abs 1e-5,
- the release output (float16 maps under autocast) at max abs 5e-3,
- the weaken mask (M == 0) exactly against the release's float16 map,
- the map times max(S) against the float32 map at max abs 1e-5,
- the untouched columns 21..76 bit for bit, and the release's box cells (`box_cells.json`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from convert.verify import Check
from maestro_jax import mosaic

N_Q = 10  # release: 10 CIM tokens per source, columns 1..10 and 11..20
TOKEN_OFFSET = 1
STRENGTHEN = 0.5  # MultiSubjects.yaml spatial_strengthen_scale
WEAKEN = 0.05  # MultiSubjects.yaml spatial_weaken_scale


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


def verify_object_locating(fixture_dir: Path) -> list[Check]:
    fixture_dir = Path(fixture_dir)
    cfg = json.loads((fixture_dir / "config.json").read_text())
    data = np.load(fixture_dir / "io.npz")
    strengthen, weaken = float(cfg["strengthen_scale"]), float(cfg["weaken_scale"])
    assert (strengthen, weaken) == (STRENGTHEN, WEAKEN), (strengthen, weaken)
    checks = []
    for name, case in cfg["cases"].items():
        h, w, pos = case["h"], case["w"], case["pos"]
        x = data[case["input"]]  # [rows = saved frames x 1 head, h, w, 77]
        rows = x.shape[0]
        assert rows == case["num_frames_for_saved_slice"] and len(case["saved_heads"]) == 1
        locate, _ = mosaic.preset(pos)
        r = mosaic.rasterize(locate, (h, w), rows, cell_rule="release", sigma_divisor=3.0)
        col_map, audio = mosaic.locate_column_map(
            jnp.asarray(r.locate_map.reshape(len(locate), rows, h * w)), N_Q, TOKEN_OFFSET
        )  # [F, T, 77]
        logits = jnp.asarray(x.reshape(rows, h * w, x.shape[-1]))
        smax = jnp.max(logits)  # the whole tensor (the saved slice holds the global max)
        out = mosaic.locate_logits(
            logits, col_map, audio, smax, strengthen_scale=strengthen, weaken_scale=weaken
        )
        out = np.asarray(out).reshape(x.shape)
        cm = np.asarray(col_map)[0].reshape(h, w, -1)[..., :21]
        checks += [
            Check(
                f"{name}_logits_vs_f32map",
                out[..., :21],
                data[f"out_logits_f32map_cols0to20_{name}"],
                tol=1e-5,
                metric="max_abs",
            ),
            Check(
                f"{name}_logits_vs_release_f16",
                out[..., :21],
                data[f"out_logits_cols0to20_{name}"],
                tol=5e-3,
                metric="max_abs",
            ),
            Check(
                f"{name}_map_x_smax_vs_f32",
                cm * float(smax),
                data[f"out_map_f32_{name}"],
                tol=1e-5,
                metric="max_abs",
            ),
            Check(
                f"{name}_weaken_mask",
                cm == 0,
                data[f"out_map_f16_{name}"] == 0,
                metric="exact",
            ),
            Check(f"{name}_cols21to76_untouched", out[..., 21:], x[..., 21:], metric="exact"),
        ]
    checks += _box_cell_checks(json.loads((fixture_dir / "box_cells.json").read_text()))
    return checks
