"""Training the condition injection module (CIM) against a frozen Stable Diffusion 2.1.

Spec: `shared/spec/maestro.md` "Training the CIM" and `video_models.md` 4.6. Variants:
`vggsound` (default), `landscape`, `animal_kingdom` (the paper's recipe: Adam lr 1e-4, 30k
steps, SpecAugment, 5 frames per clip, penultimate text layer), `release` (the reference
release script: AdamW lr 1e-5 wd 1e-2, 70k steps, 1 per device, last text layer, no
SpecAugment, 10 frames per clip, v-prediction) and `runlocal` (tiny random models, a synthetic
dataset, CPU, a minute).

    python -m maestro_jax.train --config=configs/cim.py:runlocal --workdir=/tmp/cim_local
    python -m maestro_jax.train --config=configs/cim.py:runlocal --workdir=/tmp/cim_local \
        --config.total_steps=40          # resumes from /tmp/cim_local, trains to step 40
    python -m maestro_jax.train --config=configs/cim.py:vggsound --workdir=/gcs/b/cim_vgg \
        --config.data.dir=/data/vggsound_tfds \
        --config.model.unet.params=ckpt/sd21_unet --config.model.vae.params=ckpt/sd_vae \
        --config.model.text.params=ckpt/openclip_h14 --config.model.imagebind.params=ckpt/ib \
        --config.model.text.bpe_path=bpe_simple_vocab_16e6.txt.gz
    python -m maestro_jax.train --config=configs/cim.py:release --workdir=... \
        --config.interpolation=True --config.distributed=True      # multi-host (one per host)

`ckpt/*` are folders written by the converters (`python -m convert.unet ...`, `convert.vae`,
`convert.clip_text`, `convert.imagebind`); `model.cim.init` optionally starts from converted CIM
weights (`convert.cim`). With `model.random_init` (runlocal, benchmarks) missing frozen weights
are random.
"""

import ml_collections

VARIANTS = ("vggsound", "landscape", "animal_kingdom", "release", "runlocal")


