"""Encode audio files into CIM audio tokens and write them to a .npz.

    python -m maestro_jax.encode_audio --audio dog.wav \
        --config=configs/audio.py:runlocal [--out tokens.npz]

Prints, per file, the mel, trunk-token and audio-token shapes; the .npz holds `tokens`
[N_A, S, N_Q, D], `mel` [N_A, S, 128, 204] and the file names.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/audio.py", "audio config")
_AUDIO = flags.DEFINE_multi_string("audio", [], "audio file(s), one per source")
_OUT = flags.DEFINE_string("out", "audio_tokens.npz", "output .npz")


def build_encoder(cfg):
    import jax.numpy as jnp

    from maestro_jax.audio import encoder as ae

    dtype = jnp.dtype(cfg.dtype)
    if cfg.model == "tiny":
        print("note: tiny RANDOM ImageBind + CIM (configs/audio.py:runlocal); tokens are not real")
        return ae.init_random(
            ae.tiny_imagebind(dtype),
            ae.tiny_cim(cfg.tiny_context_width, cfg.tiny_num_queries, dtype),
            cfg.seed,
        )
    if not cfg.imagebind_checkpoint or not cfg.cim_checkpoint:
        raise app.UsageError(
            "set --config.imagebind_checkpoint and --config.cim_checkpoint (folders written by "
            "python -m convert.imagebind / convert.cim), or use configs/audio.py:runlocal"
        )
    return ae.load(cfg.imagebind_checkpoint, cfg.cim_checkpoint, dtype)


def main(argv):
    del argv
    from maestro_jax import audio as audio_lib
    from maestro_jax.audio import encoder as ae
    from maestro_jax.video import atomic_path

    cfg = _CONFIG.value
    if not _AUDIO.value:
        raise app.UsageError("give at least one --audio FILE")
    stems = []
    for p in _AUDIO.value:
        try:
            stems.append(audio_lib.load_audio(p))
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    enc = build_encoder(cfg)
    mel = np.stack([ae.stem_mel(w, sr, cfg.clip_window, cfg.clip_rule) for w, sr in stems])
    tokens = np.asarray(ae.encode_mels(enc, mel))
    for p, m, t in zip(_AUDIO.value, mel, tokens):
        print(f"{p}: mel {tuple(m.shape)} -> trunk tokens ({m.shape[0]}, "
              f"{enc.ib_config.audio_tokens}, {enc.ib_config.audio_width}) -> audio tokens "
              f"{tuple(t.shape)}")  # fmt: skip
    print(f"tokens {tuple(tokens.shape)} [N_A, S, N_Q, D]")
    out = Path(_OUT.value)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, tokens=tokens, mel=mel, files=np.array(_AUDIO.value))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    app.run(main)
