"""Linux /proc files of `Key: value` lines (/proc/self/status, /proc/meminfo)."""

from __future__ import annotations


def proc_field(path: str, key: str) -> str | None:
    """The first word after `key:` in `path` (e.g. '1234' of 'VmHWM: 1234 kB'); None when the
    file cannot be read or has no such line."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return line.split()[1]
    except OSError:
        pass
    return None


def proc_kib(path: str, key: str) -> int | None:
    """A `kB` field of `path` in bytes, or None."""
    value = proc_field(path, key)
    return None if value is None else int(value) * 1024
