"""Prepare a TFDS-format audio-visual dataset for training the CIM (spec `maestro.md`,
"Training the CIM"): one record per 10 s clip with the frames the method needs, the ImageBind
mel input of its S = 5 two-second clips, and the 16 kHz audio.

    python -m maestro_jax.data.prepare --input DIR --labels FILE_OR_NONE \
        --layout vggsound|landscape|frames_wav --out OUT [--resolution 512] [--workers N] \
        [--frames_rule default|release] [--split NAME] [--drop_audio]

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

Parallel over work units of --files_per_part source files (spawned processes, `--workers`);
each unit is committed atomically as one array_record part + a JSON sidecar, so a killed run
resumes where it stopped (jobs already in a committed part are skipped). Unreadable files are
logged to OUT/errors.jsonl and skipped, never fatal. At the end the TFDS folder
OUT/maestro_av/1.0.0 is (re)built from the parts: hard links named as TFDS names shards, plus
dataset_info.json and features.json written by `tfds.folder_dataset.write_metadata` (no
TensorFlow needed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maestro_jax.data import DATASET_NAME, DATASET_VERSION

log = logging.getLogger("maestro_jax.data.prepare")

SAMPLE_RATE = 16000
CLIP_SECONDS = 10.0
NUM_SEGMENTS = 5  # S: 2 s ImageBind clips per 10 s training clip
FRAME_RULES = ("default", "release")
LAYOUTS = ("vggsound", "landscape", "frames_wav")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".mpg", ".mpeg")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")
SPLIT_DIRS = ("train", "test", "val", "validation")
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
# Frame selection and resizing
# ==================================================================================================


def num_frames_for_rule(rule: str = "default", num_segments: int = NUM_SEGMENTS) -> int:
    """S_f, the frames per record: S for 'default', 2 S for 'release'."""
    if rule not in FRAME_RULES:
        raise ValueError(f"unknown frames rule {rule!r}; use one of {FRAME_RULES}")
    return num_segments if rule == "default" else 2 * num_segments


def frame_indices(
    num_frames: int, rule: str = "default", num_segments: int = NUM_SEGMENTS
) -> list[int]:
    """Indices of the frames a training record keeps out of a clip's F decoded frames.

    'default' (spec, "Training the CIM"): the first frame, then every k = ceil(F / (S - 1))
      frames: i * k for i < S. The last one, (S - 1) k, can pass F - 1 (F = 250, S = 5 gives
      k = 63 and 252); it is clamped to the last frame, F - 1.
    'release' (the release's `sound_dataset.py`): stride = F // S; per segment [a, b) =
      [i stride, (i + 1) stride) with h = (a + b) // 2 the frames (a + h) // 2 and (h + b) // 2,
      i.e. the 1/4 and 3/4 points of each 2 s segment: 2 S frames. (The release counts F as the
      folder's files minus two; here F is the number of frames.)
    """
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"a clip needs at least one frame, got num_frames={num_frames}")
    if int(num_segments) != num_segments or num_segments < 1:
        raise ValueError(f"num_segments must be a positive integer, got {num_segments}")
    f, s = int(num_frames), int(num_segments)
    if rule == "default":
        step = math.ceil(f / max(s - 1, 1))
        return [min(i * step, f - 1) for i in range(s)]
    if rule == "release":
        stride = f // s
        out = []
        for i in range(s):
            a, b = i * stride, (i + 1) * stride
            h = (a + b) // 2
            out += [(a + h) // 2, (h + b) // 2]
        return [min(x, f - 1) for x in out]
    raise ValueError(f"unknown frames rule {rule!r}; use one of {FRAME_RULES}")


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's antialiased bilinear resampling along one axis as taps: (indices [out, K] int,
    weights [out, K] float32). Output pixel i is centred at (i + 0.5) * scale in input pixels
    (scale = in / out); the triangle filter is widened by max(scale, 1) when shrinking, and
    the weights are renormalised to sum to one (also at the borders)."""
    scale = in_size / out_size
    fscale = max(scale, 1.0)
    support = fscale  # triangle support 1, widened
    centers = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    lo = np.maximum(np.floor(centers - support + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.floor(centers + support + 0.5).astype(np.int64), in_size)
    k = int((hi - lo).max())
    idx = lo[:, None] + np.arange(k)[None, :]
    w = np.maximum(0.0, 1.0 - np.abs((idx - centers[:, None] + 0.5) / fscale))
    w = np.where(idx < hi[:, None], w, 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return np.minimum(idx, in_size - 1), w.astype(np.float32)


def _tap_matrix(in_size: int, out_size: int, start: int = 0, count: int | None = None):
    """The [count, in_size] sparse (CSR) resampling matrix of output pixels
    [start, start + count) (duplicate border taps are summed, as wanted)."""
    import scipy.sparse

    idx, wt = _bilinear_taps(in_size, out_size)
    count = out_size - start if count is None else count
    idx, wt = idx[start : start + count], wt[start : start + count]
    n, k = idx.shape
    return scipy.sparse.csr_matrix(
        (wt.ravel(), (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, in_size)
    )


def resize_bilinear(
    frames: np.ndarray,
    height: int,
    width: int,
    crop: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Antialiased bilinear resize of [T, H, W, C] -> float32 [T, height, width, C]
    (PIL / torchvision-on-PIL 'bilinear' up to PIL's intermediate uint8 rounding; the same
    kernel as `jax.image.resize(..., 'bilinear', antialias=True)`, to float32 rounding).
    Separable sparse matrix products per frame (~45 ms for a 512 x 910 frame on one CPU core;
    the dense jax version takes ~75 ms). `crop` = (top, left, h, w) computes only that window
    of the resized picture."""
    x = np.asarray(frames)
    t, h, w, c = x.shape
    top, left, oh, ow = crop if crop is not None else (0, 0, height, width)
    mh = _tap_matrix(h, height, top, oh)
    mw = _tap_matrix(w, width, left, ow)
    out = np.empty((t, oh, ow, c), np.float32)
    for i in range(t):
        y = mh @ x[i].reshape(h, w * c).astype(np.float32)  # [oh, w * c]
        y = np.ascontiguousarray(y.reshape(oh, w, c).transpose(1, 0, 2)).reshape(w, oh * c)
        out[i] = (mw @ y).reshape(ow, oh, c).transpose(1, 0, 2)
    return out


def resize_center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, size, size, 3]: short side to `size`, center crop.

    torchvision `Resize(size)` + `CenterCrop(size)` geometry (long side int(size * long / short),
    crop offsets int(round((L - size) / 2))) with `resize_bilinear` (antialiased bilinear, the
    filter torchvision's Resize(BILINEAR) applies to the release's PIL frames), rounded to uint8.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"resize_center_crop wants uint8 [T, H, W, 3], got {frames.shape}")
    t, h, w, _ = frames.shape
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    top = int(round((nh - size) / 2.0))
    left = int(round((nw - size) / 2.0))
    if (nh, nw) != (h, w):
        x = resize_bilinear(frames, nh, nw, crop=(top, left, size, size))
        return np.clip(np.round(x), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frames[:, top : top + size, left : left + size])


def read_video_window(
    path: str | os.PathLike, start: float, duration: float, max_short_side: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode the frames of [start, start + duration) seconds of a video with imageio-ffmpeg.

    Frames whose short side exceeds `max_short_side` are shrunk by ffmpeg's area filter while
    decoding (bounding memory for HD sources). Returns (uint8 [F, H, W, 3], fps).
    """
    import warnings

    import imageio_ffmpeg

    out_params = ["-t", f"{duration:.6f}"]
    if max_short_side:
        m = int(max_short_side)
        out_params += [
            "-vf",
            f"scale='if(lte(iw,ih),min(iw,{m}),-2)':'if(lte(iw,ih),-2,min(ih,{m}))':flags=area",
        ]
    in_params = ["-ss", f"{start:.6f}"] if start > 0 else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "frame size differs from the source size"
        gen = imageio_ffmpeg.read_frames(
            str(path), input_params=in_params, output_params=out_params
        )
        try:
            meta = next(gen)
            w, h = meta["size"]
            frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
        finally:
            gen.close()
    if not frames:
        raise ValueError(f"no video frames in [{start}, {start + duration}) s of {path}")
    return np.stack(frames), float(meta["fps"])


def flow_frame_indices(num_frames: int, fps: float, rate: float = 2.0) -> list[int]:
    """Frames at `rate` fps (t = k / rate): round(k fps / rate) while < F."""
    if fps <= 0:
        return [0]
    out, k = [], 0
    while True:
        i = int(round(k * fps / rate))
        if i >= num_frames:
            return out or [0]
        out.append(i)
        k += 1


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


def make_features(
    num_frames: int,
    resolution: int,
    num_segments: int = NUM_SEGMENTS,
    audio_samples: int | None = SAMPLE_RATE * 10,
    latent_shape: Sequence[int] | None = None,
):
    """The TFDS FeaturesDict of one record (the EXAMPLE SCHEMA shared with the trainer).

    clip_id, label: Text; label_index: int32 scalar; frames: uint8 [S_f, H, W, 3];
    mel: float16 [S, 128, 204] (ImageBind input); audio: float16 [N] 16 kHz mono (omitted when
    `audio_samples` is None); latents: float16 [S_f, h, w, 4] (only when `latent_shape` is given).
    """
    import tensorflow_datasets as tfds

    from maestro_jax.audio import NUM_MEL_BINS, TARGET_LENGTH

    feats: dict[str, Any] = {
        "clip_id": tfds.features.Text(),
        "label": tfds.features.Text(),
        "label_index": tfds.features.Tensor(shape=(), dtype=np.int32),
        "frames": tfds.features.Tensor(
            shape=(num_frames, resolution, resolution, 3), dtype=np.uint8
        ),
        "mel": tfds.features.Tensor(
            shape=(num_segments, NUM_MEL_BINS, TARGET_LENGTH), dtype=np.float16
        ),
    }
    if audio_samples is not None:
        feats["audio"] = tfds.features.Tensor(shape=(int(audio_samples),), dtype=np.float16)
    if latent_shape is not None:
        feats["latents"] = tfds.features.Tensor(shape=tuple(latent_shape), dtype=np.float16)
    return tfds.features.FeaturesDict(feats)


def features_for(opts: PrepOptions):
    return make_features(
        opts.num_frames,
        opts.resolution,
        opts.num_segments,
        opts.clip_samples if opts.keep_audio else None,
    )


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically."""
    _atomic_write_text(Path(path), json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file ([] when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    rows = list(rows)
    if rows:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True) + "\n")


class PartWriter:
    """Writes one work unit: OUT/parts/<split>/<name>.array_record + <name>.json, atomically.

    Records go to a temporary file; `commit(sidecar)` renames it into place and then writes the
    sidecar (the part counts only once its sidecar exists). `abort()` removes the temp file.
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, name: str):
        from array_record.python import array_record_module as arm

        self.dir = Path(out_dir) / "parts" / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.path = self.dir / f"{name}.array_record"
        self.tmp = self.dir / f".{name}.array_record.tmp"
        # group_size:1 = one record per chunk: cheap random access, what TFDS writes.
        self._writer = arm.ArrayRecordWriter(str(self.tmp), "group_size:1")
        self.count = 0

    def write(self, record: bytes) -> int:
        self._writer.write(record)
        self.count += 1
        return self.count - 1

    def commit(self, sidecar: dict) -> None:
        self._writer.close()
        os.replace(self.tmp, self.path)
        write_json(self.dir / f"{self.name}.json", {**sidecar, "num_records": self.count})

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


def load_parts(out_dir: str | os.PathLike, cleanup: bool = True) -> dict[str, list[dict]]:
    """{split: [sidecar, ...]} of the committed parts, sorted by part name. With `cleanup`,
    leftovers of interrupted writes (temp files, records without a sidecar) are deleted."""
    root = Path(out_dir) / "parts"
    out: dict[str, list[dict]] = {}
    if not root.is_dir():
        return out
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        parts = []
        for rec in sorted(split_dir.glob("*.array_record")):
            side = rec.with_suffix(".json")
            if not side.exists():
                if cleanup:
                    log.warning("removing uncommitted part %s", rec)
                    rec.unlink()
                continue
            with open(side) as f:
                meta = json.load(f)
            meta["name"] = rec.stem
            parts.append(meta)
        if cleanup:
            for tmp in split_dir.glob(".*.tmp"):
                tmp.unlink()
        if parts:
            out[split_dir.name] = parts
    return out


def tfds_dir(out_dir: str | os.PathLike) -> Path:
    """OUT/maestro_av/1.0.0, the folder `tfds.builder_from_directory` reads."""
    return Path(out_dir) / DATASET_NAME / DATASET_VERSION


def finalize(out_dir: str | os.PathLike, features, description: str = "") -> dict[str, int]:
    """(Re)build OUT/maestro_av/1.0.0 and OUT/manifest.jsonl from the committed parts.

    Shard i of split s is a hard link (a copy where links fail) of the i-th part by name,
    named `maestro_av-<s>.array_record-<i:05d>-of-<n:05d>`; metadata by
    `tfds.folder_dataset.write_metadata` with the known shard lengths. The new folder is built
    next to the old one and swapped in. Manifest rows gain `shard` (file name) and `index`
    (position in the split, the `tfds.data_source` index). Returns {split: num_records}.
    """
    import tensorflow_datasets as tfds

    out_dir = Path(out_dir).absolute()
    parts = load_parts(out_dir)
    root = out_dir / DATASET_NAME
    root.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    build = tmp_root / DATASET_VERSION
    build.mkdir()
    manifest: list[dict] = []
    split_infos = []
    counts: dict[str, int] = {}
    for split, plist in sorted(parts.items()):
        plist = [p for p in plist if p["num_records"] > 0]
        if not plist:
            continue
        n = len(plist)
        index = 0
        for i, p in enumerate(plist):
            shard = f"{DATASET_NAME}-{split}.array_record-{i:05d}-of-{n:05d}"
            src = out_dir / "parts" / split / f"{p['name']}.array_record"
            try:
                os.link(src, build / shard)
            except OSError:
                shutil.copyfile(src, build / shard)
            for row, entry in enumerate(p["clips"]):
                manifest.append(
                    {**entry, "split": split, "part": p["name"], "row": row, "shard": shard}
                    | {"index": index}
                )
                index += 1
        lengths = [p["num_records"] for p in plist]
        nbytes = sum(
            (out_dir / "parts" / split / f"{p['name']}.array_record").stat().st_size for p in plist
        )
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=nbytes))
        counts[split] = sum(lengths)
    if split_infos:
        tfds.folder_dataset.write_metadata(
            data_dir=build,
            features=features,
            split_infos=split_infos,
            filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            check_data=False,
            description=description or "Maestro CIM training clips (data.prepare)",
        )
    final = root / DATASET_VERSION
    old = root / f".old-{os.getpid()}-{time.time_ns()}"
    if final.exists():
        final.rename(old)
    build.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp_root, ignore_errors=True)
    _atomic_write_text(
        out_dir / "manifest.jsonl", "".join(json.dumps(m, sort_keys=True) + "\n" for m in manifest)
    )
    return counts


def load_classes(data_dir: str | os.PathLike) -> list[str]:
    """The class names of a prepared dataset (label_index order)."""
    path = Path(data_dir) / "classes.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a data.prepare output folder?")
    with open(path) as f:
        return list(json.load(f))


def load_features(data_dir: str | os.PathLike):
    """The FeaturesDict stored with a prepared dataset (from its features.json)."""
    import tensorflow_datasets as tfds

    d = tfds_dir(data_dir)
    if not (d / "features.json").exists():
        raise FileNotFoundError(f"no TFDS metadata at {d}: run data.prepare first")
    return tfds.builder_from_directory(str(d)).info.features


# ==================================================================================================
# Discovery: which clips come from which files
# ==================================================================================================


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
    from maestro_jax.data.curate import flow_magnitude

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
class PartTask:
    out_dir: str
    split: str
    name: str
    jobs: list[SourceJob]
    opts: PrepOptions


def run_part(task: PartTask) -> dict:
    """Process the jobs of one work unit and commit its part. Returns
    {'name', 'split', 'clips', 'done', 'errors'} (errors: [{source, key, error}])."""
    features = features_for(task.opts)
    writer = PartWriter(task.out_dir, task.split, task.name)
    entries, done, errors = [], [], []
    try:
        for job in task.jobs:
            rows = []
            try:
                for rec, entry in process_source(job, task.opts):
                    rows.append((features.serialize_example(rec), entry))
            except Exception as e:  # noqa: BLE001 - a bad file is logged and skipped
                errors.append(
                    {
                        "source": job.source,
                        "key": job.key,
                        "error": f"{type(e).__name__}: {e}".strip()[:500],
                    }
                )
                log.debug("failed %s\n%s", job.source, traceback.format_exc())
                continue
            for data, entry in rows:
                writer.write(data)
                entries.append({**entry, "source": job.source, "key": job.key})
            done.append(job.key)
        if done:
            writer.commit(
                {"clips": entries, "done": done, "split": task.split, "created": time.time()}
            )
        else:
            writer.abort()
    except BaseException:
        writer.abort()
        raise
    return {
        "name": task.name,
        "split": task.split,
        "clips": len(entries),
        "done": len(done),
        "jobs": len(task.jobs),
        "errors": errors,
    }


def _worker_init() -> None:
    # Workers only need host CPU; keep XLA from grabbing an accelerator or many threads each.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    logging.basicConfig(level=logging.WARNING)


# ==================================================================================================
# Driver
# ==================================================================================================


def _check_config(out_dir: Path, opts: PrepOptions, classes: list[str], layout: str) -> None:
    cfg_path, cls_path = out_dir / "prep_config.json", out_dir / "classes.json"
    cfg = {**dataclasses.asdict(opts), "layout": layout, "num_frames": opts.num_frames}
    if cfg_path.exists():
        with open(cfg_path) as f:
            old = json.load(f)
        diff = {k: (old.get(k), cfg[k]) for k in FORMAT_FIELDS if old.get(k) != cfg[k]}
        if diff:
            raise ValueError(
                f"{out_dir} was prepared with other options {diff} (old, new): use the same "
                "options to resume, or a new --out folder"
            )
    if cls_path.exists():
        old_classes = load_classes(out_dir)
        if old_classes != classes:
            raise ValueError(
                f"{out_dir} was prepared with another class list ({len(old_classes)} classes vs "
                f"{len(classes)} now): label indices would not match. Use the same --labels."
            )
    write_json(cfg_path, cfg)
    write_json(cls_path, classes)


def prepare(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str,
    labels: str | os.PathLike | None = None,
    opts: PrepOptions | None = None,
    *,
    workers: int = 1,
    files_per_part: int = 32,
    split: str | None = None,
    progress: bool = True,
) -> dict:
    """Prepare (or resume preparing) a dataset; see the module docstring. Returns a summary:
    {'jobs', 'skipped', 'processed', 'clips_written', 'errors', 'splits': {split: records}}."""
    opts = opts or PrepOptions()
    opts.validate()
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, classes, problems = discover(input_dir, layout, labels, split)
    _check_config(out_dir, opts, classes, layout)
    done = {k for plist in load_parts(out_dir).values() for p in plist for k in p["done"]}
    todo = [j for j in jobs if j.key not in done]
    stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    tasks: list[PartTask] = []
    for s in sorted({j.split for j in todo}):
        sj = [j for j in todo if j.split == s]
        for i in range(0, len(sj), max(1, files_per_part)):
            name = f"{stamp}-{len(tasks):05d}"
            tasks.append(PartTask(str(out_dir), s, name, sj[i : i + files_per_part], opts))
    errors = list(problems)
    append_jsonl(out_dir / "errors.jsonl", [{**p, "time": time.time()} for p in problems])
    clips_written = 0
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="file", desc="prepare", disable=not progress or None)

    def collect(res: dict) -> None:
        nonlocal clips_written
        clips_written += res["clips"]
        errors.extend(res["errors"])
        for e in res["errors"]:
            log.warning("skipped %s: %s", e["source"], e["error"])
        append_jsonl(out_dir / "errors.jsonl", [{**e, "time": time.time()} for e in res["errors"]])
        bar.update(res["jobs"])

    try:
        if workers <= 1:
            for t in tasks:
                collect(run_part(t))
        else:
            ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
            with concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=_worker_init
            ) as pool:
                futures = [pool.submit(run_part, t) for t in tasks]
                for fut in concurrent.futures.as_completed(futures):
                    collect(fut.result())
    finally:
        bar.close()
    counts = finalize(out_dir, features_for(opts))
    return {
        "jobs": len(jobs),
        "skipped": len(jobs) - len(todo),
        "processed": len(todo),
        "clips_written": clips_written,
        "errors": errors,
        "splits": counts,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m maestro_jax.data.prepare", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--input", required=True, help="source folder")
    p.add_argument(
        "--labels", default="none", help="VGGSound CSV, a class list file, or 'none' (folders)"
    )
    p.add_argument("--layout", required=True, choices=LAYOUTS)
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--workers", type=int, default=1, help="processes (<= 1: in this process)")
    p.add_argument("--frames_rule", choices=FRAME_RULES, default="default")
    p.add_argument("--clip_rule", choices=("git", "pypi015"), default="git")
    p.add_argument("--clip_seconds", type=float, default=CLIP_SECONDS)
    p.add_argument("--min_seconds", type=float, default=2.0)
    p.add_argument("--max_clips_per_file", type=int, default=None)
    p.add_argument("--files_per_part", type=int, default=32)
    p.add_argument("--flow_size", type=int, default=256, help="static-filter analysis size")
    p.add_argument("--split", default=None, help="override the split of every clip")
    p.add_argument("--drop_audio", action="store_true", help="do not store the 16 kHz audio")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    labels = None if args.labels.lower() in ("none", "") else args.labels
    if labels is not None and not Path(labels).is_file():
        p.error(f"--labels {labels} is not a file")
    opts = PrepOptions(
        resolution=args.resolution,
        frames_rule=args.frames_rule,
        clip_seconds=args.clip_seconds,
        clip_rule=args.clip_rule,
        keep_audio=not args.drop_audio,
        min_seconds=args.min_seconds,
        max_clips_per_file=args.max_clips_per_file,
        flow_size=args.flow_size,
    )
    try:
        summary = prepare(
            args.input,
            args.out,
            args.layout,
            labels,
            opts,
            workers=args.workers,
            files_per_part=args.files_per_part,
            split=args.split,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{args.out}: {summary['clips_written']} new clips from {summary['processed']} sources "
        f"({summary['skipped']} already done, {len(summary['errors'])} skipped with errors, "
        f"see errors.jsonl); records per split: {summary['splits']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
