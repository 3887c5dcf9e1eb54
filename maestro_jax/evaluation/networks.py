"""The networks behind the evaluation metrics: ImageBind (audio + vision: IA and the crop
placement) and the I3D of FVD, loaded from converted folders or tiny random ones (`runlocal`),
and the config checks that run before any of them loads.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import numpy as np

from maestro_jax.evaluation.videos import IA_AUDIO, IA_EMBEDDING, EvalError


# ----------------------------------------------------------------------------- networks
@functools.partial(jax.jit, static_argnames=("cfg",))
def _vision_emb(params, images, cfg):
    """uint8 images [B, H, W, 3] -> unit-norm ImageBind vision embeddings [B, E]."""
    from maestro_jax.models.imagebind import ImageBindVision, preprocess_images

    x = preprocess_images(images, cfg.image_size)
    return ImageBindVision(cfg).apply({"params": params}, x).emb


@functools.partial(jax.jit, static_argnames=("cfg",))
def _audio_emb(params, mel, cfg):
    """mel [1, S, 128, 204] -> (per-clip embeddings [S, E], their mean [E])."""
    from maestro_jax.models.imagebind import ImageBindAudio

    out = ImageBindAudio(cfg).apply({"params": params}, mel)
    return out.emb_per_clip[0], out.emb[0]


@dataclasses.dataclass(eq=False)
class Scorers:
    """ImageBind (audio + vision) and, lazily, I3D for one evaluation config."""

    cfg: Any
    ib_config: Any
    audio_params: Any
    vision_params: Any
    random: bool
    weights: dict
    _i3d: Any = None

    def vision(self, images: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] -> [N, E] (fixed-size padded batches: one compiled shape)."""
        bs = int(self.cfg.frame_batch)
        out = []
        for i in range(0, len(images), bs):
            chunk = images[i : i + bs]
            n = len(chunk)
            if n < bs:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - n, axis=0)])
            emb = _vision_emb(self.vision_params, np.ascontiguousarray(chunk), self.ib_config)
            out.append(np.asarray(emb, np.float64)[:n])
        return np.concatenate(out)

    def audio(self, wave: np.ndarray, sr: int, embedding: str) -> np.ndarray:
        """[C, N] -> [E] ('clip_mean' of `ia_clips` clips) or [S, E] ('segments')."""
        from maestro_jax import audio as audio_lib

        if embedding == "clip_mean":
            s = int(self.cfg.ia_clips)
        else:
            s = audio_lib.num_clips_for(wave.shape[-1] / sr, "ceil")
        mel = audio_lib.imagebind_audio_input(
            wave, sr, s, rule=self.cfg.ia_clip_rule, max_seconds=None
        )
        per_clip, mean = _audio_emb(self.audio_params, np.asarray(mel)[None, :, 0], self.ib_config)
        return np.asarray(mean if embedding == "clip_mean" else per_clip, np.float64)

    def i3d(self):
        """`metrics.fvd.I3DFeatures` (built on first use: only runs with a reference)."""
        if self._i3d is None:
            self._i3d = _build_i3d(self.cfg)
        return self._i3d


def _ib_config_from(d: dict, dtype):
    from maestro_jax.models.imagebind import ImageBindConfig

    names = {f.name for f in dataclasses.fields(ImageBindConfig)}
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
    kw["dtype"] = dtype
    return ImageBindConfig(**kw)


def _build_scorers(cfg) -> Scorers:
    import jax.numpy as jnp

    from maestro_jax.models import imagebind as ib
    from maestro_jax.nn.random_init import random_init

    dtype = jnp.dtype(cfg.dtype)
    if not uses_imagebind(cfg):  # no IA / crop placement: no ImageBind to load
        w = {"imagebind": "off", "i3d": str(cfg.i3d_checkpoint or "")}
        return Scorers(cfg, None, None, None, cfg.model == "tiny", w)
    if cfg.model == "tiny":
        from maestro_jax.audio.encoder import tiny_imagebind

        ibc = dataclasses.replace(tiny_imagebind(dtype), image_size=int(cfg.tiny.image_size))
        a = random_init(ib.ImageBindAudio(ibc), ib.dummy_input("audio", ibc), seed=cfg.seed)
        v = random_init(ib.ImageBindVision(ibc), ib.dummy_input("vision", ibc), seed=cfg.seed + 1)
        w = {"imagebind": "tiny random", "i3d": "tiny random"}
        return Scorers(cfg, ibc, a["params"], v["params"], True, w)
    if cfg.model != "full":
        raise EvalError(f"config.model must be 'full' or 'tiny', got {cfg.model!r}")
    from maestro_jax.checkpoints import load_params

    params, meta = load_params(cfg.imagebind_checkpoint)
    missing = [m for m in ("audio", "vision") if m not in params]
    if missing:
        raise EvalError(
            f"{cfg.imagebind_checkpoint} has no ImageBind {missing} branch: convert with "
            "`python -m convert.imagebind imagebind_huge.pth DIR --modalities audio,vision`"
        )
    ibc = _ib_config_from(meta.get("imagebind", {}), dtype)
    w = {"imagebind": str(cfg.imagebind_checkpoint), "i3d": str(cfg.i3d_checkpoint or "")}
    return Scorers(cfg, ibc, params["audio"], params["vision"], False, w)


