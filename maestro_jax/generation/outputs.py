"""What a generation job writes: separated stems (mixture jobs), the video with the mixture muxed
in, the contact sheet and the settings JSON (last: it records the job's hash, and a job whose JSON
records its current hash is finished). Nothing is written, and no folder made, until there is
something to write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from maestro_jax.audio import layout, separation
from maestro_jax.files import write_json
from maestro_jax.generation import sampling
from maestro_jax.generation.jobs import output_paths
from maestro_jax.generation.long import long_options, window_fusion
from maestro_jax.generation.plan import Plan, job_window


def video_spec(cfg) -> sampling.VideoSpec:
    return sampling.VideoSpec(int(cfg.num_frames), int(cfg.height), int(cfg.width))


def sources_of(plan: Plan, models, outdir: Path, cfg) -> tuple[list, tuple[np.ndarray, int]]:
    """(stems [(wave, sr)], mixture (wave, sr)) of a plan; runs separation for mixture jobs and
    keeps the separated stems next to the video."""
    from maestro_jax import audio as audio_lib

    if plan.kind == "stems":
        return plan.stems, sampling.mixture_of(plan.stems)
    wave, sr = plan.mixture
    sep = models.separator
    boxes = plan.job.boxes if plan.job.boxes is not None else cfg.boxes
    if layout.is_auto(boxes) and plan.locate_boxes:  # a generation job (not separation alone)
        _auto_boxes(plan, sep, cfg)
    ssr = sep.config.sample_rate
    mono = audio_lib.resample(wave.mean(axis=0, keepdims=True), sr, ssr)[0]
    qemb = _query_embeddings(plan)
    stems = separation.separate_mixture(sep, mono, plan.job.queries, qemb)
    stem_dir = output_paths(outdir, plan.job.name)["stems"]
    stem_dir.mkdir(parents=True, exist_ok=True)
    names = plan.job.queries or [f"source{i}" for i in range(len(stems))]
    for i, (q, s) in enumerate(zip(names, stems)):
        slug = "".join(ch if ch.isalnum() else "_" for ch in q)[:40]
        audio_lib.write_wav(stem_dir / f"{i:02d}_{slug}.wav", s[None], ssr)
    return [(s[None], ssr) for s in stems], (wave, sr)


def _auto_boxes(plan: Plan, sep, cfg) -> None:
    """A mixture job's boxes from the sound: each channel separated, then `estimate_layout`
    (a mono mixture keeps the spread layout, with a note)."""
    wave, sr = plan.mixture
    qemb = _query_embeddings(plan)
    if plan.long is not None:
        frames, seconds = plan.long.frames, plan.long.frames / plan.long.rate
    else:
        frames, seconds = int(cfg.num_frames), float(cfg.clip_window)
    if wave.shape[0] >= 2:
        stems, ssr = layout.separate_channels(sep, wave[:2], sr, plan.job.queries, qemb)
    else:
        stems, ssr = [wave] * len(plan.locate_boxes), sr
    auto = layout.estimate_layout(stems, ssr, frames, seconds)
    plan.locate_boxes = plan.mosaic_boxes = auto.boxes
    plan.auto_layout = auto
    if auto.note:
        plan.warnings.append(f"boxes auto: {auto.note}")
        print(f"note: job {plan.job.name}: boxes auto: {auto.note}")


def _query_embeddings(plan: Plan):
    if not plan.job.query_embeddings:
        return None
    with np.load(plan.job.query_embeddings) as z:
        return np.asarray(z["embeddings"] if "embeddings" in z.files else z[z.files[0]])


def _long_json(spec, cfg) -> dict:
    """How a whole-audio video was made: its windows and where they were fused."""
    at_once = long_options(cfg)["windows_at_once"]
    return {
        "window_frames": spec.window,
        "stride": spec.stride,
        "window_starts": list(spec.starts),
        "windows_at_once": at_once,
        "fusion": window_fusion(at_once),
    }


def write_outputs(plan: Plan, frames: np.ndarray, mixture, outdir: Path, cfg, extra: dict) -> dict:
    from maestro_jax.video import contact_sheet, write_png, write_video

    spec = video_spec(cfg)
    window = job_window(plan.job, cfg)
    if plan.long is not None:  # a whole-audio job: its own length, a 4 s job's frame rate
        spec = sampling.VideoSpec(plan.long.frames, spec.height, spec.width)
        window = plan.long.frames / plan.long.rate
    paths = output_paths(outdir, plan.job.name)
    fps = sampling.video_fps(spec, window, cfg.save_fps)
    audio, sr = mixture if mixture is not None else (None, None)
    write_video(paths["video"], frames, fps, audio, sr)
    boxes = (
        sampling.describe_boxes(plan.locate_boxes, spec.num_frames) if plan.locate_boxes else None
    )
    write_png(paths["sheet"], contact_sheet(frames, boxes))
    settings = {
        "job": plan.job.to_json(),
        "kind": plan.kind,
        "n_d": plan.n_d,
        "video": {
            "file": paths["video"].name,
            "frames": spec.num_frames,
            "fps": fps,
            "height": spec.height,
            "width": spec.width,
            "duration_s": spec.num_frames / fps,
        },  # fmt: skip
        "boxes_per_frame": boxes,
        "mosaic_boxes_per_frame": (
            sampling.describe_boxes(plan.mosaic_boxes, spec.num_frames)
            if plan.mosaic_boxes
            else None
        ),
        "config": json.loads(cfg.to_json_best_effort()),
        "warnings": plan.warnings,
        **({"auto_layout": plan.auto_layout.to_json()} if plan.auto_layout else {}),
        **({"long": _long_json(plan.long, cfg)} if plan.long is not None else {}),
        **extra,
    }
    write_json(paths["json"], settings)
    return settings
