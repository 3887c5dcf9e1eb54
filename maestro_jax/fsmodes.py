"""File modes that follow the user's umask.

`tempfile.mkstemp` creates files 0600 and `tempfile.mkdtemp` folders 0700 whatever the umask; the
atomic writers rename such temporaries into place, so they give them the usual modes first.
"""

from __future__ import annotations

import os

from maestro_jax.procfs import proc_field


def umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only be read
    by setting it, which races with other threads creating files)."""
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
    """Give `path` the mode a plain `open` (or `mkdir`) would have given it."""
    os.chmod(path, default_mode(folder))
