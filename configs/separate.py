"""Text-queried source separation (AudioSep ResUNet30 + CLAP text queries).

    python -m maestro_jax.separate --mixture mix.wav --query "dog barking" --query "violin" \
        --out out/ --checkpoint ckpt/audiosep --tokenizer-dir roberta-base/
    python -m maestro_jax.separate --mixture mix.wav --query dog --out out/ \
        --config configs/separate.py:runlocal          # tiny random weights, no files needed

`ckpt/audiosep` comes from `python -m convert.audiosep audiosep_base_4M_steps.ckpt ckpt/audiosep`;
`roberta-base/` holds roberta-base's `vocab.json` and `merges.txt`. The settings and their
meaning: `maestro_jax.audio.separation.default_config`.
"""

from maestro_jax.audio.separation import get_config  # noqa: F401
