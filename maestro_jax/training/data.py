"""The CIM trainer's data: the prepared dataset (or a synthetic one written for smoke runs),
this process's share of every global batch, and the held-out audio of the sample images."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from maestro_jax.sharding import batch_sharding

log = logging.getLogger("maestro_jax.train")


def batch_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, keys: Sequence[str]) -> dict:
    """Per-process numpy batch -> global arrays split over ('data', 'fsdp')."""
    out = {}
    for k in keys:
        if k in batch:
            x = np.asarray(batch[k])
            out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)
    return out


def process_block(mesh: Mesh, global_batch: int) -> int | None:
    """Which contiguous block of `global_batch // process_count` rows of the global batch this
    process's devices hold under `batch_sharding` (the rows `make_array_from_process_local_data`
    fills from this process's data), or None when they are not one aligned block."""
    pc = jax.process_count()
    per = global_batch // pc
    index_map = batch_sharding(mesh, 1).devices_indices_map((global_batch,))
    rows: set[int] = set()
    for dev, idx in index_map.items():
        if dev.process_index == jax.process_index():
            rows.update(range(global_batch)[idx[0]])
    lo = min(rows)
    if sorted(rows) != list(range(lo, lo + per)) or lo % per:
        return None
    return lo // per


def open_data(
    config: Any, workdir: Path, global_batch: int, mesh: Mesh | None = None
) -> tuple[Any, list[str], Path]:
    """(train iterator, class labels, data dir) for this process's share of the batch.

    Several processes: the global stream is cut into per-process batches of
    `global_batch // process_count` consecutive records and process p reads batch
    `step * process_count + block(p)`, where block(p) is the block of global-batch rows its
    devices hold; so processes read disjoint records, leave no gaps, and the assembled global
    batch is the one a single process with all the devices would see (same losses). A mesh
    whose processes do not hold aligned blocks falls back to the pipeline's round-robin split
    (disjoint too, but the rows are ordered differently)."""
    from maestro_jax.data import pipeline
    from maestro_jax.data.tfds_format import load_classes

    data_dir = config.data.dir
    if not data_dir:
        if not config.data.synthetic:
            raise ValueError(
                "data.dir is empty: give the prepared dataset folder (python -m maestro_jax.data.prepare ...) "
                "or set data.synthetic=True for a smoke run"
            )
        data_dir = workdir / "synthetic_data"
        ensure_synthetic(config, data_dir)
    data_dir = Path(data_dir)
    prep = data_dir / "prep_config.json"
    if prep.exists():
        rule = json.loads(prep.read_text()).get("frames_rule")
        if rule is not None and rule != config.frames.rule:
            raise ValueError(
                f"{data_dir} was prepared with frames_rule={rule!r} but frames.rule="
                f"{config.frames.rule!r}; set --config.frames.rule={rule} or prepare it again"
            )
    pc, pi = jax.process_count(), jax.process_index()
    if global_batch % pc:
        raise ValueError(f"global batch {global_batch} is not divisible by {pc} processes")
    feats = pipeline.dataset_info(data_dir)["features"]
    # The VAE latents cache of `python -m data.cache_latents` (on by default): used when it is
    # complete for this split and was made by this run's VAE ("" = a random VAE: never).
    vae = str(config.model.vae.params or "")
    use_cache = bool(config.data.use_latents) and bool(config.data.get("use_latent_cache", False))
    use_cache = use_cache and pipeline.use_latent_cache(data_dir, config.data.split, "auto", vae)
    if config.data.use_latents and (use_cache or "latents" in feats):
        keys = ("mel", "label_index", "latents")  # skip deserialising the frames
    else:
        keys = ("mel", "label_index", "frames")
    if use_cache:
        log.info("reading VAE latents from the cache in %s/latents", data_dir)
    kw = dict(
        batch_size=global_batch // pc,
        seed=int(config.seed),
        shuffle=bool(config.data.shuffle),
        num_epochs=None,
        drop_remainder=True,
        keys=keys,
        latents=use_cache,
        vae=vae,
    )
    block = process_block(mesh, global_batch) if pc > 1 and mesh is not None else None
    if block is None:
        if pc > 1:
            log.warning("processes hold no aligned batch blocks: round-robin data split")
        ds = pipeline.make_dataset(
            data_dir, config.data.split, process_index=pi, process_count=pc, **kw
        )
    else:
        import grain

        ds = pipeline.make_map_dataset(data_dir, config.data.split, **kw)[block::pc]
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=8, prefetch_buffer_size=64))
    return iter(ds), load_classes(data_dir), data_dir


def ensure_synthetic(config: Any, data_dir: Path) -> None:
    from maestro_jax.data import synthetic

    done = data_dir / ".complete"
    kind = config.data.get("synthetic_kind", "synthetic")
    if kind not in ("synthetic", "toyworld"):
        raise ValueError(f"data.synthetic_kind must be 'synthetic' or 'toyworld', got {kind!r}")
    if kind == "toyworld" and jax.process_index() == 0 and not done.exists():
        from maestro_jax.toy import batches as toy_batches

        toy_batches.write_cim_dataset(
            data_dir,
            num_clips=int(config.data.synthetic_clips),
            seed=int(config.seed),
            num_test=int(config.sample.num_clips),
            res=int(config.data.synthetic_resolution),
        )
        done.touch()
    elif jax.process_index() == 0 and not done.exists():
        synthetic.write_synthetic_dataset(
            data_dir,
            num_clips=int(config.data.synthetic_clips),
            resolution=int(config.data.synthetic_resolution),
            num_classes=int(config.data.synthetic_classes),
            seed=int(config.seed),
            frames_rule=config.frames.rule,
            num_test=int(config.sample.num_clips),  # held out: the sample images' audio
        )
        done.touch()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("synthetic_data")


def heldout_mel(config: Any, data_dir: Path) -> np.ndarray | None:
    """The first `sample.num_clips` clips of `sample.split` (or the training split): mel."""
    from maestro_jax.data import pipeline

    n = int(config.sample.num_clips)
    for split in (config.sample.split, config.data.split):
        try:
            ds = pipeline.make_dataset(
                data_dir,
                split,
                batch_size=n,
                seed=0,
                shuffle=False,
                num_epochs=1,
                process_index=0,
                process_count=1,
                drop_remainder=False,
                keys=("mel",),
            )
            return np.asarray(next(iter(ds))["mel"])
        except (FileNotFoundError, KeyError, ValueError, StopIteration):
            continue
    return None
