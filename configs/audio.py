"""Audio encoding (ImageBind audio trunk + CIM) for `python -m maestro_jax.encode_audio`.

Variants:
  configs/audio.py            real weights: set imagebind_checkpoint and cim_checkpoint
  configs/audio.py:runlocal   tiny random ImageBind + CIM (CPU, no weights)

Examples:
  python -m convert.imagebind imagebind_huge.pth ckpt/imagebind --modalities audio
  python -m convert.cim perceiver.pth ckpt/cim
  python -m maestro_jax.encode_audio --audio dog.wav --config=configs/audio.py \
      --config.imagebind_checkpoint=ckpt/imagebind --config.cim_checkpoint=ckpt/cim
  python -m maestro_jax.encode_audio --audio ../shared/audio/dog.wav \
      --config=configs/audio.py:runlocal
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.model = "full"  # 'full' (converted weights) | 'tiny' (random)
    c.imagebind_checkpoint = ""
    c.cim_checkpoint = ""
    c.clip_window = 4.0  # seconds of audio per video; S = ceil(window / 2) clips
    c.clip_rule = "git"  # 'git' (disjoint clips) | 'pypi015' (the release's sampler)
    c.dtype = "float32"
    c.seed = 0
    c.tiny_context_width = 64
    c.tiny_num_queries = 4
    if variant == "runlocal":
        c.model = "tiny"
    elif variant != "default":
        raise ValueError(f"unknown configs/audio.py variant {variant!r} (default | runlocal)")
    return c
