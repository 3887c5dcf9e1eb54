"""IA: ImageBind image–audio alignment (Maestro paper section 4.5; docs/method.md, "Evaluation" > "IA").

IA of a video = mean over its frames of cos(vision embedding of the frame, audio embedding); the
dataset IA = mean over videos (reported with the number of videos). It is a **cosine**, not a dot
product: ImageBind's vision embeddings have norm 1 but its audio embeddings norm 20 (less after
the clip mean), so a dot product is ~20x too large. Reported values: Landscape 0.37, VGGSound 0.48.

No public Maestro evaluation code exists, so two choices are options here:
- **which audio** (`ia_video(..., audio=...)` with a dict of embeddings): `'mixture'` (the audio
  the video was generated from, as one clip; the default, what "the audio" means for
  single-track precedents) or `'sources'` (each separated source stem embedded on its own; the
  video's IA is the mean over stems of their IA).
- **which audio embedding**: one clip embedding [D] (ImageBind's default: the mean of its 3 clip
  embeddings; `clip_mean`) or per-segment embeddings [K, D], where frame t (of T) is compared with
  segment floor(t K / T) — the segment covering the frame's time when the K segments tile the
  video's duration evenly.

The numeric core takes embeddings (arrays); `ia_from_media` is a thin wrapper over callables
`embed_vision(frames [T, H, W, 3] uint8) -> [T, D]` and `embed_audio(wave [N]) -> [D] or [K, D]`
(e.g. the ImageBind models of `maestro_jax.models.imagebind`, not imported here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Cosine similarity along the last axis (broadcasting), float64; norms floored at `eps`
    (as torch `F.cosine_similarity`)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    na = np.maximum(np.linalg.norm(a, axis=-1), eps)
    nb = np.maximum(np.linalg.norm(b, axis=-1), eps)
    return np.sum(a * b, axis=-1) / (na * nb)


def frame_segments(num_frames: int, num_segments: int) -> np.ndarray:
    """For each of T frames the index floor(t K / T) of the audio segment covering it."""
    return (np.arange(num_frames) * num_segments) // num_frames


def ia_frames(frame_emb: np.ndarray, audio_emb: np.ndarray) -> np.ndarray:
    """Per-frame cosines [T]: frame_emb [T, D] against audio_emb [D] (one clip embedding) or
    [K, D] (per-segment embeddings, frame t against segment floor(t K / T))."""
    frame_emb = np.asarray(frame_emb)
    audio_emb = np.asarray(audio_emb)
    if frame_emb.ndim != 2:
        raise ValueError(f"frame embeddings must be [T, D], got shape {frame_emb.shape}")
    if audio_emb.ndim not in (1, 2) or audio_emb.shape[-1] != frame_emb.shape[-1]:
        raise ValueError(
            f"audio embedding must be [D] or [K, D] with D = {frame_emb.shape[-1]}, "
            f"got shape {audio_emb.shape}"
        )
    if audio_emb.ndim == 2:
        audio_emb = audio_emb[frame_segments(frame_emb.shape[0], audio_emb.shape[0])]
    return cosine(frame_emb, audio_emb)


def ia_video(
    frame_emb: np.ndarray,
    audio_emb: np.ndarray | Mapping[str, np.ndarray],
    audio: str = "mixture",
) -> float:
    """IA of one video: the mean over frames of the frame–audio cosine.

    audio_emb: an embedding ([D] or [K, D]) or a dict {'mixture': emb, 'sources': [emb, ...]};
    with a dict, `audio` picks 'mixture' or 'sources' (mean over the stems' IA).
    """
    if isinstance(audio_emb, Mapping):
        if audio not in ("mixture", "sources"):
            raise ValueError(f"audio must be 'mixture' or 'sources', got {audio!r}")
        if audio not in audio_emb:
            raise ValueError(f"no {audio!r} embedding given (have {sorted(audio_emb)})")
        if audio == "sources":
            stems = list(audio_emb["sources"])
            if not stems:
                raise ValueError("'sources' is empty")
            return float(np.mean([ia_frames(frame_emb, s).mean() for s in stems]))
        audio_emb = audio_emb["mixture"]
    return float(ia_frames(frame_emb, audio_emb).mean())


def ia_dataset(per_video: Iterable[float]) -> tuple[float, int]:
    """(mean IA over videos, number of videos)."""
    s = np.asarray(list(per_video), np.float64)
    if s.size == 0:
        raise ValueError("no videos to average")
    return float(s.mean()), int(s.size)


def ia_from_media(
    frames: np.ndarray,
    waves: np.ndarray | Mapping[str, object],
    embed_vision: Callable[[np.ndarray], np.ndarray],
    embed_audio: Callable[[np.ndarray], np.ndarray],
    audio: str = "mixture",
) -> float:
    """IA of one video from media: frames uint8 [T, H, W, 3], and a waveform or a dict
    {'mixture': wave, 'sources': [wave, ...]} passed through `embed_audio`."""
    frame_emb = np.asarray(embed_vision(frames))
    if frame_emb.ndim != 2 or frame_emb.shape[0] != len(frames):
        raise ValueError(
            f"embed_vision must return [T={len(frames)}, D], got shape {frame_emb.shape}"
        )
    if isinstance(waves, Mapping):
        if audio == "sources":
            emb = {"sources": [np.asarray(embed_audio(w)) for w in waves["sources"]]}
        else:
            emb = {"mixture": np.asarray(embed_audio(waves["mixture"]))}
        return ia_video(frame_emb, emb, audio)
    return ia_video(frame_emb, np.asarray(embed_audio(waves)))
