"""The Apache Beam pipelines of `data.prepare` and `data.curate` (the optional `.[data]` extra).

The same pipeline runs on one machine (DirectRunner: `direct_num_workers` processes) and on a
cluster (DataflowRunner, FlinkRunner, SparkRunner; the README's "Dataset preparation at scale").
The steps are library functions of `prepare` and `curate`; this module only wires them:

prepare: Create(units not yet committed) -> ParDo(PrepareUnitFn): each unit decodes and
    featurizes its sources and commits one part (`prepare.prepare_unit`); the rows of the files it
    could not read go to the `errors` side output -> one commit step (`prepare.finish`) after the
    last unit: TFDS folder, manifest and OUT/errors.jsonl.
curate: Create(manifest rows) -> BatchElements(batch_size) -> ParDo(ScoreFn): ImageBind
    similarities (the model loaded once per worker in `setup`, on the worker's default JAX device:
    its accelerator when it has one) -> one decision step (median rule and filters over all
    clips) -> ParDo(WriteCuratedPartFn): kept records copied byte for byte, one part per element
    -> one commit step (`curate.finish`).

Every path (input, output, checkpoints) must be readable and writable from every worker: local
folders with DirectRunner, a shared file system on a cluster.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

try:
    import apache_beam as beam
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "data.prepare and data.curate run on Apache Beam: pip install -e '.[data]'"
    ) from e

from maestro_jax.data import curate as curate_lib
from maestro_jax.data.prepare import FORMAT_FIELDS, PrepOptions, Unit, finish, plan_units
from maestro_jax.data.sources import discover
from maestro_jax.data.tfds_format import load_classes, load_features, load_parts
from maestro_jax.files import read_jsonl, write_json

log = logging.getLogger("maestro_jax.data.beam")

ERRORS = "errors"


def pipeline_options(runner: str = "DirectRunner", num_workers: int = 0, args: Sequence[str] = ()):
    """PipelineOptions for `runner`; DirectRunner gets `num_workers` worker processes (0: one per
    core, Beam's rule). `args` are further Beam options (`--project=...`, `--temp_location=...`,
    `--setup_file=./setup.py`, `--flink_master=...`), given last so they win."""
    from apache_beam.options.pipeline_options import PipelineOptions

    argv = [f"--runner={runner}"]
    if runner.lower() in ("directrunner", "direct"):
        argv += ["--direct_running_mode=multi_processing", f"--direct_num_workers={num_workers}"]
    return PipelineOptions([*argv, *args])


# ==================================================================================================
# data.prepare
# ==================================================================================================


class PrepareUnitFn(beam.DoFn):
    """Unit -> its part committed; yields the unit's summary, and its error rows on `errors`."""

    def __init__(self, out_dir: str, opts):
        self.out_dir, self.opts = str(out_dir), opts

    def setup(self):
        # The mel's fbank runs in JAX: on the host CPU on every worker, so a record has the same
        # bytes whatever machine wrote it (a worker with an accelerator keeps it for curation).
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        # imageio-ffmpeg starts ffmpeg with a preexec_fn, i.e. a plain fork() of this process,
        # whose gRPC threads (the Beam worker's) then break the child: ffmpeg never starts and
        # the file is reported unreadable. Without it Python spawns ffmpeg without fork handlers.
        os.environ["IMAGEIO_FFMPEG_NO_PREVENT_SIGINT"] = "1"
        from maestro_jax.data.prepare import features_for

        self.features = features_for(self.opts)

    def process(self, unit):
        from maestro_jax.data.prepare import prepare_unit

        res = prepare_unit(unit, self.out_dir, self.opts, self.features)
        for e in res.pop("errors"):
            yield beam.pvalue.TaggedOutput(ERRORS, e)
        yield res


def _commit_prepare(num_units: int, out_dir: str, opts, problems: list[dict], errors: list[dict]):

    for e in errors:
        log.warning("skipped %s: %s", e["source"], e["error"])
    counts = finish(out_dir, opts, problems)
    log.info("%d units run, %d files skipped; records per split %s", num_units, len(errors), counts)
    return counts


def run_prepare(units: list, out_dir: str | os.PathLike, opts, problems: list[dict], options):
    """Run the units (`prepare.Unit`, not yet committed), then the commit step; blocks until the
    pipeline is done (an exception if it failed)."""
    out_dir = str(out_dir)
    with beam.Pipeline(options=options) as p:
        res = (
            p
            | "Units" >> beam.Create(units)
            | "Prepare"
            >> beam.ParDo(PrepareUnitFn(out_dir, opts)).with_outputs(ERRORS, main="parts")
        )
        _ = (
            res.parts
            | "CountUnits" >> beam.combiners.Count.Globally()
            | "Commit"
            >> beam.Map(_commit_prepare, out_dir, opts, problems, beam.pvalue.AsList(res[ERRORS]))
        )


# ==================================================================================================
# data.curate
# ==================================================================================================


