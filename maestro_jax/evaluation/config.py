"""Evaluation (FVD, IA, AV-Align, placement) of generated videos.

Variants:
  configs/evaluate.py            converted ImageBind (audio + vision) and I3D weights
  configs/evaluate.py:runlocal   tiny random ImageBind and tiny-width random I3D (CPU, no files;
                                 the numbers only test the plumbing)

Examples:
  python -m convert.imagebind imagebind_huge.pth ckpt/imagebind --modalities audio,vision
  python -m convert.i3d i3d_pretrained_400.pt ckpt/i3d  # eps 1e-3; VideoGPT's: --bn_eps 1e-5
  python -m maestro_jax.evaluate --config=configs/evaluate.py \
      --config.imagebind_checkpoint=ckpt/imagebind --config.i3d_checkpoint=ckpt/i3d \
      --videos outputs --reference landscape_test_videos --out results/maestro.json
  python -m maestro_jax.evaluate --config=configs/evaluate.py:runlocal --videos out \
      --out out_eval.json
"""

from __future__ import annotations

import ml_collections


def evaluation_config(variant: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.model = "full"  # 'full': converted weights below; 'tiny': random tiny networks (tests)
    c.imagebind_checkpoint = ""  # `python -m convert.imagebind ... --modalities audio,vision`
    c.i3d_checkpoint = ""  # `python -m convert.i3d` output (only needed with --reference)
    c.dtype = "float32"
    c.seed = 0  # random tiny weights only
    # IA: which audio ('mixture' = the video's own audio track | 'stems' = mean over the
    # source stems of the job) and which audio embedding ('clip_mean' = ImageBind's default:
    # mean of `ia_clips` 2 s clips | 'segments' = one 2 s segment per frame's time span).
    c.ia_audio = "mixture"
    c.ia_embedding = "clip_mean"
    c.ia_clips = 3  # ImageBind load_and_transform_audio_data default clips_per_video
    c.ia_clip_rule = "git"  # clip sampler rule (ImageBind's pinned pytorchvideo)
    c.frame_batch = 16  # frames per ImageBind vision call (padded: one compiled shape)
    # AV-Align: both rules are always computed; '2025' (IoU in [0, 1]) is the main value.
    c.av_align_both_empty = 1.0
    # FVD (only with --reference): I3D logits of the first `fvd_frames` frames at fvd_size^2.
    c.fvd_convention = "styleganv"  # styleganv | npcov | tfgan64
    c.fvd_sqrt = "eigh"  # eigh (stable) | sqrtm | svd
    c.fvd_frames = 16
    c.fvd_size = 224
    c.fvd_batch = 8
    c.fvd_cache_dir = "~/.cache/maestro_jax/fvd"  # reference features ('' = no cache)
    # Placement (videos whose .json has boxes and >= 2 stems): crop IA of own vs other stems.
    c.placement = True
    # IA and the crop placement above need ImageBind (audio + vision); False skips both and
    # loads no ImageBind (the toy world has no vision branch). AV-Align needs no weights.
    c.imagebind_metrics = True
    # Toy world: placement = box colour accuracy (maestro_jax.metrics.placement.colour_placement) against the true
    # classes in the `toyworld.json` next to each video's stems (maestro_jax.toy.placement).
    c.toy_placement = False
    c.compilation_cache = "~/.cache/maestro_jax/jax_cache"  # '' disables it
    c.tiny = ml_collections.ConfigDict(dict(image_size=56))
    if variant == "runlocal":
        c.model = "tiny"
        c.fvd_size = 64  # the tiny I3D's final feature map is then [2, 2, 2]
        c.fvd_batch = 2
        c.fvd_cache_dir = ""
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r} (default | runlocal)")
    return c


def get_config(arg=None):
    return evaluation_config(arg or "default")
