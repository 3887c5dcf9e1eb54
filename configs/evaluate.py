"""Evaluation (FVD, IA, AV-Align, placement) of generated videos. Variants: default (converted
ImageBind and I3D weights) and `runlocal` (tiny random networks, CPU, no files). Settings:
`maestro_jax.evaluation.config`.

    python -m maestro_jax.evaluate --config=configs/evaluate.py \
        --config.imagebind_checkpoint=ckpt/imagebind --config.i3d_checkpoint=ckpt/i3d \
        --videos outputs --reference landscape_test_videos --out results/maestro.json
    python -m maestro_jax.evaluate --config=configs/evaluate.py:runlocal --videos out \
        --out out_eval.json
"""

from maestro_jax.evaluation.config import get_config  # noqa: F401
