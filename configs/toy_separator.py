"""Toy-world separator: AudioSep ResUNet30 + FiLM on class-label queries, trained on CPU.

    python -m maestro_jax.train --config=configs/toy_separator.py --workdir=/tmp/toy_sep
    python -m maestro_jax.train --config=configs/toy_separator.py:smoke --workdir=/tmp/s

(`maestro_jax.separator_training.train`; dispatch on `task == "separator"`.) The queries are the
toy labels through a frozen random tiny CLAP text encoder (byte-fallback tokens, no tokenizer
file). `workdir/export` loads with `separator_training.load_separator` (or
`pipeline.load_separator` once it reads the export's `separate_config`).
"""

import ml_collections

from configs import separate


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "separator"
    c.data_module = "data.toyworld"  # labels(), separation_batch(rng, batch, seconds, sr, ...)
    c.seed = 0
    c.sample_rate = 16000  # the toy world's rate; STFT stays n_fft 2048 / hop 320 samples
    c.train_seconds = 1.0  # training crops (cheaper); held-out eval on full 4 s mixtures
    c.eval_seconds = 4.0
    c.max_sources = 3
    c.separator = ml_collections.ConfigDict(
        {"channels": (8, 8, 16, 16, 32, 32), "dtype": "float32"}
    )
    # Frozen random tiny CLAP text encoder (`ClapTextConfig` fields): configs/separate.py's
    # runlocal one.
    c.text = separate.get_config("runlocal").text
    c.batch_size = 8
    c.total_steps = 600
    c.learning_rate = 1e-3
    c.warmup_steps = 50
    c.grad_clip = 1.0
    c.checkpoint_every = 100
    c.keep_checkpoints = 2
    c.log_every = 10
    c.eval_every = 50
    c.eval_batch = 16

    if arg == "smoke":
        c.separator.channels = (4, 4, 4, 4, 8, 8)
        c.train_seconds = 0.5
        c.eval_seconds = 0.5
        c.batch_size = 2
        c.total_steps = 6
        c.warmup_steps = 1
        c.checkpoint_every = 2
        c.log_every = 1
        c.eval_every = 3
        c.eval_batch = 2
    elif arg not in (None, ""):
        raise ValueError(f"unknown config variant {arg!r} (known: smoke)")
    return c
