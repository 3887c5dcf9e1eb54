"""Frozen-encoder cache: the VAE latents of every record's frames, computed once.

    python -m data.cache_latents --data DIR [--vae CKPT_DIR | --vae random-tiny] [--batch 8] \
        [--mode mean|sample] [--splits train,test] [--part_size N] [--dtype float32|float16] \
        [--frame_chunk N] [--seed 0] [--overwrite]

Training the CIM encodes each clip's frames with the frozen SD VAE at every step; with this
cache the trainer reads the latents instead and spends its time in the UNet. The pipeline
(`maestro_jax.maestro_jax.data.pipeline.make_dataset(..., latents='auto')`) joins the cache by record index and yields
`latents` float32 [B, S_f, h, w, 4], ALREADY multiplied by the VAE scale factor 0.18215 (the
diffusion model's space, what `maestro_jax.training` expects in `batch['latents']`).

Input conversion: uint8 frames -> x = frames / 127.5 - 1 in [-1, 1] (exactly the trainer's
`frames_to_latents`), then `maestro_jax.models.vae.encode_frames`. The cache computes in float32
(the trainer's in-step encoding runs in `compute_dtype`, bfloat16 by default).

Modes:
  mean    (default) the posterior mean: deterministic. LDM training draws a fresh posterior
          sample (mean + std * noise) at every step (`config.vae_sample_posterior`); caching the
          mean drops that noise. This is the usual speed trade-off: the SD VAE's posterior std
          is tiny next to the diffusion noise, and the UNet is frozen anyway.
  sample  one posterior sample per record, drawn once with key fold_in(key(seed), record index)
          (independent of the batching): the same sample every epoch, not a fresh one.

On-disk format (a side cache; the TFDS shards are not rewritten):

    DIR/latents/cache.json              {version, vae: {path, config_sha256, config}, mode, seed,
                                         scale_factor, dtype, part_size, input,
                                         splits: {split: {num_records, num_parts, shape,
                                                          clip_ids_sha256}}}
    DIR/latents/<split>/part-XXXXX.npy  [n, S_f, h, w, 4] latents of the records with data-source
                                         (= manifest `index`) i in [X * part_size, ...)

Each part is written to a temporary file and renamed into place, so a part either exists whole
or not at all; a killed run resumes by skipping the parts that exist. A run against an existing
cache made with another VAE, mode, seed, dtype or part size, or for a dataset whose records
changed (the split's ordered clip ids, `clip_ids_sha256`), stops with an error unless
`--overwrite` (which deletes the cache first).

Which VAE: a `convert.vae` folder (its `config.json` `vae` entry gives the architecture; the
default is the SD VAE) or `random-tiny` (`VAEConfig.tiny()` with `random_like` weights, seed 0:
tests). The cache records the folder's absolute path and the sha256 of its canonical
config.json (model config + conversion provenance, e.g. the source checkpoint); the pipeline
refuses a cache whose config hash differs from the VAE the trainer uses (a different path with
the same hash only warns: a moved or copied folder).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maestro_jax.files import read_jsonl, write_json

log = logging.getLogger("maestro_jax.data.latent_cache")

CACHE_DIR = "latents"
CACHE_VERSION = 1
MODES = ("mean", "sample")
DTYPES = ("float32", "float16")
SCALE_FACTOR = 0.18215  # = maestro_jax.models.vae.SCALE_FACTOR (not imported: keeps jax lazy)
INPUT_RULE = "uint8 frames / 127.5 - 1"
# Fields of cache.json that must match for a run to resume into an existing cache.
_RESUME_FIELDS = ("version", "mode", "seed", "scale_factor", "dtype", "part_size", "input")


class LatentCacheError(ValueError):
    """A latent cache that cannot be used (another VAE, another dataset, bad options)."""


# ==================================================================================================
# VAE identity
# ==================================================================================================


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tiny_vae_config_dict() -> dict:
    """The `random-tiny` VAE's config (what its identity hashes)."""
    from maestro_jax.models.vae import VAEConfig

    return {"model": "AutoencoderKL", "vae": VAEConfig.tiny().to_dict(), "source": "random-tiny"}


