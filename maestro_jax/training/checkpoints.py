"""orbax checkpoints of a training run: train state, config and the grain data-iterator state.

One `ocp.CheckpointManager` under `<workdir>/checkpoints/<step>/` with three items:
  - `state`: the train state pytree (here {'step', 'params', 'opt_state'}; any pytree of jax or
    numpy arrays), saved with its shardings and restored onto the shardings of an abstract
    target (`jax.ShapeDtypeStruct`s with `.sharding`), so a restored state lands where the
    jitted step wants it;
  - `config`: the run's config as JSON (what produced the state; informative on restore);
  - `data`: the grain iterator state, one JSON file per process (`grain.checkpoint`), so the
    data stream continues exactly where the saved step left it.

Saves are asynchronous by default (the device-to-host copy blocks, the write does not); the
newest `keep` checkpoints are kept. A step is only visible to `latest_step()` once complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "config", "data")


def _grain_args():
    import grain.checkpoint as gc  # noqa: PLC0415  (grain only where data iterators are saved)

    return gc.CheckpointSave, gc.CheckpointRestore


class TrainCheckpointer:
    """Saves and restores train state + config + data-iterator state under `directory`."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        keep: int = 3,
        async_save: bool = True,
    ):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(
        self, step: int, state: Any, config: dict | None = None, data_iter: Any = None
    ) -> None:
        """Save (asynchronously unless disabled); returns once the arrays are off the devices."""
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config or {})}
        if data_iter is not None:
            save_cls, _ = _grain_args()
            items["data"] = save_cls(data_iter)
        self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> tuple[Any, dict]:
        """(state, config) of `step`; `data_iter` (a grain iterator) is set to the saved state
        in place. `abstract_state`: ShapeDtypeStructs with shardings (e.g. from
        `jax.eval_shape` + the train shardings)."""
        items = {
            "state": ocp.args.StandardRestore(abstract_state),
            "config": ocp.args.JsonRestore(),
        }
        if data_iter is not None:
            if not (self.directory / str(step) / "data").exists():
                raise FileNotFoundError(
                    f"checkpoint {self.directory / str(step)} has no data-iterator state; it was "
                    "not written by a run with a grain iterator"
                )
            _, restore_cls = _grain_args()
            items["data"] = restore_cls(data_iter)
        out = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        return out["state"], dict(out["config"] or {})

    def wait(self) -> None:
        """Block until pending async saves are written."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings`."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop the metrics lines of steps after `last_step` (logged after the checkpoint a resume
    starts from; they will be logged again). Atomic; lines cut by a kill are dropped too."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)
