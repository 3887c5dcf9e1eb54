"""The Apache Beam flags that `python -m data.prepare` and `python -m data.curate` both take
(defined once here: absl flags are global to a process), and their reading into pipeline
arguments."""

from __future__ import annotations

from absl import flags

from maestro_jax import cli

RUNNER = flags.DEFINE_string(
    "runner", "DirectRunner", "Beam runner (DataflowRunner, FlinkRunner..)"
)
NUM_WORKERS = flags.DEFINE_integer(
    "direct_num_workers", 0, "DirectRunner worker processes (0: one per core)"
)
BEAM_OPTIONS = flags.DEFINE_string(
    "beam_options", "", 'more Beam pipeline options, e.g. "--project=P --region=R"'
)


def pipeline_args(rest: list[str]) -> list[str] | int:
    """The Beam options of --beam_options and of what followed `--` (`cli.beam_args`; an int is
    the exit status of a bad one), with Beam's worker chatter quieted."""
    args = cli.beam_args(BEAM_OPTIONS.value, rest)
    if not isinstance(args, int):
        cli.quiet_beam()
    return args
