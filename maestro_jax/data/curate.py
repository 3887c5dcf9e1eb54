"""Curate a prepared dataset (paper section 4.1; docs/method.md, "Data curation").

    python -m data.curate --data OUT --imagebind CKPT_DIR|random-tiny --out CURATED \
        [--bpe bpe_simple_vocab_16e6.txt.gz] [--flow_threshold 0.1] [--batch_size 16]

Per clip:
- ImageBind cosine similarities keyframe-audio (`sim_av`), keyframe-text (`sim_vt`) and
  audio-text (`sim_at`). The keyframe is the middle stored frame (frames[S_f // 2]; with the
  default rule the frame at ~5 s); the audio embedding is ImageBind's own clip-mean of the S = 5
  per-clip embeddings of the stored mel; the text is the class label.
- Median rule: keep a clip when all three similarities are strictly above their medians over the
  whole input dataset (all splits together).
- Static-video filter: the mean Farneback optical-flow magnitude of frames sampled at 2 fps
  (computed by data.prepare on centre crops at min(256, resolution) pixels and stored in the
  manifest as `flow_mag`) must be > --flow_threshold (0.1).
- Silence filter: drop a clip whose 16 kHz audio is all zeros (`audio_peak` <= --silence_eps,
  default 0.0).

CURATED gets the same on-disk format as data.prepare's output (records copied byte for byte)
with the similarities added to its manifest, plus `curation.jsonl` (every input clip: scores,
`kept`, `reasons` it was dropped for), `curation_summary.json` (medians, counts) and
`histogram.png`, the three similarity histograms (keyframe-audio, keyframe-text, audio-text,
left to right) with the median as a red line (paper Fig. 6).

`--imagebind random-tiny` uses a tiny randomly initialised ImageBind (tests, no weights);
otherwise a folder written by `python -m convert.imagebind` holding all three branches.

An Apache Beam pipeline (`beam_pipelines.run_curate`; the `.[data]` extra), like data.prepare:
workers score batches of --batch_size clips (ImageBind loaded once per worker, on its default
JAX device: the accelerator when it has one), one step applies the rules over all scores,
workers copy the kept records into parts, one commit step builds the TFDS folder. A rerun
(also after a killed run) replaces the previous curation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from maestro_jax.data.tfds_format import (
    PartWriter,
    finalize,
    load_classes,
    load_features,
)
from maestro_jax.files import read_jsonl, write_json, write_text

log = logging.getLogger("maestro_jax.data.curate")

SIMS = ("sim_av", "sim_vt", "sim_at")
SIM_TITLES = ("keyframe-audio", "keyframe-text", "audio-text")


# ==================================================================================================
# Filters
# ==================================================================================================


def median_rule(scores: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
    """keep[i] = all(scores[k][i] > median(scores[k])) over the keys; returns (keep, medians)."""
    medians = {k: float(np.median(v)) for k, v in scores.items()}
    keep = np.ones(len(next(iter(scores.values()))), bool)
    for k, v in scores.items():
        keep &= np.asarray(v) > medians[k]
    return keep, medians


# ==================================================================================================
# ImageBind embeddings
# ==================================================================================================


def tiny_imagebind_config():
    """A tiny ImageBind (width 32, one block per branch, 28 x 28 images) for tests."""
    from maestro_jax.models.imagebind import ImageBindConfig

    return ImageBindConfig(
        out_dim=32,
        audio_width=32,
        audio_depth=1,
        audio_heads=2,
        vision_width=32,
        vision_depth=1,
        vision_heads=2,
        image_size=28,
        text_width=32,
        text_depth=1,
        text_heads=2,
    )


def load_imagebind(spec: str | os.PathLike, seed: int = 0) -> tuple[Any, dict]:
    """(ImageBindConfig, {'audio', 'vision', 'text': params}) from a convert.imagebind folder, or
    a random tiny model for spec 'random-tiny'."""

    from maestro_jax.models import imagebind as ib

    if str(spec) == "random-tiny":
        cfg = tiny_imagebind_config()
        # Shapes from eval_shape, values from numpy (`random_like`): initialising with
        # jax.random would compile threefry per branch (~6 s each on CPU).
        from maestro_jax.nn.random_init import random_like

        shapes = ib.init_shapes(cfg)
        params = {m: random_like(shapes[m], seed + k) for k, m in enumerate(ib.MODALITIES)}
        return cfg, params
    from maestro_jax.checkpoints import load_params

    params, config = load_params(spec)
    missing = [m for m in ib.MODALITIES if m not in params]
    if missing:
        raise ValueError(
            f"{spec} lacks the ImageBind branches {missing}; convert with "
            "`python -m convert.imagebind imagebind_huge.pth OUT --modalities audio,vision,text`"
        )
    kw = dict(config.get("imagebind", {}))
    kw.pop("dtype", None)
    fields = {f.name for f in dataclasses.fields(ib.ImageBindConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items() if k in fields}
    return ib.ImageBindConfig(**kw), params


def _unit(e):
    import jax.numpy as jnp

    return e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _embed(modality: str, cfg, params: dict, x: jax.Array) -> jax.Array:
    """Unit-norm ImageBind embeddings [B, E] of mel [B, S, 128, 204] ('audio', ImageBind's
    clip mean), uint8 frames [B, H, W, 3] ('vision') or token ids [B, 77] ('text')."""
    import jax.numpy as jnp

    from maestro_jax.models import imagebind as ib

    if modality == "audio":
        e = ib.ImageBindAudio(cfg).apply({"params": params}, x.astype(jnp.float32)).emb
    elif modality == "vision":
        x = ib.preprocess_images(x, size=cfg.image_size)
        e = ib.ImageBindVision(cfg).apply({"params": params}, x).emb
    else:
        e = ib.ImageBindText(cfg).apply({"params": params}, x).emb
    return _unit(e)


class Embedder:
    """Unit-norm ImageBind embeddings of keyframes, mel clips and texts, in fixed-size batches
    (the last one zero-padded) so each branch compiles once per config."""

    def __init__(self, cfg, params: dict, batch_size: int = 16):
        self.cfg, self.params, self.batch_size = cfg, params, int(batch_size)

    def __call__(self, modality: str, x: np.ndarray) -> np.ndarray:
        """[N, ...] inputs -> [N, E] float32 unit vectors."""
        x = np.asarray(x)
        n, b = x.shape[0], self.batch_size
        out = []
        for i in range(0, n, b):
            chunk = x[i : i + b]
            pad = b - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            e = _embed(modality, self.cfg, self.params[modality], chunk)
            out.append(np.asarray(e)[: b - pad])
        return np.concatenate(out) if out else np.zeros((0, self.cfg.out_dim), np.float32)


# ==================================================================================================
# Histogram (paper Fig. 6), a tiny numpy rasteriser
# ==================================================================================================


def histogram_image(
    values: Sequence[np.ndarray],
    medians: Sequence[float] | None = None,
    bins: int = 40,
    panel: tuple[int, int] = (180, 240),
) -> np.ndarray:
    """uint8 [H, W, 3]: one panel per array (side by side), bars in blue on white with axes,
    each panel's median as a red vertical line. The x range of every panel is [min, max] of its
    values; bar heights are relative to the panel's tallest bin."""
    ph, pw = panel
    margin = 12
    img = np.full((ph, pw * len(values), 3), 255, np.uint8)
    for p, v in enumerate(values):
        v = np.asarray(v, np.float64)
        x0, x1 = p * pw + margin, (p + 1) * pw - margin
        y0, y1 = margin, ph - margin  # plot box, y1 = baseline
        img[y1, x0 : x1 + 1] = 0
        img[y0 : y1 + 1, x0] = 0
        if v.size == 0:
            continue
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            hi = lo + 1e-6
        counts, _ = np.histogram(v, bins=bins, range=(lo, hi))
        width = (x1 - x0 - 1) / bins
        top = max(int(counts.max()), 1)
        for i, c in enumerate(counts):
            if c == 0:
                continue
            bx0 = x0 + 1 + int(round(i * width))
            bx1 = x0 + 1 + max(int(round((i + 1) * width)) - 1, int(round(i * width)))
            bh = int(round((y1 - y0 - 1) * c / top))
            img[y1 - bh : y1, bx0 : bx1 + 1] = (70, 110, 200)
        if medians is not None:
            mx = x0 + 1 + int(round((medians[p] - lo) / (hi - lo) * (x1 - x0 - 2)))
            img[y0:y1, min(max(mx, x0), x1)] = (220, 30, 30)
    return img


