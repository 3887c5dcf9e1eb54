"""The output folder of a generation run: checked writable before any compute, held by one
writer at a time (a lock file), cleared of the temporary files an interrupted run left, and the
run's failures recorded in it.

Only the folder the user named (and the jobs' own outputs in it) is read or written here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from maestro_jax.files import write_json
from maestro_jax.generation.jobs import InputError, JobError

LOCK_NAME = ".maestro_generate.lock"
# the temporary names `files.atomic_path` and the WAV writers make: '.<stem>.<8 random>.<ext>'
# or '.<name>.<8 random>.tmp' (tempfile's random part is 8 characters of [a-z0-9_])
_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")


def check_outdir(outdir: Path, flag: str = "--outdir") -> None:
    """Raise InputError unless `outdir` is a folder this process can write, or can be made (its
    nearest existing parent is a writable folder). Makes nothing."""
    p = Path(outdir)
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {p} is a file, not a folder")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{flag} {p}: {probe} is a file, so the folder cannot be made")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is" if probe == p else f"cannot be made: {probe} is"
        raise InputError(f"{flag} {p} {what} not writable")


@contextlib.contextmanager
def locked(outdir: Path, name: str = LOCK_NAME, flag: str = "--outdir") -> Iterator[Path]:
    """Hold `outdir`'s lock file while the block runs (the folder is made first). A second
    writer is refused at once (InputError naming the holder's pid) rather than overwriting the
    same job names; the lock file is removed when released, and a lock left by a killed process
    is free (the kernel drops flock locks with their process)."""
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / name
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InputError(
                f"{flag} {outdir} is being written by another run (pid {holder}); wait for it "
                "to finish or choose another --outdir"
            ) from None
        # the file may have been removed by its previous holder after we opened it: retry
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def clean_temp_files(outdir: Path, names: Sequence[str]) -> list[Path]:
    """Remove the temporary files a killed run left for the jobs `names` (in `outdir` and their
    stems folders); call with the folder's lock held. Returns what was removed."""
    removed = []
    folders = [outdir, *(outdir / f"{n}_stems" for n in names)]
    prefixes = tuple(f".{n}." for n in names)
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            stemmed = folder != outdir or p.name.startswith(prefixes)
            if p.is_file() and stemmed and _TEMP.match(p.name) and p.name != LOCK_NAME:
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def failure_row(e: Exception, job: str) -> dict:
    """{job, field, reason} of one failed job."""
    field = getattr(e, "field", None) if isinstance(e, JobError) else None
    return {"job": getattr(e, "job", None) or job, "field": field, "reason": str(e)}


def failures_path(outdir: Path, process_index: int = 0, process_count: int = 1) -> Path:
    suffix = "" if process_count == 1 else f".p{process_index}"
    return outdir / f"failures{suffix}.json"


def record_failures(path: Path, rows: Sequence[dict]) -> None:
    """Write this run's failures (a list of {job, field, reason}) to `path`, or remove a previous
    run's file when nothing failed (the folder is not made for that)."""
    if rows:
        write_json(path, list(rows))
    else:
        path.unlink(missing_ok=True)
