"""Maestro generation: stems (or a mixture + queries) + boxes -> video.

Variants:
  configs/generate.py            converted VideoCrafter2 + ImageBind + CIM (+ AudioSep) weights
  configs/generate.py:runlocal   tiny random models, 16 frames at 32x32, 4 steps (CPU, no files)

Examples:
  python -m maestro_jax.generate --config=configs/generate.py:runlocal \
      --audio dog.wav --audio cat.wav --boxes LR --outdir out
  python -m maestro_jax.generate --config=configs/generate.py --config.checkpoint=ckpt/vc2 \
      --config.imagebind_checkpoint=ckpt/imagebind --config.cim_checkpoint=ckpt/cim \
      --audio dog.wav --audio cat.wav --boxes LR --outdir out
(the CLIP vocabulary comes from ckpt/vc2/text when `convert.videocrafter --bpe` stored it there,
else pass --config.bpe_path=bpe_simple_vocab_16e6.txt.gz)
  python -m maestro_jax.generate --config=configs/generate.py:runlocal --jobs jobs.jsonl \
      --outdir sweep
"""

from maestro_jax.generation.config import get_config  # noqa: F401
