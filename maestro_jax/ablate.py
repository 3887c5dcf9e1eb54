"""Training ablations of the CIM as one command: N_Q (the paper's Table 2) or lambda1 (Table 1).

    python -m maestro_jax.ablate --config=configs/ablations/nq.py:toy --workdir=runs/ablate_nq
    python -m maestro_jax.ablate --config=configs/ablations/lambda1.py:toy \
        --workdir=runs/ablate_lambda1
    python -m maestro_jax.ablate --config=configs/ablations/nq.py:runlocal --workdir=/tmp/abl

For each value: train a CIM (the CIM trainer, WORKDIR/<param>_<value>/train, resumable), export
it, score its tokens' nearest-label accuracy on held-out audio, generate the sweep's jobs with it
and evaluate them; then WORKDIR/ablation.md + ablation.json (the table), plot_<metric>.png and
grid.png. Rerunning after an interruption finishes the study without retraining finished values;
a changed training setting retrains only the values it affects (`maestro_jax.evaluation.ablation`
explains the records). Full-size studies (VGGSound, Landscape, Animal Kingdom): the commands are
in `configs/ablations/nq.py` and the README ("Evaluation and ablations").

Multi-host: `--config.processes.mode=mesh` (default) trains each value on every process's
devices in turn (start every process with `--config.distributed=True` or the MAESTRO_* /
SLURM environment, as `maestro_jax.train`); `--config.processes.mode=split` runs value i on
process i % count, each an independent single-process run on its own devices (count and index
from $MAESTRO_NUM_PROCESSES / $MAESTRO_PROCESS_ID or SLURM, or --config.processes.count/index).
WORKDIR must be one folder every process sees.

Exit status 2: a bad flag or config value (one line `error: ...`, before any compute); 3: a
training loss became non-finite; 1: some value's generation or evaluation failed.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from maestro_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "configs/ablations/{nq,lambda1}.py[:vggsound|landscape|animal_kingdom|toy|runlocal]",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "the study's folder (one per study)")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _CONFIG.value
    if "://" in _WORKDIR.value:
        return cli.error(f"--workdir={_WORKDIR.value}: give a local or mounted path, not a URL")
    from maestro_jax import distributed
    from maestro_jax.evaluation import ablation
    from maestro_jax.generation.runner import enable_compilation_cache
    from maestro_jax.training.checkpoints import UnreadableCheckpointError
    from maestro_jax.training.loop import NonFiniteError

    try:
        ablation.check(cfg, _WORKDIR.value)  # one line per bad value, before any compute
    except ablation.AblationError as e:
        return cli.error(str(e))
    if cfg.processes.mode == "mesh":
        distributed.maybe_initialize(bool(cfg.distributed))
    import jax

    level = logging.INFO if jax.process_index() == 0 else logging.WARNING
    logging.getLogger("maestro_jax.train").setLevel(level)  # the trainer's progress lines
    logging.getLogger("absl").addFilter(
        lambda r: r.levelno >= logging.WARNING or "/orbax/" not in r.pathname
    )
    enable_compilation_cache(cfg.sweep.generation.compilation_cache)
    try:
        res = ablation.run(cfg, _WORKDIR.value)
    except ablation.AblationError as e:
        return cli.error(str(e))
    except (NonFiniteError, UnreadableCheckpointError) as e:
        return cli.error(str(e), 3 if isinstance(e, NonFiniteError) else 1)
    if res["failed"]:
        print(f"values with failures: {', '.join(res['failed'])}", file=sys.stderr)
        return 1
    if "table" in res:
        print(f"done in {res['wall_s'] / 60:.1f} min: {res['table']}")
    return 0


if __name__ == "__main__":
    cli.run(main)
