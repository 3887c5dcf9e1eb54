"""Sweep configs (`python -m maestro_jax.sweep --config=configs/sweeps/<name>.py[:runlocal]`).

Each config embeds a generation config (`maestro_jax.generation.config.generation_config`) and an
evaluation config (`configs/evaluate.py`), the swept parameter and its values, and the jobs:
`stems` ('a.wav+b.wav:LR; c.wav+d.wav:TD', files in `audio_dir`) or `jobs_file` (generate's JSONL
jobs, e.g. a test set). See `maestro_jax/sweep.py` for the commands that reproduce Fig. 7 and
Tables 1-2.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from maestro_jax.evaluation.config import evaluation_config
from maestro_jax.generation.config import generation_config

# The project's real test recordings: shared/audio inside the repository or next to it.
_REPO = Path(__file__).resolve().parents[2]
_SHARED_AUDIO = next(
    (p for p in (_REPO / "shared" / "audio", _REPO.parent / "shared" / "audio") if p.is_dir()),
    _REPO.parent / "shared" / "audio",
)

# Two-source pairs of the shared recordings with the paper's left / right and top / down layouts.
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
    c.audio_dir = str(_SHARED_AUDIO) if _SHARED_AUDIO.is_dir() else ""
    c.stems = DEFAULT_STEMS
    c.jobs_file = ""  # JSONL jobs (maestro_jax.generate's format); overrides `stems`
    c.max_jobs = 1 if variant == "runlocal" else 0  # 0 = all jobs
    # Toy world (configs/toy.py:sweep_nd): `toy_jobs` random scenes per source count in
    # `toy_sources` (maestro_jax.toy.evaluate.make_jobs), their stems and true classes written to
    # OUTDIR/toy_jobs/; overrides `stems` / `jobs_file`. 0 = off.
    c.toy_jobs = 0
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
