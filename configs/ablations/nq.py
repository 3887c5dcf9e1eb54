"""N_Q ablation (the paper's Table 2): one CIM trained per number of queries, then generated and
evaluated (`python -m maestro_jax.ablate`; settings: `maestro_jax.evaluation.ablation_config`).

  toy world (committed weights; N_Q in {1, 2, 4, 8}, the `cim` stage's 1500 steps per value):
    python -m maestro_jax.ablate --config=configs/ablations/nq.py:toy --workdir=runs/ablate_nq
  smoke (the toy world, 4 training steps, 2 DDIM steps, one scene; N_Q in {1, 2}):
    python -m maestro_jax.ablate --config=configs/ablations/nq.py:runlocal --workdir=/tmp/nq
  full size (N_Q in {1, 5, 10, 15, 20}; variants vggsound | landscape | animal_kingdom):
    python -m maestro_jax.ablate --config=configs/ablations/nq.py:vggsound --workdir=runs/nq_vgg \
        --config.training.data.dir=data/vgg_curated \
        --config.training.model.unet.params=ckpt/sd21_unet \
        --config.training.model.vae.params=ckpt/sd_vae \
        --config.training.model.text.params=ckpt/openclip_h14 \
        --config.training.model.text.bpe_path=bpe_simple_vocab_16e6.txt.gz \
        --config.training.model.imagebind.params=ckpt/imagebind \
        --config.sweep.generation.checkpoint=ckpt/vc2 \
        --config.sweep.generation.bpe_path=bpe_simple_vocab_16e6.txt.gz \
        --config.sweep.evaluation.i3d_checkpoint=ckpt/i3d \
        --config.sweep.jobs_file=vgg_eval_jobs.jsonl --config.sweep.reference=vgg_test_videos
"""

from maestro_jax.evaluation.ablation_config import ablation_config


def get_config(arg=None):
    return ablation_config("num_queries", arg)
