"""Generation as a library: validate jobs, check the weights' files, load them, sample, write.

`run` checks everything before any weight is read (the VideoCrafter2 folder's configs and the
video size, every job, the CLIP vocabulary and the audio / separator folders the jobs use), then
loads only what the jobs use into a `ModelPool` (the caller's, or one for this run), samples, and
writes each job's outputs. `maestro_jax.generate` is the command line over it (absl flags live
there only, so other tools and tests can import this module); see its docstring for the job
format and the outputs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maestro_jax import mosaic
from maestro_jax.audio import encoder as ae
from maestro_jax.checkpoints import release_host_memory
from maestro_jax.generation import identity, sampling
from maestro_jax.generation import long as long_gen
from maestro_jax.generation import models as gen_models
from maestro_jax.generation import outdir as gen_outdir
from maestro_jax.generation import weights as gen_weights
from maestro_jax.generation.jobs import InputError, Job, JobError, check_job_files, output_paths
from maestro_jax.generation.outputs import sources_of, video_spec, write_outputs
from maestro_jax.generation.plan import Plan, job_window, plan_hints, plan_job
from maestro_jax.generation.timing import Stopwatch

__all__ = ["InputError", "ModelPool", "Plan", "build_models", "plan_job", "run"]


# ----------------------------------------------------------------------------- models
class ModelPool:
    """The weights of a run, each part loaded once and shared by its job groups: the
    VideoCrafter2 part, the ImageBind audio trunk, one CIM and one separator at a time (asking
    for another CIM drops the one held first). Whoever holds the pool holds the weights; a sweep
    passes one pool to all its runs so that they load once. Nothing here is global."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[Any, Any]] = {}

    def _part(self, name: str, key: Any, build) -> Any:
        held = self._held.get(name)
        if held is not None and held[0] == key:
            return held[1]
        if self._held.pop(name, None) is not None:
            release_host_memory()
        value = build()
        self._held[name] = (key, value)
        return value

    def models(
        self,
        weights: gen_weights.RunWeights,
        cim_key: str = "",
        *,
        audio: bool = True,
        separator: bool = False,
        prompts: Sequence[str] = (),
    ) -> gen_models.Models:
        """The `Models` of one job group: the text contexts of `prompts` and of the empty
        prompt, the audio encoder of CIM `cim_key` when `audio`, the separator when `separator`
        (everything checked by `gen_weights.check_weights` first)."""
        cfg = weights.cfg
        spec = weights.spec_for(cim_key, audio)
        dtype = spec.dtype
        if cfg.model == "tiny":  # tiny random weights (a function of the seed)
            key = ("tiny", cfg.seed, str(dtype), spec.unet, spec.text, cfg.num_queries)
            tiny = self._part("base", key, lambda: gen_models.init_random_models(
                cfg.seed, str(dtype), num_queries=cfg.num_queries, bpe_path=cfg.bpe_path or None,
            ))  # fmt: skip
            contexts = self._contexts(weights, key, lambda: tiny.params["text"], prompts)
            params = {k: tiny.params[k] for k in ("unet", "vae", "text")}
            if audio:
                params["imagebind_audio"] = tiny.params["imagebind_audio"]
                cim_dir = weights.cims.get(cim_key or "")
                params["cim"] = (
                    self._part("cim", (cim_dir, str(dtype)), lambda: ae.load_cim(cim_dir, dtype))
                    if cim_dir else tiny.params["cim"]
                )  # fmt: skip
        else:
            root = Path(cfg.checkpoint)
            key = (str(root.absolute()), str(dtype))
            # the text tower first, on its own: it is let go before the UNet is read
            load_text = lambda: gen_models.load_text_params(root, dtype)  # noqa: E731
            contexts = self._contexts(weights, key, load_text, prompts)
            params = dict(self._part("base", key, lambda: gen_models.load_vc2_params(root, dtype)))
            if audio:
                ib, cim_dir = weights.imagebind, weights.cims[cim_key or ""]
                params["imagebind_audio"] = self._part(
                    "imagebind", (str(ib), str(dtype)), lambda: ae.load_imagebind_audio(ib, dtype)
                )
                params["cim"] = self._part(
                    "cim", (str(cim_dir), str(dtype)), lambda: ae.load_cim(cim_dir, dtype)
                )
        sep = None
        if separator:
            sep = self._part("separator", (cfg.model, cfg.seed, str(weights.separator)),
                             lambda: _load_separator(weights))  # fmt: skip
        return gen_models.Models(spec, params, weights.tokenizer, sep, contexts)

    def _contexts(self, weights: gen_weights.RunWeights, key: Any, load_text, prompts) -> dict:
        """{prompt: context} of the empty prompt and `prompts`; the text tower (`load_text()`)
        is read only for prompts not encoded before with the same weights, and let go after."""
        held = self._part("contexts", key, dict)
        wanted = ["", *prompts]
        missing = [p for p in dict.fromkeys(wanted) if p not in held]
        if missing:
            text = load_text()
            held.update(gen_models.encode_prompts(text, weights.spec, weights.tokenizer, missing))
            del text
            release_host_memory()
        return {p: held[p] for p in wanted}


