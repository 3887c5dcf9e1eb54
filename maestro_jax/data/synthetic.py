"""Tiny synthetic audio-visual data for tests and the trainer's `runlocal` config.

- `write_synthetic_dataset(out_dir, ...)`: a dataset in exactly the on-disk format of
  `data.prepare` (parts, TFDS folder, manifest, classes), made from procedurally generated
  frames (a textured disk moving over a class-coloured background) and audio (a class tone with
  a slow tremolo), without going through video files. Seconds to build.
- `make_synthetic_videos(dir, n, ...)`: tiny mp4 files with an AAC audio track (imageio-ffmpeg)
  in the landscape (class folders) or VGGSound (flat folder + CSV) layout, optionally with a
  static video, a silent one and a corrupt file, to exercise `data.prepare` end to end.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from maestro_jax.data.prepare import PrepOptions, features_for, make_clip_record
from maestro_jax.data.tfds_format import SAMPLE_RATE, PartWriter, finalize, serialize_record
from maestro_jax.files import write_json

CLASS_NAMES = (
    "dog_barking",
    "rain_falling",
    "car_engine",
    "bird_chirping",
    "ocean_waves",
    "church_bells",
    "fire_crackling",
    "train_horn",
)
_COLORS = np.array(
    [
        [200, 60, 60],
        [60, 120, 200],
        [60, 180, 90],
        [220, 200, 60],
        [160, 80, 200],
        [60, 200, 200],
        [230, 130, 40],
        [150, 150, 150],
    ],
    np.float32,
)


def class_names(num_classes: int) -> list[str]:
    """Folder names of the synthetic classes (labels replace '_' with ' ')."""
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in [1, {len(CLASS_NAMES)}], got {num_classes}")
    return list(CLASS_NAMES[:num_classes])


def render_frames(
    num_frames: int,
    fps: float,
    height: int,
    width: int,
    class_index: int,
    *,
    moving: bool = True,
    phase: float = 0.0,
) -> np.ndarray:
    """uint8 [T, H, W, 3]: a checker-textured disk on a class-coloured gradient background.

    The disk circles the frame centre once every 4 s (radius 0.25 of the short side) unless
    `moving` is False (then it stays put, and every frame is identical).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = _COLORS[class_index % len(_COLORS)]
    bg = base[None, None] * (0.55 + 0.45 * (yy / max(height - 1, 1)))[..., None]
    r = 0.18 * min(height, width)
    orbit = 0.25 * min(height, width)
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        t = i / fps if moving else 0.0
        ang = phase + 2 * np.pi * t / 4.0
        cx = width / 2 + orbit * np.cos(ang)
        cy = height / 2 + orbit * np.sin(ang)
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        checker = ((np.floor((xx - cx) / 3) + np.floor((yy - cy) / 3)) % 2)[..., None]
        disk = 255.0 - base[None, None] * 0.5 + checker * np.array([0, -120, -200], np.float32)
        img = np.where(inside[..., None], disk, bg)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def render_audio(
    seconds: float, class_index: int, *, silent: bool = False, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """float32 [N]: a class tone (220 Hz * 1.5^k) with a 2 Hz tremolo; zeros when `silent`."""
    n = int(round(seconds * sr))
    if silent:
        return np.zeros(n, np.float32)
    t = np.arange(n, dtype=np.float64) / sr
    f0 = 220.0 * 1.5 ** (class_index % 6)
    a = 0.3 * (0.6 + 0.4 * np.sin(2 * np.pi * 2.0 * t)) * np.sin(2 * np.pi * f0 * t)
    return a.astype(np.float32)


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_clips: int = 16,
    resolution: int = 64,
    num_classes: int = 3,
    seed: int = 0,
    *,
    frames_rule: str = "default",
    num_test: int = 0,
    static_ids: Sequence[int] = (),
    silent_ids: Sequence[int] = (),
    keep_audio: bool = True,
    fps: float = 8.0,
) -> dict[str, int]:
    """Write a `data.prepare`-format dataset of `num_clips` synthetic 10 s clips.

    Clip i has class i % num_classes; the last `num_test` clips go to split 'test', the rest to
    'train'. Clips in `static_ids` do not move, those in `silent_ids` have all-zero audio.
    Returns {split: num_records}.
    """
    out_dir = Path(out_dir).absolute()
    opts = PrepOptions(resolution=resolution, frames_rule=frames_rule, keep_audio=keep_audio)
    opts.validate()
    names = class_names(num_classes)
    labels = [n.replace("_", " ") for n in names]
    rng = np.random.default_rng(seed)
    num_frames = int(round(opts.clip_seconds * fps))

    def clips():
        for i in range(num_clips):
            split = "test" if i >= num_clips - num_test else "train"
            c = i % num_classes
            frames = render_frames(
                num_frames,
                fps,
                resolution,
                resolution,
                c,
                moving=i not in static_ids,
                phase=float(rng.uniform(0, 2 * np.pi)),
            )
            audio = render_audio(opts.clip_seconds, c, silent=i in silent_ids)
            yield split, f"synthetic_{seed}_{i:05d}", c, frames, num_frames, fps, audio

    return write_clip_dataset(
        out_dir, opts, labels, "synthetic", seed, clips(), "synthetic clips (data.synthetic)"
    )


