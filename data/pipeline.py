"""The grain input pipeline over a prepared (or curated) dataset.

    ds = make_dataset(data_dir, 'train', batch_size=8, seed=0,
                      process_index=jax.process_index(), process_count=jax.process_count())
    it = iter(ds)                       # a grain DatasetIterator
    batch = next(it)                    # {'frames': uint8 [B, S_f, H, W, 3],
                                        #  'mel': float32 [B, S, 128, 204],
                                        #  'label_index': int32 [B] (+ 'latents' float32)}
    state = it.get_state()              # a small JSON-able dict: save it with the train state
    it.set_state(state)                 # ... and restore it on resume: same next batches

Order: the records of the split (read with `tfds` as a data source) are shuffled globally with
`seed` (grain's index shuffle, reseeded each epoch), repeated `num_epochs` times (None: forever),
and the resulting global stream is dealt out round-robin to the hosts (element g goes to host
g % process_count), so hosts never overlap and, over the stream, leave no gaps. With a finite
stream the last (len % process_count) elements are dropped so every host yields the same number
of batches (hosts must step together). `batch_size` is per host: the global batch is
batch_size * process_count. SpecAugment is not applied here: the trainer applies it on device.
Media decoding happened once, in data.prepare: the pipeline only deserialises arrays.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data import DATASET_NAME
from data.prepare import load_classes, read_jsonl, tfds_dir

DEFAULT_KEYS = ("frames", "mel", "label_index", "latents")


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


class _Select:
    """Record -> the training arrays (mel and latents as float32, label_index int32)."""

    def __init__(self, keys: Sequence[str]):
        self.keys = tuple(keys)

    def __call__(self, rec: dict) -> dict:
        out = {}
        for k in self.keys:
            if k not in rec:
                continue
            v = rec[k]
            if k in ("mel", "latents", "audio"):
                v = np.asarray(v, np.float32)
            elif k == "label_index":
                v = np.int32(v)
            elif k in ("clip_id", "label"):
                v = v.decode() if isinstance(v, bytes) else str(v)
            out[k] = v
        return out


def make_map_dataset(
    data_dir: str | os.PathLike,
    split: str,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    drop_remainder: bool = True,
    keys: Sequence[str] = DEFAULT_KEYS,
):
    """The batched grain `MapDataset` of `make_dataset` (random access: ds[step] is the batch
    of that step on this host)."""
    import grain

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index ({process_index}) < process_count ({process_count})"
        )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None, got {num_epochs}")
    source = data_source(data_dir, split)
    if len(source) == 0:
        raise ValueError(f"split {split!r} of {data_dir} is empty")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=int(seed) % 2**32)
    ds = ds.repeat(num_epochs)
    if process_count > 1:
        if num_epochs is not None:
            total = len(ds) - len(ds) % process_count
            ds = ds[:total]
        ds = ds[process_index::process_count]
    ds = ds.map(_Select(keys))
    return ds.batch(batch_size, drop_remainder=drop_remainder)


def make_dataset(
    data_dir: str | os.PathLike,
    split: str,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    drop_remainder: bool = True,
    keys: Sequence[str] = DEFAULT_KEYS,
    num_threads: int = 8,
    prefetch_buffer_size: int = 64,
):
    """A grain `IterDataset` of per-host batches (see the module docstring).

    Args:
      data_dir: a data.prepare / data.curate / data.synthetic output folder.
      split: 'train', 'test', ...
      batch_size: examples per batch on this host.
      seed: shuffle seed (same on every host).
      shuffle: False keeps the stored order (evaluation).
      num_epochs: None repeats forever.
      process_index, process_count: this host and the number of hosts (jax.process_index(),
        jax.process_count()).
      drop_remainder: drop a last partial batch (finite streams only).
      keys: record keys to yield (missing ones, e.g. 'latents', are skipped); 'audio',
        'clip_id' and 'label' can be added for debugging.
      num_threads, prefetch_buffer_size: grain read threads and buffered elements per host.
    Returns:
      grain IterDataset; `iter()` gives a DatasetIterator with `get_state()` / `set_state()`.
    """
    import grain

    ds = make_map_dataset(
        data_dir,
        split,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        process_index=process_index,
        process_count=process_count,
        drop_remainder=drop_remainder,
        keys=keys,
    )
    return ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
