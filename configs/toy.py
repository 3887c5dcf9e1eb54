"""The toy world (`data/toyworld.py`): every Maestro stage at CPU size, trained by the project's
own entry points. `make toy-world` (= `python -m maestro_jax.toy_world build`) runs the stages
in this order, each resumable, and copies the exports into `maestro_jax/assets/toy/`:

    python -m maestro_jax.train --config=configs/toy.py:text      --workdir=runs/toy/text
    python -m maestro_jax.train --config=configs/toy.py:imagebind --workdir=runs/toy/imagebind
    python -m maestro_jax.train --config=configs/toy.py:vae       --workdir=runs/toy/vae
    python -m maestro_jax.train --config=configs/toy.py:t2i       --workdir=runs/toy/t2i
    python -m maestro_jax.train --config=configs/toy.py:t2v       --workdir=runs/toy/t2v
    python -m maestro_jax.train --config=configs/toy.py:t2v_layout --workdir=runs/toy/t2v_layout
    python -m maestro_jax.train --config=configs/toy.py:separator --workdir=runs/toy/separator
    python -m maestro_jax.train --config=configs/toy.py:cim       --workdir=runs/toy/cim

Later stages read earlier exports under `root` (default runs/toy; `--config.root=...` moves
them all). Generation and evaluation on the committed weights:

    python -m maestro_jax.generate --config=configs/toy.py:generate --audio a.wav --audio b.wav \
        --boxes LR --outdir out
    python -m maestro_jax.sweep --config=configs/toy.py:sweep_nd      # the N_D curve (Fig. 7)

Choices (issue 5): frames 32 x 32, 8 per clip at 2 fps, 4 s of audio; context width 64. The text
encoder and the ImageBind-shaped audio encoder are FROZEN RANDOM (tiny, exported once): the text
encoder only has to give distinct, fixed embeddings for the class names, which the UNets learn
to read; the audio encoder's random patch embedding + transformer keeps the clearly different
spectra of the toy sounds apart, and the CIM (trained) learns to map its tokens to the class
embeddings, exactly its job in Maestro.
"""

from __future__ import annotations

import ml_collections

STAGES = ("text", "imagebind", "vae", "t2i", "t2v", "t2v_layout", "separator", "cim")
VARIANTS = (*STAGES, "generate", "sweep_nd", "smoke")
ASSETS = "maestro_jax/assets/toy"

RESOLUTION = 32
NUM_FRAMES = 8
FPS = 2
CONTEXT_DIM = 64
NUM_QUERIES = 4


def _common(root: ml_collections.FieldReference) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.root = root
    c.seed = 0
    c.resolution = RESOLUTION
    c.num_frames = NUM_FRAMES
    c.fps = FPS
    c.context_dim = CONTEXT_DIM
    c.text = ml_collections.ConfigDict({"heads": 4, "layers": 2, "layer": "penultimate"})
    c.imagebind = ml_collections.ConfigDict({"width": 32, "depth": 2, "heads": 2})
    c.vae = ml_collections.ConfigDict(
        {"ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "kl_weight": 1e-5}
    )
    c.unet = ml_collections.ConfigDict(
        {
            "model_channels": 32,
            "channel_mult": (1, 2),
            "num_res_blocks": 1,
            "attention_resolutions": (1, 2),
            "num_head_channels": 16,
            "init_attn_heads": 2,
        }
    )
    c.vae_dir = root + "/vae/export"
    c.text_dir = root + "/text/export"
    c.init_from = ""
    c.lr = 1e-3
    c.warmup_steps = 100
    c.grad_clip = 1.0
    c.ema_decay = 0.999
    c.p_uncond = 0.1
    c.total_steps = 1
    c.batch_size = 1
    c.log_every = 25
    c.checkpoint_every = 250
    return c


def _cim(root: ml_collections.FieldReference) -> ml_collections.ConfigDict:
    """The paper's CIM training (configs/cim.py) against the toy T2I, on toy clips."""
    from configs import cim as cim_cfg

    c = cim_cfg.get_config()
    c.root = root
    c.total_steps = 1500
    c.model.unet.update(preset="folder", params=root + "/t2i/export")
    c.model.vae.update(preset="folder", params=root + "/vae/export")
    c.model.text.update(
        preset="folder", params=root + "/text/export", tokenizer="hash", layer="penultimate"
    )
    c.model.imagebind.update(preset="folder", params=root + "/imagebind/export")
    c.model.cim.update(preset="toy", num_queries=NUM_QUERIES)
    c.model.prediction_type = "eps"
    c.compute_dtype = "float32"
    c.data.update(synthetic=True, synthetic_kind="toyworld", synthetic_clips=400)
    c.data.synthetic_resolution = RESOLUTION
    c.frames.rule = "release"  # data.toyworld.write_cim_dataset: 4 of the 8 frames per clip
    c.interpolation = False
    c.optimizer.lr = 1e-3
    c.checkpoint.update(every_steps=250, keep=2, **{"async": False})
    c.log_every_steps = 50
    c.sample.update(every_steps=0, num_clips=4, steps=20, guidance=5.0, latent_size=16)
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "generate"
    if variant not in VARIANTS:
        raise ValueError(f"unknown toy variant {variant!r} (known: {', '.join(VARIANTS)})")
    root = ml_collections.FieldReference("runs/toy")
    if variant == "cim":
        c = _cim(root)
        c.task = "cim"
        return c
    if variant == "separator":
        from configs import toy_separator

        c = toy_separator.get_config()
        c.root = root
        return c
    if variant in ("generate", "sweep_nd"):
        from configs.toy_generate import generate_config, sweep_nd_config

        return generate_config() if variant == "generate" else sweep_nd_config()
    c = _common(root)
    c.task = {"smoke": "vae", "t2v_layout": "t2v"}.get(variant, variant)
    if variant == "vae":
        c.update(total_steps=800, batch_size=16, lr=2e-3)
    elif variant == "t2i":
        c.update(total_steps=1500, batch_size=16, lr=1e-3)
    elif variant == "t2v":
        c.update(total_steps=3000, batch_size=2, lr=5e-4)
        c.init_from = root + "/t2i/export"
    elif variant == "t2v_layout":
        # Fine-tunes the T2V with region-masked cross-attention on scenes of 1-4 objects that
        # never overlap: on p_layout of the entries each object's box attends only to its
        # label's tokens (C_sep's layout), cells in no box to the null embedding, as Mosaic
        # Denoising at generation; the rest train on captions as before. See README (toy world).
        c.update(total_steps=1500, batch_size=2, lr=2e-4, warmup_steps=50)
        c.init_from = root + "/t2v/export"
        c.object_counts = (0.05, 0.15, 0.4, 0.3, 0.1)  # P(K = 0..4 objects)
        c.separate_objects = True
        c.p_layout = 0.5
        c.p_merge = 0.5  # of the other captioned entries: C_merge instead of the caption
        c.layout_n_q = NUM_QUERIES
    elif variant == "smoke":
        c.update(total_steps=4, batch_size=2, log_every=1, checkpoint_every=2)
    return c
