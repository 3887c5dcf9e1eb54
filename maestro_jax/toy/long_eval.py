"""Long videos on the toy world: FreeNoise-style whole-audio generation vs independent 4 s
segments, and boxes from stereo sound vs the true boxes.

Every job is a 12 s toy scene (`maestro_jax.toy.long_world.long_scene`: K objects in K boxes,
each sounding from its onset to its offset). Methods:

- 'freenoise': one whole-audio job (`generation.long`): 24 frames, temporal attention over
  8-frame windows `stride` apart, rescheduled noise (initial and per step), each frame's tokens
  from the 2 s clip under it, the true static boxes (`long.windows_at_once` 0);
- 'windows': the same job with the whole UNet run one 8-frame window at a time and its
  predictions fused (`long.windows_at_once` 1: memory bounded by one window);
- 'naive': three independent 4 s jobs (the default path, seeds seed, seed + 1, seed + 2), their
  frames concatenated;
- 'auto': 'freenoise' with boxes estimated from the scene's stereo rendering
  (`audio.layout.estimate_layout`); its placement is scored against the true boxes.

Scores per method (means over jobs): placement (colour placement in the true box, over the
(box, frame) pairs where the source sounds), per 4 s window; clear (the box does not show its
class while its source is silent); frame-to-frame mean absolute difference at the 4 s seams
(frames 7 -> 8 and 15 -> 16) and inside the 4 s windows (the truth video's values for
reference); AV-Align of the whole video against the mixture. Auto boxes: IoU with the true
boxes over the frames where the source sounds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from maestro_jax.metrics import placement as colour_pl
from maestro_jax.toy import long_world as lw
from maestro_jax.toy import world as tw

METHODS = ("naive", "freenoise", "windows", "auto")
SEGMENT_FRAMES = tw.NUM_FRAMES  # 4 s of the toy world


def _tokens(models, cfg, stems: np.ndarray, seconds: float):
    from maestro_jax.audio import encoder as ae

    return ae.encode_stems(models.audio, [(s[None], tw.SR) for s in stems], seconds, cfg.clip_rule)


def generate(models, cfg, scene: lw.LongScene, method: str, boxes, stride: int) -> np.ndarray:
    """uint8 frames [24, H, W, 3] of one scene by one method ('naive' | 'freenoise' |
    'windows'; 'auto' is 'freenoise' with other boxes)."""
    from maestro_jax.generation import long as gl
    from maestro_jax.generation import runner as gen
    from maestro_jax.generation import sampling

    options = gen._options(cfg)
    settings = gen._settings(cfg, int(cfg.n_d))
    frames_n = scene.envs.shape[1]
    if method == "naive":
        spec = gen._spec(cfg)
        n_seg = frames_n // SEGMENT_FRAMES
        seg_n = int(round(tw.SECONDS * tw.SR))
        jobs = []
        for i in range(n_seg):
            tok = _tokens(models, cfg, scene.stems[:, i * seg_n : (i + 1) * seg_n], tw.SECONDS)
            jobs.append(
                sampling.prepare_job(models, tok, boxes, boxes, spec, scene.seed + i, options)
            )
        lat = sampling.sample_maestro(models, jobs, settings)
        frames = sampling.decode(models, lat, cfg.frame_chunk)
        return np.concatenate(list(frames), axis=0)
    spec = gl.long_spec([scene.stems.shape[1] / tw.SR], int(cfg.num_frames), stride, 600.0)
    stems = [(s[None], tw.SR) for s in scene.stems]
    at_once = 1 if method == "windows" else 0
    mw, job = gl.prepare_long(models, stems, spec, boxes, boxes, scene.seed, cfg, options, at_once)
    lat = sampling.sample_maestro(mw, [job], settings)
    return sampling.decode(models, lat, cfg.frame_chunk)[0]


def frame_diffs(frames: np.ndarray) -> np.ndarray:
    """[F - 1] mean absolute RGB difference between consecutive frames."""
    f = np.asarray(frames, np.float32)
    return np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))


def seam_mask(frames_n: int) -> np.ndarray:
    """[F - 1] bool: the step f -> f + 1 crosses a 4 s boundary."""
    m = np.zeros(frames_n - 1, bool)
    m[SEGMENT_FRAMES - 1 :: SEGMENT_FRAMES] = True
    return m


def score(frames: np.ndarray, scene: lw.LongScene, av_align: bool = True) -> dict:
    """Placement (per 4 s window and overall), clear, seam / inside differences, AV-Align
    (NaN when `av_align` is False)."""

    out = colour_pl.colour_placement_outcomes(frames, scene.boxes, scene.classes, tw.OBJECT_COLORS)
    present, correct = scene.present, out == 0
    n_win = frames.shape[0] // SEGMENT_FRAMES
    per_window = []
    for w in range(n_win):
        sl = slice(w * SEGMENT_FRAMES, (w + 1) * SEGMENT_FRAMES)
        p = present[:, sl]
        per_window.append(float(correct[:, sl][p].mean()) if p.any() else float("nan"))
    d, seam = frame_diffs(frames), seam_mask(frames.shape[0])
    mix = scene.stems.sum(axis=0)
    return {
        "placement": float(correct[present].mean()),
        "placement_per_window": per_window,
        "clear": float((~correct[~present]).mean()) if (~present).any() else float("nan"),
        "seam_diff": float(d[seam].mean()),
        "inside_diff": float(d[~seam].mean()),
        "av_align": _av_align(frames, mix) if av_align else float("nan"),
    }


def _av_align(frames: np.ndarray, mixture: np.ndarray) -> float:
    from maestro_jax.metrics.av_align import av_align_score

    return float(av_align_score(frames, tw.FPS, mixture, tw.SR))


def evaluate_long(
    cfg, scenes: Sequence[lw.LongScene], methods: Sequence[str] = METHODS, stride: int = 4,
    log=print,
) -> dict:  # fmt: skip
    """Generate every scene by every method and score them (see the module docstring)."""
    from maestro_jax import mosaic
    from maestro_jax.audio import layout as al
    from maestro_jax.generation import runner as gen

    t0 = time.perf_counter()
    models = gen.build_models(cfg)
    per: dict[str, list[dict]] = {m: [] for m in methods}
    examples: dict[str, np.ndarray] = {}
    ious = []
    for i, s in enumerate(scenes):
        true_boxes = tuple(mosaic.Boxes.static([float(v) for v in b]) for b in s.boxes)
        for m in methods:
            boxes = true_boxes
            if m == "auto":
                stereo = lw.stereo_stems(s.stems, s.boxes, s.sizes)
                frames_n = s.envs.shape[1]
                lay = al.estimate_layout(list(stereo), tw.SR, frames_n, frames_n / tw.FPS)
                boxes = lay.boxes
                ious.append(float(al.box_iou(lay.per_frame(), s.boxes[:, None])[s.present].mean()))
            t1 = time.perf_counter()
            frames = generate(models, cfg, s, m, boxes, stride)
            res = score(frames, s)
            res["seconds"] = time.perf_counter() - t1
            per[m].append(res)
            if i == 0:
                examples[m] = frames
            log(f"scene {i} {m}: placement {res['placement']:.3f} ({res['seconds']:.1f} s)")
    truth = [score(s.frames, s) for s in scenes]
    summary = {m: _mean(rows) for m, rows in per.items()}
    summary["truth"] = _mean(truth)
    return {
        "summary": summary,
        "auto_box_iou": float(np.mean(ious)) if ious else None,
        "jobs": len(scenes),
        "sources": [len(s.classes) for s in scenes],
        "stride": stride,
        "seconds": round(time.perf_counter() - t0, 1),
        "examples": examples,
        "truth_example": scenes[0].frames if scenes else None,
    }


def _mean(rows: list[dict]) -> dict:
    out = {}
    for k in rows[0]:
        vals = np.array([r[k] for r in rows], np.float64)
        out[k] = np.nanmean(vals, axis=0).tolist()
    return out


def markdown_tables(result: dict) -> str:
    """The long-video table (methods x scores) and the auto-box table."""
    s = result["summary"]
    rows = [
        "| Method | Placement 0-4 s | 4-8 s | 8-12 s | All | Clear when silent | "
        "Diff at 4 s seams | Diff inside | AV-Align |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"naive": "naive: 3 independent 4 s segments",
             "freenoise": "FreeNoise windows (temporal attention fused)",
             "windows": "whole-UNet windows, 1 at once (predictions fused)",
             "auto": "FreeNoise windows, auto boxes", "truth": "(truth video)"}  # fmt: skip
    for m in [*[m for m in METHODS if m in s], "truth"]:
        r = s[m]
        pw = " | ".join(f"{v:.3f}" for v in r["placement_per_window"])
        rows.append(
            f"| {names[m]} | {pw} | {r['placement']:.3f} | {r['clear']:.3f} | "
            f"{r['seam_diff']:.1f} | {r['inside_diff']:.1f} | {r['av_align']:.3f} |"
        )
    if result.get("auto_box_iou") is not None:
        rows += [
            "",
            "| Boxes | IoU with the true boxes | Placement (true boxes scored) |",
            "|---|---|---|",
            f"| true | 1.000 | {s['freenoise']['placement']:.3f} |" if "freenoise" in s else "",
            f"| auto (stereo ILD + loudness) | {result['auto_box_iou']:.3f} | "
            f"{s['auto']['placement']:.3f} |",
        ]
    return "\n".join(r for r in rows if r) + "\n"


def example_sheet(result: dict) -> np.ndarray:
    """Rows: truth, then the methods in METHODS order, of the first scene: 24 frames each."""
    from maestro_jax.video import contact_sheet

    rows = [result["truth_example"]] + [
        result["examples"][m] for m in METHODS if m in result["examples"]
    ]
    return np.concatenate([contact_sheet(r, cols=24) for r in rows], axis=0)


def write_results(result: dict, outdir) -> dict:
    """OUT/long.json, OUT/long.md and OUT/long_example.png, each written atomically."""
    from pathlib import Path

    from maestro_jax.files import write_json
    from maestro_jax.video import atomic_path, write_png

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "long.json", "md": out / "long.md"}
    write_json(paths["json"], {k: v for k, v in result.items() if k not in _ARRAYS})
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text("# Toy-world long videos (12 s)\n\n" + markdown_tables(result))
    if result.get("examples"):
        paths["sheet"] = write_png(out / "long_example.png", example_sheet(result))
    return paths


_ARRAYS = ("examples", "truth_example")
