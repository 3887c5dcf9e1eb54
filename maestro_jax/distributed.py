"""Multi-process start-up: `jax.distributed.initialize()` before anything touches a device.

One JAX process per host (TPU VM worker, GPU node) or per GPU; all of them run the same command.
`maybe_initialize` decides from a flag and the environment whether to join a job:

  - MAESTRO_COORDINATOR=host:port, MAESTRO_NUM_PROCESSES=n, MAESTRO_PROCESS_ID=i (and optionally
    MAESTRO_LOCAL_DEVICE_IDS=0,1,..): explicit, for plain ssh / containers / the CPU test;
  - MAESTRO_DISTRIBUTED=1 or the `requested` flag without the variables above: JAX's own
    auto-detection (TPU VM metadata on Cloud TPU slices, SLURM's SLURM_* variables, Open MPI's
    OMPI_* variables, Kubernetes/GKE TPU env);
  - neither: a single process (nothing is initialised).

On CPU the cross-process collectives need an implementation ('gloo' over TCP); it is set when the
running JAX leaves it unset (0.10 defaults to gloo, older releases to none).
"""

from __future__ import annotations

import logging
import os

ENV_COORDINATOR = "MAESTRO_COORDINATOR"
ENV_NUM_PROCESSES = "MAESTRO_NUM_PROCESSES"
ENV_PROCESS_ID = "MAESTRO_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "MAESTRO_LOCAL_DEVICE_IDS"
ENV_DISTRIBUTED = "MAESTRO_DISTRIBUTED"

log = logging.getLogger("maestro_jax.distributed")
_BARRIERS = 0


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError as e:
        raise ValueError(f"${name}={value!r} is not an integer") from e


def initialize_kwargs(requested: bool = False) -> dict | None:
    """The `jax.distributed.initialize` arguments the flag and environment ask for: None for a
    single process, {} for JAX's auto-detection, else explicit coordinator/count/id."""
    explicit = [os.environ.get(n) for n in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)]
    if any(explicit):
        if not all(explicit):
            raise ValueError(
                f"set all of ${ENV_COORDINATOR}, ${ENV_NUM_PROCESSES} and ${ENV_PROCESS_ID} "
                f"(got {dict(zip((ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID), explicit))})"
            )
        n, i = _env_int(ENV_NUM_PROCESSES), _env_int(ENV_PROCESS_ID)
        if not 0 <= i < n:
            raise ValueError(f"${ENV_PROCESS_ID}={i} not in [0, ${ENV_NUM_PROCESSES}={n})")
        kw: dict = {
            "coordinator_address": os.environ[ENV_COORDINATOR],
            "num_processes": n,
            "process_id": i,
        }
        ids = os.environ.get(ENV_LOCAL_DEVICE_IDS)
        if ids:
            kw["local_device_ids"] = [int(x) for x in ids.split(",") if x.strip()]
        return kw
    if requested or os.environ.get(ENV_DISTRIBUTED) == "1":
        return {}
    return None


def maybe_initialize(requested: bool = False) -> bool:
    """Join the multi-process job when the flag or environment asks for it (see the module
    docstring). Returns True when `jax.distributed.initialize` ran. Call it before any other
    JAX call that creates a backend (jax.devices(), a jit, an array)."""
    kw = initialize_kwargs(requested)
    if kw is None:
        return False
    import jax

    platforms = os.environ.get("JAX_PLATFORMS") or getattr(jax.config, "jax_platforms", None)
    cpu_impl = getattr(jax.config, "jax_cpu_collectives_implementation", "gloo")
    if "cpu" in (platforms or "").lower().split(",") and cpu_impl is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)
    log.info(
        "joined the multi-process job: process %d of %d", jax.process_index(), jax.process_count()
    )
    return True


def is_lead() -> bool:
    """Process 0: the one that writes logs, metrics and other single-writer files."""
    import jax

    return jax.process_index() == 0


def barrier(name: str, timeout_s: float = 24 * 3600) -> None:
    """Wait until every process reaches `name` (a no-op for one process). Uses the coordination
    service's barrier (no device work, a long timeout: processes of a sweep finish at different
    times), else a device sync."""
    import jax

    if jax.process_count() == 1:
        return
    global _BARRIERS
    _BARRIERS += 1  # every process passes the same barriers in the same order: same ids
    name = f"{name}_{_BARRIERS}"
    from jax._src import distributed as jax_distributed

    client = getattr(jax_distributed.global_state, "client", None)
    if client is not None and hasattr(client, "wait_at_barrier"):
        client.wait_at_barrier(name, int(timeout_s * 1000))
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
