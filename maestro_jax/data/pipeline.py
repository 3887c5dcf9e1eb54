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

VAE latent cache (`python -m data.cache_latents`, DIR/latents/): with `latents='auto'` (the
default) a complete cache of the split is joined to the records by data-source index and
yielded as `latents` float32 [B, S_f, h, w, 4] (scaled by 0.18215) when 'latents' is in `keys`;
a partial cache, or one made for records the dataset no longer holds, is ignored with a
warning (the trainer then encodes `frames`); `latents=True` makes those an error and yields
`latents` even when `keys` omits it; `latents=False` never reads the cache. With `vae` (the
trainer's `model.vae.params` folder) a cache made with another VAE is refused
(`data.cache_latents.LatentCacheError`, also in 'auto' mode); `vae=None` skips that check.
Latents stored in the records themselves (a `latents` feature) are used as they are.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

# data_source, dataset_info and load_manifest read the format; imported here for the callers
# that open a dataset through the pipeline module
from maestro_jax.data.tfds_format import (  # noqa: F401
    data_source,
    dataset_info,
    load_manifest,
)

log = logging.getLogger("maestro_jax.data.pipeline")

DEFAULT_KEYS = ("frames", "mel", "label_index", "latents")
LATENT_MODES = (True, False, "auto")


def use_latent_cache(
    data_dir: str | os.PathLike,
    split: str,
    latents: bool | str = "auto",
    vae: str | os.PathLike | None = None,
) -> bool:
    """Whether `make_dataset(data_dir, split, latents=latents, vae=vae)` joins the VAE latent
    cache (see the module docstring). Raises `LatentCacheError` for a cache of another VAE (when
    `vae` is given) and, with latents=True, for a missing, partial or stale cache."""
    from maestro_jax.data import latent_cache as cl

    if latents not in LATENT_MODES:
        raise ValueError(f"latents must be True, False or 'auto', got {latents!r}")
    if latents is False:
        return False
    status, why = cl.cache_status(data_dir, split, vae)
    if status == "complete":
        return True
    if latents is True:
        raise cl.LatentCacheError(f"latents=True but {why}")
    if status != "absent":
        log.warning("%s; ignoring it (the trainer will encode frames)", why)
    return False


class _WithLatents:
    """A data source whose records gain `latents` from the split's LatentCache (same index)."""

    def __init__(self, source: Any, cache: Any):
        if len(source) != len(cache):
            raise ValueError(f"{len(source)} records but {len(cache)} cached latents")
        self.source, self.cache = source, cache

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        return {**self.source[i], "latents": self.cache[i]}


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
    latents: bool | str = "auto",
    vae: str | os.PathLike | None = None,
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
    if use_latent_cache(data_dir, split, latents, vae):
        from maestro_jax.data.latent_cache import LatentCache

        source = _WithLatents(source, LatentCache(data_dir, split))
        if latents is True and "latents" not in keys:
            keys = (*keys, "latents")
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
    latents: bool | str = "auto",
    vae: str | os.PathLike | None = None,
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
      latents: True | False | 'auto': join the VAE latent cache of `data.cache_latents`
        (module docstring; 'auto' = when a complete one exists).
      vae: the VAE the consumer uses (a convert.vae folder, 'random-tiny', or '' for a random
        one): a cache made with another VAE raises LatentCacheError. None: no check.
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
        latents=latents,
        vae=vae,
    )
    return ds.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
