"""Curate a prepared dataset: ImageBind similarities with the median rule, static and silent
clips dropped (the rules and the outputs: `maestro_jax.data.curate`).

    python -m data.curate --data OUT --imagebind CKPT_DIR|random-tiny --out CURATED \
        [--bpe bpe_simple_vocab_16e6.txt.gz] [--flow_threshold 0.1] [--batch_size 16] \
        [--runner DirectRunner] [--direct_num_workers 0] [--beam_options "..."] [-- BEAM OPTIONS]

An Apache Beam pipeline like data.prepare (`pip install -e '.[data]'`); ImageBind runs on each
worker's default JAX device (its accelerator when it has one).
"""

from __future__ import annotations

import logging
from pathlib import Path

from absl import flags

from data import beam_flags
from maestro_jax import cli
from maestro_jax.data.beam_pipelines import curate

_DATA = flags.DEFINE_string("data", None, "a data.prepare output folder", required=True)
_IMAGEBIND = flags.DEFINE_string(
    "imagebind", None, "convert.imagebind folder, or random-tiny (tests)", required=True
)
_OUT = flags.DEFINE_string("out", None, "the curated dataset folder", required=True)
_BPE = flags.DEFINE_string("bpe", None, "CLIP bpe_simple_vocab_16e6.txt.gz")
_FLOW = flags.DEFINE_float("flow_threshold", 0.1, "drop clips whose flow magnitude is lower")
_SILENCE = flags.DEFINE_float("silence_eps", 0.0, "drop clips whose audio peak is not above")
_BATCH = flags.DEFINE_integer("batch_size", 16, "clips per ImageBind call")
_SIM_RULE = flags.DEFINE_enum(
    "sim_rule", "median", ["median", "none"],
    "'none': record similarities, filter only static and silent clips",
)  # fmt: skip


def main(argv: list[str]) -> int:
    beam_args = beam_flags.pipeline_args(argv[1:])
    if isinstance(beam_args, int):
        return beam_args
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if _IMAGEBIND.value != "random-tiny" and not Path(_IMAGEBIND.value).is_dir():
        return cli.error(f"--imagebind {_IMAGEBIND.value} is neither a folder nor 'random-tiny'")
    try:
        s = curate(
            _DATA.value, _IMAGEBIND.value, _OUT.value, bpe_path=_BPE.value,
            flow_threshold=_FLOW.value, silence_eps=_SILENCE.value, batch_size=_BATCH.value,
            sim_rule=_SIM_RULE.value, runner=beam_flags.RUNNER.value, num_workers=beam_flags.NUM_WORKERS.value,
            beam_args=beam_args,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError) as e:
        return cli.error(str(e))
    print(
        f"{_OUT.value}: kept {s['num_kept']} of {s['num_input']} clips; medians "
        + ", ".join(f"{k} {v:.4f}" for k, v in s["medians"].items())
        + f"; dropped for {s['dropped_for']}; records per split {s['splits']}"
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
