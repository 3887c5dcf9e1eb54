"""Training ablations (`python -m maestro_jax.ablate --config=configs/ablations/<name>.py`).

A study sweeps one CIM training setting: `num_queries` (N_Q, the paper's Table 2:
`model.cim.num_queries` of the trainer and `num_queries` of generation) or `lambda1` (the weight
of the denoising loss, Table 1). Its config embeds

    training         the CIM trainer's config (`training.cim_config`, or the toy world's `cim`
                     stage on the committed weights); each value trains it with the swept field
                     set, in WORKDIR/<param>_<value>/train
    sweep            a sweep config (`evaluation.sweep_config`: generation, evaluation, jobs,
                     reference, grid); `param`, `param_values`, `checkpoints` and `outdir` are
                     filled in per study (the values' exports, WORKDIR)
    overrides        training settings of single values: 'VALUE:field=literal; ...'
    label_accuracy   the CIM tokens' nearest-label accuracy on held-out audio
                     (`evaluation.label_accuracy`): source 'toy' (fresh toy object sounds,
                     `per_class` per class, seed `seed`), 'dataset' (the `split` split of
                     `training.data.dir`, at most `max_clips` clips) or 'none'
    processes        multi-host: mode 'mesh' (default: every value one after another on all
                     processes' devices, one JAX job) or 'split' (value i on process
                     i % count, each an independent single-process JAX run on its own devices;
                     index / count -1 = from $MAESTRO_PROCESS_ID / $MAESTRO_NUM_PROCESSES, or
                     SLURM's, else 0 / 1)

Variants: `vggsound` (default), `landscape`, `animal_kingdom` (the paper's recipe at full size:
SD 2.1 for training, VideoCrafter2 for generation, the dataset's evaluation jobs), `toy` (the
committed toy world: the `cim` stage's 1500 steps per value, 50 toy scenes per value, placement
by colour) and `runlocal` (the toy world at smoke size: a few training and sampling steps, for
tests and CPU checks; trained weights, since the CIM must match the encoders it is used with).
"""

from __future__ import annotations

import ml_collections

from maestro_jax.evaluation.sweep_config import sweep_config
from maestro_jax.training import cim_config

PARAMS = ("num_queries", "lambda1")
VARIANTS = ("vggsound", "landscape", "animal_kingdom", "toy", "runlocal")
FULL = ("vggsound", "landscape", "animal_kingdom")
VALUES = {  # (full size: the paper's tables, toy, runlocal)
    "num_queries": ((1, 5, 10, 15, 20), (1, 2, 4, 8), (1, 2)),
    "lambda1": ((0.0, 0.5, 0.7, 0.9, 1.0), (0.0, 0.5, 0.9, 1.0), (0.0, 1.0)),
}
NAMES = {"num_queries": "nq", "lambda1": "lambda1"}


def ablation_config(param: str, variant: str | None = None) -> ml_collections.ConfigDict:
    variant = variant or "vggsound"
    if param not in PARAMS:
        raise ValueError(f"unknown ablation parameter {param!r} (known: {', '.join(PARAMS)})")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")
    full, toy, local = VALUES[param]
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.param = param
    c.param_values = {"toy": toy, "runlocal": local}.get(variant, full)
    name = f"{NAMES[param]}_{variant}"
    if variant in FULL:
        c.training = cim_config.get_config(variant)
        c.sweep = sweep_config("default", param, c.param_values, (), name)
        c.label_accuracy = ml_collections.ConfigDict(
            {"source": "dataset", "split": "test", "max_clips": 1000, "per_class": 0, "seed": 0}
        )
    else:
        from maestro_jax.toy import config as toy_config

        c.training = toy_config.cim_on_assets()
        c.sweep = toy_config.toy_sweep_config(param, c.param_values, name)
        c.sweep.toy_seed = 1  # the held-out job set (seed 0's first jobs tuned the settings)
        c.sweep.toy_jobs = 25  # per source count (2 and 3): 50 videos per value
        c.label_accuracy = ml_collections.ConfigDict(
            {"source": "toy", "split": "", "max_clips": 0, "per_class": 8, "seed": 1}
        )
        if variant == "runlocal":
            c.training.update(total_steps=4, log_every_steps=2)
            c.training.checkpoint.update(every_steps=2, keep=2)
            c.training.data.synthetic_clips = 12
            c.sweep.toy_jobs = 1
            c.sweep.toy_sources = (2,)
            c.sweep.generation.update(steps=2, n_d=1)
            c.label_accuracy.per_class = 1
    c.sweep.outdir = ""  # = --workdir
    # Settings of single values, 'VALUE:field=literal; ...' over `training` (e.g.
    # '20:optimizer.lr=5e-5'): only those values are trained again.
    c.overrides = ""
    c.processes = ml_collections.ConfigDict({"mode": "mesh", "index": -1, "count": -1})
    # mode 'mesh' with several processes: jax.distributed.initialize() first (also
    # $MAESTRO_DISTRIBUTED=1 or MAESTRO_COORDINATOR / NUM_PROCESSES / PROCESS_ID)
    c.distributed = False
    return c
