"""benchmarks/peak_rss.py (behind benchmarks/real_size.py): one child command measured and
tabled. Nothing about time is asserted."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peak_rss():
    spec = importlib.util.spec_from_file_location("peak_rss", REPO / "benchmarks" / "peak_rss.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("peak_rss", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_run_measured_and_table(peak_rss, tmp_path):
    code = (
        "import sys; from pathlib import Path\n"
        "buf = bytearray(200_000_000); buf[::4096] = b'x' * len(buf[::4096])\n"
        "Path(sys.argv[1], 'f.bin').write_bytes(b'y' * 1_000_000)\n"
    )
    # the child holds its peak for a while: when this (pytest) process is itself bigger than the
    # child, the child's ru_maxrss says nothing and only the watchdog's samples count
    held = code + "import time; time.sleep(0.5)\n"
    ok = peak_rss.run_measured(
        "alloc", [sys.executable, "-c", held, str(tmp_path)], watch_dir=tmp_path,
        log_path=tmp_path.parent / "alloc.log", poll_s=0.05,
    )  # fmt: skip
    assert ok.returncode == 0 and ok.status == "ok"
    assert ok.peak_rss_bytes >= 200_000_000
    assert ok.written_bytes == 1_000_000 and ok.wall_s > 0
    bad = peak_rss.run_measured("fails", "exit 3", watch_dir=tmp_path)
    assert bad.status == "exit 3" and bad.written_bytes == 0
    killed = peak_rss.run_measured(
        "big", [sys.executable, "-c", code + "import time; time.sleep(60)", str(tmp_path)],
        max_rss_bytes=100_000_000,
    )  # fmt: skip
    assert killed.status.startswith("stopped: RSS over 0.1 GB")
    table = peak_rss.format_table([ok, bad, killed]).splitlines()
    assert table[0].startswith("| command | peak RSS (GB) | wall (s) | written (GB) | status |")
    assert len(table) == 5 and table[2].startswith("| alloc | 0.2") and "exit 3" in table[3]


def test_shell_peak_and_timing_lines(peak_rss, tmp_path):
    """A `sh -c` command stopped by the watchdog still reports the RSS it reached (sampled over
    its process group), and `timing: {json}` lines become table columns."""
    code = "buf = bytearray(300_000_000); buf[::4096] = b'x' * len(buf[::4096]); import time; " \
        "time.sleep(60)"  # fmt: skip
    stopped = peak_rss.run_measured(
        "sh", f'{sys.executable} -c "{code}"; true', max_rss_bytes=200_000_000
    )
    assert stopped.status.startswith("stopped") and stopped.peak_rss_bytes >= 200_000_000
    log = tmp_path / "t.log"
    timed = peak_rss.run_measured(
        "timed", 'echo \'timing: {"compile_s": 12.5, "s_per_step": 3.25}\'', log_path=log
    )
    assert timed.timing == {"compile_s": 12.5, "s_per_step": 3.25}
    table = peak_rss.format_table([timed, stopped]).splitlines()
    assert table[0].endswith("| compile (s) | s / DDIM step |")
    assert table[2].endswith("| 12.5 | 3.2 |") and table[3].endswith("| | |")


def test_peak_is_the_childs_own(peak_rss):
    """Linux starts a child's ru_maxrss at its parent's peak: a small child of a big process
    still reports its own size."""
    big = bytearray(400_000_000)
    big[::4096] = b"x" * len(big[::4096])
    small = peak_rss.run_measured("small", [sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert 0 < small.peak_rss_bytes < 100_000_000
    del big


def test_peak_is_the_childs_own_when_this_process_grows_during_the_spawn(peak_rss, monkeypatch):
    """This process at its own peak, growing while it spawns (a test worker mid-run): the
    child's inherited `ru_maxrss` still does not count as the child's."""
    import subprocess

    grown = []
    real_popen = subprocess.Popen

    from maestro_jax.procfs import proc_kib

    def popen_after_growing(*args, **kwargs):
        # a new peak for this process, 200 MB over its previous one, just before the spawn
        rss, hwm = (proc_kib("/proc/self/status", k) for k in ("VmRSS", "VmHWM"))
        extra = bytearray(hwm - rss + 200_000_000)
        extra[::4096] = b"x" * len(extra[::4096])
        grown.append(extra)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(peak_rss.subprocess, "Popen", popen_after_growing)
    small = peak_rss.run_measured("small", [sys.executable, "-c", "import time; time.sleep(0.5)"])
    assert grown and 0 < small.peak_rss_bytes < 100_000_000
    del grown[:]