def _load_separator(weights: gen_weights.RunWeights):
    from maestro_jax.audio import separation

    if weights.cfg.model == "tiny":
        sep = separation.init_random_separator(weights.cfg.seed + 4)
    else:
        sep = separation.load_separator(weights.separator, weights.clap_tokenizer_dir)
    return gen_models.separator_on_device(sep)


def check_run_weights(cfg, plans: list[Plan], spec: gen_models.ModelSpec) -> gen_weights.RunWeights:
    """Every file the plans use, checked (see `gen_weights.check_weights`)."""
    cims = {p.job.checkpoint or "" for p in plans if p.kind != "t2v"}
    return gen_weights.check_weights(cfg, spec, cims, any(p.kind == "mixture" for p in plans))


def build_models(
    cfg, cim_checkpoint: str | None = None, need_separator: bool = False, *,
    need_audio: bool = True, prompts: Sequence[str] = (), pool: ModelPool | None = None,
) -> gen_models.Models:  # fmt: skip
    """The models of a config (checked, then loaded into `pool`, a new one by default), with
    the text contexts of `prompts` (text-to-video) and of the empty prompt."""
    spec = gen_weights.base_spec(cfg)
    cims = {cim_checkpoint or ""} if need_audio else set()
    weights = gen_weights.check_weights(cfg, spec, cims, need_separator)
    return (pool or ModelPool()).models(
        weights, cim_checkpoint or "", audio=need_audio, separator=need_separator, prompts=prompts
    )


# ----------------------------------------------------------------------------- running
def _settings(cfg, n_d: int, mode: str | None = None):
    return sampling.SamplerSettings(
        steps=cfg.steps, eta=float(cfg.eta), guidance=float(cfg.guidance), fps=int(cfg.fps),
        n_d=int(n_d), mode=mode or cfg.mode,
    )  # fmt: skip


_spec = video_spec  # the config's VideoSpec (toy evaluation and tests use this name)


def _options(cfg):
    return mosaic.MosaicOptions(**dict(cfg.mosaic))


def attention_resolutions(cfg) -> tuple[tuple[int, int], ...]:
    """The (h, w) of every attention level for the config's video size, from the model configs
    alone (the checkpoint folder's config.json files; no weights are read)."""
    return video_spec(cfg).resolutions(gen_weights.base_spec(cfg))


def check_config(cfg) -> None:
    """The run's settings, before anything is read: InputError naming the --config field."""
    ints = {"steps": 1, "num_frames": 1, "height": 8, "width": 8, "fps": 1, "n_d": 0,
            "num_queries": 1, "frame_chunk": 0, "batch_size": 0}  # fmt: skip
    for k, lo in ints.items():
        v = cfg.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise InputError(f"--config.{k} must be an integer >= {lo}, got {v!r}")
    for k in ("eta", "guidance", "clip_window", "save_fps"):
        v = cfg.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise InputError(f"--config.{k} must be a number >= 0, got {v!r}")
    modes = ("maestro", "vanilla", "locate", "mosaic")
    if cfg.mode not in modes:
        raise InputError(f"--config.mode must be one of {', '.join(modes)}; got {cfg.mode!r}")
    if cfg.model not in ("full", "tiny"):
        raise InputError(f"--config.model must be full or tiny, got {cfg.model!r}")


def _check_all(cfg, jobs: list[Job], outdir: Path, strict: bool, keep_existing: bool = False):
    """(base spec, plans, failures [{job, field, reason}]): the settings, the video size against
    the networks and every job (a job whose outputs record the same hash is skipped), before
    anything is loaded."""
    check_config(cfg)
    spec = gen_weights.base_spec(cfg)
    try:
        video_spec(cfg).check(spec)
    except ValueError as e:
        raise InputError(str(e)) from e
    hint = {"resolutions": video_spec(cfg).resolutions(spec), **plan_hints(cfg)}
    run_id = identity.settings_identity(cfg)
    plans, failed = [], []
    for job in jobs:
        try:
            check_job_files(job)
            try:
                digest = identity.job_hash(job, run_id)
            except OSError as e:
                raise JobError(f"job {job.name}: cannot read its inputs: {e}", job=job.name) from e
            if identity.recorded_hash(outdir, job.name) == digest:
                print(f"skip {job.name}: already done (same inputs and settings)")
                continue
            if keep_existing and identity.outputs_exist(outdir, job.name):
                raise JobError(
                    f"job {job.name}: {outdir} holds its outputs from other inputs or settings; "
                    "they are kept (--keep_existing): give the job another name or drop the flag",
                    job=job.name, field="name",
                )  # fmt: skip
            plan = plan_job(job, cfg, hint)
            plan.job_hash = digest
            plans.append(plan)
        except (JobError, InputError) as e:
            if strict:
                raise InputError(str(e)) from e
            print(f"error: {e}; skipping", file=sys.stderr)
            failed.append(gen_outdir.failure_row(e, job.name))
    for p in plans:
        for w in p.warnings:
            print(f"warning: job {p.job.name}: {w}", file=sys.stderr)
    return spec, plans, failed


