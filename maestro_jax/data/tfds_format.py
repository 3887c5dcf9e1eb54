"""The on-disk format of a prepared dataset: a TFDS dataset written without TensorFlow.

    OUT/parts/<split>/<part>.array_record + <part>.json   committed work units (the source of
                                                          truth; a part counts once its JSON
                                                          sidecar exists)
    OUT/maestro_av/1.0.0/   the TFDS folder: hard links of the parts named as TFDS names shards,
                            dataset_info.json and features.json (`tfds.data_source` reads it)
    OUT/manifest.jsonl      one line per record (clip_id, label, split, shard, index, ...)
    OUT/classes.json        label_index -> class name

`make_features` is the record schema shared by the preparation and the trainer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maestro_jax.data.frames import NUM_SEGMENTS
from maestro_jax.files import read_jsonl, write_json, write_text

log = logging.getLogger("maestro_jax.data")

DATASET_NAME = "maestro_av"
DATASET_VERSION = "1.0.0"
SAMPLE_RATE = 16000  # the stored audio's rate


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


def serialize_record(features, record: dict) -> bytes:
    """`features.serialize_example(record)` with the tf.train.Example's feature map in key order.

    Protobuf writes a map in an order that differs between processes, so the plain call gives
    the same record different bytes in different workers; this one gives the same bytes wherever
    it runs (what makes reruns and runners interchangeable), and readers parse both alike.
    """
    example = features._example_serializer.get_tf_example(features.encode_example(record))
    return example.SerializeToString(deterministic=True)


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
        # A temp name of its own per attempt: a runner may run the same unit twice at once.
        self.tmp = self.dir / f".{name}.{uuid.uuid4().hex[:12]}.array_record.tmp"
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
    write_text(
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


def data_source(data_dir: str | os.PathLike, split: str):
    """The TFDS array_record data source of one split (random access, decoded to numpy)."""
    import tensorflow_datasets as tfds

    d = tfds_dir(data_dir)
    if not (d / "dataset_info.json").exists():
        raise FileNotFoundError(
            f"no TFDS dataset at {d}: run `python -m data.prepare ... --out {data_dir}` "
            "(or data.synthetic.write_synthetic_dataset) first"
        )
    builder = tfds.builder_from_directory(str(d))
    if split not in builder.info.splits:
        raise ValueError(
            f"split {split!r} not in {data_dir}; it has {sorted(builder.info.splits.keys())}"
        )
    return builder.as_data_source(split)


def dataset_info(data_dir: str | os.PathLike) -> dict[str, Any]:
    """{'name', 'classes', 'splits': {split: num_records}, 'features': {key: (shape, dtype)}}."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(tfds_dir(data_dir)))
    feats = builder.info.features
    return {
        "name": DATASET_NAME,
        "classes": load_classes(data_dir),
        "splits": {k: v.num_examples for k, v in builder.info.splits.items()},
        "features": {
            k: (tuple(feats[k].shape), np.dtype(feats[k].np_dtype).name) for k in feats.keys()
        },
    }


def load_manifest(data_dir: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The manifest rows (optionally of one split), in data-source index order."""
    rows = read_jsonl(Path(data_dir) / "manifest.jsonl")
    if split is not None:
        rows = [r for r in rows if r["split"] == split]
    return sorted(rows, key=lambda r: (r["split"], r["index"]))
