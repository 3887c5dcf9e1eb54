"""Stage ablation: vanilla (merged context, no edits) / locate only / mosaic only / Maestro.

python -m maestro_jax.sweep --config=configs/sweeps/modes.py:runlocal
"""

from maestro_jax.evaluation.sweep_config import sweep_config

MODES = ("vanilla", "locate", "mosaic", "maestro")


def get_config(arg=None):
    return sweep_config(arg or "default", "mode", MODES, MODES, "modes")
