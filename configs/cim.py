"""Training the condition injection module (CIM) against a frozen Stable Diffusion 2.1.

Variants: `vggsound` (default), `landscape`, `animal_kingdom` (the paper's recipe), `release`
(the Maestro release's training script) and `runlocal` (tiny random models, a synthetic dataset,
CPU, a minute). Every setting, its meaning and the full command lines:
`maestro_jax.training.cim_config`.

    python -m maestro_jax.train --config=configs/cim.py:runlocal --workdir=/tmp/cim_local
    python -m maestro_jax.train --config=configs/cim.py:vggsound --workdir=W \
        --config.data.dir=/data/vggsound_tfds --config.model.unet.params=ckpt/sd21_unet ...
"""

from maestro_jax.training.cim_config import get_config  # noqa: F401
