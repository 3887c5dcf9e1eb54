"""Run a command in a child process and measure it: peak RSS, wall time, bytes written.

Library code for `benchmarks/real_size.py` (it defines no flags, so tests import it freely).

- peak RSS: the child's `ru_maxrss` from `os.wait4` (Linux: the largest resident set of the child
  or of any descendant it waited for), i.e. what `/usr/bin/time -v` reports as "Maximum resident
  set size". Resident pages of memory-mapped files count, as they do for the out-of-memory killer.
- a watchdog samples the RSS of the child's whole process group every `poll_s`; the peak is the
  larger of `ru_maxrss` and the largest sample (a command stopped early, or run by `sh -c` that
  is killed before it waits for its child, still reports what it reached). Linux starts a
  child's `ru_maxrss` at the peak of the process that spawned it (the child shares its memory
  until exec), so when `ru_maxrss` is no larger than this process's own peak (read after the
  child ended, so growth of this process during the spawn counts too) it says nothing
  about the child and the samples alone count. With `max_rss_bytes`
  it kills the group when it passes that (so a command that would exhaust a shared machine is
  stopped first).
- timings a command reports itself: every stdout line `timing: {json}` (e.g. `maestro_jax.generate`
  prints its load / compile / per-step seconds) is merged into `Result.timing`.
- bytes written: files under `watch_dir` that are new or changed after the command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from maestro_jax.procfs import proc_kib

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
    timing: dict = dataclasses.field(default_factory=dict)  # the command's own `timing:` lines

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


def _cmdline(pid: int | str) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def _group_rss(pgid: int) -> int:
    """Sum of VmRSS over the processes of process group `pgid` (0 if none can be read). A process
    forked from this one that has not yet exec'd its command is left out (it shares, and so
    shows, all of this process's pages)."""
    total = 0
    mine = _cmdline("self")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid or _cmdline(entry.name) == mine:
                continue
        except OSError:
            continue
        total += proc_kib(f"/proc/{entry.name}/status", "VmRSS") or 0
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
        sampled = [0]

        def watchdog() -> None:
            while not done.wait(poll_s):
                sampled[0] = max(sampled[0], rss := _group_rss(proc.pid))
                if max_rss_bytes is not None and rss > max_rss_bytes:
                    killed.append(max_rss_bytes)
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    return

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
            thread.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        # this process's peak after the child ended: at least what the child inherited, even
        # when this process grew between a reading before the spawn and the spawn itself
        own_peak = proc_kib("/proc/self/status", "VmHWM") or 0
    finally:
        if log is not subprocess.DEVNULL:
            log.close()
    wall = time.monotonic() - t0
    return Result(
        name=name,
        command=argv if shell else " ".join(map(str, argv)),
        returncode=proc.returncode,
        peak_rss_bytes=_peak(int(usage.ru_maxrss) * 1024, sampled[0], own_peak),
        wall_s=wall,
        written_bytes=written_since(before, watch) if watch is not None else 0,
        killed_over_bytes=killed[0] if killed else None,
        timing=read_timing(log_path) if log_path is not None else {},
    )


def _peak(maxrss: int, sampled: int, own_peak: int) -> int:
    """The child's peak: `ru_maxrss` (bytes) when it passes what the child inherited, else the
    largest sample."""
    return max(maxrss, sampled) if maxrss > own_peak else sampled


def read_timing(log_path: str | os.PathLike) -> dict:
    """The merged `timing: {json}` lines of a command's log ({} if none)."""
    out: dict = {}
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        if line.startswith("timing: "):
            try:
                out.update(json.loads(line[len("timing: ") :]))
            except (json.JSONDecodeError, TypeError):
                continue
    return out


# the columns a command's own `timing:` lines add to the table: (key, header)
TIMING_COLUMNS = (("load_s", "load (s)"), ("compile_s", "compile (s)"),
                  ("s_per_step", "s / DDIM step"), ("decode_s", "decode (s)"))  # fmt: skip


def format_table(results: Sequence[Result]) -> str:
    """One markdown table: command, peak RSS (GB), wall (s), written (GB), status, then the
    `TIMING_COLUMNS` that any command reported."""
    cols = [(k, h) for k, h in TIMING_COLUMNS if any(k in r.timing for r in results)]
    lines = [
        "| command | peak RSS (GB) | wall (s) | written (GB) | status |"
        + "".join(f" {h} |" for _, h in cols),
        "|---|---:|---:|---:|---|" + "---:|" * len(cols),
    ]
    for r in results:
        extra = "".join(
            f" {r.timing[k]:.1f} |" if isinstance(r.timing.get(k), (int, float)) else " |"
            for k, _ in cols
        )
        lines.append(
            f"| {r.name} | {r.peak_rss_bytes / GB:.2f} | {r.wall_s:.1f} | "
            f"{r.written_bytes / GB:.2f} | {r.status} |" + extra
        )
    return "\n".join(lines)
