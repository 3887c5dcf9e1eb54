"""The one training loop of every trainer: the CIM, the toy stages and the separator.

A trainer describes its run as a `Task` (the fresh state, placed where its step wants it; the
jitted step; the batch of each step; hooks; the export) and a `LoopConfig` (steps, log and
checkpoint cadence); `run(task, loop, workdir)` does the rest:

  1. restore the newest readable checkpoint of `workdir/checkpoints` (orbax: state + config +
     data-stream state, `training.checkpoints`), else start fresh (`Task.fresh_start`);
  2. step: `state, metrics = task.step(state, task.batch(step))`, dispatched asynchronously.
     The metrics stay on the device; an on-device flag accumulates "every `Task.finite`
     metric so far is finite" (one tiny op per step, no host transfer);
  3. at log steps (and hook steps) the accumulated metrics are fetched to the host in one go
     and written to `workdir/metrics.jsonl` (one line per step with `per_step_records`, else
     one line per log step with the means since the last one) and TensorBoard (`tb/`), and a
     console line is logged; only process 0 writes;
  4. before every checkpoint save and every hook the finite flag is fetched (one boolean): a
     non-finite step raises `NonFiniteError` naming the step, after writing the lines of the
     good steps before it, and nothing is saved for it;
  5. at the end `Task.export(state)`.

Timing fields: `step_time_s` is the wall time per step over the log interval (steps run
asynchronously, so a single step's time is not observable without a sync); `data_time_s` the
host time spent making that step's batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maestro_jax.training.checkpoints import TrainCheckpointer, truncate_jsonl

log = logging.getLogger("maestro_jax.train")
# checkpoints of the trainers before the shared loop (toy stages: msgpack; separator: folders)
_OLD_FORMATS = ("ckpt.msgpack", "ckpt")


class NonFiniteError(FloatingPointError):
    """A watched metric (loss, gradient norm) became NaN/inf; the run stopped without saving
    that step (the newest checkpoint is the last good state)."""


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    total_steps: int
    log_every: int
    checkpoint_every: int
    keep: int = 2
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class Hook:
    """Extra work every `every` steps (and at the last step with `at_end`): `fn(step, state,
    out)` may return metrics added to that step's record. Runs only on finite states."""

    every: int
    fn: Callable[[int, Any, Outputs], dict | None]
    at_end: bool = False

    def due(self, step: int, total: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or (self.at_end and step == total)


@dataclasses.dataclass
class Task:
    """What a trainer supplies to `run` (see the module docstring)."""

    name: str
    state: Any  # the fresh train state (jax arrays, placed as `step` wants them)
    step: Callable[[Any, Any], tuple[Any, dict]]  # (state, batch) -> (state, device metrics)
    batch: Callable[[int], Any]  # step number (1-based) -> its batch
    export: Callable[[Any], dict]  # final state -> result fields, e.g. {"export": path}
    config: dict = dataclasses.field(default_factory=dict)  # saved in config.json and ckpts
    data_iter: Any = None  # the grain iterator behind `batch` (its state is checkpointed)
    fresh_start: Callable[[Any], Any] | None = None  # data-dependent init, not on resume
    finite: tuple[str, ...] = ("loss",)
    per_step_records: bool = False
    describe: Callable[[dict], str] | None = None  # the console line of a record
    record_extra: Callable[[dict], dict] | None = None  # host-side fields of a record
    hooks: Sequence[Hook] = ()
    progress: bool = False  # a tqdm bar (the toy build's stages)


@dataclasses.dataclass
class Outputs:
    """Where hooks write: the run folder, TensorBoard (process 0 only, else None)."""

    workdir: Path
    writer: Any
    lead: bool


@jax.jit
def _all_finite(values: tuple) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))


@jax.jit
def _and_finite(ok: jax.Array, values: tuple) -> jax.Array:
    return jnp.logical_and(ok, _all_finite(values))


