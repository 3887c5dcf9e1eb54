"""lambda1 ablation (the paper's Table 1): one CIM trained per weight of the denoising loss
(loss = lambda1 L_sd + (1 - lambda1) L_mse), then generated and evaluated
(`python -m maestro_jax.ablate`; settings: `maestro_jax.evaluation.ablation_config`).

  toy world (committed weights; lambda1 in {0, 0.5, 0.9, 1}, 1500 steps per value):
    python -m maestro_jax.ablate --config=configs/ablations/lambda1.py:toy \
        --workdir=runs/ablate_lambda1
  smoke (the toy world at smoke size; lambda1 in {0, 1}):
    python -m maestro_jax.ablate --config=configs/ablations/lambda1.py:runlocal --workdir=/tmp/l1
  full size (lambda1 in {0, 0.5, 0.7, 0.9, 1}; variants vggsound | landscape | animal_kingdom):
    the flags of configs/ablations/nq.py, with --config=configs/ablations/lambda1.py:vggsound
"""

from maestro_jax.evaluation.ablation_config import ablation_config


def get_config(arg=None):
    return ablation_config("lambda1", arg)
