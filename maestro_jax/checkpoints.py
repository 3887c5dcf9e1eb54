"""orbax save/restore of converted params (and, for training, of the whole train state).

Params written by converters live in a folder: `params/` (orbax PyTree checkpoint) plus
`config.json` (the model config and provenance). Writes are atomic: everything goes to a
temporary sibling folder that is renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


def replace_dir(tmp: Path, path: Path) -> None:
    """Put the finished folder `tmp` at `path` by renames (an existing `path` is moved aside
    first and removed after), so readers see the old folder or the new one, never a mix."""
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(path)


def _local_checkpointer() -> ocp.Checkpointer:
    """A PyTree checkpointer that involves only this process: `save_params` writes host-local
    numpy trees, and in a multi-process run only one process calls it (orbax's default would
    wait at a barrier for all the others)."""
    if jax.process_count() == 1:
        return ocp.PyTreeCheckpointer()
    me = jax.process_index()
    mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    return ocp.Checkpointer(
        ocp.PyTreeCheckpointHandler(multiprocessing_options=mp), multiprocessing_options=mp
    )


def save_params(path: str | os.PathLike, params: Any, config: dict | None = None) -> Path:
    """Write `params` (+ `config.json`) to folder `path`, atomically (replaces an existing one)."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        params = jax.tree.map(np.asarray, params)
        with _local_checkpointer() as ckptr:
            ckptr.save(tmp / "params", params)
        with open(tmp / "config.json", "w") as f:
            json.dump(config or {}, f, indent=1, sort_keys=True, default=str)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_params(path: str | os.PathLike) -> tuple[Any, dict]:
    """Read a folder written by `save_params`: (params as numpy arrays, config dict)."""
    path = Path(path).absolute()
    if not (path / "params").exists():
        raise FileNotFoundError(
            f"{path} holds no converted params (expected {path}/params from a convert.* command)"
        )
    with ocp.PyTreeCheckpointer() as ckptr:
        params = ckptr.restore(path / "params")
    cfg = {}
    if (path / "config.json").exists():
        with open(path / "config.json") as f:
            cfg = json.load(f)
    return params, cfg