def vae_identity(vae: str | os.PathLike) -> dict:
    """{'path', 'config_sha256', 'config'} of a convert.vae folder or 'random-tiny'.

    The hash is over the canonical JSON of the folder's config.json (model config and
    conversion provenance); no weights are read."""
    if str(vae) == "random-tiny":
        cfg = tiny_vae_config_dict()
        return {"path": "random-tiny", "config_sha256": _sha256_json(cfg), "config": cfg}
    path = Path(vae).absolute()
    if not (path / "params").exists():
        raise FileNotFoundError(
            f"{path} is not a converted VAE folder (no params/): write one with "
            "`python -m convert.vae model.ckpt OUT`, or use 'random-tiny'"
        )
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    return {"path": str(path), "config_sha256": _sha256_json(cfg), "config": cfg}


def load_vae(vae: str | os.PathLike) -> tuple[Any, Any]:
    """(VAEConfig, params) of a convert.vae folder or 'random-tiny'."""
    from maestro_jax.models import vae as vae_lib

    if str(vae) == "random-tiny":
        from maestro_jax.nn.random_init import random_like

        cfg = vae_lib.VAEConfig.tiny()
        return cfg, random_like(vae_lib.init_shapes(cfg), seed=0)
    from maestro_jax.checkpoints import load_params

    params, meta = load_params(vae)
    kw = dict(meta.get("vae", {}))
    kw.pop("dtype", None)  # the cache computes in float32
    fields = {f.name for f in dataclasses.fields(vae_lib.VAEConfig)}
    unknown = sorted(set(kw) - fields)
    if unknown:
        raise ValueError(f"{vae}/config.json 'vae' has unknown VAEConfig fields {unknown}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
    cfg = vae_lib.VAEConfig(**kw) if kw else vae_lib.VAEConfig.sd()
    return cfg, params


# ==================================================================================================
# Cache layout and reading (no jax: the pipeline imports this)
# ==================================================================================================


def cache_dir(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / CACHE_DIR


def part_path(data_dir: str | os.PathLike, split: str, part: int) -> Path:
    return cache_dir(data_dir) / split / f"part-{part:05d}.npy"


def read_meta(data_dir: str | os.PathLike) -> dict | None:
    """cache.json of DIR/latents, or None when there is no cache."""
    p = cache_dir(data_dir) / "cache.json"
    if not p.exists():
        return None
    return json.loads(p.read_text())


def split_clip_ids(data_dir: str | os.PathLike, split: str) -> list[str]:
    """The split's clip ids in data-source (manifest `index`) order."""
    rows = [r for r in read_jsonl(Path(data_dir) / "manifest.jsonl") if r["split"] == split]
    rows.sort(key=lambda r: r["index"])
    if [r["index"] for r in rows] != list(range(len(rows))):
        raise ValueError(f"manifest of {data_dir} split {split!r}: indices are not 0..n-1")
    return [r["clip_id"] for r in rows]


def clip_ids_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def missing_parts(data_dir: str | os.PathLike, split: str, meta: dict) -> list[int]:
    info = meta["splits"][split]
    return [i for i in range(info["num_parts"]) if not part_path(data_dir, split, i).exists()]


def check_vae(meta: dict, vae: str | os.PathLike, where: str = "") -> None:
    """Raise LatentCacheError unless the cache was made with the VAE `vae` (folder or
    'random-tiny'); '' (the trainer's random-init VAE) never matches."""
    made = meta["vae"]
    if not str(vae):
        raise LatentCacheError(
            f"the latent cache {where} was made with the VAE {made['path']}, but the trainer uses "
            "a randomly initialised VAE (model.vae.params is empty): disable the cache "
            "(data.use_latent_cache=False / latents=False) or give model.vae.params"
        )
    want = vae_identity(vae)
    if want["config_sha256"] != made["config_sha256"]:
        raise LatentCacheError(
            f"the latent cache {where} was made with the VAE {made['path']} (config sha256 "
            f"{made['config_sha256'][:12]}), not with {want['path']} (config sha256 "
            f"{want['config_sha256'][:12]}): rebuild it with `python -m data.cache_latents "
            f"--data ... --vae {vae} --overwrite`, or disable it (data.use_latent_cache=False / "
            "latents=False)"
        )
    if want["path"] != made["path"]:
        log.warning(
            "latent cache %s: made with the VAE folder %s, used with %s (same config hash: "
            "assuming the same weights)",
            where,
            made["path"],
            want["path"],
        )


def cache_status(
    data_dir: str | os.PathLike, split: str, vae: str | os.PathLike | None = None
) -> tuple[str, str]:
    """('complete' | 'absent' | 'partial' | 'stale', why) of the cache of one split.

    'stale': the dataset's records changed since caching. With `vae` given, a cache made with
    another VAE raises LatentCacheError (also when partial)."""
    meta = read_meta(data_dir)
    if meta is None or split not in meta.get("splits", {}):
        return "absent", f"no latent cache for split {split!r} in {cache_dir(data_dir)}"
    where = f"{cache_dir(data_dir)} ({split})"
    if vae is not None:
        check_vae(meta, vae, where)
    info = meta["splits"][split]
    ids = split_clip_ids(data_dir, split)
    if len(ids) != info["num_records"] or clip_ids_hash(ids) != info["clip_ids_sha256"]:
        return "stale", (
            f"the latent cache {where} was made for other records (the dataset changed since): "
            f"rebuild it with `python -m data.cache_latents --data {data_dir} --overwrite ...`"
        )
    miss = missing_parts(data_dir, split, meta)
    if miss:
        return "partial", (
            f"the latent cache {where} is partial ({len(miss)} of {info['num_parts']} parts "
            f"missing): finish it with `python -m data.cache_latents --data {data_dir} ...`"
        )
    return "complete", ""


class LatentCache:
    """Random access to a complete cache of one split: cache[i] -> float32 [S_f, h, w, 4] of the
    record with data-source index i. Parts are memory-mapped lazily (thread-safe)."""

    def __init__(self, data_dir: str | os.PathLike, split: str):
        meta = read_meta(data_dir)
        if meta is None or split not in meta.get("splits", {}):
            raise FileNotFoundError(f"no latent cache for split {split!r} in {data_dir}")
        self.data_dir, self.split = Path(data_dir), split
        self.meta = meta
        self.info = meta["splits"][split]
        self.part_size = int(meta["part_size"])
        self.shape = tuple(self.info["shape"])
        self._parts: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self.info["num_records"])

    def _part(self, p: int) -> np.ndarray:
        arr = self._parts.get(p)
        if arr is None:
            with self._lock:
                arr = self._parts.get(p)
                if arr is None:
                    arr = np.load(part_path(self.data_dir, self.split, p), mmap_mode="r")
                    self._parts[p] = arr
        return arr

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"record {i} out of range [0, {len(self)})")
        p, r = divmod(i, self.part_size)
        return np.asarray(self._part(p)[r], np.float32)


