"""Parameter sweeps: generate, evaluate, tabulate and plot (the paper's Fig. 7 and Tables 1-2).

One command per figure / table; each value gets its own folder OUTDIR/<param>_<value>/ (videos,
contact sheets, settings, `metrics.json`), and OUTDIR gets `sweep.md` + `sweep.json` (the table:
rows = values, columns FVD / IA / AV-Align / AV-Align 2023 / placement / videos), one PNG plot
per metric (`plot_<metric>.png`, metric vs value) and `grid.png` (rows = values, columns = frames
of one job, boxes drawn).

Tiny random models (CPU, no files; the numbers only test the plumbing):
  python -m maestro_jax.sweep --config=configs/sweeps/nd.py:runlocal
  python -m maestro_jax.sweep --config=configs/sweeps/modes.py:runlocal --config.param_values="('vanilla','maestro')"

Toy world (the committed toy weights; placement = box colour accuracy on random toy scenes whose
stems and true classes are written under OUTDIR/toy_jobs/, see `maestro_jax.toy.placement`):
  python -m maestro_jax.sweep --config=configs/toy.py:sweep_nd

Real weights (converted with convert.videocrafter / convert.imagebind --modalities audio,vision /
convert.cim / convert.i3d). W below stands for
  --config.generation.checkpoint=ckpt/vc2 --config.generation.imagebind_checkpoint=ckpt/imagebind
  --config.generation.bpe_path=bpe_simple_vocab_16e6.txt.gz --config.evaluation.i3d_checkpoint=ckpt/i3d
  --config.jobs_file=eval_jobs.jsonl --config.reference=real_test_videos
(`jobs_file`: the evaluation set as generate's JSONL jobs; `reference`: the real videos for FVD;
without `jobs_file` the stem pairs of `config.stems` from `config.audio_dir` are used; the
evaluation's ImageBind defaults to the generation's folder.)
  Fig. 7, N_D in {0, 2, 4, 6, 8, 12, 50}:
    python -m maestro_jax.sweep --config=configs/sweeps/nd.py W --config.generation.cim_checkpoint=ckpt/cim
  Table 1, lambda1 in {0, .5, .7, .9, 1} (one trained CIM per value; to train them too, in the
  same run: `python -m maestro_jax.ablate --config=configs/ablations/lambda1.py`, likewise nq.py):
    python -m maestro_jax.sweep --config=configs/sweeps/lambda1.py W \
        --config.checkpoint_pattern='ckpt/cim_lambda{value}'
  Table 2, N_Q in {1, 5, 10, 15, 20} (one trained CIM per value):
    python -m maestro_jax.sweep --config=configs/sweeps/nq.py W --config.checkpoints='1=ckpt/q1,5=...'
  Ablation of the two stages (vanilla / locate only / mosaic only / Maestro):
    python -m maestro_jax.sweep --config=configs/sweeps/modes.py W --config.generation.cim_checkpoint=ckpt/cim

Resumable: generation skips the jobs whose .json and .mp4 exist (`maestro_jax.generation.run`), and a
value's evaluation is reused while its videos (names, sizes, times), the evaluation config and
the reference are unchanged. Every output is written atomically; rerunning the same command
after an interruption finishes the sweep.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "sweep config (configs/sweeps/{nd,nq,lambda1,modes}.py, configs/toy.py:sweep_nd)",
)
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from maestro_jax.evaluation.sweep import SweepError, run_sweep
    from maestro_jax.generation.runner import enable_compilation_cache

    cfg = _CONFIG.value
    enable_compilation_cache(cfg.generation.compilation_cache)
    try:
        res = run_sweep(cfg)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if res["failed"]:
        print(f"values with failures: {', '.join(res['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
