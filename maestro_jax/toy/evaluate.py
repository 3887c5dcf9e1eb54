"""Placement on the toy world: does each object appear in its own box?

Every job is a random toy scene (`maestro_jax/toy/world.py`): K distinct object classes, K random
non-overlapping boxes (`toy_batches.random_boxes`) and each object's audio stem
(`toyworld.object_sound`). Each job is generated in every mode of the paper's ablation
(`maestro_jax.generation.sampling` modes):

    vanilla   C_merge conditioning, no attention editing
    locate    Object Locating on every step
    mosaic    Mosaic Denoising on every step
    maestro   N_D Object Locating steps, then Mosaic Denoising (the method)

and scored by `colour_placement`: in every frame, is the class drawn in box k (by colour) the
class of stem k? Accuracy = the fraction of correct (box, frame) pairs, per mode, overall and
split by the number of sources.

    python -m maestro_jax.toy.evaluate --jobs_per_k 50 --out results/toy_placement
    python -m maestro_jax.toy.evaluate --config=configs/toy.py:generate --config.steps=10 \
        --assets /tmp/toy_assets --modes vanilla,maestro --jobs_per_k 4

writes OUT/placement.json (every number, per job too), OUT/placement.md (mode | 2 sources |
3 sources | all | jobs) and OUT/examples.png (the first 2 jobs, one row per mode, boxes drawn).

Everything runs in one process: the models are built once, each job's stems are encoded and its
edits rasterised once (shared by all modes), and jobs are sampled `batch` at a time in one
vmapped call (the last batch is padded, so every batch of a source count reuses one compiled
sampler). 'locate' and 'mosaic' run through the 'maestro' sampler with N_D = steps and N_D = 0
(N_D is traced, `sampling.sample_maestro`): the same steps as those modes, and one compile
instead of three. The weights: `--assets` or the config's `assets`
(`maestro_jax/toy/config.py`: `maestro_jax/assets/toy`, or `$MAESTRO_TOY_ASSETS`).
"""

from __future__ import annotations

from absl import flags, logging
from ml_collections import config_flags

from maestro_jax import cli
from maestro_jax.toy import config as toy_config
from maestro_jax.toy.placement import MODES

_CONFIG = config_flags.DEFINE_config_file(
    "config", f"{toy_config.__file__}:generate", "toy generation config (--config.X=V overrides)"
)
_ASSETS = flags.DEFINE_string("assets", None, "toy weights folder (default: the config's assets)")
_JOBS_PER_K = flags.DEFINE_integer("jobs_per_k", 50, "jobs per source count")
_SOURCES = flags.DEFINE_string("sources", "2,3", "source counts, comma-separated")
_MODES = flags.DEFINE_string("modes", ",".join(MODES), "modes, comma-separated")
_BATCH = flags.DEFINE_integer("batch", 8, "jobs per compiled sampler call")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the job set")
_OUT = flags.DEFINE_string("out", "results/toy_placement", "output folder")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    from maestro_jax.generation.runner import enable_compilation_cache
    from maestro_jax.toy import placement as tp

    logging.set_verbosity(logging.WARNING)  # no per-file checkpoint logs
    cfg = _CONFIG.value
    if _ASSETS.value:
        cfg.assets = _ASSETS.value
    modes = [m.strip() for m in _MODES.value.split(",") if m.strip()]
    try:
        ks = [int(k) for k in _SOURCES.value.split(",") if k.strip()]
    except ValueError:
        return cli.error(f"--sources {_SOURCES.value!r}: give source counts like 2,3")
    try:
        tp.check_assets(cfg)
        jobs = tp.make_jobs(_JOBS_PER_K.value, ks, _SEED.value)
        enable_compilation_cache(cfg.compilation_cache)
        result = tp.evaluate_placement(cfg, jobs, modes, _BATCH.value)
        paths = tp.write_results(result, _OUT.value)
    except tp.ToyEvalError as e:
        return cli.error(str(e))
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    cli.run(main)
