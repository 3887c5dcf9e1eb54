"""Evaluate generated videos: IA, AV-Align, FVD (with a reference set) and box placement.

  python -m maestro_jax.evaluate --config=configs/evaluate.py \
      --config.imagebind_checkpoint=ckpt/imagebind --config.i3d_checkpoint=ckpt/i3d \
      --videos outputs --reference real_videos --out results/maestro.json
  python -m maestro_jax.evaluate --config=configs/evaluate.py:runlocal --videos out --out e.json

`--videos` may be repeated (`NAME=DIR` names a row; default the folder's name): one row per
folder in the Markdown table written next to the JSON (`e.json` -> `e.md`), in the layout of the
paper's Table 3 (rows = methods, columns FVD / IA / AV-Align, plus AV-Align under the 2023 rule
and placement accuracy when known, and the number of videos).

Inputs: every `*.mp4` (also .avi/.mov/.mkv/.webm) directly in DIR; a video's `NAME.json` from
`maestro_jax.generate` (optional) gives its source stems (the job's `audio` files, or the
separated stems in `NAME_stems/` of mixture jobs) and its boxes (`boxes_per_frame`). Videos
without a .json are scored for IA (mixture) and AV-Align only.

Metrics (`maestro_jax.metrics`):
- **IA**: mean over frames of the ImageBind cosine between the frame and the audio, mean over
  videos. Audio `config.ia_audio`: 'mixture' (the video's own audio track, the default) or
  'stems' (the mean of the per-stem IA). Embedding `config.ia_embedding`: 'clip_mean'
  (ImageBind's default: the mean of `ia_clips` = 3 clips of 2 s) or 'segments' (one 2 s
  segment per frame's time span, S = ceil(duration / 2)). The audio is cut (or zero-padded) to
  the video's duration T / fps, as the generator saw it.
- **AV-Align**: the main value `av_align` is the **2025 rule** (each flow peak matched at most
  once, flow >= 0.1): an IoU, always in [0, 1]. `av_align_2023` is the rule older papers ran
  (TempoTokens 34d9502): one flow peak can absorb several audio onsets, so its raw per-video
  score can exceed 1 (`n_above_1` counts those); it is kept for comparison with published
  numbers only.
- **FVD** (only with `--reference`): I3D logits of the first `fvd_frames` (16) frames at
  `fvd_size`^2, Fréchet distance in float64 (`fvd_convention`, `fvd_sqrt`). The reference
  set's features are cached in `fvd_cache_dir` keyed by its file list and the settings.
- **Placement** (videos with boxes and >= 2 stems, one box per stem in order): for each box,
  IA of its crop against every stem; placed when its own stem scores highest (accuracy over
  boxes, mean margin own - best other; see `metrics/placement.py`).

Every value is reported with the number of videos it averages. Outputs are written atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from maestro_jax.generation.jobs import write_json
from maestro_jax.video import atomic_path

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IA_AUDIO = ("mixture", "stems")
IA_EMBEDDING = ("clip_mean", "segments")
AV_2023_NOTE = (
    "2023 rule (TempoTokens 34d9502): one flow peak may absorb several audio onsets, so a raw "
    "per-video score can exceed 1; for comparison with published numbers only"
)
AV_2025_NOTE = "2025 rule: each flow peak matched at most once, flow >= 0.1; an IoU in [0, 1]"


class EvalError(ValueError):
    """Bad evaluation input, found before any model compute; the message names the problem."""


# ----------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class VideoItem:
    """One video to score. boxes: [K, T, 4] frame-relative (l, t, r, b) or None."""

    name: str
    path: Path
    settings: dict | None
    stems: list[Path]
    boxes: np.ndarray | None
    missing_stems: list[str]


def _resolve(p: str, base: Path) -> Path | None:
    cands = [Path(p)] if Path(p).is_absolute() else [Path(p), base / p]
    return next((c for c in cands if c.is_file()), None)


def _stems_of(video: Path, settings: dict | None) -> tuple[list[Path], list[str]]:
    stem_dir = video.with_name(f"{video.stem}_stems")
    if stem_dir.is_dir():  # a mixture job: the separated stems, in query order
        return sorted(stem_dir.glob("*.wav")), []
    job = (settings or {}).get("job") or {}
    found, missing = [], []
    for p in job.get("audio") or []:
        r = _resolve(str(p), video.parent)
        (found.append(r) if r is not None else missing.append(str(p)))
    return (found, missing) if not missing else ([], missing)


def _boxes_of(settings: dict | None, name: str) -> np.ndarray | None:
    per_frame = (settings or {}).get("boxes_per_frame")
    if not per_frame:
        return None
    b = np.asarray(per_frame, np.float64)  # [T, K, 4]
    if b.ndim != 3 or b.shape[-1] != 4:
        raise EvalError(f"{name}.json: boxes_per_frame must be [T][K][4], got shape {b.shape}")
    return b.transpose(1, 0, 2)


def list_videos(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise EvalError(f"videos folder not found: {d}")
    it = d.rglob("*") if recursive else d.iterdir()
    return sorted(
        p
        for p in it
        if p.suffix.lower() in VIDEO_EXTS and not p.name.startswith(".") and p.is_file()
    )


def find_videos(directory: str | os.PathLike, need_stems: bool = False) -> list[VideoItem]:
    """The videos of a folder with what their `.json` says (stems, boxes). Raises EvalError for
    an empty or missing folder, a broken .json, or (need_stems) a video without its stems."""
    d = Path(directory)
    vids = list_videos(d)
    if not vids:
        raise EvalError(f"no videos ({', '.join('*' + e for e in VIDEO_EXTS)}) in {d}")
    items = []
    for v in vids:
        js = v.with_suffix(".json")
        settings = None
        if js.is_file():
            try:
                settings = json.loads(js.read_text())
            except json.JSONDecodeError as e:
                raise EvalError(f"{js}: not valid JSON ({e.msg})") from e
        stems, missing = _stems_of(v, settings)
        if need_stems and not stems:
            why = f"stem file(s) not found: {missing}" if missing else "no stems known"
            raise EvalError(
                f"{v}: IA over stems needs the job's stems ({why}; generate's NAME.json lists "
                "them, mixture jobs keep them in NAME_stems/); or use --config.ia_audio=mixture"
            )
        items.append(VideoItem(v.stem, v, settings, stems, _boxes_of(settings, v.stem), missing))
    return items


def _fit(wave: np.ndarray, sr: int, seconds: float) -> np.ndarray:
    """[C, N] cut or zero-padded to `seconds` (the video's duration, as the generator saw it)."""
    n = max(1, int(round(seconds * sr)))
    wave = wave[:, :n]
    if wave.shape[1] < n:
        wave = np.pad(wave, ((0, 0), (0, n - wave.shape[1])))
    return wave


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
    if not _uses_imagebind(cfg):  # no IA / crop placement: no ImageBind to load
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
def _uses_imagebind(cfg) -> bool:
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
    if cfg.model == "full" and _uses_imagebind(cfg):
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


# ----------------------------------------------------------------------------- FVD
def _clip(frames: np.ndarray, n: int, where: Path) -> np.ndarray:
    if frames.shape[0] < n:
        raise EvalError(f"{where}: FVD needs {n} frames, the video has {frames.shape[0]}")
    return frames[:n]


def _features(paths: Sequence[Path], scorers: Scorers) -> np.ndarray:
    from maestro_jax.metrics.av_align import read_video

    ext = scorers.i3d()
    bs, n = int(scorers.cfg.fvd_batch), int(scorers.cfg.fvd_frames)
    feats, batch = [], []
    for p in paths:
        batch.append(_clip(read_video(p)[0], n, Path(p)))
        if len(batch) == bs:
            feats.append(ext(np.stack(batch)))
            batch = []
    if batch:
        feats.append(ext(np.stack(batch)))
    return np.concatenate(feats)


def reference_features(ref_files: Sequence[Path], scorers: Scorers) -> np.ndarray:
    """I3D features [N, D] of the reference videos, through the feature cache when set."""
    from maestro_jax.metrics import fvd

    cfg = scorers.cfg
    compute: Callable = lambda files: _features([Path(f) for f in files], scorers)  # noqa: E731
    if not cfg.fvd_cache_dir:
        return compute(ref_files)
    settings = {**scorers.i3d().settings(), "weights": scorers.weights["i3d"]}
    cache = os.path.expanduser(cfg.fvd_cache_dir)
    return fvd.cached_features([str(p) for p in ref_files], compute, cache, settings)


# ----------------------------------------------------------------------------- scoring
def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


def score_videos(items: Sequence[VideoItem], scorers: Scorers, log: Callable = print) -> dict:
    """IA, AV-Align (both rules) and placement of each video -> per-video dict, in order."""
    from maestro_jax import audio as audio_lib
    from maestro_jax.metrics import av_align as av
    from maestro_jax.metrics import ia as ia_lib
    from maestro_jax.metrics import placement as pl
    from maestro_jax.metrics.av_align import read_video

    cfg = scorers.cfg
    per_video: dict[str, dict] = {}
    for it in items:
        t0 = time.perf_counter()
        frames, fps = read_video(it.path)
        if frames.shape[0] < 2 or fps <= 0:
            raise EvalError(f"{it.path}: needs >= 2 frames and a frame rate (got {len(frames)})")
        try:
            with warnings.catch_warnings():  # ffmpeg is fork+exec'd: JAX's fork warning is moot
                warnings.filterwarnings("ignore", "os.fork", RuntimeWarning)
                audio, sr = audio_lib.load_audio(it.path)
        except (audio_lib.AudioLoadError, FileNotFoundError) as e:
            raise EvalError(
                f"{it.path} has no readable audio track (IA and AV-Align need it): {e}"
            ) from e
        seconds = frames.shape[0] / fps
        rec: dict[str, Any] = {"frames": int(frames.shape[0]), "fps": fps}
        stem_embs = None
        stems = [audio_lib.load_audio(s) for s in it.stems]
        stems = [(_fit(w, r, seconds), r) for w, r in stems]
        if not _uses_imagebind(cfg):
            pass
        elif cfg.ia_audio == "mixture":
            frame_emb = scorers.vision(frames)
            emb = scorers.audio(_fit(audio, sr, seconds), sr, cfg.ia_embedding)
            rec["ia"] = ia_lib.ia_video(frame_emb, emb)
        else:
            frame_emb = scorers.vision(frames)
            embs = [scorers.audio(w, r, cfg.ia_embedding) for w, r in stems]
            rec["ia"] = ia_lib.ia_video(frame_emb, {"sources": embs}, "sources")
            if cfg.ia_embedding == "clip_mean":
                stem_embs = embs
        res = av.av_align_details(
            frames, fps, audio.T, sr, both_empty=float(cfg.av_align_both_empty)
        )
        rec["av_align"] = float(res.scores["2025"])
        rec["av_align_2023"] = float(res.scores["2023"])
        rec["audio_peaks"] = len(res.audio_peaks)
        rec["video_peaks_2025"] = len(res.video_peaks["2025"])
        k = 0 if it.boxes is None else it.boxes.shape[0]
        if cfg.get("toy_placement", False):
            rec["placement"] = _toy_placement(it, frames)
        elif cfg.placement and _uses_imagebind(cfg) and k >= 2 and len(it.stems) == k:
            if it.boxes.shape[1] != frames.shape[0]:
                raise EvalError(
                    f"{it.name}.json has boxes for {it.boxes.shape[1]} frames, the video has "
                    f"{frames.shape[0]}"
                )
            if stem_embs is None:
                stem_embs = [scorers.audio(w, r, "clip_mean") for w, r in stems]
            size = scorers.ib_config.image_size
            crops = pl.crop_boxes(frames, it.boxes, size)  # [K, T, S, S, 3]
            crop_emb = scorers.vision(crops.reshape(-1, size, size, 3)).reshape(k, len(frames), -1)
            sim = pl.crop_stem_similarity(crop_emb, np.stack(stem_embs))
            pr = pl.placement_from_similarity(sim, np.arange(k))
            rec["placement"] = {
                "accuracy": pr.accuracy, "margin": pr.margin, "n_boxes": pr.n,
                "correct": pr.correct.tolist(), "similarity": sim.tolist(),
                "margins": (np.diag(sim) - np.where(np.eye(k, dtype=bool), -np.inf, sim).max(1))
                .tolist(),
            }  # fmt: skip
        per_video[it.name] = rec
        ia_text = f"IA {rec['ia']:.4f}  " if "ia" in rec else ""
        log(
            f"  {it.name}: {ia_text}AV-Align {rec['av_align']:.4f} "
            f"(2023: {rec['av_align_2023']:.4f})  {time.perf_counter() - t0:.1f}s"
        )
    return per_video


def _toy_placement(it: VideoItem, frames: np.ndarray) -> dict:
    """Toy world: is box k's majority colour the class of stem k, per frame
    (`maestro_jax.toy.world.placement`; true classes from the stems' `toyworld.json`)."""
    from maestro_jax.toy import world as toyworld
    from maestro_jax.toy.evaluate import read_truth

    classes = read_truth(it.stems) if it.stems else None
    if it.boxes is None or classes is None or len(classes) != it.boxes.shape[0]:
        raise EvalError(
            f"{it.path}: toy placement needs the job's boxes and stems with their true classes "
            "(a toyworld.json next to the stems, as `python -m maestro_jax.sweep` writes for "
            "toy jobs); or set --config.toy_placement=False"
        )
    if it.boxes.shape[1] != frames.shape[0]:
        raise EvalError(
            f"{it.name}.json has boxes for {it.boxes.shape[1]} frames, the video has "
            f"{frames.shape[0]}"
        )
    correct = toyworld.placement(frames, it.boxes, classes)  # [K, T]
    return {
        "metric": "toy_colour", "accuracy": float(correct.mean()), "n_boxes": len(classes),
        "classes": classes, "correct": correct.tolist(),
    }  # fmt: skip


def summarise(
    name: str, videos_dir: Path, items: Sequence[VideoItem], per_video: dict, cfg, scorers
) -> dict:
    """Per-folder result: every metric with its value and the number of videos."""
    from maestro_jax.metrics import av_align as av
    from maestro_jax.metrics import ia as ia_lib

    ias = [v["ia"] for v in per_video.values() if "ia" in v]
    ia_val, ia_n = ia_lib.ia_dataset(ias) if ias else (None, 0)
    av_val, av_n, av_skip = av.mean_score([v["av_align"] for v in per_video.values()])
    s23 = [v["av_align_2023"] for v in per_video.values()]
    av23, av23_n, av23_skip = av.mean_score(s23)
    out: dict[str, Any] = {
        "name": name,
        "videos_dir": str(videos_dir),
        "n_videos": len(items),
        "videos": [it.name for it in items],
        "ia": (
            {"value": ia_val, "n": ia_n, "audio": cfg.ia_audio, "embedding": cfg.ia_embedding}
            if ias
            else None
        ),
        "av_align": {
            "value": av_val, "n": av_n, "skipped": av_skip, "rule": "2025", "note": AV_2025_NOTE,
        },
        "av_align_2023": {
            "value": av23, "n": av23_n, "skipped": av23_skip, "rule": "2023",
            "n_above_1": int(sum(1 for s in s23 if s > 1)), "note": AV_2023_NOTE,
        },
        "per_video": per_video,
        "weights": {**scorers.weights, "random": scorers.random},
    }  # fmt: skip
    placed = [v["placement"] for v in per_video.values() if "placement" in v]
    toy = [p for p in placed if p.get("metric") == "toy_colour"]
    if toy:  # accuracy over (box, frame) pairs
        correct = np.concatenate([np.asarray(p["correct"], bool).ravel() for p in toy])
        out["placement"] = {
            "accuracy": float(correct.mean()), "n_boxes": sum(p["n_boxes"] for p in toy),
            "n_box_frames": int(correct.size), "n": len(toy), "metric": "toy_colour",
        }  # fmt: skip
    elif placed:
        correct = np.concatenate([np.asarray(p["correct"], bool) for p in placed])
        margins = [m for p in placed for m in p["margins"]]
        out["placement"] = {
            "accuracy": float(correct.mean()),
            "margin": _mean(margins),
            "n_boxes": int(correct.size),
            "n": len(placed),
            "chance": _mean([1.0 / len(p["similarity"][0]) for p in placed]),
        }
    return out


def evaluate_dirs(
    dirs: Sequence[tuple[str, str | os.PathLike]],
    cfg,
    reference: str | os.PathLike | None = None,
    log: Callable = print,
) -> list[dict]:
    """Score each (name, folder); every input is checked before any model is loaded."""
    from maestro_jax.metrics import fvd

    if not dirs:
        raise EvalError("no --videos folder given")
    check_config(cfg, reference is not None)
    listed = [(n, Path(d), find_videos(d, cfg.ia_audio == "stems")) for n, d in dirs]
    ref_files: list[Path] = []
    if reference is not None:
        ref_files = list_videos(reference, recursive=True)
        if len(ref_files) < 2:
            raise EvalError(
                f"FVD needs at least 2 reference videos; {reference} has {len(ref_files)}"
            )
        for _n, d, items in listed:
            if len(items) < 2:
                raise EvalError(f"FVD needs at least 2 generated videos; {d} has {len(items)}")
    scorers = load_scorers(cfg)
    ref_feats = None
    results = []
    for name, d, items in listed:
        log(f"evaluating {name} ({len(items)} videos in {d})")
        per_video = score_videos(items, scorers, log)
        res = summarise(name, d, items, per_video, cfg, scorers)
        if reference is not None:
            if ref_feats is None:
                ref_feats = reference_features(ref_files, scorers)
            gen = _features([it.path for it in items], scorers)
            r = fvd.fvd_from_features(gen, ref_feats, cfg.fvd_convention, cfg.fvd_sqrt)
            res["fvd"] = {
                "value": r.fvd, "n": r.n_gen, "n_gen": r.n_gen, "n_real": r.n_real,
                "convention": r.convention, "sqrt_method": r.sqrt_method,
                "reference_dir": str(reference), "frames": int(cfg.fvd_frames),
                "size": int(cfg.fvd_size),
            }  # fmt: skip
        results.append(res)
    return results


# ----------------------------------------------------------------------------- reports
def _cell(block: dict | None, key: str = "value", digits: int = 3) -> str:
    if not block or block.get(key) is None or not np.isfinite(block[key]):
        return "–"
    return f"{round(block[key], digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.0"


def markdown_table(results: Sequence[dict], label_header: str = "Method") -> str:
    """Table 3 layout: rows = methods (folders or sweep values), columns FVD / IA / AV-Align,
    then AV-Align (2023 rule), placement accuracy when any row has it, and the video count."""
    has_place = any("placement" in r for r in results)
    head = [label_header, "FVD ↓", "IA ↑", "AV-Align ↑", "AV-Align 2023"]
    head += ["Placement ↑"] if has_place else []
    head += ["Videos"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = [str(r["name"]), _cell(r.get("fvd"), digits=1), _cell(r.get("ia")),
               _cell(r.get("av_align")), _cell(r.get("av_align_2023"))]  # fmt: skip
        if has_place:
            row.append(_cell(r.get("placement"), "accuracy"))
        row.append(str(r.get("n_videos", 0)))
        lines.append("| " + " | ".join(row) + " |")
    ia0 = next((r["ia"] for r in results if r.get("ia")), None)
    notes = [
        "",
        (
            f"- IA: ImageBind frame–audio cosine, audio = {ia0['audio']}, embedding = "
            f"{ia0['embedding']}; mean over frames, then over videos."
            if ia0
            else "- IA: – (off: config.imagebind_metrics is False)."
        ),
        f"- AV-Align: {AV_2025_NOTE}. AV-Align 2023: {AV_2023_NOTE}.",
    ]
    fv = [r["fvd"] for r in results if "fvd" in r]
    if fv:
        notes.append(
            f"- FVD: I3D logits, first {fv[0]['frames']} frames at {fv[0]['size']}², "
            f"{fv[0]['convention']} covariance, {fv[0]['n_real']} reference videos "
            f"({fv[0]['reference_dir']})."
        )
    else:
        notes.append("- FVD: – (no reference set given).")
    if any((r.get("placement") or {}).get("metric") == "toy_colour" for r in results):
        notes.append(
            "- Placement (toy world): fraction of (box, frame) pairs whose box shows its own "
            "source's class by colour (maestro_jax.toy.world.placement)."
        )
    elif has_place:
        notes.append(
            "- Placement: fraction of boxes whose crop is closer (ImageBind) to its own stem "
            "than to every other stem (chance 1 / number of sources)."
        )
    errors = [f"{r['name']}: {r['error']}" for r in results if r.get("error")]
    if errors:
        notes.append("- Not evaluated: " + "; ".join(errors))
    if any(r.get("weights", {}).get("random") for r in results):
        notes.append("- RANDOM tiny weights (a :runlocal config): numbers test the plumbing only.")
    return "\n".join(lines + notes) + "\n"


def write_report(out: str | os.PathLike, results: Sequence[dict], cfg, extra: dict | None = None):
    """FILE.json (one folder: its result at the top level; several: under 'methods') and the
    Markdown table FILE.md next to it; both atomic. Returns (json path, md path)."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise EvalError(f"--out must be a .json file, got {out}")
    body = dict(results[0]) if len(results) == 1 else {"methods": list(results)}
    body["config"] = json.loads(cfg.to_json_best_effort())
    body.update(extra or {})
    md = out.with_suffix(".md")
    table = markdown_table(results)
    write_json(out, body)
    with atomic_path(md) as tmp:
        tmp.write_text(table)
    return out, md


# ----------------------------------------------------------------------------- CLI
def _parse_videos(specs: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for s in specs:
        name, sep, d = s.partition("=")
        if not sep:
            name, d = Path(s.rstrip("/")).name or s, s
        out.append((name, d))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise EvalError(f"duplicate row names {dup}: name them with --videos NAME=DIR")
    return out


def main(argv):
    from absl import app

    from maestro_jax.generation.runner import enable_compilation_cache

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _FLAGS["config"].value
    try:
        if not _FLAGS["out"].value:
            raise EvalError("--out FILE.json is required")
        dirs = _parse_videos(_FLAGS["videos"].value)
        enable_compilation_cache(cfg.compilation_cache)
        results = evaluate_dirs(dirs, cfg, _FLAGS["reference"].value)
        js, md = write_report(_FLAGS["out"].value, results, cfg)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(md).read_text())
    print(f"wrote {js} and {md}")
    return 0


_FLAGS: dict = {}


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags

    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", "configs/evaluate.py", "evaluation config"
    )
    _FLAGS["videos"] = flags.DEFINE_multi_string(
        "videos", [], "folder of generated videos (NAME=DIR names the table row); repeatable"
    )
    _FLAGS["reference"] = flags.DEFINE_string(
        "reference", None, "folder of real videos (FVD reference set)"
    )
    _FLAGS["out"] = flags.DEFINE_string("out", None, "output JSON (a .md table goes next to it)")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
