"""Validating generation jobs before anything is loaded: audio read, boxes parsed and checked
against the attention levels, N_D against the steps (Maestro jobs only), the source count against
the 77-token context. Warnings (printed and stored in the job's `.json`): audio padded or cut to
the clip window, silent stems, identical or overlapping boxes, queries naming none of the
separator's classes, more sources than the video model was trained with."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

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
    job_hash: str = ""  # `generation.identity.job_hash`, recorded in the job's .json

    @property
    def num_frames(self) -> int | None:
        """The frames of a whole-audio job (None: the config's num_frames)."""
        return self.long.frames if self.long is not None else None


def _export_field(folder: str, field: str):
    """A field of a weights folder's config.json (None when absent or unreadable)."""
    if not folder:
        return None
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get(field)
    except (OSError, ValueError, AttributeError):
        return None


def plan_hints(cfg) -> dict:
    """What the weights folders' config.json files say about the jobs (no weights read):
    'separator_labels' (the classes a separator export was trained on), 'max_sources' (the
    most sources the video UNet saw in training) and 'separator_max_sources' (the most sources
    of the separator's training mixtures); None where an export does not record it (converted
    real weights)."""
    if cfg.model == "tiny":
        return {"separator_labels": None, "max_sources": None, "separator_max_sources": None}
    labels = _export_field(cfg.separator_checkpoint, "labels")
    max_sources = _export_field(str(Path(cfg.checkpoint) / "unet"), "max_sources")
    train = _export_field(cfg.separator_checkpoint, "train_config")
    sep_max = train.get("max_sources") if isinstance(train, dict) else None
    return {
        "separator_labels": labels,
        "max_sources": max_sources,
        "separator_max_sources": sep_max,
    }


def _audio_warning(path: str, wave: np.ndarray, sr: int, window: float) -> str | None:
    n, want = wave.shape[-1], int(round(window * sr))  # what `audio.encoder.stem_mel` keeps
    seconds = n / sr
    if n < want:
        return f"audio {path} is {seconds:.2f} s, padded with silence to the {window:g} s window"
    if n > want:
        return (
            f"audio {path} is {seconds:.2f} s; only its first {window:g} s are used "
            f"({seconds - window:.2f} s dropped)"
        )
    return None


def _box_warnings(boxes: tuple, num_frames: int) -> list[str]:
    """Identical or overlapping boxes (in any frame): each pair once, with its largest IoU."""
    from maestro_jax.generation.sampling import describe_boxes

    per_frame = np.asarray(describe_boxes(boxes, num_frames), np.float64)  # [F, K, 4]
    out = []
    for i in range(per_frame.shape[1]):
        for j in range(i + 1, per_frame.shape[1]):
            a, b = per_frame[:, i], per_frame[:, j]
            if np.allclose(a, b):
                out.append(f"boxes {i} and {j} are identical: their sources share one region")
                continue
            w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
            h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
            inter = w * h
            area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
            iou = float(np.max(inter / np.maximum(area(a) + area(b) - inter, 1e-12)))
            if iou > 0:
                out.append(f"boxes {i} and {j} overlap (IoU up to {iou:.2f})")
    return out


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
            try:
                limit = gl.long_options(cfg)["max_seconds"]
            except gl.LongInputError as e:
                raise JobError(f"job {job.name}: {e}") from e
            if seconds is not None and seconds > limit:
                raise JobError(f"job {job.name}: {p}: " + gl.too_long(seconds, limit))
        try:
            return audio_lib.load_audio(p)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise JobError(f"job {job.name}: cannot read audio {p}: {e}") from e

    window = job_window(job, cfg)  # 0: the whole audio is used, nothing padded or cut
    if job.audio:
        stems = [load(p) for p in job.audio]
        for p, (w, sr) in zip(job.audio, stems):
            if float(np.max(np.abs(w))) < 1e-4:
                warnings.append(f"stem {p} is silent (peak < 1e-4)")
            warnings += filter(None, [_audio_warning(p, w, sr, window)] if window else [])
        kind = "stems"
    else:
        mixture = load(job.mixture)
        warnings += filter(None, [_audio_warning(job.mixture, *mixture, window)] if window else [])
        kind = "mixture"
        labels = models_hint.get("separator_labels")
        if labels:
            known = {str(lab).strip().lower() for lab in labels}
            for q in job.queries:
                if q.strip().lower() not in known:
                    warnings.append(
                        f"query {q!r} names none of the separator's classes "
                        f"({', '.join(map(str, labels))})"
                    )
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
    for key, what in (("max_sources", "video model"), ("separator_max_sources", "separator")):
        most = models_hint.get(key) if key == "max_sources" or kind == "mixture" else None
        if most and n_a > int(most):
            warnings.append(f"{n_a} sources, but the {what} was trained with at most {most}")
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
    warnings += _box_warnings(loc, frames)
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
    try:
        opts = gl.long_options(cfg)
        return gl.long_spec(
            [w.shape[-1] / sr for w, sr in audio], int(cfg.num_frames), opts["stride"],
            opts["max_seconds"],
        )  # fmt: skip
    except gl.LongInputError as e:
        raise JobError(f"job {job.name}: {e}") from e
