"""Generation jobs: parsing (flags or JSONL), validation before any compute, resumable sweeps.

A job is one video: either stems (one audio file per source) or a mixture plus one text query per
source, boxes (a preset name or one box per source), a seed, N_D and an output name. Sweeps write
each job's outputs atomically; a job whose `.json` exists is finished and is skipped on resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maestro_jax.video import atomic_path


class JobError(ValueError):
    """A job is malformed; the message names the job and the problem."""


class InputError(ValueError):
    """Bad input found before any compute (a flag, a file, a folder); the message names it."""


@dataclasses.dataclass
class Job:
    """One generation request. Exactly one of `audio` (stems) or `mixture`+`queries`, or `prompt`
    (plain text-to-video) is set."""

    name: str
    audio: list[str] = dataclasses.field(default_factory=list)
    mixture: str | None = None
    queries: list[str] = dataclasses.field(default_factory=list)
    query_embeddings: str | None = None
    prompt: str | None = None
    boxes: str | list[list[float]] | list[dict] | None = None
    seed: int = 0
    n_d: int | None = None
    checkpoint: str | None = None
    window: float | None = None  # seconds of audio per video (0: the whole audio)

    @property
    def num_sources(self) -> int:
        return len(self.audio) if self.audio else len(self.queries)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


def parse_box(text: str) -> list[float]:
    """'0,.3,.5,.7' -> [0.0, 0.3, 0.5, 0.7] (left, top, right, bottom, frame-relative)."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError as e:
        raise JobError(f"box {text!r} is not four comma-separated numbers") from e
    if len(vals) != 4:
        raise JobError(f"box {text!r} has {len(vals)} numbers; want left,top,right,bottom")
    return vals


def job_from_dict(d: dict[str, Any], index: int = 0) -> Job:
    known = {f.name for f in dataclasses.fields(Job)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise JobError(f"job {index}: unknown field(s) {unknown}; known: {sorted(known)}")
    d = dict(d)
    d.setdefault("name", f"job{index:04d}")
    if isinstance(d.get("audio"), str):
        d["audio"] = [d["audio"]]
    if isinstance(d.get("queries"), str):
        d["queries"] = [d["queries"]]
    boxes = d.get("boxes")
    if isinstance(boxes, list) and boxes and isinstance(boxes[0], str):
        d["boxes"] = [parse_box(b) for b in boxes]
    return Job(**d)


def read_jobs(path: str | os.PathLike) -> list[Job]:
    """Read a JSONL file of jobs (blank lines and lines starting with '#' are skipped)."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"jobs file not found: {path}")
    jobs = []
    for i, line in enumerate(path.read_text().splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise JobError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from e
        if not isinstance(d, dict):
            raise JobError(f"{path}:{i + 1}: a job must be a JSON object")
        jobs.append(job_from_dict(d, len(jobs)))
    names = [j.name for j in jobs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise JobError(f"{path}: duplicate job names {dup}; each output name must be unique")
    return jobs


def check_job_files(job: Job) -> None:
    """Structural checks that need no model: sources given, files exist, names are safe."""
    if not _NAME_OK.match(job.name):
        raise JobError(f"job {job.name!r}: name may only use letters, digits, '.', '_' and '-'")
    kinds = [bool(job.audio), bool(job.mixture), bool(job.prompt)]
    if sum(kinds) != 1:
        raise JobError(
            f"job {job.name}: give exactly one of stems (audio), a mixture with queries, or a prompt"
        )
    if job.mixture and not (job.queries or job.query_embeddings):
        raise JobError(f"job {job.name}: a mixture needs one text query per source (queries)")
    for p in list(job.audio) + ([job.mixture] if job.mixture else []):
        if not Path(p).is_file():
            raise JobError(f"job {job.name}: audio file not found: {p}")
    if job.n_d is not None and job.n_d < 0:
        raise JobError(f"job {job.name}: n_d must be >= 0, got {job.n_d}")


def output_paths(outdir: str | os.PathLike, name: str) -> dict[str, Path]:
    out = Path(outdir)
    return {
        "video": out / f"{name}.mp4",
        "sheet": out / f"{name}.png",
        "json": out / f"{name}.json",
        "stems": out / f"{name}_stems",
    }


def is_done(outdir: str | os.PathLike, name: str) -> bool:
    """A job is finished when its .json (written last) and its .mp4 both exist."""
    p = output_paths(outdir, name)
    return p["json"].is_file() and p["video"].is_file()


def write_json(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=_json_default) + "\n")
    return path


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


def split_for_process(jobs: Sequence[Job], process_index: int, process_count: int) -> list[Job]:
    """Jobs of one process in a multi-process sweep: round-robin, no overlap, no gaps."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return [j for i, j in enumerate(jobs) if i % process_count == process_index]
