"""N_D sweep (paper Fig. 7): Object Locating steps before Mosaic Denoising.

python -m maestro_jax.sweep --config=configs/sweeps/nd.py:runlocal
full (50 DDIM steps): N_D in {0, 2, 4, 6, 8, 12, 50}; runlocal (4 steps): {0, 1, 2, 4}.
"""

from maestro_jax.evaluation.sweep_config import sweep_config


def get_config(arg=None):
    return sweep_config(arg or "default", "n_d", (0, 2, 4, 6, 8, 12, 50), (0, 1, 2, 4), "nd")
