"""A generation job's identity: a hash of everything that determines its outputs.

The hash covers the bytes of every input file (stems, mixture, query embeddings), the job's
other fields (boxes, queries, prompt, seed, N_D; not its output name), every setting of the
config that can change a pixel (all of them but the output folder and the compilation cache),
and the identity of every weights folder the job reads (each file's relative path, size and
modification time: hashing many gigabytes of weights on every run would cost minutes). A job is
finished when its `.json` records the same hash and its `.mp4` exists; any other change makes a
rerun regenerate it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from maestro_jax.generation.jobs import Job, output_paths

# config fields that cannot change a job's outputs
_NOT_OUTPUT = ("outdir", "compilation_cache")
# config fields naming weights folders (their identity is hashed, not only their path)
WEIGHT_FIELDS = (
    "checkpoint",
    "imagebind_checkpoint",
    "cim_checkpoint",
    "separator_checkpoint",
    "clap_tokenizer_dir",
    "bpe_path",
)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_identity(path: str | os.PathLike) -> str:
    """A hash of a weights file or folder's listing: every file's relative path, size and
    modification time ('' for an empty path, 'missing' for one that does not exist)."""
    if not path:
        return ""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    if not p.is_dir():
        return "missing"
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def settings_identity(cfg) -> dict[str, Any]:
    """The config's output-relevant settings and the identity of its weights folders (computed
    once per run; `job_hash` adds each job's own part)."""
    settings = json.loads(cfg.to_json_best_effort())
    for k in _NOT_OUTPUT:
        settings.pop(k, None)
    weights = {k: folder_identity(cfg.get(k, "")) for k in WEIGHT_FIELDS}
    return {"settings": settings, "weights": weights}


def job_hash(job: Job, run_identity: dict[str, Any]) -> str:
    """sha256 of the job's inputs' bytes, its fields (not its name) and `run_identity`
    (`settings_identity(cfg)`)."""
    fields = job.to_json()
    fields.pop("name")
    fields["audio"] = [file_digest(p) for p in job.audio]
    for k in ("mixture", "query_embeddings"):
        if fields[k]:
            fields[k] = file_digest(fields[k])
    if job.checkpoint:
        fields["checkpoint"] = folder_identity(job.checkpoint)
    blob = json.dumps({"job": fields, **run_identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def recorded_hash(outdir: str | os.PathLike, name: str) -> str | None:
    """The hash a finished job's `.json` records (None: no finished outputs, or outputs written
    before hashes were recorded, or an unreadable `.json`)."""
    paths = output_paths(outdir, name)
    if not (paths["json"].is_file() and paths["video"].is_file()):
        return None
    try:
        return json.loads(paths["json"].read_text()).get("job_hash")
    except (OSError, ValueError, AttributeError):
        return None


def outputs_exist(outdir: str | os.PathLike, name: str) -> bool:
    paths = output_paths(outdir, name)
    return paths["json"].exists() or paths["video"].exists()
