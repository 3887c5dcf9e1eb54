"""Generate videos: Maestro (stems or a mixture + queries, with boxes) or plain text-to-video.

One job from flags:
  python -m maestro_jax.generate --config=configs/generate.py:runlocal \
      --audio A.wav --audio B.wav --boxes LR --outdir DIR
  python -m maestro_jax.generate --config=configs/generate.py:runlocal \
      --audio A.wav --audio B.wav --box 0,.3,.5,.7 --box .5,.3,1,.7 --outdir DIR
  python -m maestro_jax.generate --config=configs/generate.py:runlocal \
      --mixture mix.wav --query "dog barking" --query "cat meowing" --boxes LR --outdir DIR
  python -m maestro_jax.generate --config=configs/t2v.py:runlocal --prompt "a dog barking"

A sweep (one JSON object per line; fields: name, audio [..] | mixture + queries [..] |
prompt, boxes ("LR" | [[l,t,r,b], ...] | ["l,t,r,b", ...] | keyframed "pos:l,t,r,b;..."),
seed, n_d, checkpoint (a CIM folder, for N_Q sweeps)):
  python -m maestro_jax.generate --config=configs/generate.py:runlocal --jobs jobs.jsonl \
      --outdir DIR

Per job, DIR gets NAME.mp4 (the mixture muxed in, trimmed to the video), NAME.png (contact sheet
with the boxes drawn) and NAME.json (the exact settings, the warnings, and `job_hash`: a hash of
the inputs' bytes, the job's fields, every setting and the weights folders' identity), each
written atomically; the .json is written last. A rerun skips a job only when its .json records
the same hash (an interrupted sweep resumes; a changed input, box, seed or setting regenerates
the job, or with --keep_existing is refused). The one-job form names its outputs after its
inputs (the stems' or the mixture's file names) unless --name is given. Mixture jobs also keep
their separated stems in NAME_stems/.

Every flag, setting and job field is checked before any weights load (one `error:` line naming
it; exit 2 in the one-job form). In a sweep a job that fails (a bad field, or anything during
separation, sampling, decoding or writing) is reported, recorded in DIR/failures.json (job,
field, reason) and skipped: the exit status is 1 when any job failed. DIR must be writable
(checked first); one run writes it at a time (DIR/.maestro_generate.lock: a second run is
refused), and the temporary files of a killed run are removed by the next one.

Several processes (hosts or GPUs; MAESTRO_COORDINATOR / MAESTRO_NUM_PROCESSES /
MAESTRO_PROCESS_ID, or MAESTRO_DISTRIBUTED=1 for JAX's auto-detection, see
`maestro_jax.distributed`): every process reads the same --jobs file and runs job i when
i % process_count == process_index (no overlap, no gaps) on its own devices into the shared
--outdir; a rerun skips finished jobs, with any process count. Each process's exit status
covers its own jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from absl import flags
from ml_collections import config_flags

from maestro_jax import cli
from maestro_jax.generation.jobs import Job, JobError
from maestro_jax.generation.runner import InputError, enable_compilation_cache, run

_CONFIG = config_flags.DEFINE_config_file("config", "configs/generate.py", "generation config")
_AUDIO = flags.DEFINE_multi_string("audio", [], "a source's audio file (one per source)")
_MIXTURE = flags.DEFINE_string("mixture", None, "a mixture to separate (with --query)")
_QUERY = flags.DEFINE_multi_string("query", [], "text query per source of --mixture")
_QEMB = flags.DEFINE_string("query_embeddings", None, ".npz of precomputed query embeddings")
_PROMPT = flags.DEFINE_string("prompt", None, "text prompt (plain text-to-video)")
_BOXES = flags.DEFINE_string("boxes", None, "box preset (LR | TD) or per-source boxes 'a/b'")
_BOX = flags.DEFINE_multi_string("box", [], "one source's box l,t,r,b (or keyframed)")
_JOBS = flags.DEFINE_string("jobs", None, "JSONL file of jobs (a sweep)")
_OUTDIR = flags.DEFINE_string("outdir", None, "output folder (default: config.outdir)")
_NAME = flags.DEFINE_string(
    "name", None, "output name of a one-job run (default: after its input files)"
)
_KEEP = flags.DEFINE_bool(
    "keep_existing",
    False,
    "refuse jobs whose outputs exist from other inputs or settings (default: regenerate them)",
)
_SEED = flags.DEFINE_integer("seed", None, "seed of a one-job run (default: config.seed)")
_ND = flags.DEFINE_integer("n_d", None, "Object Locating steps of a one-job run")


# ----------------------------------------------------------------------------- jobs
def name_from_inputs(paths: list[str], queries: list[str] = ()) -> str:
    """A one-job run's output name: its input files' names (and the mixture's queries)."""
    parts = [Path(p).stem for p in paths] + list(queries)
    slug = "_".join("".join(ch if ch.isalnum() or ch in "-." else "_" for ch in s) for s in parts)
    return slug[:80].strip("._") or "maestro"


def jobs_from_flags(cfg, failures: list | None = None) -> list[Job]:
    if _JOBS.value:
        if _AUDIO.value or _MIXTURE.value or _PROMPT.value:
            raise InputError("--jobs cannot be combined with --audio/--mixture/--prompt")
        from maestro_jax.generation.jobs import read_jobs

        return read_jobs(_JOBS.value, failures)
    boxes: Any = None
    if _BOX.value:
        if _BOXES.value:
            raise InputError("give either --boxes or --box, not both")
        boxes = list(_BOX.value)
    elif _BOXES.value:
        boxes = _BOXES.value
    for q in _QUERY.value:
        if not q.strip():
            raise InputError("--query: an empty query; give one text query per source")
    name = _NAME.value
    if name is None:
        if _PROMPT.value:
            name = "t2v_" + "".join(ch if ch.isalnum() else "_" for ch in _PROMPT.value)[:40]
        elif _MIXTURE.value:
            name = name_from_inputs([_MIXTURE.value], list(_QUERY.value))
        else:
            name = name_from_inputs(list(_AUDIO.value))
    return [
        Job(
            name=name,
            audio=list(_AUDIO.value),
            mixture=_MIXTURE.value,
            queries=list(_QUERY.value),
            query_embeddings=_QEMB.value,
            prompt=_PROMPT.value,
            boxes=boxes,
            seed=cfg.seed if _SEED.value is None else _SEED.value,
            n_d=_ND.value,
        )
    ]


def main(argv):
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    cfg = _CONFIG.value
    from maestro_jax import distributed

    multi = distributed.maybe_initialize()  # before anything touches a device
    enable_compilation_cache(cfg.compilation_cache)
    outdir = Path(_OUTDIR.value or cfg.outdir)
    try:
        failures: list[JobError] = []
        jobs = jobs_from_flags(cfg, failures)
        if not jobs and not failures:
            raise InputError("no jobs: give --audio, --mixture + --query, --prompt or --jobs")
        return run(
            cfg, jobs, outdir, strict=not _JOBS.value, keep_existing=_KEEP.value,
            failures=failures,
        )  # fmt: skip
    except (InputError, JobError) as e:
        return cli.error(str(e))
    finally:
        if multi:  # the coordinator (process 0) must outlive the others' work
            distributed.barrier("maestro_generate_done")


if __name__ == "__main__":
    cli.run(main)