def run(
    cfg, jobs: list[Job], outdir: Path, *, strict: bool, pool: ModelPool | None = None,
    keep_existing: bool = False, failures: Sequence[Exception] = (), progress: Any = None,
) -> int:  # fmt: skip
    """Validate every job and file, then generate the unfinished jobs. Returns the exit status.

    A job is finished when its `.json` records the hash of its current inputs and settings
    (`generation.identity`); finished jobs are skipped, others (re)generated, or with
    `keep_existing` refused when outputs of other inputs are in the way. `strict` (the one-job
    form): a bad job raises InputError; otherwise each failing job (`failures`: the jobs that
    did not even parse, as `JobError`s) is reported, recorded in `outdir/failures.json` (job,
    field, reason) and skipped, and the status is 1. The folder is checked writable before
    anything else and locked while jobs are written.

    `pool`: where the weights are held (a sweep passes one to all its runs); by default a pool of
    this run's own, released when it returns. `progress`: None, or a hook with
    `stage(name, jobs)` (called on the host as each stage of the named jobs starts: 'load',
    'prepare', 'sample', 'decode', 'write') and `step(i)` (passed to the sampler, see
    `sampling.sample_maestro`). Prints `timing: {json}` (load, compile, sampling seconds per DDIM
    step, decode) at the end."""
    import jax

    from maestro_jax.generation.jobs import split_for_process

    gen_outdir.check_outdir(outdir)
    index, count = jax.process_index(), jax.process_count()
    if count > 1:
        jobs = split_for_process(jobs, index, count)
    failed = [gen_outdir.failure_row(e, f"job{i}") for i, e in enumerate(failures)]
    for row in failed:
        print(f"error: {row['reason']}; skipping", file=sys.stderr)
    spec, plans, bad = _check_all(cfg, jobs, outdir, strict, keep_existing)
    failed += bad
    fail_file = gen_outdir.failures_path(outdir, index, count)
    if not plans:
        print(f"nothing to do ({len(failed)} failed)")
        if outdir.is_dir() or failed:
            gen_outdir.record_failures(fail_file, failed)
        return 1 if failed else 0
    weights = check_run_weights(cfg, plans, spec)  # every file, before any weight is read
    lock = gen_outdir.LOCK_NAME + ("" if count == 1 else f".p{index}")
    with gen_outdir.locked(outdir, lock):
        for p in gen_outdir.clean_temp_files(outdir, [p.job.name for p in plans]):
            print(f"removed {p} (left by an interrupted run)")
        failed += _run_plans(cfg, plans, outdir, weights, pool or ModelPool(), progress)
        gen_outdir.record_failures(fail_file, failed)
    if failed:
        names = ", ".join(r["job"] for r in failed)
        print(f"{len(failed)} job(s) failed: {names} (see {fail_file})", file=sys.stderr)
        return 1
    return 0


def _run_plans(
    cfg, plans: list[Plan], outdir: Path, weights, pool: ModelPool, progress: Any = None
) -> list[dict]:
    """Load each group's models and generate its jobs; the failures' rows."""
    watch = Stopwatch()
    groups: dict[Any, list[Plan]] = {}
    failed: list[dict] = []
    for p in plans:
        groups.setdefault((p.job.checkpoint or "", p.kind == "mixture"), []).append(p)
    for (cim_key, need_sep), group in groups.items():
        prompts = [p.job.prompt for p in group if p.kind == "t2v"]
        audio = len(prompts) < len(group)  # Maestro jobs encode audio
        _stage(progress, "load", [p.job.name for p in group])
        with watch.phase("load"):
            models = pool.models(weights, cim_key, audio=audio, separator=need_sep, prompts=prompts)
        if models.random:
            print("note: tiny RANDOM weights (a :runlocal config): videos show noise patterns")
        failed += _run_group(cfg, models, group, outdir, watch, progress)
    bad = {r["job"] for r in failed}
    for p in plans:
        if p.job.name not in bad:
            print(f"wrote {output_paths(outdir, p.job.name)['video']}")
    print("timing: " + json.dumps(watch.summary()))
    return failed


