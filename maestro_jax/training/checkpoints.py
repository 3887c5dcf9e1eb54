"""orbax checkpoints of a training run: train state, config and the data-iterator state.

The one checkpoint format of every trainer (CIM, toy stages, separator): one
`ocp.CheckpointManager` under `<workdir>/checkpoints/<step>/` with three items:
  - `state`: the train state pytree (any pytree of jax or numpy arrays), saved with its
    shardings and restored onto the shardings of an abstract target (`jax.ShapeDtypeStruct`s
    with `.sharding`), so a restored state lands where the jitted step wants it;
  - `config`: the run's config as JSON (what produced the state; informative on restore);
  - `data`: the data stream's position: the grain iterator state, one JSON file per process
    (`grain.checkpoint`), or, for trainers whose batches are a pure function of (seed, step),
    `{"step": step}` as JSON.

Saves are asynchronous by default (the device-to-host copy blocks, the write does not); the
newest `keep` checkpoints are kept. A step is only visible to `latest_step()` once complete.

`restore_latest` falls back: when the newest step cannot be read (a truncated array file, a
corrupt `_METADATA`, a missing item) it logs one warning naming the step, the file when known
and the reason, moves that step aside (`<step>.unreadable`, kept for inspection) and tries the
next older one; `UnreadableCheckpointError` when none is readable.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "config", "data")
log = logging.getLogger("maestro_jax.train")


class UnreadableCheckpointError(RuntimeError):
    """No kept checkpoint step could be restored (each step's reason in the message)."""


def _grain_args():
    import grain.checkpoint as gc  # grain only where data iterators are saved

    return gc.CheckpointSave, gc.CheckpointRestore


class TrainCheckpointer:
    """Saves and restores train state + config + data-stream state under `directory`."""

    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
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
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, config: dict | None = None, data_iter: Any = None):
        """Save (asynchronously unless disabled); returns once the arrays are off the devices.
        `data_iter`: a grain iterator whose state is saved; None saves `{"step": step}`."""
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config or {})}
        if data_iter is not None:
            save_cls, _ = _grain_args()
            items["data"] = save_cls(data_iter)
        else:
            items["data"] = ocp.args.JsonSave({"step": int(step)})
        self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state: Any, data_iter: Any = None) -> tuple[Any, dict]:
        """(state, config) of `step`; `data_iter` (a grain iterator) is set to the saved state
        in place. `abstract_state`: ShapeDtypeStructs with shardings."""
        items = {
            "state": ocp.args.StandardRestore(abstract_state),
            "config": ocp.args.JsonRestore(),
        }
        if data_iter is not None:
            _, restore_cls = _grain_args()
            items["data"] = restore_cls(data_iter)
        else:
            items["data"] = ocp.args.JsonRestore()
        out = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        if data_iter is None and int((out["data"] or {}).get("step", -1)) != int(step):
            raise ValueError(f"data/metadata says step {out['data']}, not {step}")
        return out["state"], dict(out["config"] or {})

    def restore_latest(
        self, abstract_state: Any, data_iter: Any = None
    ) -> tuple[int | None, Any, dict]:
        """(step, state, config) of the newest readable step, or (None, None, {}) when there is
        no checkpoint. Unreadable newer steps are skipped with a warning and moved aside."""
        steps = self.all_steps()
        failures = []
        for step in reversed(steps):
            try:
                state, config = self.restore(step, abstract_state, data_iter)
            except Exception as e:  # any failure to read: try the older step
                where, why = describe_failure(self.directory / str(step), e)
                failures.append(f"step {step}: {where}{why}")
                older = [s for s in steps if s < step]
                then = f"trying step {older[-1]}" if older else "no older step kept"
                log.warning("checkpoint step %d is unreadable: %s%s; %s", step, where, why, then)
                continue
            if failures:
                self._set_aside([s for s in steps if s > step])
            return step, state, config
        if failures:
            raise UnreadableCheckpointError(
                f"no readable checkpoint in {self.directory}: " + "; ".join(failures)
            )
        return None, None, {}

    def _set_aside(self, steps: list[int]) -> None:
        """Rename unreadable steps to `<step>.unreadable` (orbax then no longer lists them and
        the step can be saved again); every process waits for process 0's renames."""
        if jax.process_index() == 0:
            for s in steps:
                src = self.directory / str(s)
                dst = self.directory / f"{s}.unreadable"
                n = 1
                while dst.exists():
                    dst, n = self.directory / f"{s}.unreadable.{n}", n + 1
                src.rename(dst)
                log.warning("moved the unreadable step %d aside to %s", s, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("maestro_ckpt_set_aside")
        self.manager.reload()

    def wait(self) -> None:
        """Block until pending async saves are written."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def describe_failure(step_dir: Path, exc: BaseException) -> tuple[str, str]:
    """(where, why) of a failed restore: `where` names the file when it can be found ('' or
    'FILE: '), `why` is one line from the most specific error in the exception chain."""
    chain, x = [], exc
    while x is not None and len(chain) < 10:
        chain.append(x)
        x = x.__cause__ or x.__context__
    if any(isinstance(c, json.JSONDecodeError) for c in chain):
        bad = _unparsable_json(step_dir)
        msg = next(str(c) for c in chain if isinstance(c, json.JSONDecodeError))
        return (f"{bad}: " if bad else ""), f"not valid JSON ({msg})"
    # tensorstore names the array and the folder in a cause deep down; the outer error prints
    # a whole TensorStore spec
    for c in reversed(chain):
        text = str(c)
        m = re.search(r'Error reading "([^"]+)".*?local file "([^"]+)"', text)
        if m:
            detail = text.split(": ")[-1].splitlines()[0][:200]
            return f"{m.group(2)} (array {m.group(1)}): ", detail
    line = (str(exc).strip().splitlines() or [""])[0][:200]
    return "", f"{type(exc).__name__}: {line}"


def _unparsable_json(step_dir: Path) -> Path | None:
    """The first orbax JSON file under `step_dir` that does not parse."""
    names = {"_METADATA", "_CHECKPOINT_METADATA", "metadata", "_sharding"}
    for p in sorted(step_dir.rglob("*")):
        if p.is_file() and (p.name in names or p.suffix == ".json"):
            try:
                json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                return p
    return None


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
