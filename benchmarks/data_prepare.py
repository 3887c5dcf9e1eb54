"""data.prepare throughput: clips per second of the Beam pipeline (DirectRunner, N worker
processes) against a process pool running the same work units (what data.prepare did before it
ran on Beam: spawned processes over `prepare_unit`, then the same commit step), on the same
synthetic videos; checks that both wrote the same records (bytes) in the same order.

    python benchmarks/data_prepare.py [--videos 24] [--workers 2] [--size 144x256] [--fps 8] \
        [--resolution 128] [--files_per_part 2] [--ways serial,pool,beam] [--json FILE]

Needs the `.[data]` extra (apache-beam). Prints a markdown table.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from absl import flags

from maestro_jax import cli

_VIDEOS = flags.DEFINE_integer("videos", 24, "synthetic 10.5 s videos (h264 + AAC audio)")
_FPS = flags.DEFINE_float("fps", 8.0, "their frame rate")
_WORKERS = flags.DEFINE_integer("workers", 2, "worker processes (pool and DirectRunner)")
_SIZE = flags.DEFINE_string("size", "144x256", "video frame size HxW")
_RESOLUTION = flags.DEFINE_integer("resolution", 128, "record frame size")
_FILES_PER_PART = flags.DEFINE_integer("files_per_part", 2, "source files per work unit")
_WAYS = flags.DEFINE_list(
    "ways", "serial,pool,beam", "serial: one process runs every unit; pool; beam (DirectRunner)"
)
_JSON = flags.DEFINE_string("json", None, "write the results here")
_WORKDIR = flags.DEFINE_string("workdir", None, "keep the videos and outputs here")


def _worker_init() -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def run_pool(src: Path, out: Path, opts, files_per_part: int, workers: int) -> None:
    """The pre-Beam way: plan, run the units in spawned processes, then the commit step."""
    from maestro_jax.data import beam_pipelines as BP
    from maestro_jax.data import prepare as P
    from maestro_jax.data import sources
    from maestro_jax.data.tfds_format import load_parts

    out.mkdir(parents=True, exist_ok=True)
    jobs, classes, problems = sources.discover(src, "landscape")
    BP._check_config(out, opts, classes, "landscape")
    units = P.plan_units(jobs, files_per_part, load_parts(out))
    if workers <= 1:
        for u in units:
            P.prepare_unit(u, out, opts)
    else:
        ctx = multiprocessing.get_context("spawn")  # JAX is not fork-safe
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_worker_init
        ) as pool:
            for f in [pool.submit(P.prepare_unit, u, str(out), opts) for u in units]:
                f.result()
    P.finish(out, opts, problems)


def run_beam(src: Path, out: Path, opts, files_per_part: int, workers: int) -> None:
    from maestro_jax.data import beam_pipelines as BP

    BP.prepare(
        src, out, "landscape", None, opts, files_per_part=files_per_part, num_workers=workers
    )


def read_output(out: Path) -> tuple[list[dict], list[bytes]]:
    """(manifest rows without part/shard names, the records' bytes) in manifest order."""
    from array_record.python import array_record_module as arm

    from maestro_jax.files import read_jsonl

    manifest = read_jsonl(out / "manifest.jsonl")
    recs = []
    for m in manifest:
        r = arm.ArrayRecordReader(str(out / "parts" / m["split"] / f"{m['part']}.array_record"))
        recs.append(r.read([m["row"]])[0])
        r.close()
    rows = [{k: v for k, v in m.items() if k not in ("part", "shard")} for m in manifest]
    return rows, recs


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return cli.error(f"unexpected arguments: {argv[1:]}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from maestro_jax.data.prepare import PrepOptions
    from maestro_jax.data.synthetic import make_synthetic_videos

    h, w = (int(v) for v in _SIZE.value.lower().split("x"))
    work = Path(_WORKDIR.value or tempfile.mkdtemp(prefix="bench_prepare_"))
    src = work / "videos"
    if not src.exists():
        make_synthetic_videos(
            src, _VIDEOS.value, size=(h, w), fps=_FPS.value, corrupt=False, num_classes=4
        )
    opts = PrepOptions(resolution=_RESOLUTION.value)
    n = _WORKERS.value
    ways = {
        "serial": ("one process", run_pool, 1),
        "pool": ("pool (spawned processes)", run_pool, n),
        "beam": ("Beam DirectRunner", run_beam, n),
    }
    bad = [w for w in _WAYS.value if w not in ways]
    if bad:
        return cli.error(f"unknown --ways {bad}; choose from {sorted(ways)}")
    runs = [ways[w] for w in _WAYS.value]
    results, ref = [], None
    for name, fn, workers in runs:
        out = work / f"out_{len(results)}"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        fn(src, out, opts, _FILES_PER_PART.value, workers)
        wall = time.perf_counter() - t0
        rows, recs = read_output(out)
        ref = ref or (rows, recs)
        results.append(
            {
                "impl": name,
                "workers": workers,
                "wall_s": round(wall, 2),
                "clips": len(recs),
                "clips_per_s": round(len(recs) / wall, 3),
                "same_records": recs == ref[1] and rows == ref[0],
            }
        )
    print(
        f"\n{_VIDEOS.value} synthetic videos {h}x{w}, 10.5 s at {_FPS.value:g} fps -> records at "
        f"{_RESOLUTION.value} px, {_FILES_PER_PART.value} files per unit; "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}\n"
    )
    print("| way | processes | wall s | clips | clips/s | records identical |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['impl']} | {r['workers']} | {r['wall_s']} | {r['clips']} | "
            f"{r['clips_per_s']} | {'yes' if r['same_records'] else 'NO'} |"
        )
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps(results, indent=1) + "\n")
    if not _WORKDIR.value:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["same_records"] for r in results) else 1


if __name__ == "__main__":
    cli.run(main)