# ==================================================================================================
# The steps (run by the Beam pipeline of `beam_pipelines.run_curate`)
# ==================================================================================================


class RecordReader:
    """Reads records of a prepared dataset by (split, part, row) of its manifest, from the parts
    (one open ArrayRecordReader per part file)."""

    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir)
        self._features = None
        self._readers: dict[Path, Any] = {}

    def raw(self, m: dict) -> bytes:
        """The serialized record of manifest row `m`."""
        from array_record.python import array_record_module as arm

        path = self.dir / "parts" / m["split"] / f"{m['part']}.array_record"
        if path not in self._readers:
            self._readers[path] = arm.ArrayRecordReader(str(path))
        return self._readers[path].read([m["row"]])[0]

    def __call__(self, m: dict) -> dict:
        """The record of manifest row `m` as numpy arrays (what `tfds.data_source` returns)."""
        if self._features is None:
            self._features = load_features(self.dir)
        return self._features.deserialize_example_np(self.raw(m))

    def close(self) -> None:
        for r in self._readers.values():
            r.close()
        self._readers.clear()


def text_embeddings(data_dir: str | os.PathLike, embedder: Embedder, bpe_path=None) -> np.ndarray:
    """[num_classes, E] embeddings of the class names of a prepared dataset."""
    from maestro_jax.models.tokenizer import get_tokenizer

    return embedder("text", get_tokenizer(bpe_path)(load_classes(data_dir)))


