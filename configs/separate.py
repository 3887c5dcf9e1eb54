"""Text-queried source separation (AudioSep ResUNet30 + CLAP text queries).

    python -m maestro_jax.separate --mixture mix.wav --query "dog barking" --query "violin" \
        --out out/ --checkpoint ckpt/audiosep --tokenizer-dir roberta-base/
    python -m maestro_jax.separate --mixture mix.wav --query dog --out out/ \
        --config configs/separate.py:runlocal          # tiny random weights, no files needed

`ckpt/audiosep` comes from `python -m convert.audiosep audiosep_base_4M_steps.ckpt ckpt/audiosep`;
`roberta-base/` holds roberta-base's `vocab.json` and `merges.txt`.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.sample_rate = 32000
    # ResUNet30's hard-coded widths; the UNet compute dtype ('bfloat16' on accelerators).
    c.separator = ml_collections.ConfigDict(
        {"channels": (32, 64, 128, 256, 384, 384), "dtype": "float32"}
    )
    # roberta-base + CLAP's 768 -> 512 -> 512 projection (`ClapTextConfig` fields).
    c.text = ml_collections.ConfigDict(
        {
            "vocab_size": 50265,
            "hidden": 768,
            "layers": 12,
            "heads": 12,
            "intermediate": 3072,
            "max_positions": 514,
            "type_vocab": 1,
            "eps": 1e-5,
            "pad_id": 1,
            "joint": 512,
        }
    )
    c.max_text_tokens = 512  # AudioSep's tokenizer truncation
    # 0 = the whole file in one pass (AudioSep's default). > 0: chunks of about this many
    # seconds overlapping by `overlap_seconds`, cross-faded linearly over `crossfade_seconds` in
    # the middle of each overlap (so kept samples are >= (overlap - crossfade) / 2 from an edge).
    c.chunk_seconds = 0.0
    c.overlap_seconds = 2.0
    c.crossfade_seconds = 0.5
    # True: random-initialised separator and text encoder (smoke runs without weights).
    c.random_init = False
    c.seed = 0

    if arg == "runlocal":
        c.separator.channels = (4, 4, 8, 8, 8, 8)
        c.text.update(vocab_size=1000, hidden=32, layers=2, heads=2, intermediate=64)
        c.random_init = True
    elif arg not in (None, ""):
        raise ValueError(f"unknown config variant {arg!r} (known: runlocal)")
    return c
