"""Shared defaults of the generation configs (`configs/generate.py`, `configs/t2v.py`)."""

from __future__ import annotations

import ml_collections


def generation_config(variant: str) -> ml_collections.ConfigDict:
    """Full-size defaults (VideoCrafter2 + Maestro release settings), or the tiny `runlocal`."""
    c = ml_collections.ConfigDict()
    c.variant = variant
    # 'full': converted weights from the folders below; 'tiny': random tiny models (CPU).
    c.model = "full"
    c.checkpoint = ""  # VideoCrafter2 folder from `python -m convert.videocrafter`
    c.imagebind_checkpoint = ""  # `python -m convert.imagebind` output
    c.cim_checkpoint = ""  # `python -m convert.cim` output
    c.separator_checkpoint = ""  # `python -m convert.audiosep` output (mixture + queries jobs)
    c.clap_tokenizer_dir = ""  # roberta-base vocab.json + merges.txt (text queries)
    # CLIP BPE file; '' = the copy `convert.videocrafter --bpe` stored in checkpoint/text, else
    # $MAESTRO_CLIP_BPE or an installed open_clip
    c.bpe_path = ""
    c.num_frames = 16
    c.height = 320
    c.width = 512
    c.steps = 50
    c.eta = 1.0
    c.guidance = 12.0
    c.fps = 8  # fps conditioning of the UNet (the release: 8)
    c.save_fps = 0.0  # 0 = num_frames / clip_window, so the video spans its audio
    c.n_d = 6  # Object Locating steps before Mosaic Denoising
    c.mode = "maestro"  # maestro | vanilla | locate | mosaic (ablations)
    c.boxes = "LR"  # default layout of jobs that give none
    c.clip_window = 4.0  # seconds of audio per video; S = ceil(window / 2) segments; 0 = all
    # whole-audio jobs (clip_window 0): FreeNoise windows of num_frames frames `stride` apart;
    # `windows_at_once` 0 = all at once, fused in the temporal attention (memory grows with the
    # length), k >= 1 = the whole UNet on k windows at a time (memory follows k); audio up to
    # `max_seconds`
    c.long = ml_collections.ConfigDict(dict(stride=4, windows_at_once=0, max_seconds=600.0))
    c.clip_rule = "git"  # ImageBind clip sampler: git (disjoint) | pypi015 (the release)
    c.num_queries = 10  # N_Q of the CIM (must match the CIM checkpoint)
    c.mosaic = ml_collections.ConfigDict(
        dict(
            token_offset=1,
            cell_rule="centre",
            background="nearest",
            sigma_divisor=3.0,
            strengthen_scale=0.5,
            weaken_scale=0.05,
            locate_space="logits",
        )
    )
    c.dtype = "bfloat16"
    # 'chunked': xla attention, queries in chunks once a call's logits pass 512 MiB (the same
    # numbers to ~1e-6; 320x512 self-attention needs 4.2 GB per layer otherwise); 'cudnn' on GPUs
    c.attn_impl = "chunked"
    c.frame_chunk = 0  # VAE decode in chunks of this many frames (0 = as many as fit in memory)
    c.batch_size = 0  # jobs per compiled call (0 = the number of devices)
    c.seed = 0
    c.outdir = "outputs"
    c.compilation_cache = "~/.cache/maestro_jax/jax_cache"  # '' disables it
    if variant == "runlocal":
        c.model = "tiny"
        c.height = 32
        c.width = 32
        c.steps = 4
        c.n_d = 2
        c.guidance = 7.5
        c.num_queries = 4
        c.dtype = "float32"
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} (default | runlocal)")
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Maestro generation (`configs/generate.py`): variants `default` and `runlocal`."""
    return generation_config(arg or "default")


def t2v_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Plain VideoCrafter2 text-to-video (`configs/t2v.py`): VideoCrafter2's fps 28 with real
    weights (its run_text2video.sh)."""
    c = generation_config(arg or "default")
    c.fps = 28 if c.model == "full" else c.fps
    return c
