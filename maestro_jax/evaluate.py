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

Metrics (`maestro_jax.metrics`; the code: `maestro_jax.evaluation`):
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

Every value is reported with the number of videos it averages. A video that cannot be scored
(unreadable, no audio track) is reported and skipped, the others are scored; such videos are
listed in FILE.failures.jsonl and the exit status is 1. A video shorter than its job says is
scored with a warning. Outputs are written atomically.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from maestro_jax.evaluation import config as eval_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", eval_config.__file__, "evaluation config (configs/evaluate.py[:runlocal])"
)
_VIDEOS = flags.DEFINE_multi_string(
    "videos", [], "folder of generated videos (NAME=DIR names the table row); repeatable"
)
_REFERENCE = flags.DEFINE_string("reference", None, "folder of real videos (FVD reference set)")
_OUT = flags.DEFINE_string("out", None, "output JSON (a .md table goes next to it)")


def parse_videos(specs: Sequence[str]) -> list[tuple[str, str]]:
    """`--videos` values -> [(row name, folder)]; NAME=DIR names a row, else the folder's name."""
    from maestro_jax.evaluation.videos import EvalError

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


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from maestro_jax.evaluation.report import write_report
    from maestro_jax.evaluation.score import evaluate_dirs
    from maestro_jax.evaluation.videos import EvalError
    from maestro_jax.generation.runner import enable_compilation_cache

    cfg = _CONFIG.value
    try:
        if not _OUT.value:
            raise EvalError("--out FILE.json is required")
        dirs = parse_videos(_VIDEOS.value)
        enable_compilation_cache(cfg.compilation_cache)
        results = evaluate_dirs(dirs, cfg, _REFERENCE.value)
        js, md = write_report(_OUT.value, results, cfg)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(Path(md).read_text())
    print(f"wrote {js} and {md}")
    failures = [
        {"folder": r["name"], "video": v, "reason": why}
        for r in results
        for v, why in r.get("failed", {}).items()
    ]
    if failures:
        from maestro_jax.files import write_text

        path = Path(js).with_suffix(".failures.jsonl")
        write_text(path, "".join(json.dumps(f) + "\n" for f in failures))
        print(f"{len(failures)} video(s) could not be scored: see {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
