"""The CIM trainer: `python -m maestro_jax.train --config=configs/cim.py[:variant]` (task 'cim').

Trains the condition injection module against a frozen Stable Diffusion 2.1 (the loss and the
step: `training.cim_loss`) through the shared loop (`training.loop`). This module assembles the
run: config checks (`validate_config`, before any compute), the mesh, the data stream
(`training.data`), the frozen models and text caches (`training.cim_state`, `training.text`),
the sample-image hook (`training.cim_sample`) and the export (`export_cim`).

Writes under the workdir: `checkpoints/<step>/` (orbax: state, config, grain iterator state),
`metrics.jsonl` (one line per step, process 0), `tb/events.out.tfevents.*`,
`samples/step_<n>.png`, `config.json`, `export/` (the inference folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from maestro_jax.sharding import batch_sharding, make_mesh
from maestro_jax.training import data as data_lib
from maestro_jax.training import loop as loop_lib
from maestro_jax.training import validate
from maestro_jax.training.cim_loss import LossSpec, Models, build_models, make_train_step
from maestro_jax.training.cim_sample import make_sample_fn
from maestro_jax.training.cim_state import init_frozen, init_train_state, place
from maestro_jax.training.loop import NonFiniteError  # noqa: F401  (raised by `train`)
from maestro_jax.training.optim import make_optimizer
from maestro_jax.training.text import text_caches

log = logging.getLogger("maestro_jax.train")

BATCH_KEYS = ("mel", "label_index", "latents", "frames")


def validate_config(config: Any) -> None:
    """ConfigError (one line naming the field) for values the trainer cannot use."""
    validate.at_least(config, 1, "total_steps", "batch_size_per_device", "log_every_steps")
    validate.at_least(config, 1, "checkpoint.every_steps", "checkpoint.keep")
    validate.at_least(config, 0, "sample.every_steps", "schedule.warmup_steps", "seed")
    validate.at_least(config, 0, "frames.num_frames", "debug_nan_at_step")
    validate.positive(config, "optimizer.lr")
    validate.non_negative(config, "optimizer.weight_decay", "optimizer.grad_clip_norm")
    validate.one_of(config, "optimizer.name", ("adam", "adamw"))
    validate.one_of(config, "schedule.name", ("constant", "cosine"))
    validate.in_range(config, "lambda1", 0.0, 1.0)
    validate.at_least(config, 1, "model.cim.num_queries")
    if int(config.sample.every_steps) > 0:
        validate.at_least(config, 1, "sample.num_clips", "sample.num_segments", "sample.steps")
    if config.data.synthetic and not config.data.dir:
        validate.at_least(config, 1, "data.synthetic_clips", "data.synthetic_classes")
        validate.one_of(config, "data.synthetic_kind", ("synthetic", "toyworld"))


def _describe(r: dict) -> str:
    return (
        f"step {r['step']} loss {r['loss']:.5f} (sd {r['loss_sd']:.5f}/{r['loss_sd_aug']:.5f} "
        f"mse {r['loss_mse']:.5f}/{r['loss_mse_aug']:.5f}) gnorm {r['grad_norm']:.3g} "
        f"lr {r['lr']:.3g} {r['step_time_s']:.3f}s"
    )


def build_task(
    config: Any, workdir: str | os.PathLike
) -> tuple[loop_lib.Task, loop_lib.LoopConfig]:
    """The CIM run as a `loop.Task`: mesh, data, frozen models, state, step, hooks, export."""
    validate_config(config)
    workdir = Path(workdir).absolute()
    mesh = make_mesh(tuple(config.mesh.shape), ("data", "fsdp"))
    models = build_models(config)
    spec = LossSpec.from_config(config)
    global_batch = int(config.batch_size_per_device) * jax.device_count()
    log.info("mesh %s, global batch %d clips, models %s", dict(mesh.shape), global_batch, models)

    train_iter, labels, data_dir = data_lib.open_data(config, workdir, global_batch, mesh)
    log.info("data: %s, %d classes", data_dir, len(labels))
    frozen, frozen_sh = init_frozen(config, models, mesh)
    null_emb, label_emb = text_caches(config, models, labels)
    repl = NamedSharding(mesh, P())
    frozen["null_emb"] = place(null_emb, repl)
    frozen["label_emb"] = place(label_emb, repl)
    frozen_sh.update(null_emb=repl, label_emb=repl)
    tx, sched = make_optimizer(config)
    state, state_sh = init_train_state(config, models, tx, mesh)
    nan_step = place(np.asarray(int(config.debug_nan_at_step), np.int32), repl)

    shapes: dict = {}

    def batch(step: int) -> dict:
        local = next(train_iter)
        keys = [k for k in BATCH_KEYS if k in local]
        if not shapes:
            src = local["latents"] if "latents" in local else local["frames"]
            shapes["frames"] = spec.frames_used(src.shape[1], local["mel"].shape[1])
            shapes["sharding"] = {k: batch_sharding(mesh, np.ndim(local[k])) for k in keys}
        return data_lib.batch_to_global(local, mesh, keys)

    jitted: dict = {}

    def step(state: Any, b: dict) -> tuple[Any, dict]:
        if not jitted:  # the batch shardings are known once the first batch is read
            fn = jax.jit(
                make_train_step(models, spec, tx, sched, int(config.seed)),
                in_shardings=(state_sh, shapes["sharding"], frozen_sh, repl),
                out_shardings=(state_sh, repl),
                donate_argnums=(0,),
            )
            jitted["fn"] = loop_lib.compile_together(fn, "step")
        with jax.set_mesh(mesh):  # the mesh the kernels that shard themselves see (splash)
            return jitted["fn"](state, b, frozen, nan_step)

    n_dev = jax.device_count()

    def record_extra(r: dict) -> dict:
        dt = max(r["step_time_s"], 1e-9)
        return {
            "samples_per_s_per_device": global_batch / dt / n_dev,
            "frames_per_s_per_device": global_batch * shapes["frames"] / dt / n_dev,
        }

    hooks = []
    if int(config.sample.every_steps) > 0:
        hook = _sample_hook(config, models, spec, frozen, data_dir, mesh)
        if hook is not None:
            hooks.append(loop_lib.Hook(int(config.sample.every_steps), hook))
    task = loop_lib.Task(
        name="cim",
        state=state,
        step=step,
        batch=batch,
        export=lambda s: {
            "export": str(export_cim(s["params"], models, config, workdir / "export"))
        },
        config=json.loads(config.to_json_best_effort()),
        data_iter=train_iter,
        finite=("loss", "grad_norm"),
        per_step_records=True,
        describe=_describe,
        record_extra=record_extra,
        hooks=hooks,
    )
    ck = config.checkpoint
    loop = loop_lib.LoopConfig(
        total_steps=int(config.total_steps),
        log_every=int(config.log_every_steps),
        checkpoint_every=int(ck.every_steps),
        keep=int(ck.keep),
        async_save=bool(ck["async"]),
    )
    return task, loop


def _sample_hook(config, models, spec, frozen, data_dir, mesh):
    """Sample images on held-out audio (None when there is none): every process runs the
    replicated sampler, process 0 writes samples/step_<n>.png and the TensorBoard image."""
    from maestro_jax.video import contact_sheet, to_uint8, write_png

    repl = NamedSharding(mesh, P())
    heldout = data_lib.heldout_mel(config, data_dir)
    if heldout is None:
        return None
    heldout = place(heldout, repl)
    sample = make_sample_fn(models, spec, config.sample)
    key_seed = int(config.seed)
    fn = jax.jit(
        lambda fr, p, mel: sample(fr, p, mel, jax.random.key(key_seed)), out_shardings=repl
    )
    fn = loop_lib.compile_together(fn, "sample")

    def hook(step: int, state: Any, out: loop_lib.Outputs) -> None:
        with jax.set_mesh(mesh):
            imgs = fn(frozen, state["params"], heldout)
        if out.lead:
            imgs = np.asarray(jax.device_get(imgs))
            sheet = contact_sheet(to_uint8(imgs.reshape(-1, *imgs.shape[2:])), cols=imgs.shape[1])
            path = write_png(out.workdir / "samples" / f"step_{step:07d}.png", sheet)
            out.writer.image("samples", path.read_bytes(), sheet.shape[0], sheet.shape[1], step)
            out.writer.flush()

    return hook


def train(config: Any, workdir: str | os.PathLike) -> dict:
    """Train (or resume) until `config.total_steps`. Returns {'step', 'metrics': last record,
    'export', 'resumed_from'}. Raises `NonFiniteError` on a NaN/inf loss or gradient (nothing is
    saved for that step) and `validate.ConfigError` on a bad config (before any compute)."""
    task, loop = build_task(config, workdir)
    return loop_lib.run(task, loop, workdir)


def export_cim(params: Any, models: Models, config: Any, out: Path) -> Path:
    """The trained CIM as an inference folder (`checkpoints.save_params` layout, config.json
    with the CIMConfig under "cim"): what `--config.cim_checkpoint` of generation and
    `maestro_jax.audio.encoder.load` read. Gathered from every process; process 0 writes it."""
    from jax.experimental import multihost_utils

    from maestro_jax.checkpoints import save_params

    def host(x):
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    params = jax.tree.map(host, params)
    if jax.process_index() == 0:
        cim = dataclasses.asdict(models.cim)
        cim["dtype"] = jnp.dtype(models.cim.dtype).name
        meta = {
            "cim": cim,
            "token_offset": int(config.token_offset),
            "text_layer": config.model.text.layer,
            "made_by": {
                "entry_point": "python -m maestro_jax.train",
                "config": json.loads(config.to_json_best_effort()),
                "jax": jax.__version__,
            },
        }
        save_params(out, params, meta)
        log.info("CIM exported to %s", out)
    return out
