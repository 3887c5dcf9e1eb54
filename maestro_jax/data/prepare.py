"""Prepare a TFDS-format audio-visual dataset for training the CIM (docs/method.md,
"Training the CIM"): one record per 10 s clip with the frames the method needs, the ImageBind
mel input of its S = 5 two-second clips, and the 16 kHz audio.

    python -m data.prepare --input DIR --labels FILE_OR_NONE \
        --layout vggsound|landscape|frames_wav --out OUT [--resolution 512] \
        [--frames_rule default|release] [--split NAME] [--drop_audio] \
        [--runner DirectRunner] [--direct_num_workers 0] [-- OTHER BEAM OPTIONS]

Layouts:
  vggsound    --labels is the VGGSound CSV (youtube_id, start_seconds, label, split; no header).
              A row's video is `{id}_{start:06d}.*` or `{id}_{start}.*` (already cut: the clip
              starts at 0) or `{id}.*` (the full video: the clip starts at start_seconds),
              anywhere under DIR.
  landscape   class-per-folder: DIR/<class>/*.mp4, or DIR/<split>/<class>/*.mp4 with split in
              train/test/val/validation. Every video is tiled into consecutive 10 s clips (a
              shorter tail counts when it holds at least --min_seconds).
  frames_wav  the reference release's layout: DIR/[<split>/]<class>/<clip>/ holding the frames
              `<clip>_%04d.jpg` (any *.jpg/*.png, sorted by name) and `<clip>.wav`; the frames span
              the audio. One clip per folder.
  For the folder layouts the label (the text target) is the class folder name with '_' -> ' ',
  as the release does; --labels FILE (one class per line) fixes the class order and keeps only
  those classes.

Per clip: frames = the `frame_indices` of the clip's F decoded frames, resized so the short side
is --resolution (antialiased bilinear, PIL's filter that torchvision's `Resize(res, BILINEAR)`
applies to the release's PIL frames, as a sparse-tap numpy resampler `resize_bilinear`; sources
larger than twice the resolution are first shrunk by ffmpeg's area filter while decoding, to
bound memory) then center-cropped to
res x res; audio = 16 kHz mono (`maestro_jax.audio.load_audio`, soxr), zero-padded to 10 s;
mel = `imagebind_audio_input(audio, 16000, S, rule)` of the unpadded audio (float16). The
manifest also records the static-video score (mean Farneback flow magnitude at 2 fps, computed on
the same centre crop resized to min(256, resolution) pixels, `--flow_size`) and the audio peak,
for `data.curate`.

An Apache Beam pipeline (`beam_pipelines.run_prepare`; the `.[data]` extra): the launcher lists
the input and splits the sources, per split in discovery order, into work units of
--files_per_part files; workers (DirectRunner: processes on this machine; or Dataflow, Flink,
Spark) each decode and featurize a unit and commit it atomically as one array_record part + a
JSON sidecar named `<unit index>-<digest of its sources>`; one commit step then (re)builds the
TFDS folder OUT/maestro_av/1.0.0 from the parts (hard links named as TFDS names shards, plus
dataset_info.json and features.json written by `tfds.folder_dataset.write_metadata`; no
TensorFlow needed), OUT/manifest.jsonl and OUT/errors.jsonl.

Guarantees: unreadable files are skipped, never fatal (their rows: the pipeline's `errors`
output, kept in their unit's sidecar and merged into OUT/errors.jsonl); a rerun, also after a
killed run, skips the committed units and writes the others under the same names, so nothing is
written twice or lost (`--retry_errors` runs units with errors again); the record order is the
discovery order whichever worker finished first; a record has the same bytes wherever it was
written (`serialize_record`, CPU numerics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from maestro_jax.data.frames import (
    NUM_SEGMENTS,
    flow_frame_indices,
    flow_magnitude,
    frame_indices,
    num_frames_for_rule,
    read_video_window,
    resize_center_crop,
)
from maestro_jax.data.sources import IMAGE_EXTS, SourceJob, _walk_files
from maestro_jax.data.tfds_format import (
    SAMPLE_RATE,
    PartWriter,
    finalize,
    load_parts,
    make_features,
    serialize_record,
)
from maestro_jax.files import write_text

log = logging.getLogger("maestro_jax.data.prepare")

CLIP_SECONDS = 10.0
# Fields of prep_config.json that change the records: a resumed run must use the same values.
FORMAT_FIELDS = (
    "resolution",
    "frames_rule",
    "num_segments",
    "clip_seconds",
    "clip_rule",
    "keep_audio",
)


# ==================================================================================================
# The on-disk format
# ==================================================================================================


@dataclasses.dataclass(frozen=True)
class PrepOptions:
    """What a record contains (FORMAT_FIELDS) and how clips are cut."""

    resolution: int = 512
    frames_rule: str = "default"
    num_segments: int = NUM_SEGMENTS
    clip_seconds: float = CLIP_SECONDS
    clip_rule: str = "git"  # ImageBind clip-time rule, see maestro_jax.audio.clip_starts
    keep_audio: bool = True
    min_seconds: float = 2.0
    flow_fps: float = 2.0
    flow_size: int = 256  # static filter: Farneback on size x size crops (at most resolution)
    max_clips_per_file: int | None = None

    @property
    def num_frames(self) -> int:
        return num_frames_for_rule(self.frames_rule, self.num_segments)

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * SAMPLE_RATE))

    def validate(self) -> None:
        num_frames_for_rule(self.frames_rule, self.num_segments)
        if self.resolution < 8:
            raise ValueError(f"resolution must be >= 8 pixels, got {self.resolution}")
        if self.clip_rule not in ("git", "pypi015"):
            raise ValueError(f"clip_rule must be 'git' or 'pypi015', got {self.clip_rule!r}")
        if not 0 < self.min_seconds <= self.clip_seconds:
            raise ValueError(
                f"need 0 < min_seconds ({self.min_seconds}) <= clip_seconds ({self.clip_seconds})"
            )


def features_for(opts: PrepOptions):
    return make_features(
        opts.num_frames,
        opts.resolution,
        opts.num_segments,
        opts.clip_samples if opts.keep_audio else None,
    )


# ==================================================================================================
# Processing one source
# ==================================================================================================


def _read_image(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def make_clip_record(
    clip_id: str,
    label: str,
    label_index: int,
    frames_all: np.ndarray | Callable[[list[int]], np.ndarray],
    num_frames: int,
    fps: float,
    audio16k: np.ndarray,
    opts: PrepOptions,
) -> tuple[dict, dict]:
    """Build one record + its manifest fields from a decoded clip.

    frames_all: uint8 [F, H, W, 3] (any size) or a function returning the frames at given
    indices (lazy decoding for frame folders). audio16k: float32 [N] mono at 16 kHz, N >= 1.
    """
    from maestro_jax.audio import imagebind_audio_input

    take = frames_all if callable(frames_all) else (lambda idx: frames_all[np.asarray(idx)])
    idx = frame_indices(num_frames, opts.frames_rule, opts.num_segments)
    frames = resize_center_crop(take(idx), opts.resolution)
    fidx = flow_frame_indices(num_frames, fps, opts.flow_fps)
    flow = flow_magnitude(resize_center_crop(take(fidx), min(opts.flow_size, opts.resolution)))
    a = np.asarray(audio16k, np.float32)[: opts.clip_samples]
    mel = imagebind_audio_input(
        a[None], SAMPLE_RATE, opts.num_segments, rule=opts.clip_rule, max_seconds=opts.clip_seconds
    )
    record = {
        "clip_id": clip_id,
        "label": label,
        "label_index": np.int32(label_index),
        "frames": frames,
        "mel": np.asarray(mel[:, 0], np.float16),
    }
    if opts.keep_audio:
        padded = np.zeros(opts.clip_samples, np.float16)
        padded[: a.size] = a
        record["audio"] = padded
    entry = {
        "clip_id": clip_id,
        "label": label,
        "label_index": int(label_index),
        "duration": round(a.size / SAMPLE_RATE, 6),
        "num_frames": int(num_frames),
        "fps": float(fps),
        "frame_indices": [int(i) for i in idx],
        "flow_mag": float(flow),
        "audio_peak": float(np.max(np.abs(a))),
        "audio_rms": float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))),
    }
    return record, entry


def process_source(job: SourceJob, opts: PrepOptions) -> Iterable[tuple[dict, dict]]:
    """Yield (record, manifest entry) for every clip of one source; raises on unreadable input."""
    from maestro_jax.audio import load_audio

    clip_n = opts.clip_samples
    min_n = int(round(opts.min_seconds * SAMPLE_RATE))
    if job.audio_path is not None:  # frames_wav
        wave = load_audio(job.audio_path, sr=SAMPLE_RATE, mono=True)[0][0]
        images = _walk_files(Path(job.path), IMAGE_EXTS)
        if not images:
            raise ValueError(f"no frames (*.jpg/*.png) in {job.path}")
        if wave.size < min_n:
            raise ValueError(f"audio shorter than {opts.min_seconds} s: {job.audio_path}")
        dur = wave.size / SAMPLE_RATE
        fps = len(images) / dur  # the frames span the audio
        n_frames = max(1, min(len(images), int(math.floor(fps * opts.clip_seconds + 1e-6))))
        clip_id = job.clips[0][0]
        yield (
            *make_clip_record(
                clip_id,
                job.label,
                job.label_index,
                lambda idx: np.stack([_read_image(images[i]) for i in idx]),
                n_frames,
                fps,
                wave[:clip_n],
                opts,
            ),
        )
        return
    wave = load_audio(job.path, sr=SAMPLE_RATE, mono=True)[0][0]
    if job.clips is not None:
        clips = job.clips
    else:
        n = wave.size
        count = 0 if n < min_n else (n - min_n) // clip_n + 1
        if opts.max_clips_per_file:
            count = min(count, opts.max_clips_per_file)
        stem = job.source.rsplit(".", 1)[0]
        clips = [
            (f"{stem}_{int(k * opts.clip_seconds):06d}", k * opts.clip_seconds)
            for k in range(count)
        ]
        if not clips:
            raise ValueError(f"audio shorter than {opts.min_seconds} s: {job.path}")
    for clip_id, start in clips:
        a0 = int(round(start * SAMPLE_RATE))
        seg = wave[a0 : a0 + clip_n]
        if seg.size < min_n:
            raise ValueError(
                f"clip {clip_id} at {start} s has {seg.size / SAMPLE_RATE:.2f} s of audio "
                f"(< {opts.min_seconds} s) in {job.path}"
            )
        frames, fps = read_video_window(job.path, start, opts.clip_seconds, 2 * opts.resolution)
        rec, entry = make_clip_record(
            clip_id, job.label, job.label_index, frames, len(frames), fps, seg, opts
        )
        entry["start"] = float(start)
        yield rec, entry


@dataclasses.dataclass
class Unit:
    """One work unit: up to --files_per_part consecutive jobs of one split, written as one part.

    The part's name is `<index>-<digest of the jobs>`: a function of the input only, so a rerun
    (or a runner retrying the unit) writes the same name and replaces, never duplicates; parts
    sort by index, so the record order is the discovery order whatever ran first.
    """

    split: str
    index: int
    jobs: list[SourceJob]

    @property
    def name(self) -> str:
        ident = [
            [j.key, j.source, j.label_index, j.clips, j.audio_path is not None] for j in self.jobs
        ]
        digest = hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:12]
        return f"{self.index:06d}-{digest}"


def plan_units(
    jobs: Sequence[SourceJob],
    files_per_part: int,
    committed: dict[str, list[dict]] | None = None,
) -> list[Unit]:
    """Split the jobs into units (per split, in discovery order, `files_per_part` each).

    `committed` ({split: sidecars}, `load_parts`) may hold parts that are not units of this plan
    (the input or --files_per_part changed since they were written): their jobs are left out of
    the plan, so they are never written twice; this repeats until every committed part is a
    planned unit or left out. Same input + same committed parts -> same plan.
    """
    n = max(1, int(files_per_part))
    committed = committed or {}

    def chunk(js: Sequence[SourceJob]) -> list[Unit]:
        units = []
        for s in sorted({j.split for j in js}):
            sj = [j for j in js if j.split == s]
            units += [Unit(s, k, sj[i : i + n]) for k, i in enumerate(range(0, len(sj), n))]
        return units

    excluded: set[str] = set()
    while True:
        units = chunk([j for j in jobs if j.key not in excluded])
        planned = {(u.split, u.name) for u in units}
        stale = {
            k
            for s, plist in committed.items()
            for p in plist
            if (s, p["name"]) not in planned
            for k in p["done"]
        }
        if stale <= excluded:
            return units
        excluded |= stale


def _error_row(job: SourceJob, exc: BaseException) -> dict:
    return {
        "source": job.source,
        "key": job.key,
        "error": f"{type(exc).__name__}: {exc}".strip()[:500],
        "time": time.time(),
    }


def prepare_unit(unit: Unit, out_dir: str | os.PathLike, opts: PrepOptions, features=None) -> dict:
    """Process the jobs of one unit and commit its part (also when every job failed: the part is
    then empty and its sidecar keeps the errors). A job that raises is skipped and reported.

    Returns {'name', 'split', 'clips', 'done', 'jobs', 'errors': [{source, key, error, time}]}.
    """
    features = features if features is not None else features_for(opts)
    writer = PartWriter(out_dir, unit.split, unit.name)
    entries, done, errors = [], [], []
    try:
        for job in unit.jobs:
            try:
                rows = [
                    (serialize_record(features, rec), entry)
                    for rec, entry in process_source(job, opts)
                ]
            except Exception as e:  # noqa: BLE001 - a bad file is logged and skipped
                errors.append(_error_row(job, e))
                log.debug("failed %s\n%s", job.source, traceback.format_exc())
                continue
            for data, entry in rows:
                writer.write(data)
                entries.append({**entry, "source": job.source, "key": job.key})
            done.append(job.key)
        writer.commit(
            {
                "clips": entries,
                "done": done,
                "errors": errors,
                "split": unit.split,
                "unit": unit.index,
                "created": time.time(),
            }
        )
    except BaseException:
        writer.abort()
        raise
    return {
        "name": unit.name,
        "split": unit.split,
        "clips": len(entries),
        "done": len(done),
        "jobs": len(unit.jobs),
        "errors": errors,
    }


def finish(out_dir: str | os.PathLike, opts: PrepOptions, problems: Sequence[dict] = ()) -> dict:
    """The single commit step after every unit: (re)build the TFDS folder and manifest from the
    committed parts (`finalize`) and OUT/errors.jsonl from `problems` (found while listing the
    input) + the errors kept in the parts' sidecars, in part order. Returns {split: records}."""
    out_dir = Path(out_dir)
    counts = finalize(out_dir, features_for(opts))
    rows = [dict(p) for p in problems]
    for split, plist in sorted(load_parts(out_dir, cleanup=False).items()):
        for p in plist:
            rows += [{**e, "split": split, "part": p["name"]} for e in p.get("errors", [])]
    write_text(
        out_dir / "errors.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    )
    return counts
