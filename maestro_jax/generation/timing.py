"""Seconds per phase of a generation run, and how many of them went into compiling.

Compile time is the time covered by what JAX reports through `jax.monitoring` while a phase runs
(tracing, lowering and the backend compile; nested jits report their tracing inside the outer
one, so the union of the reported intervals is counted; a persistent-cache hit reports no
backend compile), so a phase's run time is its wall time less its compile time: `s_per_step` is
the sampling phase's run time per DDIM step.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator

import jax

_COMPILE_EVENTS = "/jax/core/compile/"


def _covered(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class Stopwatch:
    def __init__(self) -> None:
        self.wall: dict[str, float] = collections.defaultdict(float)
        self.compile: dict[str, float] = collections.defaultdict(float)
        self.steps = 0  # DDIM steps run in the 'sample' phase (one per step of each call)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; block on its results inside it (JAX dispatches asynchronously)."""
        spans: list[tuple[float, float]] = []

        def listen(event: str, seconds: float, **_: object) -> None:
            if event.startswith(_COMPILE_EVENTS):
                end = time.perf_counter()
                spans.append((end - seconds, end))

        jax.monitoring.register_event_duration_secs_listener(listen)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.wall[name] += time.perf_counter() - t0
            jax.monitoring.unregister_event_duration_listener(listen)
            self.compile[name] += _covered(spans)

    def summary(self) -> dict[str, float]:
        """{load_s, compile_s, sample_s, s_per_step, decode_s, ...}: wall seconds per phase,
        compile seconds over all phases, and the sampling run time per DDIM step."""
        out = {f"{k}_s": round(v, 3) for k, v in self.wall.items()}
        out["compile_s"] = round(sum(self.compile.values()), 3)
        if self.steps:
            run = self.wall["sample"] - self.compile["sample"]
            out["s_per_step"] = round(run / self.steps, 3)
        return out
