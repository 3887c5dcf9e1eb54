"""Scoring generated videos: IA, AV-Align, FVD and box placement per video, summarised per folder
(one row of the paper's Table 3 per folder).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maestro_jax.evaluation.networks import Scorers, check_config, load_scorers, uses_imagebind
from maestro_jax.evaluation.videos import (
    EvalError,
    VideoItem,
    _fit,
    find_videos,
    list_videos,
)
from maestro_jax.metrics.av_align import AV_2023_NOTE, AV_2025_NOTE


# ----------------------------------------------------------------------------- FVD
def _clip(frames: np.ndarray, n: int, where: Path) -> np.ndarray:
    if frames.shape[0] < n:
        raise EvalError(f"{where}: FVD needs {n} frames, the video has {frames.shape[0]}")
    return frames[:n]


def _features(paths: Sequence[Path], scorers: Scorers) -> np.ndarray:
    from maestro_jax.metrics.av_align import read_video

    ext = scorers.i3d()
    bs, n = int(scorers.cfg.fvd_batch), int(scorers.cfg.fvd_frames)
    feats, batch = [], []
    for p in paths:
        batch.append(_clip(read_video(p)[0], n, Path(p)))
        if len(batch) == bs:
            feats.append(ext(np.stack(batch)))
            batch = []
    if batch:
        feats.append(ext(np.stack(batch)))
    return np.concatenate(feats)


def reference_features(ref_files: Sequence[Path], scorers: Scorers) -> np.ndarray:
    """I3D features [N, D] of the reference videos, through the feature cache when set."""
    from maestro_jax.metrics import fvd

    cfg = scorers.cfg
    compute: Callable = lambda files: _features([Path(f) for f in files], scorers)
    if not cfg.fvd_cache_dir:
        return compute(ref_files)
    settings = {**scorers.i3d().settings(), "weights": scorers.weights["i3d"]}
    cache = os.path.expanduser(cfg.fvd_cache_dir)
    return fvd.cached_features([str(p) for p in ref_files], compute, cache, settings)


# ----------------------------------------------------------------------------- scoring
def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def score_videos(
    items: Sequence[VideoItem], scorers: Scorers, log: Callable = print
) -> tuple[dict, dict]:
    """IA, AV-Align (both rules) and placement of each video, in order: (per-video dict of the
    scored videos, {name: reason} of the videos that could not be scored). One bad video (an
    unreadable file, a missing audio track) is reported and skipped; the others are scored."""
    per_video: dict[str, dict] = {}
    failed: dict[str, str] = {}
    for it in items:
        t0 = time.perf_counter()
        try:
            rec = _score_one(it, scorers)
        except Exception as e:
            failed[it.name] = str(e) if isinstance(e, EvalError) else f"{type(e).__name__}: {e}"
            log(f"  {it.name}: FAILED, skipped ({failed[it.name]})")
            continue
        per_video[it.name] = rec
        ia_text = f"IA {rec['ia']:.4f}  " if "ia" in rec else ""
        log(
            f"  {it.name}: {ia_text}AV-Align {rec['av_align']:.4f} "
            f"(2023: {rec['av_align_2023']:.4f})  {time.perf_counter() - t0:.1f}s"
        )
        for w in rec.get("warnings", []):
            log(f"  warning: {it.name}: {w}")
    return per_video, failed


def _score_one(it: VideoItem, scorers: Scorers) -> dict:
    from maestro_jax import audio as audio_lib
    from maestro_jax.metrics import av_align as av
    from maestro_jax.metrics import ia as ia_lib
    from maestro_jax.metrics import placement as pl
    from maestro_jax.metrics.av_align import read_video

    cfg = scorers.cfg
    frames, fps = read_video(it.path)
    if frames.shape[0] < 2 or fps <= 0:
        raise EvalError(f"{it.path}: needs >= 2 frames and a frame rate (got {len(frames)})")
    try:
        with warnings.catch_warnings():  # ffmpeg is fork+exec'd: JAX's fork warning is moot
            warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
            audio, sr = audio_lib.load_audio(it.path)
    except (audio_lib.AudioLoadError, FileNotFoundError) as e:
        raise EvalError(
            f"{it.path} has no readable audio track (IA and AV-Align need it): {e}"
        ) from e
    seconds = frames.shape[0] / fps
    rec: dict[str, Any] = {"frames": int(frames.shape[0]), "fps": fps, "warnings": []}
    expected = ((it.settings or {}).get("video") or {}).get("frames")
    if expected and frames.shape[0] < int(expected):
        rec["warnings"].append(
            f"the video has {frames.shape[0]} frames, its job wrote {int(expected)}: "
            "truncated? scored on the frames it has"
        )
    stem_embs = None
    stems = [audio_lib.load_audio(s) for s in it.stems]
    stems = [(_fit(w, r, seconds), r) for w, r in stems]
    if not uses_imagebind(cfg):
        pass
    elif cfg.ia_audio == "mixture":
        frame_emb = scorers.vision(frames)
        emb = scorers.audio(_fit(audio, sr, seconds), sr, cfg.ia_embedding)
        rec["ia"] = ia_lib.ia_video(frame_emb, emb)
    else:
        frame_emb = scorers.vision(frames)
        embs = [scorers.audio(w, r, cfg.ia_embedding) for w, r in stems]
        rec["ia"] = ia_lib.ia_video(frame_emb, {"sources": embs}, "sources")
        if cfg.ia_embedding == "clip_mean":
            stem_embs = embs
    res = av.av_align_details(frames, fps, audio.T, sr, both_empty=float(cfg.av_align_both_empty))
    rec["av_align"] = float(res.scores["2025"])
    rec["av_align_2023"] = float(res.scores["2023"])
    rec["audio_peaks"] = len(res.audio_peaks)
    rec["video_peaks_2025"] = len(res.video_peaks["2025"])
    k = 0 if it.boxes is None else it.boxes.shape[0]
    if cfg.get("toy_placement", False):
        rec["placement"] = _toy_placement(it, frames)
    elif cfg.placement and uses_imagebind(cfg) and k >= 2 and len(it.stems) == k:
        boxes = _boxes_for(it, frames.shape[0])
        if stem_embs is None:
            stem_embs = [scorers.audio(w, r, "clip_mean") for w, r in stems]
        size = scorers.ib_config.image_size
        crops = pl.crop_boxes(frames, boxes, size)  # [K, T, S, S, 3]
        crop_emb = scorers.vision(crops.reshape(-1, size, size, 3)).reshape(k, len(frames), -1)
        sim = pl.crop_stem_similarity(crop_emb, np.stack(stem_embs))
        pr = pl.placement_from_similarity(sim, np.arange(k))
        rec["placement"] = {
            "accuracy": pr.accuracy, "margin": pr.margin, "n_boxes": pr.n,
            "correct": pr.correct.tolist(), "similarity": sim.tolist(),
            "margins": (np.diag(sim) - np.where(np.eye(k, dtype=bool), -np.inf, sim).max(1))
            .tolist(),
        }  # fmt: skip
    return rec


def _boxes_for(it: VideoItem, num_frames: int) -> np.ndarray:
    """The job's boxes [K, T, 4] of the video's frames: a truncated video (fewer frames than its
    job wrote, reported as a warning) uses the boxes of the frames it has."""
    if it.boxes.shape[1] < num_frames:
        raise EvalError(
            f"{it.name}.json has boxes for {it.boxes.shape[1]} frames, the video has {num_frames}"
        )
    return it.boxes[:, :num_frames]


def _toy_placement(it: VideoItem, frames: np.ndarray) -> dict:
    """Toy world: is box k's majority colour the class of stem k, per frame
    (`maestro_jax.metrics.placement.colour_placement`; true classes from the stems' `toyworld.json`)."""
    from maestro_jax.metrics import placement as colour_pl
    from maestro_jax.toy import world as toyworld
    from maestro_jax.toy.placement import read_truth

    classes = read_truth(it.stems) if it.stems else None
    if it.boxes is None or classes is None or len(classes) != it.boxes.shape[0]:
        raise EvalError(
            f"{it.path}: toy placement needs the job's boxes and stems with their true classes "
            "(a toyworld.json next to the stems, as `python -m maestro_jax.sweep` writes for "
            "toy jobs); or set --config.toy_placement=False"
        )
    correct = colour_pl.colour_placement(
        frames, _boxes_for(it, frames.shape[0]), classes, toyworld.OBJECT_COLORS
    )  # [K, T]
    return {
        "metric": "toy_colour", "accuracy": float(correct.mean()), "n_boxes": len(classes),
        "classes": classes, "correct": correct.tolist(),
    }  # fmt: skip


def summarise(
    name: str,
    videos_dir: Path,
    items: Sequence[VideoItem],
    per_video: dict,
    cfg,
    scorers,
    failed: dict | None = None,
) -> dict:
    """Per-folder result: every metric with its value and the number of videos."""
    from maestro_jax.metrics import av_align as av
    from maestro_jax.metrics import ia as ia_lib

    ias = [v["ia"] for v in per_video.values() if "ia" in v]
    ia_val, ia_n = ia_lib.ia_dataset(ias) if ias else (None, 0)
    av_val, av_n, av_skip = av.mean_score([v["av_align"] for v in per_video.values()])
    s23 = [v["av_align_2023"] for v in per_video.values()]
    av23, av23_n, av23_skip = av.mean_score(s23)
    out: dict[str, Any] = {
        "name": name,
        "videos_dir": str(videos_dir),
        "n_videos": len(items),
        "videos": [it.name for it in items],
        "n_scored": len(per_video),
        "failed": dict(failed or {}),
        "ia": (
            {"value": ia_val, "n": ia_n, "audio": cfg.ia_audio, "embedding": cfg.ia_embedding}
            if ias
            else None
        ),
        "av_align": {
            "value": av_val, "n": av_n, "skipped": av_skip, "rule": "2025", "note": AV_2025_NOTE,
        },
        "av_align_2023": {
            "value": av23, "n": av23_n, "skipped": av23_skip, "rule": "2023",
            "n_above_1": int(sum(1 for s in s23 if s > 1)), "note": AV_2023_NOTE,
        },
        "per_video": per_video,
        "weights": {**scorers.weights, "random": scorers.random},
    }  # fmt: skip
    placed = [v["placement"] for v in per_video.values() if "placement" in v]
    toy = [p for p in placed if p.get("metric") == "toy_colour"]
    if toy:  # accuracy over (box, frame) pairs
        correct = np.concatenate([np.asarray(p["correct"], bool).ravel() for p in toy])
        out["placement"] = {
            "accuracy": float(correct.mean()), "n_boxes": sum(p["n_boxes"] for p in toy),
            "n_box_frames": int(correct.size), "n": len(toy), "metric": "toy_colour",
        }  # fmt: skip
    elif placed:
        correct = np.concatenate([np.asarray(p["correct"], bool) for p in placed])
        margins = [m for p in placed for m in p["margins"]]
        out["placement"] = {
            "accuracy": float(correct.mean()),
            "margin": _mean(margins),
            "n_boxes": int(correct.size),
            "n": len(placed),
            "chance": _mean([1.0 / len(p["similarity"][0]) for p in placed]),
        }
    return out


def evaluate_dirs(
    dirs: Sequence[tuple[str, str | os.PathLike]],
    cfg,
    reference: str | os.PathLike | None = None,
    log: Callable = print,
) -> list[dict]:
    """Score each (name, folder); every input is checked before any model is loaded."""
    from maestro_jax.metrics import fvd

    if not dirs:
        raise EvalError("no --videos folder given")
    check_config(cfg, reference is not None)
    listed = [(n, Path(d), find_videos(d, cfg.ia_audio == "stems")) for n, d in dirs]
    ref_files: list[Path] = []
    if reference is not None:
        ref_files = list_videos(reference, recursive=True)
        if len(ref_files) < 2:
            raise EvalError(
                f"FVD needs at least 2 reference videos; {reference} has {len(ref_files)}"
            )
        for _n, d, items in listed:
            if len(items) < 2:
                raise EvalError(f"FVD needs at least 2 generated videos; {d} has {len(items)}")
    scorers = load_scorers(cfg)
    ref_feats = None
    results = []
    for name, d, items in listed:
        log(f"evaluating {name} ({len(items)} videos in {d})")
        per_video, failed = score_videos(items, scorers, log)
        res = summarise(name, d, items, per_video, cfg, scorers, failed)
        if reference is not None:
            if ref_feats is None:
                ref_feats = reference_features(ref_files, scorers)
            gen = _features([it.path for it in items if it.name in per_video], scorers)
            r = fvd.fvd_from_features(gen, ref_feats, cfg.fvd_convention, cfg.fvd_sqrt)
            res["fvd"] = {
                "value": r.fvd, "n": r.n_gen, "n_gen": r.n_gen, "n_real": r.n_real,
                "convention": r.convention, "sqrt_method": r.sqrt_method,
                "reference_dir": str(reference), "frames": int(cfg.fvd_frames),
                "size": int(cfg.fvd_size),
            }  # fmt: skip
        results.append(res)
    return results
