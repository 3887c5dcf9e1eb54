"""Placement on the toy world: does each object appear in its own box?

Every job is a random toy scene (`maestro_jax/toy/world.py`): K distinct object classes, K random
non-overlapping boxes (`toy_batches.random_boxes`) and each object's audio stem
(`world.object_sound`). Each job is generated in every mode of the paper's ablation (vanilla,
Object Locating only, Mosaic Denoising only, Maestro) and scored by colour placement
(`maestro_jax.metrics.placement.colour_placement`): in every frame, is the class drawn in box k
the class of stem k? Accuracy = the fraction of correct (box, frame) pairs, per mode, overall and
split by the number of sources. The command: `python -m maestro_jax.toy.evaluate`.

Everything runs in one process: the models are built once, each job's stems are encoded and its
edits rasterised once (shared by all modes), and jobs are sampled `batch` at a time in one
vmapped call (the last batch is padded, so every batch of a source count reuses one compiled
sampler). 'locate' and 'mosaic' run through the 'maestro' sampler with N_D = steps and N_D = 0
(N_D is traced): the same steps as those modes, and one compile instead of three.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from maestro_jax.metrics import placement as colour_pl
from maestro_jax.toy import batches as toy_batches
from maestro_jax.toy import world as tw

MODES = ("vanilla", "locate", "mosaic", "maestro")
TRUTH_FILE = "toyworld.json"  # next to a folder of toy stems: their true classes


class ToyEvalError(ValueError):
    """Bad input to the toy evaluation, found before any model compute."""


@dataclasses.dataclass(frozen=True, eq=False)
class ToyJob:
    """One toy scene to generate: K sources.

    classes: K distinct class indices into `toyworld.OBJECTS`; boxes: float32 [K, 4]
    (x0, y0, x1, y1) in [0, 1]; stems: float32 [K, N] at `toyworld.SR`, N = SECONDS * SR;
    seed: the sampler's noise seed (the same in every mode)."""

    name: str
    classes: tuple[int, ...]
    boxes: np.ndarray
    stems: np.ndarray
    seed: int

    @property
    def k(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> list[str]:
        return [tw.OBJECTS[c].label for c in self.classes]


def make_jobs(n_per_k: int, ks: Sequence[int] = (2, 3), seed: int = 0) -> list[ToyJob]:
    """`n_per_k` jobs for each source count in `ks` (in that order), deterministic in `seed`.
    Job i of count k depends only on (seed, k, i), so a longer list starts with a shorter one."""
    if int(n_per_k) != n_per_k or n_per_k < 1:
        raise ToyEvalError(f"jobs per source count must be a positive int, got {n_per_k!r}")
    n_obj = len(tw.OBJECTS)
    ks = tuple(int(k) for k in ks)
    if not ks or any(not 1 <= k <= n_obj for k in ks) or len(set(ks)) != len(ks):
        raise ToyEvalError(f"source counts must be distinct ints in [1, {n_obj}], got {ks}")
    jobs = []
    for k in ks:
        for i in range(int(n_per_k)):
            rng = np.random.default_rng([int(seed), k, i])
            classes = tuple(int(c) for c in rng.choice(n_obj, k, replace=False))
            boxes = toy_batches.random_boxes(rng, k)
            stems = np.stack([tw.object_sound(c, rng)[0] for c in classes])
            jobs.append(ToyJob(f"k{k}_{i:03d}", classes, boxes, stems, int(rng.integers(2**31))))
    return jobs


# ----------------------------------------------------------------------------- assets
def check_assets(cfg) -> None:
    """The toy weights a generation config points at exist (before anything is loaded)."""
    need = {
        "checkpoint": ("unet", "vae", "text"),
        "imagebind_checkpoint": ("",),
        "cim_checkpoint": ("",),
    }
    missing = []
    for field, subs in need.items():
        root = cfg.get(field) or ""
        for sub in subs:
            d = Path(root) / sub if root else None
            if d is None or not (d / "params").exists():
                missing.append(f"{field}: {d if d is not None else '(unset)'}")
    if missing:
        where = cfg.get("assets") or cfg.get("checkpoint")
        raise ToyEvalError(
            f"toy-world weights not found in {where} (missing {'; '.join(missing)}): run "
            "`make toy-world` (python -m maestro_jax.toy.build) to build them, or point "
            "--assets / --config.assets / $MAESTRO_TOY_ASSETS at a built copy"
        )


# ----------------------------------------------------------------------------- generation
def _sampler(mode: str, steps: int, n_d: int) -> tuple[str, int]:
    """(pipeline mode, N_D) that runs `mode`: locate = maestro with N_D = steps, mosaic =
    maestro with N_D = 0 (`step < N_D` picks the phase), so three modes share one compile."""
    return {
        "vanilla": ("vanilla", 0),
        "locate": ("maestro", steps),
        "mosaic": ("maestro", 0),
        "maestro": ("maestro", n_d),
    }[mode]


def _check(cfg, jobs: Sequence[ToyJob], modes: Sequence[str], batch: int) -> None:
    bad = [m for m in modes if m not in MODES]
    if bad or not modes or len(set(modes)) != len(modes):
        raise ToyEvalError(f"modes must be distinct names from {MODES}, got {list(modes)}")
    if not jobs:
        raise ToyEvalError("no jobs to evaluate")
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ToyEvalError("job names must be unique")
    if int(batch) != batch or batch < 1:
        raise ToyEvalError(f"batch must be a positive int, got {batch!r}")
    if not 0 <= int(cfg.n_d) <= int(cfg.steps):
        raise ToyEvalError(f"N_D = {cfg.n_d} is outside [0, steps = {cfg.steps}]")
    if int(cfg.num_frames) != tw.NUM_FRAMES:
        raise ToyEvalError(f"the toy world has {tw.NUM_FRAMES} frames, config has {cfg.num_frames}")


def evaluate_placement(
    cfg,
    jobs: Sequence[ToyJob],
    modes: Sequence[str] = MODES,
    batch: int = 8,
    *,
    examples: int = 2,
    progress: bool = True,
    log: Callable = print,
) -> dict:
    """Generate every job in every mode (in this process, batched) and score placement.

    Returns {'modes': {mode: {'accuracy', 'by_sources': {k: accuracy}, 'by_class': {label:
    accuracy}, 'outcomes': {colour_pl.COLOUR_OUTCOMES name: fraction of (box, frame) pairs}, 'jobs', 'box_frames',
    'seconds', 'seconds_per_job', 'seconds_per_job_warm'}}, 'jobs': [{name, sources, classes,
    labels, boxes, seed, accuracy: {mode: value}}], 'sources': [k...], 'settings', 'timing',
    'examples': {job name: {mode: uint8 frames [T, H, W, 3]}} (the first `examples` jobs; not
    JSON)}. Accuracy: mean over (box, frame) pairs of `colour_placement`. Timings include the
    compile of each sampler shape; '_warm' excludes the first call of each compiled shape."""
    from tqdm import tqdm

    from maestro_jax import mosaic
    from maestro_jax.audio import encoder as ae
    from maestro_jax.generation import runner as gen
    from maestro_jax.generation import sampling

    modes = tuple(modes)
    _check(cfg, jobs, modes, batch)
    check_assets(cfg)
    t_start = time.perf_counter()
    models = gen.build_models(cfg)
    if models.audio is None:
        raise ToyEvalError("the config builds no audio encoder (set imagebind/cim checkpoints)")
    spec = gen._spec(cfg)
    try:
        spec.check(models.spec)
    except ValueError as e:
        raise ToyEvalError(str(e)) from e
    options = gen._options(cfg)
    res = gen.attention_resolutions(cfg)
    t_models = time.perf_counter() - t_start

    # host side, once per job: stems -> tokens -> contexts + both phases' edits + noise
    t0 = time.perf_counter()
    prepared = {}
    for j in jobs:
        boxes = tuple(mosaic.Boxes.static([float(v) for v in b]) for b in j.boxes)
        try:
            mosaic.check_boxes(boxes, res, spec.num_frames, options.cell_rule)
        except ValueError as e:
            raise ToyEvalError(f"job {j.name}: {e}") from e
        tokens = ae.encode_stems(
            models.audio, [(s[None], tw.SR) for s in j.stems], cfg.clip_window, cfg.clip_rule
        )
        prepared[j.name] = sampling.prepare_job(models, tokens, boxes, boxes, spec, j.seed, options)
    t_prepare = time.perf_counter() - t0

    groups: dict[int, list[ToyJob]] = {}
    for j in jobs:
        groups.setdefault(j.k, []).append(j)
    outcome: dict[str, dict[str, np.ndarray]] = {m: {} for m in modes}  # colour_pl.COLOUR_OUTCOMES
    shown = {j.name: {} for j in list(jobs)[: max(0, examples)]}
    timing = {m: {"seconds": 0.0, "warm_seconds": 0.0, "warm_jobs": 0} for m in modes}
    compiled: set = set()
    bar = tqdm(
        total=len(jobs) * len(modes), desc="toy placement", unit="video", file=sys.stdout,
        disable=not progress,
    )  # fmt: skip
    for mode in modes:
        kind, n_d = _sampler(mode, int(cfg.steps), int(cfg.n_d))
        settings = gen._settings(cfg, n_d, kind)
        for k, group in groups.items():
            b = min(int(batch), len(group))
            for i in range(0, len(group), b):
                chunk = group[i : i + b]
                preps = [prepared[j.name] for j in chunk]
                preps += [preps[-1]] * (b - len(preps))  # pad: one compiled shape per (k, b)
                t1 = time.perf_counter()
                lat = sampling.sample_maestro(models, preps, settings)
                frames = sampling.decode(models, lat, cfg.frame_chunk)[: len(chunk)]
                dt = time.perf_counter() - t1
                shape = (kind, k, b)
                timing[mode]["seconds"] += dt
                if shape in compiled:
                    timing[mode]["warm_seconds"] += dt
                    timing[mode]["warm_jobs"] += len(chunk)
                compiled.add(shape)
                for j, fr in zip(chunk, frames):
                    outcome[mode][j.name] = colour_pl.colour_placement_outcomes(
                        fr, j.boxes, j.classes, tw.OBJECT_COLORS
                    )
                    if j.name in shown:
                        shown[j.name][mode] = fr
                bar.update(len(chunk))
                bar.set_postfix_str(f"{mode} k={k} {dt / len(chunk):.1f}s/video")
    bar.close()

    ks = sorted(groups)
    correct = {m: {n: o == 0 for n, o in outcome[m].items()} for m in modes}
    out_modes = {}
    for m in modes:
        allc = np.concatenate([correct[m][j.name].ravel() for j in jobs])
        by_k = {
            str(k): float(np.concatenate([correct[m][j.name].ravel() for j in groups[k]]).mean())
            for k in ks
        }
        per_class: dict[str, list] = {}
        for j in jobs:
            for lab, row in zip(j.labels, correct[m][j.name]):
                per_class.setdefault(lab, []).append(row)
        allo = np.concatenate([outcome[m][j.name].ravel() for j in jobs])
        tm = timing[m]
        out_modes[m] = {
            "accuracy": float(allc.mean()),
            "by_sources": by_k,
            "by_class": {
                lab: float(np.concatenate(rows).mean())
                for lab, rows in sorted(per_class.items(), key=lambda kv: tw.labels().index(kv[0]))
            },
            "outcomes": {
                o: float(np.mean(allo == i)) for i, o in enumerate(colour_pl.COLOUR_OUTCOMES)
            },
            "jobs": len(jobs),
            "box_frames": int(allc.size),
            "seconds": round(tm["seconds"], 3),
            "seconds_per_job": round(tm["seconds"] / len(jobs), 3),
            "seconds_per_job_warm": (
                round(tm["warm_seconds"] / tm["warm_jobs"], 3) if tm["warm_jobs"] else None
            ),
        }
    per_job = [
        {
            "name": j.name,
            "sources": j.k,
            "classes": list(j.classes),
            "labels": j.labels,
            "boxes": np.round(j.boxes.astype(float), 4).tolist(),
            "seed": j.seed,
            "accuracy": {m: float(correct[m][j.name].mean()) for m in modes},
        }
        for j in jobs
    ]
    total = time.perf_counter() - t_start
    log(f"toy placement: {len(jobs)} jobs x {len(modes)} modes in {total:.1f} s")
    return {
        "modes": out_modes,
        "sources": ks,
        "jobs": per_job,
        "settings": {
            "steps": int(cfg.steps),
            "n_d": int(cfg.n_d),
            "guidance": float(cfg.guidance),
            "eta": float(cfg.eta),
            "num_queries": int(cfg.num_queries),
            "batch": int(batch),
            "frames": spec.num_frames,
            "height": spec.height,
            "width": spec.width,
            "assets": str(cfg.get("assets") or cfg.checkpoint),
            "random_weights": models.random,
        },
        "timing": {
            "build_models_s": round(t_models, 3),
            "prepare_s": round(t_prepare, 3),
            "total_s": round(total, 3),
        },
        "examples": shown,
    }


# ----------------------------------------------------------------------------- reports
def markdown_table(result: dict) -> str:
    """mode | 2 sources | 3 sources | all | jobs (accuracies in [0, 1])."""
    ks = result["sources"]
    head = ["Mode", *[f"{k} sources" for k in ks], "All", "Jobs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, r in result["modes"].items():
        row = [m, *[f"{r['by_sources'][str(k)]:.3f}" for k in ks], f"{r['accuracy']:.3f}"]
        lines.append("| " + " | ".join(row + [str(r["jobs"])]) + " |")
    s = result["settings"]
    notes = [
        "",
        "- Placement (toy world): fraction of (box, frame) pairs whose box shows its own "
        "source's class (`colour_placement`: majority colour within 90 RGB units, at least "
        "8% of the box).",
        f"- {s['steps']} DDIM steps, N_D = {s['n_d']} (maestro), guidance {s['guidance']}, "
        f"{s['frames']} frames {s['height']}x{s['width']}; weights {s['assets']}.",
        "- Seconds per job (sampling + decoding; compile included / excluded): "
        + ", ".join(
            f"{m} {r['seconds_per_job']:.2f}"
            + (f" / {r['seconds_per_job_warm']:.2f}" if r["seconds_per_job_warm"] else "")
            for m, r in result["modes"].items()
        ),
    ]
    if s.get("random_weights"):
        notes.append("- RANDOM weights: the numbers test the plumbing only.")
    labels = list(next(iter(result["modes"].values()))["by_class"])
    head = ["Mode", *labels, *colour_pl.COLOUR_OUTCOMES]
    detail = [
        "",
        "Per class (placement of the boxes holding it) and per outcome (fraction of (box, frame) "
        "pairs: `colour_placement_outcomes`; other = another class wins the box, elsewhere = "
        "no class wins it and its own is drawn outside it, absent = its own is not drawn):",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m, r in result["modes"].items():
        row = [f"{r['by_class'][lab]:.3f}" for lab in labels]
        row += [f"{r['outcomes'][o]:.3f}" for o in colour_pl.COLOUR_OUTCOMES]
        detail.append("| " + " | ".join([m, *row]) + " |")
    return "\n".join(lines + notes + detail) + "\n"


def examples_image(result: dict, scale: int = 4) -> np.ndarray:
    """One row per (example job, mode): its frames, upscaled `scale` x, boxes drawn."""
    from maestro_jax.plots import image_grid
    from maestro_jax.video import draw_boxes

    boxes = {j["name"]: j["boxes"] for j in result["jobs"]}
    rows, labels = [], []
    for name, by_mode in result["examples"].items():
        for mode, frames in by_mode.items():
            big = np.repeat(np.repeat(np.asarray(frames), scale, axis=1), scale, axis=2)
            rows.append(np.stack([draw_boxes(f, boxes[name], max(1, scale // 2)) for f in big]))
            labels.append(f"{name} {mode}")
    if not rows:
        raise ToyEvalError("no example frames kept (examples=0)")
    return image_grid(rows, labels)


def write_results(result: dict, outdir: str | Path) -> dict[str, Path]:
    """OUT/placement.json, OUT/placement.md and OUT/examples.png, each written atomically."""
    from maestro_jax.files import write_json
    from maestro_jax.video import atomic_path, write_png

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "placement.json", "md": out / "placement.md"}
    write_json(paths["json"], {k: v for k, v in result.items() if k != "examples"})
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text("# Toy-world placement\n\n" + markdown_table(result))
    if result.get("examples"):
        paths["examples"] = write_png(out / "examples.png", examples_image(result))
    return paths


# ----------------------------------------------------------------------------- sweep jobs
def write_sweep_jobs(jobs: Sequence[ToyJob], folder: str | Path) -> list:
    """Write each job's stems as FOLDER/NAME_<i>.wav (16 kHz) with FOLDER/toyworld.json (their
    true classes, read by `read_truth`), and return generate's `Job`s (stems + boxes + seed).
    Deterministic: existing stems are kept, so a rerun changes no file."""
    from maestro_jax.audio import write_wav
    from maestro_jax.files import write_json
    from maestro_jax.generation.jobs import Job

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    truth, out = {}, []
    for j in jobs:
        paths = []
        for i, (c, s) in enumerate(zip(j.classes, j.stems)):
            p = folder / f"{j.name}_{i}.wav"
            if not p.is_file():
                from maestro_jax.video import atomic_path

                with atomic_path(p) as tmp:
                    write_wav(tmp, s[None], tw.SR)
            truth[p.name] = {"class": c, "label": tw.OBJECTS[c].label}
            paths.append(str(p))
        boxes = [[float(v) for v in b] for b in j.boxes]
        out.append(Job(name=j.name, audio=paths, boxes=boxes, seed=j.seed))
    write_json(folder / TRUTH_FILE, {"stems": truth})
    return out


def read_truth(stems: Sequence[str | Path]) -> list[int] | None:
    """The true toy classes of stem files (from the `toyworld.json` next to them), or None when
    any stem has none."""
    import json

    cache: dict[Path, dict] = {}
    out = []
    for s in stems:
        s = Path(s)
        f = s.parent / TRUTH_FILE
        if f not in cache:
            cache[f] = json.loads(f.read_text()).get("stems", {}) if f.is_file() else {}
        rec = cache[f].get(s.name)
        if rec is None:
            return None
        out.append(int(rec["class"]))
    return out
