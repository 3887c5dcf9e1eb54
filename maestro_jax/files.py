"""Writing files so that nothing is lost or half-written: every writer puts a temporary file (or
folder) next to its destination and renames it into place, so a reader sees the old content or
the new one, never a mix. New files get the usual permissions (0666 & ~umask), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


def umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only be read
    by setting it, which races with other threads creating files)."""
    from maestro_jax.procfs import proc_field

    value = proc_field("/proc/self/status", "Umask")
    if value is not None:
        return int(value, 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """0777 (folders) or 0666 (files) less the umask: what `mkdir` / `open` would give."""
    return (0o777 if folder else 0o666) & ~umask()


def chmod_default(path: str | os.PathLike, folder: bool = False) -> None:
    """Give `path` the mode a plain `open` (or `mkdir`) would have given it (tempfile's mkstemp
    makes 0600 files and mkdtemp 0700 folders whatever the umask)."""
    os.chmod(path, default_mode(folder))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.",
        suffix=suffix if suffix is not None else path.suffix,
        dir=path.parent,
    )
    os.close(fd)
    tmp = Path(tmp)
    chmod_default(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    return str(o)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented, key-sorted JSON atomically (numpy values and paths allowed)."""
    return write_text(
        path, json.dumps(data, indent=1, sort_keys=True, default=_json_default) + "\n"
    )


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSON-lines file ([] when it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append one JSON line per row (an append of whole lines; readers skip a cut last line)."""
    rows = list(rows)
    if rows:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True, default=_json_default) + "\n")


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


def make_dir(path: str | os.PathLike) -> Path:
    """`mkdir -p` with the user's umask (unlike tempfile.mkdtemp's 0700)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
