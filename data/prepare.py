"""Prepare a TFDS-format audio-visual dataset for training the CIM (what a record holds, the
layouts and the guarantees: `maestro_jax.data.prepare`).

    python -m data.prepare --input DIR --labels FILE_OR_NONE \
        --layout vggsound|landscape|frames_wav --out OUT [--resolution 512] \
        [--frames_rule default|release] [--split NAME] [--drop_audio] \
        [--runner DirectRunner] [--direct_num_workers 0] [--beam_options "..."] [-- BEAM OPTIONS]

An Apache Beam pipeline (`pip install -e '.[data]'`): DirectRunner runs --direct_num_workers
processes on this machine (0: one per core); any other Beam runner takes its options after `--`
or in --beam_options (README, "Dataset preparation at scale").
"""

from __future__ import annotations

import logging
from pathlib import Path

from absl import flags

from data import beam_flags
from maestro_jax import cli
from maestro_jax.data.beam_pipelines import prepare
from maestro_jax.data.frames import FRAME_RULES
from maestro_jax.data.prepare import CLIP_SECONDS, PrepOptions
from maestro_jax.data.sources import LAYOUTS

_INPUT = flags.DEFINE_string("input", None, "source folder", required=True)
_LABELS = flags.DEFINE_string(
    "labels", "none", "VGGSound CSV, a class list file, or 'none' (class folders)"
)
_LAYOUT = flags.DEFINE_enum("layout", None, LAYOUTS, "source layout", required=True)
_OUT = flags.DEFINE_string("out", None, "output dataset folder", required=True)
_RESOLUTION = flags.DEFINE_integer("resolution", 512, "frame size (short side, then centre crop)")
_FRAMES_RULE = flags.DEFINE_enum("frames_rule", "default", FRAME_RULES, "frames kept per clip")
_CLIP_RULE = flags.DEFINE_enum("clip_rule", "git", ["git", "pypi015"], "ImageBind clip times")
_CLIP_SECONDS = flags.DEFINE_float("clip_seconds", CLIP_SECONDS, "seconds per training clip")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 2.0, "shortest tail clip kept")
_MAX_CLIPS = flags.DEFINE_integer("max_clips_per_file", None, "at most this many clips per file")
_FILES_PER_PART = flags.DEFINE_integer("files_per_part", 32, "source files per work unit")
_FLOW_SIZE = flags.DEFINE_integer("flow_size", 256, "static-filter analysis size (pixels)")
_SPLIT = flags.DEFINE_string("split", None, "override the split of every clip")
_DROP_AUDIO = flags.DEFINE_bool("drop_audio", False, "do not store the 16 kHz audio")
_RETRY = flags.DEFINE_bool("retry_errors", False, "run committed units that had errors again")


def main(argv: list[str]) -> int:
    beam_args = beam_flags.pipeline_args(argv[1:])
    if isinstance(beam_args, int):
        return beam_args
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    labels = None if _LABELS.value.lower() in ("none", "") else _LABELS.value
    if labels is not None and not Path(labels).is_file():
        return cli.error(f"--labels {labels} is not a file")
    opts = PrepOptions(
        resolution=_RESOLUTION.value,
        frames_rule=_FRAMES_RULE.value,
        clip_seconds=_CLIP_SECONDS.value,
        clip_rule=_CLIP_RULE.value,
        keep_audio=not _DROP_AUDIO.value,
        min_seconds=_MIN_SECONDS.value,
        max_clips_per_file=_MAX_CLIPS.value,
        flow_size=_FLOW_SIZE.value,
    )
    try:
        summary = prepare(
            _INPUT.value, _OUT.value, _LAYOUT.value, labels, opts,
            files_per_part=_FILES_PER_PART.value, split=_SPLIT.value,
            retry_errors=_RETRY.value, runner=beam_flags.RUNNER.value,
            num_workers=beam_flags.NUM_WORKERS.value, beam_args=beam_args,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError) as e:
        return cli.error(str(e))
    print(
        f"{_OUT.value}: {summary['clips_written']} new clips from {summary['processed']} sources "
        f"in {summary['units']} units "
        f"({summary['skipped']} already done, {len(summary['errors'])} skipped with errors, "
        f"see errors.jsonl); records per split: {summary['splits']}"
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