class _Metrics:
    """Device metrics of the steps since the last fetch, the finite flag, the outputs."""

    def __init__(self, task: Task, workdir: Path, ckpt: TrainCheckpointer | None, total: int):
        from maestro_jax.training import tensorboard as tb

        self.task, self.ckpt = task, ckpt
        self.lead = jax.process_index() == 0
        self.pending: list[tuple[int, dict, float]] = []  # (step, metrics, data time)
        self.ok = None
        self.t_fetch = time.perf_counter()
        self.t0 = self.t_fetch
        self.last: dict = {}
        self.writer = tb.SummaryWriter(workdir / "tb") if self.lead else None
        self.jsonl = open(workdir / "metrics.jsonl", "a") if self.lead else None
        self.bar = None
        if task.progress and self.lead:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=task.name, unit="step", mininterval=2.0)

    def add(self, step: int, metrics: dict, data_time: float) -> None:
        watched = tuple(metrics[k] for k in self.task.finite)
        self.ok = _all_finite(watched) if self.ok is None else _and_finite(self.ok, watched)
        self.pending.append((step, metrics, data_time))
        if self.bar is not None:
            self.bar.update(1)

    def check_finite(self) -> None:
        """Fetch the finite flag (one boolean); a non-finite step raises via `flush`."""
        if self.ok is not None and not bool(jax.device_get(self.ok)):
            self.flush()

    def flush(self, extra: dict | None = None) -> None:
        """Fetch the pending metrics, write the records, raise on a non-finite step."""
        if not self.pending:
            return
        now = time.perf_counter()
        steps = [s for s, _, _ in self.pending]
        fetched = jax.device_get([m for _, m, _ in self.pending])
        rows = [
            {"step": s, **{k: float(v) for k, v in m.items()}, "data_time_s": dt}
            for (s, _, dt), m in zip(self.pending, fetched)
        ]
        dt_step = (now - self.t_fetch) / len(rows)
        self.pending, self.ok, self.t_fetch = [], None, now
        bad = next(
            (r for r in rows if not all(math.isfinite(r[k]) for k in self.task.finite)), None
        )
        good = rows[: rows.index(bad)] if bad else rows
        if self.task.per_step_records:
            records = good
        elif bad is None:
            records = [{k: float(np.mean([r[k] for r in rows])) for k in rows[0]}]
            records[0]["step"] = steps[-1]
        else:
            records = []
        for r in records:
            r["step"] = int(r["step"])
            r.update(step_time_s=dt_step, elapsed_s=now - self.t0)
            if self.task.record_extra:
                r.update(self.task.record_extra(r))
        if records and extra:
            records[-1].update(extra)
        self._write(records)
        if bad is not None:
            watched = ", ".join(f"{k}={bad[k]}" for k in self.task.finite)
            where = ""
            if self.ckpt is not None:
                where = (
                    f" The last good checkpoint is step {self.ckpt.latest_step()} in "
                    f"{self.ckpt.directory}."
                )
            raise NonFiniteError(
                f"step {bad['step']}: {watched} is not finite; stopped without saving.{where}"
            )

    def _write(self, records: list[dict]) -> None:
        if not records:
            return
        self.last = records[-1]
        line = self.task.describe(self.last) if self.task.describe else _describe(self.last)
        log.info("%s", line)
        if self.bar is not None:
            self.bar.set_postfix_str(line, refresh=False)
        if not self.lead:
            return
        for r in records:
            self.jsonl.write(json.dumps(r) + "\n")
            self.writer.scalars(
                {f"train/{k}": v for k, v in r.items() if k != "step" and _is_number(v)},
                r["step"],
            )
        self.jsonl.flush()
        self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.jsonl:
            self.jsonl.close()
        if self.writer:
            self.writer.close()


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _describe(record: dict) -> str:
    return f"step {record['step']} " + " ".join(
        f"{k} {v:.5g}" for k, v in record.items() if k != "step" and _is_number(v)
    )


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


def run(task: Task, loop: LoopConfig, workdir: str | os.PathLike) -> dict:
    """Train `task` to `loop.total_steps`, resuming from `workdir/checkpoints`, then export.
    Returns {'step', 'metrics' (the last record), 'resumed_from', **task.export(state)}."""
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    if lead and task.config:
        (workdir / "config.json").write_text(json.dumps(task.config, indent=1, sort_keys=True))
    total = int(loop.total_steps)
    state, start, resumed_from = task.state, 0, None
    task.state = None  # the loop owns the state now (donated steps invalidate the old one)
    ckpt = None
    if total > 0:
        ckpt = TrainCheckpointer(
            workdir / "checkpoints", keep=loop.keep, async_save=loop.async_save
        )
        step, restored, _ = ckpt.restore_latest(jax.tree.map(_abstract, state), task.data_iter)
        if step is not None:
            state, start, resumed_from = restored, step, step
            log.info("%s: resumed from %s at step %d", task.name, ckpt.directory, step)
        else:
            for old in _OLD_FORMATS:
                if (workdir / old).exists():
                    log.warning(
                        "%s holds a checkpoint of an older format that is no longer read; "
                        "training starts from step 0",
                        workdir / old,
                    )
    if start == 0 and task.fresh_start is not None:
        state = task.fresh_start(state)
    if lead:
        truncate_jsonl(workdir / "metrics.jsonl", start)
    metrics = _Metrics(task, workdir, ckpt, total)
    out = Outputs(workdir, metrics.writer, lead)
    try:
        if metrics.bar is not None:
            metrics.bar.update(start)
        for step in range(start + 1, total + 1):
            t = time.perf_counter()
            batch = task.batch(step)
            data_time = time.perf_counter() - t
            state, m = task.step(state, batch)
            metrics.add(step, m, data_time)
            extra: dict = {}
            due = [h for h in task.hooks if h.due(step, total)]
            if due:
                metrics.check_finite()
                for h in due:
                    extra.update(h.fn(step, state, out) or {})
            if due or step % loop.log_every == 0 or step == total:
                metrics.flush(extra)
            if step % loop.checkpoint_every == 0 or step == total:
                metrics.check_finite()
                ckpt.save(step, state, task.config, task.data_iter)
        if start >= total:  # nothing left to train: the end-of-run hooks on the restored state
            extra = {}
            for h in task.hooks:
                if h.at_end:
                    extra.update(h.fn(start, state, out) or {})
            metrics.last = {"step": start, **extra}
    finally:
        metrics.close()
        if ckpt is not None:
            ckpt.close()
    result = task.export(state)
    return {"step": max(start, total), "metrics": metrics.last, "resumed_from": resumed_from,
            **result}  # fmt: skip


def compile_together(fn: Callable, name: str) -> Callable:
    """`fn` (jitted), compiled on its first call; with several processes every process
    compiles it, then waits at a barrier before the first run. A process that compiles much
    longer than the others (a persistent cache hit on one, a busy host) would otherwise leave
    them waiting in the first collective, and CPU (gloo) collectives give up after 30 s."""
    if jax.process_count() == 1:
        return fn
    compiled = None

    def call(*args):
        nonlocal compiled
        if compiled is None:
            from maestro_jax import distributed

            compiled = fn.lower(*args).compile()
            distributed.barrier(f"maestro_train_compiled_{name}")
        return compiled(*args)

    return call
