"""The toy world: every Maestro stage at CPU size (variants: the build stages text, imagebind,
vae, t2i, t2v, t2v_layout, separator, cim; `generate` for generation on the committed weights;
`sweep_nd` for the N_D curve). The settings and the commands: `maestro_jax.toy.config`.

    python -m maestro_jax.train --config=configs/toy.py:cim --workdir=runs/toy/cim
    python -m maestro_jax.generate --config=configs/toy.py:generate --audio a.wav --audio b.wav \
        --boxes LR --outdir out
"""

from maestro_jax.toy.config import get_config  # noqa: F401
