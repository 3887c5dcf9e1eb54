"""Run a command in a child process and measure it: peak RSS, wall time, bytes written.

Library code for `benchmarks/real_size.py` (it defines no flags, so tests import it freely).

- peak RSS: the child's `ru_maxrss` from `os.wait4` (Linux: the largest resident set of the child
  or of any descendant it waited for), i.e. what `/usr/bin/time -v` reports as "Maximum resident
  set size". Resident pages of memory-mapped files count, as they do for the out-of-memory killer.
- an optional watchdog samples the RSS of the child's whole process group and kills the group when
  it passes `max_rss_bytes` (so a command that would exhaust a shared machine is stopped first).
- bytes written: files under `watch_dir` that are new or changed after the command.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

GB = 1e9


@dataclasses.dataclass
class Result:
    name: str
    command: str
    returncode: int | None
    peak_rss_bytes: int
    wall_s: float
    written_bytes: int
    killed_over_bytes: int | None = None  # set when the watchdog stopped it

    @property
    def status(self) -> str:
        if self.killed_over_bytes is not None:
            return f"stopped: RSS over {self.killed_over_bytes / GB:.1f} GB"
        if self.returncode is None:
            return "not run"
        if self.returncode < 0:
            sig = -self.returncode
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig
            hint = " (out of memory?)" if sig == signal.SIGKILL else ""
            return f"killed by {name}{hint}"
        return "ok" if self.returncode == 0 else f"exit {self.returncode}"


def _files(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    if not root.exists():
        return out
    for dirpath, dirs, names in os.walk(root):
        if dirpath == str(root) and ".logs" in dirs:
            dirs.remove(".logs")  # real_size.py's command logs
        for n in names:
            p = os.path.join(dirpath, n)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def written_since(before: dict[str, tuple[int, int]], root: Path) -> int:
    """Bytes of the files under `root` that are not in `before` or differ from it."""
    return sum(s for p, (s, m) in _files(root).items() if before.get(p) != (s, m))


def _group_rss(pgid: int) -> int:
    """Sum of VmRSS over the processes of process group `pgid` (0 if none can be read)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            with open(f"/proc/{entry.name}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            continue
    return total


def run_measured(
    name: str,
    argv: Sequence[str] | str,
    *,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    watch_dir: str | os.PathLike | None = None,
    log_path: str | os.PathLike | None = None,
    max_rss_bytes: int | None = None,
    poll_s: float = 0.2,
) -> Result:
    """Run `argv` (a list, or a string for `sh -c`) and measure it; never raises on failure."""
    shell = isinstance(argv, str)
    watch = Path(watch_dir) if watch_dir is not None else None
    before = _files(watch) if watch is not None else {}
    log = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL
    killed: list[int] = []
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, shell=shell, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        done = threading.Event()

        def watchdog() -> None:
            while not done.wait(poll_s):
                if _group_rss(proc.pid) > max_rss_bytes:
                    killed.append(max_rss_bytes)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    return

        thread = None
        if max_rss_bytes is not None:
            thread = threading.Thread(target=watchdog, daemon=True)
            thread.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            done.set()
            if thread is not None:
                thread.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log is not subprocess.DEVNULL:
            log.close()
    wall = time.monotonic() - t0
    return Result(
        name=name,
        command=argv if shell else " ".join(map(str, argv)),
        returncode=proc.returncode,
        peak_rss_bytes=int(usage.ru_maxrss) * 1024,  # Linux: kilobytes
        wall_s=wall,
        written_bytes=written_since(before, watch) if watch is not None else 0,
        killed_over_bytes=killed[0] if killed else None,
    )


def format_table(results: Sequence[Result]) -> str:
    """One markdown table: command, peak RSS (GB), wall (s), written (GB), status."""
    lines = [
        "| command | peak RSS (GB) | wall (s) | written (GB) | status |",
        "|---|---:|---:|---:|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.peak_rss_bytes / GB:.2f} | {r.wall_s:.1f} | "
            f"{r.written_bytes / GB:.2f} | {r.status} |"
        )
    return "\n".join(lines)