class ScoreFn(beam.DoFn):
    """A batch of manifest rows -> their ImageBind similarities (`curate.score_batch`)."""

    def __init__(self, data_dir: str, imagebind: str, bpe_path: str | None, batch_size: int):
        self.data_dir, self.imagebind = str(data_dir), str(imagebind)
        self.bpe_path, self.batch_size = bpe_path, int(batch_size)

    def setup(self):
        # Several worker processes may share one accelerator: no up-front grab of its memory.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import jax

        from maestro_jax.data import curate as C

        cfg, params = C.load_imagebind(self.imagebind)
        self.embedder = C.Embedder(cfg, jax.device_put(params), self.batch_size)
        self.text_emb = C.text_embeddings(self.data_dir, self.embedder, self.bpe_path)
        self.reader = C.RecordReader(self.data_dir)
        log.info("ImageBind scoring on %s", jax.devices()[0])

    def process(self, rows):
        from maestro_jax.data.curate import score_batch

        yield from score_batch(rows, self.reader, self.embedder, self.text_emb)

    def teardown(self):
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()


class WriteCuratedPartFn(beam.DoFn):
    def __init__(self, data_dir: str, out_dir: str):
        self.data_dir, self.out_dir = str(data_dir), str(out_dir)

    def process(self, part):
        from maestro_jax.data.curate import write_curated_part

        yield write_curated_part(self.data_dir, self.out_dir, part)


def run_curate(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    rows: list[dict],
    *,
    imagebind: str,
    bpe_path: str | None,
    batch_size: int,
    decide,
    commit,
    options,
):
    """Score `rows` (manifest rows with their position `i`), then `decide(scores)` ->
    {'parts': [...], ...} on one worker, write the parts, then `commit(num_parts, decision)`.
    `decide` and `commit` are picklable callables (functools.partial of `curate` functions)."""
    data_dir, out_dir = str(Path(data_dir)), str(Path(out_dir))
    with beam.Pipeline(options=options) as p:
        decision = (
            p
            | "Rows" >> beam.Create(rows)
            | "Batch" >> beam.BatchElements(min_batch_size=batch_size, max_batch_size=batch_size)
            | "Score" >> beam.ParDo(ScoreFn(data_dir, imagebind, bpe_path, batch_size))
            | "AllScores" >> beam.combiners.ToList()
            | "Decide" >> beam.Map(decide)
        )
        _ = (
            decision
            | "Parts" >> beam.FlatMap(lambda d: d["parts"])
            | "Spread" >> beam.Reshuffle()
            | "Write" >> beam.ParDo(WriteCuratedPartFn(data_dir, out_dir))
            | "CountParts" >> beam.combiners.Count.Globally()
            | "Commit" >> beam.Map(commit, beam.pvalue.AsSingleton(decision))
        )


# ==================================================================================================
# Driver
# ==================================================================================================


def check_local_paths(**paths) -> None:
    """Every path must be a folder or file that the launcher and every Beam worker see at the
    same place (a local folder, NFS, Filestore, a mounted bucket): URLs are refused."""
    for name, path in paths.items():
        if path is not None and "://" in str(path):
            raise ValueError(
                f"--{name} {path}: give a path that every worker sees (NFS, Filestore, a mounted "
                "bucket); URLs such as gs:// are not read or written directly"
            )


def _check_config(out_dir: Path, opts: PrepOptions, classes: list[str], layout: str) -> None:
    cfg_path, cls_path = out_dir / "prep_config.json", out_dir / "classes.json"
    cfg = {**dataclasses.asdict(opts), "layout": layout, "num_frames": opts.num_frames}
    if cfg_path.exists():
        with open(cfg_path) as f:
            old = json.load(f)
        diff = {k: (old.get(k), cfg[k]) for k in FORMAT_FIELDS if old.get(k) != cfg[k]}
        if diff:
            raise ValueError(
                f"{out_dir} was prepared with other options {diff} (old, new): use the same "
                "options to resume, or a new --out folder"
            )
    if cls_path.exists():
        old_classes = load_classes(out_dir)
        if old_classes != classes:
            raise ValueError(
                f"{out_dir} was prepared with another class list ({len(old_classes)} classes vs "
                f"{len(classes)} now): label indices would not match. Use the same --labels."
            )
    write_json(cfg_path, cfg)
    write_json(cls_path, classes)


