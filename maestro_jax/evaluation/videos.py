"""The videos an evaluation scores: every video file of a folder, with the job `.json` that
`maestro_jax.generate` wrote next to it (its source stems and boxes), when there is one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IA_AUDIO = ("mixture", "stems")
IA_EMBEDDING = ("clip_mean", "segments")


class EvalError(ValueError):
    """Bad evaluation input, found before any model compute; the message names the problem."""


# ----------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class VideoItem:
    """One video to score. boxes: [K, T, 4] frame-relative (l, t, r, b) or None."""

    name: str
    path: Path
    settings: dict | None
    stems: list[Path]
    boxes: np.ndarray | None
    missing_stems: list[str]


def _resolve(p: str, base: Path) -> Path | None:
    cands = [Path(p)] if Path(p).is_absolute() else [Path(p), base / p]
    return next((c for c in cands if c.is_file()), None)


def _stems_of(video: Path, settings: dict | None) -> tuple[list[Path], list[str]]:
    stem_dir = video.with_name(f"{video.stem}_stems")
    if stem_dir.is_dir():  # a mixture job: the separated stems, in query order
        return sorted(stem_dir.glob("*.wav")), []
    job = (settings or {}).get("job") or {}
    found, missing = [], []
    for p in job.get("audio") or []:
        r = _resolve(str(p), video.parent)
        (found.append(r) if r is not None else missing.append(str(p)))
    return (found, missing) if not missing else ([], missing)


def _boxes_of(settings: dict | None, name: str) -> np.ndarray | None:
    per_frame = (settings or {}).get("boxes_per_frame")
    if not per_frame:
        return None
    b = np.asarray(per_frame, np.float64)  # [T, K, 4]
    if b.ndim != 3 or b.shape[-1] != 4:
        raise EvalError(f"{name}.json: boxes_per_frame must be [T][K][4], got shape {b.shape}")
    return b.transpose(1, 0, 2)


def list_videos(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise EvalError(f"videos folder not found: {d}")
    it = d.rglob("*") if recursive else d.iterdir()
    return sorted(
        p
        for p in it
        if p.suffix.lower() in VIDEO_EXTS and not p.name.startswith(".") and p.is_file()
    )


def find_videos(directory: str | os.PathLike, need_stems: bool = False) -> list[VideoItem]:
    """The videos of a folder with what their `.json` says (stems, boxes). Raises EvalError for
    an empty or missing folder, a broken .json, or (need_stems) a video without its stems."""
    d = Path(directory)
    vids = list_videos(d)
    if not vids:
        raise EvalError(f"no videos ({', '.join('*' + e for e in VIDEO_EXTS)}) in {d}")
    items = []
    for v in vids:
        js = v.with_suffix(".json")
        settings = None
        if js.is_file():
            try:
                settings = json.loads(js.read_text())
            except json.JSONDecodeError as e:
                raise EvalError(f"{js}: not valid JSON ({e.msg})") from e
        stems, missing = _stems_of(v, settings)
        if need_stems and not stems:
            why = f"stem file(s) not found: {missing}" if missing else "no stems known"
            raise EvalError(
                f"{v}: IA over stems needs the job's stems ({why}; generate's NAME.json lists "
                "them, mixture jobs keep them in NAME_stems/); or use --config.ia_audio=mixture"
            )
        items.append(VideoItem(v.stem, v, settings, stems, _boxes_of(settings, v.stem), missing))
    return items


def _fit(wave: np.ndarray, sr: int, seconds: float) -> np.ndarray:
    """[C, N] cut or zero-padded to `seconds` (the video's duration, as the generator saw it)."""
    n = max(1, int(round(seconds * sr)))
    wave = wave[:, :n]
    if wave.shape[1] < n:
        wave = np.pad(wave, ((0, 0), (0, n - wave.shape[1])))
    return wave
