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

import logging
import os
from collections.abc import Sequence
from pathlib import Path

try:
    import apache_beam as beam
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "data.prepare and data.curate run on Apache Beam: pip install -e '.[data]'"
    ) from e

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
    from maestro_jax.data.prepare import finish

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