def prepare(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str,
    labels: str | os.PathLike | None = None,
    opts: PrepOptions | None = None,
    *,
    files_per_part: int = 32,
    split: str | None = None,
    retry_errors: bool = False,
    runner: str = "DirectRunner",
    num_workers: int = 0,
    beam_args: Sequence[str] = (),
) -> dict:
    """Prepare (or resume preparing) a dataset with an Apache Beam pipeline; see the module
    docstring. Lists the input here, runs the units not yet committed on `runner` (DirectRunner:
    `num_workers` processes, 0 = one per core; `beam_args`: other Beam pipeline options), then
    the commit step. `retry_errors` runs committed units that had errors again.

    Returns {'jobs', 'skipped', 'processed', 'clips_written', 'errors', 'units', 'splits':
    {split: records}}; 'errors' are this run's (listing problems + failed jobs)."""

    opts = opts or PrepOptions()
    opts.validate()
    check_local_paths(input=input_dir, labels=labels, out=out_dir)
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, classes, problems = discover(input_dir, layout, labels, split)
    _check_config(out_dir, opts, classes, layout)
    committed = load_parts(out_dir)  # also removes leftovers of killed writes
    units = plan_units(jobs, files_per_part, committed)
    sidecars = {(s, p["name"]): p for s, plist in committed.items() for p in plist}

    def done(u: Unit) -> bool:
        side = sidecars.get((u.split, u.name))
        return side is not None and not (retry_errors and side.get("errors"))

    todo = [u for u in units if not done(u)]
    now = time.time()
    problems = [{**p, "time": now} for p in problems]
    run_prepare(
        todo,
        out_dir,
        opts,
        problems,
        pipeline_options(runner, num_workers, beam_args),
    )
    after = {
        (s, p["name"]): p for s, plist in load_parts(out_dir, cleanup=False).items() for p in plist
    }
    ran = [after[(u.split, u.name)] for u in todo if (u.split, u.name) in after]
    errors = problems + [e for p in ran for e in p.get("errors", [])]
    for e in errors:
        log.warning("skipped %s: %s", e["source"], e["error"])
    counts: dict[str, int] = {}
    for (s, _), p in sorted(after.items()):
        if p["num_records"]:
            counts[s] = counts.get(s, 0) + p["num_records"]
    n_todo = sum(len(u.jobs) for u in todo)
    return {
        "jobs": len(jobs),
        "skipped": len(jobs) - n_todo,
        "processed": n_todo,
        "clips_written": sum(p["num_records"] for p in ran),
        "errors": errors,
        "units": len(todo),
        "splits": counts,
    }


def curate(
    data_dir: str | os.PathLike,
    imagebind: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    bpe_path: str | os.PathLike | None = None,
    flow_threshold: float = 0.1,
    silence_eps: float = 0.0,
    batch_size: int = 16,
    records_per_part: int = 256,
    sim_rule: str = "median",
    runner: str = "DirectRunner",
    num_workers: int = 0,
    beam_args: Sequence[str] = (),
) -> dict:
    """Score, filter and write the curated dataset with an Apache Beam pipeline (DirectRunner:
    `num_workers` processes, 0 = one per core; `beam_args`: other Beam options); returns the
    summary written to OUT/curation_summary.json. sim_rule 'none' records the similarities but
    filters only static and silent clips. A rerun replaces the previous curation."""
    if sim_rule not in ("median", "none"):
        raise ValueError(f"sim_rule must be 'median' or 'none', got {sim_rule!r}")

    check_local_paths(data=data_dir, out=out_dir, imagebind=imagebind, bpe=bpe_path)
    data_dir, out_dir = Path(data_dir).absolute(), Path(out_dir).absolute()
    if data_dir == out_dir:
        raise ValueError("--out must differ from --data (the input is never modified)")
    manifest = read_jsonl(data_dir / "manifest.jsonl")
    if not manifest:
        raise ValueError(f"{data_dir}/manifest.jsonl is missing or empty: run data.prepare first")
    for key in ("flow_mag", "audio_peak"):
        if any(key not in r for r in manifest):
            raise ValueError(f"manifest rows of {data_dir} lack {key!r}: re-run data.prepare")
    load_features(data_dir)  # fails early without TFDS metadata

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "parts").glob("*/*") if (out_dir / "parts").exists() else []:
        old.unlink()  # a rerun (also after a killed run) replaces the previous curation
    write_json(out_dir / "classes.json", load_classes(data_dir))
    with open(data_dir / "prep_config.json") as f:
        prep_cfg = json.load(f)
    write_json(out_dir / "prep_config.json", {**prep_cfg, "curated_from": str(data_dir)})
    rows = [
        {"i": i, **{k: m[k] for k in ("clip_id", "split", "index", "part", "row")}}
        for i, m in enumerate(manifest)
    ]
    common = dict(flow_threshold=flow_threshold, silence_eps=silence_eps, sim_rule=sim_rule)
    run_curate(
        data_dir,
        out_dir,
        rows,
        imagebind=str(imagebind),
        bpe_path=None if bpe_path is None else str(bpe_path),
        batch_size=batch_size,
        decide=functools.partial(
            curate_lib.decide, data_dir=str(data_dir), records_per_part=records_per_part, **common
        ),
        commit=functools.partial(
            curate_lib.finish,
            data_dir=str(data_dir),
            out_dir=str(out_dir),
            imagebind=str(imagebind),
            **common,
        ),
        options=pipeline_options(runner, num_workers, beam_args),
    )
    with open(out_dir / "curation_summary.json") as f:
        return json.load(f)
