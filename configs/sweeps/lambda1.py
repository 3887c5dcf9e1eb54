"""lambda1 sweep (paper Table 1): one CIM trained per loss weight, lambda1 in {0, .5, .7, .9, 1}.

  python -m maestro_jax.sweep --config=configs/sweeps/lambda1.py ... \
      --config.checkpoint_pattern='ckpt/cim_lambda{value}'      (values written 0, 0.5, ..., 1)
  python -m maestro_jax.sweep --config=configs/sweeps/lambda1.py:runlocal   (random tiny CIMs)
"""

from maestro_jax.evaluation.sweep_config import sweep_config


def get_config(arg=None):
    vals = (0.0, 0.5, 0.7, 0.9, 1.0)
    return sweep_config(arg or "default", "lambda1", vals, (0.0, 0.9), "lambda1")