def score_batch(
    rows: Sequence[dict], read: RecordReader, embedder: Embedder, text_emb: np.ndarray
) -> list[dict]:
    """Manifest rows -> {i, clip_id, split, index, sim_av, sim_vt, sim_at} each (`i`, the row's
    position in the manifest, is passed through)."""
    recs = [read(r) for r in rows]
    frames = np.stack([x["frames"][x["frames"].shape[0] // 2] for x in recs])
    mel = np.stack([np.asarray(x["mel"], np.float32) for x in recs])
    li = np.array([int(x["label_index"]) for x in recs])
    va, aa = embedder("vision", frames), embedder("audio", mel)
    ta = text_emb[li]
    av, vt, at = (np.sum(a * b, axis=-1) for a, b in ((va, aa), (va, ta), (aa, ta)))
    return [
        {
            "i": r["i"],
            "clip_id": r["clip_id"],
            "split": r["split"],
            "index": r["index"],
            "sim_av": float(av[j]),
            "sim_vt": float(vt[j]),
            "sim_at": float(at[j]),
        }
        for j, r in enumerate(rows)
    ]


def decide(
    scores: Sequence[dict],
    *,
    data_dir: str | os.PathLike,
    flow_threshold: float,
    silence_eps: float,
    sim_rule: str,
    records_per_part: int,
) -> dict:
    """All clips' scores (any order) -> {'rows': one curation row per manifest row, in manifest
    order; 'medians'; 'parts': the curated parts to write, [{split, name, entries}] with
    `entries` the kept manifest rows (+ similarities) in manifest order}."""
    manifest = read_jsonl(Path(data_dir) / "manifest.jsonl")
    by_i = {s["i"]: s for s in scores}
    if sorted(by_i) != list(range(len(manifest))):
        raise ValueError(f"scored {len(by_i)} distinct clips of {len(manifest)}")
    sims = {k: np.array([by_i[i][k] for i in range(len(manifest))]) for k in SIMS}
    _, medians = median_rule(sims)
    flow = np.array([r["flow_mag"] for r in manifest])
    peak = np.array([r["audio_peak"] for r in manifest])
    static = ~(flow > flow_threshold)
    silent = peak <= silence_eps
    rows, kept = [], {}
    for i, r in enumerate(manifest):
        reasons = [f"low_{k}" for k in SIMS if sim_rule == "median" and not sims[k][i] > medians[k]]
        reasons += ["static"] * bool(static[i]) + ["silent"] * bool(silent[i])
        rows.append(
            {
                "clip_id": r["clip_id"],
                "split": r["split"],
                "index": r["index"],
                **{k: float(sims[k][i]) for k in SIMS},
                "flow_mag": float(flow[i]),
                "audio_peak": float(peak[i]),
                "kept": not reasons,
                "reasons": reasons,
            }
        )
        if not reasons:
            kept.setdefault(r["split"], []).append({**r, **{k: float(sims[k][i]) for k in SIMS}})
    parts = []
    n = max(1, int(records_per_part))
    for split, entries in sorted(kept.items()):
        for k, start in enumerate(range(0, len(entries), n)):
            parts.append(
                {"split": split, "name": f"curated-{k:05d}", "entries": entries[start : start + n]}
            )
    return {"rows": rows, "medians": medians, "parts": parts}


def write_curated_part(data_dir: str | os.PathLike, out_dir: str | os.PathLike, part: dict) -> dict:
    """Copy the records of `part` (from `decide`) byte for byte into one committed part of the
    curated folder; its manifest rows lose the source's position fields. Returns {name, split,
    records}."""
    reader = RecordReader(data_dir)
    w = PartWriter(out_dir, part["split"], part["name"])
    try:
        entries = []
        for m in part["entries"]:
            w.write(reader.raw(m))
            entries.append(
                {k: v for k, v in m.items() if k not in ("part", "row", "shard", "index")}
            )
        w.commit(
            {"clips": entries, "done": [e["clip_id"] for e in entries], "split": part["split"]}
        )
    except BaseException:
        w.abort()
        raise
    finally:
        reader.close()
    return {"name": part["name"], "split": part["split"], "records": len(part["entries"])}


def finish(
    num_parts: int,
    decision: dict,
    *,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    imagebind: str,
    flow_threshold: float,
    silence_eps: float,
    sim_rule: str,
) -> dict:
    """The commit step after every part: TFDS folder + manifest (`finalize`), curation.jsonl,
    histogram.png and curation_summary.json (returned)."""
    from maestro_jax.video import write_png

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    rows, medians = decision["rows"], decision["medians"]
    if num_parts != len(decision["parts"]):
        raise RuntimeError(f"wrote {num_parts} curated parts of {len(decision['parts'])}")
    counts = finalize(out_dir, load_features(data_dir), description=f"curated from {data_dir}")
    write_text(
        out_dir / "curation.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    )
    sims = {k: np.array([r[k] for r in rows]) for k in SIMS}
    write_png(
        out_dir / "histogram.png",
        histogram_image([sims[k] for k in SIMS], [medians[k] for k in SIMS]),
    )
    reasons_count: dict[str, int] = {}
    for row in rows:
        for r in row["reasons"]:
            reasons_count[r] = reasons_count.get(r, 0) + 1
    summary = {
        "input": str(data_dir),
        "imagebind": str(imagebind),
        "sim_rule": sim_rule,
        "medians": medians,
        "flow_threshold": flow_threshold,
        "silence_eps": silence_eps,
        "num_input": len(rows),
        "num_kept": int(sum(r["kept"] for r in rows)),
        "dropped_for": reasons_count,
        "splits": counts,
        "histogram_panels": list(SIM_TITLES),
    }
    write_json(out_dir / "curation_summary.json", summary)
    return summary


# ==================================================================================================
# Driver
# ==================================================================================================
