"""Generation as a library: validate jobs, build models, sample, write outputs.

`maestro_jax.generate` is the thin command-line entry point over this module (absl flags live
there only, so other tools and tests can import this one). See its docstring for the job format
and the outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from maestro_jax import mosaic
from maestro_jax.audio import separation
from maestro_jax.generation import models as gen_models
from maestro_jax.generation import sampling
from maestro_jax.generation.jobs import (
    Job,
    JobError,
    check_job_files,
    is_done,
    output_paths,
    write_json,
)


class InputError(ValueError):
    """Bad input found before any compute."""


def _layout(job: Job, cfg) -> tuple[tuple, tuple]:

    boxes = job.boxes if job.boxes is not None else cfg.boxes
    if isinstance(boxes, str):
        return mosaic.parse_layout(boxes)
    parsed = []
    for b in boxes:
        if isinstance(b, str):
            parsed.append(mosaic.parse_boxes(b))
        elif isinstance(b, dict):  # {"keyframes": [[pos, [l,t,r,b]], ...]}
            parsed.append(mosaic.Boxes.keyframed(b["keyframes"]))
        else:
            parsed.append(mosaic.Boxes.static(b))
    return tuple(parsed), tuple(parsed)


@dataclasses.dataclass
class Plan:
    """A validated job: its audio loaded, its boxes parsed (no model compute yet)."""

    job: Job
    kind: str  # 'stems' | 'mixture' | 't2v'
    stems: list[tuple[np.ndarray, int]]
    mixture: tuple[np.ndarray, int] | None
    locate_boxes: tuple
    mosaic_boxes: tuple
    n_d: int
    warnings: list[str]


def plan_job(job: Job, cfg, models_hint: dict) -> Plan:
    """Every check that needs no model: raises JobError/InputError naming the problem."""
    from maestro_jax import audio as audio_lib

    check_job_files(job)
    n_d = cfg.n_d if job.n_d is None else job.n_d
    if not 0 <= n_d <= cfg.steps:
        raise JobError(f"job {job.name}: N_D = {n_d} is larger than the {cfg.steps} DDIM steps")
    warnings: list[str] = []
    if job.prompt:
        return Plan(job, "t2v", [], None, (), (), n_d, warnings)
    stems, mixture = [], None

    def load(p):
        try:
            return audio_lib.load_audio(p)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise JobError(f"job {job.name}: cannot read audio {p}: {e}") from e

    if job.audio:
        stems = [load(p) for p in job.audio]
        for p, (w, _) in zip(job.audio, stems):
            if float(np.max(np.abs(w))) < 1e-4:
                warnings.append(f"stem {p} is silent (peak < 1e-4)")
        kind = "stems"
    else:
        mixture = load(job.mixture)
        kind = "mixture"
    n_a = job.num_sources
    if job.query_embeddings and not job.queries:
        with np.load(job.query_embeddings) as z:
            n_a = int(z[z.files[0]].shape[0])
    cap = mosaic.context_capacity(cfg.num_queries, cfg.mosaic.token_offset)
    if n_a > cap:
        raise JobError(
            f"job {job.name}: {n_a} sources do not fit one 77-token context: at most "
            f"floor((77 - {cfg.mosaic.token_offset}) / N_Q={cfg.num_queries}) = {cap}"
        )
    if n_a < 1:
        raise JobError(f"job {job.name}: no sources")
    try:
        loc, mos = _layout(job, cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise JobError(f"job {job.name}: bad boxes: {e}") from e
    if len(loc) != n_a:
        raise JobError(
            f"job {job.name}: {n_a} sources but {len(loc)} boxes ({job.boxes or cfg.boxes})"
        )
    try:
        mosaic.check_boxes(loc, models_hint["resolutions"], cfg.num_frames, cfg.mosaic.cell_rule)
        mosaic.check_boxes(mos, models_hint["resolutions"], cfg.num_frames, cfg.mosaic.cell_rule)
    except ValueError as e:
        raise JobError(f"job {job.name}: {e}") from e
    return Plan(job, kind, stems, mixture, loc, mos, n_d, warnings)


# ----------------------------------------------------------------------------- models
_MODEL_CACHE: dict = {}


def build_models(cfg, cim_checkpoint: str | None = None, need_separator: bool = False):
    """The models of a config, built once per process (compiled functions are cached per
    models object, so reusing it avoids recompiling in sweeps and tests)."""
    # only the fields that decide which networks are built: sweeps over mode, N_D or
    # outdir share one models object (and so its compiled functions)
    fields = ("model", "checkpoint", "imagebind_checkpoint", "cim_checkpoint",
              "separator_checkpoint", "clap_tokenizer_dir", "bpe_path", "num_queries", "dtype",
              "attn_impl")  # fmt: skip
    key = (tuple(str(cfg.get(f)) for f in fields), cim_checkpoint, need_separator)
    if cfg.model == "tiny":
        key += (cfg.seed,)  # the random weights depend on the seed
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = _build_models(cfg, cim_checkpoint, need_separator)
    return _MODEL_CACHE[key]


def _build_models(cfg, cim_checkpoint: str | None = None, need_separator: bool = False):
    import jax.numpy as jnp

    from maestro_jax.audio import encoder as ae
    from maestro_jax.audio import separation

    if cfg.model == "tiny":
        m = gen_models.init_random_models(
            cfg.seed, cfg.dtype, num_queries=cfg.num_queries, bpe_path=cfg.bpe_path or None,
            separator=need_separator,
        )  # fmt: skip
        if cim_checkpoint:
            m = dataclasses.replace(m, audio=_with_cim(m.audio, cim_checkpoint, cfg.dtype))
        return m
    if not cfg.checkpoint:
        raise InputError(
            "set --config.checkpoint to a converted VideoCrafter2 folder "
            "(python -m convert.videocrafter model.ckpt DIR), or use a :runlocal config"
        )
    m = gen_models.load_models(
        cfg.checkpoint, dtype=cfg.dtype, attn_impl=cfg.attn_impl, bpe_path=cfg.bpe_path or None,
        imagebind_checkpoint=cfg.imagebind_checkpoint or None,
        cim_checkpoint=(cim_checkpoint or cfg.cim_checkpoint) or None,
    )  # fmt: skip
    if need_separator:
        if not cfg.separator_checkpoint:
            raise InputError("mixture jobs need --config.separator_checkpoint (convert.audiosep)")
        sep = separation.load_separator(cfg.separator_checkpoint, cfg.clap_tokenizer_dir or None)
        m = dataclasses.replace(m, separator=sep)
    del ae, jnp
    return m


def _with_cim(enc, cim_dir, dtype):
    import jax.numpy as jnp

    from maestro_jax.audio import encoder as ae
    from maestro_jax.checkpoints import load_params

    params, meta = load_params(cim_dir)
    cim_cfg = ae._dataclass_from(ae.CIMConfig, meta.get("cim", {}), dtype=jnp.dtype(dtype))
    return ae.AudioEncoder(enc.ib_config, enc.ib_params, cim_cfg, params)


# ----------------------------------------------------------------------------- running
def _settings(cfg, n_d: int, mode: str | None = None):
    return sampling.SamplerSettings(
        steps=cfg.steps, eta=float(cfg.eta), guidance=float(cfg.guidance), fps=int(cfg.fps),
        n_d=int(n_d), mode=mode or cfg.mode,
    )  # fmt: skip


def _spec(cfg):

    return sampling.VideoSpec(int(cfg.num_frames), int(cfg.height), int(cfg.width))


def _options(cfg):

    return mosaic.MosaicOptions(**dict(cfg.mosaic))


def sources_of(plan: Plan, models, outdir: Path, cfg) -> tuple[list, tuple[np.ndarray, int]]:
    """(stems [(wave, sr)], mixture (wave, sr)) of a plan; runs separation for mixture jobs and
    keeps the separated stems next to the video."""
    from maestro_jax import audio as audio_lib

    if plan.kind == "stems":
        return plan.stems, sampling.mixture_of(plan.stems)
    wave, sr = plan.mixture
    sep = models.separator
    ssr = sep.config.sample_rate
    mono = audio_lib.resample(wave.mean(axis=0, keepdims=True), sr, ssr)[0]
    qemb = None
    if plan.job.query_embeddings:
        with np.load(plan.job.query_embeddings) as z:
            qemb = np.asarray(z["embeddings"] if "embeddings" in z.files else z[z.files[0]])
    stems = separation.separate_mixture(sep, mono, plan.job.queries, qemb)
    stem_dir = output_paths(outdir, plan.job.name)["stems"]
    stem_dir.mkdir(parents=True, exist_ok=True)
    names = plan.job.queries or [f"source{i}" for i in range(len(stems))]
    for i, (q, s) in enumerate(zip(names, stems)):
        slug = "".join(ch if ch.isalnum() else "_" for ch in q)[:40]
        audio_lib.write_wav(stem_dir / f"{i:02d}_{slug}.wav", s[None], ssr)
    return [(s[None], ssr) for s in stems], (wave, sr)


def write_outputs(plan: Plan, frames: np.ndarray, mixture, outdir: Path, cfg, extra: dict) -> dict:
    from maestro_jax.video import contact_sheet, write_png, write_video

    spec = _spec(cfg)
    paths = output_paths(outdir, plan.job.name)
    fps = sampling.video_fps(spec, cfg.clip_window, cfg.save_fps)
    audio, sr = mixture if mixture is not None else (None, None)
    write_video(paths["video"], frames, fps, audio, sr)
    boxes = (
        sampling.describe_boxes(plan.locate_boxes, spec.num_frames) if plan.locate_boxes else None
    )
    write_png(paths["sheet"], contact_sheet(frames, boxes))
    settings = {
        "job": plan.job.to_json(),
        "kind": plan.kind,
        "n_d": plan.n_d,
        "video": {
            "file": paths["video"].name,
            "frames": spec.num_frames,
            "fps": fps,
            "height": spec.height,
            "width": spec.width,
            "duration_s": spec.num_frames / fps,
        },  # fmt: skip
        "boxes_per_frame": boxes,
        "mosaic_boxes_per_frame": (
            sampling.describe_boxes(plan.mosaic_boxes, spec.num_frames)
            if plan.mosaic_boxes
            else None
        ),
        "config": json.loads(cfg.to_json_best_effort()),
        "warnings": plan.warnings,
        **extra,
    }
    write_json(paths["json"], settings)
    return settings


def attention_resolutions(cfg) -> tuple[tuple[int, int], ...]:
    """The (h, w) of every attention level for the config's video size, from the model configs
    alone (the checkpoint folder's config.json files; no weights are read), so box checks run
    before anything is loaded or compiled."""

    if cfg.model == "tiny":
        unet, vae, _ = gen_models.tiny_configs(cfg.dtype)
        ds, levels = vae.downsample_factor, len(unet.channel_mult)
    else:
        ds, levels = 8, 4  # VideoCrafter2
        root = Path(cfg.checkpoint) if cfg.checkpoint else None
        if root and (root / "unet" / "config.json").is_file():
            levels = len(
                json.loads((root / "unet" / "config.json").read_text())["unet"]["channel_mult"]
            )
        if root and (root / "vae" / "config.json").is_file():
            ds = 2 ** (
                len(json.loads((root / "vae" / "config.json").read_text())["vae"]["ch_mult"]) - 1
            )
    return mosaic.unet_resolutions((cfg.height // ds, cfg.width // ds), num_levels=levels)


def run(cfg, jobs: list[Job], outdir: Path, *, strict: bool) -> int:
    """Validate every job, then generate the unfinished ones. Returns the exit status."""
    import jax
    from tqdm import tqdm

    from maestro_jax.audio import encoder as ae
    from maestro_jax.generation.jobs import split_for_process
    from maestro_jax.sharding import make_mesh

    if jax.process_count() > 1:
        jobs = split_for_process(jobs, jax.process_index(), jax.process_count())
    spec = _spec(cfg)
    hint = {"resolutions": attention_resolutions(cfg)}
    plans, failed = [], []
    for job in jobs:
        if is_done(outdir, job.name):
            print(f"skip {job.name}: already done")
            continue
        try:
            plans.append(plan_job(job, cfg, hint))
        except (JobError, InputError) as e:
            if strict:
                raise InputError(str(e)) from e
            print(f"error: {e}; skipping", file=sys.stderr)
            failed.append(job.name)
    for p in plans:
        for w in p.warnings:
            print(f"warning: job {p.job.name}: {w}", file=sys.stderr)
    if not plans:
        print(f"nothing to do ({len(failed)} failed)")
        return 1 if failed else 0

    groups: dict[Any, list[Plan]] = {}
    for p in plans:
        groups.setdefault((p.job.checkpoint or "", p.kind == "mixture"), []).append(p)
    n_dev = jax.local_device_count()
    # this process's devices only: with several processes each one runs its own jobs
    mesh = make_mesh((n_dev, 1), ("data", "fsdp"), jax.local_devices()) if n_dev > 1 else None
    batch = cfg.batch_size or n_dev
    outdir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(plans), desc="jobs", unit="video", file=sys.stdout)
    for (ckpt, need_sep), group in groups.items():
        models = build_models(cfg, ckpt or None, need_separator=need_sep)
        if models.random:
            print("note: tiny RANDOM weights (a :runlocal config): videos show noise patterns")
        try:
            spec.check(models)
        except ValueError as e:
            raise InputError(str(e)) from e
        # t2v jobs one at a time; Maestro jobs batched by (N_A, N_D)
        for p in [p for p in group if p.kind == "t2v"]:
            t0 = time.perf_counter()
            try:
                lat = sampling.sample_t2v(
                    models, p.job.prompt, spec, _settings(cfg, p.n_d), p.job.seed
                )
                frames = sampling.decode(models, lat, cfg.frame_chunk)[0]
                write_outputs(p, frames, None, outdir, cfg, {"random_weights": models.random})
            except Exception as e:  # noqa: BLE001 - a failing job is reported, not fatal
                if strict:
                    raise
                print(f"error: job {p.job.name} failed: {e}", file=sys.stderr)
                failed.append(p.job.name)
            bar.update(1)
            bar.set_postfix_str(f"{p.job.name} {time.perf_counter() - t0:.1f}s")
        mplans = [p for p in group if p.kind != "t2v"]
        by_shape: dict[Any, list[Plan]] = {}
        for p in mplans:
            by_shape.setdefault((len(p.locate_boxes), p.n_d), []).append(p)
        for (_n_a, n_d), ps in by_shape.items():
            settings = _settings(cfg, n_d)
            for i in range(0, len(ps), batch):
                chunk = ps[i : i + batch]
                t0 = time.perf_counter()
                prepared, ok, mixes = [], [], []
                for p in chunk:
                    try:
                        stems, mix = sources_of(p, models, outdir, cfg)
                        tokens = ae.encode_stems(
                            models.audio, stems, cfg.clip_window, cfg.clip_rule
                        )
                        prepared.append(
                            sampling.prepare_job(
                                models,
                                tokens,
                                p.locate_boxes,
                                p.mosaic_boxes,
                                spec,
                                p.job.seed,
                                _options(cfg),
                            )  # fmt: skip
                        )
                        ok.append(p)
                        mixes.append(mix)
                    except Exception as e:  # noqa: BLE001
                        if strict:
                            raise
                        print(f"error: job {p.job.name} failed: {e}", file=sys.stderr)
                        failed.append(p.job.name)
                        bar.update(1)
                if not prepared:
                    continue
                # jobs split over the first len(prepared) devices: no padding work
                sub = _job_mesh(len(prepared)) if mesh is not None else None
                lat = sampling.sample_maestro(models, prepared, settings, mesh=sub)
                frames = sampling.decode(models, lat, cfg.frame_chunk)
                dt = (time.perf_counter() - t0) / len(prepared)
                for p, fr, mix in zip(ok, frames, mixes):
                    write_outputs(p, fr, mix, outdir, cfg, {
                        "random_weights": models.random, "seconds_per_video": dt,
                        "num_sources": len(p.locate_boxes)})  # fmt: skip
                    bar.update(1)
                    bar.set_postfix_str(f"{p.job.name} {dt:.1f}s/video")
    bar.close()
    for p in plans:
        if p.job.name not in failed:
            print(f"wrote {output_paths(outdir, p.job.name)['video']}")
    if failed:
        print(f"{len(failed)} job(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _job_mesh(k: int):
    """A ('data', 'fsdp') mesh over the first k local devices (k jobs, one per device)."""
    import jax

    from maestro_jax.sharding import make_mesh

    if k <= 1:
        return None
    return make_mesh((k, 1), ("data", "fsdp"), devices=jax.local_devices()[:k])


def enable_compilation_cache(path: str) -> None:
    """The persistent XLA compilation cache (on by default for the CLIs)."""
    import jax

    if not path:
        return
    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