def _build_i3d(cfg):
    import jax.numpy as jnp

    from maestro_jax.metrics.fvd import I3DFeatures
    from maestro_jax.models.i3d import I3DConfig, InceptionI3d, tiny_config

    if cfg.model == "tiny":
        from maestro_jax.nn.random_init import random_init

        icfg = tiny_config()
        x = jnp.zeros((1, int(cfg.fvd_frames), int(cfg.fvd_size), int(cfg.fvd_size), 3))
        params = random_init(InceptionI3d(icfg), x, seed=cfg.seed + 2)["params"]
    else:
        from maestro_jax.checkpoints import load_params

        params, meta = load_params(cfg.i3d_checkpoint)
        base = I3DConfig()
        icfg = I3DConfig(
            num_classes=int(meta.get("num_classes", base.num_classes)),
            width=float(meta.get("width", base.width)),
            pool_window=tuple(meta.get("pool_window", base.pool_window)),
            bn_eps=float(meta.get("bn_eps", base.bn_eps)),
        )
    return I3DFeatures(
        params, icfg, int(cfg.fvd_batch), num_frames=int(cfg.fvd_frames), size=int(cfg.fvd_size)
    )


_SCORERS: dict[str, Scorers] = {}


def load_scorers(cfg) -> Scorers:
    """The networks of an evaluation config, built once per process."""
    key = cfg.to_json_best_effort()
    if key not in _SCORERS:
        _SCORERS[key] = _build_scorers(cfg)
    return _SCORERS[key]


# ----------------------------------------------------------------------------- checks
def uses_imagebind(cfg) -> bool:
    return bool(cfg.get("imagebind_metrics", True))


def check_config(cfg, reference: bool) -> None:
    """Option values and weight folders, before anything is loaded."""
    from maestro_jax.metrics.fvd import CONVENTIONS, SQRT_METHODS

    if cfg.ia_audio not in IA_AUDIO:
        raise EvalError(f"config.ia_audio must be one of {IA_AUDIO}, got {cfg.ia_audio!r}")
    if cfg.ia_embedding not in IA_EMBEDDING:
        raise EvalError(
            f"config.ia_embedding must be one of {IA_EMBEDDING}, got {cfg.ia_embedding!r}"
        )
    if cfg.fvd_convention not in CONVENTIONS or cfg.fvd_sqrt not in SQRT_METHODS:
        raise EvalError(
            f"fvd_convention must be one of {CONVENTIONS} and fvd_sqrt one of {SQRT_METHODS}"
        )
    if cfg.model == "full" and uses_imagebind(cfg):
        if not cfg.imagebind_checkpoint:
            raise EvalError(
                "set --config.imagebind_checkpoint to a converted ImageBind folder "
                "(python -m convert.imagebind imagebind_huge.pth DIR --modalities audio,vision), "
                "or use configs/evaluate.py:runlocal"
            )
        if not (Path(cfg.imagebind_checkpoint) / "params").exists():
            raise EvalError(f"no converted params in {cfg.imagebind_checkpoint}")
    if cfg.model == "full":
        if reference:
            if not cfg.i3d_checkpoint:
                raise EvalError(
                    "FVD needs --config.i3d_checkpoint (python -m convert.i3d i3d.pt DIR)"
                )
            if not (Path(cfg.i3d_checkpoint) / "params").exists():
                raise EvalError(f"no converted params in {cfg.i3d_checkpoint}")
