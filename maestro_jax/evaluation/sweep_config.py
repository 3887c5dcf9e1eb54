"""Sweep configs (`python -m maestro_jax.sweep --config=configs/sweeps/<name>.py[:runlocal]`).

Each config embeds a generation config (`maestro_jax.generation.config.generation_config`) and an
evaluation config (`configs/evaluate.py`), the swept parameter and its values, and the jobs:
`stems` ('a.wav+b.wav:LR; c.wav+d.wav:TD', files in `audio_dir`), `jobs_file` (generate's JSONL
jobs, e.g. a test set) or `toy_jobs` (random toy-world scenes; the `runlocal` default). See
`python -m maestro_jax.sweep --help` (its docstring) for the commands that reproduce Fig. 7 and
Tables 1-2.
"""

from __future__ import annotations

import ml_collections

from maestro_jax.evaluation.config import evaluation_config
from maestro_jax.generation.config import generation_config

# Example two-source pairs (files in `audio_dir`) with the paper's left / right and top / down
# layouts.
DEFAULT_STEMS = (
    "dog.wav+violin.wav:LR; cat.wav+piano.wav:LR; drum.wav+guitar.wav:TD; "
    "fire.wav+female_singing.wav:LR; car.wav+trumphet.wav:TD; ambulance.wav+chello.wav:LR"
)


def sweep_config(
    variant: str,
    param: str,
    values: tuple,
    runlocal_values: tuple,
    name: str,
) -> ml_collections.ConfigDict:
    if variant not in ("default", "runlocal"):
        raise ValueError(f"unknown variant {variant!r} (default | runlocal)")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.param = param  # n_d | mode | num_queries | lambda1
    c.param_values = runlocal_values if variant == "runlocal" else values
    c.generation = generation_config(variant)
    c.evaluation = evaluation_config(variant)
    c.audio_dir = ""  # the folder of the `stems` files
    c.stems = DEFAULT_STEMS
    c.jobs_file = ""  # JSONL jobs (maestro_jax.generate's format); overrides `stems`
    c.max_jobs = 1 if variant == "runlocal" else 0  # 0 = all jobs
    # Toy world (configs/toy.py:sweep_nd): `toy_jobs` random scenes per source count in
    # `toy_sources` (maestro_jax.toy.placement.make_jobs), their stems and true classes written to
    # OUTDIR/toy_jobs/; overrides `stems` / `jobs_file`. 0 = off.
    # runlocal: one toy scene per source count (its stems are made on the fly: no files needed)
    c.toy_jobs = 1 if variant == "runlocal" else 0
    c.toy_sources = (2, 3)
    c.toy_seed = 0
    c.reference = ""  # folder of real videos: FVD when given
    # N_Q / lambda1: one converted CIM folder per value, 'V=DIR,V=DIR' or a pattern 'dir{value}'
    # (runlocal writes random tiny CIMs instead).
    c.checkpoints = ""
    c.checkpoint_pattern = ""
    c.outdir = f"sweeps/{name}" + ("_runlocal" if variant == "runlocal" else "")
    c.grid_job = ""  # the job shown in grid.png ('' = the first)
    c.grid_frames = 8
    c.grid_height = 160  # frames are subsampled to at most this many pixels high
    return c
