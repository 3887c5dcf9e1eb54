"""Parameter sweeps: generate, evaluate, tabulate and plot (the paper's Fig. 7 and Tables 1-2).

Each value gets its own folder OUTDIR/<param>_<value>/ (videos, contact sheets, settings,
`metrics.json`), and OUTDIR gets `sweep.md` + `sweep.json` (the table: rows = values, columns
FVD / IA / AV-Align / AV-Align 2023 / placement / videos), one PNG plot per metric
(`plot_<metric>.png`, metric vs value) and `grid.png` (rows = values, columns = frames of one
job, boxes drawn). The command line and its examples: `python -m maestro_jax.sweep`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maestro_jax.evaluation import networks as eval_networks
from maestro_jax.evaluation import report as eval_report
from maestro_jax.evaluation import score as eval_score
from maestro_jax.evaluation import videos as eval_videos
from maestro_jax.files import write_json
from maestro_jax.generation.jobs import Job, JobError, output_paths, read_jobs
from maestro_jax.video import atomic_path

PARAMS = ("n_d", "mode", "num_queries", "lambda1")
TITLES = {"n_d": "N_D", "mode": "Mode", "num_queries": "N_Q", "lambda1": "lambda1"}


class SweepError(ValueError):
    """A bad sweep config, found before any compute."""


@dataclasses.dataclass
class Point:
    """One swept value: its generation config, jobs and output folder."""

    value: Any
    label: str
    subdir: Path
    gen_cfg: Any
    jobs: list[Job]
    cim: str | None  # CIM folder of this value (N_Q / lambda1 sweeps)
    make_tiny_cim: bool  # runlocal: write a random tiny CIM to `cim` first


# ----------------------------------------------------------------------------- planning
def parse_stems(spec: str, audio_dir: str, seed: int) -> list[Job]:
    """'a.wav+b.wav:LR; c.wav+d.wav:TD' -> one stems job per ';' item (boxes after ':', default
    the generation config's). Relative paths are taken in `audio_dir`."""
    jobs = []
    for i, item in enumerate(s for s in spec.split(";") if s.strip()):
        files, _, boxes = item.strip().partition(":")
        paths = []
        for f in (f.strip() for f in files.split("+") if f.strip()):
            p = Path(f) if Path(f).is_absolute() or not audio_dir else Path(audio_dir) / f
            if not p.is_file():
                raise SweepError(f"stem {f!r} not found (looked for {p}); set --config.audio_dir")
            paths.append(str(p))
        if not paths:
            raise SweepError(f"sweep stems item {item!r} names no audio file")
        slug = "_".join(Path(p).stem for p in paths)
        slug = re.sub(r"[^A-Za-z0-9._-]", "_", slug)[:60]
        jobs.append(Job(name=f"j{i:02d}_{slug}", audio=paths, boxes=boxes.strip() or None,
                        seed=seed))  # fmt: skip
    return jobs


def base_jobs(cfg) -> list[Job]:
    if cfg.get("toy_jobs"):  # toy world: random scenes, stems + truth written under outdir
        from maestro_jax.toy import placement as toy_eval

        try:
            toy = toy_eval.make_jobs(int(cfg.toy_jobs), tuple(cfg.toy_sources), int(cfg.toy_seed))
        except toy_eval.ToyEvalError as e:
            raise SweepError(str(e)) from e
        jobs = toy_eval.write_sweep_jobs(toy, Path(cfg.outdir) / "toy_jobs")
    elif cfg.jobs_file:
        try:
            jobs = read_jobs(cfg.jobs_file)
        except JobError as e:
            raise SweepError(str(e)) from e
    else:
        jobs = parse_stems(cfg.stems, cfg.audio_dir, int(cfg.generation.seed))
    if cfg.max_jobs:
        jobs = jobs[: int(cfg.max_jobs)]
    if not jobs:
        raise SweepError("the sweep has no jobs: set --config.stems or --config.jobs_file")
    return jobs


def value_label(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def value_dir(outdir: str | Path, param: str, value: Any) -> Path:
    """The folder of one swept value: OUTDIR/<param>_<value>."""
    return Path(outdir) / re.sub(r"[^A-Za-z0-9._-]", "_", f"{param}_{value_label(value)}")


def _checkpoint_map(cfg) -> dict[str, str]:
    out = {}
    for item in (s for s in cfg.checkpoints.split(",") if s.strip()):
        k, sep, v = item.partition("=")
        if not sep:
            raise SweepError(f"config.checkpoints item {item!r} is not VALUE=FOLDER")
        out[value_label(_num(k.strip()))] = v.strip()
    return out


def _num(s: str) -> Any:
    try:
        f = float(s)
    except ValueError:
        return s
    return int(f) if f.is_integer() and "." not in s else f


def plan(cfg, require_cims: bool = True) -> list[Point]:
    """Every value's config, jobs and folder; raises SweepError before any compute.
    `require_cims=False`: N_Q / lambda1 CIM folders named by `checkpoints` or
    `checkpoint_pattern` need not exist yet (a training ablation writes them first)."""
    param = cfg.param
    if param not in PARAMS:
        raise SweepError(f"config.param must be one of {PARAMS}, got {param!r}")
    values = list(cfg.param_values)
    if not values:
        raise SweepError("config.param_values is empty")
    labels = [value_label(v) for v in values]
    if len(set(labels)) != len(labels):
        raise SweepError(f"duplicate sweep values {labels}")
    jobs = base_jobs(cfg)
    g0 = cfg.generation
    ckpts = _checkpoint_map(cfg)
    tiny = g0.model == "tiny"
    out = Path(cfg.outdir)
    points, missing = [], []
    for v, label in zip(values, labels):
        g = copy.deepcopy(g0)
        js = [dataclasses.replace(j) for j in jobs]
        cim, make = None, False
        if param == "n_d":
            if not isinstance(v, int) or not 0 <= v <= g.steps:
                raise SweepError(f"N_D = {v!r} must be an integer in [0, steps = {g.steps}]")
            for j in js:  # per job, so one models object (and its compiled UNet) serves all
                j.n_d = int(v)
        elif param == "mode":
            from maestro_jax.generation.sampling import MODES

            if v not in MODES:
                raise SweepError(f"mode {v!r} is not one of {MODES}")
            g.mode = v
        else:
            if param == "num_queries":
                if not isinstance(v, int) or v < 1:
                    raise SweepError(f"N_Q = {v!r} must be a positive integer")
                g.num_queries = int(v)
            cim = ckpts.get(label) or (
                cfg.checkpoint_pattern.format(value=label) if cfg.checkpoint_pattern else None
            )
            if cim is None and tiny:
                cim, make = str(out / "_tiny_cims" / f"{param}_{label}"), True
            elif cim is None or (require_cims and not (Path(cim) / "params").exists()):
                missing.append(f"{label}: {cim or 'none given'}")
            for j in js:
                j.checkpoint = cim
        sub = value_dir(out, param, v)
        points.append(Point(v, label, sub, g, js, cim, make))
    if missing:
        raise SweepError(
            f"{TITLES[param]} sweep: a converted CIM folder is needed per value "
            f"(--config.checkpoints='V=DIR,...' or --config.checkpoint_pattern='dir{{value}}'); "
            f"missing: {'; '.join(missing)}"
        )
    return points


def write_tiny_cim(path: Path, num_queries: int, seed: int) -> None:
    """A random tiny CIM folder (runlocal stand-in for a trained checkpoint of one value)."""
    import jax.numpy as jnp

    from maestro_jax.audio import encoder as ae
    from maestro_jax.checkpoints import save_params
    from maestro_jax.generation import models as gen_models

    ctx = gen_models.tiny_configs()[0].context_dim
    cim_cfg = ae.tiny_cim(ctx, num_queries)
    enc = ae.init_random(ae.tiny_imagebind(jnp.float32), cim_cfg, seed)
    meta = dataclasses.asdict(cim_cfg)
    meta["dtype"] = "float32"
    save_params(path, enc.cim_params, {"cim": meta, "random": True})


# ----------------------------------------------------------------------------- evaluation
def _eval_key(sub: Path, eval_cfg, reference: str | None) -> dict:
    vids = []
    for p in eval_videos.list_videos(sub):
        st = p.stat()
        vids.append([p.name, st.st_size, st.st_mtime_ns])
    return {"videos": vids, "config": eval_cfg.to_json_best_effort(), "reference": reference}


def evaluate_point(
    p: Point, eval_cfg, reference: str | None, log: Callable, write: bool = True
) -> dict:
    """The evaluation of one value (reused from `metrics.json` when nothing changed; written
    there when `write`)."""
    cache = p.subdir / "metrics.json"
    key = _eval_key(p.subdir, eval_cfg, reference) if p.subdir.is_dir() else None
    if key is not None and cache.is_file():
        try:
            old = json.loads(cache.read_text())
            if old.get("key") == key:
                log(f"{p.label}: evaluation unchanged, reusing {cache}")
                return old["result"]
        except (json.JSONDecodeError, KeyError):
            pass
    res = eval_score.evaluate_dirs([(p.label, p.subdir)], eval_cfg, reference, log)[0]
    if write:
        write_json(cache, {"key": _eval_key(p.subdir, eval_cfg, reference), "result": res})
    return res


# ----------------------------------------------------------------------------- figures
def _series(rows: Sequence[dict], block: str, key: str = "value") -> list[float]:
    return [float((r.get(block) or {}).get(key, math.nan)) for r in rows]


def write_plots(
    rows: Sequence[dict],
    param: str,
    outdir: Path,
    extra: Mapping[str, tuple[str, str, str]] | None = None,
) -> list[Path]:
    """plot_ia.png, plot_av_align.png (2025 and 2023 rules), plot_fvd.png / plot_placement.png
    when those metrics exist, and plot_<name>.png for each `extra` {name: (title, block, key)}
    that some row has (`row[block][key]`)."""
    from maestro_jax.plots import line_plot
    from maestro_jax.video import write_png

    x = [r["name"] for r in rows]
    t = TITLES[param]
    figs = {
        "ia": ("IA vs " + t, {"IA": _series(rows, "ia")}),
        "av_align": (
            "AV-Align vs " + t,
            {"2025 rule": _series(rows, "av_align"), "2023 rule": _series(rows, "av_align_2023")},
        ),
    }
    if not any(r.get("ia") for r in rows):  # IA off (no ImageBind, e.g. the toy sweep)
        del figs["ia"]
    if any(r.get("fvd") for r in rows):
        figs["fvd"] = ("FVD vs " + t, {"FVD": _series(rows, "fvd")})
    if any(r.get("placement") for r in rows):
        figs["placement"] = (
            "Placement vs " + t,
            {"accuracy": _series(rows, "placement", "accuracy")},
        )
    for name, (title, block, key) in (extra or {}).items():
        if any(r.get(block) for r in rows):
            figs[name] = (f"{title} vs {t}", {title: _series(rows, block, key)})
    paths = []
    for name, (title, series) in figs.items():
        img = line_plot(x, series, title=title, x_title=t)
        paths.append(write_png(outdir / f"plot_{name}.png", img))
    return paths


def _pick(n: int, k: int) -> np.ndarray:
    """k frame indices spread evenly over n frames (first and last included)."""
    k = max(1, min(k, n))
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(int))


def write_grid(points: Sequence[Point], job: str, frames: int, max_h: int, out: Path) -> Path:
    """grid.png: one row per value (its label on the left), `frames` frames of `job`'s video,
    the job's boxes drawn, frames subsampled to at most `max_h` pixels high."""
    from maestro_jax.metrics.av_align import read_video  # (ffmpeg fork warning filtered)
    from maestro_jax.plots import image_grid
    from maestro_jax.video import draw_boxes, write_png

    rows, labels = [], []
    shape = None
    for p in points:
        paths = output_paths(p.subdir, job)
        if not paths["video"].is_file():
            continue
        vid, _ = read_video(paths["video"])
        settings = json.loads(paths["json"].read_text()) if paths["json"].is_file() else {}
        boxes = settings.get("boxes_per_frame")
        idx = _pick(len(vid), frames)
        stride = max(1, math.ceil(vid.shape[1] / max_h)) if max_h else 1
        sel = []
        for i in idx:
            f = vid[i]
            if boxes:
                f = draw_boxes(f, boxes[i], max(1, min(f.shape[:2]) // 64))
            sel.append(f[::stride, ::stride])
        sel = np.stack(sel)
        if shape is not None and sel.shape[1:] != shape:
            raise SweepError(f"{paths['video']}: frame size {sel.shape[1:]} differs from {shape}")
        shape = sel.shape[1:]
        rows.append(sel)
        labels.append(p.label)
    if not rows:
        raise SweepError(f"no video of job {job!r} in any sweep folder: nothing to put in a grid")
    return write_png(out, image_grid(rows, labels))


# ----------------------------------------------------------------------------- running
def _check_weights(points: Sequence[Point]) -> None:
    """Converted generation weights exist (full-size configs), before any compute."""
    g = points[0].gen_cfg
    if g.model != "full":
        return
    if g.get("variant") == "toy":  # the toy world's weights: say how to build them
        from maestro_jax.toy import placement as toy_eval

        try:
            toy_eval.check_assets(g)
        except toy_eval.ToyEvalError as e:
            raise SweepError(str(e)) from e
    need = {"generation.checkpoint": g.checkpoint, "generation.imagebind_checkpoint":
            g.imagebind_checkpoint}  # fmt: skip
    if not all(p.cim for p in points):
        need["generation.cim_checkpoint"] = g.cim_checkpoint
    for name, path in need.items():
        if not path:
            raise SweepError(f"set --config.{name} (converted weights) or use a :runlocal config")
        if not Path(path).exists():
            raise SweepError(f"--config.{name}: {path} does not exist")


def prepare(cfg, require_cims: bool = True) -> tuple[list[Point], Any, str | None]:
    """(points, evaluation config, reference folder or None): every check of a sweep, before
    any compute (SweepError)."""
    points = plan(cfg, require_cims)
    ecfg = copy.deepcopy(cfg.evaluation)
    if ecfg.model == "full" and not ecfg.imagebind_checkpoint:
        ecfg.imagebind_checkpoint = cfg.generation.imagebind_checkpoint
    reference = cfg.reference or None
    try:
        eval_networks.check_config(ecfg, reference is not None)
        if reference is not None:
            n_ref = len(eval_videos.list_videos(reference, recursive=True))
            if n_ref < 2 or len(points[0].jobs) < 2:
                raise eval_videos.EvalError(
                    f"FVD needs >= 2 videos per side: {len(points[0].jobs)} jobs per value, "
                    f"{n_ref} reference videos in {reference}"
                )
    except eval_videos.EvalError as e:
        raise SweepError(str(e)) from e
    _check_weights(points)
    return points, ecfg, reference


def run_point(
    index: int,
    p: Point,
    param: str,
    ecfg,
    reference: str | None,
    log: Callable = print,
    pool: Any = None,
) -> tuple[dict, bool]:
    """Generate and evaluate one value: (its row, whether anything failed). With several
    processes each generates its share of the jobs, then every process evaluates the value
    and process 0 writes the cache. `pool`: the `generation.runner.ModelPool` that holds the
    weights across values (None: this value's run loads and releases its own)."""
    import jax

    from maestro_jax import distributed
    from maestro_jax.generation import runner as gen

    log(f"== {TITLES[param]} = {p.label} -> {p.subdir}")
    if p.make_tiny_cim and not (Path(p.cim) / "params").exists():
        write_tiny_cim(Path(p.cim), int(p.gen_cfg.num_queries), seed=100 + index)
    try:
        rc = gen.run(p.gen_cfg, p.jobs, p.subdir, strict=False, pool=pool)
    except gen.InputError as e:
        raise SweepError(f"{TITLES[param]} = {p.label}: {e}") from e
    failed = rc != 0
    distributed.barrier(f"sweep_generated_{param}_{p.label}")  # every share written
    try:
        res = evaluate_point(p, ecfg, reference, log, write=jax.process_index() == 0)
    except eval_videos.EvalError as e:
        log(f"error: {TITLES[param]} = {p.label} not evaluated: {e}")
        failed = True
        res = {"name": p.label, "error": str(e), "n_videos": 0}
    return {**res, "name": p.label, "value": p.value}, failed


def write_outputs(
    cfg,
    points: Sequence[Point],
    rows: Sequence[dict],
    failed: Sequence[str],
    log: Callable = print,
    *,
    name: str = "sweep",
    title: str | None = None,
    columns: Sequence[tuple[str, str, str, int]] = (),
    notes: Sequence[str] = (),
    plots: Mapping[str, tuple[str, str, str]] | None = None,
    extra_json: dict | None = None,
) -> dict:
    """OUTDIR/<name>.md + <name>.json (the table: `report.markdown_table` with the extra
    `columns`, then `notes`), the plots (`write_plots`, with `plots` as its extra figures) and
    grid.png. Returns {'rows', 'failed', 'table', 'plots', 'grid'} (paths as strings)."""
    out = Path(cfg.outdir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"{TITLES[cfg.param]} sweep"
    md = f"# {title}\n\n" + eval_report.markdown_table(rows, TITLES[cfg.param], columns)
    md += "".join(f"- {n}\n" for n in notes)
    table_md = out / f"{name}.md"
    with atomic_path(table_md) as tmp:
        tmp.write_text(md)
    summary_rows = [{k: v for k, v in r.items() if k != "per_video"} for r in rows]
    write_json(out / f"{name}.json", {
        "param": cfg.param, "values": [p.value for p in points], "rows": summary_rows,
        "failed": list(failed), "config": json.loads(cfg.to_json_best_effort()),
        **(extra_json or {}),
    })  # fmt: skip
    plot_paths = write_plots(rows, cfg.param, out, plots)
    job = cfg.grid_job or points[0].jobs[0].name
    grid = write_grid(points, job, int(cfg.grid_frames), int(cfg.grid_height), out / "grid.png")
    log(md)
    log(f"wrote {table_md}, {out / f'{name}.json'}, {len(plot_paths)} plots and {grid}")
    return {
        "rows": list(rows), "failed": list(failed), "table": str(table_md),
        "plots": [str(p) for p in plot_paths], "grid": str(grid),
    }  # fmt: skip


def run_sweep(cfg, log: Callable = print) -> dict:
    """Generate + evaluate every value, then write the table, the plots and the grid.
    Returns {'rows', 'failed', 'table', 'plots', 'grid'} (paths as strings; with several
    processes only process 0 writes them, the others return {'rows', 'failed'})."""
    import jax

    from maestro_jax.generation import runner as gen

    points, ecfg, reference = prepare(cfg)
    Path(cfg.outdir).mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    pool = gen.ModelPool()  # every value's run shares the weights (loaded once)
    for i, p in enumerate(points):
        res, bad = run_point(i, p, cfg.param, ecfg, reference, log, pool)
        if bad:
            failed.append(p.label)
        rows.append(res)
    if jax.process_index() != 0:
        return {"rows": rows, "failed": failed}
    return write_outputs(cfg, points, rows, failed, log)