def write_clip_dataset(
    out_dir: Path,
    opts: PrepOptions,
    labels: Sequence[str],
    source: str,
    seed: int,
    clips: Iterable[tuple],
    description: str,
) -> dict[str, int]:
    """Write generated clips in the `data.prepare` on-disk format (classes.json,
    prep_config.json, parts per split, TFDS folder); parts are aborted on any error.

    clips: (split, clip_id, label_index, frames uint8 [T, H, W, 3], num_frames, fps, audio16k)
    tuples, consumed in order. Returns {split: num_records}."""
    write_json(out_dir / "classes.json", list(labels))
    write_json(
        out_dir / "prep_config.json",
        {
            **dataclasses.asdict(opts),
            "layout": source,
            "num_frames": opts.num_frames,
            "seed": seed,
        },
    )
    features = features_for(opts)
    writers: dict[str, tuple[PartWriter, list]] = {}
    try:
        for split, clip_id, c, frames, num_frames, fps, audio in clips:
            if split not in writers:
                writers[split] = (PartWriter(out_dir, split, f"{source}-{seed:04d}"), [])
            rec, entry = make_clip_record(
                clip_id, labels[c], c, frames, num_frames, fps, audio, opts
            )
            w, entries = writers[split]
            w.write(serialize_record(features, rec))
            entries.append({**entry, "source": source, "key": clip_id, "start": 0.0})
        for split, (w, entries) in writers.items():
            w.commit({"clips": entries, "done": [e["key"] for e in entries], "split": split})
    except BaseException:
        for w, _ in writers.values():
            w.abort()
        raise
    return finalize(out_dir, features, description=description)


def make_synthetic_videos(
    out_dir: str | os.PathLike,
    n: int = 4,
    *,
    layout: str = "landscape",
    num_classes: int = 2,
    seconds: float = 10.5,
    fps: float = 8.0,
    size: tuple[int, int] = (48, 64),
    static_ids: Sequence[int] = (),
    silent_ids: Sequence[int] = (),
    long_ids: Sequence[int] = (),
    corrupt: bool = True,
    seed: int = 0,
) -> list[dict]:
    """Write `n` tiny mp4s (h264 + AAC at 16 kHz) and, with `corrupt`, one unreadable file.

    layout 'landscape': out_dir/<class folder>/vid_XXX.mp4 (video i has class i % num_classes).
    layout 'vggsound': out_dir/videos/vidXXXXXXX_000000.mp4 plus out_dir/vggsound.csv (rows
    `id,0,label,train`, the corrupt file's row included).
    Videos in `long_ids` last 2 * seconds (two 10 s clips when tiled). Returns one dict per file:
    {path, label, class_index, kind: normal|static|silent|corrupt, clip_id (vggsound)}.
    """
    from maestro_jax.video import write_video

    if layout not in ("landscape", "vggsound"):
        raise ValueError(f"layout must be 'landscape' or 'vggsound', got {layout!r}")
    out_dir = Path(out_dir)
    names = class_names(num_classes)
    rng = np.random.default_rng(seed)
    h, w = size
    files: list[dict] = []
    rows = []
    for i in range(n + int(corrupt)):
        c = i % num_classes
        is_corrupt = i == n
        if layout == "landscape":
            path = out_dir / names[c] / f"vid_{i:03d}.mp4"
            clip_id = None
        else:
            ytid = f"vid{i:07d}"
            path = out_dir / "videos" / f"{ytid}_000000.mp4"
            clip_id = f"{ytid}_000000"
            rows.append(f"{ytid},0,{names[c].replace('_', ' ')},train\n")
        path.parent.mkdir(parents=True, exist_ok=True)
        if is_corrupt:
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.bytes(2000))
            kind = "corrupt"
        else:
            secs = seconds * (2 if i in long_ids else 1)
            t = int(round(secs * fps))
            frames = render_frames(
                t, fps, h, w, c, moving=i not in static_ids, phase=float(rng.uniform(0, 6.28))
            )
            audio = render_audio(secs, c, silent=i in silent_ids)
            write_video(path, frames, fps, audio, SAMPLE_RATE)
            kind = "static" if i in static_ids else "silent" if i in silent_ids else "normal"
        files.append(
            {
                "path": str(path),
                "label": names[c].replace("_", " "),
                "class_index": c,
                "kind": kind,
                "clip_id": clip_id,
            }
        )
    if layout == "vggsound":
        (out_dir / "vggsound.csv").write_text("".join(rows))
    return files