# ==================================================================================================
# Computing the cache
# ==================================================================================================


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _make_encoder(cfg: Any, mode: str, seed: int, frame_chunk: int | None):
    """jit(params, uint8 frames [B, F, H, W, 3], record index int32 [B]) -> scaled latents."""
    import jax
    import jax.numpy as jnp

    from maestro_jax.models import vae as vae_lib

    vae = vae_lib.AutoencoderKL(cfg)

    def run(params, frames, index):
        x = frames.astype(jnp.float32) / 127.5 - 1.0  # the trainer's frames_to_latents
        if mode == "mean":
            return vae_lib.encode_frames(vae, params, x, frame_chunk=frame_chunk)
        b, f = x.shape[:2]
        enc = lambda xx: vae.apply({"params": params}, xx, method=vae_lib.AutoencoderKL.encode)
        moments = vae_lib._map_frames(enc, x.reshape(b * f, *x.shape[2:]), frame_chunk)
        moments = moments.reshape(b, f, *moments.shape[1:])
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(index)
        lat = jax.vmap(vae_lib.posterior_sample)(moments, keys)
        return lat * vae_lib.SCALE_FACTOR

    return jax.jit(run)


def _new_meta(ident: dict, mode: str, seed: int, dtype: str, part_size: int) -> dict:
    return {
        "version": CACHE_VERSION,
        "vae": ident,
        "mode": mode,
        "seed": int(seed) if mode == "sample" else 0,
        "scale_factor": SCALE_FACTOR,
        "dtype": dtype,
        "part_size": int(part_size),
        "input": INPUT_RULE,
        "splits": {},
    }


