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

Per value: `training_config` (the swept field and the value's `overrides` set), `config_hash`
(the fields that decide whether a value is trained again), `split_identity` ('split' mode).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
from typing import Any

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


class AblationError(ValueError):
    """A bad ablation config, found before any compute."""


# training-config fields that do not shape the trained weights (cadence of logs, checkpoints
# and sample images; the multi-process switch; the NaN test hook; the variant's name)
NOT_HASHED = ("checkpoint", "log_every_steps", "sample", "distributed", "debug_nan_at_step",
              "variant")  # fmt: skip


SWEPT = {"num_queries": "model.cim.num_queries", "lambda1": "lambda1"}


def parse_overrides(cfg) -> dict[str, list[tuple[str, Any]]]:
    """`cfg.overrides` 'VALUE:field=literal; ...' -> {value label: [(training field, value)]}:
    settings of single values (e.g. '20:optimizer.lr=5e-5' retrains N_Q = 20 alone)."""
    from maestro_jax.evaluation import sweep as sweep_lib

    labels = [sweep_lib.value_label(v) for v in cfg.param_values]
    out: dict[str, list[tuple[str, Any]]] = {}
    for item in (x.strip() for x in str(cfg.overrides).split(";") if x.strip()):
        value, _, rest = item.partition(":")
        field, eq, text = rest.partition("=")
        field = field.strip().removeprefix("training.")
        label = sweep_lib.value_label(sweep_lib._num(value.strip()))
        if not eq or not field:
            raise AblationError(f"config.overrides item {item!r} is not VALUE:field=value")
        if label not in labels:
            raise AblationError(f"config.overrides item {item!r}: {label} is not a swept value")
        if field == SWEPT[cfg.param]:
            raise AblationError(f"config.overrides item {item!r}: {field} is the swept field")
        try:
            parsed = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            parsed = text.strip()
        out.setdefault(label, []).append((field, parsed))
    return out


def training_config(cfg, value: Any):
    """The value's trainer config: `cfg.training` with the swept field set and the value's
    `overrides` applied."""
    from maestro_jax.evaluation import sweep as sweep_lib

    t = copy.deepcopy(cfg.training)
    if cfg.param == "num_queries":
        t.model.cim.num_queries = int(value)
    else:
        t.lambda1 = float(value)
    for field, v in parse_overrides(cfg).get(sweep_lib.value_label(value), []):
        *parents, leaf = field.split(".")
        node = t
        try:
            for part in parents:
                node = node[part]
            if leaf not in node:
                raise KeyError(leaf)
            node[leaf] = v
        except (KeyError, TypeError, AttributeError) as e:
            raise AblationError(
                f"config.overrides: training.{field} = {v!r} for {value}: "
                f"{'no such field' if isinstance(e, KeyError) else e}"
            ) from None
    return t


def config_hash(train_cfg, global_batch: int) -> tuple[str, dict]:
    """(sha256 hex, the hashed dict): the trainer config without `NOT_HASHED`, and the
    global batch (the device count is not in the config)."""
    d = json.loads(train_cfg.to_json_best_effort())
    d = {k: v for k, v in d.items() if k not in NOT_HASHED}
    d["global_batch"] = int(global_batch)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16], d


def check_value(cfg, v: Any) -> None:
    what = f"config.param_values: {v!r}"
    if cfg.param == "num_queries" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise AblationError(f"{what}: N_Q must be an integer >= 1")
    if cfg.param == "lambda1" and (
        isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0
    ):
        raise AblationError(f"{what}: lambda1 must be a number in [0, 1]")


def split_identity(cfg) -> tuple[int, int]:
    """(index, count) of this process under processes.mode 'split' (see the config)."""
    env = os.environ

    def pick(field: str, names: tuple[str, ...], default: int) -> int:
        v = int(cfg.processes[field])
        if v >= 0:
            return v
        for n in names:
            if env.get(n, "").strip():
                try:
                    return int(env[n])
                except ValueError:
                    raise AblationError(f"${n}={env[n]!r} is not an integer") from None
        return default

    count = pick("count", ("MAESTRO_NUM_PROCESSES", "SLURM_NTASKS"), 1)
    index = pick("index", ("MAESTRO_PROCESS_ID", "SLURM_PROCID"), 0)
    if count < 1 or not 0 <= index < count:
        raise AblationError(f"processes: index {index} is not in [0, count = {count})")
    return index, count
