"""Cache the VAE latents of a prepared dataset's frames, so the trainer reads latents instead of
encoding frames every step (layout, resuming and checks: `maestro_jax.data.latent_cache`).

    python -m data.cache_latents --data DIR --vae CKPT_DIR|random-tiny [--batch 8] \
        [--mode mean|sample] [--splits train,test] [--dtype float32|float16]
"""

from __future__ import annotations

import logging
from pathlib import Path

from absl import flags

from maestro_jax import cli
from maestro_jax.data.latent_cache import DTYPES, MODES, LatentCacheError, cache_latents

_DATA = flags.DEFINE_string("data", None, "a data.prepare / data.curate folder", required=True)
_VAE = flags.DEFINE_string("vae", None, "a convert.vae folder, or random-tiny", required=True)
_BATCH = flags.DEFINE_integer("batch", 8, "records per VAE call")
_MODE = flags.DEFINE_enum("mode", "mean", MODES, "posterior mean, or a sample")
_SPLITS = flags.DEFINE_string("splits", "", "comma-separated splits (default: all)")
_PART_SIZE = flags.DEFINE_integer(
    "part_size", 0, "records per part file (0: the existing cache's, else 256)"
)
_DTYPE = flags.DEFINE_enum("dtype", "float32", DTYPES, "storage dtype")
_FRAME_CHUNK = flags.DEFINE_integer("frame_chunk", 0, "frames per encoder call (0: all)")
_SEED = flags.DEFINE_integer("seed", 0, "posterior draws (--mode sample)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace a mismatching cache")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "no progress bar")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if _VAE.value != "random-tiny" and not Path(_VAE.value).is_dir():
        return cli.error(f"--vae {_VAE.value} is neither a folder nor 'random-tiny'")
    if not Path(_DATA.value).is_dir():
        return cli.error(f"--data {_DATA.value} is not a folder")
    try:
        stats = cache_latents(
            _DATA.value, _VAE.value, batch_size=_BATCH.value, mode=_MODE.value,
            splits=[s for s in _SPLITS.value.split(",") if s] or None,
            part_size=_PART_SIZE.value or None, dtype=_DTYPE.value, seed=_SEED.value,
            frame_chunk=_FRAME_CHUNK.value or None, overwrite=_OVERWRITE.value,
            progress=not _NO_PROGRESS.value,
        )  # fmt: skip
    except (LatentCacheError, FileNotFoundError) as e:
        return cli.error(str(e))
    for split, s in stats.items():
        print(f"{split}: {s['computed']} parts computed, {s['skipped']} already cached")
    return 0


if __name__ == "__main__":
    cli.run(main)
