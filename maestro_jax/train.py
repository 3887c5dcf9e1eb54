"""Train the CIM: `python -m maestro_jax.train --config=configs/cim.py[:variant] --workdir=W`.

The same entry point trains the toy world's stages (`configs/toy.py:<stage>`, `config.task`:
text | imagebind | vae | t2i | t2v -> `maestro_jax.toy.stages`, separator ->
`maestro_jax.training.separator`, cim -> `maestro_jax.training.cim`).

Trains until `config.total_steps`, resuming from the newest checkpoint in W; appends one JSON
line per step to W/metrics.jsonl (TensorBoard events under W/tb, sample images under
W/samples). Command lines: see `configs/cim.py`. Multi-host: one process per host (or per GPU)
with `--config.distributed=True` (JAX's auto-detection: TPU VMs, SLURM, Open MPI), or the
environment MAESTRO_DISTRIBUTED=1, or MAESTRO_COORDINATOR=host:port + MAESTRO_NUM_PROCESSES +
MAESTRO_PROCESS_ID (`maestro_jax.distributed`); `jax.distributed.initialize()` then runs before
anything touches a device. W must be one folder every process sees (NFS, Filestore, a gcsfuse
mount); process 0 writes the logs and metrics, orbax coordinates the checkpoints (launch
scripts: `launch/`).

Exit status 2: a bad flag, override or config value (one line `error: ...` naming the field,
before any compute); 3: the loss or gradient became non-finite (nothing was saved for that
step; the newest checkpoint is the last good state); 1: no kept checkpoint is readable.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from maestro_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/cim.py[:variant]")
_WORKDIR = flags.DEFINE_string("workdir", None, "run folder (checkpoints, metrics, samples)")
flags.mark_flags_as_required(["config", "workdir"])


def trainer(task: str):
    """The module whose `train(config, workdir)` runs `config.task`."""
    if task == "cim":
        from maestro_jax.training import cim as module
    elif task == "separator":
        from maestro_jax.training import separator as module
    else:
        from maestro_jax.toy import stages as module
    return module


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if "://" in _WORKDIR.value:
        raise app.UsageError(
            f"--workdir={_WORKDIR.value}: give a local or mounted path (every process must see "
            "the same folder: NFS, Filestore, or a bucket mounted with gcsfuse), not a URL"
        )
    import jax

    from maestro_jax import distributed
    from maestro_jax.training.checkpoints import UnreadableCheckpointError
    from maestro_jax.training.loop import NonFiniteError
    from maestro_jax.training.validate import ConfigError

    distributed.maybe_initialize(bool(config.get("distributed")))
    log = logging.getLogger("maestro_jax.train")  # the trainer's logger (cli.run quiets the rest)
    log.setLevel(logging.INFO)
    # orbax logs every checkpoint phase at INFO through absl; keep its warnings and errors only
    logging.getLogger("absl").addFilter(
        lambda r: r.levelno >= logging.WARNING or "/orbax/" not in r.pathname
    )
    log.info(  # every process says who it is
        "process %d/%d, %d devices (%d local): %s",
        jax.process_index(),
        jax.process_count(),
        jax.device_count(),
        jax.local_device_count(),
        jax.devices()[0].device_kind,
    )
    # process 0 logs progress; the others only warnings and errors
    log.setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    try:
        out = trainer(config.get("task", "cim")).train(config, _WORKDIR.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteError, UnreadableCheckpointError) as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 3 if isinstance(e, NonFiniteError) else 1
    log.info("done at step %d", out["step"])
    return 0


if __name__ == "__main__":
    cli.run(main)
