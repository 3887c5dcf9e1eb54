"""Generation jobs: parsing (flags or JSONL), validation before any compute, resumable sweeps.

A job is one video: either stems (one audio file per source) or a mixture plus one text query per
source, boxes (a preset name or one box per source), a seed, N_D and an output name. Every
field's type is checked when a job is read. Sweeps write each job's outputs atomically; a job is
finished when its `.json` records the hash of its current inputs and settings
(`generation.identity`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class JobError(ValueError):
    """A job is malformed; the message names the job and the problem (`job`, `field`: the job's
    name and the field at fault, where known: a sweep records them in its failures file)."""

    def __init__(self, message: str, *, job: str | None = None, field: str | None = None):
        super().__init__(message)
        self.job = job
        self.field = field


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


_STR_LISTS = ("audio", "queries")
_OPTIONAL_STR = ("mixture", "query_embeddings", "prompt", "checkpoint")


def _field_error(index: int | None, name: Any, field: str, want: str, got: Any) -> JobError:
    if index is None:  # a Job built in code (not read from a file): its name is its label
        index, label = 0, f"job {name}"
    else:
        label = f"job {index} ({name})" if isinstance(name, str) else f"job {index}"
    return JobError(
        f"{label}: field {field!r} must be {want}, got {got!r}",
        job=name if isinstance(name, str) else f"job{index:04d}",
        field=field,
    )


def _check_types(d: dict[str, Any], index: int | None) -> None:
    """Every field's type, before anything is read (a JSONL job's values are whatever JSON
    gave)."""
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise _field_error(index, name, "name", "a non-empty string", name)
    for f in _STR_LISTS:
        v = d.get(f, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise _field_error(index, name, f, "a list of strings", v)
    for q in d.get("queries", []):
        if not q.strip():
            raise _field_error(index, name, "queries", "non-empty text queries", q)
    for f in _OPTIONAL_STR:
        v = d.get(f)
        if v is not None and (not isinstance(v, str) or not v):
            raise _field_error(index, name, f, "a non-empty string or null", v)
    for f, optional in (("seed", False), ("n_d", True)):
        v = d.get(f, 0)
        if (v is None and not optional) or (
            v is not None and (isinstance(v, bool) or not isinstance(v, int))
        ):
            raise _field_error(index, name, f, "an integer" + (" or null" if optional else ""), v)
    if not 0 <= d.get("seed", 0) < 2**32:
        raise _field_error(index, name, "seed", "in [0, 2**32)", d["seed"])
    boxes = d.get("boxes")
    if boxes is not None and not isinstance(boxes, (str, list)):
        raise _field_error(index, name, "boxes", "a preset name or a list of boxes", boxes)


def job_from_dict(d: dict[str, Any], index: int = 0) -> Job:
    """A `Job` from a JSON object, every field's type checked (JobError names the field)."""
    known = {f.name for f in dataclasses.fields(Job)}
    unknown = sorted(set(d) - known)
    d = dict(d)
    d.setdefault("name", f"job{index:04d}")
    if unknown:
        name = d["name"] if isinstance(d["name"], str) else f"job{index:04d}"
        raise JobError(
            f"job {index} ({name}): unknown field(s) {unknown}; known: {sorted(known)}",
            job=name,
            field=unknown[0],
        )
    for f in _STR_LISTS:
        if isinstance(d.get(f), str):
            d[f] = [d[f]]
    _check_types(d, index)
    boxes = d.get("boxes")
    if isinstance(boxes, list) and boxes and isinstance(boxes[0], str):
        try:
            d["boxes"] = [parse_box(b) for b in boxes]
        except JobError as e:
            raise JobError(f"job {index} ({d['name']}): {e}", job=d["name"], field="boxes") from e
    return Job(**d)


def read_jobs(path: str | os.PathLike, failures: list[JobError] | None = None) -> list[Job]:
    """Read a JSONL file of jobs (blank lines and lines starting with '#' are skipped).

    A line that is not a valid job raises JobError; with a `failures` list it is appended there
    instead (the job's name and field on the error) and the other jobs are still returned."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"jobs file not found: {path}")
    jobs, k = [], 0  # k: the job's index among the file's jobs (its default name)
    for i, line in enumerate(path.read_text().splitlines()):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k += 1
        try:
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise JobError(
                    f"{path}:{i + 1}: not valid JSON ({e.msg})", job=f"line{i + 1}"
                ) from e
            if not isinstance(d, dict):
                raise JobError(f"{path}:{i + 1}: a job must be a JSON object", job=f"line{i + 1}")
            jobs.append(job_from_dict(d, k - 1))
        except JobError as e:
            if failures is None:
                raise
            failures.append(e)
    names = [j.name for j in jobs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise JobError(f"{path}: duplicate job names {dup}; each output name must be unique")
    return jobs


def check_job_files(job: Job) -> None:
    """Structural checks that need no model: field types, sources given, files exist, names are
    safe."""
    _check_types(job.to_json(), None)
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
            raise JobError(
                f"job {job.name}: audio file not found: {p}", job=job.name, field="audio"
            )
    if job.query_embeddings and not Path(job.query_embeddings).is_file():
        raise JobError(
            f"job {job.name}: query embeddings not found: {job.query_embeddings}",
            job=job.name,
            field="query_embeddings",
        )
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


def split_for_process(jobs: Sequence[Job], process_index: int, process_count: int) -> list[Job]:
    """Jobs of one process in a multi-process sweep: round-robin, no overlap, no gaps."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return [j for i, j in enumerate(jobs) if i % process_count == process_index]
