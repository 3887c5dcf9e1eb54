"""Validating generation jobs before anything is loaded: audio read, boxes parsed and checked
against the attention levels, N_D against the steps (Maestro jobs only), the source count against
the 77-token context."""

from __future__ import annotations

import dataclasses

import numpy as np

from maestro_jax import mosaic
from maestro_jax.audio import layout
from maestro_jax.generation import long as gl
from maestro_jax.generation.jobs import Job, JobError, check_job_files


def _seconds_items(text: str) -> list:
    """'0s:l,t,r,b;6s:l,t,r,b' -> [[0.0, box], [6.0, box]]."""
    out = []
    for item in text.split(";"):
        t, _, box = item.strip().partition(":")
        if not t.endswith("s"):
            raise ValueError(f"keyframe {item!r}: give every time in seconds ('6s:l,t,r,b')")
        out.append([float(t[:-1]), mosaic.parse_box(box)])
    return out


def _layout(job: Job, cfg, long=None, boxes=None) -> tuple[tuple, tuple]:
    if boxes is None:
        boxes = job.boxes if job.boxes is not None else cfg.boxes
    if isinstance(boxes, str):
        return mosaic.parse_layout(boxes)
    parsed = []
    for b in boxes:
        if isinstance(b, str) and "s:" in b:  # '0s:l,t,r,b;6s:l,t,r,b': keyframes in seconds
            parsed.append(_layout(job, cfg, long, [{"keyframes_s": _seconds_items(b)}])[0][0])
        elif isinstance(b, str):
            parsed.append(mosaic.parse_boxes(b))
        elif isinstance(b, dict) and "keyframes_s" in b:  # [[seconds, [l,t,r,b]], ...]
            if long is None:
                raise ValueError("keyframes_s (seconds) need a whole-audio job (window 0)")
            kfs = gl.seconds_to_positions(b["keyframes_s"], long.frames, long.rate)
            parsed.append(mosaic.Boxes.keyframed(kfs))
        elif isinstance(b, dict):  # {"keyframes": [[pos, [l,t,r,b]], ...]}
            parsed.append(mosaic.Boxes.keyframed(b["keyframes"]))
        else:
            parsed.append(mosaic.Boxes.static(b))
    return tuple(parsed), tuple(parsed)


@dataclasses.dataclass
class Plan:
    """A validated job: its audio loaded, its boxes parsed (no model compute yet)."""

    job: Job
    kind: str  # 'stems' | 'mixture' | 't2v'
    stems: list[tuple[np.ndarray, int]]
    mixture: tuple[np.ndarray, int] | None
    locate_boxes: tuple
    mosaic_boxes: tuple
    n_d: int
    warnings: list[str]
    long: gl.LongSpec | None = None  # a whole-audio job (window 0): its frames and windows
    auto_layout: layout.AutoLayout | None = None  # boxes estimated from the sound ('auto')

    @property
    def num_frames(self) -> int | None:
        """The frames of a whole-audio job (None: the config's num_frames)."""
        return self.long.frames if self.long is not None else None


def plan_job(job: Job, cfg, models_hint: dict) -> Plan:
    """Every check that needs no model: raises JobError naming the job and the problem.
    `models_hint['resolutions']`: the attention levels' (h, w), for the box checks."""
    from maestro_jax import audio as audio_lib

    check_job_files(job)
    warnings: list[str] = []
    if job.prompt:  # text-to-video: no boxes, no N_D
        return Plan(job, "t2v", [], None, (), (), 0, warnings)
    n_d = cfg.n_d if job.n_d is None else job.n_d
    if not 0 <= n_d <= cfg.steps:
        raise JobError(f"job {job.name}: N_D = {n_d} is larger than the {cfg.steps} DDIM steps")
    stems, mixture = [], None

    def load(p):
        if job_window(job, cfg) == 0:  # refuse a too-long file before decoding it
            seconds = gl.audio_seconds(p)
            limit = gl.long_options(cfg)["max_seconds"]
            if seconds is not None and seconds > limit:
                raise JobError(f"job {job.name}: {p}: " + gl.too_long(seconds, limit))
        try:
            return audio_lib.load_audio(p)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise JobError(f"job {job.name}: cannot read audio {p}: {e}") from e

    if job.audio:
        stems = [load(p) for p in job.audio]
        for p, (w, _) in zip(job.audio, stems):
            if float(np.max(np.abs(w))) < 1e-4:
                warnings.append(f"stem {p} is silent (peak < 1e-4)")
        kind = "stems"
    else:
        mixture = load(job.mixture)
        kind = "mixture"
    n_a = job.num_sources
    if job.query_embeddings and not job.queries:
        with np.load(job.query_embeddings) as z:
            n_a = int(z[z.files[0]].shape[0])
    cap = mosaic.context_capacity(cfg.num_queries, cfg.mosaic.token_offset)
    if n_a > cap:
        raise JobError(
            f"job {job.name}: {n_a} sources do not fit one 77-token context: at most "
            f"floor((77 - {cfg.mosaic.token_offset}) / N_Q={cfg.num_queries}) = {cap}"
        )
    if n_a < 1:
        raise JobError(f"job {job.name}: no sources")
    long = _long_spec(job, cfg, stems or [mixture])
    frames = long.frames if long is not None else cfg.num_frames
    auto = None
    try:
        if layout.is_auto(job.boxes if job.boxes is not None else cfg.boxes):
            loc = mos = layout.spread_boxes(n_a)  # mixtures: replaced after separation
            if kind == "stems":
                seconds = frames / long.rate if long is not None else float(cfg.clip_window)
                auto = layout.estimate_layout(
                    [w for w, _ in stems], [r for _, r in stems], frames, seconds
                )
                loc = mos = auto.boxes
                warnings += [f"boxes auto: {auto.note}"] if auto.note else []
        else:
            loc, mos = _layout(job, cfg, long)
    except (ValueError, KeyError, TypeError) as e:
        raise JobError(f"job {job.name}: bad boxes: {e}") from e
    if len(loc) != n_a:
        raise JobError(
            f"job {job.name}: {n_a} sources but {len(loc)} boxes ({job.boxes or cfg.boxes})"
        )
    try:
        mosaic.check_boxes(loc, models_hint["resolutions"], frames, cfg.mosaic.cell_rule)
        mosaic.check_boxes(mos, models_hint["resolutions"], frames, cfg.mosaic.cell_rule)
    except ValueError as e:
        raise JobError(f"job {job.name}: {e}") from e
    return Plan(job, kind, stems, mixture, loc, mos, n_d, warnings, long, auto)


def job_window(job: Job, cfg) -> float:
    """Seconds of audio per video: the job's `window`, else the config's clip_window (0: all)."""
    w = cfg.clip_window if job.window is None else job.window
    if not (isinstance(w, (int, float)) and w >= 0):
        raise JobError(f"job {job.name}: window must be >= 0 seconds (0 = the whole audio)")
    return float(w)


def _long_spec(job: Job, cfg, audio: list) -> gl.LongSpec | None:
    """The whole-audio geometry of a window-0 job (None otherwise); JobError on bad audio."""
    if job_window(job, cfg) > 0:
        return None
    opts = gl.long_options(cfg)
    try:
        return gl.long_spec(
            [w.shape[-1] / sr for w, sr in audio], int(cfg.num_frames), opts["stride"],
            opts["max_seconds"],
        )  # fmt: skip
    except gl.LongInputError as e:
        raise JobError(f"job {job.name}: {e}") from e
