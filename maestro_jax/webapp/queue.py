"""The web app's job queue: one worker thread runs one job at a time on the device; every tab
sees the queue; a job is cancelled while queued (removed) or while sampling (the sampler's
progress callback raises at the next DDIM step). A tab may hold one unfinished job at a time.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

STAGES = {
    "queued": "waiting for the device",
    "load": "loading the weights",
    "prepare": "separating / encoding the audio",
    "sample": "sampling",
    "decode": "decoding the frames",
    "write": "writing the video",
}


class Cancelled(Exception):
    """Raised from the sampler's callback when the running job is cancelled."""


class Busy(ValueError):
    """The tab already has a job that has not finished."""


@dataclasses.dataclass
class Entry:
    id: str
    client: str
    payload: Any  # what the runner needs (the job and its config)
    summary: dict  # what the page shows (sources, boxes, settings)
    state: str = "queued"  # queued | running | done | failed | cancelled
    stage: str = "queued"
    step: int = 0
    steps: int = 0
    n_d: int = 0
    message: str = ""
    result: dict = dataclasses.field(default_factory=dict)
    created: float = dataclasses.field(default_factory=time.time)
    started: float = 0.0
    finished: float = 0.0
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def view(self, position: int | None = None) -> dict:
        phase = ""
        if self.stage == "sample" and self.steps:
            phase = "Object Locating" if self.step < self.n_d else "Mosaic Denoising"
        return {
            "id": self.id, "state": self.state, "stage": self.stage,
            "stage_text": STAGES.get(self.stage, self.stage), "phase": phase,
            "step": self.step, "steps": self.steps, "position": position,
            "message": self.message, "result": self.result, "summary": self.summary,
            "seconds": round((self.finished or time.time()) - (self.started or self.created), 1),
        }  # fmt: skip


class Progress:
    """The hook `generation.runner.run` reports to. One object for the queue's lifetime, so the
    sampler compiled with its `step` callback is reused by every job."""

    def __init__(self) -> None:
        self.entry: Entry | None = None

    def stage(self, name: str, jobs: list[str]) -> None:
        e = self.entry
        if e is not None:
            if e.cancel.is_set():
                raise Cancelled(e.id)
            e.stage = name
            e.step = 0

    def step(self, i) -> None:
        e = self.entry
        if e is None:
            return
        if e.cancel.is_set():
            raise Cancelled(e.id)
        e.step = int(i) + 1


class JobQueue:
    """FIFO of `Entry`s run by `runner(entry, progress)` on one worker thread. `runner` returns
    the result dict (files, command) or raises; a cancelled job's exception is reported as
    cancelled, whatever the sampler wrapped it in."""

    def __init__(self, runner: Callable[[Entry, Progress], dict], keep: int = 200) -> None:
        self._runner = runner
        self._lock = threading.Condition()
        self._waiting: collections.deque[Entry] = collections.deque()
        self._entries: dict[str, Entry] = {}
        self._keep = keep
        self.progress = Progress()
        self._stop = False
        self._thread = threading.Thread(target=self._work, name="maestro-app-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ tabs
    def submit(self, entry: Entry) -> int:
        """Queue `entry`; returns its position (0 = runs next). Busy if its tab has a job."""
        with self._lock:
            mine = [e for e in self._entries.values() if e.client == entry.client and e.active]
            if mine:
                raise Busy(
                    f"this tab's job {mine[0].id} is still {mine[0].state}: wait for it or "
                    "cancel it first"
                )
            self._entries[entry.id] = entry
            self._waiting.append(entry)
            self._trim()
            self._lock.notify_all()
            return len(self._waiting) - 1

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            e = self._entries.get(job_id)
            if e is None or not e.active:
                return False
            e.cancel.set()
            if e.state == "queued":
                self._waiting.remove(e)
                self._finish(e, "cancelled", "cancelled before it started")
            return True

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            e = self._entries.get(job_id)
            return None if e is None else e.view(self._position(e))

    def snapshot(self) -> list[dict]:
        """The running job, then the waiting ones in order (what every tab's queue shows)."""
        with self._lock:
            running = [e for e in self._entries.values() if e.state == "running"]
            return [e.view(self._position(e)) for e in [*running, *self._waiting]]

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing runs or waits (tests, shutdown)."""
        end = time.time() + timeout
        with self._lock:
            while any(e.active for e in self._entries.values()):
                left = end - time.time()
                if left <= 0:
                    return False
                self._lock.wait(min(left, 0.1))
            return True

    def close(self) -> None:
        with self._lock:
            self._stop = True
            for e in list(self._waiting):
                self._finish(e, "cancelled", "the app stopped")
            self._waiting.clear()
            if self.progress.entry is not None:
                self.progress.entry.cancel.set()
            self._lock.notify_all()

    # ------------------------------------------------------------------ worker
    def _position(self, e: Entry) -> int | None:
        return self._waiting.index(e) if e in self._waiting else None

    def _finish(self, e: Entry, state: str, message: str = "") -> None:
        e.state, e.message, e.finished = state, message, time.time()
        self._lock.notify_all()

    def _trim(self) -> None:
        done = [e for e in self._entries.values() if not e.active]
        for e in done[: max(0, len(self._entries) - self._keep)]:
            del self._entries[e.id]

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stop:
                    self._lock.wait()
                if self._stop:
                    return
                e = self._waiting.popleft()
                e.state, e.started = "running", time.time()
                self.progress.entry = e
            try:
                result = self._runner(e, self.progress)
                state, msg = "done", ""
            except Exception as exc:  # noqa: BLE001 - reported in the page; the app serves on
                result = {}
                if e.cancel.is_set():
                    state, msg = "cancelled", "cancelled while running"
                else:
                    state, msg = "failed", _one_line(exc)
                    traceback.print_exc()
            with self._lock:
                self.progress.entry = None
                e.result = result
                self._finish(e, state, msg)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]