def cache_latents(
    data_dir: str | os.PathLike,
    vae: str | os.PathLike = "random-tiny",
    *,
    batch_size: int = 8,
    mode: str = "mean",
    splits: Sequence[str] | None = None,
    part_size: int | None = None,
    dtype: str = "float32",
    seed: int = 0,
    frame_chunk: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, dict[str, int]]:
    """Compute (or finish) DIR/latents. Returns {split: {'computed': parts, 'skipped': parts}}.

    Args:
      data_dir: a data.prepare / data.curate / data.synthetic output folder.
      vae: a `convert.vae` folder or 'random-tiny'.
      batch_size: records per jitted VAE call (the last batch of a part is zero-padded; with
        several local devices it is padded to a multiple of their number and split over them).
      mode: 'mean' (posterior mean) or 'sample' (one posterior draw per record, `seed`).
      splits: splits to cache (default: all of the dataset's).
      part_size: records per part file (the resume granularity); None: the existing cache's,
        else 256.
      dtype: storage dtype of the latents ('float32' or 'float16'); the pipeline yields float32.
      frame_chunk: encode this many frames at a time (bounds memory), None = a batch at once.
      overwrite: delete an existing cache made with other settings / for other records.
    """
    import jax
    import jax.numpy as jnp
    import tqdm

    from maestro_jax.data.tfds_format import data_source, dataset_info

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    data_dir = Path(data_dir).absolute()
    meta = read_meta(data_dir)
    if part_size is None:
        part_size = int(meta["part_size"]) if meta is not None else 256
    if batch_size < 1 or part_size < 1:
        raise ValueError(f"batch_size ({batch_size}) and part_size ({part_size}) must be >= 1")
    info = dataset_info(data_dir)
    if "frames" not in info["features"]:
        raise ValueError(f"the records of {data_dir} hold no frames")
    all_splits = sorted(info["splits"])
    splits = list(splits) if splits else all_splits
    unknown = [s for s in splits if s not in all_splits]
    if unknown:
        raise ValueError(f"splits {unknown} not in {data_dir}; it has {all_splits}")

    ident = vae_identity(vae)
    want = _new_meta(ident, mode, seed, dtype, part_size)
    root = cache_dir(data_dir)
    if meta is not None:
        diff = [k for k in _RESUME_FIELDS if meta.get(k) != want[k]]
        if meta["vae"]["config_sha256"] != ident["config_sha256"]:
            diff.append(f"vae ({meta['vae']['path']})")
        if diff and not overwrite:
            raise LatentCacheError(
                f"{root} was made with other settings ({', '.join(diff)} differ): pass "
                "--overwrite to replace it, or the same settings to finish it"
            )
        if diff:
            log.warning("replacing %s (%s differ)", root, ", ".join(diff))
            shutil.rmtree(root)
            meta = None
    if meta is None:
        meta = want
    meta["vae"] = ident  # a moved VAE folder with the same config: record where it is now

    cfg, params = load_vae(vae)
    # Data parallel over this host's devices: the batch is padded to a multiple of their number.
    devices = jax.local_devices()
    padded = -(-batch_size // len(devices)) * len(devices)
    if len(devices) > 1:
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        from maestro_jax.sharding import make_mesh

        mesh = make_mesh((len(devices),), ("data",), devices=devices)
        params = jax.device_put(params, NamedSharding(mesh, P()))
        in_sharding = NamedSharding(mesh, P("data"))
    else:
        params = jax.device_put(jax.tree.map(jnp.asarray, params))
        in_sharding = None
    encode = _make_encoder(cfg, mode, seed, frame_chunk)
    down = cfg.downsample_factor
    store = np.dtype(dtype)
    stats: dict[str, dict[str, int]] = {}

    for split in splits:
        ids = split_clip_ids(data_dir, split)
        source = data_source(data_dir, split)
        n = len(source)
        if n != len(ids):
            raise ValueError(f"{data_dir} split {split!r}: {n} records but {len(ids)} in manifest")
        s_f, h, w, _ = info["features"]["frames"][0]
        shape = [s_f, h // down, w // down, cfg.embed_dim]
        entry = {
            "num_records": n,
            "num_parts": -(-n // part_size),
            "shape": shape,
            "clip_ids_sha256": clip_ids_hash(ids),
        }
        old = meta["splits"].get(split)
        if old is not None and old != entry:
            if not overwrite:
                raise LatentCacheError(
                    f"the latent cache of split {split!r} in {root} was made for other records "
                    "(the dataset changed since): pass --overwrite to rebuild it"
                )
            shutil.rmtree(root / split, ignore_errors=True)
        meta["splits"][split] = entry
        write_json(root / "cache.json", meta)
        for tmp in (root / split).glob(".*.tmp") if (root / split).is_dir() else ():
            tmp.unlink()  # leftovers of a killed run

        todo = missing_parts(data_dir, split, meta)
        stats[split] = {"computed": len(todo), "skipped": entry["num_parts"] - len(todo)}
        if not todo:
            log.info("split %s: all %d parts cached", split, entry["num_parts"])
            continue

        def read_batch(lo: int, hi: int, source=source, ids=ids, split=split):
            frames = np.zeros((padded, *info["features"]["frames"][0]), np.uint8)
            for j, i in enumerate(range(lo, hi)):
                rec = source[i]
                cid = rec["clip_id"]
                cid = cid.decode() if isinstance(cid, bytes) else str(cid)
                if cid != ids[i]:
                    raise ValueError(
                        f"{split} record {i} is {cid!r} but the manifest says {ids[i]!r}"
                    )
                frames[j] = rec["frames"]
            return frames

        batches = []
        for p in todo:
            lo, hi = p * part_size, min(n, (p + 1) * part_size)
            batches += [(p, b, min(b + batch_size, hi)) for b in range(lo, hi, batch_size)]
        bar = tqdm.tqdm(
            total=sum(b1 - b0 for _, b0, b1 in batches),
            desc=f"latents {split}",
            unit="clip",
            disable=not progress,
        )
        buf: list[np.ndarray] = []
        # One reader thread deserialises the next batch while the device encodes this one.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            fut = pool.submit(read_batch, *batches[0][1:])
            for k, (p, b0, b1) in enumerate(batches):
                frames = fut.result()
                if k + 1 < len(batches):
                    fut = pool.submit(read_batch, *batches[k + 1][1:])
                index = np.arange(b0, b0 + padded, dtype=np.int32)
                if in_sharding is not None:
                    frames = jax.device_put(frames, in_sharding)
                    index = jax.device_put(index, in_sharding)
                lat = np.asarray(encode(params, frames, index))[: b1 - b0]
                buf.append(lat.astype(store))
                bar.update(b1 - b0)
                if b1 == min(n, (p + 1) * part_size):  # the part's last batch
                    _atomic_save_npy(part_path(data_dir, split, p), np.concatenate(buf))
                    buf = []
        bar.close()
    return stats


# ==================================================================================================
# CLI
# ==================================================================================================