def _stage(progress: Any, name: str, jobs: list[str]) -> None:
    if progress is not None:
        progress.stage(name, jobs)


def _run_group(
    cfg, models, group: list[Plan], outdir: Path, watch: Stopwatch, progress: Any = None
) -> list[dict]:
    """Generate one group's jobs (t2v one at a time; Maestro jobs batched by (N_A, N_D) over the
    local devices). Every step of a job (separation, encoding, sampling, decoding, writing) is
    inside its `try`: a failure is reported and recorded, the other jobs go on. Returns the
    failures' rows."""
    import jax
    from tqdm import tqdm

    from maestro_jax.sharding import make_mesh

    spec = video_spec(cfg)
    n_dev = jax.local_device_count()
    # this process's devices only: with several processes each one runs its own jobs
    mesh = make_mesh((n_dev, 1), ("data", "fsdp"), jax.local_devices()) if n_dev > 1 else None
    batch = cfg.batch_size or n_dev
    failed: list[dict] = []
    bar = tqdm(total=len(group), desc="jobs", unit="video", file=sys.stdout)

    def fail(p: Plan, e: Exception) -> None:
        print(f"error: job {p.job.name} failed: {type(e).__name__}: {e}", file=sys.stderr)
        failed.append(gen_outdir.failure_row(e, p.job.name))
        bar.update(1)

    step_hook = None if progress is None else progress.step

    def decode(latents, names):
        _stage(progress, "decode", names)
        with watch.phase("decode"):
            return sampling.decode(models, latents, cfg.frame_chunk)

    def write(p: Plan, frames, mix, extra: dict) -> None:
        try:
            _stage(progress, "write", [p.job.name])
            extra = {"random_weights": models.random, "job_hash": p.job_hash, **extra}
            write_outputs(p, frames, mix, outdir, cfg, extra)
            bar.update(1)
        except Exception as e:  # noqa: BLE001 - a failing job is reported, not fatal
            fail(p, e)

    for p in [p for p in group if p.kind == "t2v"]:
        try:
            _stage(progress, "sample", [p.job.name])
            with watch.phase("sample"):
                lat = jax.block_until_ready(sampling.sample_t2v(
                    models, p.job.prompt, spec, _settings(cfg, 0), p.job.seed, step_hook))  # fmt: skip
            watch.steps += cfg.steps
            frames = decode(lat, [p.job.name])[0]
        except Exception as e:  # noqa: BLE001 - a failing job is reported, not fatal
            fail(p, e)
            continue
        write(p, frames, None, {})
    by_shape: dict[Any, list[Plan]] = {}
    for p in (p for p in group if p.kind != "t2v"):
        by_shape.setdefault((len(p.locate_boxes), p.n_d, p.num_frames), []).append(p)
    for (_n_a, n_d, _frames), ps in by_shape.items():
        sample_models = models  # whole-audio jobs: the same weights, windowed temporal attention
        for i in range(0, len(ps), batch):
            t0 = time.perf_counter()
            prepared, ok, mixes = [], [], []
            for p in ps[i : i + batch]:
                try:
                    _stage(progress, "prepare", [p.job.name])
                    with watch.phase("prepare"):
                        stems, mix = sources_of(p, models, outdir, cfg)
                        if p.long is not None:
                            sample_models, job = long_gen.prepare_long_job(
                                models, stems, p, cfg, _options(cfg)
                            )
                            prepared.append(job)
                        else:
                            tokens = ae.encode_stems(
                                models.audio, stems, job_window(p.job, cfg), cfg.clip_rule
                            )
                            prepared.append(sampling.prepare_job(
                                models, tokens, p.locate_boxes, p.mosaic_boxes, spec, p.job.seed,
                                _options(cfg)))  # fmt: skip
                    ok.append(p)
                    mixes.append(mix)
                except Exception as e:  # noqa: BLE001
                    fail(p, e)
            if not prepared:
                continue
            # jobs split over the first len(prepared) devices: no padding work
            sub = _job_mesh(len(prepared)) if mesh is not None else None
            names = [p.job.name for p in ok]
            try:
                _stage(progress, "sample", names)
                with watch.phase("sample"):
                    lat = jax.block_until_ready(sampling.sample_maestro(
                        sample_models, prepared, _settings(cfg, n_d), mesh=sub,
                        progress=step_hook))  # fmt: skip
                watch.steps += cfg.steps
                frames = decode(lat, names)
            except Exception as e:  # noqa: BLE001 - the batch's jobs fail, the others go on
                for p in ok:
                    fail(p, e)
                continue
            dt = (time.perf_counter() - t0) / len(prepared)
            for p, fr, mix in zip(ok, frames, mixes):
                write(p, fr, mix, {"seconds_per_video": dt, "num_sources": len(p.locate_boxes)})
    bar.close()
    return failed


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
