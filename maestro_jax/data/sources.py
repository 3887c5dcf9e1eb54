"""Which clips come from which files: the three source layouts of a dataset preparation
(VGGSound CSV, class-per-folder videos, the release's frames + wav folders) listed into
`SourceJob`s, in a deterministic order (see `maestro_jax.data.prepare` for the layouts).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

LAYOUTS = ("vggsound", "landscape", "frames_wav")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_DIRS = ("train", "test", "val", "validation")


@dataclasses.dataclass
class SourceJob:
    """One source (a video file, or a frames+wav folder) and the clips to cut from it.

    clips: [(clip_id, start seconds)], or None to tile the whole file into clips.
    key: the resume key (a job whose key is in a committed part is skipped).
    """

    key: str
    source: str  # path relative to the input folder (recorded in the manifest)
    path: str  # absolute path
    label: str
    label_index: int
    split: str
    clips: list[tuple[str, float]] | None = None
    audio_path: str | None = None  # frames_wav: the wav file


def label_from_folder(name: str) -> str:
    """The release turns class folder names into text targets with '_' -> ' '."""
    return name.replace("_", " ").strip()


def read_class_file(path: str | os.PathLike) -> list[str]:
    with open(path) as f:
        names = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not names:
        raise ValueError(f"class list {path} is empty")
    return names


def read_vggsound_csv(path: str | os.PathLike) -> list[tuple[str, int, str, str]]:
    """Rows (youtube_id, start_seconds, label, split) of a VGGSound CSV (header optional)."""
    rows = []
    with open(path, newline="") as f:
        for i, rec in enumerate(csv.reader(f)):
            if not rec or all(not c.strip() for c in rec):
                continue
            if len(rec) < 3:
                raise ValueError(f"{path}:{i + 1}: expected youtube_id,start,label[,split]: {rec}")
            try:
                start = int(float(rec[1]))
            except ValueError:
                if i == 0:  # a header row
                    continue
                raise ValueError(
                    f"{path}:{i + 1}: start_seconds is not a number: {rec[1]!r}"
                ) from None
            split = rec[3].strip() if len(rec) > 3 and rec[3].strip() else "train"
            rows.append((rec[0].strip(), start, rec[2].strip(), split))
    if not rows:
        raise ValueError(f"no rows in VGGSound CSV {path}")
    return rows


def _walk_files(root: Path, exts: Sequence[str]) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith(".") and Path(fn).suffix.lower() in exts:
                out.append(Path(dirpath) / fn)
    return out


def _split_roots(root: Path, default_split: str) -> list[tuple[str, Path]]:
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    splits = [(p.name, p) for p in subs if p.name.lower() in SPLIT_DIRS]
    return splits or [(default_split, root)]


def discover(
    input_dir: str | os.PathLike,
    layout: str,
    labels: str | os.PathLike | None = None,
    split: str | None = None,
) -> tuple[list[SourceJob], list[str], list[dict]]:
    """List the jobs of a source folder. Returns (jobs, class names, problems found while
    listing, e.g. CSV rows whose video is missing)."""
    root = Path(input_dir).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"--input {input_dir} is not a folder")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown --layout {layout!r}; use one of {LAYOUTS}")
    jobs: list[SourceJob] = []
    problems: list[dict] = []
    if layout == "vggsound":
        if labels is None:
            raise ValueError("--layout vggsound needs --labels pointing to the VGGSound CSV")
        rows = read_vggsound_csv(labels)
        classes = sorted({r[2] for r in rows})
        cidx = {c: i for i, c in enumerate(classes)}
        by_stem: dict[str, Path] = {}
        for p in _walk_files(root, VIDEO_EXTS):
            by_stem.setdefault(p.stem, p)
        for ytid, start, label, row_split in rows:
            clip_id = f"{ytid}_{start:06d}"
            path, offset = None, 0.0
            for stem in (clip_id, f"{ytid}_{start}"):
                if stem in by_stem:
                    path = by_stem[stem]
                    break
            if path is None and ytid in by_stem:
                path, offset = by_stem[ytid], float(start)
            if path is None:
                problems.append({"source": clip_id, "key": clip_id, "error": "video not found"})
                continue
            jobs.append(
                SourceJob(
                    key=clip_id,
                    source=path.relative_to(root).as_posix(),
                    path=str(path),
                    label=label,
                    label_index=cidx[label],
                    split=split or row_split,
                    clips=[(clip_id, offset)],
                )
            )
        return jobs, classes, problems

    # Folder layouts: [<split>/]<class>/...
    found: list[tuple[str, str, Path]] = []  # (split, class folder, class dir)
    for split_name, sroot in _split_roots(root, split or "train"):
        for cdir in sorted(p for p in sroot.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found.append((split or split_name, cdir.name, cdir))
    if labels is not None:
        wanted = read_class_file(labels)
        classes = [label_from_folder(c) for c in wanted]
    else:
        classes = sorted({label_from_folder(c) for _, c, _ in found})
    cidx = {c: i for i, c in enumerate(classes)}
    for split_name, cname, cdir in found:
        label = label_from_folder(cname)
        if label not in cidx:
            continue
        if layout == "landscape":
            for p in _walk_files(cdir, VIDEO_EXTS):
                rel = p.relative_to(root).as_posix()
                jobs.append(SourceJob(rel, rel, str(p), label, cidx[label], split_name, clips=None))
        else:  # frames_wav: one clip per folder
            for clip_dir in sorted(p for p in cdir.iterdir() if p.is_dir()):
                rel = clip_dir.relative_to(root).as_posix()
                wav = clip_dir / f"{clip_dir.name}.wav"
                if not wav.exists():
                    wavs = sorted(clip_dir.glob("*.wav"))
                    wav = wavs[0] if len(wavs) == 1 else None
                if wav is None:
                    problems.append({"source": rel, "key": rel, "error": "no (single) wav file"})
                    continue
                jobs.append(
                    SourceJob(
                        rel,
                        rel,
                        str(clip_dir),
                        label,
                        cidx[label],
                        split_name,
                        clips=[(rel.replace("/", "__"), 0.0)],
                        audio_path=str(wav),
                    )
                )
    if not classes:
        raise ValueError(f"no class folders found under {root} (layout {layout})")
    return jobs, classes, problems