def _model() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    # Frozen SD 2.1 UNet: preset 'sd21' | 'tiny'; `params` a converted folder ('' = none);
    # remat: jax.checkpoint every UNet block; small (tiny only): 1 res block, 2 levels.
    m.unet = ml_collections.ConfigDict(
        {"preset": "sd21", "params": "", "remat": False, "attn_impl": "xla", "small": False}
    )
    m.vae = ml_collections.ConfigDict({"preset": "sd", "params": ""})
    # OpenCLIP ViT-H-14 text tower: preset 'vit_h14' | 'vit_h14_hf' | 'tiny'. The label targets
    # and the null embedding come from `layer`. tokenizer 'clip' (BPE file: bpe_path, or
    # $MAESTRO_CLIP_BPE, or an installed open_clip) | 'hash' (runlocal: labels mapped to fixed
    # pseudo-random token ids, no file needed). prompt: format string for a class label.
    m.text = ml_collections.ConfigDict(
        {
            "preset": "vit_h14",
            "params": "",
            "layer": "penultimate",
            "tokenizer": "clip",
            "bpe_path": "",
            "prompt": "{}",
        }
    )
    m.imagebind = ml_collections.ConfigDict({"preset": "huge", "params": ""})
    # The trained module: preset 'release' (71.1 M params) | 'tiny'; init '' = random (the
    # latents N(0, 1) / sqrt(dim), Dense layers lecun-normal) or a converted CIM folder.
    m.cim = ml_collections.ConfigDict({"preset": "release", "num_queries": 10, "init": ""})
    # 'v' (SD 2.1 768-v, the release) | 'eps' (SD 2.1-base); the 1000-step scaled-linear schedule.
    m.prediction_type = "v"
    # True: frozen models without `params` get random weights (runlocal, benchmarks only).
    m.random_init = False
    return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "vggsound"
    if variant not in VARIANTS:
        raise ValueError(f"unknown config variant {variant!r} (known: {', '.join(VARIANTS)})")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    c.total_steps = 30_000
    # Global batch = batch_size_per_device * jax.device_count() clips (paper: 4 GPUs).
    c.batch_size_per_device = 1
    c.model = _model()

    # Data (`maestro_jax.data.pipeline.make_dataset`); `synthetic` writes a synthetic dataset into
    # <workdir>/synthetic_data when `dir` is empty (runlocal).
    c.data = ml_collections.ConfigDict(
        {
            "dir": "",
            "split": "train",
            "shuffle": True,
            "synthetic": False,
            "synthetic_kind": "synthetic",  # synthetic (data.synthetic) | toyworld (maestro_jax.toy.world)
            "synthetic_clips": 16,
            "synthetic_resolution": 32,
            "synthetic_classes": 3,
            # Use cached VAE latents when the batch carries them (`latents`), else encode
            # frames inside the step.
            "use_latents": True,
            # Read the VAE latent cache of `python -m data.cache_latents` (DIR/latents, made
            # with model.vae.params) when it is complete: make_dataset(latents='auto' if True
            # else False, vae=model.vae.params). It caches the posterior MEAN by default, so
            # vae_sample_posterior no longer adds the posterior noise (the usual trade-off).
            "use_latent_cache": True,
        }
    )
    # Frames: `rule` documents which frames the dataset holds per 10 s clip ('default': first
    # frame then every ceil(F / (S - 1)), S = 5 frames; 'release': the 1/4 and 3/4 points of
    # each 2 s segment, 10 frames; `data.prepare --frames_rule`, checked against the dataset's
    # prep_config.json when it has one). num_frames: frames used per clip, 0 = all (with
    # interpolation: min(frames, 2S - 1), the release's "first 9 frames"). Frame j uses token
    # set floor(j * K / F) of the K = S (or 2S - 1) sets.
    c.frames = ml_collections.ConfigDict({"rule": "default", "num_frames": 0})
    c.interpolation = False  # insert means of neighbouring clip token sets (release flag)
    c.token_offset = 1  # o: CIM tokens at context columns [o, o + N_Q)
    c.lambda1 = 0.9  # lambda1 (L_sd(A) + L_sd(A')) + (1 - lambda1) (L_mse(A) + L_mse(A'))
    # SpecAugment for A' (`maestro_jax.audio.spec_augment` arguments). Disabled: A' = A.
    c.spec_augment = ml_collections.ConfigDict(
        {
            "enabled": True,
            "time_warp": 20,
            "freq_masks": 2,
            "freq_width": 27,
            "time_masks": 2,
            "time_width": 40,
        }
    )
    # LDM draws the training latent from the VAE posterior (mean + std * noise); False = mean.
    c.vae_sample_posterior = True

    # optimizer: 'adam' | 'adamw'; grad_clip_norm 0 = off. schedule: 'constant' | 'cosine'
    # (to end_factor * lr at total_steps), both after `warmup_steps` of linear warmup.
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adam",
            "lr": 1e-4,
            "weight_decay": 0.0,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "grad_clip_norm": 0.0,
        }
    )
    c.schedule = ml_collections.ConfigDict(
        {"name": "constant", "warmup_steps": 0, "end_factor": 0.0}
    )

    # Sharding: mesh shape over ('data', 'fsdp') (-1 = all remaining devices). Batches split
    # over both axes; `shard_frozen` splits the large frozen params over 'fsdp' (FSDP-style),
    # `shard_train_state` the CIM params and optimizer state too.
    c.mesh = ml_collections.ConfigDict(
        {"shape": (-1, 1), "shard_frozen": False, "shard_train_state": False}
    )
    c.compute_dtype = "bfloat16"  # UNet / VAE / ImageBind / CIM compute; params stay float32
    c.distributed = False  # jax.distributed.initialize() first (also env MAESTRO_DISTRIBUTED=1)

    # Checkpoints (orbax, async): every_steps and at the end; keep the newest `keep`.
    c.checkpoint = ml_collections.ConfigDict({"every_steps": 1000, "keep": 3, "async": True})
    # metrics reach the host only at log steps (console line, TensorBoard flush); metrics.jsonl
    # still gets one line per step, fetched together at the log step
    c.log_every_steps = 50
    # Sample images of the frozen T2I model conditioned on held-out audio (DDIM, CFG against
    # the null embedding), written to <workdir>/samples/ and TensorBoard. every_steps 0 = off.
    c.sample = ml_collections.ConfigDict(
        {
            "every_steps": 2500,
            "split": "test",  # falls back to the training split when absent
            "num_clips": 4,
            "num_segments": 2,  # images per clip: token sets 0 .. num_segments - 1
            "steps": 25,
            "guidance": 7.5,
            "eta": 0.0,
            "latent_size": 64,  # 512 x 512 images for SD 2.1
        }
    )
    # Test hook: make the loss NaN at this step (0 = never) to exercise the non-finite stop.
    c.debug_nan_at_step = 0

    if variant in ("vggsound", "landscape", "animal_kingdom"):
        # Paper (section 4.2): Adam lr 1e-4, 30k steps (VGGSound, 4 GPUs). The paper gives no
        # separate recipe for Landscape / Animal Kingdom; the same one is used.
        c.data.dir = {"vggsound": "", "landscape": "", "animal_kingdom": ""}[variant]
    elif variant == "release":
        c.total_steps = 70_000
        c.optimizer.update(name="adamw", lr=1e-5, weight_decay=1e-2)
        c.model.text.layer = "last"
        c.spec_augment.enabled = False
        c.frames.rule = "release"
        c.model.prediction_type = "v"
    elif variant == "runlocal":
        c.total_steps = 20
        c.model.unet.update(preset="tiny", small=True)
        c.model.vae.preset = "tiny"
        c.model.text.update(preset="tiny", tokenizer="hash")
        c.model.imagebind.preset = "tiny"
        c.model.cim.update(preset="tiny", num_queries=4)
        c.model.random_init = True
        c.data.update(synthetic=True, synthetic_resolution=16)  # 8 x 8 latents
        c.compute_dtype = "float32"  # CPU: bit-exact resume checks and no slow bf16 emulation
        c.optimizer.lr = 1e-3
        c.mesh.shard_frozen = True  # a no-op on one device; tests run it on a 4 x 2 mesh
        c.checkpoint.update(every_steps=5, keep=2)
        c.log_every_steps = 5
        c.sample.update(every_steps=10, num_clips=2, steps=2, guidance=2.0, latent_size=8)
    return c
