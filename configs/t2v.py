"""Plain VideoCrafter2 text-to-video (no audio), the base model Maestro edits.

Variants:
  configs/t2v.py            converted VideoCrafter2 weights (--config.checkpoint=DIR)
  configs/t2v.py:runlocal   tiny random model, 16 frames at 32x32, 4 steps (CPU)

Examples:
  python -m maestro_jax.generate --config=configs/t2v.py:runlocal --prompt "a dog barking"
  python -m convert.videocrafter checkpoints/base_512_v2/model.ckpt ckpt/vc2 \
      --bpe bpe_simple_vocab_16e6.txt.gz
  python -m maestro_jax.generate --config=configs/t2v.py --config.checkpoint=ckpt/vc2 \
      --prompt "a dog barking" --outdir out
"""

from maestro_jax.generation.config import t2v_config


def get_config(arg=None):
    return t2v_config(arg)
