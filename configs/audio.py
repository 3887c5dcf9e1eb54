"""Audio encoding (ImageBind audio trunk + CIM) for `python -m maestro_jax.encode_audio`.
Variants: default (converted weights: set imagebind_checkpoint and cim_checkpoint) and
`runlocal` (tiny random ImageBind + CIM, no files). Settings: `maestro_jax.audio.encoder`.

    python -m convert.imagebind imagebind_huge.pth ckpt/imagebind --modalities audio
    python -m convert.cim perceiver.pth ckpt/cim
    python -m maestro_jax.encode_audio --audio dog.wav --config=configs/audio.py \
        --config.imagebind_checkpoint=ckpt/imagebind --config.cim_checkpoint=ckpt/cim
    python -m maestro_jax.encode_audio --audio dog.wav --config=configs/audio.py:runlocal
"""

from maestro_jax.audio.encoder import get_config  # noqa: F401
